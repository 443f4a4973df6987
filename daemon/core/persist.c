/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <fcntl.h>
#include <json.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>

#include "crc32c.h"
#include "fd-table.h"
#include "kernel-iommu.h"
#include "log.h"
#include "persist-serialize.h"
#include "persist-state.h"
#include "persist.h"
#include "sim-device.h"
#include "sim-stream.h"
#include "strv.h"

#define STATE_MAGIC "VFMSTATE"
#define STATE_NAME_PREFIX "state-"
#define STATE_SIZE_MAX (UINT64_C(256) << 20)

struct Persist {
        Manager *manager;
        bool notify;          /* a service manager listens ($NOTIFY_SOCKET) */
        bool restoring;       /* no saving while the state is being rebuilt */
        bool refused;         /* the saved state was refused: the store is left as it is */
        uint64_t seq;
        FdTable table;        /* the entries we sent to the fd store, each with its users */
        char *table_text;     /* the JSON of table, while it has not changed */
        char **states;        /* the state memfds in the fd store */
};

/* The header in front of the JSON in a state memfd. */
typedef struct StateHeader {
        char magic[8];
        uint64_t seq;
        uint64_t length;
        uint32_t crc;
        uint32_t zero;
} StateHeader;

static void json_putp(json_object **o) {
        if (*o)
                json_object_put(*o);
}

static void store_remove(const char *name);

/* Before the legacy backend closes a device's descriptors to move its IOMMU group into another
 * container: refused while anyone depends on the open device; otherwise the copy in the fd
 * store, which would keep the device open and the kernel refusing the move, is dropped (the
 * next save stores the new descriptor). */
static int reopen_check(VfioDev *dev, void *userdata, ErrorMessage *err) {
        Persist *p = userdata;
        _cleanup_free_ char *name = NULL;
        ssize_t at;

        for (size_t i = 0; i < p->manager->n_devices; i++) {
                Device *d = p->manager->devices[i];
                if (d->dev != dev)
                        continue;
                if (d->clients)
                        return error_setf(err, -EBUSY,
                                          "%s must be reopened to move its IOMMU group, but a client holds a copy of "
                                          "its descriptor: attach it to the address space before handing it out", d->id);
                if (d->session_fd >= 0)
                        return error_setf(err, -EBUSY,
                                          "%s must be reopened to move its IOMMU group, which would end its open "
                                          "migration session", d->id);
        }
        if (p->notify && kernel_device_fd_name(dev, &name) >= 0 && (at = fd_table_find_user(&p->table, name)) >= 0) {
                int r;

                /* A device's descriptor is its own: the entry has no other user. */
                if (p->table.entries[at].stored)
                        store_remove(p->table.entries[at].name);
                fd_table_remove(&p->table, (size_t) at);
                p->table_text = mfree(p->table_text);
                /* FDSTOREREMOVE is only a message: until the service manager has processed it, its
                 * copy keeps the device open and the kernel refuses the move. */
                r = sd_notify_barrier(false, 5 * UINT64_C(1000000));
                if (r < 0)
                        log_warning_errno(r, "The service manager did not confirm dropping '%s' from its fd store: %m",
                                          name);
        }
        return 0;
}

int persist_new(Manager *m, Persist **ret) {
        Persist *p = new0(Persist, 1);

        if (!p)
                return -ENOMEM;
        p->manager = m;
        p->notify = getenv("NOTIFY_SOCKET") != NULL;
        m->fd_store = p->notify;
        kernel_context_set_reopen_check(m->kernel, reopen_check, p);
        *ret = p;
        return 0;
}

Persist *persist_free(Persist *p) {
        if (!p)
                return NULL;
        kernel_context_set_reopen_check(p->manager->kernel, NULL, NULL);
        fd_table_done(&p->table);
        free(p->table_text);
        strv_free(p->states);
        free(p);
        return NULL;
}

/* ---- the fd store ---- */

static int store_fd(const char *name, int fd) {
        _cleanup_free_ char *msg = NULL;
        int r;

        if (asprintf(&msg, "FDSTORE=1\nFDNAME=%s", name) < 0)
                return -ENOMEM;
        r = sd_pid_notify_with_fds(0, false, msg, &fd, 1);
        if (r < 0)
                return log_warning_errno(r, "Failed to keep %s in the fd store: %m", name);
        return 0;
}

