/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kernel-iommu.h"
#include "log.h"
#include "manager.h"
#include "migration.h"
#include "stream-engine.h"
#include "vfiomig1.h"

void attach_options_init(AttachOptions *o) {
        *o = (AttachOptions) {};
        sim_config_init(&o->sim);
}

int manager_new(const ManagerOptions *options, Manager **ret) {
        _cleanup_(manager_freep) Manager *m = NULL;
        int r;

        m = new0(Manager, 1);
        if (!m)
                return -ENOMEM;
        m->options = *options;
        m->options.tls = stream_tls_context_ref(options->tls);
        m->stream_socket_fd = -EBADF;
        m->next_migration_id = 1;
        if (m->options.max_devices == 0)
                m->options.max_devices = MANAGER_MAX_DEVICES_DEFAULT;
        if (m->options.max_spaces == 0)
                m->options.max_spaces = MANAGER_MAX_SPACES_DEFAULT;
        if (m->options.max_mappings == 0)
                m->options.max_mappings = MANAGER_MAX_MAPPINGS_DEFAULT;
        if (m->options.max_pinned_bytes == 0) {
                /* Pinning more than there is cannot succeed; let the cap say so clearly. */
                long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
                m->options.max_pinned_bytes = pages > 0 && page_size > 0 ? (uint64_t) pages * (uint64_t) page_size
                                                                        : UINT64_MAX;
        }

        r = kernel_context_new(&options->kernel, &m->kernel);
        if (r < 0)
                return r;
        r = kernel_features_probe(options->kernel.dev_root, options->kernel.sysfs_root, options->kernel.proc_root,
                                  &m->features);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(m);
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        /* Nothing is detached or unmapped here: this may be the exit before a restart, and the
         * successor adopts the kernel objects as they are. The descriptors close; what nobody
         * else (the fd store) holds, the kernel tears down. */
        m->hooks = (ManagerHooks) {};
        /* Jobs first: a running one gives its devices back (source: running again; destination:
         * reset) before they close. */
        for (size_t i = 0; i < m->n_migrations; i++)
                migration_free(m->migrations[i]);
        free(m->migrations);
        stream_listener_free(m->listener);
        safe_close(m->stream_socket_fd);
        sd_event_unref(m->event);
        for (size_t i = 0; i < m->n_devices; i++)
                device_free(m->devices[i]);
        free(m->devices);
        for (size_t i = 0; i < m->n_spaces; i++)
                address_space_free(m->spaces[i]);
        free(m->spaces);
        kernel_context_unref(m->kernel);
        stream_tls_context_unref(m->options.tls);
        free(m);
        return NULL;
}

void manager_set_hooks(Manager *m, const ManagerHooks *hooks) {
        m->hooks = *hooks;
}

void manager_set_event(Manager *m, sd_event *e) {
        sd_event_unref(m->event);
        m->event = sd_event_ref(e);
}

void manager_adopt_stream_socket(Manager *m, int fd) {
        safe_close(m->stream_socket_fd);
        m->stream_socket_fd = fd;
}

int manager_get_stream_listener(Manager *m, StreamListener **ret, ErrorMessage *err) {
        const char *address = m->options.stream_listen;
        int r;

        if (m->listener) {
                *ret = m->listener;
                return 0;
        }
        if (m->stream_socket_fd >= 0) {
                r = stream_listener_new_secure(m->stream_socket_fd, NULL, m->options.tls, m->options.allow_cleartext, &m->listener,
                                               err);
                if (r < 0)
                        return r;
                m->stream_socket_fd = -EBADF; /* the listener owns it now */
                log_info("Taking incoming migrations on the socket the service manager passed.");
        } else {
                char fallback[32];

                (void) snprintf(fallback, sizeof fallback, "[::]:%u", VFIOMIG_STREAM_PORT);
                r = stream_listener_new_secure(-EBADF, address ?: fallback, m->options.tls, m->options.allow_cleartext,
                                               &m->listener, err);
                if (r == -EAFNOSUPPORT && !address) {
                        /* A host without IPv6: the IPv4 wildcard. */
                        (void) snprintf(fallback, sizeof fallback, "0.0.0.0:%u", VFIOMIG_STREAM_PORT);
                        *err = (ErrorMessage) {};
                        r = stream_listener_new_secure(-EBADF, fallback, m->options.tls, m->options.allow_cleartext,
                                                       &m->listener, err);
                }
                if (r < 0)
                        return r;
                log_info("Taking incoming migrations on %s.", address ?: fallback);
        }
        *ret = m->listener;
        return 0;
}

