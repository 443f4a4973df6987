/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "transition.h"

static void record(TransitionReport *r, TransitionAction action, int requested, int result, int observed) {
        if (r->n_steps >= TRANSITION_STEPS_MAX)
                return;
        r->steps[r->n_steps++] = (TransitionStep) {
                .action = action,
                .requested = requested < 0 ? VFIO_DEVICE_STATE_ERROR : (MigState) requested,
                .result = result,
                .observed = observed,
        };
}

static int read_state(VfioDev *d, TransitionReport *r, MigState *ret) {
        MigState s;
        int k = vfio_dev_get_state(d, &s);

        record(r, TRANSITION_GET, -1, k, k < 0 ? -1 : (int) s);
        if (k < 0)
                return k;
        *ret = s;
        return 0;
}

static void reset_device(VfioDev *d, TransitionReport *r) {
        MigState now;
        int k;

        log_full(LOG_WARNING, "Resetting %s as the last resort to recover it.", d->address);
        k = vfio_dev_reset(d);
        record(r, TRANSITION_RESET, -1, k, k < 0 ? -1 : (int) VFIO_DEVICE_STATE_RUNNING);
        r->reset = true;
        if (k < 0)
                log_error_errno(k, "Failed to reset %s: %m", d->address);
        r->final = read_state(d, r, &now) < 0 ? -1 : (int) now;
}

/* QEMU's policy after a failed SET: read back the real state, try the recover state, and reset
 * as the last resort. A device left in a usable state is left alone when there is no recover
 * state; a device in ERROR is always reset, because nothing else leaves ERROR. */
static void recover_device(VfioDev *d, int recover_state, TransitionReport *r) {
        MigState now;

        if (read_state(d, r, &now) < 0) {
                reset_device(d, r);
                return;
        }
        r->final = now;
        if (now == VFIO_DEVICE_STATE_ERROR) {
                reset_device(d, r);
                return;
        }
        if (recover_state == TRANSITION_NO_RECOVER)
                return;
        if ((int) now == recover_state) {
                r->recovered = true;
                return;
        }

        if (mig_check_transition(d->migration_flags, now, recover_state) == MIG_VERDICT_OK) {
                int fd = -EBADF;
                int k = vfio_dev_set_state(d, recover_state, &fd);

                fd = safe_close(fd); /* a recover state is a place to rest, not a session to use */
                record(r, TRANSITION_RECOVER, recover_state, k, k < 0 ? -1 : recover_state);
                if (k >= 0) {
                        r->final = recover_state;
                        r->recovered = true;
                        return;
                }
                log_warning_errno(k, "Failed to move %s to the recover state %s: %m", d->address,
                                  mig_state_to_string(recover_state));
                if (read_state(d, r, &now) >= 0)
                        r->final = now;
        }
        reset_device(d, r);
}

int transition_run(VfioDev *d, MigState target, int recover_state, TransitionReport *report,
                   int *ret_data_fd, ErrorMessage *err) {
        int data_fd = -EBADF;
        MigState cur;
        MigVerdict verdict;
        int r;

        *report = (TransitionReport) { .initial = -1, .final = -1, .verdict = MIG_VERDICT_OK };

        if (!d->migratable)
                return error_setf(err, -EOPNOTSUPP, "%s is not migratable: %s", d->address,
                                  d->migratable_reason ?: "no migration support");
        if (recover_state != TRANSITION_NO_RECOVER &&
            !mig_state_supported(d->migration_flags, (MigState) recover_state))
                return error_setf(err, -EINVAL, "%s cannot be recovered to %s: the device does not support that state",
                                  d->address, mig_state_to_string(recover_state) ?: "an invalid state");

        r = read_state(d, report, &cur);
        if (r < 0)
                return error_setf(err, r, "Failed to read the migration state of %s: %m", d->address);
        report->initial = report->final = cur;

        verdict = mig_check_transition(d->migration_flags, cur, target);
        if (verdict != MIG_VERDICT_OK) {
                report->verdict = verdict;
                return error_setf(err, -EINVAL, "Cannot move %s from %s to %s: %s", d->address,
                                  mig_state_to_string(cur), mig_state_to_string(target) ?: "an invalid state",
                                  mig_verdict_to_string(verdict));
        }
        if (cur == target) {
                report->reached = true;
                *ret_data_fd = -EBADF;
                return 0;
        }

        r = vfio_dev_set_state(d, target, &data_fd);
        record(report, TRANSITION_SET, target, r, r < 0 ? -1 : (int) target);
        if (r >= 0) {
                report->final = target;
                report->reached = true;
                *ret_data_fd = data_fd;
                return 0;
        }

        log_warning_errno(r, "Failed to move %s from %s to %s: %m", d->address, mig_state_to_string(cur),
                          mig_state_to_string(target));
        recover_device(d, recover_state, report);
        if (cur == VFIO_DEVICE_STATE_RESUMING && r == -EINVAL && report->final == VFIO_DEVICE_STATE_RESUMING)
                /* The uAPI's commit point: drivers refuse RESUMING→STOP until they hold a complete,
                 * valid stream, and give no more than EINVAL to say so. */
                return error_setf(err, r, "Failed to move %s from resuming to %s: the device has not received a "
                                  "complete, valid migration stream (it stays in resuming; write the rest, or "
                                  "reset it to abandon the load)", d->address, mig_state_to_string(target));
        return error_setf(err, r, "Failed to move %s from %s to %s: %m", d->address, mig_state_to_string(cur),
                          mig_state_to_string(target));
}

