/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <fcntl.h>
#include <json.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
        free(c->tls.ca_file);
        free(c->tls.cert_file);
        free(c->tls.key_file);
        free(c->tls.crl_file);
        free(c->tls.psk_file);
        free(c->tls.psk_identity);
        strv_free(c->tls.allowed_peers);
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

static int tls_string(json_object *val, const char *key, bool path, const char **ret, ErrorMessage *err) {
        const char *s;

        if (!json_object_is_type(val, json_type_string))
                return error_setf(err, -EINVAL, "tls.%s must be a string", key);
        s = json_object_get_string(val);
        if (s[0] == '\0' || strlen(s) > PATH_MAX)
                return error_setf(err, -EINVAL, "tls.%s must not be empty or longer than %d bytes", key, PATH_MAX);
        if (path && s[0] != '/')
                return error_setf(err, -EINVAL, "tls.%s must be an absolute path", key);
        *ret = s;
        return 0;
}

static int path_join(const char *dir, const char *given, const char *name, char **ret) {
        if (given)
                *ret = strdup(given);
        else if (asprintf(ret, "%s/%s", dir, name) < 0)
                *ret = NULL;
        return *ret ? 0 : -ENOMEM;
}

/* The "tls" object: paths only here; the files are read (and their errors reported) when the
 * daemon makes its TLS context. */
static int parse_tls(json_object *o, const char *pki_dir, ConfigTls *ret, ErrorMessage *err) {
        const char *dir = NULL, *ca = NULL, *cert = NULL, *key = NULL, *crl = NULL, *psk = NULL, *identity = NULL;
        ConfigTls t = { .kernel_tls = true, .explicit = o != NULL };
        json_object *peers = NULL;
        int r = 0;

        if (o && !json_object_is_type(o, json_type_object))
                return error_setf(err, -EINVAL, "tls must be an object");
        if (o) {
                json_object_object_foreach(o, key_name, val) {
                        if (streq(key_name, "x509-dir"))
                                r = tls_string(val, key_name, true, &dir, err);
                        else if (streq(key_name, "ca-cert"))
                                r = tls_string(val, key_name, true, &ca, err);
                        else if (streq(key_name, "cert"))
                                r = tls_string(val, key_name, true, &cert, err);
                        else if (streq(key_name, "key"))
                                r = tls_string(val, key_name, true, &key, err);
                        else if (streq(key_name, "crl"))
                                r = tls_string(val, key_name, true, &crl, err);
                        else if (streq(key_name, "psk-file"))
                                r = tls_string(val, key_name, true, &psk, err);
                        else if (streq(key_name, "psk-identity"))
                                r = tls_string(val, key_name, false, &identity, err);
                        else if (streq(key_name, "allowed-peers")) {
                                if (!json_object_is_type(val, json_type_array))
                                        return error_setf(err, -EINVAL, "tls.allowed-peers must be an array of strings");
                                if (json_object_array_length(val) > DAEMON_CONFIG_ALLOWED_PEERS_MAX)
                                        return error_setf(err, -EINVAL, "tls.allowed-peers has more than %u entries",
                                                          DAEMON_CONFIG_ALLOWED_PEERS_MAX);
                                peers = val;
                        } else if (streq(key_name, "kernel-tls")) {
                                if (!json_object_is_type(val, json_type_boolean))
                                        return error_setf(err, -EINVAL, "tls.kernel-tls must be true or false");
                                t.kernel_tls = json_object_get_boolean(val);
                        } else
                                return error_setf(err, -EINVAL, "tls: unknown key '%s'", key_name);
                        if (r < 0)
                                return r;
                }
        }
        if (psk && (dir || ca || cert || key || crl))
                return error_setf(err, -EINVAL, "tls: psk-file excludes the x509 keys (x509-dir, ca-cert, cert, key, crl)");
        if (identity && !psk)
                return error_setf(err, -EINVAL, "tls: psk-identity needs psk-file");

        if (peers) {
                size_t n = json_object_array_length(peers);
                t.allowed_peers = new0(char *, n + 1);
                if (!t.allowed_peers)
                        return -ENOMEM;
                for (size_t i = 0; i < n; i++) {
                        json_object *e = json_object_array_get_idx(peers, i);
                        if (!json_object_is_type(e, json_type_string) || json_object_get_string_len(e) == 0 ||
                            json_object_get_string_len(e) > 1024) {
                                strv_free(t.allowed_peers);
                                return error_setf(err, -EINVAL, "tls.allowed-peers[%zu] must be a non-empty string of at most 1024 bytes", i);
                        }
                        t.allowed_peers[i] = strdup(json_object_get_string(e));
                        if (!t.allowed_peers[i]) {
                                strv_free(t.allowed_peers);
                                return -ENOMEM;
                        }
                }
        }

        if (psk) {
                t.psk_file = strdup(psk);
                if (!t.psk_file || (identity && !(t.psk_identity = strdup(identity))))
                        r = -ENOMEM;
                t.enabled = true;
        } else {
                _cleanup_free_ char *default_cert = NULL, *default_crl = NULL;
                dir = dir ?: pki_dir;
                /* Without a "tls" object, credentials in the default place switch TLS on (as
                 * libvirt's do): installing them is the whole setup. */
                r = path_join(dir, NULL, "server-cert.pem", &default_cert);
                if (r >= 0 && (o || access(default_cert, F_OK) >= 0)) {
                        t.enabled = true;
                        r = path_join(dir, ca, "ca-cert.pem", &t.ca_file);
                        if (r >= 0)
                                r = path_join(dir, cert, "server-cert.pem", &t.cert_file);
                        if (r >= 0)
                                r = path_join(dir, key, "server-key.pem", &t.key_file);
                        if (r >= 0 && crl)
                                r = path_join(dir, crl, NULL, &t.crl_file);
                        else if (r >= 0 && path_join(dir, NULL, "ca-crl.pem", &default_crl) >= 0 &&
                                 access(default_crl, F_OK) >= 0)
                                t.crl_file = TAKE_PTR(default_crl);
                }
        }
        if (r < 0 || (!t.enabled && t.allowed_peers)) {
                ConfigTls *p = &t;
                free(p->ca_file);
                free(p->cert_file);
                free(p->key_file);
                free(p->crl_file);
                free(p->psk_file);
                free(p->psk_identity);
                strv_free(p->allowed_peers);
                return r < 0 ? r : error_setf(err, -EINVAL, "tls.allowed-peers needs credentials");
        }
        *ret = t;
        return 0;
}

