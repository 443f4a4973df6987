/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vfiomigctl's migration verbs: incoming, migrate, jobs, job, wait, switchover, resolve,
 * cancel and blob.
 */

#include <fcntl.h>
#include <inttypes.h>

#include "vfiomigctl.h"

static const char *job_error_text(const MigrationInfo *i, const char *fallback) {
        if (i->error && *i->error)
                return i->error;
        if (fallback && *fallback)
                return fallback;
        return "no reason given";
}

int migration_to_json(const MigrationInfo *i, json_object **ret) {
        _cleanup_(json_object_putp) json_object *j = NULL;
        int r;

        j = json_object_new_object();
        if (!j)
                return -ENOMEM;

        r = json_add_uint64(j, "id", i->id);
        if (r >= 0)
                r = json_add_string(j, "object", i->object);
        if (r >= 0)
                r = json_add_string(j, "direction", i->direction);
        if (r >= 0)
                r = json_add_string(j, "phase", i->phase);
        if (r >= 0)
                r = json_add_string(j, "peer", i->peer);
        if (r >= 0)
                r = json_add_strv(j, "devices", i->devices);
        if (r >= 0)
                r = json_add_uint64(j, "channels", i->channels);
        if (r >= 0)
                r = json_add_bool(j, "precopy", i->precopy);
        if (r >= 0)
                r = json_add_string(j, "switchover_mode", i->switchover_mode);
        if (r >= 0)
                r = json_add_uint64(j, "downtime_limit", i->downtime_limit);
        if (r >= 0)
                r = json_add_uint64(j, "bytes_transferred", i->bytes_transferred);
        if (r >= 0)
                r = json_add_uint64(j, "bytes_expected", i->bytes_expected);
        if (r >= 0)
                r = json_add_uint64(j, "rate", i->rate);
        if (r >= 0)
                r = json_add_bool(j, "initial_data_loaded", i->initial_data_loaded);
        if (r >= 0)
                r = json_add_bool(j, "switchover_requested", i->switchover_requested);
        if (r >= 0)
                r = json_add_uint64(j, "downtime", i->downtime);
        if (r >= 0)
                r = json_add_string(j, "error_name", i->error_name);
        if (r >= 0)
                r = json_add_string(j, "error", i->error);
        if (r >= 0)
                r = json_add_bool(j, "committed", i->committed);
        if (r >= 0)
                r = json_add_string(j, "transport", i->transport);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(j);
        return 0;
}

/* How a waited-for job ended: the job's properties as JSON, or a summary line, on stdout in every
 * case (it is what was waited for), and for a job that did not complete, why, on stderr. */
static int print_wait_result(const CtlWaitResult *res) {
        const MigrationInfo *i = &res->info;
        bool completed = streq(res->result, "completed");
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_free_ char *summary = NULL;
        const char *hint;
        int r;

        if (arg_json != JSON_FORMAT_OFF) {
                r = migration_to_json(i, &j);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                r = print_json(j);
                if (r < 0)
                        return log_error_errno(r, "Failed to write output: %m");
        } else if (!arg_quiet) {
                summary = format_migration_summary(&(MigrationSummary) {
                        .id = i->id,
                        .direction = i->direction,
                        .result = res->result,
                        .bytes = i->bytes_transferred,
                        .duration_usec = res->duration_usec,
                        .downtime_ms = i->downtime,
                });
                if (!summary)
                        return log_error_errno(ENOMEM, "Out of memory.");
                puts(summary);
        }

        if (completed)
                return 0;

        (void) fflush(stdout);
        if (streq(res->result, "indeterminate")) {
                log_error("Migration %" PRIu32 " is indeterminate: every byte was sent, but the destination neither "
                          "confirmed nor refused the commit (%s%s%s). The source devices stay stopped until the job "
                          "is resolved.", i->id, job_error_text(i, res->error),
                          i->error_name && *i->error_name ? ", " : "", i->error_name ?: "");
                log_hint("run 'vfiomigctl job N' on the destination (N: its incoming job); if Committed is yes, "
                         "'vfiomigctl resolve %" PRIu32 " committed' here, else 'vfiomigctl resolve %" PRIu32
                         " not-committed' to run the source devices again", i->id, i->id);
                return EXIT_INDETERMINATE;
        }
        if (i->error_name && *i->error_name)
                log_error("Migration %" PRIu32 " %s: %s (%s)", i->id, res->result, job_error_text(i, res->error),
                          i->error_name);
        else
                log_error("Migration %" PRIu32 " %s: %s", i->id, res->result, job_error_text(i, res->error));
        hint = ctl_bus_error_hint(i->error_name);
        if (hint)
                log_hint("%s", hint);
        return -EIO;
}

