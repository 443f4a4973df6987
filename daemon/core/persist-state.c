/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "device.h"
#include "iommu-space.h"
#include "manager.h"
#include "mig-state.h"
#include "named-fds.h"
#include "persist-state.h"
#include "sim-device.h"
#include "sim-iommu.h"
#include "sim-stream.h"
#include "vfio-dev.h"

/* Where a field is, for the one log line that names it: "devices[3].sim.gens[7][0]". */
typedef struct Path {
        char text[160];
} Path;

/* Paths are short in practice; a long one is cut, never overrun. */
_printf_(2, 3) static void path_appendf(Path *p, const char *format, ...) {
        size_t len = strlen(p->text);
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(p->text + len, sizeof p->text - len, format, ap);
        va_end(ap);
}

static Path path_key(const Path *parent, const char *key) {
        Path p = *parent;
        path_appendf(&p, "%s%s", p.text[0] ? "." : "", key);
        return p;
}

static Path path_index(const Path *parent, size_t i) {
        Path p = *parent;
        path_appendf(&p, "[%zu]", i);
        return p;
}

static const char *type_name(json_object *v) {
        switch (json_object_get_type(v)) {
        case json_type_null:
                return "null";
        case json_type_boolean:
                return "a boolean";
        case json_type_double:
                return "a fractional number";
        case json_type_int:
                return "an integer";
        case json_type_object:
                return "an object";
        case json_type_array:
                return "an array";
        case json_type_string:
                return "a string";
        }
        return "of an unknown type";
}

static int wrong_type(const Path *p, const char *expected, json_object *v, ErrorMessage *err) {
        return error_setf(err, -EBADMSG, "%s must be %s, not %s", p->text, expected, type_name(v));
}

/* 1 with *ret set when present (JSON null counts as present, and fails every type check), 0 when
 * absent and optional. */
static int field(json_object *o, const Path *parent, const char *key, bool required, json_object **ret, Path *ret_path,
                 ErrorMessage *err) {
        json_object *v = NULL;

        *ret_path = path_key(parent, key);
        if (!json_object_object_get_ex(o, key, &v)) {
                if (required)
                        return error_setf(err, -EBADMSG, "%s is missing", ret_path->text);
                return 0;
        }
        *ret = v;
        return 1;
}

static int check_u64(json_object *v, const Path *p, uint64_t min, uint64_t max, uint64_t *ret, ErrorMessage *err) {
        uint64_t u;

        if (!json_object_is_type(v, json_type_int))
                return wrong_type(p, "an unsigned integer", v, err);
        if (json_object_get_int64(v) < 0)
                return error_setf(err, -EBADMSG, "%s must be an unsigned integer, not negative", p->text);
        u = json_object_get_uint64(v);
        if (u < min || u > max)
                return error_setf(err, -EBADMSG, "%s is %" PRIu64 ", outside %" PRIu64 "..%" PRIu64, p->text, u, min,
                                  max);
        if (ret)
                *ret = u;
        return 0;
}

static int get_u64(json_object *o, const Path *parent, const char *key, uint64_t min, uint64_t max, uint64_t *ret,
                   ErrorMessage *err) {
        json_object *v;
        Path p;
        int r = field(o, parent, key, true, &v, &p, err);
        return r < 0 ? r : check_u64(v, &p, min, max, ret, err);
}

/* An optional unsigned integer: *ret keeps its value when the field is absent (records written
 * before the field existed). */
static int get_u64_optional(json_object *o, const Path *parent, const char *key, uint64_t min, uint64_t max,
                            uint64_t *ret, ErrorMessage *err) {
        json_object *v;
        Path p;
        int r = field(o, parent, key, false, &v, &p, err);
        return r <= 0 ? r : check_u64(v, &p, min, max, ret, err);
}