static void store_remove(const char *name) {
        int r = sd_notifyf(false, "FDSTOREREMOVE=1\nFDNAME=%s", name);
        if (r < 0)
                log_warning_errno(r, "Failed to remove %s from the fd store, ignoring: %m", name);
}

/* Brings the store in line with desired (logical name → descriptor), one entry per open file
 * description (fd-table.h); p->table becomes what the store holds. Entries that lost their
 * last user go first: a description stored again under a new name after its old entry is gone
 * must not meet that old entry in the store, which would fold it. State memfds are the
 * caller's. */
static int store_sync(Persist *p, const NamedFds *desired) {
        _cleanup_(fd_table_done) FdTable new = {};
        _cleanup_free_ bool *kept = NULL;
        int r, ret_r = 0;

        r = fd_table_plan(&p->table, desired, &new, &kept);
        if (r < 0)
                return r;
        for (size_t i = 0; i < p->table.n; i++)
                if (!kept[i] && p->table.entries[i].stored)
                        store_remove(p->table.entries[i].name);
        for (size_t i = 0; i < new.n; i++) {
                FdEntry *e = &new.entries[i];
                if (e->stored)
                        continue;
                r = store_fd(e->name, e->fd);
                if (r < 0) {
                        if (ret_r == 0)
                                ret_r = r;
                        continue;
                }
                e->stored = true;
        }
        for (size_t i = 0; i < new.n; i++)
                new.entries[i].fd = -EBADF;
        if (!fd_table_same(&p->table, &new))
                p->table_text = mfree(p->table_text);
        fd_table_done(&p->table);
        p->table = new;
        new = (FdTable) {};
        return ret_r;
}

/* The state's text: root with the table of fd store entries its objects use. The table's JSON is
 * kept in *cache (if given) while the table stays the same. */
static int state_text(json_object *root, const FdTable *table, char **cache, char **ret) {
        json_object *fds = NULL;
        char *text;
        int r;

        if (!cache || !*cache) {
                r = fd_table_to_json(table, &fds);
                if (r < 0)
                        return r;
                if (cache) {
                        *cache = strdup(json_object_to_json_string_ext(fds, JSON_C_TO_STRING_PLAIN));
                        json_object_put(fds);
                        if (!*cache)
                                return -ENOMEM;
                }
        }
        if (cache) {
                fds = persist_json_cached(*cache);
                if (!fds)
                        return -ENOMEM;
        }
        if (json_object_object_add(root, "fds", fds) < 0) {
                json_object_put(fds);
                return -ENOMEM;
        }
        text = strdup(json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN));
        if (!text)
                return -ENOMEM;
        *ret = text;
        return 0;
}

