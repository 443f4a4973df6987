/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Helpers every verb family of vfiomigctl uses: names checked before any bus is touched,
 * printing in the --json or table form, whole-file I/O and the {sv} options of a call.
 */

#include <fcntl.h>
#include <inttypes.h>

#include "ctl-polkit-agent.h"
#include "vfiomigctl.h"

const char *yes_no(bool b) {
        return b ? "yes" : "no";
}

/* Empty values read better as "n/a" than as nothing after the colon. */
const char *na(const char *s) {
        return s && *s ? s : "n/a";
}

int acquire_bus(sd_bus **ret) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r;

        r = ctl_bus_connect(arg_address, arg_timeout_usec, &bus);
        if (r < 0)
                return r;
        /* Let polkit ask for a password (auth_admin, auth_self) instead of refusing, and have
         * an agent on this terminal to ask it; --no-ask-password keeps both off. */
        if (arg_ask_password) {
                r = sd_bus_set_allow_interactive_authorization(bus, true);
                if (r < 0)
                        return log_error_errno(r, "Failed to allow interactive authorization: %m");
                ctl_polkit_agent_open(arg_address);
        }
        *ret = TAKE_PTR(bus);
        return 0;
}

int check_device_name(const char *dev) {
        if (!ctl_device_name_is_valid(dev))
                return usage_error("Invalid device '%s': expected an id, an address or an object path.", dev);
        return 0;
}

int check_space_name(const char *space) {
        if (!ctl_space_name_is_valid(space))
                return usage_error("Invalid address space '%s': expected an id such as s0, or an object path "
                                   "%s/ID.", space, VFIOMIG_SPACE_PATH_PREFIX);
        return 0;
}

/* A usage error unless the option a verb needs was given. */
int require_option(const char *verb, bool given, const char *option) {
        if (!given)
                return usage_error("'%s' needs %s. See '%s --help'.", verb, option, PROGRAM_NAME);
        return 0;
}

int check_state(const char *what, const char *state) {
        _cleanup_free_ char *states = NULL;

        if (ctl_state_is_settable(state))
                return 0;

        states = ctl_settable_states_list();
        if (!states)
                return log_error_errno(ENOMEM, "Out of memory.");
        if (streq(state, "error"))
                return usage_error("Invalid %s 'error': a device only ever falls into it; valid states: %s.",
                                   what, states);
        return usage_error("Invalid %s '%s'; valid states: %s.", what, state, states);
}

int print_json(json_object *j) {
        if (arg_quiet)
                return 0;
        return json_print(j, arg_json, stdout);
}

/* A listing's table, or the empty message when it has no rows; nothing with --quiet. */
int print_table(Table *t, size_t n_rows, const char *empty) {
        if (arg_quiet)
                return 0;
        if (n_rows == 0) {
                puts(empty);
                return 0;
        }
        return table_print(t, stdout);
}

/* All of fd, at most max bytes. -EFBIG past max, for the caller to word; other failures are logged
 * naming name. */
int read_whole_fd(int fd, const char *name, uint64_t max, void **ret, size_t *ret_size) {
        _cleanup_free_ uint8_t *buf = NULL;
        size_t size = 0, allocated = 0;

        for (;;) {
                ssize_t n;

                if (size == allocated) {
                        uint8_t *grown;

                        if (allocated > max)
                                return -EFBIG;
                        allocated = allocated ? allocated * 2 : 65536;
                        grown = realloc(buf, allocated);
                        if (!grown)
                                return log_error_errno(ENOMEM, "Out of memory.");
                        buf = grown;
                }
                n = read(fd, buf + size, allocated - size);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return log_error_errno(errno, "Failed to read %s: %m", name);
                }
                if (n == 0)
                        break;
                size += (size_t) n;
        }
        if (size > max)
                return -EFBIG;

        *ret = TAKE_PTR(buf);
        *ret_size = size;
        return 0;
}

int read_whole_file(const char *path, uint64_t max, void **ret, size_t *ret_size) {
        _cleanup_close_ int fd = -EBADF;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return log_error_errno(errno, "Failed to open %s: %m", path);
        r = read_whole_fd(fd, path, max, ret, ret_size);
        if (r == -EFBIG)
                return log_error_errno(r, "%s is larger than %" PRIu64 " bytes.", path, max);
        return r;
}

int write_all(int fd, const void *data, size_t size) {
        const uint8_t *p = data;

        while (size > 0) {
                ssize_t n = write(fd, p, size);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += n;
                size -= (size_t) n;
        }
        return 0;
}

