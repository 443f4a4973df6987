/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vfiomigctl: the operator's client of vfiomigd. Every decision stays with the daemon; the client
 * turns text into org.vfiomig1 calls and replies into text or JSON. It checks on its own side only
 * what it can report better than the daemon could: state names, --option keys and value types,
 * address space names, access modes, number syntax and the shape of the command line, all before
 * it connects to any bus. Whether a mapping is aligned, fits its file or overlaps another is the
 * daemon's to say.
 */

#include <getopt.h>
#include <inttypes.h>

#include "vfiomigctl.h"

/* The command line as parse_argv() leaves it, for the verbs (vfiomigctl.h). */
const char *arg_address = NULL;
JsonFormat arg_json = JSON_FORMAT_OFF;
uint64_t arg_timeout_usec = 0;
bool arg_quiet = false;
CtlOptionValue *arg_options = NULL;
size_t arg_n_options = 0;
const char *arg_recover = NULL;
bool arg_force_without_p2p = false;
const char *arg_backend = NULL;
const char *arg_sim_mapping = NULL;
const char *arg_file = NULL;
const char *arg_data = NULL;
const char *arg_output = NULL;
uint64_t arg_offset = 0, arg_length = 0, arg_iova = 0;
bool arg_offset_set = false, arg_length_set = false, arg_iova_set = false;
int arg_access = -1; /* CTL_ACCESS_* bits; unset means read and write */
bool arg_run = false;
uint64_t arg_reassembly_budget = 0, arg_stall_timeout = 0;
bool arg_reassembly_budget_set = false, arg_stall_timeout_set = false;
uint64_t arg_setup_timeout = 0;
bool arg_setup_timeout_set = false;
const char *arg_to = NULL;
const char *arg_token = NULL;
const char *arg_token_file = NULL;
unsigned arg_channels = 0;
bool arg_channels_set = false;
bool arg_no_precopy = false;
uint64_t arg_bandwidth = 0, arg_downtime = 0;
bool arg_bandwidth_set = false, arg_downtime_set = false;
const char *arg_switchover = NULL;
bool arg_no_io_uring = false;
bool arg_no_wait = false;
bool arg_ask_password = true;
static bool arg_help = false;

static void arg_options_free(void) {
        for (size_t i = 0; i < arg_n_options; i++)
                ctl_option_value_done(&arg_options[i]);
        free(arg_options);
        arg_options = NULL;
        arg_n_options = 0;
}

/* Which verb-specific options a verb accepts. */
enum {
        VERB_TAKES_OPTION = 1 << 0,
        VERB_TAKES_RECOVER = 1 << 1,
        VERB_TAKES_FORCE_WITHOUT_P2P = 1 << 2,
        VERB_TAKES_BACKEND = 1 << 3,
        VERB_TAKES_SIM_MAPPING = 1 << 4,
        VERB_TAKES_FILE = 1 << 5,
        VERB_TAKES_OFFSET = 1 << 6,
        VERB_TAKES_LENGTH = 1 << 7,
        VERB_TAKES_IOVA = 1 << 8,
        VERB_TAKES_ACCESS = 1 << 9,
        VERB_TAKES_DATA = 1 << 10,
        VERB_TAKES_OUTPUT = 1 << 11,
        VERB_TAKES_RUN = 1 << 12,
        VERB_TAKES_REASSEMBLY_BUDGET = 1 << 13,
        VERB_TAKES_STALL_TIMEOUT = 1 << 14,
        VERB_TAKES_TO = 1 << 15,
        VERB_TAKES_TOKEN = 1 << 16,
        VERB_TAKES_CHANNELS = 1 << 17,
        VERB_TAKES_NO_PRECOPY = 1 << 18,
        VERB_TAKES_BANDWIDTH = 1 << 19,
        VERB_TAKES_DOWNTIME = 1 << 20,
        VERB_TAKES_SWITCHOVER = 1 << 21,
        VERB_TAKES_NO_IO_URING = 1 << 22,
        VERB_TAKES_NO_WAIT = 1 << 23,
        VERB_TAKES_TOKEN_FILE = 1 << 24,
        VERB_TAKES_SETUP_TIMEOUT = 1 << 25,
};

#define VERB_ANY ((unsigned) -1)

typedef struct Verb {
        const char *name;
        unsigned min_args, max_args; /* counting the verb itself, as argv[0] of dispatch */
        unsigned flags;
        int (*dispatch)(int argc, char *argv[]);
        /* A verb with subcommands ("space create") has no dispatch of its own. */
        const struct Verb *subverbs;
        size_t n_subverbs;
} Verb;

static const Verb space_verbs[] = {
        { "create",  1, 1, VERB_TAKES_BACKEND | VERB_TAKES_SIM_MAPPING, verb_space_create },
        { "list",    1, 1, 0,                                           verb_space_list },
        { "show",    2, 2, 0,                                           verb_space_show },
        { "destroy", 2, 2, 0,                                           verb_space_destroy },
};

static const Verb sim_dma_verbs[] = {
        { "write", 2, 2, VERB_TAKES_IOVA | VERB_TAKES_DATA | VERB_TAKES_FILE,     verb_sim_dma_write },
        { "read",  2, 2, VERB_TAKES_IOVA | VERB_TAKES_LENGTH | VERB_TAKES_OUTPUT, verb_sim_dma_read },
};