/* A sealed memfd holding header + JSON. */
static int state_memfd(uint64_t seq, const char *json) {
        _cleanup_close_ int fd = -EBADF;
        size_t len = strlen(json);
        StateHeader h = { .seq = seq, .length = len, .crc = crc32c(json, len) };

        memcpy(h.magic, STATE_MAGIC, sizeof h.magic);
        fd = memfd_create("vfiomigd-state", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
                return -errno;
        if (pwrite(fd, &h, sizeof h, 0) != (ssize_t) sizeof h || pwrite(fd, json, len, sizeof h) != (ssize_t) len)
                return -EIO;
        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
                return -errno;
        return TAKE_FD(fd);
}

int persist_save(Persist *p) {
        _cleanup_(named_fds_done) NamedFds fds = {};
        _cleanup_(json_putp) json_object *root = NULL;
        _cleanup_free_ char *json = NULL;
        _cleanup_close_ int state_fd = -EBADF;
        char name[64];
        int r;

        if (!p || !p->notify || p->restoring)
                return 0;
        if (p->refused) {
                log_debug("Not saving: the fd store holds a state this vfiomigd refused, which a save would replace.");
                return 0;
        }

        r = persist_serialize(p->manager, &root, &fds);
        if (r < 0)
                return log_error_errno(r, "Failed to serialize the state, a restart would lose changes: %m");
        r = store_sync(p, &fds);
        if (r < 0)
                log_error_errno(r, "Failed to bring the fd store up to date, a restart may lose changes: %m");
        r = state_text(root, &p->table, &p->table_text, &json);
        if (r < 0)
                return log_error_errno(r, "Failed to serialize the state, a restart would lose changes: %m");

        state_fd = state_memfd(++p->seq, json);
        if (state_fd < 0)
                return log_error_errno(state_fd, "Failed to write the state: %m");
        (void) snprintf(name, sizeof name, STATE_NAME_PREFIX "%llu", (unsigned long long) p->seq);
        r = store_fd(name, state_fd);
        if (r < 0)
                return r;
        /* Only now that the new state is in may the older ones go. */
        for (char **s = p->states; s && *s; s++)
                store_remove(*s);
        strv_free(p->states);
        p->states = NULL;
        r = strv_extend(&p->states, name);
        if (r < 0)
                return log_oom();
        log_debug("Saved state %llu (%zu bytes, %zu objects' descriptors in %zu fd store entries).",
                  (unsigned long long) p->seq, strlen(json), fds.n, p->table.n);
        return 0;
}

int persist_export(Persist *p, NamedFds *ret) {
        _cleanup_(named_fds_done) NamedFds fds = {}, out = {};
        _cleanup_(fd_table_done) FdTable empty = { .next_id = 1 }, table = {};
        _cleanup_(json_putp) json_object *root = NULL;
        _cleanup_free_ bool *kept = NULL;
        _cleanup_free_ char *json = NULL;
        _cleanup_close_ int state_fd = -EBADF;
        char name[64];
        int r;

        r = persist_serialize(p->manager, &root, &fds);
        if (r < 0)
                return r;
        /* What a service manager would hold: one entry per open file description. */
        r = fd_table_plan(&empty, &fds, &table, &kept);
        if (r < 0)
                return r;
        for (size_t i = 0; i < table.n; i++) {
                int fd = fcntl(table.entries[i].fd, F_DUPFD_CLOEXEC, 3);
                if (fd < 0)
                        return -errno;
                r = named_fds_add(&out, table.entries[i].name, fd, true);
                if (r < 0) {
                        safe_close(fd);
                        return r;
                }
        }
        r = state_text(root, &table, NULL, &json);
        if (r < 0)
                return r;
        state_fd = state_memfd(p->seq + 1, json);
        if (state_fd < 0)
                return state_fd;
        (void) snprintf(name, sizeof name, STATE_NAME_PREFIX "%llu", (unsigned long long) p->seq + 1);
        r = named_fds_add(&out, name, state_fd, true);
        if (r < 0)
                return r;
        TAKE_FD(state_fd);
        *ret = out;
        out = (NamedFds) {};
        return 0;
}

int persist_prepare_stop(Persist *p) {
        Manager *m = p->manager;

        for (size_t i = 0; i < m->n_spaces; i++) {
                AddressSpace *s = m->spaces[i];
                ErrorMessage err = {};
                int r;

                if (s->n_mappings == 0 || s->handover_prepared)
                        continue;
                r = s->iommu->ops->prepare_handover(s->iommu, &err);
                if (r < 0) {
                        log_warning_errno(r, "Address space %s cannot prepare its mappings for a successor: %s",
                                          s->id, err.text);
                        continue;
                }
                s->handover_prepared = true;
                log_info("Address space %s: %zu mapping%s ready for a successor, should the service manager "
                         "start one (a stop without a restart releases them).", s->id, s->n_mappings,
                         s->n_mappings == 1 ? "" : "s");
        }
        return persist_save(p);
}

/* ---- restore ---- */

static int read_state(int fd, uint64_t *ret_seq, char **ret_json, size_t *ret_size) {
        _cleanup_free_ char *json = NULL;
        StateHeader h;
        struct stat st;

        if (fstat(fd, &st) < 0)
                return -errno;
        if (pread(fd, &h, sizeof h, 0) != (ssize_t) sizeof h || memcmp(h.magic, STATE_MAGIC, sizeof h.magic) != 0)
                return -EBADMSG;
        if (h.length > STATE_SIZE_MAX || (uint64_t) st.st_size < sizeof h + h.length)
                return -EBADMSG;
        json = malloc(h.length + 1);
        if (!json)
                return -ENOMEM;
        if (pread(fd, json, h.length, sizeof h) != (ssize_t) h.length)
                return -EBADMSG;
        json[h.length] = '\0';
        if (crc32c(json, h.length) != h.crc)
                return -EBADMSG;
        *ret_seq = h.seq;
        *ret_json = TAKE_PTR(json);
        *ret_size = (size_t) h.length;
        return 0;
}

static uint64_t get_u64(json_object *o, const char *key) {
        json_object *v;
        return json_object_object_get_ex(o, key, &v) ? json_object_get_uint64(v) : 0;
}

static const char *get_string(json_object *o, const char *key) {
        json_object *v;
        return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string)
                       ? json_object_get_string(v)
                       : NULL;
}

