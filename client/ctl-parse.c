/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <arpa/inet.h>
#include <fcntl.h>
#include <inttypes.h>
#include <strings.h>
#include <systemd/sd-bus.h>

#include "ctl-parse.h"
#include "macro.h"
#include "stream-wire.h"
#include "vfiomig1.h"

static const char *const json_format_table[_JSON_FORMAT_MAX] = {
        [JSON_FORMAT_OFF] = "off",
        [JSON_FORMAT_SHORT] = "short",
        [JSON_FORMAT_PRETTY] = "pretty",
};

static const char *const state_names[] = VFIOMIG_STATE_NAMES;

static const CtlSimOption sim_options[] = VFIOMIG_SIM_OPTIONS;

static const char *const phase_names[] = VFIOMIG_PHASE_NAMES;

JsonFormat json_format_from_string(const char *s) {
        if (!s)
                return _JSON_FORMAT_INVALID;
        for (size_t i = 0; i < ELEMENTSOF(json_format_table); i++)
                if (streq(s, json_format_table[i]))
                        return (JsonFormat) i;
        return _JSON_FORMAT_INVALID;
}

static int digit_value(char c, unsigned base) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (base == 16 && c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (base == 16 && c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -EINVAL;
}

int ctl_parse_size(const char *s, uint64_t *ret) {
        return ctl_parse_bytes(s, /* rate= */ false, ret);
}

int ctl_parse_boolean(const char *s) {
        static const char *const yes[] = { "1", "yes", "true", "on" };
        static const char *const no[] = { "0", "no", "false", "off" };

        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                if (strcasecmp(s, yes[i]) == 0)
                        return 1;
                if (strcasecmp(s, no[i]) == 0)
                        return 0;
        }
        return -EINVAL;
}

int ctl_parse_strv(const char *s, char ***ret) {
        _cleanup_strv_free_ char **l = NULL;
        size_t n = 1;

        if (!s || !ret)
                return -EINVAL;

        for (const char *p = s; *p; p++)
                if (*p == ',')
                        n++;
        if (!*s)
                n = 0;

        l = new0(char *, n + 1);
        if (!l)
                return -ENOMEM;

        for (size_t i = 0; i < n; i++) {
                size_t len = strcspn(s, ",");

                if (len == 0)
                        return -EINVAL;
                l[i] = strndup(s, len);
                if (!l[i])
                        return -ENOMEM;
                s += len;
                if (*s == ',')
                        s++;
        }

        *ret = TAKE_PTR(l);
        return 0;
}

int ctl_parse_timeout(const char *s, uint64_t *ret_usec) {
        uint64_t usec;
        int r;

        r = ctl_parse_time_span(s, CTL_USEC_PER_SEC, &usec);
        if (r < 0)
                return r;
        /* 0 would silently mean "the sd-bus default", which is not what anyone typing it wants. */
        if (usec == 0)
                return -ERANGE;
        *ret_usec = usec;
        return 0;
}

int ctl_state_from_string(const char *s) {
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(state_names); i++)
                if (streq(s, state_names[i]))
                        return (int) i;
        return -EINVAL;
}

bool ctl_state_is_settable(const char *s) {
        /* Index 0 is the kernel's VFIO_DEVICE_STATE_ERROR. */
        return ctl_state_from_string(s) > 0;
}

static char *join(const char *const *l, size_t n, size_t first) {
        size_t len = 1;
        char *s, *p;

        for (size_t i = first; i < n; i++)
                len += strlen(l[i]) + 2;

        s = p = malloc(len);
        if (!s)
                return NULL;
        *p = 0;
        for (size_t i = first; i < n; i++)
                p = stpcpy(stpcpy(p, i > first ? ", " : ""), l[i]);
        return s;
}

char *ctl_settable_states_list(void) {
        return join(state_names, ELEMENTSOF(state_names), 1);
}

bool ctl_device_name_is_valid(const char *dev) {
        if (!dev || !*dev)
                return false;
        if (dev[0] == '/')
                return sd_bus_object_path_is_valid(dev) > 0;
        return true;
}