static int get_bool(json_object *o, const Path *parent, const char *key, bool *ret, ErrorMessage *err) {
        json_object *v;
        Path p;
        int r = field(o, parent, key, true, &v, &p, err);

        if (r < 0)
                return r;
        if (!json_object_is_type(v, json_type_boolean))
                return wrong_type(&p, "true or false", v, err);
        if (ret)
                *ret = json_object_get_boolean(v);
        return 0;
}

/* A non-empty string of at most max bytes without a NUL; NULL when optional and absent. */
static int get_string(json_object *o, const Path *parent, const char *key, bool required, size_t max,
                      const char **ret, ErrorMessage *err) {
        json_object *v;
        const char *s;
        size_t len;
        Path p;
        int r = field(o, parent, key, required, &v, &p, err);

        *ret = NULL;
        if (r <= 0)
                return r;
        if (!json_object_is_type(v, json_type_string))
                return wrong_type(&p, "a string", v, err);
        s = json_object_get_string(v);
        len = (size_t) json_object_get_string_len(v);
        if (len == 0 || len > max || strlen(s) != len)
                return error_setf(err, -EBADMSG, "%s must be 1 to %zu characters without a NUL", p.text, max);
        *ret = s;
        return 0;
}

/* NULL when optional and absent. */
static int get_container(json_object *o, const Path *parent, const char *key, json_type type, bool required,
                         size_t max, json_object **ret, Path *ret_path, ErrorMessage *err) {
        json_object *v;
        int r = field(o, parent, key, required, &v, ret_path, err);

        *ret = NULL;
        if (r <= 0)
                return r;
        if (!json_object_is_type(v, type))
                return wrong_type(ret_path, type == json_type_array ? "an array" : "an object", v, err);
        if (type == json_type_array && json_object_array_length(v) > max)
                return error_setf(err, -EBADMSG, "%s has %zu entries, more than the %zu allowed", ret_path->text,
                                  json_object_array_length(v), max);
        *ret = v;
        return 0;
}

/* Ids become D-Bus object path elements and parts of fd store names. */
static bool id_valid(const char *s) {
        return s && s[0] && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_") == strlen(s);
}

static int check_id(const char *s, const Path *parent, const char *key, ErrorMessage *err) {
        if (s && !id_valid(s))
                return error_setf(err, -EBADMSG, "%s.%s '%s' must consist of letters, digits and '_'", parent->text,
                                  key, s);
        return 0;
}

/* The users of the fd store entries (version 2): every descriptor a record names must be one, or
 * the object would be restored without its file. Sorted, for bsearch. NULL for version 1, whose
 * records named the store's entries directly. */
typedef struct Refs {
        const char **users;
        size_t n;
} Refs;

static int strp_compare(const void *a, const void *b) {
        return strcmp(*(const char *const *) a, *(const char *const *) b);
}

static int check_ref(const Refs *refs, const char *name, const Path *p, ErrorMessage *err) {
        if (!refs || bsearch(&name, refs->users, refs->n, sizeof *refs->users, strp_compare))
                return 0;
        return error_setf(err, -EBADMSG, "%s names the descriptor '%s', which no entry of fds lists", p->text, name);
}

/* The kernel backend's records (kernel-device.c, kernel-iommu.c) by type only: what the values mean
 * (ids that exist, descriptors that are in the store, a known path) the backend checks as it
 * adopts them. Optional fields may be null, as the backend writes them. */
typedef enum KernelKind {
        KERNEL_STRING,
        KERNEL_U32,
        KERNEL_BOOL,
        KERNEL_ARRAY,
} KernelKind;

typedef struct KernelSchema KernelSchema;

typedef struct KernelField {
        const char *key;
        KernelKind kind;
        bool required;
        const KernelSchema *items; /* KERNEL_ARRAY: each entry an object of this schema */
} KernelField;

struct KernelSchema {
        const KernelField *fields;
        size_t n_fields;
};

#define KERNEL_ARRAY_MAX 4096u

static const KernelField kernel_group_fields[] = {
        { "number", KERNEL_U32, true },
        { "fd", KERNEL_STRING, true },
        { "mdev", KERNEL_BOOL, true },
};
static const KernelSchema kernel_group = { kernel_group_fields, ELEMENTSOF(kernel_group_fields) };