static bool get_bool(json_object *o, const char *key) {
        json_object *v;
        return json_object_object_get_ex(o, key, &v) && json_object_get_boolean(v);
}

static int restore_space(Persist *p, json_object *o, NamedFds *fds, ErrorMessage *err) {
        Manager *m = p->manager;
        _cleanup_(iommu_space_freep) IommuSpace *iommu = NULL;
        _cleanup_(address_space_freep) AddressSpace *s = NULL;
        _cleanup_free_ IommuMapping **list = NULL;
        const char *id = get_string(o, "id"), *backend = get_string(o, "backend");
        json_object *mappings = NULL, *k = NULL;
        bool prepared = get_bool(o, "prepared");
        size_t n, n_lost = 0, n_reachable = 0;
        int r;

        if (!id || !backend)
                return error_setf(err, -EBADMSG, "an address space record lacks its id or backend");
        if (streq(backend, "sim")) {
                SimMappingStyle style = sim_mapping_style_from_string(get_string(o, "sim-mapping"));
                if (style < 0)
                        return error_setf(err, -EBADMSG, "address space %s: unknown sim mapping style", id);
                r = sim_iommu_new(style, &iommu);
        } else if (json_object_object_get_ex(o, "kernel", &k))
                r = kernel_space_restore(m->kernel, k, &iommu, err);
        else
                return error_setf(err, -EBADMSG, "address space %s lacks its kernel record", id);
        if (r < 0)
                return error_setf(err, r, "address space %s: %m", id);

        r = address_space_new(m, id, TAKE_PTR(iommu), &s);
        if (r < 0)
                return r;
        s->next_serial = get_u64(o, "next-serial");

        if (json_object_object_get_ex(o, "mappings", &mappings) && json_object_is_type(mappings, json_type_array)) {
                n = json_object_array_length(mappings);
                s->mappings = new0(Mapping *, MAX(n, 1u));
                list = new0(IommuMapping *, MAX(n, 1u));
                if (!s->mappings || !list)
                        return -ENOMEM;
                for (size_t i = 0; i < n; i++) {
                        json_object *j = json_object_array_get_idx(mappings, i);
                        Mapping *mp = new0(Mapping, 1);
                        char name[300];

                        if (!mp)
                                return -ENOMEM;
                        mp->m = (IommuMapping) {
                                .iova = get_u64(j, "iova"),
                                .length = get_u64(j, "length"),
                                .offset = get_u64(j, "offset"),
                                .access = (uint32_t) get_u64(j, "access"),
                                .by_file = get_bool(j, "by-file"),
                                .fd = -EBADF,
                        };
                        mp->serial = get_u64(j, "serial");
                        (void) persist_mapping_fd_name(s, mp, name, sizeof name);
                        mp->m.fd = named_fds_take(fds, name);
                        if (mp->m.fd < 0) {
                                IommuMapping lost = mp->m;
                                ErrorMessage why = {};

                                free(mp);
                                n_lost++;
                                /* The kernel may still translate the range (iommufd and legacy
                                 * IOMMUs outlive the process), with nobody able to say what backs
                                 * it and no call able to reach it: remove the translation. */
                                r = s->iommu->ops->unmap(s->iommu, &lost, &why);
                                if (r >= 0 || r == -ENOENT)
                                        log_error("Address space %s: the file of the mapping at IOVA 0x%llx+0x%llx is "
                                                  "missing from the fd store; the mapping is lost and %s.", id,
                                                  (unsigned long long) lost.iova, (unsigned long long) lost.length,
                                                  r >= 0 ? "was unmapped from the IOMMU: no device can reach it"
                                                         : "is not mapped in the IOMMU");
                                else {
                                        n_reachable++;
                                        log_error("Address space %s: the file of the mapping at IOVA 0x%llx+0x%llx is "
                                                  "missing from the fd store, and unmapping it failed (%s): it stays "
                                                  "mapped in the IOMMU, out of vfiomigd's reach.", id,
                                                  (unsigned long long) lost.iova, (unsigned long long) lost.length,
                                                  why.text);
                                }
                                continue;
                        }
                        s->mappings[s->n_mappings++] = mp;
                        s->pinned_bytes += mp->m.length;
                }
                for (size_t i = 0; i < s->n_mappings; i++)
                        list[i] = &s->mappings[i]->m;
                r = s->iommu->ops->take_over(s->iommu, list, s->n_mappings, prepared, err);
                if (r < 0) {
                        char *problem = NULL;
                        log_error_errno(r, "Address space %s: taking over %zu mapping%s failed: %s", id,
                                        s->n_mappings, s->n_mappings == 1 ? "" : "s", err->text);
                        if (asprintf(&problem, "the restart could not take the mappings over: %s", err->text) >= 0)
                                s->handover_problem = problem;
                        *err = (ErrorMessage) {};
                } else if (s->n_mappings > 0)
                        log_info("Address space %s: took over %zu mapping%s (%s).", id, s->n_mappings,
                                 s->n_mappings == 1 ? "" : "s",
                                 prepared ? "planned restart" : "after a crash");
                if (n_lost > 0 && !s->handover_problem) {
                        char *problem = NULL;
                        /* LiveUpdate tells the truth about the last restart until the space is empty. */
                        if (asprintf(&problem,
                                     "the last restart lost %zu mapping%s: the fd store did not hand back %s file%s "
                                     "(%s); the others: %s",
                                     n_lost, n_lost == 1 ? "" : "s", n_lost == 1 ? "its" : "their",
                                     n_lost == 1 ? "" : "s",
                                     n_reachable > 0 ? "some stay mapped in the IOMMU, out of reach"
                                                     : "unmapped from the IOMMU",
                                     s->iommu->ops->live_update(s->iommu)) < 0)
                                return -ENOMEM;
                        s->handover_problem = problem;
                }
        }

        r = manager_add_space(m, s);
        if (r < 0)
                return r;
        TAKE_PTR(s);
        return 0;
}

