/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The core manager with simulated devices: attach checks, lookups, caps, hooks, group moves. */

#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "manager.h"

static unsigned added, removed, changed;

static void on_added(Manager *m, Device *d, void *u) {
        added++;
}
static void on_removed(Manager *m, Device *d, void *u) {
        removed++;
}
static void on_changed(Manager *m, Device *d, void *u) {
        changed++;
}

static Manager *new_manager(bool allow_simulated, unsigned max) {
        ManagerOptions o = { .allow_simulated = allow_simulated, .max_devices = max };
        ManagerHooks h = { on_added, on_removed, on_changed, NULL };
        Manager *m = NULL;

        /* an empty dev root: no real VFIO device can be reached from a unit test */
        o.kernel.dev_root = "/nonexistent";
        cr_assert_eq(manager_new(&o, &m), 0);
        manager_set_hooks(m, &h);
        added = removed = changed = 0;
        return m;
}

static Device *attach(Manager *m, const char *address, const AttachOptions *o) {
        Device *d = NULL;
        ErrorMessage err = {};
        int r = manager_attach(m, address, o, &d, &err);
        cr_assert_eq(r, 0, "attach %s: %s", address, err.text);
        return d;
}

Test(manager, attach_checks) {
        Manager *m = new_manager(true, 2), *strict = new_manager(false, 0);
        ErrorMessage err = {};
        AttachOptions o;
        Device *existing = NULL;

        cr_assert_eq(strict->options.max_devices, MANAGER_MAX_DEVICES_DEFAULT);
        cr_assert_eq(manager_check_attach(strict, "sim:a", NULL, NULL, &err), -EINVAL);
        cr_assert(strstr(err.text, "--allow-simulated"), "%s", err.text);

        static const char *const bad[] = { "", "sim:", "sim:bad-name", "sim:a/b" };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
                cr_assert_eq(manager_check_attach(m, bad[i], NULL, NULL, NULL), -EINVAL, "%s", bad[i]);

        attach_options_init(&o);
        o.sim_options_given = true;
        err = (ErrorMessage) {};
        cr_assert_eq(manager_check_attach(m, "0000:3b:00.1", &o, NULL, &err), -EINVAL);
        cr_assert(strstr(err.text, "simulated devices (sim:NAME) only"), "%s", err.text);
        o.sim.precopy_size = o.sim.state_size + 1;
        o.sim.precopy_size_set = true;
        cr_assert_eq(manager_check_attach(m, "sim:a", &o, NULL, NULL), -EINVAL);

        Device *a = attach(m, "sim:a", NULL);
        cr_assert_str_eq(a->id, "sim_a");
        cr_assert_eq(added, 1);
        cr_assert_eq(manager_check_attach(m, "sim:a", NULL, &existing, NULL), -EEXIST);
        cr_assert_eq(existing, a);
        attach(m, "sim:b", NULL);
        err = (ErrorMessage) {};
        cr_assert_eq(manager_attach(m, "sim:c", NULL, NULL, &err), -E2BIG);
        cr_assert(strstr(err.text, "max-devices"), "%s", err.text);
        cr_assert_eq(m->n_devices, 2);

        /* kernel devices fail cleanly without VFIO */
        cr_assert_lt(manager_attach(strict, "0000:3b:00.1", NULL, NULL, NULL), 0);
        cr_assert_eq(strict->n_devices, 0);
        manager_free(m);
        manager_free(strict);
}

Test(manager, lookup_and_detach) {
        Manager *m = new_manager(true, 0);
        Device *a = attach(m, "sim:a", NULL);
        ErrorMessage err = {};
        TransitionReport rep;

        cr_assert_eq(manager_find_device(m, "sim_a"), a);
        cr_assert_eq(manager_find_device(m, "sim:a"), a);
        cr_assert_null(manager_find_device(m, "sim:b"));
        cr_assert_null(manager_find_device(m, ""));
        cr_assert_null(manager_find_device(m, "0000:3b:00.1"));

        cr_assert_eq(device_set_state(a, VFIO_DEVICE_STATE_STOP, TRANSITION_NO_RECOVER, &rep, &err), 0);
        cr_assert_eq(a->state, VFIO_DEVICE_STATE_STOP);
        cr_assert_gt(changed, 0);
        cr_assert_str_eq(a->last_transition, "running → stop: ok");
        cr_assert_eq(manager_detach(m, a, &err), -EBUSY);
        cr_assert(strstr(err.text, "is in stop"), "%s", err.text);
        cr_assert_eq(m->n_devices, 1);
        cr_assert_eq(device_set_state(a, VFIO_DEVICE_STATE_RUNNING, TRANSITION_NO_RECOVER, &rep, NULL), 0);
        cr_assert_eq(manager_detach(m, a, NULL), 0);
        cr_assert_eq(removed, 1);
        cr_assert_eq(m->n_devices, 0);
        manager_free(m);
}

