/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Validation, recovery and P2P-safe group ordering, driven against a scripted backend that
 * walks the kernel's arcs one at a time, can be told to fail anywhere, and checks after every
 * arc that no device able to initiate P2P DMA runs while another device is stopped.
 */

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "macro.h"

#include "mig-state.h"
#include "transition.h"

#define ERR VFIO_DEVICE_STATE_ERROR
#define STOP VFIO_DEVICE_STATE_STOP
#define RUN VFIO_DEVICE_STATE_RUNNING
#define SC VFIO_DEVICE_STATE_STOP_COPY
#define RES VFIO_DEVICE_STATE_RESUMING
#define RP2P VFIO_DEVICE_STATE_RUNNING_P2P
#define PC VFIO_DEVICE_STATE_PRE_COPY
#define PCP2P VFIO_DEVICE_STATE_PRE_COPY_P2P
#define ALL (VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY)

typedef struct FakeDev {
        VfioDev base;
        MigState state;
        /* failure script: the arc into fail_at fails, leaving the device in fail_leaves (-1: stays) */
        int fail_at;
        int fail_leaves;
        int fail_count;    /* how many times it still fails; -1 forever */
        bool get_fails_after_failed_set;
        bool set_failed;
        bool reset_fails;
        unsigned sets, resets, gets;
} FakeDev;

#define MAX_FAKES 4
static FakeDev *fakes[MAX_FAKES];
static size_t n_fakes;
static unsigned hazards;
static char trace[4096];
/* Group moves run a phase's arcs in threads: the fakes' state, the trace and the hazard check
 * are shared, so every fake operation holds this lock. */
static pthread_mutex_t fake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fake_cond = PTHREAD_COND_INITIALIZER;
/* When set to n: the first SET of each of n devices waits until all n are inside a SET at once,
 * which only a parallel phase achieves (a serial one leaves the first waiting for nobody). */
static unsigned rendezvous_left;
static bool rendezvous_missed;

static void rendezvous(void) {
        struct timespec deadline;

        if (rendezvous_left == 0)
                return;
        rendezvous_left--;
        pthread_cond_broadcast(&fake_cond);
        clock_gettime(CLOCK_REALTIME, &deadline);
        deadline.tv_sec += 30; /* only a serial phase ever waits this long */
        while (rendezvous_left > 0)
                if (pthread_cond_timedwait(&fake_cond, &fake_lock, &deadline) != 0) {
                        rendezvous_missed = true;
                        rendezvous_left = 0;
                }
}

static void check_p2p_safety(void) {
        bool any_stopped = false, any_free = false;
        for (size_t i = 0; i < n_fakes; i++) {
                MigState s = fakes[i]->state;
                any_stopped |= !mig_state_is_running(s);
                any_free |= mig_state_is_p2p_active(s) && (fakes[i]->base.migration_flags & VFIO_MIGRATION_P2P);
        }
        if (any_stopped && any_free)
                hazards++;
}

static int fake_get_locked(VfioDev *d, MigState *ret) {
        FakeDev *f = (FakeDev *) d;
        f->gets++;
        if (f->get_fails_after_failed_set && f->set_failed)
                return -EIO;
        *ret = f->state;
        return 0;
}

static int fake_set_locked(VfioDev *d, MigState target, int *ret_fd) {
        FakeDev *f = (FakeDev *) d;
        f->sets++;
        rendezvous();
        while (f->state != target) {
                MigState next;
                if (mig_next_state(d->migration_flags, f->state, target, &next) < 0)
                        return -EINVAL;
                if ((int) next == f->fail_at && f->fail_count != 0) {
                        if (f->fail_count > 0)
                                f->fail_count--;
                        if (f->fail_leaves >= 0)
                                f->state = f->fail_leaves;
                        f->set_failed = true;
                        check_p2p_safety();
                        return -EIO;
                }
                snprintf(trace + strlen(trace), sizeof trace - strlen(trace), "%s:%s ", d->name,
                         mig_state_to_string(next));
                bool opens = mig_arc_opens_session(f->state, next);
                f->state = next;
                check_p2p_safety();
                if (opens && next == target) {
                        *ret_fd = open("/dev/null", O_RDONLY | O_CLOEXEC); /* any real fd will do */
                        return 0;
                }
        }
        *ret_fd = -EBADF;
        return 0;
}

