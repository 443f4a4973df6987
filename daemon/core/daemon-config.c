/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <fcntl.h>
#include <json.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h" /* SYSCONFDIR */
#include "daemon-config.h"
#include "device-options.h"
#include "migration.h"

static void json_putp(json_object **o) {
        if (*o)
                json_object_put(*o);
}

static void json_tokener_freep(json_tokener **t) {
        if (*t)
                json_tokener_free(*t);
}

void daemon_config_done(DaemonConfig *c) {
        for (size_t i = 0; i < c->n_devices; i++)
                free(c->devices[i].address);
        free(c->devices);
        free(c->stream_listen);
        *c = (DaemonConfig) {};
}

/* Converts a JSON member to the option's type. */
static int json_to_option(const char *where, const char *key, json_object *v, OptionValue *ret, char ***strv,
                          ErrorMessage *err) {
        OptionType type = sim_option_type(key);
        size_t n;

        if (type < 0)
                return error_setf(err, -EINVAL, "%s: unknown option '%s'", where, key);
        *ret = (OptionValue) { .type = type };
        switch (type) {
        case OPTION_U64:
                /* json-c stores integers as int64 (or uint64 above INT64_MAX): reject negatives */
                if (!json_object_is_type(v, json_type_int) || json_object_get_int64(v) < 0)
                        return error_setf(err, -EINVAL, "%s: '%s' must be a non-negative integer", where, key);
                ret->u64 = json_object_get_uint64(v);
                return 0;
        case OPTION_BOOL:
                if (!json_object_is_type(v, json_type_boolean))
                        return error_setf(err, -EINVAL, "%s: '%s' must be true or false", where, key);
                ret->b = json_object_get_boolean(v);
                return 0;
        case OPTION_STRV:
                if (!json_object_is_type(v, json_type_array))
                        return error_setf(err, -EINVAL, "%s: '%s' must be an array of strings", where, key);
                n = json_object_array_length(v);
                strv_free(*strv);
                *strv = new0(char *, n + 1);
                if (!*strv)
                        return -ENOMEM;
                for (size_t i = 0; i < n; i++) {
                        json_object *e = json_object_array_get_idx(v, i);
                        if (!json_object_is_type(e, json_type_string))
                                return error_setf(err, -EINVAL, "%s: '%s' must be an array of strings", where, key);
                        (*strv)[i] = strdup(json_object_get_string(e));
                        if (!(*strv)[i])
                                return -ENOMEM;
                }
                ret->strv = *strv;
                return 0;
        default:
                return -EINVAL;
        }
}

static int parse_device(json_object *o, size_t index, ConfigDevice *ret, ErrorMessage *err) {
        _cleanup_free_ char *address = NULL;
        char where[48];
        AttachOptions options;
        json_object *v;
        int r;

        (void) snprintf(where, sizeof where, "devices[%zu]", index);
        attach_options_init(&options);
        if (!json_object_is_type(o, json_type_object))
                return error_setf(err, -EINVAL, "%s must be an object", where);

        json_object_object_foreach(o, key, val) {
                if (streq(key, "address")) {
                        if (!json_object_is_type(val, json_type_string))
                                return error_setf(err, -EINVAL, "%s.address must be a string", where);
                        address = strdup(json_object_get_string(val));
                        if (!address)
                                return -ENOMEM;
                } else if (streq(key, "options")) {
                        if (!json_object_is_type(val, json_type_object))
                                return error_setf(err, -EINVAL, "%s.options must be an object", where);
                } else
                        return error_setf(err, -EINVAL, "%s: unknown key '%s'", where, key);
        }
        if (!address)
                return error_setf(err, -EINVAL, "%s has no \"address\"", where);

        if (json_object_object_get_ex(o, "options", &v)) {
                json_object_object_foreach(v, opt_key, opt_val) {
                        _cleanup_strv_free_ char **strv = NULL;
                        OptionValue value;

                        r = json_to_option(where, opt_key, opt_val, &value, &strv, err);
                        if (r < 0)
                                return r;
                        ErrorMessage inner = {};
                        r = sim_config_apply(&options.sim, opt_key, &value, &inner);
                        if (r < 0)
                                return error_setf(err, r, "%s.options: %s", where, inner.text);
                        options.sim_options_given = true;
                }
        }

        *ret = (ConfigDevice) { .address = TAKE_PTR(address), .options = options };
        return 0;
}