void manager_notify_device_changed(Manager *m, Device *d) {
        if (m && m->hooks.device_changed)
                m->hooks.device_changed(m, d, m->hooks.userdata);
}

void manager_notify_space_changed(Manager *m, AddressSpace *s) {
        if (m && m->hooks.space_changed)
                m->hooks.space_changed(m, s, m->hooks.userdata);
        manager_notify_state_changed(m);
}

void manager_notify_state_changed(Manager *m) {
        if (m && m->hooks.state_changed)
                m->hooks.state_changed(m, m->hooks.userdata);
}

uint64_t manager_pinned_bytes(Manager *m) {
        uint64_t total = 0;
        for (size_t i = 0; i < m->n_spaces; i++)
                total += m->spaces[i]->pinned_bytes;
        return total;
}

bool manager_has_fd_store(Manager *m) {
        return m->fd_store;
}

static bool is_sim_address(const char *address) {
        return strncmp(address, VFIOMIG_SIM_ADDRESS_PREFIX, strlen(VFIOMIG_SIM_ADDRESS_PREFIX)) == 0;
}

Device *manager_find_device(Manager *m, const char *address_or_id) {
        KernelDeviceLocation loc = {};
        Device *found = NULL;

        if (!address_or_id || !*address_or_id)
                return NULL;
        for (size_t i = 0; i < m->n_devices; i++)
                if (streq(m->devices[i]->id, address_or_id) || streq(m->devices[i]->dev->address, address_or_id))
                        return m->devices[i];
        if (is_sim_address(address_or_id))
                return NULL;

        /* Another spelling of a kernel address: resolve it the way attaching would. */
        if (kernel_device_locate(m->kernel, address_or_id, &loc, NULL) < 0)
                return NULL;
        for (size_t i = 0; i < m->n_devices; i++)
                if (m->devices[i]->dev->backend != VFIO_BACKEND_SIM && streq(m->devices[i]->dev->name, loc.name)) {
                        found = m->devices[i];
                        break;
                }
        kernel_device_location_done(&loc);
        return found;
}

int manager_check_attach(Manager *m, const char *address, const AttachOptions *o, Device **ret_existing,
                         ErrorMessage *err) {
        Device *existing;

        if (!address || !*address)
                return error_setf(err, -EINVAL, "empty device address");
        if (is_sim_address(address)) {
                const char *name = address + strlen(VFIOMIG_SIM_ADDRESS_PREFIX);
                if (!m->options.allow_simulated)
                        return error_setf(err, -EINVAL,
                                          "simulated devices are not allowed: start vfiomigd with --allow-simulated "
                                          "or set \"allow-simulated\" in its configuration");
                if (!sim_name_valid(name))
                        return error_setf(err, -EINVAL,
                                          "invalid simulated device address '%s': use sim:NAME with 1 to %d of A-Z a-z 0-9 _",
                                          address, SIM_NAME_MAX);
                if (o && o->sim_options_given) {
                        int r = sim_config_validate(&o->sim, err);
                        if (r < 0)
                                return r;
                }
        } else if (o && o->sim_options_given)
                return error_setf(err, -EINVAL, "options apply to simulated devices (sim:NAME) only");

        existing = manager_find_device(m, address);
        if (existing) {
                if (ret_existing)
                        *ret_existing = existing;
                return error_setf(err, -EEXIST, "%s is already attached as %s", address, existing->id);
        }
        if (m->n_devices >= m->options.max_devices)
                return error_setf(err, -E2BIG, "already %zu devices attached, the configured maximum (max-devices)",
                                  m->n_devices);
        return 0;
}