Test(manager, sessions_follow_the_state) {
        Manager *m = new_manager(true, 0);
        Device *a = attach(m, "sim:a", NULL);
        TransitionReport rep;
        ErrorMessage err = {};
        uint64_t initial, dirty;

        cr_assert_eq(device_precopy_info(a, &initial, &dirty, &err), -ENOMSG);
        cr_assert_eq(device_set_state(a, VFIO_DEVICE_STATE_PRE_COPY, TRANSITION_NO_RECOVER, &rep, NULL), 0);
        cr_assert_geq(a->session_fd, 0);
        cr_assert_eq(device_precopy_info(a, &initial, &dirty, NULL), 0);
        cr_assert_gt(initial, 0);
        int fd = a->session_fd;
        cr_assert_eq(device_set_state(a, VFIO_DEVICE_STATE_STOP_COPY, TRANSITION_NO_RECOVER, &rep, NULL), 0);
        cr_assert_eq(a->session_fd, fd, "the pre-copy session continues into stop-copy");
        cr_assert_eq(device_set_state(a, VFIO_DEVICE_STATE_STOP, TRANSITION_NO_RECOVER, &rep, NULL), 0);
        cr_assert_eq(a->session_fd, -EBADF);
        cr_assert_eq(device_set_state(a, VFIO_DEVICE_STATE_RESUMING, TRANSITION_NO_RECOVER, &rep, NULL), 0);
        cr_assert_geq(a->session_fd, 0);
        cr_assert_eq(device_reset(a, NULL), 0);
        cr_assert_eq(a->session_fd, -EBADF, "reset ends the session");
        cr_assert_eq(a->state, VFIO_DEVICE_STATE_RUNNING);
        manager_free(m);
}

Test(manager, failed_transition_is_recorded) {
        Manager *m = new_manager(true, 0);
        AttachOptions o;
        TransitionReport rep;
        ErrorMessage err = {};

        attach_options_init(&o);
        o.sim_options_given = true;
        o.sim.fail_in_place = SIM_ARC_BIT(VFIO_DEVICE_STATE_STOP, VFIO_DEVICE_STATE_STOP_COPY);
        Device *a = attach(m, "sim:a", &o);
        cr_assert_eq(device_set_state(a, VFIO_DEVICE_STATE_STOP_COPY, VFIO_DEVICE_STATE_RUNNING, &rep, &err), -EIO);
        cr_assert_eq(a->state, VFIO_DEVICE_STATE_RUNNING);
        cr_assert(strstr(a->last_transition, "running → stop-copy failed: GET: running; SET stop-copy: "
                                             "Input/output error; GET: stop; SET (recover) running: running"),
                  "%s", a->last_transition);

        /* a refusal changes nothing, LastTransition included */
        cr_assert_eq(device_set_state(a, VFIO_DEVICE_STATE_ERROR, TRANSITION_NO_RECOVER, &rep, NULL), -EINVAL);
        cr_assert(strstr(a->last_transition, "failed"));
        manager_free(m);
}

Test(manager, group_moves_update_every_device) {
        Manager *m = new_manager(true, 0);
        Device *d[2] = { attach(m, "sim:a", NULL), attach(m, "sim:b", NULL) };
        int results[2];
        GroupOutcome outcome;

        cr_assert_eq(manager_set_states(m, d, 2, VFIO_DEVICE_STATE_STOP_COPY, false, results, &outcome, NULL), 0);
        cr_assert_eq(outcome, GROUP_DONE);
        for (int i = 0; i < 2; i++) {
                cr_assert_eq(results[i], VFIO_DEVICE_STATE_STOP_COPY);
                cr_assert_eq(d[i]->state, VFIO_DEVICE_STATE_STOP_COPY);
                cr_assert_geq(d[i]->session_fd, 0, "the stop-copy session fd is kept");
        }
        cr_assert_eq(manager_set_states(m, d, 2, VFIO_DEVICE_STATE_PRE_COPY, false, results, &outcome, NULL), -EINVAL);
        cr_assert_eq(outcome, GROUP_REFUSED_INVALID_TRANSITION);
        cr_assert_eq(d[0]->state, VFIO_DEVICE_STATE_STOP_COPY, "refused: nothing moved");

        AttachOptions o;
        attach_options_init(&o);
        o.sim_options_given = true;
        o.sim.migration_flags = VFIO_MIGRATION_STOP_COPY;
        Device *nop2p = attach(m, "sim:c", &o);
        Device *mixed[2] = { d[0], nop2p };
        cr_assert_eq(manager_set_states(m, mixed, 2, VFIO_DEVICE_STATE_RUNNING, false, results, &outcome, NULL),
                     -EOPNOTSUPP);
        cr_assert_eq(outcome, GROUP_REFUSED_NO_P2P);
        cr_assert_eq(manager_set_states(m, mixed, 2, VFIO_DEVICE_STATE_RUNNING, true, results, &outcome, NULL), 0);
        cr_assert_eq(d[0]->session_fd, -EBADF);
        manager_free(m);
}