static const KernelField kernel_container_fields[] = {
        { "id", KERNEL_U32, true },
        { "fd", KERNEL_STRING, true },
        { "iommu-set", KERNEL_BOOL, true },
        { "update-vaddr", KERNEL_BOOL, true },
        { "groups", KERNEL_ARRAY, true, &kernel_group },
};
static const KernelSchema kernel_container = { kernel_container_fields, ELEMENTSOF(kernel_container_fields) };

static const KernelField kernel_context_fields[] = {
        { "iommufd", KERNEL_STRING, false },
        { "next-container-id", KERNEL_U32, true },
        { "containers", KERNEL_ARRAY, true, &kernel_container },
};
static const KernelSchema kernel_context = { kernel_context_fields, ELEMENTSOF(kernel_context_fields) };

static const KernelField kernel_device_fields[] = {
        { "name", KERNEL_STRING, true },
        { "address", KERNEL_STRING, true },
        { "driver", KERNEL_STRING, true },
        { "sysfs-path", KERNEL_STRING, false },
        { "fd", KERNEL_STRING, false },
        { "path", KERNEL_STRING, true },
        { "iommu-group", KERNEL_U32, true },
        { "mdev", KERNEL_BOOL, true },
        { "devid", KERNEL_U32, false },
        { "ioas-id", KERNEL_U32, false },
        { "hwpt-id", KERNEL_U32, false },
};
static const KernelSchema kernel_device = { kernel_device_fields, ELEMENTSOF(kernel_device_fields) };

static const KernelField kernel_space_fields[] = {
        { "backend", KERNEL_STRING, true },
        { "ioas-id", KERNEL_U32, false },
        { "mapping-style", KERNEL_STRING, false },
        { "by-address-mappings", KERNEL_U32, false },
        { "container", KERNEL_U32, false },
};
static const KernelSchema kernel_space = { kernel_space_fields, ELEMENTSOF(kernel_space_fields) };

static int validate_kernel(json_object *o, const Path *p, const KernelSchema *schema, const Refs *refs,
                           ErrorMessage *err) {
        if (!json_object_is_type(o, json_type_object))
                return wrong_type(p, "an object", o, err);
        for (size_t i = 0; i < schema->n_fields; i++) {
                const KernelField *f = &schema->fields[i];
                json_object *v = NULL;
                const char *s;
                Path fp;
                int r;

                r = field(o, p, f->key, f->required, &v, &fp, err);
                if (r < 0)
                        return r;
                if (r == 0 || (!v && !f->required))
                        continue;
                switch (f->kind) {
                case KERNEL_STRING:
                        r = get_string(o, p, f->key, true, PERSIST_STATE_TEXT_MAX, &s, err);
                        /* "fd" and "iommufd" name descriptors in the store. */
                        if (r >= 0 && (streq(f->key, "fd") || streq(f->key, "iommufd")))
                                r = check_ref(refs, s, &fp, err);
                        break;
                case KERNEL_U32:
                        r = check_u64(v, &fp, 0, UINT32_MAX, NULL, err);
                        break;
                case KERNEL_BOOL:
                        r = get_bool(o, p, f->key, NULL, err);
                        break;
                case KERNEL_ARRAY:
                        r = get_container(o, p, f->key, json_type_array, true, KERNEL_ARRAY_MAX, &v, &fp, err);
                        for (size_t k = 0; r >= 0 && k < json_object_array_length(v); k++) {
                                Path ip = path_index(&fp, k);
                                r = validate_kernel(json_object_array_get_idx(v, k), &ip, f->items, refs, err);
                        }
                        break;
                }
                if (r < 0)
                        return r;
        }
        return 0;
}