/* Follows the job at path to its end through watch, which was subscribed before the job could end. */
static int wait_for_job(CtlMigrationWatch *watch, const char *path, uint64_t start_usec) {
        _cleanup_(ctl_wait_result_done) CtlWaitResult res = {};
        uint32_t id = 0;
        int r;

        r = ctl_migration_watch_wait(watch, path, isatty(STDERR_FILENO) && !arg_quiet, start_usec, &res);
        if (r == -ECANCELED) {
                (void) ctl_migration_id_from_path(path, &id);
                log_error("Stopped waiting for migration %" PRIu32 ", which is being cancelled.", id);
                log_hint("'vfiomigctl wait %" PRIu32 "' follows it to its end", id);
                return r;
        }
        if (r < 0)
                return r;

        return print_wait_result(&res);
}

/* The source's half, ready to paste: the same device names (a group is usually named alike on both
 * hosts), the address to connect to (a placeholder when there is none), and where the token comes
 * from (never the token itself: on a command line every local user can read it). */
static int fput_quoted(FILE *f, const char *prefix, const char *word) {
        _cleanup_free_ char *q = shell_quote(word);

        if (!q)
                return -ENOMEM;
        fputs(prefix, f);
        fputs(q, f);
        return 0;
}

static int source_command(char **devs, size_t n, const char *address, char **ret) {
        _cleanup_free_ char *buf = NULL;
        size_t size = 0;
        FILE *f;
        int r = 0;

        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;
        fputs(PROGRAM_NAME " migrate", f);
        for (size_t i = 0; i < n && r >= 0; i++)
                r = fput_quoted(f, " ", devs[i]);
        if (r >= 0 && address)
                r = fput_quoted(f, " --to ", address);
        else if (r >= 0)
                fputs(" --to HOST", f);
        if (r >= 0)
                fputs(" --token-file TOKENFILE", f);
        if (fclose(f) != 0 && r >= 0)
                r = -ENOMEM;
        if (r < 0)
                return r;

        *ret = TAKE_PTR(buf);
        return 0;
}

/* incoming --token-file: created before the call, removed again unless the token made it in. */
typedef struct TokenFile {
        const char *path; /* set while the file is ours to remove */
        int fd;
} TokenFile;

static void token_file_abandonp(TokenFile *t) {
        if (t->fd >= 0)
                (void) close(t->fd);
        if (t->path)
                (void) unlink(t->path);
}