int manager_attach(Manager *m, const char *address, const AttachOptions *o, Device **ret, ErrorMessage *err) {
        _cleanup_(vfio_dev_freep) VfioDev *dev = NULL;
        _cleanup_(device_freep) Device *d = NULL;
        Device **devices;
        int r;

        r = manager_check_attach(m, address, o, NULL, err);
        if (r < 0)
                return r;

        if (is_sim_address(address)) {
                SimConfig defaults;
                sim_config_init(&defaults);
                r = sim_device_new(address + strlen(VFIOMIG_SIM_ADDRESS_PREFIX),
                                   o && o->sim_options_given ? &o->sim : &defaults, &dev, err);
        } else
                r = kernel_device_open(m->kernel, address, &dev, err);
        if (r < 0)
                return error_setf(err, r, "Failed to open %s: %m", address);

        /* A kernel address spelled another way ("3b:00.1") can only be recognised once opened. */
        for (size_t i = 0; i < m->n_devices; i++)
                if (m->devices[i]->dev->backend == dev->backend && streq(m->devices[i]->dev->name, dev->name))
                        return error_setf(err, -EEXIST, "%s is already attached as %s", address, m->devices[i]->id);

        r = device_new(m, TAKE_PTR(dev), &d);
        if (r < 0)
                return r;

        devices = reallocarray(m->devices, m->n_devices + 1, sizeof *devices);
        if (!devices)
                return -ENOMEM;
        m->devices = devices;
        m->devices[m->n_devices++] = d;
        manager_notify_state_changed(m);

        if (d->dev->migratable)
                (void) device_refresh_state(d, NULL);
        log_info("Attached %s as %s (driver %s, backend %s, %s).", d->dev->address, d->id, d->dev->driver,
                 vfio_backend_to_string(d->dev->backend),
                 d->dev->migratable ? "migratable" : d->dev->migratable_reason ?: "not migratable");
        if (m->hooks.device_added)
                m->hooks.device_added(m, d, m->hooks.userdata);
        if (ret)
                *ret = d;
        TAKE_PTR(d);
        return 0;
}

int manager_check_detach(Manager *m, Device *d, ErrorMessage *err) {
        MigState s;

        if (device_check_idle(d, err) < 0)
                return -EBUSY;
        if (!d->dev->migratable)
                return 0;
        if (device_refresh_state(d, &s) < 0)
                return 0; /* an unreadable device is detachable: closing it is all we can do */
        if (s != VFIO_DEVICE_STATE_RUNNING)
                return error_setf(err, -EBUSY,
                                  "%s is in %s; detaching now would disrupt it: move it to running (or reset it) first",
                                  d->id, mig_state_to_string(s));
        return 0;
}

int manager_detach(Manager *m, Device *d, ErrorMessage *err) {
        int r;

        r = manager_check_detach(m, d, err);
        if (r < 0)
                return r;
        for (size_t i = 0; i < m->n_devices; i++) {
                if (m->devices[i] != d)
                        continue;
                if (m->hooks.device_removed)
                        m->hooks.device_removed(m, d, m->hooks.userdata);
                device_leave_space(d);
                manager_forget_migrated_device(m, d);
                memmove(m->devices + i, m->devices + i + 1, (m->n_devices - i - 1) * sizeof *m->devices);
                m->n_devices--;
                log_info("Detached %s.", d->id);
                device_free(d);
                manager_notify_state_changed(m);
                return 0;
        }
        return error_setf(err, -ENODEV, "no such device");
}