static int restore_sim(json_object *o, const char *name, NamedFds *fds, VfioDev **ret, ErrorMessage *err) {
        _cleanup_close_ int fd = -EBADF;
        json_object *gens = NULL;
        SimSnapshot snap = {};
        char fdname[300];
        int state, r;

        sim_config_init(&snap.config);
        snap.config.state_size = get_u64(o, "state-size");
        snap.config.precopy_size = get_u64(o, "precopy-size");
        snap.config.precopy_size_set = true;
        snap.config.dirty_rate = get_u64(o, "dirty-rate");
        snap.config.migration_flags = (uint32_t) get_u64(o, "flags");
        snap.config.mtty_quirks = get_bool(o, "mtty-quirks");
        snap.config.fail_to_error = get_u64(o, "fail-to-error");
        snap.config.fail_in_place = get_u64(o, "fail-in-place");
        snap.config.arc_latency_usec = get_u64(o, "arc-latency-usec");
        snap.config.latency_arcs = get_u64(o, "latency-arcs");
        snap.seed = get_u64(o, "seed");
        state = mig_state_from_string(get_string(o, "state"));
        if (state < 0 || snap.config.state_size == 0 || snap.config.state_size > SIM_STATE_SIZE_MAX)
                return error_setf(err, -EBADMSG, "sim:%s: malformed saved state", name);
        snap.state = state;
        snap.nblocks = sim_block_count(snap.config.state_size);
        snap.gens = new0(uint32_t, snap.nblocks);
        if (!snap.gens)
                return -ENOMEM;
        if (json_object_object_get_ex(o, "gens", &gens))
                for (size_t i = 0; i < json_object_array_length(gens); i++) {
                        json_object *pair = json_object_array_get_idx(gens, i);
                        uint64_t b = json_object_get_uint64(json_object_array_get_idx(pair, 0));
                        if (b < snap.nblocks)
                                snap.gens[b] = (uint32_t) json_object_get_uint64(json_object_array_get_idx(pair, 1));
                }

        (void) snprintf(fdname, sizeof fdname, "sim-device-%s", name);
        fd = named_fds_take(fds, fdname);
        r = sim_device_restore(name, &snap, TAKE_FD(fd), ret, err);
        sim_snapshot_done(&snap);
        return r;
}