/* One object path element: [A-Za-z0-9_]+, as sd_bus_object_path_is_valid() takes them. */
static bool path_element_is_valid(const char *s, size_t n) {
        if (n == 0)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
                      (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
                        return false;
        return true;
}

bool ctl_space_name_is_valid(const char *space) {
        const size_t n = strlen(VFIOMIG_SPACE_PATH_PREFIX);

        if (!space)
                return false;
        if (space[0] != '/')
                return path_element_is_valid(space, strlen(space));
        return strncmp(space, VFIOMIG_SPACE_PATH_PREFIX, n) == 0 && space[n] == '/' &&
               path_element_is_valid(space + n + 1, strlen(space + n + 1));
}

int ctl_space_path(const char *space, char **ret) {
        char *p;

        if (!ret || !ctl_space_name_is_valid(space))
                return -EINVAL;
        if (space[0] == '/')
                p = strdup(space);
        else if (asprintf(&p, VFIOMIG_SPACE_PATH_PREFIX "/%s", space) < 0)
                p = NULL;
        if (!p)
                return -ENOMEM;
        *ret = p;
        return 0;
}

const char *ctl_object_path_last(const char *path) {
        const char *slash;

        if (!path)
                return NULL;
        slash = strrchr(path, '/');
        return slash ? slash + 1 : path;
}

int ctl_access_from_string(const char *s) {
        if (streq_ptr(s, "rw"))
                return CTL_ACCESS_READ | CTL_ACCESS_WRITE;
        if (streq_ptr(s, "r"))
                return CTL_ACCESS_READ;
        if (streq_ptr(s, "w"))
                return CTL_ACCESS_WRITE;
        return -EINVAL;
}

const char *const *ctl_access_to_bus_names(int access) {
        static const char *const rw[] = { "read", "write", NULL };
        static const char *const r[] = { "read", NULL };
        static const char *const w[] = { "write", NULL };
        static const char *const none[] = { NULL };

        switch (access & (CTL_ACCESS_READ | CTL_ACCESS_WRITE)) {
        case CTL_ACCESS_READ | CTL_ACCESS_WRITE:
                return rw;
        case CTL_ACCESS_READ:
                return r;
        case CTL_ACCESS_WRITE:
                return w;
        default:
                return none;
        }
}

int ctl_access_open_mode(int access) {
        return access & CTL_ACCESS_WRITE ? O_RDWR : O_RDONLY;
}

char *ctl_access_format(char *const *names) {
        bool read = false, write = false;
        size_t len = 3, n_other = 0;
        char *s, *p;

        for (char *const *i = names; i && *i; i++) {
                if (streq(*i, "read"))
                        read = true;
                else if (streq(*i, "write"))
                        write = true;
                else {
                        len += strlen(*i) + 1;
                        n_other++;
                }
        }
        if (!read && !write && n_other == 0)
                return strdup("-");

        s = p = malloc(len);
        if (!s)
                return NULL;
        *p = 0;
        if (read)
                p = stpcpy(p, "r");
        if (write)
                p = stpcpy(p, "w");
        for (char *const *i = names; i && *i; i++)
                if (!streq(*i, "read") && !streq(*i, "write"))
                        p = stpcpy(stpcpy(p, p == s ? "" : ","), *i);
        return s;
}

bool ctl_backend_is_valid(const char *s) {
        return streq_ptr(s, VFIOMIG_BACKEND_IOMMUFD) || streq_ptr(s, VFIOMIG_BACKEND_LEGACY) ||
               streq_ptr(s, VFIOMIG_BACKEND_SIM);
}

bool ctl_sim_mapping_is_valid(const char *s) {
        return streq_ptr(s, "by-file") || streq_ptr(s, "by-address");
}

const CtlSimOption *ctl_sim_option_find(const char *key) {
        if (!key)
                return NULL;
        for (size_t i = 0; i < ELEMENTSOF(sim_options); i++)
                if (streq(key, sim_options[i].key))
                        return &sim_options[i];
        return NULL;
}

char *ctl_sim_option_keys_list(void) {
        const char *keys[ELEMENTSOF(sim_options)];

        for (size_t i = 0; i < ELEMENTSOF(sim_options); i++)
                keys[i] = sim_options[i].key;
        return join(keys, ELEMENTSOF(keys), 0);
}

const char *ctl_signature_describe(const char *signature) {
        if (streq_ptr(signature, "t"))
                return "an unsigned integer, decimal or 0x hex, with an optional K, M, G, T "
                       "(or KiB, MiB, GiB, TiB) suffix";
        if (streq_ptr(signature, "u"))
                return "an unsigned 32-bit integer, decimal or 0x hex, with an optional K, M, G "
                       "(or KiB, MiB, GiB) suffix";
        if (streq_ptr(signature, "b"))
                return "a boolean: true/false, yes/no, on/off or 1/0";
        if (streq_ptr(signature, "s"))
                return "a string";
        if (streq_ptr(signature, "as"))
                return "a comma-separated list without empty elements (an empty value is the empty list)";
        return "a value of a D-Bus type vfiomigctl cannot build from text";
}

void ctl_option_value_done(CtlOptionValue *v) {
        if (!v)
                return;
        free(v->str);
        v->str = NULL;
        strv_free(v->strv);
        v->strv = NULL;
}

int ctl_split_assignment(const char *assignment, char **ret_key, const char **ret_value) {
        const char *eq;
        char *key;

        if (!assignment || !ret_key || !ret_value)
                return -EINVAL;

        eq = strchr(assignment, '=');
        if (!eq || eq == assignment)
                return -EINVAL;

        key = strndup(assignment, (size_t) (eq - assignment));
        if (!key)
                return -ENOMEM;

        *ret_key = key;
        *ret_value = eq + 1;
        return 0;
}

int ctl_option_value_parse(const CtlSimOption *option, const char *value, CtlOptionValue *ret) {
        CtlOptionValue v = { .option = option };
        int r;

        if (!option || !value || !ret)
                return -EINVAL;

        if (streq(option->signature, "t") || streq(option->signature, "u")) {
                r = ctl_parse_size(value, &v.u64);
                if (r < 0)
                        return r;
                if (streq(option->signature, "u") && v.u64 > UINT32_MAX)
                        return -ERANGE;
        } else if (streq(option->signature, "b")) {
                r = ctl_parse_boolean(value);
                if (r < 0)
                        return r;
                v.boolean = r;
        } else if (streq(option->signature, "s")) {
                v.str = strdup(value);
                if (!v.str)
                        return -ENOMEM;
        } else if (streq(option->signature, "as")) {
                r = ctl_parse_strv(value, &v.strv);
                if (r < 0)
                        return r;
        } else
                return -EOPNOTSUPP;

        *ret = v;
        return 0;
}

/* ---- migrations ---- */

static bool is_digit(char c) {
        return c >= '0' && c <= '9';
}

/* Leading decimal digits of *p into *ret, advancing *p. -EINVAL when there is no digit, -ERANGE
 * when they do not fit under max (after consuming them all, so the caller checks syntax first). */
static int scan_decimal(const char **p, uint64_t max, uint64_t *ret) {
        bool overflow = false;
        uint64_t v = 0;

        if (!is_digit(**p))
                return -EINVAL;
        for (; is_digit(**p); (*p)++) {
                uint64_t d = (uint64_t) (**p - '0');

                if (overflow || v > (max - d) / 10)
                        overflow = true;
                else
                        v = v * 10 + d;
        }
        *ret = v;
        return overflow ? -ERANGE : 0;
}

int ctl_parse_bytes(const char *s, bool rate, uint64_t *ret) {
        static const struct {
                char unit;
                unsigned shift;
        } units[] = {
                { 'K', 10 }, { 'M', 20 }, { 'G', 30 }, { 'T', 40 },
        };
        uint64_t v = 0, frac = 0, scale = 1, f;
        const char *p = s;
        unsigned shift = 0, n_frac = 0;
        bool has_unit = false;
        int range;

        if (!s || !ret)
                return -EINVAL;

        if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
                /* Hex: a whole number (addresses, lengths), never with decimals. */
                bool overflow = false;
                int d;

                p += 2;
                if (digit_value(*p, 16) < 0)
                        return -EINVAL;
                for (; (d = digit_value(*p, 16)) >= 0; p++) {
                        if (v > (UINT64_MAX - (uint64_t) d) / 16)
                                overflow = true;
                        else
                                v = v * 16 + (uint64_t) d;
                }
                range = overflow ? -ERANGE : 0;
        } else
                range = scan_decimal(&p, UINT64_MAX, &v);
        if (range == -EINVAL)
                return -EINVAL;
        if (*p == '.' && !(s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))) {
                p++;
                if (!is_digit(*p))
                        return -EINVAL;
                for (; is_digit(*p); p++) {
                        /* Six decimals of a TiB are below a byte already; more is a typo. */
                        if (++n_frac > 6)
                                return -EINVAL;
                        frac = frac * 10 + (uint64_t) (*p - '0');
                        scale *= 10;
                }
        }

        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                if (*p == units[i].unit) {
                        shift = units[i].shift;
                        has_unit = true;
                        p++;
                        break;
                }
        if (has_unit && p[0] == 'i' && p[1] == 'B')
                p += 2;
        else if (*p == 'B')
                p++;
        if (rate && p[0] == '/' && p[1] == 's')
                p += 2;
        if (*p)
                return -EINVAL;
        /* A fraction of a byte is no amount of data. */
        if (n_frac > 0 && !has_unit)
                return -EINVAL;

        if (range < 0 || v > (UINT64_MAX >> shift))
                return -ERANGE;
        v <<= shift;
        /* frac < 10^6 < 2^20 and shift ≤ 40, so this cannot overflow. */
        f = (frac << shift) / scale;
        if (v > UINT64_MAX - f)
                return -ERANGE;

        *ret = v + f;
        return 0;
}