static GroupOutcome outcome_of_refusal(const GroupMember *members, size_t n, int r) {
        for (size_t i = 0; i < n; i++) {
                const GroupMember *g = &members[i];
                if (g->result == 0)
                        continue;
                if (!g->dev->migratable)
                        return GROUP_REFUSED_NOT_MIGRATABLE;
                if (g->report.verdict == MIG_VERDICT_CURRENT_ERROR)
                        return GROUP_REFUSED_DEVICE_IN_ERROR;
                if (g->report.verdict != MIG_VERDICT_OK)
                        return GROUP_REFUSED_INVALID_TRANSITION;
                if (g->result == -EOPNOTSUPP)
                        return GROUP_REFUSED_NO_P2P;
                return GROUP_DEVICE_UNREADABLE;
        }
        return r == -EINVAL ? GROUP_REFUSED_DUPLICATE : GROUP_FAILED;
}

int manager_set_states(Manager *m, Device **devices, size_t n, MigState target, bool force_without_p2p,
                       int *results, GroupOutcome *ret_outcome, ErrorMessage *err) {
        return manager_set_states_for(m, NULL, devices, n, target, force_without_p2p, results, ret_outcome, err);
}

int manager_group_move_begin(GroupMove *g, Manager *m, const Migration *owner, Device **devices, size_t n,
                             MigState target, bool force_without_p2p, GroupOutcome *ret_outcome, ErrorMessage *err) {
        _cleanup_free_ GroupMember *members = NULL;
        int r;

        *g = (GroupMove) {};
        for (size_t i = 0; i < n; i++) {
                r = device_check_state_change_for(devices[i], owner, err);
                if (r < 0) {
                        *ret_outcome = r == -EBADMSG ? GROUP_REFUSED_REFUSED_DATA : GROUP_REFUSED_BUSY;
                        return r;
                }
        }
        members = new0(GroupMember, n);
        if (!members)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                members[i].dev = devices[i]->dev;
                members[i].target = target;
                members[i].data_fd = -EBADF;
        }
        for (size_t i = 0; i < n; i++) {
                devices[i]->busy = "changing its state with others";
                devices[i]->moving = true;
        }
        *g = (GroupMove) {
                .manager = m,
                .devices = devices,
                .n = n,
                .target = target,
                .flags = (force_without_p2p ? GROUP_FORCE_WITHOUT_P2P : 0) |
                         (m->options.serial_transitions ? GROUP_SERIAL : 0),
                .members = TAKE_PTR(members),
        };
        return 0;
}

void manager_group_move_run(GroupMove *g) {
        g->result = group_transition_run(g->members, g->n, g->flags, &g->err);
}

int manager_group_move_end(GroupMove *g, int *results, GroupOutcome *ret_outcome, ErrorMessage *err) {
        _cleanup_free_ GroupMember *members = TAKE_PTR(g->members);
        Device **devices = g->devices;
        size_t n = g->n;
        bool moved = false;
        int r = g->result;

        for (size_t i = 0; i < n; i++) {
                devices[i]->busy = NULL;
                devices[i]->moving = false;
        }
        if (err && g->err.text[0] && !err->text[0])
                *err = g->err;

        /* Any member that took a step moved; a refusal is decided before the first step. */
        for (size_t i = 0; i < n; i++)
                moved |= members[i].report.n_steps > 1 || members[i].result == -ECANCELED;

        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *summary = NULL;
                int k = 0;

                if (moved && members[i].result == 0)
                        k = asprintf(&summary, "group move → %s: ok", mig_state_to_string(g->target));
                else if (moved)
                        k = asprintf(&summary, "group move → %s %s: %s", mig_state_to_string(g->target),
                                     members[i].result == -ECANCELED ? "rolled back" : "failed",
                                     g->err.text[0] ? g->err.text : strerror(-members[i].result));
                if (k < 0)
                        summary = NULL;
                device_note_outcome(devices[i], members[i].reached, members[i].data_fd, summary);
                members[i].data_fd = -EBADF; /* the device owns it now */
                results[i] = members[i].reached;
        }

        if (r >= 0)
                log_info("Moved %zu device%s to %s together.", n, n == 1 ? "" : "s", mig_state_to_string(g->target));
        *ret_outcome = r >= 0 ? GROUP_DONE : moved ? GROUP_FAILED : outcome_of_refusal(members, n, r);
        return r;
}