static int restore_device(Persist *p, json_object *o, NamedFds *fds, ErrorMessage *err) {
        Manager *m = p->manager;
        _cleanup_(vfio_dev_freep) VfioDev *dev = NULL;
        _cleanup_(device_freep) Device *d = NULL;
        const char *address = get_string(o, "address"), *space_id = get_string(o, "space");
        json_object *j = NULL, *clients = NULL;
        int r;

        if (!address)
                return error_setf(err, -EBADMSG, "a device record lacks its address");
        if (json_object_object_get_ex(o, "sim", &j)) {
                if (strncmp(address, "sim:", 4) != 0)
                        return error_setf(err, -EBADMSG, "device %s: a sim record for a non-sim address", address);
                r = restore_sim(j, address + 4, fds, &dev, err);
        } else if (json_object_object_get_ex(o, "kernel", &j))
                r = kernel_device_restore(m->kernel, j, fds, &dev, err);
        else
                return error_setf(err, -EBADMSG, "device %s lacks its backend record", address);
        if (r < 0)
                return error_setf(err, r, "device %s: %m", address);

        r = device_new(m, TAKE_PTR(dev), &d);
        if (r < 0)
                return r;

        if (space_id) {
                AddressSpace *s = manager_find_space(m, space_id);
                if (!s)
                        log_error("Device %s was attached to address space %s, which did not come back.", d->id,
                                  space_id);
                else {
                        /* Re-registers the device with the space's bookkeeping; the kernel attachment
                         * itself survived with the descriptors. */
                        r = s->iommu->ops->attach_device(s->iommu, d->dev, err);
                        if (r < 0) {
                                log_error_errno(r, "Device %s: cannot rejoin address space %s: %s", d->id, space_id,
                                                err->text);
                                *err = (ErrorMessage) {};
                        } else
                                d->space = s;
                }
        }
        if (json_object_object_get_ex(o, "clients", &clients)) {
                size_t n = json_object_array_length(clients);
                d->clients = new0(char *, n + 1);
                if (!d->clients)
                        return -ENOMEM;
                for (size_t i = 0; i < n; i++) {
                        d->clients[i] = strdup(json_object_get_string(json_object_array_get_idx(clients, i)));
                        if (!d->clients[i])
                                return -ENOMEM;
                }
        }
        if (get_string(o, "last-transition")) {
                d->last_transition = strdup(get_string(o, "last-transition"));
                if (!d->last_transition)
                        return -ENOMEM;
        }
        if (d->dev->migratable)
                (void) device_refresh_state(d, NULL);

        r = manager_add_device(m, d);
        if (r < 0)
                return r;
        log_info("Restored %s (%s%s%s).", d->id, vfio_backend_to_string(d->dev->backend),
                 d->space ? ", address space " : "", d->space ? d->space->id : "");
        TAKE_PTR(d);
        return 0;
}

/* Turns what the service manager handed back into the descriptors of the objects the state
 * names (logical names, one duplicate per user of an entry), and records the entries. Version 1
 * stored each object under its own name. An entry the state lists that did not come back is
 * logged with its users here; each of them reports its own loss when it is restored. */