int ctl_parse_time_span(const char *s, uint64_t default_usec, uint64_t *ret_usec) {
        static const struct {
                const char *name;
                uint64_t usec;
        } units[] = {
                /* longest first where one is the start of another ("ms" before "m", "min" before "m") */
                { "usec", 1 }, { "us", 1 },
                { "msec", CTL_USEC_PER_MSEC }, { "ms", CTL_USEC_PER_MSEC },
                { "seconds", CTL_USEC_PER_SEC }, { "second", CTL_USEC_PER_SEC }, { "sec", CTL_USEC_PER_SEC },
                { "s", CTL_USEC_PER_SEC },
                { "minutes", 60 * CTL_USEC_PER_SEC }, { "minute", 60 * CTL_USEC_PER_SEC },
                { "min", 60 * CTL_USEC_PER_SEC }, { "m", 60 * CTL_USEC_PER_SEC },
                { "hours", 3600 * CTL_USEC_PER_SEC }, { "hour", 3600 * CTL_USEC_PER_SEC },
                { "hr", 3600 * CTL_USEC_PER_SEC }, { "h", 3600 * CTL_USEC_PER_SEC },
                { "days", 86400 * CTL_USEC_PER_SEC }, { "day", 86400 * CTL_USEC_PER_SEC },
                { "d", 86400 * CTL_USEC_PER_SEC },
        };
        const char *p = s;
        uint64_t total = 0;
        unsigned n_parts = 0;
        bool bare = false, overflow = false;

        if (!s || !ret_usec)
                return -EINVAL;

        while (*p) {
                uint64_t whole = 0, frac = 0, scale = 1, unit = 0, part;
                unsigned n_frac = 0;
                size_t len = 0;

                if (n_parts > 0) {
                        /* blanks between parts ("1min 30s"), none required ("1min30s") */
                        while (*p == ' ')
                                p++;
                        if (!*p)
                                return -EINVAL; /* trailing blank */
                }
                int range = scan_decimal(&p, UINT64_MAX, &whole);
                if (range == -EINVAL)
                        return -EINVAL;
                if (range < 0)
                        overflow = true;
                if (*p == '.') {
                        p++;
                        if (!is_digit(*p))
                                return -EINVAL;
                        for (; is_digit(*p); p++) {
                                if (++n_frac > 6)
                                        return -EINVAL;
                                frac = frac * 10 + (uint64_t) (*p - '0');
                                scale *= 10;
                        }
                }
                for (size_t i = 0; i < ELEMENTSOF(units); i++) {
                        len = strlen(units[i].name);
                        if (strncmp(p, units[i].name, len) == 0 && !(p[len] >= 'a' && p[len] <= 'z')) {
                                unit = units[i].usec;
                                break;
                        }
                }
                if (unit == 0) {
                        /* A bare number is in the option's own unit, and only alone. */
                        if (*p || n_parts > 0)
                                return -EINVAL;
                        unit = default_usec;
                        len = 0;
                        bare = true;
                }
                p += len;
                n_parts++;
                if (bare && n_parts > 1)
                        return -EINVAL;

                if (overflow || whole > UINT64_MAX / unit)
                        overflow = true;
                else {
                        /* frac < 10^6 and unit ≤ 86400 * 10^6 < 2^37: no overflow. */
                        part = whole * unit;
                        uint64_t f = frac * unit / scale;
                        if (part > UINT64_MAX - f || total > UINT64_MAX - part - f)
                                overflow = true;
                        else
                                total += part + f;
                }
        }
        if (n_parts == 0)
                return -EINVAL;
        if (overflow)
                return -ERANGE;
        *ret_usec = total;
        return 0;
}