static const Verb blob_verbs[] = {
        { "set", 3, 3, 0, verb_blob_set },
        { "get", 2, 3, 0, verb_blob_get },
};

#define INCOMING_FLAGS                                                                                   \
        (VERB_TAKES_RUN | VERB_TAKES_REASSEMBLY_BUDGET | VERB_TAKES_STALL_TIMEOUT | VERB_TAKES_FORCE_WITHOUT_P2P | \
         VERB_TAKES_TOKEN_FILE | VERB_TAKES_SETUP_TIMEOUT)
#define MIGRATE_FLAGS                                                                                    \
        (VERB_TAKES_TO | VERB_TAKES_TOKEN | VERB_TAKES_TOKEN_FILE | VERB_TAKES_CHANNELS | VERB_TAKES_NO_PRECOPY | VERB_TAKES_BANDWIDTH | \
         VERB_TAKES_DOWNTIME | VERB_TAKES_SWITCHOVER | VERB_TAKES_NO_IO_URING | VERB_TAKES_FORCE_WITHOUT_P2P |   \
         VERB_TAKES_NO_WAIT | VERB_TAKES_STALL_TIMEOUT)

#define MAP_FLAGS (VERB_TAKES_FILE | VERB_TAKES_OFFSET | VERB_TAKES_LENGTH | VERB_TAKES_IOVA | VERB_TAKES_ACCESS)

static const Verb verbs[] = {
        { "list",           1, 1,        0,                            verb_list },
        { "status",         1, 2,        0,                            verb_status },
        { "attach",         2, 2,        VERB_TAKES_OPTION,            verb_attach },
        { "detach",         2, 2,        0,                            verb_detach },
        { "set-state",      3, 3,        VERB_TAKES_RECOVER,           verb_set_state },
        { "set-states",     3, VERB_ANY, VERB_TAKES_FORCE_WITHOUT_P2P, verb_set_states },
        { "reset",          2, 2,        0,                            verb_reset },
        { "precopy-info",   2, 2,        0,                            verb_precopy_info },
        { "space",          2, VERB_ANY, 0, NULL, space_verbs, ELEMENTSOF(space_verbs) },
        { "map",            2, 2,        MAP_FLAGS,                    verb_map },
        { "unmap",          2, 2,        VERB_TAKES_IOVA | VERB_TAKES_LENGTH, verb_unmap },
        { "attach-space",   3, 3,        0,                            verb_attach_space },
        { "revoke-clients", 2, 2,        0,                            verb_revoke_clients },
        { "save-state",     3, 3,        0,                            verb_save_state },
        { "load-state",     3, 3,        0,                            verb_load_state },
        { "cancel-transfer", 2, 2,       0,                            verb_cancel_transfer },
        { "sim-dma",        2, VERB_ANY, 0, NULL, sim_dma_verbs, ELEMENTSOF(sim_dma_verbs) },
        { "incoming",       2, VERB_ANY, INCOMING_FLAGS,               verb_incoming },
        { "migrate",        2, VERB_ANY, MIGRATE_FLAGS,                verb_migrate },
        { "jobs",           1, 1,        0,                            verb_jobs },
        { "job",            2, 2,        0,                            verb_job },
        { "wait",           2, 2,        0,                            verb_wait },
        { "switchover",     2, 2,        0,                            verb_switchover },
        { "cancel",         2, 2,        0,                            verb_cancel },
        { "resolve",        3, 3,        0,                            verb_resolve },
        { "blob",           2, VERB_ANY, 0, NULL, blob_verbs, ELEMENTSOF(blob_verbs) },
};

