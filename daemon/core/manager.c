/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <stdio.h>
#include <string.h>

#include "log.h"
#include "manager.h"
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
        if (m->options.max_devices == 0)
                m->options.max_devices = MANAGER_MAX_DEVICES_DEFAULT;

        r = kernel_context_new(&options->kernel, &m->kernel);
        if (r < 0)
                return r;
        r = kernel_features_probe(options->kernel.dev_root, options->kernel.sysfs_root, &m->features);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(m);
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        for (size_t i = 0; i < m->n_devices; i++)
                device_free(m->devices[i]);
        free(m->devices);
        kernel_context_unref(m->kernel);
        free(m);
        return NULL;
}

void manager_set_hooks(Manager *m, const ManagerHooks *hooks) {
        m->hooks = *hooks;
}

void manager_notify_device_changed(Manager *m, Device *d) {
        if (m && m->hooks.device_changed)
                m->hooks.device_changed(m, d, m->hooks.userdata);
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
                memmove(m->devices + i, m->devices + i + 1, (m->n_devices - i - 1) * sizeof *m->devices);
                m->n_devices--;
                log_info("Detached %s.", d->id);
                device_free(d);
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
        _cleanup_free_ GroupMember *members = NULL;
        bool moved = false;
        int r;

        members = new0(GroupMember, n);
        if (!members)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                members[i].dev = devices[i]->dev;
                members[i].target = target;
        }

        r = group_transition_run(members, n, force_without_p2p, err);

        /* Any member that took a step moved; a refusal is decided before the first step. */
        for (size_t i = 0; i < n; i++)
                moved |= members[i].report.n_steps > 1 || members[i].result == -ECANCELED;

        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *summary = NULL;
                int k = 0;

                if (moved && members[i].result == 0)
                        k = asprintf(&summary, "group move → %s: ok", mig_state_to_string(target));
                else if (moved)
                        k = asprintf(&summary, "group move → %s %s: %s", mig_state_to_string(target),
                                     members[i].result == -ECANCELED ? "rolled back" : "failed",
                                     err && err->text[0] ? err->text : strerror(-members[i].result));
                if (k < 0)
                        summary = NULL;
                device_note_outcome(devices[i], members[i].reached, members[i].data_fd, summary);
                members[i].data_fd = -EBADF; /* the device owns it now */
                results[i] = members[i].reached;
        }

        if (r >= 0)
                log_info("Moved %zu device%s to %s together.", n, n == 1 ? "" : "s", mig_state_to_string(target));
        *ret_outcome = r >= 0 ? GROUP_DONE : moved ? GROUP_FAILED : outcome_of_refusal(members, n, r);
        return r;
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