static const char *action_name(TransitionAction a) {
        static const char *const table[_TRANSITION_ACTION_MAX] = {
                [TRANSITION_GET] = "GET",
                [TRANSITION_SET] = "SET",
                [TRANSITION_RECOVER] = "SET (recover)",
                [TRANSITION_RESET] = "RESET",
        };
        return table[a];
}

int transition_report_format(const TransitionReport *r, char **ret) {
        char *buf = NULL;
        size_t size = 0;
        FILE *f;

        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;
        for (size_t i = 0; i < r->n_steps; i++) {
                const TransitionStep *s = &r->steps[i];
                if (i > 0)
                        fputs("; ", f);
                fputs(action_name(s->action), f);
                if (s->action == TRANSITION_SET || s->action == TRANSITION_RECOVER)
                        fprintf(f, " %s", mig_state_to_string(s->requested));
                if (s->result < 0)
                        fprintf(f, ": %s", strerror(-s->result));
                else if (s->observed >= 0)
                        fprintf(f, ": %s", mig_state_to_string(s->observed));
                else
                        fputs(": ok", f);
        }
        if (r->final >= 0)
                fprintf(f, "%sdevice now %s", r->n_steps > 0 ? "; " : "", mig_state_to_string(r->final));
        if (fclose(f) != 0) {
                free(buf);
                return -ENOMEM;
        }
        *ret = buf;
        return 0;
}

/* ---- groups ---- */

static bool stopped(MigState s) {
        return !mig_state_is_running(s);
}

static bool has_p2p(const VfioDev *d) {
        return d->migration_flags & VFIO_MIGRATION_P2P;
}

/* True when moving the members to targets would stop some device at some point (or one is
 * stopped already): then free-running devices must be quiesced first. */
static bool group_needs_quiesce(GroupMember *m, size_t n, const MigState *from, const MigState *to) {
        if (n < 2)
                return false;
        for (size_t i = 0; i < n; i++) {
                MigState path[MIG_PATH_MAX];
                int k = mig_path(m[i].dev->migration_flags, from[i], to[i], path);

                if (stopped(from[i]))
                        return true;
                for (int j = 0; j < k; j++)
                        if (stopped(path[j]))
                                return true;
        }
        return false;
}

static int member_move(GroupMember *m, MigState target, MigState *cur) {
        int fd = -EBADF, r;

        if (*cur == target)
                return 0;
        r = transition_run(m->dev, target, TRANSITION_NO_RECOVER, &m->report, &fd, NULL);
        m->reached = m->report.final;
        if (r < 0)
                return r;
        *cur = target;
        if (fd >= 0) {
                safe_close(m->data_fd);
                m->data_fd = fd;
        }
        return 0;
}

/* One member's arc of a phase. A thread touches only its own PhaseMove and member. */
typedef struct PhaseMove {
        GroupMember *member;
        MigState target;
        MigState *cur;
        int result;
        pthread_t thread;
        bool threaded;
} PhaseMove;