int daemon_config_parse(const char *text, DaemonConfig *ret, ErrorMessage *err) {
        return daemon_config_parse_full(text, NULL, ret, err);
}

int daemon_config_parse_full(const char *text, const char *pki_dir, DaemonConfig *ret, ErrorMessage *err) {
        _cleanup_(json_putp) json_object *root = NULL;
        _cleanup_(json_tokener_freep) json_tokener *tok = NULL;
        DaemonConfig c = {};
        json_object *devices = NULL, *tls = NULL;
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
                } else if (streq(key, "tls")) {
                        tls = val;
                        if (!json_object_is_type(val, json_type_object))
                                return error_setf(err, -EINVAL, "tls must be an object");
                } else if (streq(key, "allow-cleartext")) {
                        if (!json_object_is_type(val, json_type_boolean))
                                return error_setf(err, -EINVAL, "allow-cleartext must be true or false");
                        c.allow_cleartext = json_object_get_boolean(val);
                } else if (streq(key, "parallel-transitions")) {
                        if (!json_object_is_type(val, json_type_boolean))
                                return error_setf(err, -EINVAL, "parallel-transitions must be true or false");
                        c.serial_transitions = !json_object_get_boolean(val);
                } else if (streq(key, "vfio-backend")) {
                        const char *v = json_object_is_type(val, json_type_string) ? json_object_get_string(val) : NULL;
                        if (!streq_ptr(v, "auto") && !streq_ptr(v, "legacy"))
                                return error_setf(err, -EINVAL, "vfio-backend must be \"auto\" or \"legacy\"");
                        c.vfio_legacy = streq(v, "legacy");
                } else if (streq(key, "devices")) {
                        if (!json_object_is_type(val, json_type_array))
                                return error_setf(err, -EINVAL, "devices must be an array");
                        devices = val;
                } else
                        return error_setf(err, -EINVAL, "unknown key '%s'", key);
        }

        r = parse_tls(tls, pki_dir ?: DAEMON_CONFIG_PKI_DIR, &c.tls, err);
        if (r < 0)
                return r;
        if (stream_listen) {
                c.stream_listen = strdup(stream_listen);
                if (!c.stream_listen) {
                        daemon_config_done(&c);
                        return -ENOMEM;
                }
        }
        if (devices) {
                size_t n = json_object_array_length(devices);
                c.devices = new0(ConfigDevice, MAX(n, 1u));
                if (!c.devices) {
                        daemon_config_done(&c);
                        return -ENOMEM;
                }
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