void manager_group_move_abort(GroupMove *g) {
        for (size_t i = 0; i < g->n; i++) {
                g->devices[i]->busy = NULL;
                g->devices[i]->moving = false;
        }
        g->members = mfree(g->members);
}

int manager_set_states_for(Manager *m, const Migration *owner, Device **devices, size_t n, MigState target,
                           bool force_without_p2p, int *results, GroupOutcome *ret_outcome, ErrorMessage *err) {
        GroupMove g;
        int r;

        r = manager_group_move_begin(&g, m, owner, devices, n, target, force_without_p2p, ret_outcome, err);
        if (r < 0)
                return r;
        manager_group_move_run(&g);
        return manager_group_move_end(&g, results, ret_outcome, err);
}

int manager_status_text(Manager *m, char **ret) {
        size_t sim = 0;

        for (size_t i = 0; i < m->n_devices; i++)
                sim += m->devices[i]->dev->backend == VFIO_BACKEND_SIM;
        if (asprintf(ret, "%zu device%s attached (%zu simulated)", m->n_devices, m->n_devices == 1 ? "" : "s",
                     sim) < 0)
                return -ENOMEM;
        return 0;
}

int manager_add_device(Manager *m, Device *d) {
        Device **devices = reallocarray(m->devices, m->n_devices + 1, sizeof *devices);
        if (!devices)
                return -ENOMEM;
        m->devices = devices;
        m->devices[m->n_devices++] = d;
        d->manager = m;
        return 0;
}

int manager_add_space(Manager *m, AddressSpace *s) {
        AddressSpace **spaces = reallocarray(m->spaces, m->n_spaces + 1, sizeof *spaces);
        unsigned number;

        if (!spaces)
                return -ENOMEM;
        m->spaces = spaces;
        m->spaces[m->n_spaces++] = s;
        s->manager = m;
        if (sscanf(s->id, "s%u", &number) == 1 && number >= m->next_space_number)
                m->next_space_number = number + 1;
        return 0;
}

void space_options_init(SpaceOptions *o) {
        *o = (SpaceOptions) { .backend = -1, .sim_style = SIM_MAP_BY_FILE };
}

/* What "the host offers" means when the caller does not choose: iommufd with VFIO cdevs, else
 * the legacy container, else (when allowed) the simulation. */
static int choose_backend(Manager *m, const SpaceOptions *o, IommuBackend *ret, ErrorMessage *err) {
        if (o->backend >= 0)
                *ret = o->backend;
        else if (m->features.iommufd && m->features.vfio_cdev && !m->options.kernel.prefer_legacy)
                *ret = IOMMU_BACKEND_IOMMUFD;
        else if (m->features.vfio_container)
                *ret = IOMMU_BACKEND_LEGACY;
        else if (m->options.allow_simulated)
                *ret = IOMMU_BACKEND_SIM;
        else
                return error_setf(err, -EOPNOTSUPP,
                                  "this host offers neither iommufd nor a VFIO container (is the vfio module loaded?)");
        return 0;
}

int manager_check_create_space(Manager *m, const SpaceOptions *o, ErrorMessage *err) {
        IommuBackend b = _IOMMU_BACKEND_INVALID;
        int r;

        r = choose_backend(m, o, &b, err);
        if (r < 0)
                return r;
        if (b == IOMMU_BACKEND_IOMMUFD && !m->features.iommufd)
                return error_setf(err, -EOPNOTSUPP, "this host offers no iommufd (/dev/iommu)");
        if (b == IOMMU_BACKEND_LEGACY && !m->features.vfio_container)
                return error_setf(err, -EOPNOTSUPP, "this host offers no VFIO container (/dev/vfio/vfio)");
        if (b == IOMMU_BACKEND_SIM && !m->options.allow_simulated)
                return error_setf(err, -EINVAL, "simulated address spaces are not allowed: start vfiomigd with "
                                  "--allow-simulated or set \"allow-simulated\" in its configuration");
        if (o->sim_style_given && b != IOMMU_BACKEND_SIM)
                return error_setf(err, -EINVAL, "sim-mapping applies to simulated address spaces only");
        if (m->n_spaces >= m->options.max_spaces)
                return error_setf(err, -E2BIG, "already %zu address spaces, the configured maximum (max-spaces)",
                                  m->n_spaces);
        return 0;
}