int daemon_config_parse(const char *text, DaemonConfig *ret, ErrorMessage *err) {
        _cleanup_(json_putp) json_object *root = NULL;
        _cleanup_(json_tokener_freep) json_tokener *tok = NULL;
        DaemonConfig c = {};
        json_object *devices = NULL;
        const char *stream_listen = NULL;
        int r;

        tok = json_tokener_new();
        if (!tok)
                return -ENOMEM;
        root = json_tokener_parse_ex(tok, text, (int) strlen(text));
        if (!root || json_tokener_get_error(tok) != json_tokener_success)
                return error_setf(err, -EINVAL, "not valid JSON (%s, near byte %zu)",
                                  json_tokener_error_desc(json_tokener_get_error(tok)),
                                  json_tokener_get_parse_end(tok));
        if (!json_object_is_type(root, json_type_object))
                return error_setf(err, -EINVAL, "the top level must be a JSON object");

        json_object_object_foreach(root, key, val) {
                if (streq(key, "allow-simulated")) {
                        if (!json_object_is_type(val, json_type_boolean))
                                return error_setf(err, -EINVAL, "allow-simulated must be true or false");
                        c.allow_simulated = json_object_get_boolean(val);
                } else if (streq(key, "max-devices")) {
                        int64_t n = json_object_get_int64(val);
                        if (!json_object_is_type(val, json_type_int) || n < 1 || n > MANAGER_MAX_DEVICES_LIMIT)
                                return error_setf(err, -EINVAL, "max-devices must be an integer from 1 to %u",
                                                  MANAGER_MAX_DEVICES_LIMIT);
                        c.max_devices = (unsigned) n;
                } else if (streq(key, "max-spaces")) {
                        int64_t n = json_object_get_int64(val);
                        if (!json_object_is_type(val, json_type_int) || n < 1 || n > MANAGER_MAX_SPACES_LIMIT)
                                return error_setf(err, -EINVAL, "max-spaces must be an integer from 1 to %u",
                                                  MANAGER_MAX_SPACES_LIMIT);
                        c.max_spaces = (unsigned) n;
                } else if (streq(key, "max-mappings")) {
                        int64_t n = json_object_get_int64(val);
                        if (!json_object_is_type(val, json_type_int) || n < 1 || n > MANAGER_MAX_MAPPINGS_LIMIT)
                                return error_setf(err, -EINVAL, "max-mappings must be an integer from 1 to %u",
                                                  MANAGER_MAX_MAPPINGS_LIMIT);
                        c.max_mappings = (unsigned) n;
                } else if (streq(key, "max-pinned-bytes")) {
                        if (!json_object_is_type(val, json_type_int) || json_object_get_int64(val) < 4096)
                                return error_setf(err, -EINVAL, "max-pinned-bytes must be an integer of at least 4096");
                        c.max_pinned_bytes = json_object_get_uint64(val);
                } else if (streq(key, "max-reassembly-bytes")) {
                        if (!json_object_is_type(val, json_type_int) ||
                            json_object_get_int64(val) < (int64_t) MANAGER_MAX_REASSEMBLY_BYTES_MIN)
                                return error_setf(err, -EINVAL, "max-reassembly-bytes must be an integer of at least "
                                                  "%llu (one job's smallest budget)",
                                                  (unsigned long long) MANAGER_MAX_REASSEMBLY_BYTES_MIN);
                        c.max_reassembly_bytes = json_object_get_uint64(val);
                } else if (streq(key, "stream-listen")) {
                        struct sockaddr_storage sa;
                        ErrorMessage why = {};
                        socklen_t len;
                        if (!json_object_is_type(val, json_type_string))
                                return error_setf(err, -EINVAL, "stream-listen must be a string, HOST:PORT");
                        r = migration_parse_address(json_object_get_string(val), true, &sa, &len, &why);
                        if (r < 0)
                                return error_setf(err, r, "stream-listen: %s", why.text);
                        stream_listen = json_object_get_string(val);
                } else if (streq(key, "devices")) {
                        if (!json_object_is_type(val, json_type_array))
                                return error_setf(err, -EINVAL, "devices must be an array");
                        devices = val;
                } else
                        return error_setf(err, -EINVAL, "unknown key '%s'", key);
        }

        if (stream_listen) {
                c.stream_listen = strdup(stream_listen);
                if (!c.stream_listen)
                        return -ENOMEM;
        }
        if (devices) {
                size_t n = json_object_array_length(devices);
                c.devices = new0(ConfigDevice, MAX(n, 1u));
                if (!c.devices)
                        return -ENOMEM;
                for (size_t i = 0; i < n; i++) {
                        r = parse_device(json_object_array_get_idx(devices, i), i, &c.devices[i], err);
                        if (r < 0) {
                                daemon_config_done(&c);
                                return r;
                        }
                        c.n_devices++;
                }
        }

        *ret = c;
        return 0;
}

int daemon_config_load(const char *path, bool required, DaemonConfig *ret, ErrorMessage *err) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *text = NULL;
        struct stat st;
        size_t have = 0;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                if (errno == ENOENT && !required) {
                        *ret = (DaemonConfig) {};
                        return 0;
                }
                return error_setf(err, -errno, "cannot open %s: %m", path);
        }
        if (fstat(fd, &st) < 0)
                return error_setf(err, -errno, "cannot stat %s: %m", path);
        if (!S_ISREG(st.st_mode))
                return error_setf(err, -EINVAL, "%s is not a regular file", path);
        if ((uint64_t) st.st_size > DAEMON_CONFIG_SIZE_MAX)
                return error_setf(err, -EFBIG, "%s is larger than %llu bytes", path,
                                  (unsigned long long) DAEMON_CONFIG_SIZE_MAX);

        text = malloc((size_t) st.st_size + 1);
        if (!text)
                return -ENOMEM;
        while (have < (size_t) st.st_size) {
                ssize_t n = read(fd, text + have, (size_t) st.st_size - have);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return error_setf(err, -errno, "cannot read %s: %m", path);
                if (n == 0)
                        break;
                have += (size_t) n;
        }
        text[have] = '\0';

        r = daemon_config_parse(text, ret, err);
        if (r < 0) {
                char inner[sizeof err->text];
                if (!err)
                        return r;
                memcpy(inner, err->text, sizeof inner);
                return error_resetf(err, r, "%s: %s", path, inner);
        }
        return 0;
}
