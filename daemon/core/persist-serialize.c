/* SPDX-License-Identifier: GPL-2.0-or-later */

/* The saved state's JSON (persist-state.c documents and validates the record it makes). */

#include <json.h>
#include <printbuf.h>
#include <stdio.h>
#include <string.h>

#include "kernel-iommu.h"
#include "persist-serialize.h"
#include "persist-state.h"
#include "sim-device.h"
#include "sim-stream.h"

static void json_putp(json_object **o) {
        if (*o)
                json_object_put(*o);
}


static int add_u64(json_object *o, const char *key, uint64_t v) {
        json_object *j = json_object_new_uint64(v);
        return j && json_object_object_add(o, key, j) == 0 ? 0 : -ENOMEM;
}

static int add_string(json_object *o, const char *key, const char *v) {
        json_object *j = json_object_new_string(v);
        return j && json_object_object_add(o, key, j) == 0 ? 0 : -ENOMEM;
}

static int add_bool(json_object *o, const char *key, bool v) {
        json_object *j = json_object_new_boolean(v);
        return j && json_object_object_add(o, key, j) == 0 ? 0 : -ENOMEM;
}

static int sim_device_fd_name(const VfioDev *d, char *buf, size_t size) {
        return snprintf(buf, size, "sim-device-%s", d->name) < (int) size ? 0 : -ENAMETOOLONG;
}

int persist_mapping_fd_name(const AddressSpace *s, const Mapping *m, char *buf, size_t size) {
        return snprintf(buf, size, "map-%s-%llu", s->id, (unsigned long long) m->serial) < (int) size ? 0
                                                                                                       : -ENAMETOOLONG;
}

static int serialize_sim(VfioDev *d, json_object **ret) {
        _cleanup_(json_putp) json_object *o = json_object_new_object(), *gens = json_object_new_array();
        SimSnapshot snap;
        int r;

        if (!o || !gens)
                return -ENOMEM;
        r = sim_device_snapshot(d, &snap);
        if (r < 0)
                return r;
        r = add_u64(o, "state-size", snap.config.state_size);
        if (r >= 0)
                r = add_u64(o, "precopy-size", snap.config.precopy_size);
        if (r >= 0)
                r = add_u64(o, "dirty-rate", snap.config.dirty_rate);
        if (r >= 0)
                r = add_u64(o, "flags", snap.config.migration_flags);
        if (r >= 0)
                r = add_bool(o, "mtty-quirks", snap.config.mtty_quirks);
        if (r >= 0)
                r = add_u64(o, "fail-to-error", snap.config.fail_to_error);
        if (r >= 0)
                r = add_u64(o, "fail-in-place", snap.config.fail_in_place);
        if (r >= 0)
                r = add_u64(o, "arc-latency-usec", snap.config.arc_latency_usec);
        if (r >= 0)
                r = add_u64(o, "latency-arcs", snap.config.latency_arcs);
        if (r >= 0)
                r = add_u64(o, "seed", snap.seed);
        if (r >= 0)
                r = add_string(o, "state", mig_state_to_string(snap.state));
        /* Only rewritten blocks: a fresh device has every generation at zero. */
        for (uint64_t b = 0; r >= 0 && b < snap.nblocks; b++) {
                json_object *pair;
                if (snap.gens[b] == 0)
                        continue;
                pair = json_object_new_array();
                if (!pair || json_object_array_add(pair, json_object_new_uint64(b)) < 0 ||
                    json_object_array_add(pair, json_object_new_uint64(snap.gens[b])) < 0 ||
                    json_object_array_add(gens, pair) < 0)
                        r = -ENOMEM;
        }
        sim_snapshot_done(&snap);
        if (r < 0)
                return r;
        if (json_object_object_add(o, "gens", TAKE_PTR(gens)) < 0)
                return -ENOMEM;
        *ret = TAKE_PTR(o);
        return 0;
}

static int serialize_device(Device *d, json_object **ret, NamedFds *fds) {
        _cleanup_(json_putp) json_object *o = json_object_new_object(), *clients = json_object_new_array();
        json_object *backend_state = NULL;
        char name[300];
        int r;

        if (!o || !clients)
                return -ENOMEM;
        r = add_string(o, "id", d->id);
        if (r >= 0)
                r = add_string(o, "address", d->dev->address);
        if (r >= 0)
                r = add_string(o, "backend", vfio_backend_to_string(d->dev->backend));
        if (r >= 0 && d->space)
                r = add_string(o, "space", d->space->id);
        if (r >= 0 && d->last_transition)
                r = add_string(o, "last-transition", d->last_transition);
        for (char **c = d->clients; r >= 0 && c && *c; c++)
                r = json_object_array_add(clients, json_object_new_string(*c)) < 0 ? -ENOMEM : 0;
        if (r >= 0)
                r = json_object_object_add(o, "clients", TAKE_PTR(clients)) < 0 ? -ENOMEM : 0;
        if (r < 0)
                return r;

        if (d->dev->backend == VFIO_BACKEND_SIM) {
                r = serialize_sim(d->dev, &backend_state);
                if (r < 0)
                        return r;
                if (json_object_object_add(o, "sim", backend_state) < 0) {
                        json_object_put(backend_state);
                        return -ENOMEM;
                }
                r = sim_device_fd_name(d->dev, name, sizeof name);
                if (r >= 0 && d->dev->device_fd >= 0)
                        r = named_fds_add(fds, name, d->dev->device_fd, false);
        } else {
                r = kernel_device_save(d->dev, &backend_state, fds);
                if (r < 0)
                        return r;
                if (json_object_object_add(o, "kernel", backend_state) < 0) {
                        json_object_put(backend_state);
                        return -ENOMEM;
                }
        }
        if (r < 0)
                return r;
        *ret = TAKE_PTR(o);
        return 0;
}