int ctl_parse_msec(const char *s, uint64_t *ret) {
        uint64_t usec;
        int r;

        r = ctl_parse_time_span(s, CTL_USEC_PER_MSEC, &usec);
        if (r < 0)
                return r;
        /* Whole milliseconds, rounded up: a limit is never tighter than asked. */
        *ret = usec / CTL_USEC_PER_MSEC + (usec % CTL_USEC_PER_MSEC != 0);
        return 0;
}

int ctl_parse_unsigned(const char *s, unsigned min, unsigned max, unsigned *ret) {
        const char *p = s;
        uint64_t v;
        int r;

        if (!s || !ret)
                return -EINVAL;

        r = scan_decimal(&p, UINT32_MAX, &v);
        if (r == -EINVAL || *p)
                return -EINVAL;
        if (r < 0 || v < min || v > max)
                return -ERANGE;

        *ret = (unsigned) v;
        return 0;
}

/* An IPv6 address as inet_pton() takes it, optionally with a "%zone" (an interface name or index). */
static bool ipv6_address_is_valid(const char *s) {
        _cleanup_free_ char *copy = NULL;
        struct in6_addr a;
        char *zone;

        copy = strdup(s);
        if (!copy)
                return false;
        zone = strchr(copy, '%');
        if (zone) {
                *zone++ = 0;
                if (!*zone)
                        return false;
                for (const char *z = zone; *z; z++)
                        if (!((*z >= 'a' && *z <= 'z') || (*z >= 'A' && *z <= 'Z') || is_digit(*z) ||
                              *z == '_' || *z == '-' || *z == '.'))
                                return false;
        }
        return inet_pton(AF_INET6, copy, &a) == 1;
}