static int fake_reset_locked(VfioDev *d) {
        FakeDev *f = (FakeDev *) d;
        f->resets++;
        if (f->reset_fails)
                return -EIO;
        f->state = RUN;
        check_p2p_safety();
        return 0;
}

static int fake_get(VfioDev *d, MigState *ret) {
        pthread_mutex_lock(&fake_lock);
        int r = fake_get_locked(d, ret);
        pthread_mutex_unlock(&fake_lock);
        return r;
}

static int fake_set(VfioDev *d, MigState target, int *ret_fd) {
        pthread_mutex_lock(&fake_lock);
        int r = fake_set_locked(d, target, ret_fd);
        pthread_mutex_unlock(&fake_lock);
        return r;
}

static int fake_reset(VfioDev *d) {
        pthread_mutex_lock(&fake_lock);
        int r = fake_reset_locked(d);
        pthread_mutex_unlock(&fake_lock);
        return r;
}

static int fake_unused_info(VfioDev *d, int fd, uint64_t *a, uint64_t *b, uint32_t *f) {
        return -ENOTTY;
}
static int fake_unused_size(VfioDev *d, uint64_t *a) {
        return -ENOTTY;
}
static ssize_t fake_unused_read(VfioDev *d, int fd, void *b, size_t n) {
        return -ENOTTY;
}
static ssize_t fake_unused_write(VfioDev *d, int fd, const void *b, size_t n) {
        return -ENOTTY;
}
static void fake_destroy(VfioDev *d) {
        vfio_dev_done_common(d);
        free(d);
}

static const VfioDevOps fake_ops = {
        .get_state = fake_get,
        .set_state = fake_set,
        .precopy_info = fake_unused_info,
        .stop_copy_size = fake_unused_size,
        .data_read = fake_unused_read,
        .data_write = fake_unused_write,
        .reset = fake_reset,
        .destroy = fake_destroy,
};

static FakeDev *fake_new(const char *name, uint32_t flags, MigState state) {
        FakeDev *f = calloc(1, sizeof *f);
        cr_assert_not_null(f);
        cr_assert_eq(vfio_dev_init_common(&f->base, &fake_ops, VFIO_BACKEND_SIM, name, name, "fake", NULL), 0);
        f->base.migratable = true;
        f->base.migration_flags = flags;
        f->state = state;
        f->fail_at = -1;
        f->fail_leaves = -1;
        f->fail_count = -1;
        cr_assert_lt(n_fakes, MAX_FAKES);
        fakes[n_fakes++] = f;
        return f;
}

static void reset_fakes(void) {
        for (size_t i = 0; i < n_fakes; i++)
                vfio_dev_free(&fakes[i]->base);
        n_fakes = 0;
        hazards = 0;
        trace[0] = 0;
        rendezvous_left = 0;
        rendezvous_missed = false;
}

/* The position (in arcs) of the first, or last, arc of any device into state. */
static int arc_position(const char *trace_text, const char *state, bool last) {
        char copy[sizeof trace], *save = NULL;
        int i = 0, found = -1;

        snprintf(copy, sizeof copy, "%s", trace_text);
        for (char *tok = strtok_r(copy, " ", &save); tok; tok = strtok_r(NULL, " ", &save), i++) {
                const char *colon = strchr(tok, ':');
                if (colon && strcmp(colon + 1, state) == 0) {
                        found = i;
                        if (!last)
                                break;
                }
        }
        return found;
}

/* The trace's arcs of device dev, in order, e.g. "stop stop-copy". */
static const char *arcs_of(const char *trace_text, const char *dev) {
        static char out[1024];
        char copy[sizeof trace], *save = NULL;
        size_t prefix = strlen(dev);

        out[0] = 0;
        snprintf(copy, sizeof copy, "%s", trace_text);
        for (char *tok = strtok_r(copy, " ", &save); tok; tok = strtok_r(NULL, " ", &save))
                if (strncmp(tok, dev, prefix) == 0 && tok[prefix] == ':')
                        snprintf(out + strlen(out), sizeof out - strlen(out), "%s%s", out[0] ? " " : "", tok + prefix + 1);
        return out;
}

TestSuite(transition, .fini = reset_fakes);