static int cached_text_print(json_object *o, struct printbuf *pb, int level, int flags) {
        const char *text = json_object_get_userdata(o);
        return printbuf_memappend(pb, text, (int) strlen(text));
}

json_object *persist_json_cached(const char *text) {
        json_object *o = json_object_new_array();

        if (o)
                json_object_set_serializer(o, cached_text_print, (void *) text, NULL);
        return o;
}

/* The mappings array of s, as JSON text cached in the space (address-space.h says when it is
 * valid): a change to one device must not re-serialize a thousand mappings. */
static int serialize_mappings(AddressSpace *s, json_object **ret) {
        _cleanup_(json_putp) json_object *mappings = NULL;
        char *text;
        int r = 0;

        if (s->saved_mappings && s->saved_next_serial == s->next_serial && s->saved_n_mappings == s->n_mappings) {
                *ret = persist_json_cached(s->saved_mappings);
                return *ret ? 0 : -ENOMEM;
        }
        mappings = json_object_new_array();
        if (!mappings)
                return -ENOMEM;
        for (size_t i = 0; r >= 0 && i < s->n_mappings; i++) {
                const Mapping *m = s->mappings[i];
                json_object *j = json_object_new_object();

                if (!j)
                        return -ENOMEM;
                if (json_object_array_add(mappings, j) < 0) {
                        json_object_put(j);
                        return -ENOMEM;
                }
                r = add_u64(j, "iova", m->m.iova);
                if (r >= 0)
                        r = add_u64(j, "length", m->m.length);
                if (r >= 0)
                        r = add_u64(j, "offset", m->m.offset);
                if (r >= 0)
                        r = add_u64(j, "access", m->m.access);
                if (r >= 0)
                        r = add_bool(j, "by-file", m->m.by_file);
                if (r >= 0)
                        r = add_u64(j, "serial", m->serial);
        }
        if (r < 0)
                return r;
        text = strdup(json_object_to_json_string_ext(mappings, JSON_C_TO_STRING_PLAIN));
        if (!text)
                return -ENOMEM;
        free(s->saved_mappings);
        s->saved_mappings = text;
        s->saved_next_serial = s->next_serial;
        s->saved_n_mappings = s->n_mappings;
        *ret = persist_json_cached(s->saved_mappings);
        return *ret ? 0 : -ENOMEM;
}

static int serialize_space(AddressSpace *s, json_object **ret, NamedFds *fds) {
        _cleanup_(json_putp) json_object *o = json_object_new_object(), *mappings = NULL;
        int r;

        if (!o)
                return -ENOMEM;
        r = add_string(o, "id", s->id);
        if (r >= 0)
                r = add_string(o, "backend", iommu_backend_to_string(s->iommu->backend));
        if (r >= 0)
                r = add_bool(o, "prepared", s->handover_prepared);
        if (r >= 0)
                r = add_u64(o, "next-serial", s->next_serial);
        if (r < 0)
                return r;
        if (iommu_space_is_sim(s->iommu))
                r = add_string(o, "sim-mapping", sim_mapping_style_to_string(sim_iommu_style(s->iommu)));
        else {
                json_object *k = NULL;
                r = kernel_space_save(s->iommu, &k);
                if (r >= 0 && json_object_object_add(o, "kernel", k) < 0) {
                        json_object_put(k);
                        r = -ENOMEM;
                }
        }
        if (r >= 0)
                r = serialize_mappings(s, &mappings);
        for (size_t i = 0; r >= 0 && i < s->n_mappings; i++) {
                const Mapping *m = s->mappings[i];
                char name[300];

                r = persist_mapping_fd_name(s, m, name, sizeof name);
                if (r >= 0)
                        r = named_fds_add(fds, name, m->m.fd, false);
        }
        if (r < 0)
                return r;
        if (json_object_object_add(o, "mappings", TAKE_PTR(mappings)) < 0)
                return -ENOMEM;
        *ret = TAKE_PTR(o);
        return 0;
}

int persist_serialize(Manager *m, json_object **ret, NamedFds *fds) {
        _cleanup_(json_putp) json_object *root = json_object_new_object(), *devices = json_object_new_array(),
                                         *spaces = json_object_new_array(), *kernel = NULL;
        int r;

        if (!root || !devices || !spaces)
                return -ENOMEM;
        r = add_u64(root, "version", PERSIST_STATE_VERSION);
        if (r >= 0)
                r = add_u64(root, "next-space", m->next_space_number);
        if (r < 0)
                return r;
        r = kernel_context_save(m->kernel, &kernel, fds);
        if (r < 0)
                return r;
        if (json_object_object_add(root, "kernel", TAKE_PTR(kernel)) < 0)
                return -ENOMEM;

        for (size_t i = 0; i < m->n_spaces; i++) {
                json_object *j = NULL;
                r = serialize_space(m->spaces[i], &j, fds);
                if (r < 0)
                        return r;
                if (json_object_array_add(spaces, j) < 0) {
                        json_object_put(j);
                        return -ENOMEM;
                }
        }
        for (size_t i = 0; i < m->n_devices; i++) {
                json_object *j = NULL;
                r = serialize_device(m->devices[i], &j, fds);
                if (r < 0)
                        return r;
                if (json_object_array_add(devices, j) < 0) {
                        json_object_put(j);
                        return -ENOMEM;
                }
        }
        if (json_object_object_add(root, "spaces", TAKE_PTR(spaces)) < 0 ||
            json_object_object_add(root, "devices", TAKE_PTR(devices)) < 0)
                return -ENOMEM;
        *ret = TAKE_PTR(root);
        return 0;
}