int verb_incoming(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_strv_free_ char **paths = NULL, **addresses = NULL;
        _cleanup_free_ char *joined = NULL, *command = NULL;
        const char *path, *token, *address;
        _cleanup_(token_file_abandonp) TokenFile token_file = { .fd = -EBADF };
        bool have_id;
        uint32_t id;
        int r;

        for (int i = 1; i < argc; i++) {
                r = check_device_name(argv[i]);
                if (r != 0)
                        return r;
        }

        /* Before the job exists: a token with nowhere to go would leave a job nobody can join. */
        if (arg_token_file) {
                r = ctl_token_file_create(arg_token_file);
                if (r == -EEXIST)
                        return usage_error("--token-file= '%s' exists: the token goes only into a new file, created "
                                           "for this (a symlink is not followed).", arg_token_file);
                if (r < 0)
                        return usage_error("Cannot create --token-file= '%s': %s.", arg_token_file, strerror(-r));
                token_file = (TokenFile) { .path = arg_token_file, .fd = r };
        }

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = resolve_devices(bus, argv + 1, (size_t) argc - 1, &paths);
        if (r < 0)
                return r;

        r = ctl_new_method_call(bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, "PrepareIncoming", &m);
        if (r < 0)
                return r;
        r = append_object_paths(m, paths);
        if (r >= 0)
                r = sd_bus_message_open_container(m, SD_BUS_TYPE_ARRAY, "{sv}");
        if (r >= 0 && arg_run)
                r = append_option_bool(m, VFIOMIG_OPTION_RUN, true);
        if (r >= 0 && arg_reassembly_budget_set)
                r = append_option_u64(m, VFIOMIG_OPTION_REASSEMBLY_BUDGET, arg_reassembly_budget);
        if (r >= 0 && arg_stall_timeout_set)
                r = append_option_u64(m, VFIOMIG_OPTION_STALL_TIMEOUT, arg_stall_timeout);
        if (r >= 0 && arg_setup_timeout_set)
                r = append_option_u64(m, VFIOMIG_OPTION_SETUP_TIMEOUT, arg_setup_timeout);
        if (r >= 0 && arg_force_without_p2p)
                r = append_option_bool(m, VFIOMIG_OPTION_FORCE_WITHOUT_P2P, true);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_error_errno(r, "Failed to append PrepareIncoming arguments: %m");

        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "os", &path, &token);
        if (r >= 0)
                r = sd_bus_message_read_strv(reply, &addresses);
        if (r < 0)
                return log_error_errno(r, "Failed to parse PrepareIncoming reply: %m");
        have_id = ctl_migration_id_from_path(path, &id) >= 0;

        if (token_file.path) {
                r = ctl_token_file_write(TAKE_FD(token_file.fd), token);
                if (r < 0) {
                        log_error_errno(r, "Failed to write the token to %s: %m", token_file.path);
                        if (have_id)
                                log_hint("'%s cancel %" PRIu32 "' drops the job nobody can join now", PROGRAM_NAME,
                                         id);
                        return r;
                }
                token_file.path = NULL; /* written: keep it */
        }

        if (arg_json != JSON_FORMAT_OFF) {
                j = json_object_new_object();
                if (!j)
                        return log_error_errno(ENOMEM, "Out of memory.");
                r = have_id ? json_add_uint64(j, "id", id) : 0;
                if (r >= 0)
                        r = json_add_string(j, "migration", path);
                if (r >= 0)
                        r = arg_token_file ? json_add_string(j, "token_file", arg_token_file)
                                           : json_add_string(j, "token", token);
                if (r >= 0)
                        r = json_add_strv(j, "addresses", addresses);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        joined = strv_join_spaces(addresses);
        if (!joined)
                return log_error_errno(ENOMEM, "Out of memory.");
        address = ctl_pick_peer_address(addresses);
        r = source_command(argv + 1, (size_t) argc - 1, address, &command);
        if (r < 0)
                return log_error_errno(r, "Out of memory.");

        /* -q silences everything but the token: it is the one thing that cannot be had again. */
        if (arg_quiet) {
                if (!arg_token_file)
                        printf("%s\n", token);
                return 0;
        }
        if (have_id)
                printf("Prepared incoming migration %" PRIu32 " (%s)\n", id, path);
        else
                printf("Prepared incoming migration %s\n", path);
        if (arg_token_file)
                printf("Token: written to %s\n", arg_token_file);
        else
                printf("Token: %s\n", token);
        printf("Addresses: %s\n", na(joined));
        (void) fflush(stdout);
        log_hint("on the source host, run: %s", command);
        log_hint("with the token in TOKENFILE (mode 0600), or '--token -' to read it from standard input; "
                 "'--token TOKEN' shows it to every local user");
        if (!address)
                log_hint("vfiomigd reported no address: HOST is this host's name or address (port %d)",
                         VFIOMIG_STREAM_PORT);
        if (have_id)
                log_hint("'%s wait %" PRIu32 "' follows the migration here", PROGRAM_NAME, id);
        else
                log_hint("'%s wait %s' follows the migration here", PROGRAM_NAME, path);
        return 0;
}

/* The token for migrate, from --token-file=FILE, --token=- (standard input) or --token=HEX, checked
 * before any bus is contacted. Messages never repeat what a file or standard input held. */