Test(transition, refuses_before_reaching_the_device) {
        FakeDev *f = fake_new("a", ALL, SC);
        TransitionReport rep;
        ErrorMessage err = {};
        int fd = 1234;

        cr_assert_eq(transition_run(&f->base, PC, TRANSITION_NO_RECOVER, &rep, &fd, &err), -EINVAL);
        cr_assert_eq(rep.verdict, MIG_VERDICT_FORBIDDEN_ARC);
        cr_assert_eq(f->sets, 0, "the forbidden arc never reaches the device");
        cr_assert_eq(fd, 1234);
        cr_assert(strstr(err.text, "stop-copy cannot go back to pre-copy"), "%s", err.text);

        err = (ErrorMessage) {};
        cr_assert_eq(transition_run(&f->base, ERR, TRANSITION_NO_RECOVER, &rep, &fd, &err), -EINVAL);
        cr_assert_eq(rep.verdict, MIG_VERDICT_TARGET_ERROR);

        FakeDev *nop2p = fake_new("b", VFIO_MIGRATION_STOP_COPY, RUN);
        cr_assert_eq(transition_run(&nop2p->base, RP2P, TRANSITION_NO_RECOVER, &rep, &fd, NULL), -EINVAL);
        cr_assert_eq(rep.verdict, MIG_VERDICT_TARGET_UNSUPPORTED);
        cr_assert_eq(transition_run(&nop2p->base, RUN, RP2P, &rep, &fd, NULL), -EINVAL,
                     "a recover state the device lacks is an invalid argument");
        cr_assert_eq(nop2p->sets, 0);

        nop2p->base.migratable = false;
        cr_assert_eq(transition_run(&nop2p->base, STOP, TRANSITION_NO_RECOVER, &rep, &fd, NULL), -EOPNOTSUPP);
        cr_assert_eq(nop2p->gets, 1, "a non-migratable device is not even asked for its state");
        cr_assert_eq(nop2p->sets, 0);
}

Test(transition, device_in_error_must_be_reset) {
        FakeDev *f = fake_new("a", ALL, ERR);
        TransitionReport rep;
        int fd;

        cr_assert_eq(transition_run(&f->base, RUN, TRANSITION_NO_RECOVER, &rep, &fd, NULL), -EINVAL);
        cr_assert_eq(rep.verdict, MIG_VERDICT_CURRENT_ERROR);
        cr_assert_eq(f->sets + f->resets, 0);
}

Test(transition, success_returns_the_session_fd) {
        FakeDev *f = fake_new("a", ALL, RUN);
        TransitionReport rep;
        int fd = -1;

        cr_assert_eq(transition_run(&f->base, SC, TRANSITION_NO_RECOVER, &rep, &fd, NULL), 0);
        cr_assert_geq(fd, 0);
        close(fd);
        cr_assert(rep.reached);
        cr_assert_eq(rep.initial, RUN);
        cr_assert_eq(rep.final, SC);
        cr_assert_eq(rep.n_steps, 2); /* GET, SET */
        cr_assert_eq(f->sets, 1, "one SET: the device walks the path itself");

        cr_assert_eq(transition_run(&f->base, SC, TRANSITION_NO_RECOVER, &rep, &fd, NULL), 0);
        cr_assert_eq(fd, -EBADF);
        cr_assert_eq(f->sets, 1, "already there: nothing sent");
}

Test(transition, failure_then_recover_state) {
        FakeDev *f = fake_new("a", ALL, RUN);
        TransitionReport rep;
        ErrorMessage err = {};
        _cleanup_free_ char *text = NULL;
        int fd = 77;

        /* RUN→RP2P→STOP→SC fails on the last arc and stays in STOP; recover to RUNNING works. */
        f->fail_at = SC;
        cr_assert_eq(transition_run(&f->base, SC, RUN, &rep, &fd, &err), -EIO);
        cr_assert_eq(fd, 77);
        cr_assert(rep.recovered);
        cr_assert(!rep.reset);
        cr_assert_eq(rep.final, RUN);
        cr_assert_eq(f->state, RUN);
        cr_assert_eq(rep.n_steps, 4); /* GET, SET sc (fail), GET (stop), SET running (recover) */
        cr_assert_eq(rep.steps[1].action, TRANSITION_SET);
        cr_assert_eq(rep.steps[1].result, -EIO);
        cr_assert_eq(rep.steps[2].observed, STOP);
        cr_assert_eq(rep.steps[3].action, TRANSITION_RECOVER);
        cr_assert_eq(transition_report_format(&rep, &text), 0);
        cr_assert_str_eq(text, "GET: running; SET stop-copy: Input/output error; GET: stop; "
                               "SET (recover) running: running; device now running");
        cr_assert(strstr(err.text, "Failed to move a from running to stop-copy"), "%s", err.text);
}