static int help_write(FILE *f) {
        _cleanup_free_ char *states = NULL, *keys = NULL;

        states = ctl_settable_states_list();
        keys = ctl_sim_option_keys_list();
        if (!states || !keys)
                return log_error_errno(ENOMEM, "Out of memory.");

        fprintf(f, "%1$s [OPTIONS...] COMMAND [ARGS...]\n"
               "\n"
               "Control the VFIO devices and DMA address spaces owned by vfiomigd.\n"
               "\n"
               "Commands:\n"
               "  list                       List attached devices\n"
               "  status [DEV]               Show the daemon and its devices, or one device\n"
               "  attach ADDRESS             Attach a device (PCI address, sysfs path, sim:NAME)\n"
               "  detach DEV                 Detach a device\n"
               "  set-state DEV STATE        Move a device to a migration state\n"
               "  set-states STATE DEV...    Move devices together, in P2P-safe order\n"
               "  reset DEV                  Reset a device\n"
               "  precopy-info DEV           Show the pre-copy bytes still to be read\n"
               "\n"
               "DMA address spaces:\n"
               "  space create               Create an address space (--backend=, --sim-mapping=)\n"
               "  space list                 List address spaces\n"
               "  space show SPACE           Show an address space and its mappings\n"
               "  space destroy SPACE        Destroy an empty address space\n"
               "  map SPACE --file=PATH --length=N --iova=N [--offset=N] [--access=rw|r|w]\n"
               "                             Map a file range for device DMA\n"
               "  unmap SPACE --iova=N --length=N\n"
               "                             Remove the mappings in a range\n"
               "  attach-space DEV SPACE     Attach a device to an address space\n"
               "  revoke-clients DEV         Forget the clients of a device's fd and reset it\n"
               "  save-state DEV FILE        Save a stopped device's state to FILE ('-': stdout)\n"
               "  load-state DEV FILE        Load a stopped device's state from FILE ('-': stdin)\n"
               "  cancel-transfer DEV        End the save-state or load-state running on DEV\n"
               "  sim-dma write DEV --iova=N --data=STRING|--file=PATH\n"
               "                             DMA into memory from a simulated device\n"
               "  sim-dma read DEV --iova=N --length=N [--output=PATH]\n"
               "                             DMA out of memory by a simulated device\n"
               "\n"
               "Migrations:\n"
               "  incoming DEV... [--run] [--reassembly-budget=SIZE] [--stall-timeout=MS]\n"
               "          [--setup-timeout=MS] [--token-file=FILE]\n"
               "                             Prepare this host to receive devices; prints the job,\n"
               "                             its token and the addresses to migrate to\n"
               "  migrate DEV... --to=HOST[:PORT] --token-file=FILE|--token=-|--token=TOKEN\n"
               "          [--channels=N] [--no-precopy]\n"
               "          [--bandwidth=RATE] [--downtime=MS] [--switchover=auto|manual]\n"
               "          [--stall-timeout=MS] [--no-io-uring] [--no-wait]\n"
               "                             Send devices to a prepared host and wait for the end\n"
               "  jobs                       List migration jobs\n"
               "  job JOB                    Show a migration job\n"
               "  wait JOB                   Wait for a migration job to end, showing progress\n"
               "  switchover JOB             Stop the source devices now and send the rest\n"
               "  cancel JOB                 Cancel a migration job\n"
               "  resolve JOB committed|not-committed\n"
               "                             End an indeterminate job as the destination says\n"
               "  blob set DEV FILE          Set the blob sent after the device's data ('-': stdin)\n"
               "  blob get DEV [FILE]        Write the blob set or received to FILE or stdout\n"
               "\n"
               "Options:\n"
               "  -h --help                  Show this help\n"
               "     --version               Show package version\n"
               "     --address=ADDRESS       Connect to this bus instead of the system bus\n"
               "     --json=short|pretty|off Print JSON instead of text\n"
               "     --timeout=SECONDS       Wait this long for each method call; save-state,\n"
               "                             load-state: the transfer's deadline (default 600)\n"
               "  -q --quiet                 Print nothing on success ('incoming': only the token)\n"
               "     --no-ask-password       Never ask for a password for polkit: fail instead\n"
               "     --option KEY=VALUE      attach: set an option of a simulated device\n"
               "     --recover=STATE         set-state: state to return to if the move fails\n"
               "     --force-without-p2p     set-states, incoming, migrate: allow devices lacking P2P\n"
               "     --backend=iommufd|legacy|sim\n"
               "                             space create: the IOMMU backend (default: the host's)\n"
               "     --sim-mapping=by-file|by-address\n"
               "                             space create: how a sim space maps (default by-file)\n"
               "     --file=PATH             map, sim-dma write: the file to map or write\n"
               "     --offset=N              map: offset in the file (default 0)\n"
               "     --length=N              map, unmap, sim-dma read: bytes\n"
               "     --iova=N                map, unmap, sim-dma: the I/O virtual address\n"
               "     --access=rw|r|w         map: what the device may do (default rw)\n"
               "     --data=STRING           sim-dma write: the bytes to write\n"
               "     --output=PATH           sim-dma read: write the raw bytes there ('-': stdout)\n"
               "     --run                   incoming: run the devices once they are loaded\n"
               "     --reassembly-budget=SIZE\n"
               "                             incoming: bytes held for reordering (default 256M)\n"
               "     --stall-timeout=MS      incoming, migrate: fail after this long without\n"
               "                             progress (default 30s)\n"
               "     --setup-timeout=MS      incoming: fail when no source joins in this long\n"
               "                             (default 10 minutes)\n"
               "     --to=HOST[:PORT]        migrate: the destination (port default %5$d)\n"
               "     --token-file=FILE       incoming: write the token to a new FILE (mode 0600)\n"
               "                             instead of printing it; migrate: read it from FILE\n"
               "     --token=-|TOKEN         migrate: the token from standard input, or TOKEN\n"
               "                             itself (visible to every local user: prefer a file)\n"
               "     --channels=N            migrate: TCP connections, 1-%6$d (default 2)\n"
               "     --no-precopy            migrate: stop the devices first, copy no data live\n"
               "     --bandwidth=RATE        migrate: limit the rate (default unlimited)\n"
               "     --downtime=MS           migrate: the downtime switchover aims for (default 300)\n"
               "     --switchover=auto|manual\n"
               "                             migrate: switch over by itself, or on 'switchover JOB'\n"
               "     --no-io-uring           migrate: plain socket I/O rather than io_uring\n"
               "     --no-wait               migrate: print the job and return at once\n"
               "\n"
               "DEV is a device id (sim_gpu0), an address (sim:gpu0, 0000:3b:00.1) or an object path.\n"
               "SPACE is an address space id (s0) or object path (%4$s/s0).\n"
               "N, SIZE, RATE: bytes, one grammar: 4096, 0x1000, 512M, 1.5G, 4GiB; RATE also 100MB/s.\n"
               "SECONDS, MS: a time span, one grammar: 500ms, 30s, 2min, 1min 30s, 1h; a bare\n"
               "number counts in the unit the option names.\n"
               "JOB is a migration id (3), _3 or object path (%7$s/_3).\n"
               "STATE is one of: %2$s.\n"
               "KEY is one of: %3$s.\n"
               "\n"
               "See the vfiomigctl(1) man page for details.\n",
               PROGRAM_NAME, states, keys, VFIOMIG_SPACE_PATH_PREFIX, VFIOMIG_STREAM_PORT, STREAM_CHANNELS_MAX,
               VFIOMIG_MIGRATION_PATH_PREFIX);
        return 0;
}