static int load_token(char ret[static CTL_TOKEN_HEX_LEN + 1]) {
        const char *why = NULL;
        bool shared = false;
        int r;

        if (arg_token_file) {
                r = ctl_token_read_file(arg_token_file, ret, &shared, &why);
                if (r == -EINVAL && why)
                        return usage_error("Invalid --token-file= '%s': its content %s; expected the 64 hex digits "
                                           "'vfiomigctl incoming' wrote.", arg_token_file, why);
                if (r < 0)
                        return usage_error("Cannot read --token-file= '%s': %s.", arg_token_file, strerror(-r));
                if (shared)
                        log_error("Warning: %s is readable by users other than its owner, who could take over the job "
                                    "with it.", arg_token_file);
                return 0;
        }
        if (streq(arg_token, "-")) {
                r = ctl_token_read_fd(STDIN_FILENO, ret, &why);
                if (r == -EINVAL && why)
                        return usage_error("Invalid token on standard input (--token=-): it %s; expected the 64 "
                                           "hex digits 'vfiomigctl incoming' printed.", why);
                if (r < 0)
                        return usage_error("Cannot read the token from standard input (--token=-): %s.",
                                           strerror(-r));
                return 0;
        }
        r = ctl_token_parse(arg_token, strlen(arg_token), ret, &why);
        if (r < 0)
                return usage_error("Invalid --token= '%s': expected the 64 hex digits 'vfiomigctl incoming' printed.",
                                   arg_token);
        return 0;
}

int verb_migrate(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(ctl_migration_watch_freep) CtlMigrationWatch *watch = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_strv_free_ char **paths = NULL;
        _cleanup_free_ char *host = NULL, *peer = NULL;
        char token[CTL_TOKEN_HEX_LEN + 1];
        const char *path;
        uint64_t start;
        uint16_t port;
        int r;

        for (int i = 1; i < argc; i++) {
                r = check_device_name(argv[i]);
                if (r != 0)
                        return r;
        }
        r = require_option("migrate", arg_to, "--to=HOST[:PORT]");
        if (r == 0)
                r = require_option("migrate", arg_token || arg_token_file,
                                   "--token-file=FILE or --token=- (the token 'vfiomigctl incoming' printed on the "
                                   "destination)");
        if (r != 0)
                return r;
        if (arg_token && arg_token_file)
                return usage_error("--token= and --token-file= are two ways of saying the same thing: give one.");

        r = ctl_parse_host_port(arg_to, VFIOMIG_STREAM_PORT, &host, &port);
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory.");
        if (r == -ERANGE)
                return usage_error("Invalid --to= '%s': the port must be between 1 and 65535.", arg_to);
        if (r < 0)
                return usage_error("Invalid --to= '%s': expected HOST, HOST:PORT or [IPV6]:PORT.", arg_to);
        peer = ctl_peer_format(host, port);
        if (!peer)
                return log_error_errno(ENOMEM, "Out of memory.");

        r = load_token(token);
        if (r != 0)
                return r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = resolve_devices(bus, argv + 1, (size_t) argc - 1, &paths);
        if (r < 0)
                return r;

        /* Before the job exists, so that not even a job that ends at once slips past. */
        if (!arg_no_wait) {
                r = ctl_migration_watch_new(bus, &watch);
                if (r < 0)
                        return r;
        }

        r = ctl_new_method_call(bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, "StartMigration", &m);
        if (r < 0)
                return r;
        r = append_object_paths(m, paths);
        if (r >= 0)
                r = sd_bus_message_append(m, "ss", peer, token);
        if (r >= 0)
                r = sd_bus_message_open_container(m, SD_BUS_TYPE_ARRAY, "{sv}");
        if (r >= 0 && arg_channels_set)
                r = sd_bus_message_append(m, "{sv}", VFIOMIG_OPTION_CHANNELS, "u", (uint32_t) arg_channels);
        if (r >= 0 && arg_no_precopy)
                r = append_option_bool(m, VFIOMIG_OPTION_PRECOPY, false);
        if (r >= 0 && arg_bandwidth_set)
                r = append_option_u64(m, VFIOMIG_OPTION_BANDWIDTH_LIMIT, arg_bandwidth);
        if (r >= 0 && arg_switchover)
                r = sd_bus_message_append(m, "{sv}", VFIOMIG_OPTION_SWITCHOVER, "s", arg_switchover);
        if (r >= 0 && arg_downtime_set)
                r = append_option_u64(m, VFIOMIG_OPTION_DOWNTIME_LIMIT, arg_downtime);
        if (r >= 0 && arg_stall_timeout_set)
                r = append_option_u64(m, VFIOMIG_OPTION_STALL_TIMEOUT, arg_stall_timeout);
        if (r >= 0 && arg_no_io_uring)
                r = append_option_bool(m, VFIOMIG_OPTION_IO_URING, false);
        if (r >= 0 && arg_force_without_p2p)
                r = append_option_bool(m, VFIOMIG_OPTION_FORCE_WITHOUT_P2P, true);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_error_errno(r, "Failed to append StartMigration arguments: %m");

        start = ctl_now_usec();
        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "o", &path);
        if (r < 0)
                return log_error_errno(r, "Failed to parse StartMigration reply: %m");

        if (arg_no_wait) {
                /* The job number, as jobs, job and wait show and take it. */
                uint32_t id;
                bool have_id = ctl_migration_id_from_path(path, &id) >= 0;

                if (arg_json != JSON_FORMAT_OFF) {
                        j = json_object_new_object();
                        if (!j)
                                return log_error_errno(ENOMEM, "Out of memory.");
                        r = have_id ? json_add_uint64(j, "id", id) : 0;
                        if (r >= 0)
                                r = json_add_string(j, "migration", path);
                        if (r < 0)
                                return log_error_errno(r, "Failed to build JSON: %m");
                        return print_json(j);
                }
                if (arg_quiet)
                        return 0;
                if (have_id)
                        printf("%" PRIu32 "\n", id);
                else
                        puts(path);
                return 0;
        }

        return wait_for_job(watch, path, start);
}