Test(transition, failure_without_recover_state_leaves_a_usable_device_alone) {
        FakeDev *f = fake_new("a", ALL, RUN);
        TransitionReport rep;
        int fd;

        f->fail_at = SC;
        cr_assert_eq(transition_run(&f->base, SC, TRANSITION_NO_RECOVER, &rep, &fd, NULL), -EIO);
        cr_assert_eq(rep.final, STOP);
        cr_assert(!rep.reset && !rep.recovered);
        cr_assert_eq(f->resets, 0);
}

Test(transition, error_state_leads_to_reset_even_with_a_recover_state) {
        FakeDev *f = fake_new("a", ALL, RUN);
        TransitionReport rep;
        int fd;

        f->fail_at = SC;
        f->fail_leaves = ERR;
        cr_assert_eq(transition_run(&f->base, SC, RUN, &rep, &fd, NULL), -EIO);
        cr_assert(rep.reset);
        cr_assert_eq(f->resets, 1);
        cr_assert_eq(rep.final, RUN);
        cr_assert_eq(rep.steps[rep.n_steps - 2].action, TRANSITION_RESET);
        cr_assert_eq(rep.steps[rep.n_steps - 1].action, TRANSITION_GET, "the state is read back after the reset");
}

Test(transition, failing_recover_falls_back_to_reset) {
        FakeDev *f = fake_new("a", ALL, STOP);
        TransitionReport rep;
        int fd;

        /* STOP→RES fails and stays in STOP... then the recover to RUNNING fails too (the arc into
         * RUNNING_P2P fails every time): reset. */
        f->fail_at = RES;
        cr_assert_eq(transition_run(&f->base, RES, RUN, &rep, &fd, NULL), -EIO);
        cr_assert(rep.recovered, "STOP→RUNNING works, the recover succeeds");
        f->state = STOP;
        f->fail_at = RP2P;
        cr_assert_eq(transition_run(&f->base, RUN, STOP, &rep, &fd, NULL), -EIO);
        cr_assert(rep.recovered, "already in the recover state");
        cr_assert_eq(f->resets, 0);

        f->state = STOP;
        f->fail_at = RP2P;
        cr_assert_eq(transition_run(&f->base, RUN, PC, &rep, &fd, NULL), -EIO);
        cr_assert(!rep.recovered);
        cr_assert(rep.reset, "recover to pre-copy needs RUNNING_P2P, which keeps failing: reset");
        cr_assert_eq(f->state, RUN);
}

Test(transition, unreadable_state_after_failure_leads_to_reset) {
        FakeDev *f = fake_new("a", ALL, RUN);
        TransitionReport rep;
        int fd;

        f->fail_at = STOP;
        f->get_fails_after_failed_set = true;
        cr_assert_eq(transition_run(&f->base, STOP, RUN, &rep, &fd, NULL), -EIO);
        cr_assert(rep.reset, "the daemon cannot know where the device is: reset");
        cr_assert_eq(f->resets, 1);
        cr_assert_eq(rep.final, -1, "and it says it does not know what the reset achieved");
        cr_assert_eq(rep.steps[2].action, TRANSITION_GET);
        cr_assert_eq(rep.steps[2].result, -EIO);
}

Test(transition, failing_reset_is_reported) {
        FakeDev *f = fake_new("a", ALL, RUN);
        TransitionReport rep;
        _cleanup_free_ char *text = NULL;
        int fd;

        f->fail_at = STOP;
        f->fail_leaves = ERR;
        f->reset_fails = true;
        cr_assert_eq(transition_run(&f->base, STOP, RUN, &rep, &fd, NULL), -EIO);
        cr_assert(rep.reset);
        cr_assert_eq(rep.final, ERR);
        cr_assert_eq(transition_report_format(&rep, &text), 0);
        cr_assert(strstr(text, "RESET: Input/output error"), "%s", text);
        cr_assert(strstr(text, "device now error"), "%s", text);
}