int check_job_name(const char *job, char **ret_path) {
        int r;

        r = ctl_migration_path(job, ret_path);
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory.");
        if (r == -ERANGE)
                return usage_error("Invalid migration '%s': the id is past 2^32-1.", job);
        if (r < 0)
                return usage_error("Invalid migration '%s': expected its id N (3), _N or the object path %s/_N.",
                                   job, VFIOMIG_MIGRATION_PATH_PREFIX);
        return 0;
}

/* The object paths of DEV... in the order given. */
int resolve_devices(sd_bus *bus, char **devs, size_t n, char ***ret) {
        _cleanup_strv_free_ char **paths = NULL;

        paths = new0(char *, n + 1);
        if (!paths)
                return log_error_errno(ENOMEM, "Out of memory.");
        for (size_t i = 0; i < n; i++) {
                int r = ctl_resolve_device(bus, devs[i], &paths[i]);
                if (r < 0)
                        return r;
        }
        *ret = TAKE_PTR(paths);
        return 0;
}

int append_object_paths(sd_bus_message *m, char **paths) {
        int r;

        r = sd_bus_message_open_container(m, SD_BUS_TYPE_ARRAY, "o");
        for (char **p = paths; r >= 0 && *p; p++)
                r = sd_bus_message_append_basic(m, 'o', *p);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

int append_option_bool(sd_bus_message *m, const char *key, bool b) {
        return sd_bus_message_append(m, "{sv}", key, "b", (int) b);
}

int append_option_u64(sd_bus_message *m, const char *key, uint64_t t) {
        return sd_bus_message_append(m, "{sv}", key, "t", t);
}

/* data into path ("-": stdout, where --quiet prints nothing), created with mode when new. */
int write_output(const char *path, mode_t mode, const void *data, size_t size) {
        _cleanup_close_ int fd = -EBADF;
        int r;

        if (streq(path, "-")) {
                if (arg_quiet || size == 0)
                        return 0;
                if (fwrite(data, 1, size, stdout) != size)
                        return log_error_errno(EIO, "Failed to write output: %m");
                return 0;
        }
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY, mode);
        if (fd < 0)
                return log_error_errno(errno, "Failed to open %s: %m", path);
        r = write_all(fd, data, size);
        if (r < 0)
                return log_error_errno(r, "Failed to write %s: %m", path);
        if (close(TAKE_FD(fd)) < 0)
                return log_error_errno(errno, "Failed to write %s: %m", path);
        return 0;
}

int show_device_after(sd_bus *bus, const char *path) {
        _cleanup_(device_info_done) DeviceInfo d = {};
        _cleanup_(json_object_putp) json_object *j = NULL;
        int r;

        if (arg_json == JSON_FORMAT_OFF)
                return 0;
        r = ctl_get_device_info(bus, path, /* gone_ok= */ false, &d);
        if (r < 0)
                return r;
        r = device_to_json(&d, /* full= */ true, &j);
        if (r < 0)
                return log_error_errno(r, "Failed to build JSON: %m");
        return print_json(j);
}

int show_space_after(sd_bus *bus, const char *path) {
        _cleanup_(space_info_done) SpaceInfo s = {};
        _cleanup_(json_object_putp) json_object *j = NULL;
        int r;

        if (arg_json == JSON_FORMAT_OFF)
                return 0;
        r = ctl_get_space_info(bus, path, /* with_mappings= */ false, /* gone_ok= */ false, &s);
        if (r < 0)
                return r;
        r = space_to_json(&s, /* full= */ false, &j);
        if (r < 0)
                return log_error_errno(r, "Failed to build JSON: %m");
        return print_json(j);
}

int show_migration_after(sd_bus *bus, const char *path) {
        _cleanup_(migration_info_done) MigrationInfo i = {};
        _cleanup_(json_object_putp) json_object *j = NULL;
        int r;

        if (arg_json == JSON_FORMAT_OFF)
                return 0;
        r = ctl_get_migration_info(bus, path, /* gone_ok= */ false, &i);
        if (r < 0)
                return r;
        r = migration_to_json(&i, &j);
        if (r < 0)
                return log_error_errno(r, "Failed to build JSON: %m");
        return print_json(j);
}

int print_detached(const char *id, const char *object) {
        _cleanup_(json_object_putp) json_object *j = NULL;
        int r;

        j = json_object_new_object();
        if (!j)
                return log_error_errno(ENOMEM, "Out of memory.");
        r = json_add_string(j, "id", id);
        if (r >= 0)
                r = json_add_string(j, "object", object);
        if (r < 0)
                return log_error_errno(r, "Failed to build JSON: %m");
        return print_json(j);
}