typedef struct MigrationInfos {
        MigrationInfo *infos;
        size_t n_infos;
} MigrationInfos;

static void migration_infos_done(MigrationInfos *mi) {
        for (size_t i = 0; i < mi->n_infos; i++)
                migration_info_done(&mi->infos[i]);
        mi->infos = mfree(mi->infos);
        mi->n_infos = 0;
}

int verb_jobs(int argc, char *argv[]) {
        static const char *const headers[] = { "ID", "DIRECTION", "PHASE", "BYTES", "COMMITTED", "TRANSPORT",
                                               "OBJECT" };
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(json_object_putp) json_object *array = NULL;
        _cleanup_(migration_list_done) MigrationList l = {};
        _cleanup_(table_freep) Table *t = NULL;
        _cleanup_(migration_infos_done) MigrationInfos mi = {};
        MigrationInfo *infos;
        int r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_get_migrations(bus, &l);
        if (r < 0)
                return r;
        /* ListMigrations carries neither; a job that went meanwhile shows "-". */
        infos = mi.infos = new0(MigrationInfo, l.n_entries ?: 1);
        if (!infos)
                return log_error_errno(ENOMEM, "Out of memory.");
        mi.n_infos = l.n_entries;
        for (size_t i = 0; i < l.n_entries; i++) {
                r = ctl_get_migration_info(bus, l.entries[i].object, /* gone_ok= */ true, &infos[i]);
                if (r < 0)
                        return r;
        }

        if (arg_json != JSON_FORMAT_OFF) {
                array = json_object_new_array();
                if (!array)
                        return log_error_errno(ENOMEM, "Out of memory.");
                for (size_t i = 0; i < l.n_entries; i++) {
                        const MigrationListEntry *e = &l.entries[i];
                        _cleanup_(json_object_putp) json_object *j = json_object_new_object();

                        r = j ? 0 : -ENOMEM;
                        if (r >= 0)
                                r = json_add_uint64(j, "id", e->id);
                        if (r >= 0)
                                r = json_add_string(j, "object", e->object);
                        if (r >= 0)
                                r = json_add_string(j, "direction", e->direction);
                        if (r >= 0)
                                r = json_add_string(j, "phase", e->phase);
                        if (r >= 0)
                                r = json_add_uint64(j, "bytes_transferred", e->bytes_transferred);
                        if (r >= 0 && infos[i].object)
                                r = json_add_bool(j, "committed", infos[i].committed);
                        if (r >= 0 && infos[i].object)
                                r = json_add_string(j, "transport", infos[i].transport);
                        if (r >= 0)
                                r = json_append(array, TAKE_PTR(j));
                        if (r < 0)
                                return log_error_errno(r, "Failed to build JSON: %m");
                }
                return print_json(array);
        }

        t = table_new(headers, ELEMENTSOF(headers));
        if (!t)
                return log_error_errno(ENOMEM, "Out of memory.");
        for (size_t i = 0; i < l.n_entries; i++) {
                const MigrationListEntry *e = &l.entries[i];
                char id[16], bytes[FORMAT_BYTES_MAX];

                (void) snprintf(id, sizeof(id), "%" PRIu32, e->id);
                r = table_add_row(t, (const char *const[]) {
                        id, e->direction, e->phase, format_bytes(bytes, sizeof(bytes), e->bytes_transferred),
                        infos[i].object ? yes_no(infos[i].committed) : "-",
                        infos[i].object && infos[i].transport ? infos[i].transport : "-", e->object });
                if (r < 0)
                        return log_error_errno(r, "Failed to build table: %m");
        }
        return print_table(t, l.n_entries, "No migrations.");
}