int manager_create_space(Manager *m, const SpaceOptions *o, AddressSpace **ret, ErrorMessage *err) {
        _cleanup_(iommu_space_freep) IommuSpace *iommu = NULL;
        AddressSpace *s = NULL;
        char id[16];
        IommuBackend b = _IOMMU_BACKEND_INVALID;
        int r;

        r = manager_check_create_space(m, o, err);
        if (r < 0)
                return r;
        (void) choose_backend(m, o, &b, NULL);

        switch (b) {
        case IOMMU_BACKEND_IOMMUFD:
                r = kernel_iommufd_space_new(m->kernel, &iommu, err);
                break;
        case IOMMU_BACKEND_LEGACY:
                r = kernel_legacy_space_new(m->kernel, &iommu, err);
                break;
        case IOMMU_BACKEND_SIM:
                r = sim_iommu_new(o->sim_style, &iommu);
                break;
        default:
                r = -EINVAL;
        }
        if (r < 0)
                return error_setf(err, r, "Cannot create a %s address space: %m", iommu_backend_to_string(b));

        (void) snprintf(id, sizeof id, "s%u", m->next_space_number);
        r = address_space_new(m, id, iommu, &s);
        if (r < 0)
                return r;
        TAKE_PTR(iommu);
        r = manager_add_space(m, s);
        if (r < 0) {
                address_space_free(s);
                return r;
        }
        log_info("Created %s address space %s.", iommu_backend_to_string(b), s->id);
        if (m->hooks.space_added)
                m->hooks.space_added(m, s, m->hooks.userdata);
        manager_notify_state_changed(m);
        if (ret)
                *ret = s;
        return 0;
}

int manager_check_destroy_space(Manager *m, AddressSpace *s, ErrorMessage *err) {
        size_t devices = address_space_device_count(s);

        if (devices > 0) {
                const char *first = NULL;
                for (size_t i = 0; i < m->n_devices && !first; i++)
                        if (m->devices[i]->space == s)
                                first = m->devices[i]->id;
                return error_setf(err, -EBUSY, "%s%s %s attached to %s: detach %s from vfiomigd first", first,
                                  devices > 1 ? " and other devices" : "", devices > 1 ? "are" : "is", s->id,
                                  devices > 1 ? "them" : "it");
        }
        if (s->n_mappings > 0)
                return error_setf(err, -EBUSY, "%s still has %zu mapping%s: unmap them first", s->id, s->n_mappings,
                                  s->n_mappings == 1 ? "" : "s");
        return 0;
}

int manager_destroy_space(Manager *m, AddressSpace *s, ErrorMessage *err) {
        int r;

        r = manager_check_destroy_space(m, s, err);
        if (r < 0)
                return r;
        for (size_t i = 0; i < m->n_spaces; i++) {
                if (m->spaces[i] != s)
                        continue;
                if (m->hooks.space_removed)
                        m->hooks.space_removed(m, s, m->hooks.userdata);
                memmove(m->spaces + i, m->spaces + i + 1, (m->n_spaces - i - 1) * sizeof *m->spaces);
                m->n_spaces--;
                log_info("Destroyed address space %s.", s->id);
                address_space_free(s);
                manager_notify_state_changed(m);
                return 0;
        }
        return error_setf(err, -ENOENT, "no such address space");
}

AddressSpace *manager_find_space(Manager *m, const char *id) {
        for (size_t i = 0; i < m->n_spaces; i++)
                if (streq(m->spaces[i]->id, id))
                        return m->spaces[i];
        return NULL;
}