static void *phase_move_thread(void *userdata) {
        PhaseMove *p = userdata;

        p->result = member_move(p->member, p->target, p->cur);
        return NULL;
}

/* Moves every member to targets[i] at once: real drivers take milliseconds to seconds per arc,
 * and the members of one phase do not depend on each other (the P2P invariant holds in any
 * interleaving of one phase's arcs), so the phase costs its slowest arc, not the sum. Each arc
 * but the last starts in a thread of its own (a member whose thread cannot start moves in the
 * caller's turn, one after another); every thread is joined before this returns. All arcs of
 * the phase run to their end even when one fails; the lowest failing member is reported. */
static int run_phase(GroupMember *m, size_t n, MigState *cur, const MigState *targets, bool serial,
                     size_t *ret_failed) {
        _cleanup_free_ PhaseMove *moves = NULL;
        size_t n_moves = 0;
        int r = 0;

        moves = new0(PhaseMove, n);
        if (!moves)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++)
                if (cur[i] != targets[i])
                        moves[n_moves++] = (PhaseMove) { .member = &m[i], .target = targets[i], .cur = &cur[i] };

        for (size_t k = 0; !serial && k + 1 < n_moves; k++) {
                int e = pthread_create(&moves[k].thread, NULL, phase_move_thread, &moves[k]);
                if (e == 0)
                        moves[k].threaded = true;
                else
                        log_debug_errno(e, "Failed to start a thread for %s's arc, moving it in turn: %m",
                                        moves[k].member->dev->address);
        }
        for (size_t k = 0; k < n_moves; k++)
                if (!moves[k].threaded)
                        phase_move_thread(&moves[k]);
        for (size_t k = 0; k < n_moves; k++)
                if (moves[k].threaded)
                        (void) pthread_join(moves[k].thread, NULL);

        for (size_t k = 0; k < n_moves; k++)
                if (moves[k].result < 0) {
                        *ret_failed = (size_t) (moves[k].member - m);
                        r = moves[k].result;
                        break;
                }
        return r;
}

/* Moves members from cur[] to to[] in P2P-safe phases, each phase's arcs in parallel; stops after
 * the first phase in which a member failed and returns the error with *ret_failed set to that
 * member. cur[] is kept up to date. */
static int run_phases(GroupMember *m, size_t n, MigState *cur, const MigState *to, bool serial, size_t *ret_failed) {
        _cleanup_free_ MigState *targets = NULL;
        int r;

        targets = new_array(MigState, n);
        if (!targets)
                return -ENOMEM;

        if (group_needs_quiesce(m, n, cur, to)) {
                /* 1: nothing may initiate P2P DMA while anything is stopped */
                for (size_t i = 0; i < n; i++)
                        targets[i] = has_p2p(m[i].dev) && mig_state_is_p2p_active(cur[i]) ?
                                             mig_state_p2p_quiesced(cur[i]) : cur[i];
                r = run_phase(m, n, cur, targets, serial, ret_failed);
                if (r < 0)
                        return r;
                /* 2: everybody to the target, or to its quiesced twin if the target runs freely */
                for (size_t i = 0; i < n; i++)
                        targets[i] = has_p2p(m[i].dev) ? mig_state_p2p_quiesced(to[i]) : to[i];
                r = run_phase(m, n, cur, targets, serial, ret_failed);
                if (r < 0)
                        return r;
        }
        /* 3: the rest of the way; with nothing stopping this is the only phase */
        return run_phase(m, n, cur, to, serial, ret_failed);
}

/* Where a device goes back to: where it started, unless the uAPI forbids the way back
 * (STOP_COPY never returns to pre-copy). A cancelled pre-copy resumes plain running then, as
 * QEMU's cancel does, and the group ends with every device running and nothing stopped. */
static MigState rollback_target(const VfioDev *d, MigState cur, MigState orig) {
        if (mig_check_transition(d->migration_flags, cur, orig) == MIG_VERDICT_OK)
                return orig;
        if (orig == VFIO_DEVICE_STATE_PRE_COPY)
                return VFIO_DEVICE_STATE_RUNNING;
        if (orig == VFIO_DEVICE_STATE_PRE_COPY_P2P)
                return VFIO_DEVICE_STATE_RUNNING_P2P;
        return orig;
}