int verb_job(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_(migration_info_done) MigrationInfo i = {};
        _cleanup_free_ char *path = NULL, *devices = NULL;
        char b1[FORMAT_BYTES_MAX], b2[FORMAT_BYTES_MAX], rate[FORMAT_RATE_MAX];
        int r;

        r = check_job_name(argv[1], &path);
        if (r != 0)
                return r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_get_migration_info(bus, path, /* gone_ok= */ false, &i);
        if (r < 0)
                return r;

        if (arg_json != JSON_FORMAT_OFF) {
                r = migration_to_json(&i, &j);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        devices = strv_join_spaces(i.devices);
        if (!devices)
                return log_error_errno(ENOMEM, "Out of memory.");
        if (arg_quiet)
                return 0;

        printf("Id: %" PRIu32 "\n"
               "Object: %s\n"
               "Direction: %s\n"
               "Phase: %s%s\n"
               "Peer: %s\n"
               "Devices: %s\n"
               "Channels: %" PRIu32 "\n"
               "Precopy: %s\n"
               "SwitchoverMode: %s\n"
               "DowntimeLimit: %" PRIu64 "ms\n"
               "BytesTransferred: %" PRIu64 " (%s)\n",
               i.id, i.object, na(i.direction), na(i.phase),
               streq_ptr(i.phase, "indeterminate") ? " (outcome unknown, devices stopped: resolve it)" : "", na(i.peer), na(devices), i.channels,
               yes_no(i.precopy), na(i.switchover_mode), i.downtime_limit, i.bytes_transferred,
               format_bytes(b1, sizeof(b1), i.bytes_transferred));
        if (i.bytes_expected > 0)
                printf("BytesExpected: %" PRIu64 " (%s)\n", i.bytes_expected,
                       format_bytes(b2, sizeof(b2), i.bytes_expected));
        else
                printf("BytesExpected: 0 (unknown)\n");
        printf("Rate: %" PRIu64 " (%s)\n"
               "InitialDataLoaded: %s\n"
               "SwitchoverRequested: %s\n",
               i.rate, format_rate(rate, sizeof(rate), i.rate), yes_no(i.initial_data_loaded),
               yes_no(i.switchover_requested));
        if (i.downtime > 0)
                printf("Downtime: %" PRIu64 "ms\n", i.downtime);
        else
                printf("Downtime: n/a\n");
        printf("ErrorName: %s\n"
               "Error: %s\n"
               "Committed: %s\n"
               "Transport: %s\n",
               na(i.error_name), na(i.error), yes_no(i.committed), na(i.transport));
        if (streq_ptr(i.phase, "indeterminate"))
                log_hint("the outcome is unknown: ask the destination ('vfiomigctl job N' there); then "
                         "'vfiomigctl resolve %" PRIu32 " committed' or 'not-committed'", i.id);
        return 0;
}

int verb_wait(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(ctl_migration_watch_freep) CtlMigrationWatch *watch = NULL;
        _cleanup_free_ char *path = NULL;
        int r;

        r = check_job_name(argv[1], &path);
        if (r != 0)
                return r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_migration_watch_new(bus, &watch);
        if (r < 0)
                return r;
        /* How long the job ran before we came is not known: no duration in the summary. */
        return wait_for_job(watch, path, /* start_usec= */ 0);
}

static int call_migration_method(const char *job, const char *member) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *path = NULL;
        int r;

        r = check_job_name(job, &path);
        if (r != 0)
                return r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, path, VFIOMIG_MIGRATION_INTERFACE, member, &m);
        if (r < 0)
                return r;
        r = ctl_call(bus, m, NULL);
        if (r < 0)
                return r;
        return show_migration_after(bus, path);
}