static int validate_mapping(json_object *o, const Path *p, const char *space, uint64_t next_serial, const Refs *refs,
                            ErrorMessage *err) {
        uint64_t iova, length, offset, serial;
        char name[PERSIST_STATE_ID_MAX + 32];
        int r;

        if (!json_object_is_type(o, json_type_object))
                return wrong_type(p, "an object", o, err);
        r = get_u64(o, p, "iova", 0, UINT64_MAX, &iova, err);
        if (r >= 0)
                r = get_u64(o, p, "length", 1, UINT64_MAX, &length, err);
        if (r >= 0)
                r = get_u64(o, p, "offset", 0, UINT64_MAX, &offset, err);
        if (r >= 0)
                r = get_u64(o, p, "access", IOMMU_READ, IOMMU_READ | IOMMU_WRITE, NULL, err);
        if (r >= 0)
                r = get_bool(o, p, "by-file", NULL, err);
        if (r >= 0)
                r = get_u64(o, p, "serial", 0, next_serial > 0 ? next_serial - 1 : 0, &serial, err);
        if (r < 0)
                return r;
        /* persist.c names a mapping's file map-<space>-<serial>. */
        (void) snprintf(name, sizeof name, "map-%s-%" PRIu64, space, serial);
        r = check_ref(refs, name, p, err);
        if (r < 0)
                return r;
        if (length - 1 > UINT64_MAX - iova || length - 1 > UINT64_MAX - offset)
                return error_setf(err, -EBADMSG, "%s ends past 2^64", p->text);
        return 0;
}

