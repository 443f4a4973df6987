/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The kernel's next-step table, checked against an independent derivation: breadth-first
 * search over the direct arcs a driver implements (vfio-uapi.md §1.6), with the uAPI's two
 * rules: never pass through a saving state unless both ends are saving states, and stop-copy
 * never returns to pre-copy.
 */

#include <criterion/criterion.h>
#include <string.h>

#include "mig-state.h"

#define ERR VFIO_DEVICE_STATE_ERROR
#define STOP VFIO_DEVICE_STATE_STOP
#define RUN VFIO_DEVICE_STATE_RUNNING
#define SC VFIO_DEVICE_STATE_STOP_COPY
#define RES VFIO_DEVICE_STATE_RESUMING
#define RP2P VFIO_DEVICE_STATE_RUNNING_P2P
#define PC VFIO_DEVICE_STATE_PRE_COPY
#define PCP2P VFIO_DEVICE_STATE_PRE_COPY_P2P

static const uint32_t flag_sets[] = {
        VFIO_MIGRATION_STOP_COPY,
        VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P,
        VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY,
        VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY,
};

/* Which states exist, written out per flag rather than taken from mig_state_supported(). */
static bool exists(uint32_t f, int s) {
        bool p2p = f & VFIO_MIGRATION_P2P, pre = f & VFIO_MIGRATION_PRE_COPY;
        switch (s) {
        case STOP: case RUN: case SC: case RES: return true;
        case RP2P: return p2p;
        case PC: return pre;
        case PCP2P: return p2p && pre;
        default: return false;
        }
}

static bool direct_arc(uint32_t f, int from, int to) {
        bool p2p = f & VFIO_MIGRATION_P2P, pre = f & VFIO_MIGRATION_PRE_COPY;

        if (!exists(f, from) || !exists(f, to))
                return false;
        if ((from == STOP && to == RES) || (from == RES && to == STOP) ||
            (from == STOP && to == SC) || (from == SC && to == STOP))
                return true;
        if (!p2p && ((from == RUN && to == STOP) || (from == STOP && to == RUN)))
                return true;
        if (p2p && ((from == RUN && to == RP2P) || (from == RP2P && to == RUN) ||
                    (from == RP2P && to == STOP) || (from == STOP && to == RP2P)))
                return true;
        if (pre && ((from == RUN && to == PC) || (from == PC && to == RUN)))
                return true;
        if (pre && !p2p && from == PC && to == SC)
                return true;
        if (pre && p2p && ((from == PC && to == PCP2P) || (from == PCP2P && to == PC) ||
                           (from == PCP2P && to == RP2P) || (from == PCP2P && to == SC) ||
                           (from == RP2P && to == PCP2P)))
                return true;
        return false;
}

static bool saving(int s) {
        return s == PC || s == PCP2P || s == SC;
}

/* Length of the shortest legal path, or -1. */
static int shortest(uint32_t f, int cur, int target) {
        int dist[8], queue[8], head = 0, tail = 0;
        bool may_pass_saving = saving(cur) && saving(target);

        if (!exists(f, cur) || !exists(f, target))
                return -1;
        if (cur == SC && (target == PC || target == PCP2P))
                return -1;
        for (int i = 0; i < 8; i++)
                dist[i] = -1;
        dist[cur] = 0;
        queue[tail++] = cur;
        while (head < tail) {
                int s = queue[head++];
                if (s == target)
                        return dist[s];
                if (s != cur && saving(s) && !may_pass_saving)
                        continue; /* may not be an intermediate hop */
                for (int t = 0; t < 8; t++)
                        if (dist[t] < 0 && direct_arc(f, s, t)) {
                                dist[t] = dist[s] + 1;
                                queue[tail++] = t;
                        }
        }
        return -1;
}