static int help(void) {
        return help_write(stdout);
}

static bool has_prefix(const char *s, const char *prefix) {
        return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* Whether name ("migrate", "space create") is in the list of verbs a description clause starts
 * with ("set-states, incoming, migrate: ...", "sim-dma write: ..."), before its colon. */
static bool clause_names(const char *clause, const char *colon, const char *name) {
        size_t n = strlen(name);

        for (const char *p = clause; (p = strstr(p, name)) && p < colon; p += n)
                if ((p == clause || p[-1] == ' ') && (p[n] == ',' || p[n] == ':'))
                        return true;
        return false;
}

/* Whether an option's description is for the verb: one of its clauses ("incoming: write the
 * token ...; migrate: read it from FILE") names the verb, or the verb and its subverb. */
static bool option_for(const char *description, const char *verb, const char *full_name) {
        for (const char *clause = description; clause; ) {
                const char *colon = strchr(clause, ':'), *end = strstr(clause, "; ");

                if (colon && (!end || colon < end) &&
                    (clause_names(clause, colon, verb) || clause_names(clause, colon, full_name)))
                        return true;
                clause = end ? end + 2 : NULL;
        }
        return false;
}

#define HELP_TEXT_COLUMN 29 /* where the help's descriptions start */

/* VERB --help: the verb's lines of the help above (its synopsis and description, the options
 * every verb takes and the ones it takes), then the notes on argument syntax. One text, so the
 * two cannot disagree. */
static int help_verb(const char *verb, const char *subverb) {
        _cleanup_free_ char *text = NULL, *prefix = NULL;
        _cleanup_fclose_ FILE *f = NULL;
        size_t size = 0;
        enum { COMMANDS, OPTIONS, NOTES } part = COMMANDS;
        bool taking = false, general = true;
        int r;

        if (asprintf(&prefix, "  %s%s%s", verb, subverb ? " " : "", subverb ?: "") < 0)
                return log_error_errno(ENOMEM, "Out of memory.");
        f = open_memstream(&text, &size);
        if (!f)
                return log_error_errno(ENOMEM, "Out of memory.");
        r = help_write(f);
        if (r < 0)
                return r;
        if (fflush(f) != 0)
                return log_error_errno(ENOMEM, "Out of memory.");

        printf("%s [OPTIONS...] %s%s%s ...\n\n", PROGRAM_NAME, verb, subverb ? " " : "", subverb ?: "");
        for (char *line = text, *next; line && *line; line = next) {
                bool continuation = strspn(line, " ") >= 4;

                next = strchr(line, '\n');
                if (next)
                        *next++ = 0;
                if (streq(line, "Options:")) {
                        part = OPTIONS;
                        puts("\nOptions:");
                        continue;
                }
                if (part == OPTIONS && *line == 0) {
                        part = NOTES;
                        putchar('\n');
                        continue;
                }
                if (part == NOTES) {
                        puts(line);
                        continue;
                }
                if (part == OPTIONS) {
                        /* An option and the lines that continue its description; the options
                         * listed before --option apply to every verb. */
                        if (strspn(line, " ") < HELP_TEXT_COLUMN) {
                                char description[512] = "";
                                size_t len = 0;

                                if (has_prefix(line, "     --option "))
                                        general = false;
                                /* The whole description: the rest of this line, and the lines
                                 * below indented to its column. */
                                if (strlen(line) > HELP_TEXT_COLUMN && line[HELP_TEXT_COLUMN - 1] == ' ')
                                        len = (size_t) snprintf(description, sizeof description, "%s",
                                                                line + HELP_TEXT_COLUMN);
                                for (const char *l = next; l && strspn(l, " ") >= HELP_TEXT_COLUMN && len < sizeof description;
                                     l = strchr(l, '\n') ? strchr(l, '\n') + 1 : NULL)
                                        len += (size_t) snprintf(description + len, sizeof description - len, "%s%.*s",
                                                                 len > 0 ? " " : "",
                                                                 (int) strcspn(l + HELP_TEXT_COLUMN, "\n"),
                                                                 l + HELP_TEXT_COLUMN);
                                taking = general || option_for(description, verb, prefix + 2);
                        }
                        if (taking)
                                puts(line);
                        continue;
                }
                /* Commands: a synopsis starts with two blanks and the verb; its other lines are
                 * indented further. */
                if (!continuation)
                        taking = has_prefix(line, prefix) && (line[strlen(prefix)] == ' ' || line[strlen(prefix)] == 0);
                if (taking)
                        puts(line);
        }
        return 0;
}

static int parse_sim_option(const char *assignment) {
        _cleanup_free_ char *key = NULL, *keys = NULL;
        const CtlSimOption *option;
        CtlOptionValue v, *grown;
        const char *value;
        int r;

        r = ctl_split_assignment(assignment, &key, &value);
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory.");
        if (r < 0)
                return usage_error("--option expects KEY=VALUE, got '%s'.", assignment);

        option = ctl_sim_option_find(key);
        if (!option) {
                keys = ctl_sim_option_keys_list();
                if (!keys)
                        return log_error_errno(ENOMEM, "Out of memory.");
                return usage_error("Unknown --option key '%s'; known keys: %s.", key, keys);
        }
        /* A dictionary has one value per key; which of two should win is anyone's guess. */
        for (size_t i = 0; i < arg_n_options; i++)
                if (arg_options[i].option == option)
                        return usage_error("--option %s given more than once.", key);

        r = ctl_option_value_parse(option, value, &v);
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory.");
        if (r == -ERANGE)
                return usage_error("Value '%s' of --option %s is out of range for D-Bus type '%s'.",
                                   value, key, option->signature);
        if (r < 0)
                return usage_error("Invalid value '%s' for --option %s: expected %s.",
                                   value, key, ctl_signature_describe(option->signature));

        grown = reallocarray(arg_options, arg_n_options + 1, sizeof(CtlOptionValue));
        if (!grown) {
                ctl_option_value_done(&v);
                return log_error_errno(ENOMEM, "Out of memory.");
        }
        arg_options = grown;
        arg_options[arg_n_options++] = v;
        return 0;
}

/* parse_argv() returns this when the command is to be run; 0 when done (--help, --version),
 * EXIT_USAGE or a negative errno on failure. */
#define ARGV_RUN 1

static const Verb *find_verb(const Verb *table, size_t n, const char *name);

static int parse_argv(int argc, char *argv[], char ***ret_args, size_t *ret_n_args) {
        enum {
                ARG_VERSION = 0x100,
                ARG_ADDRESS,
                ARG_JSON,
                ARG_TIMEOUT,
                ARG_OPTION,
                ARG_RECOVER,
                ARG_FORCE_WITHOUT_P2P,
                ARG_BACKEND,
                ARG_SIM_MAPPING,
                ARG_FILE,
                ARG_OFFSET,
                ARG_LENGTH,
                ARG_IOVA,
                ARG_ACCESS,
                ARG_DATA,
                ARG_OUTPUT,
                ARG_RUN,
                ARG_REASSEMBLY_BUDGET,
                ARG_STALL_TIMEOUT,
                ARG_SETUP_TIMEOUT,
                ARG_TO,
                ARG_TOKEN,
                ARG_TOKEN_FILE,
                ARG_CHANNELS,
                ARG_NO_PRECOPY,
                ARG_BANDWIDTH,
                ARG_DOWNTIME,
                ARG_SWITCHOVER,
                ARG_NO_IO_URING,
                ARG_NO_WAIT,
                ARG_NO_ASK_PASSWORD,
        };
        static const struct option options[] = {
                { "help",              no_argument,       NULL, 'h'                   },
                { "version",           no_argument,       NULL, ARG_VERSION           },
                { "address",           required_argument, NULL, ARG_ADDRESS           },
                { "json",              required_argument, NULL, ARG_JSON              },
                { "timeout",           required_argument, NULL, ARG_TIMEOUT           },
                { "quiet",             no_argument,       NULL, 'q'                   },
                { "option",            required_argument, NULL, ARG_OPTION            },
                { "recover",           required_argument, NULL, ARG_RECOVER           },
                { "force-without-p2p", no_argument,       NULL, ARG_FORCE_WITHOUT_P2P },
                { "backend",           required_argument, NULL, ARG_BACKEND           },
                { "sim-mapping",       required_argument, NULL, ARG_SIM_MAPPING       },
                { "file",              required_argument, NULL, ARG_FILE              },
                { "offset",            required_argument, NULL, ARG_OFFSET            },
                { "length",            required_argument, NULL, ARG_LENGTH            },
                { "iova",              required_argument, NULL, ARG_IOVA              },
                { "access",            required_argument, NULL, ARG_ACCESS            },
                { "data",              required_argument, NULL, ARG_DATA              },
                { "output",            required_argument, NULL, ARG_OUTPUT            },
                { "run",               no_argument,       NULL, ARG_RUN               },
                { "reassembly-budget", required_argument, NULL, ARG_REASSEMBLY_BUDGET },
                { "stall-timeout",     required_argument, NULL, ARG_STALL_TIMEOUT     },
                { "setup-timeout",     required_argument, NULL, ARG_SETUP_TIMEOUT     },
                { "to",                required_argument, NULL, ARG_TO                },
                { "token",             required_argument, NULL, ARG_TOKEN             },
                { "token-file",        required_argument, NULL, ARG_TOKEN_FILE        },
                { "channels",          required_argument, NULL, ARG_CHANNELS          },
                { "no-precopy",        no_argument,       NULL, ARG_NO_PRECOPY        },
                { "bandwidth",         required_argument, NULL, ARG_BANDWIDTH         },
                { "downtime",          required_argument, NULL, ARG_DOWNTIME          },
                { "switchover",        required_argument, NULL, ARG_SWITCHOVER        },
                { "no-io-uring",       no_argument,       NULL, ARG_NO_IO_URING       },
                { "no-wait",           no_argument,       NULL, ARG_NO_WAIT           },
                { "no-ask-password",   no_argument,       NULL, ARG_NO_ASK_PASSWORD   },
                {}
        };
        _cleanup_free_ char **args = NULL;
        size_t n_args = 0;
        int c, r;

        args = new0(char *, (size_t) argc + 1);
        if (!args)
                return log_error_errno(ENOMEM, "Out of memory.");

        /* getopt_long() prefixes its own messages with argv[0]; make them look like ours. */
        argv[0] = (char *) PROGRAM_NAME;

        /* The leading '-' hands us the non-options in order, so options may follow the command
         * and its arguments even when POSIXLY_CORRECT would make getopt stop at the first one. */
        while ((c = getopt_long(argc, argv, "-hq", options, NULL)) >= 0)
                switch (c) {

                case 1:
                        args[n_args++] = optarg;
                        break;

                case 'h':
                        arg_help = true;
                        break;

                case ARG_VERSION:
                        puts(PROGRAM_NAME " " PACKAGE_VERSION);
                        return 0;

                case ARG_ADDRESS:
                        if (!*optarg)
                                return usage_error("--address= requires a bus address.");
                        arg_address = optarg;
                        break;

                case ARG_JSON:
                        arg_json = json_format_from_string(optarg);
                        if (arg_json < 0)
                                return usage_error("Invalid --json= mode '%s': expected short, pretty or off.",
                                                   optarg);
                        break;

                case ARG_TIMEOUT:
                        r = ctl_parse_timeout(optarg, &arg_timeout_usec);
                        if (r < 0)
                                return usage_error("Invalid --timeout= '%s': expected a positive number of "
                                                   "seconds, optionally with up to six decimals.", optarg);
                        break;

                case 'q':
                        arg_quiet = true;
                        break;

                case ARG_OPTION:
                        r = parse_sim_option(optarg);
                        if (r != 0)
                                return r;
                        break;

                case ARG_RECOVER:
                        r = check_state("--recover= state", optarg);
                        if (r != 0)
                                return r;
                        arg_recover = optarg;
                        break;

                case ARG_FORCE_WITHOUT_P2P:
                        arg_force_without_p2p = true;
                        break;

                case ARG_BACKEND:
                        if (!ctl_backend_is_valid(optarg))
                                return usage_error("Invalid --backend= '%s': expected %s, %s or %s.", optarg,
                                                   VFIOMIG_BACKEND_IOMMUFD, VFIOMIG_BACKEND_LEGACY,
                                                   VFIOMIG_BACKEND_SIM);
                        arg_backend = optarg;
                        break;

                case ARG_SIM_MAPPING:
                        if (!ctl_sim_mapping_is_valid(optarg))
                                return usage_error("Invalid --sim-mapping= '%s': expected by-file or by-address.",
                                                   optarg);
                        arg_sim_mapping = optarg;
                        break;

                case ARG_FILE:
                        if (!*optarg)
                                return usage_error("--file= requires a path.");
                        arg_file = optarg;
                        break;

                case ARG_DATA:
                        arg_data = optarg;
                        break;

                case ARG_OUTPUT:
                        if (!*optarg)
                                return usage_error("--output= requires a path, or '-' for standard output.");
                        arg_output = optarg;
                        break;

                case ARG_OFFSET:
                case ARG_LENGTH:
                case ARG_IOVA: {
                        const char *name = c == ARG_OFFSET ? "--offset=" : c == ARG_LENGTH ? "--length=" : "--iova=";
                        uint64_t *v = c == ARG_OFFSET ? &arg_offset : c == ARG_LENGTH ? &arg_length : &arg_iova;
                        bool *set = c == ARG_OFFSET ? &arg_offset_set : c == ARG_LENGTH ? &arg_length_set : &arg_iova_set;

                        r = ctl_parse_size(optarg, v);
                        if (r == -ERANGE)
                                return usage_error("Invalid %s '%s': past 2^64-1.", name, optarg);
                        if (r < 0)
                                return usage_error("Invalid %s '%s': expected %s.", name, optarg,
                                                   ctl_signature_describe("t"));
                        *set = true;
                        break;
                }

                case ARG_ACCESS:
                        arg_access = ctl_access_from_string(optarg);
                        if (arg_access < 0)
                                return usage_error("Invalid --access= '%s': expected rw (read and write), r (device "
                                                   "reads only) or w (device writes only).", optarg);
                        break;

                case ARG_RUN:
                        arg_run = true;
                        break;

                case ARG_REASSEMBLY_BUDGET:
                        r = ctl_parse_bytes(optarg, /* rate= */ false, &arg_reassembly_budget);
                        if (r == -ERANGE)
                                return usage_error("Invalid --reassembly-budget= '%s': past 2^64-1 bytes.", optarg);
                        if (r < 0)
                                return usage_error("Invalid --reassembly-budget= '%s': expected a size such as "
                                                   "256M, 1.5G or 512MiB.", optarg);
                        /* 0 would mean "the default" on the bus, which is not what anyone typing it wants. */
                        if (arg_reassembly_budget == 0)
                                return usage_error("Invalid --reassembly-budget= '%s': must be more than 0.", optarg);
                        arg_reassembly_budget_set = true;
                        break;

                case ARG_STALL_TIMEOUT:
                case ARG_SETUP_TIMEOUT:
                case ARG_DOWNTIME: {
                        const char *name = c == ARG_STALL_TIMEOUT ? "--stall-timeout=" :
                                           c == ARG_SETUP_TIMEOUT ? "--setup-timeout=" : "--downtime=";
                        uint64_t *v = c == ARG_STALL_TIMEOUT ? &arg_stall_timeout :
                                      c == ARG_SETUP_TIMEOUT ? &arg_setup_timeout : &arg_downtime;

                        r = ctl_parse_msec(optarg, v);
                        if (r == -ERANGE)
                                return usage_error("Invalid %s '%s': past 2^64-1 milliseconds.", name, optarg);
                        if (r < 0)
                                return usage_error("Invalid %s '%s': expected milliseconds such as 300, 300ms or 30s.",
                                                   name, optarg);
                        if (*v == 0)
                                return usage_error("Invalid %s '%s': must be more than 0.", name, optarg);
                        if (c == ARG_STALL_TIMEOUT)
                                arg_stall_timeout_set = true;
                        else if (c == ARG_SETUP_TIMEOUT)
                                arg_setup_timeout_set = true;
                        else
                                arg_downtime_set = true;
                        break;
                }

                case ARG_TO:
                        arg_to = optarg;
                        break;

                case ARG_TOKEN:
                        arg_token = optarg;
                        break;

                case ARG_TOKEN_FILE:
                        if (!*optarg)
                                return usage_error("--token-file= requires a path.");
                        if (streq(optarg, "-"))
                                return usage_error("--token-file= takes a path; '--token -' reads the token from "
                                                   "standard input.");
                        arg_token_file = optarg;
                        break;

                case ARG_CHANNELS:
                        r = ctl_parse_unsigned(optarg, 1, STREAM_CHANNELS_MAX, &arg_channels);
                        if (r < 0)
                                return usage_error("Invalid --channels= '%s': expected a number from 1 to %d.", optarg,
                                                   STREAM_CHANNELS_MAX);
                        arg_channels_set = true;
                        break;

                case ARG_NO_PRECOPY:
                        arg_no_precopy = true;
                        break;

                case ARG_BANDWIDTH:
                        r = ctl_parse_bytes(optarg, /* rate= */ true, &arg_bandwidth);
                        if (r == -ERANGE)
                                return usage_error("Invalid --bandwidth= '%s': past 2^64-1 bytes per second.", optarg);
                        if (r < 0)
                                return usage_error("Invalid --bandwidth= '%s': expected bytes per second such as "
                                                   "100M, 1.5G or 500MiB/s (0 for no limit).", optarg);
                        arg_bandwidth_set = true;
                        break;

                case ARG_SWITCHOVER:
                        if (!ctl_switchover_mode_is_valid(optarg))
                                return usage_error("Invalid --switchover= '%s': expected auto or manual.", optarg);
                        arg_switchover = optarg;
                        break;

                case ARG_NO_IO_URING:
                        arg_no_io_uring = true;
                        break;

                case ARG_NO_WAIT:
                        arg_no_wait = true;
                        break;

                case ARG_NO_ASK_PASSWORD:
                        arg_ask_password = false;
                        break;

                case '?':
                        /* getopt_long() has said what is wrong. */
                        return EXIT_USAGE;

                default:
                        return log_error_errno(EINVAL, "Unhandled option %d.", c);
                }

        /* After "--", getopt stops and leaves the rest for us. */
        for (int i = optind; i < argc; i++)
                args[n_args++] = argv[i];

        if (arg_help) {
                const Verb *v = n_args > 0 ? find_verb(verbs, ELEMENTSOF(verbs), args[0]) : NULL;
                const Verb *sub = v && v->n_subverbs > 0 && n_args > 1 ?
                                          find_verb(v->subverbs, v->n_subverbs, args[1]) : NULL;

                if (!v)
                        return help();
                return help_verb(v->name, sub ? sub->name : NULL);
        }

        *ret_args = TAKE_PTR(args);
        *ret_n_args = n_args;
        return ARGV_RUN;
}

static const Verb *find_verb(const Verb *table, size_t n, const char *name) {
        for (size_t i = 0; i < n; i++)
                if (streq(name, table[i].name))
                        return &table[i];
        return NULL;
}

/* "'map', 'unmap' and 'sim-dma read'": every command that takes the option flag, for usage errors. */
static char *verbs_taking(unsigned flag) {
        char names[32][48];
        size_t n = 0, len = 1;
        char *s, *p;

        for (size_t i = 0; i < ELEMENTSOF(verbs); i++) {
                if ((verbs[i].flags & flag) && n < ELEMENTSOF(names))
                        (void) snprintf(names[n++], sizeof(names[0]), "'%s'", verbs[i].name);
                for (size_t k = 0; k < verbs[i].n_subverbs; k++)
                        if ((verbs[i].subverbs[k].flags & flag) && n < ELEMENTSOF(names))
                                (void) snprintf(names[n++], sizeof(names[0]), "'%s %s'", verbs[i].name,
                                                verbs[i].subverbs[k].name);
        }
        for (size_t i = 0; i < n; i++)
                len += strlen(names[i]) + 5;
        s = p = malloc(len);
        if (!s)
                return NULL;
        *p = 0;
        for (size_t i = 0; i < n; i++)
                p = stpcpy(stpcpy(p, i == 0 ? "" : i + 1 == n ? " and " : ", "), names[i]);
        return s;
}

/* Every verb-specific option given must be one the command takes. */
static int check_verb_options(const Verb *verb) {
        const struct {
                unsigned flag;
                const char *name;
                bool given;
        } options[] = {
                { VERB_TAKES_OPTION,            "--option",            arg_n_options > 0     },
                { VERB_TAKES_RECOVER,           "--recover=",          arg_recover           },
                { VERB_TAKES_FORCE_WITHOUT_P2P, "--force-without-p2p", arg_force_without_p2p },
                { VERB_TAKES_BACKEND,           "--backend=",          arg_backend           },
                { VERB_TAKES_SIM_MAPPING,       "--sim-mapping=",      arg_sim_mapping       },
                { VERB_TAKES_FILE,              "--file=",             arg_file              },
                { VERB_TAKES_OFFSET,            "--offset=",           arg_offset_set        },
                { VERB_TAKES_LENGTH,            "--length=",           arg_length_set        },
                { VERB_TAKES_IOVA,              "--iova=",             arg_iova_set          },
                { VERB_TAKES_ACCESS,            "--access=",           arg_access >= 0       },
                { VERB_TAKES_DATA,              "--data=",             arg_data              },
                { VERB_TAKES_OUTPUT,            "--output=",           arg_output            },
                { VERB_TAKES_RUN,               "--run",               arg_run               },
                { VERB_TAKES_REASSEMBLY_BUDGET, "--reassembly-budget=", arg_reassembly_budget_set },
                { VERB_TAKES_STALL_TIMEOUT,     "--stall-timeout=",    arg_stall_timeout_set },
                { VERB_TAKES_SETUP_TIMEOUT,     "--setup-timeout=",    arg_setup_timeout_set },
                { VERB_TAKES_TO,                "--to=",               arg_to                },
                { VERB_TAKES_TOKEN,             "--token=",            arg_token             },
                { VERB_TAKES_TOKEN_FILE,        "--token-file=",       arg_token_file        },
                { VERB_TAKES_CHANNELS,          "--channels=",         arg_channels_set      },
                { VERB_TAKES_NO_PRECOPY,        "--no-precopy",        arg_no_precopy        },
                { VERB_TAKES_BANDWIDTH,         "--bandwidth=",        arg_bandwidth_set     },
                { VERB_TAKES_DOWNTIME,          "--downtime=",         arg_downtime_set      },
                { VERB_TAKES_SWITCHOVER,        "--switchover=",       arg_switchover        },
                { VERB_TAKES_NO_IO_URING,       "--no-io-uring",       arg_no_io_uring       },
                { VERB_TAKES_NO_WAIT,           "--no-wait",           arg_no_wait           },
        };

        for (size_t i = 0; i < ELEMENTSOF(options); i++) {
                _cleanup_free_ char *list = NULL;

                if (!options[i].given || (verb->flags & options[i].flag))
                        continue;
                list = verbs_taking(options[i].flag);
                if (!list)
                        return log_error_errno(ENOMEM, "Out of memory.");
                return usage_error("%s is only valid with %s.", options[i].name, list);
        }
        return 0;
}

static int dispatch_verb(size_t n_args, char **args) {
        const Verb *verb = NULL;
        const char *name;
        char full_name[64];
        int r;

        if (n_args == 0)
                return usage_error("Missing command. See '%s --help'.", PROGRAM_NAME);

        verb = find_verb(verbs, ELEMENTSOF(verbs), args[0]);
        if (!verb)
                return usage_error("Unknown command '%s'. See '%s --help'.", args[0], PROGRAM_NAME);
        name = verb->name;

        if (verb->n_subverbs > 0) {
                const Verb *sub;
                char choices[128] = "";
                size_t at = 0;

                for (size_t i = 0; i < verb->n_subverbs && at < sizeof(choices); i++)
                        at += (size_t) snprintf(choices + at, sizeof(choices) - at, "%s%s", i > 0 ? ", " : "",
                                                verb->subverbs[i].name);

                if (n_args < 2)
                        return usage_error("Missing subcommand for '%s': expected one of %s.", verb->name, choices);
                sub = find_verb(verb->subverbs, verb->n_subverbs, args[1]);
                if (!sub)
                        return usage_error("Unknown subcommand '%s %s': expected one of %s.", verb->name, args[1],
                                           choices);
                (void) snprintf(full_name, sizeof(full_name), "%s %s", verb->name, sub->name);
                name = full_name;
                verb = sub;
                n_args--;
                args++;
        }

        if (n_args < verb->min_args)
                return usage_error("Too few arguments for '%s'. See '%s --help'.", name, PROGRAM_NAME);
        if (verb->max_args != VERB_ANY && n_args > verb->max_args)
                return usage_error("Too many arguments for '%s'. See '%s --help'.", name, PROGRAM_NAME);

        r = check_verb_options(verb);
        if (r != 0)
                return r;

        r = verb->dispatch((int) n_args, args);
        if (r != 0)
                return r;

        /* A full disk or a closed pipe must not pass for success: scripts read what we wrote. */
        if (fflush(stdout) != 0)
                return log_error_errno(errno, "Failed to write output: %m");
        if (ferror(stdout))
                return log_error_errno(EIO, "Failed to write output: %m");
        return 0;
}

static int run(int argc, char *argv[]) {
        _cleanup_free_ char **args = NULL;
        size_t n_args = 0;
        int r;

        r = parse_argv(argc, argv, &args, &n_args);
        if (r != ARGV_RUN)
                return r;

        return dispatch_verb(n_args, args);
}

int main(int argc, char *argv[]) {
        int r;

        r = run(argc, argv);
        arg_options_free();

        /* Negative errno: already reported, exit 1. Positive: an exit status (EXIT_USAGE). */
        return r < 0 ? EXIT_FAILURE : r;
}