/* An IPv4 address or a DNS name, by syntax only: which of them resolves is the daemon's business. */
static bool host_name_is_valid(const char *s, size_t n) {
        if (n == 0 || n > 253)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || is_digit(s[i]) ||
                      s[i] == '-' || s[i] == '.' || s[i] == '_'))
                        return false;
        return true;
}

static int parse_port(const char *s, uint16_t *ret) {
        unsigned port;
        int r;

        r = ctl_parse_unsigned(s, 1, UINT16_MAX, &port);
        if (r < 0)
                return r;
        *ret = (uint16_t) port;
        return 0;
}

int ctl_parse_host_port(const char *s, uint16_t default_port, char **ret_host, uint16_t *ret_port) {
        _cleanup_free_ char *host = NULL;
        uint16_t port = default_port;
        const char *colon;
        int r;

        if (!s || !ret_host || !ret_port)
                return -EINVAL;

        if (s[0] == '[') {
                const char *end = strchr(s, ']');

                if (!end)
                        return -EINVAL;
                host = strndup(s + 1, (size_t) (end - s - 1));
                if (!host)
                        return -ENOMEM;
                if (!ipv6_address_is_valid(host))
                        return -EINVAL;
                if (end[1] == ':') {
                        r = parse_port(end + 2, &port);
                        if (r < 0)
                                return r;
                } else if (end[1])
                        return -EINVAL;
        } else if ((colon = strchr(s, ':')) && strchr(colon + 1, ':')) {
                /* Two colons or more: an IPv6 address, which has no room for a port without brackets. */
                if (!ipv6_address_is_valid(s))
                        return -EINVAL;
                host = strdup(s);
                if (!host)
                        return -ENOMEM;
        } else {
                size_t n = colon ? (size_t) (colon - s) : strlen(s);

                if (!host_name_is_valid(s, n))
                        return -EINVAL;
                if (colon) {
                        r = parse_port(colon + 1, &port);
                        if (r < 0)
                                return r;
                }
                host = strndup(s, n);
                if (!host)
                        return -ENOMEM;
        }

        if (port == 0)
                return -ERANGE;

        *ret_host = TAKE_PTR(host);
        *ret_port = port;
        return 0;
}

char *ctl_peer_format(const char *host, uint16_t port) {
        char *s;

        if (!host)
                return NULL;
        if (asprintf(&s, strchr(host, ':') ? "[%s]:%" PRIu16 : "%s:%" PRIu16, host, port) < 0)
                return NULL;
        return s;
}

_Static_assert(CTL_TOKEN_HEX_LEN == 64, "the messages below say 64");