static int validate_space(json_object *o, const Path *p, const Refs *refs, ErrorMessage *err) {
        json_object *mappings, *kernel;
        const char *id, *backend, *style;
        uint64_t next_serial;
        Path mp;
        int r;

        if (!json_object_is_type(o, json_type_object))
                return wrong_type(p, "an object", o, err);
        r = get_string(o, p, "id", true, PERSIST_STATE_ID_MAX, &id, err);
        if (r >= 0)
                r = check_id(id, p, "id", err);
        if (r >= 0)
                r = get_string(o, p, "backend", true, PERSIST_STATE_ID_MAX, &backend, err);
        if (r >= 0 && iommu_backend_from_string(backend) < 0)
                r = error_setf(err, -EBADMSG, "%s.backend '%s' is no IOMMU backend", p->text, backend);
        if (r >= 0)
                r = get_bool(o, p, "prepared", NULL, err);
        if (r >= 0)
                r = get_u64(o, p, "next-serial", 0, UINT64_MAX, &next_serial, err);
        if (r < 0)
                return r;
        if (iommu_backend_from_string(backend) == IOMMU_BACKEND_SIM) {
                r = get_string(o, p, "sim-mapping", true, PERSIST_STATE_ID_MAX, &style, err);
                if (r >= 0 && sim_mapping_style_from_string(style) < 0)
                        r = error_setf(err, -EBADMSG, "%s.sim-mapping '%s' is no mapping style", p->text, style);
        } else {
                r = get_container(o, p, "kernel", json_type_object, true, 0, &kernel, &mp, err);
                if (r >= 0)
                        r = validate_kernel(kernel, &mp, &kernel_space, refs, err);
        }
        if (r >= 0)
                r = get_container(o, p, "mappings", json_type_array, false, IOMMU_MAPPINGS_KERNEL_MAX, &mappings, &mp,
                                  err);
        if (r < 0)
                return r;
        for (size_t i = 0; mappings && i < json_object_array_length(mappings); i++) {
                Path ip = path_index(&mp, i);
                r = validate_mapping(json_object_array_get_idx(mappings, i), &ip, id, next_serial, refs, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int validate_sim(json_object *o, const Path *p, const char *address, ErrorMessage *err) {
        SimConfig config;
        json_object *gens, *v;
        const char *state_name;
        uint64_t flags, nblocks;
        ErrorMessage why = {};
        int state, r;
        Path gp;

        if (strncmp(address, "sim:", 4) != 0 || !sim_name_valid(address + 4))
                return error_setf(err, -EBADMSG, "%s is a simulated device's record, but the address is no valid sim:NAME",
                                  p->text);
        sim_config_init(&config);
        config.precopy_size_set = true;
        r = get_u64(o, p, "state-size", 1, SIM_STATE_SIZE_MAX, &config.state_size, err);
        if (r >= 0)
                r = get_u64(o, p, "precopy-size", 0, config.state_size, &config.precopy_size, err);
        if (r >= 0)
                r = get_u64(o, p, "dirty-rate", 0, UINT64_MAX, &config.dirty_rate, err);
        if (r >= 0)
                r = get_u64(o, p, "flags", 0, UINT32_MAX, &flags, err);
        if (r >= 0)
                r = get_bool(o, p, "mtty-quirks", &config.mtty_quirks, err);
        if (r >= 0)
                r = get_u64(o, p, "fail-to-error", 0, UINT64_MAX, &config.fail_to_error, err);
        if (r >= 0)
                r = get_u64(o, p, "fail-in-place", 0, UINT64_MAX, &config.fail_in_place, err);
        if (r >= 0)
                r = get_u64_optional(o, p, "arc-latency-usec", 0, SIM_ARC_LATENCY_MAX_USEC, &config.arc_latency_usec,
                                     err);
        if (r >= 0)
                r = get_u64_optional(o, p, "latency-arcs", 0, UINT64_MAX, &config.latency_arcs, err);
        if (r >= 0)
                r = get_u64(o, p, "seed", 0, UINT64_MAX, NULL, err);
        if (r >= 0)
                r = get_string(o, p, "state", true, PERSIST_STATE_ID_MAX, &state_name, err);
        if (r < 0)
                return r;
        config.migration_flags = (uint32_t) flags;
        if (sim_config_validate(&config, &why) < 0)
                return error_setf(err, -EBADMSG, "%s: %s", p->text, why.text);
        state = mig_state_from_string(state_name);
        if (state < 0 || (state != VFIO_DEVICE_STATE_ERROR && !mig_state_supported(config.migration_flags, state)))
                return error_setf(err, -EBADMSG, "%s.state '%s' is no migration state these flags allow", p->text,
                                  state_name);

        nblocks = sim_block_count(config.state_size);
        r = get_container(o, p, "gens", json_type_array, false, nblocks, &gens, &gp, err);
        if (r < 0)
                return r;
        for (size_t i = 0; gens && i < json_object_array_length(gens); i++) {
                json_object *pair = json_object_array_get_idx(gens, i);
                Path ip = path_index(&gp, i), ep;

                if (!json_object_is_type(pair, json_type_array) || json_object_array_length(pair) != 2)
                        return error_setf(err, -EBADMSG, "%s must be a [block, generation] pair, not %s", ip.text,
                                          json_object_is_type(pair, json_type_array) ? "an array of another length"
                                                                                     : type_name(pair));
                v = json_object_array_get_idx(pair, 0);
                ep = path_index(&ip, 0);
                r = check_u64(v, &ep, 0, nblocks - 1, NULL, err);
                if (r >= 0) {
                        v = json_object_array_get_idx(pair, 1);
                        ep = path_index(&ip, 1);
                        r = check_u64(v, &ep, 0, UINT32_MAX, NULL, err);
                }
                if (r < 0)
                        return r;
        }
        return 0;
}

static int validate_device(json_object *o, const Path *p, const Refs *refs, ErrorMessage *err) {
        const char *id, *address, *backend, *space, *text;
        json_object *clients, *sim, *kernel;
        VfioBackend b = _VFIO_BACKEND_INVALID;
        Path cp, sp;
        int r;

        if (!json_object_is_type(o, json_type_object))
                return wrong_type(p, "an object", o, err);
        r = get_string(o, p, "id", true, PERSIST_STATE_ADDRESS_MAX, &id, err);
        if (r >= 0)
                r = check_id(id, p, "id", err);
        if (r >= 0)
                r = get_string(o, p, "address", true, PERSIST_STATE_ADDRESS_MAX, &address, err);
        if (r >= 0)
                r = get_string(o, p, "backend", true, PERSIST_STATE_ID_MAX, &backend, err);
        if (r < 0)
                return r;
        for (VfioBackend i = 0; i < _VFIO_BACKEND_MAX; i++)
                if (streq(backend, vfio_backend_to_string(i)))
                        b = i;
        if (b < 0)
                return error_setf(err, -EBADMSG, "%s.backend '%s' is no device backend", p->text, backend);
        r = get_string(o, p, "space", false, PERSIST_STATE_ID_MAX, &space, err);
        if (r >= 0)
                r = check_id(space, p, "space", err);
        if (r >= 0)
                r = get_string(o, p, "last-transition", false, PERSIST_STATE_TEXT_MAX, &text, err);
        if (r >= 0)
                r = get_container(o, p, "clients", json_type_array, false, DEVICE_CLIENTS_MAX, &clients, &cp, err);
        if (r < 0)
                return r;
        for (size_t i = 0; clients && i < json_object_array_length(clients); i++) {
                json_object *c = json_object_array_get_idx(clients, i);
                Path ip = path_index(&cp, i);
                size_t len;

                if (!json_object_is_type(c, json_type_string))
                        return wrong_type(&ip, "a bus name", c, err);
                len = (size_t) json_object_get_string_len(c);
                if (len == 0 || len > 255 || strlen(json_object_get_string(c)) != len)
                        return error_setf(err, -EBADMSG, "%s must be a bus name of 1 to 255 characters", ip.text);
        }

        r = get_container(o, p, "sim", json_type_object, false, 0, &sim, &sp, err);
        if (r >= 0)
                r = get_container(o, p, "kernel", json_type_object, false, 0, &kernel, &cp, err);
        if (r < 0)
                return r;
        if (!!sim == !!kernel)
                return error_setf(err, -EBADMSG, "%s must have exactly one of a sim and a kernel record", p->text);
        if (!!sim != (b == VFIO_BACKEND_SIM))
                return error_setf(err, -EBADMSG, "%s.backend '%s' does not match its %s record", p->text, backend,
                                  sim ? "sim" : "kernel");
        return sim ? validate_sim(sim, &sp, address, err) : validate_kernel(kernel, &cp, &kernel_device, refs, err);
}

/* A store entry's name, or a user's: what systemd accepts as FDNAME=, and not a state's. */
static int check_fd_name(json_object *v, const Path *p, const char **ret, ErrorMessage *err) {
        const char *s;

        if (!json_object_is_type(v, json_type_string))
                return wrong_type(p, "a descriptor name", v, err);
        s = json_object_get_string(v);
        if ((size_t) json_object_get_string_len(v) != strlen(s) || !named_fd_name_valid(s))
                return error_setf(err, -EBADMSG, "%s must be 1 to 255 printable characters other than ':'", p->text);
        if (strncmp(s, "state-", 6) == 0)
                return error_setf(err, -EBADMSG, "%s '%s' is the name of a state, not of a descriptor", p->text, s);
        *ret = s;
        return 0;
}

/* fds: [{"name": "fd-1", "users": ["map-s0-0", ...]}, ...]: entry names unique, every user in
 * exactly one entry. On success refs holds the users, sorted. */
static int validate_fds(json_object *root, const Path *top, Refs *refs, ErrorMessage *err) {
        _cleanup_free_ const char **names = NULL;
        json_object *fds;
        size_t n_users = 0;
        Path fp;
        int r;

        r = get_container(root, top, "fds", json_type_array, true, PERSIST_STATE_FDS_MAX, &fds, &fp, err);
        if (r < 0)
                return r;
        names = new0(const char *, MAX(json_object_array_length(fds), 1u));
        if (!names)
                return -ENOMEM;
        for (size_t i = 0; i < json_object_array_length(fds); i++) {
                json_object *e = json_object_array_get_idx(fds, i), *users, *v;
                Path ip = path_index(&fp, i), np, up;

                if (!json_object_is_type(e, json_type_object))
                        return wrong_type(&ip, "an object", e, err);
                r = field(e, &ip, "name", true, &v, &np, err);
                if (r >= 0)
                        r = check_fd_name(v, &np, &names[i], err);
                if (r >= 0)
                        r = get_container(e, &ip, "users", json_type_array, true, PERSIST_STATE_FDS_MAX, &users, &up,
                                          err);
                if (r < 0)
                        return r;
                if (json_object_array_length(users) == 0)
                        return error_setf(err, -EBADMSG, "%s lists no users", up.text);
                for (size_t k = 0; k < json_object_array_length(users); k++) {
                        const char **grown;
                        Path kp = path_index(&up, k);

                        if (n_users >= PERSIST_STATE_FDS_MAX)
                                return error_setf(err, -EBADMSG, "%s: the entries list more than %u users", kp.text,
                                                  PERSIST_STATE_FDS_MAX);
                        grown = reallocarray(refs->users, n_users + 1, sizeof *grown);
                        if (!grown)
                                return -ENOMEM;
                        refs->users = grown;
                        r = check_fd_name(json_object_array_get_idx(users, k), &kp, &refs->users[n_users], err);
                        if (r < 0)
                                return r;
                        n_users++;
                        refs->n = n_users;
                }
        }
        qsort(names, json_object_array_length(fds), sizeof *names, strp_compare);
        for (size_t i = 1; i < json_object_array_length(fds); i++)
                if (streq(names[i - 1], names[i]))
                        return error_setf(err, -EBADMSG, "%s: two entries are named '%s'", fp.text, names[i]);
        qsort(refs->users, refs->n, sizeof *refs->users, strp_compare);
        for (size_t i = 1; i < refs->n; i++)
                if (streq(refs->users[i - 1], refs->users[i]))
                        return error_setf(err, -EBADMSG, "%s: '%s' is a user of two entries", fp.text, refs->users[i]);
        return 0;
}

/* Values in the text, counted without building anything: every value but the first follows a ','
 * or an opening bracket. Inside strings nothing counts. */
static uint64_t count_values(const char *text, size_t size) {
        uint64_t n = 1;
        bool in_string = false;

        for (size_t i = 0; i < size; i++) {
                char c = text[i];
                if (in_string) {
                        if (c == '\\')
                                i++;
                        else if (c == '"')
                                in_string = false;
                } else if (c == '"')
                        in_string = true;
                else if (c == ',' || c == '[' || c == '{')
                        n++;
        }
        return n;
}

static int parse(const char *text, size_t size, json_object **ret, ErrorMessage *err) {
        json_tokener *tok;
        json_object *root;
        enum json_tokener_error jerr;
        size_t end, lead = 0;

        if (size > INT_MAX)
                return error_setf(err, -EBADMSG, "the state is %zu bytes, too large to parse", size);
        if (memchr(text, 0, size))
                return error_setf(err, -EBADMSG, "the state contains a NUL byte");
        if (count_values(text, size) > PERSIST_STATE_VALUES_MAX)
                return error_setf(err, -EBADMSG, "the state holds more than %" PRIu64 " JSON values",
                                  (uint64_t) PERSIST_STATE_VALUES_MAX);

        tok = json_tokener_new_ex(PERSIST_STATE_DEPTH_MAX);
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
        root = json_tokener_parse_ex(tok, text, (int) size);
        jerr = json_tokener_get_error(tok);
        end = json_tokener_get_parse_end(tok);
        while (lead < size && text[lead] && strchr(" \t\r\n", text[lead]))
                lead++;
        if (jerr == json_tokener_continue && end == size && lead < size && text[lead] != '{' && text[lead] != '[') {
                /* A bare literal or number at the very end ("null", "1") waits for what follows:
                 * the terminating NUL says nothing does. (Not for an object or array: given a NUL
                 * inside one, json-c returns what it has so far.) */
                root = json_tokener_parse_ex(tok, "", 1);
                jerr = json_tokener_get_error(tok);
        }
        json_tokener_free(tok);
        /* A root of NULL with success is the JSON "null", which the caller refuses as such. */
        if (jerr == json_tokener_continue)
                return error_setf(err, -EBADMSG, "the state is not JSON: it ends in the middle of a value");
        if (jerr != json_tokener_success) {
                json_object_put(root);
                return error_setf(err, -EBADMSG, "the state is not JSON: %s at byte %zu",
                                  json_tokener_error_desc(jerr), end);
        }
        while (end < size && strchr(" \t\r\n", text[end]) && text[end])
                end++;
        if (end < size) {
                json_object_put(root);
                return error_setf(err, -EBADMSG, "the state is not JSON: data after the value at byte %zu", end);
        }
        *ret = root;
        return 0;
}

int persist_state_parse(const char *text, size_t size, json_object **ret, ErrorMessage *err) {
        json_object *root = NULL, *spaces, *devices, *kernel;
        _cleanup_free_ const char **users = NULL;
        Refs refs_v2 = {}, *refs = NULL;
        uint64_t version;
        Path top = {}, sp, dp, kp;
        int r;

        r = parse(text, size, &root, err);
        if (r < 0)
                return r;
        if (!json_object_is_type(root, json_type_object)) {
                r = error_setf(err, -EBADMSG, "the state must be an object, not %s", type_name(root));
                goto fail;
        }
        r = get_u64(root, &top, "version", 0, UINT64_MAX, &version, err);
        if (r >= 0 && (version < 1 || version > PERSIST_STATE_VERSION))
                r = error_setf(err, -EBADMSG, "version is %" PRIu64 ", this vfiomigd reads versions 1 to %d", version,
                               PERSIST_STATE_VERSION);
        /* Version 1 stored every object's descriptor under the object's name; version 2 one entry
         * per open file description, listed in fds with the objects using it. */
        if (r >= 0 && version >= 2) {
                r = validate_fds(root, &top, &refs_v2, err);
                users = refs_v2.users;
                refs = &refs_v2;
        }
        if (r >= 0)
                r = get_u64(root, &top, "next-space", 0, UINT_MAX, NULL, err);
        if (r >= 0)
                r = get_container(root, &top, "kernel", json_type_object, false, 0, &kernel, &kp, err);
        if (r >= 0 && kernel)
                r = validate_kernel(kernel, &kp, &kernel_context, refs, err);
        if (r >= 0)
                r = get_container(root, &top, "spaces", json_type_array, false, MANAGER_MAX_SPACES_LIMIT, &spaces, &sp,
                                  err);
        if (r >= 0)
                r = get_container(root, &top, "devices", json_type_array, false, MANAGER_MAX_DEVICES_LIMIT, &devices,
                                  &dp, err);
        if (r < 0)
                goto fail;

        for (size_t i = 0; spaces && i < json_object_array_length(spaces); i++) {
                json_object *s = json_object_array_get_idx(spaces, i);
                Path ip = path_index(&sp, i);

                r = validate_space(s, &ip, refs, err);
                if (r < 0)
                        goto fail;
                /* Ids name fds in the store: two spaces of one id would share them. */
                for (size_t k = 0; k < i; k++) {
                        json_object *a, *b;
                        (void) json_object_object_get_ex(s, "id", &a);
                        (void) json_object_object_get_ex(json_object_array_get_idx(spaces, k), "id", &b);
                        if (streq(json_object_get_string(a), json_object_get_string(b))) {
                                r = error_setf(err, -EBADMSG, "%s.id '%s' is also the id of spaces[%zu]", ip.text,
                                               json_object_get_string(a), k);
                                goto fail;
                        }
                }
        }
        for (size_t i = 0; devices && i < json_object_array_length(devices); i++) {
                Path ip = path_index(&dp, i);

                r = validate_device(json_object_array_get_idx(devices, i), &ip, refs, err);
                if (r < 0)
                        goto fail;
        }

        *ret = root;
        return 0;

fail:
        json_object_put(root);
        return r;
}