int verb_switchover(int argc, char *argv[]) {
        return call_migration_method(argv[1], "Switchover");
}

int verb_resolve(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *path = NULL;
        bool committed;
        uint32_t id = 0;
        int r;

        r = check_job_name(argv[1], &path);
        if (r != 0)
                return r;
        if (!ctl_outcome_is_valid(argv[2]))
                return usage_error("Invalid outcome '%s': expected '" VFIOMIG_OUTCOME_COMMITTED "' (the destination "
                                   "job says Committed: yes) or '" VFIOMIG_OUTCOME_NOT_COMMITTED "'.", argv[2]);
        committed = streq(argv[2], VFIOMIG_OUTCOME_COMMITTED);
        (void) ctl_migration_id_from_path(path, &id);

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, path, VFIOMIG_MIGRATION_INTERFACE, "Resolve", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "s", argv[2]);
        if (r < 0)
                return log_error_errno(r, "Failed to append Resolve arguments: %m");
        r = ctl_call(bus, m, NULL);
        if (r < 0)
                return r;
        if (arg_json != JSON_FORMAT_OFF)
                return show_migration_after(bus, path);
        if (!arg_quiet)
                printf(committed ? "Migration %" PRIu32 " resolved as committed: the source devices stay stopped "
                                   "(the destination runs the workload) and the job is completed.\n"
                                 : "Migration %" PRIu32 " resolved as not committed: the source devices run again "
                                   "with their state and the job is failed.\n",
                       id);
        return 0;
}

int verb_cancel(int argc, char *argv[]) {
        return call_migration_method(argv[1], "Cancel");
}

int verb_blob_set(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *path = NULL;
        _cleanup_free_ void *data = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *file = argv[2], *name;
        size_t size = 0;
        int r;

        r = check_device_name(argv[1]);
        if (r != 0)
                return r;

        if (streq(file, "-")) {
                name = "standard input";
                r = read_whole_fd(STDIN_FILENO, name, STREAM_BLOB_MAX, &data, &size);
        } else {
                name = file;
                fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
                if (fd < 0)
                        return log_error_errno(errno, "Failed to open %s: %m", file);
                r = read_whole_fd(fd, name, STREAM_BLOB_MAX, &data, &size);
        }
        if (r == -EFBIG)
                return log_error_errno(r, "%s holds more than %u bytes (1 MiB), the most a migration blob may hold.",
                                       name, STREAM_BLOB_MAX);
        if (r < 0)
                return r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_resolve_device(bus, argv[1], &path);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, path, VFIOMIG_DEVICE_INTERFACE, "SetMigrationBlob", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append_array(m, 'y', data ?: "", size);
        if (r < 0)
                return log_error_errno(r, "Failed to append SetMigrationBlob arguments: %m");
        r = ctl_call(bus, m, NULL);
        if (r < 0)
                return r;
        return show_device_after(bus, path);
}

int verb_blob_get(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_free_ char *path = NULL, *encoded = NULL;
        const char *file = argc > 2 ? argv[2] : NULL;
        const void *data;
        size_t size;
        int r;

        r = check_device_name(argv[1]);
        if (r != 0)
                return r;
        if (file && !*file)
                return usage_error("Empty file name: give a path, or '-' for standard output.");
        if (file && !streq(file, "-") && arg_json != JSON_FORMAT_OFF)
                return usage_error("'blob get DEV FILE' writes the blob to FILE; --json= prints it instead: "
                                   "use one of them.");

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_resolve_device(bus, argv[1], &path);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, path, VFIOMIG_DEVICE_INTERFACE, "GetMigrationBlob", &m);
        if (r < 0)
                return r;
        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read_array(reply, 'y', &data, &size);
        if (r < 0)
                return log_error_errno(r, "Failed to parse GetMigrationBlob reply: %m");

        if (arg_json != JSON_FORMAT_OFF) {
                encoded = base64_encode(data, size);
                j = json_object_new_object();
                if (!encoded || !j)
                        return log_error_errno(ENOMEM, "Out of memory.");
                r = json_add_uint64(j, "length", size);
                if (r >= 0)
                        r = json_add_string(j, "data", encoded);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        return write_output(file ?: "-", 0600, data, size);
}