Test(mig_state, table_matches_independent_derivation) {
        unsigned checked = 0;

        for (size_t i = 0; i < sizeof flag_sets / sizeof flag_sets[0]; i++) {
                uint32_t f = flag_sets[i];
                for (int cur = 0; cur < 8; cur++)
                        for (int target = 0; target < 8; target++) {
                                MigState path[MIG_PATH_MAX];
                                int expected = shortest(f, cur, target);
                                int n = mig_path(f, cur, target, path);

                                checked++;
                                if (expected < 0) {
                                        cr_expect_lt(n, 0, "flags %u: %s→%s should be refused, got a %d-step path",
                                                     f, mig_state_to_string(cur), mig_state_to_string(target), n);
                                        continue;
                                }
                                cr_assert_eq(n, expected, "flags %u: %s→%s: path of %d, expected %d", f,
                                             mig_state_to_string(cur), mig_state_to_string(target), n, expected);
                                /* Every hop must be a direct arc, no intermediate hop a forbidden saving
                                 * state, and only the last arc may open a session (drivers WARN otherwise). */
                                int prev = cur;
                                for (int k = 0; k < n; k++) {
                                        cr_assert(direct_arc(f, prev, path[k]), "flags %u: %s→%s uses %s→%s",
                                                  f, mig_state_to_string(cur), mig_state_to_string(target),
                                                  mig_state_to_string(prev), mig_state_to_string(path[k]));
                                        if (k < n - 1) {
                                                cr_assert(!(saving(path[k]) && !(saving(cur) && saving(target))));
                                                cr_assert(!mig_arc_opens_session(prev, path[k]));
                                        }
                                        prev = path[k];
                                }
                        }
        }
        cr_assert_eq(checked, 4 * 8 * 8);
}

Test(mig_state, known_paths) {
        const uint32_t all = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
        MigState p[MIG_PATH_MAX];

        cr_assert_eq(mig_path(all, RUN, SC, p), 3);
        cr_assert(p[0] == RP2P && p[1] == STOP && p[2] == SC);
        cr_assert_eq(mig_path(all, PC, SC, p), 2);
        cr_assert(p[0] == PCP2P && p[1] == SC);
        cr_assert_eq(mig_path(all, RES, RUN, p), 3);
        cr_assert(p[0] == STOP && p[1] == RP2P && p[2] == RUN);
        /* Without P2P the kernel collapses RUNNING_P2P: RUN→STOP is direct. */
        cr_assert_eq(mig_path(VFIO_MIGRATION_STOP_COPY, RUN, SC, p), 2);
        cr_assert(p[0] == STOP && p[1] == SC);
        /* Without P2P, PC→SC is direct (PCP2P skipped). */
        cr_assert_eq(mig_path(VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY, PC, SC, p), 1);
        cr_assert_eq(mig_path(all, STOP, STOP, p), 0);
}

Test(mig_state, next_state_never_spins_on_forbidden_arcs) {
        const uint32_t all = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
        MigState next = STOP;

        cr_assert_eq(mig_next_state(all, SC, PC, &next), -EINVAL);
        cr_assert_eq(mig_next_state(all, SC, PCP2P, &next), -EINVAL);
        cr_assert_eq(next, STOP, "output must not be written on failure");
        cr_assert_eq(mig_next_state(all, RUN, ERR, &next), -EINVAL);
        cr_assert_eq(mig_next_state(all, ERR, RUN, &next), -EINVAL);
        cr_assert_eq(mig_next_state(VFIO_MIGRATION_STOP_COPY, RUN, PC, &next), -EINVAL);
        cr_assert_eq(mig_next_state(all, RUN, 8, &next), -EINVAL);
}