static void run_group(MigState *init, size_t n, uint32_t *flags, MigState target, bool force, int expect) {
        GroupMember m[MAX_FAKES] = {};
        char name[8];

        for (size_t i = 0; i < n; i++) {
                snprintf(name, sizeof name, "d%zu", i);
                m[i].dev = &fake_new(name, flags[i], init[i])->base;
                m[i].target = target;
        }
        int r = group_transition_run(m, n, force ? GROUP_FORCE_WITHOUT_P2P : 0, NULL);
        cr_assert_eq(r, expect, "group to %s: %d (trace: %s)", mig_state_to_string(target), r, trace);
        if (r == 0)
                for (size_t i = 0; i < n; i++) {
                        cr_assert_eq(fakes[i]->state, target);
                        cr_assert_eq(m[i].reached, (int) target);
                }
        group_members_close_fds(m, n);
}

static bool initially_hazardous(const MigState *init, size_t n) {
        bool any_stopped = false, any_free = false;
        for (size_t i = 0; i < n; i++) {
                any_stopped |= !mig_state_is_running(init[i]);
                any_free |= mig_state_is_p2p_active(init[i]);
        }
        return any_stopped && any_free;
}

Test(transition, group_moves_are_p2p_safe_from_every_start_to_every_target) {
        uint32_t flags[3] = { ALL, ALL, ALL };
        unsigned runs = 0, safe_runs = 0;

        /* Every combination of starting states for three devices, and every target. */
        for (int a = 1; a < 8; a++)
                for (int b = 1; b < 8; b++)
                        for (int c = 1; c < 8; c++)
                                for (int t = 1; t < 8; t++) {
                                        MigState init[3] = { a, b, c }, path[MIG_PATH_MAX];
                                        bool valid = true;
                                        for (int i = 0; i < 3; i++)
                                                valid &= mig_path(ALL, init[i], t, path) >= 0;
                                        run_group(init, 3, flags, t, false, valid ? 0 : -EINVAL);
                                        if (!valid)
                                                for (size_t i = 0; i < 3; i++)
                                                        cr_assert_eq(fakes[i]->sets, 0, "refused groups touch nothing");
                                        /* A start that is already unsafe (a stopped device beside a free
                                         * one) cannot be undone before the first quiescing arc. */
                                        if (!initially_hazardous(init, 3)) {
                                                cr_assert_eq(hazards, 0, "%s/%s/%s → %s: unsafe order: %s",
                                                             mig_state_to_string(a), mig_state_to_string(b),
                                                             mig_state_to_string(c), mig_state_to_string(t), trace);
                                                safe_runs++;
                                        }
                                        reset_fakes();
                                        runs++;
                                }
        cr_assert_eq(runs, 7 * 7 * 7 * 7);
        cr_assert_gt(safe_runs, 1000);
}

Test(transition, group_order_for_a_stop_and_a_start) {
        uint32_t flags[2] = { ALL, ALL };
        MigState running[2] = { RUN, RUN }, stopped[2] = { STOP, STOP };

        /* Within a phase the devices move in parallel, so only each device's own order and the
         * phase boundary are fixed: both quiesce before either stops, both reach RUNNING_P2P
         * before either runs freely. */
        run_group(running, 2, flags, SC, false, 0);
        cr_assert_str_eq(arcs_of(trace, "d0"), "running-p2p stop stop-copy", "%s", trace);
        cr_assert_str_eq(arcs_of(trace, "d1"), "running-p2p stop stop-copy", "%s", trace);
        cr_assert_lt(arc_position(trace, "running-p2p", true), arc_position(trace, "stop", false),
                     "a device stopped before both were quiesced: %s", trace);
        cr_assert_eq(hazards, 0, "%s", trace);
        reset_fakes();
        run_group(stopped, 2, flags, RUN, false, 0);
        cr_assert_str_eq(arcs_of(trace, "d0"), "running-p2p running", "%s", trace);
        cr_assert_str_eq(arcs_of(trace, "d1"), "running-p2p running", "%s", trace);
        cr_assert_lt(arc_position(trace, "running-p2p", true), arc_position(trace, "running", false),
                     "a device ran freely before both left STOP: %s", trace);
        cr_assert_eq(hazards, 0, "%s", trace);
}