static int expand_received(Persist *p, json_object *root, const NamedFds *received, NamedFds *ret,
                           size_t *ret_missing) {
        _cleanup_(named_fds_done) NamedFds logical = {};
        json_object *fds = NULL;
        size_t missing = 0;
        int r;

        if (get_u64(root, "version") < 2) {
                for (size_t i = 0; i < received->n; i++) {
                        const NamedFd *f = &received->items[i];
                        char *users[] = { f->name, NULL };
                        int fd;

                        if (strncmp(f->name, STATE_NAME_PREFIX, strlen(STATE_NAME_PREFIX)) == 0)
                                continue;
                        fd = fcntl(f->fd, F_DUPFD_CLOEXEC, 3);
                        if (fd < 0)
                                return -errno;
                        r = named_fds_add(&logical, f->name, fd, true);
                        if (r < 0) {
                                safe_close(fd);
                                return r;
                        }
                        r = fd_table_add(&p->table, f->name, users, f->fd, true);
                        if (r < 0)
                                return r;
                }
                *ret = logical;
                logical = (NamedFds) {};
                *ret_missing = 0;
                return 0;
        }

        (void) json_object_object_get_ex(root, "fds", &fds);
        for (size_t i = 0; i < json_object_array_length(fds); i++) {
                json_object *e = json_object_array_get_idx(fds, i), *users = NULL;
                const char *name = get_string(e, "name");
                _cleanup_strv_free_ char **list = NULL;
                int fd;

                (void) json_object_object_get_ex(e, "users", &users);
                for (size_t k = 0; k < json_object_array_length(users); k++) {
                        r = strv_extend(&list, json_object_get_string(json_object_array_get_idx(users, k)));
                        if (r < 0)
                                return r;
                }
                fd = named_fds_get(received, name);
                if (fd < 0) {
                        _cleanup_free_ char *who = strv_join(list, ", ");
                        missing++;
                        log_error("The fd store did not hand back '%s', which the saved state lists for %s: %s cannot "
                                  "be restored.", name, who ? who : "its users", strv_length(list) == 1 ? "it" : "they");
                        continue;
                }
                for (char **u = list; *u; u++) {
                        int copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
                        if (copy < 0)
                                return -errno;
                        r = named_fds_add(&logical, *u, copy, true);
                        if (r < 0) {
                                safe_close(copy);
                                return r;
                        }
                }
                r = fd_table_add(&p->table, name, list, fd, true);
                if (r < 0)
                        return r;
        }
        *ret = logical;
        logical = (NamedFds) {};
        *ret_missing = missing;
        return 0;
}

/* A state that cannot be used is not a reason to lose what it describes. Exiting would not help:
 * under Restart=on-failure the restarts would fail alike until the start limit, and then the
 * service manager releases the store, resetting every device and dropping every mapping. So the
 * daemon serves with nothing restored, leaves every descriptor in the store (no FDSTOREREMOVE)
 * and saves nothing (a save would replace the refused state), until it is restarted with a state
 * it can read, e.g. by a version that can. */
static int refuse(Persist *p, const NamedFds *received, const char *state, const char *why) {
        size_t n = received->n;

        fd_table_done(&p->table);
        p->table_text = mfree(p->table_text);
        strv_free(p->states);
        p->states = NULL;
        p->refused = true;
        p->restoring = false;
        p->manager->fd_store = false; /* nothing new survives a restart now: say so in LiveUpdate */
        log_error("Refusing the saved state %s: %s. Starting with nothing restored; the fd store keeps all %zu "
                  "descriptor%s untouched and nothing is saved until vfiomigd starts with a state it can read "
                  "(see LIVE UPDATE in vfiomigd(8)).", state, why, n, n == 1 ? "" : "s");
        return 0;
}

bool persist_refused(const Persist *p) {
        return p && p->refused;
}

/* Drops entry i of the table from the store (the objects using it did not come back). */
static void drop_entry(Persist *p, size_t i) {
        if (p->table.entries[i].stored)
                store_remove(p->table.entries[i].name);
        fd_table_remove(&p->table, i);
        p->table_text = mfree(p->table_text);
}