Test(mig_state, verdicts) {
        const uint32_t sc = VFIO_MIGRATION_STOP_COPY;
        const uint32_t all = sc | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;

        cr_assert_eq(mig_check_transition(all, RUN, SC), MIG_VERDICT_OK);
        cr_assert_eq(mig_check_transition(all, RUN, RUN), MIG_VERDICT_OK);
        cr_assert_eq(mig_check_transition(all, RUN, ERR), MIG_VERDICT_TARGET_ERROR);
        cr_assert_eq(mig_check_transition(all, ERR, RUN), MIG_VERDICT_CURRENT_ERROR);
        cr_assert_eq(mig_check_transition(all, SC, PC), MIG_VERDICT_FORBIDDEN_ARC);
        cr_assert_eq(mig_check_transition(all, SC, PCP2P), MIG_VERDICT_FORBIDDEN_ARC);
        cr_assert_eq(mig_check_transition(sc, RUN, RP2P), MIG_VERDICT_TARGET_UNSUPPORTED);
        cr_assert_eq(mig_check_transition(sc, RUN, PC), MIG_VERDICT_TARGET_UNSUPPORTED);
        cr_assert_eq(mig_check_transition(sc, RP2P, RUN), MIG_VERDICT_CURRENT_UNSUPPORTED);
        cr_assert_eq(mig_check_transition(VFIO_MIGRATION_P2P, RUN, STOP), MIG_VERDICT_INVALID_FLAGS);
        cr_assert_eq(mig_check_transition(all | 8, RUN, STOP), MIG_VERDICT_INVALID_FLAGS);
        cr_assert_eq(mig_check_transition(all, RUN, 9), MIG_VERDICT_INVALID_STATE);

        /* The verdict agrees with mig_path() on every pair: OK exactly when a path exists. */
        for (size_t i = 0; i < sizeof flag_sets / sizeof flag_sets[0]; i++)
                for (int cur = 0; cur < 8; cur++)
                        for (int target = 0; target < 8; target++) {
                                MigState p[MIG_PATH_MAX];
                                bool ok = mig_check_transition(flag_sets[i], cur, target) == MIG_VERDICT_OK;
                                cr_assert_eq(ok, mig_path(flag_sets[i], cur, target, p) >= 0);
                        }
        for (int v = 0; v < _MIG_VERDICT_MAX; v++)
                cr_assert(strlen(mig_verdict_to_string(v)) > 0);
}

Test(mig_state, names_round_trip) {
        static const char *const expected[] = { "error", "stop", "running", "stop-copy", "resuming",
                                                "running-p2p", "pre-copy", "pre-copy-p2p" };
        for (int s = 0; s < 8; s++) {
                cr_assert_str_eq(mig_state_to_string(s), expected[s]);
                cr_assert_eq(mig_state_from_string(expected[s]), s);
        }
        cr_assert_null(mig_state_to_string(8));
        cr_assert_eq(mig_state_from_string("RUNNING"), -EINVAL);
        cr_assert_eq(mig_state_from_string(""), -EINVAL);
        cr_assert_eq(mig_state_from_string(NULL), -EINVAL);

        cr_assert_eq(mig_flag_from_string("stop-copy"), VFIO_MIGRATION_STOP_COPY);
        cr_assert_eq(mig_flag_from_string("p2p"), VFIO_MIGRATION_P2P);
        cr_assert_eq(mig_flag_from_string("pre-copy"), VFIO_MIGRATION_PRE_COPY);
        cr_assert_eq(mig_flag_from_string("precopy"), -EINVAL);
        cr_assert_str_eq(mig_flag_to_string(VFIO_MIGRATION_P2P), "p2p");
        cr_assert_null(mig_flag_to_string(3));
}

Test(mig_state, flags_and_classes) {
        cr_assert(mig_flags_valid(VFIO_MIGRATION_STOP_COPY));
        cr_assert(!mig_flags_valid(0));
        cr_assert(!mig_flags_valid(VFIO_MIGRATION_PRE_COPY));
        cr_assert(!mig_flags_valid(VFIO_MIGRATION_STOP_COPY | 0x10));
        cr_assert(!mig_state_supported(~0u, ERR));
        cr_assert_eq(mig_state_p2p_quiesced(RUN), RP2P);
        cr_assert_eq(mig_state_p2p_quiesced(PC), PCP2P);
        cr_assert_eq(mig_state_p2p_quiesced(STOP), STOP);
        cr_assert(mig_state_is_saving(SC) && mig_state_is_saving(PC) && !mig_state_is_saving(RES));
        cr_assert(mig_state_is_running(PCP2P) && !mig_state_is_running(STOP));
        cr_assert(mig_arc_opens_session(STOP, RES) && mig_arc_opens_session(RUN, PC));
        cr_assert(!mig_arc_opens_session(PC, SC));
}