int ctl_token_parse(const char *text, size_t size, char ret[static CTL_TOKEN_HEX_LEN + 1], const char **ret_why) {
        char token[CTL_TOKEN_HEX_LEN + 1];
        size_t n = 0;

        while (size > 0 && strchr(" \t\r\n", text[size - 1]) && text[size - 1])
                size--;
        if (size == 0) {
                *ret_why = "is empty";
                return -EINVAL;
        }
        for (; n < size; n++) {
                char c = text[n];
                if (!(is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
                        *ret_why = "contains a character that is no hex digit";
                        return -EINVAL;
                }
                if (n == CTL_TOKEN_HEX_LEN) {
                        *ret_why = "is longer than 64 hex digits";
                        return -EINVAL;
                }
                token[n] = c >= 'A' && c <= 'F' ? (char) (c - 'A' + 'a') : c;
        }
        if (n < CTL_TOKEN_HEX_LEN) {
                *ret_why = "is shorter than 64 hex digits";
                return -EINVAL;
        }
        token[n] = '\0';
        memcpy(ret, token, sizeof token);
        return 0;
}

/* "N" or "_N" → N. */
static int parse_migration_element(const char *s, bool underscore_required, uint32_t *ret) {
        const char *p = s;
        uint64_t v;
        int r;

        if (*p == '_')
                p++;
        else if (underscore_required)
                return -EINVAL;

        r = scan_decimal(&p, UINT32_MAX, &v);
        if (r == -EINVAL || *p)
                return -EINVAL;
        if (r < 0)
                return r;
        *ret = (uint32_t) v;
        return 0;
}

int ctl_migration_id_from_path(const char *path, uint32_t *ret) {
        const size_t n = strlen(VFIOMIG_MIGRATION_PATH_PREFIX);

        if (!path || !ret)
                return -EINVAL;
        if (strncmp(path, VFIOMIG_MIGRATION_PATH_PREFIX, n) != 0 || path[n] != '/')
                return -EINVAL;
        return parse_migration_element(path + n + 1, /* underscore_required= */ true, ret);
}

int ctl_migration_path(const char *job, char **ret) {
        uint32_t id;
        char *p;
        int r;

        if (!job || !ret)
                return -EINVAL;

        if (job[0] == '/')
                r = ctl_migration_id_from_path(job, &id);
        else
                r = parse_migration_element(job, /* underscore_required= */ false, &id);
        if (r < 0)
                return r;

        if (asprintf(&p, VFIOMIG_MIGRATION_PATH_PREFIX "/_%" PRIu32, id) < 0)
                return -ENOMEM;
        *ret = p;
        return 0;
}

bool ctl_phase_is_known(const char *phase) {
        if (!phase)
                return false;
        for (size_t i = 0; i < ELEMENTSOF(phase_names); i++)
                if (streq(phase, phase_names[i]))
                        return true;
        return false;
}

bool ctl_phase_is_final(const char *phase) {
        return streq_ptr(phase, "completed") || streq_ptr(phase, "failed") || streq_ptr(phase, "cancelled");
}

int ctl_transfer_timeout_msec(uint64_t usec, uint64_t *ret_msec) {
        uint64_t msec;

        if (usec == 0)
                return -EINVAL;
        msec = usec / 1000 + (usec % 1000 != 0);
        if (msec > CTL_TRANSFER_TIMEOUT_MAX_MSEC)
                return -ERANGE;
        *ret_msec = msec;
        return 0;
}

bool ctl_phase_ends_wait(const char *phase) {
        return ctl_phase_is_final(phase) || streq_ptr(phase, "indeterminate");
}

bool ctl_outcome_is_valid(const char *s) {
        return streq_ptr(s, VFIOMIG_OUTCOME_COMMITTED) || streq_ptr(s, VFIOMIG_OUTCOME_NOT_COMMITTED);
}

bool ctl_switchover_mode_is_valid(const char *s) {
        return streq_ptr(s, "auto") || streq_ptr(s, "manual");
}

static bool peer_is_local_or_any(const char *address) {
        _cleanup_free_ char *host = NULL;
        uint16_t port;

        if (ctl_parse_host_port(address, 1, &host, &port) < 0)
                return true; /* not something a source can connect to either */
        return strncmp(host, "127.", 4) == 0 || streq(host, "::1") || streq(host, "localhost") ||
               streq(host, "0.0.0.0") || streq(host, "::");
}

const char *ctl_pick_peer_address(char *const *addresses) {
        if (!addresses || !addresses[0])
                return NULL;
        for (char *const *a = addresses; *a; a++)
                if (!peer_is_local_or_any(*a))
                        return *a;
        return addresses[0];
}