void group_members_close_fds(GroupMember *members, size_t n) {
        for (size_t i = 0; i < n; i++)
                members[i].data_fd = safe_close(members[i].data_fd);
}

int group_transition_run(GroupMember *m, size_t n, GroupFlags flags, ErrorMessage *err) {
        _cleanup_free_ MigState *orig = NULL, *cur = NULL, *to = NULL;
        size_t failed = 0;
        int r;

        for (size_t i = 0; i < n; i++)
                m[i] = (GroupMember) { .dev = m[i].dev, .target = m[i].target, .reached = -1, .data_fd = -EBADF };
        if (n == 0)
                return 0;

        orig = new_array(MigState, n);
        cur = new_array(MigState, n);
        to = new_array(MigState, n);
        if (!orig || !cur || !to)
                return -ENOMEM;

        /* Everything is validated before any device moves. */
        for (size_t i = 0; i < n; i++) {
                VfioDev *d = m[i].dev;
                MigVerdict v;

                for (size_t j = 0; j < i; j++)
                        if (m[j].dev == d)
                                return error_setf(err, -EINVAL, "%s is listed twice", d->address);
                if (!d->migratable)
                        return m[i].result = error_setf(err, -EOPNOTSUPP, "%s is not migratable: %s", d->address,
                                                        d->migratable_reason ?: "no migration support");
                r = vfio_dev_get_state(d, &orig[i]);
                if (r < 0)
                        return m[i].result = error_setf(err, r, "Failed to read the migration state of %s: %m",
                                                        d->address);
                m[i].reached = orig[i];
                cur[i] = orig[i];
                to[i] = m[i].target;
                v = mig_check_transition(d->migration_flags, orig[i], to[i]);
                if (v != MIG_VERDICT_OK) {
                        m[i].report.verdict = v;
                        return m[i].result = error_setf(err, -EINVAL, "Cannot move %s from %s to %s: %s", d->address,
                                                        mig_state_to_string(orig[i]),
                                                        mig_state_to_string(to[i]) ?: "an invalid state",
                                                        mig_verdict_to_string(v));
                }
        }
        if (n > 1 && !(flags & GROUP_FORCE_WITHOUT_P2P))
                for (size_t i = 0; i < n; i++)
                        if (!has_p2p(m[i].dev))
                                return m[i].result = error_setf(
                                               err, -EOPNOTSUPP,
                                               "%s does not support P2P quiescing: moving it together with other devices "
                                               "could let one DMA into a stopped peer (force to override)",
                                               m[i].dev->address);

        r = run_phases(m, n, cur, to, flags & GROUP_SERIAL, &failed);
        if (r >= 0)
                return 0;

        m[failed].result = r;
        error_setf(err, r, "Failed to move %s to %s: %m", m[failed].dev->address, mig_state_to_string(to[failed]));
        log_warning_errno(r, "Group transition failed at %s, rolling %zu device(s) back: %m", m[failed].dev->address, n);

        /* Roll every device back, in the same safe order. A device whose failed SET left it
         * somewhere unknown was reset by transition_run(); read where everyone is now. */
        group_members_close_fds(m, n);
        for (size_t i = 0; i < n; i++) {
                if (i != failed)
                        m[i].result = -ECANCELED;
                if (vfio_dev_get_state(m[i].dev, &cur[i]) < 0)
                        cur[i] = VFIO_DEVICE_STATE_ERROR;
                m[i].reached = cur[i];
                orig[i] = rollback_target(m[i].dev, cur[i], orig[i]);
        }
        for (size_t attempt = 0; attempt < n; attempt++) {
                size_t rollback_failed = 0;
                int k = run_phases(m, n, cur, orig, flags & GROUP_SERIAL, &rollback_failed);
                if (k >= 0)
                        break;
                log_error_errno(k, "Failed to roll %s back to %s: %m", m[rollback_failed].dev->address,
                                mig_state_to_string(orig[rollback_failed]));
                /* Leave that device where recovery put it and continue with the others. */
                if (vfio_dev_get_state(m[rollback_failed].dev, &cur[rollback_failed]) < 0)
                        cur[rollback_failed] = VFIO_DEVICE_STATE_ERROR;
                orig[rollback_failed] = cur[rollback_failed];
        }
        group_members_close_fds(m, n);
        return r;
}