Test(transition, serial_groups_move_one_device_after_another) {
        GroupMember m[2] = {};

        for (int i = 0; i < 2; i++) {
                char name[4] = { 'd', (char) ('0' + i), 0 };
                m[i].dev = &fake_new(name, ALL, RUN)->base;
                m[i].target = SC;
        }
        cr_assert_eq(group_transition_run(m, 2, GROUP_SERIAL, NULL), 0);
        cr_assert_str_eq(trace, "d0:running-p2p d1:running-p2p d0:stop d0:stop-copy d1:stop d1:stop-copy ");
        cr_assert_eq(hazards, 0);
        group_members_close_fds(m, 2);
}

Test(transition, group_phase_moves_its_devices_in_parallel) {
        uint32_t flags[3] = { ALL, ALL, ALL };
        MigState running[3] = { RUN, RUN, RUN };

        /* The first arcs (all three to RUNNING_P2P) can only complete if all three are in flight
         * at once; a serial phase would leave the first waiting and set rendezvous_missed. */
        rendezvous_left = 3;
        run_group(running, 3, flags, SC, false, 0);
        cr_assert_not(rendezvous_missed, "the phase's arcs ran one after another: %s", trace);
        for (size_t i = 0; i < 3; i++)
                cr_assert_eq(fakes[i]->state, SC);
        cr_assert_eq(hazards, 0, "%s", trace);
}

Test(transition, group_without_p2p_is_refused_unless_forced) {
        uint32_t flags[2] = { ALL, VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY };
        MigState running[2] = { RUN, RUN };

        run_group(running, 2, flags, STOP, false, -EOPNOTSUPP);
        cr_assert_eq(fakes[0]->sets + fakes[1]->sets, 0);
        reset_fakes();
        run_group(running, 2, flags, STOP, true, 0);
        reset_fakes();
        /* A single device needs no P2P. */
        uint32_t one[1] = { VFIO_MIGRATION_STOP_COPY };
        run_group(running, 1, one, STOP, false, 0);
}

Test(transition, group_failure_rolls_everyone_back_safely) {
        GroupMember m[3] = {};
        ErrorMessage err = {};

        for (int i = 0; i < 3; i++) {
                char name[4] = { 'd', (char) ('0' + i), 0 };
                m[i].dev = &fake_new(name, ALL, PC)->base;
                m[i].target = SC;
        }
        /* d1 fails entering STOP_COPY and stays in PRE_COPY_P2P, while d0 and d2 reach it in the
         * same (parallel) phase. */
        fakes[1]->fail_at = SC;
        fakes[1]->fail_count = 1;
        cr_assert_eq(group_transition_run(m, 3, 0, &err), -EIO);
        cr_assert(strstr(err.text, "d1"), "%s", err.text);
        cr_assert_eq(m[1].result, -EIO);
        cr_assert_eq(m[0].result, -ECANCELED);
        cr_assert_eq(m[2].result, -ECANCELED);
        /* d0 and d2 cannot go from STOP_COPY back to PRE_COPY (forbidden): their cancelled
         * pre-copy resumes plain running; d1 returns to PRE_COPY. Nobody ran freely next to a
         * stopped device. */
        cr_assert_eq(hazards, 0, "trace: %s", trace);
        cr_assert_eq(fakes[0]->state, RUN);
        cr_assert_eq(fakes[1]->state, PC);
        cr_assert_eq(fakes[2]->state, RUN);
        for (int i = 0; i < 3; i++) {
                cr_assert_eq(m[i].reached, (int) fakes[i]->state);
                cr_assert_eq(m[i].data_fd, -EBADF, "no session fd survives a failed group move");
        }
}

Test(transition, group_refuses_duplicates_and_invalid_members) {
        GroupMember m[2] = {};
        ErrorMessage err = {};

        m[0].dev = m[1].dev = &fake_new("d", ALL, RUN)->base;
        m[0].target = m[1].target = STOP;
        cr_assert_eq(group_transition_run(m, 2, 0, &err), -EINVAL);
        cr_assert(strstr(err.text, "listed twice"));
        cr_assert_eq(fakes[0]->sets, 0);
}