/* A refused LoadState whose reset failed leaves the device in RESUMING with bytes it refused:
 * every move out of RESUMING would commit them, so nothing but a reset may follow. */
Test(manager, refused_data_blocks_state_changes_until_a_reset) {
        Manager *m = new_manager(true, 0);
        Device *d = attach(m, "sim:a", NULL), *other = attach(m, "sim:b", NULL);
        Device *both[2] = { other, d };
        TransitionReport rep;
        ErrorMessage err = {};
        int results[2];
        GroupOutcome outcome;

        cr_assert_eq(device_set_state(d, VFIO_DEVICE_STATE_RESUMING, -1, &rep, &err), 0, "%s", err.text);
        device_note_refused_load(d, true, VFIO_DEVICE_STATE_RESUMING);
        cr_assert(!d->holds_refused_data, "a reset cleared it");
        device_note_refused_load(d, false, VFIO_DEVICE_STATE_STOP);
        cr_assert(!d->holds_refused_data, "it left resuming");
        device_note_refused_load(d, false, VFIO_DEVICE_STATE_RESUMING);
        cr_assert(d->holds_refused_data);

        cr_assert_eq(device_set_state(d, VFIO_DEVICE_STATE_STOP, -1, &rep, &err), -EBADMSG);
        cr_assert(strstr(err.text, "holds migration data it refused"), "%s", err.text);
        cr_assert_eq(d->state, VFIO_DEVICE_STATE_RESUMING, "nothing moved");
        err = (ErrorMessage) {};
        cr_assert_eq(manager_set_states(m, both, 2, VFIO_DEVICE_STATE_RUNNING, false, results, &outcome, &err),
                     -EBADMSG);
        cr_assert_eq(outcome, GROUP_REFUSED_REFUSED_DATA);
        cr_assert_eq(other->state, VFIO_DEVICE_STATE_RUNNING, "the group refused before moving anyone");
        cr_assert_eq(d->state, VFIO_DEVICE_STATE_RESUMING);

        err = (ErrorMessage) {};
        cr_assert_eq(device_reset(d, &err), 0, "%s", err.text);
        cr_assert(!d->holds_refused_data);
        cr_assert_eq(device_set_state(d, VFIO_DEVICE_STATE_STOP, -1, &rep, &err), 0, "%s", err.text);

        /* A reset nobody told us about (a VMM through its fd) clears it as well. */
        cr_assert_eq(device_set_state(d, VFIO_DEVICE_STATE_RESUMING, -1, &rep, &err), 0, "%s", err.text);
        device_note_refused_load(d, false, VFIO_DEVICE_STATE_RESUMING);
        cr_assert_eq(vfio_dev_reset(d->dev), 0);
        cr_assert_eq(device_set_state(d, VFIO_DEVICE_STATE_STOP, -1, &rep, &err), 0, "%s", err.text);
        cr_assert(!d->holds_refused_data);
        manager_free(m);
}

Test(manager, device_ids) {
        static const struct {
                VfioBackend backend;
                const char *name, *id;
        } cases[] = {
                { VFIO_BACKEND_LEGACY, "0000:3b:00.1", "pci_0000_3b_00_1" },
                { VFIO_BACKEND_IOMMUFD, "0000:af:1f.7", "pci_0000_af_1f_7" },
                { VFIO_BACKEND_LEGACY, "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001", "mdev_83b8f4f2_509f_382f_3c1e_e6bfe0fa1001" },
                { VFIO_BACKEND_LEGACY, "fsl-mc.0:dpni.1", "dev_fsl_2dmc_2e0_3adpni_2e1" },
                { VFIO_BACKEND_SIM, "gpu0", "sim_gpu0" },
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
                VfioDev d = { .backend = cases[i].backend, .name = (char *) cases[i].name };
                _cleanup_free_ char *id = NULL;
                cr_assert_eq(device_id_from_vfio_dev(&d, &id), 0);
                cr_assert_str_eq(id, cases[i].id);
        }
}