int persist_restore(Persist *p, NamedFds *received, ErrorMessage *err) {
        _cleanup_(json_putp) json_object *root = NULL;
        _cleanup_(named_fds_done) NamedFds logical = {};
        _cleanup_free_ char *json = NULL;
        json_object *spaces = NULL, *devices = NULL, *kernel = NULL;
        const char *best_name = NULL;
        uint64_t best_seq = 0;
        size_t restored = 0, n_states = 0, json_size = 0, missing = 0, handed_back = 0;
        ErrorMessage why = {};
        int r;

        /* The newest complete state wins; older or torn ones are ignored. */
        for (size_t i = 0; i < received->n; i++) {
                _cleanup_free_ char *text = NULL;
                uint64_t seq = 0;
                size_t size = 0;

                if (strncmp(received->items[i].name, STATE_NAME_PREFIX, strlen(STATE_NAME_PREFIX)) != 0)
                        continue;
                n_states++;
                r = strv_extend(&p->states, received->items[i].name);
                if (r < 0)
                        return r;
                if (read_state(received->items[i].fd, &seq, &text, &size) < 0) {
                        log_warning("Ignoring the unreadable state %s.", received->items[i].name);
                        continue;
                }
                if (!json || seq > best_seq) {
                        free(json);
                        json = TAKE_PTR(text);
                        json_size = size;
                        best_seq = seq;
                        best_name = received->items[i].name;
                }
        }
        if (n_states > 0 && !json)
                return refuse(p, received, "in the fd store", "no saved state is intact (bad header, length or CRC)");

        p->restoring = true;
        if (json) {
                /* Everything is checked before anything is adopted: a refusal leaves the store whole. */
                r = persist_state_parse(json, json_size, &root, &why);
                if (r == -ENOMEM) {
                        p->restoring = false;
                        return error_setf(err, r, "out of memory while reading %s", best_name);
                }
                if (r < 0)
                        return refuse(p, received, best_name, why.text);
                p->seq = best_seq;
                p->manager->next_space_number = (unsigned) get_u64(root, "next-space");

                r = expand_received(p, root, received, &logical, &missing);
                if (r < 0) {
                        p->restoring = false;
                        return error_setf(err, r, "cannot take over the descriptors the fd store handed back: %m");
                }
                handed_back = p->table.n;
                if (json_object_object_get_ex(root, "kernel", &kernel)) {
                        /* It checks the whole record and every descriptor it names before it takes one. */
                        r = kernel_context_restore(p->manager->kernel, kernel, &logical, &why);
                        if (r == -ENOMEM) {
                                p->restoring = false;
                                return error_setf(err, r, "out of memory while adopting the kernel objects");
                        }
                        if (r < 0)
                                return refuse(p, received, best_name, why.text[0] ? why.text : strerror(-r));
                }
                if (json_object_object_get_ex(root, "spaces", &spaces))
                        for (size_t i = 0; i < json_object_array_length(spaces); i++) {
                                ErrorMessage one = {};
                                r = restore_space(p, json_object_array_get_idx(spaces, i), &logical, &one);
                                if (r < 0)
                                        log_error_errno(r, "Skipping an address space: %s", one.text);
                                else
                                        restored++;
                        }
                if (json_object_object_get_ex(root, "devices", &devices))
                        for (size_t i = 0; i < json_object_array_length(devices); i++) {
                                ErrorMessage one = {};
                                r = restore_device(p, json_object_array_get_idx(devices, i), &logical, &one);
                                if (r < 0)
                                        log_error_errno(r, "Skipping a device: %s", one.text);
                                else
                                        restored++;
                        }
        }

        /* Groups restored for devices that did not come back are released now, not at exit. */
        r = kernel_context_restore_finish(p->manager->kernel, NULL);
        if (r < 0)
                log_warning_errno(r, "Failed to release unclaimed IOMMU groups, ignoring: %m");

        /* Whatever no object took is unknown to this version of the daemon, or belonged to an object
         * that did not come back: let the store drop it. */
        for (size_t i = 0; i < received->n; i++) {
                const char *name = received->items[i].name;

                if (strncmp(name, STATE_NAME_PREFIX, strlen(STATE_NAME_PREFIX)) == 0 ||
                    fd_table_find(&p->table, name) >= 0)
                        continue;
                log_notice("Removing the unrecognised descriptor '%s' from the fd store.", name);
                store_remove(name);
        }
        for (size_t i = 0; i < logical.n; i++) {
                const char *user = logical.items[i].name;
                ssize_t at = fd_table_find_user(&p->table, user);

                log_notice("Dropping the descriptor of '%s': no object of this vfiomigd took it.", user);
                if (at < 0)
                        continue;
                strv_remove(p->table.entries[at].users, user);
                p->table_text = mfree(p->table_text);
                if (!p->table.entries[at].users || !p->table.entries[at].users[0])
                        drop_entry(p, (size_t) at);
        }
        p->restoring = false;
        if (json)
                log_info("The fd store handed back %zu of the %zu entries the saved state lists%s.",
                         handed_back, handed_back + missing,
                         missing > 0 ? "; the objects using the missing ones are lost (logged above)" : "");

        /* A failure to save is logged there and is no reason to exit: the store still holds the
         * state just restored, and exiting could only start a crash loop. */
        (void) persist_save(p);
        return (int) restored;
}
