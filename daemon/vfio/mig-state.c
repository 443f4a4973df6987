/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <errno.h>
#include <string.h>

#include "mig-state.h"
#include "vfiomig1.h"

#define ERR VFIO_DEVICE_STATE_ERROR
#define STOP VFIO_DEVICE_STATE_STOP
#define RUN VFIO_DEVICE_STATE_RUNNING
#define SC VFIO_DEVICE_STATE_STOP_COPY
#define RES VFIO_DEVICE_STATE_RESUMING
#define RP2P VFIO_DEVICE_STATE_RUNNING_P2P
#define PC VFIO_DEVICE_STATE_PRE_COPY
#define PCP2P VFIO_DEVICE_STATE_PRE_COPY_P2P

static const char *const state_names[MIG_STATE_MAX] = VFIOMIG_STATE_NAMES;
static const char *const flag_names[] = VFIOMIG_MIGRATION_FLAG_NAMES;

/*
 * First hop of the preferred path from [cur] to [target], assuming every optional state exists.
 * The kernel builds it from two rules: shortest path, and never pass through a saving state
 * (PRE_COPY, PRE_COPY_P2P, STOP_COPY) unless both ends are saving states.
 */
static const MigState next_hop[MIG_STATE_MAX][MIG_STATE_MAX] = {
        [STOP] = {
                [STOP] = STOP, [RUN] = RP2P, [SC] = SC, [RES] = RES,
                [RP2P] = RP2P, [PC] = RP2P, [PCP2P] = RP2P, [ERR] = ERR,
        },
        [RUN] = {
                [STOP] = RP2P, [RUN] = RUN, [SC] = RP2P, [RES] = RP2P,
                [RP2P] = RP2P, [PC] = PC, [PCP2P] = RP2P, [ERR] = ERR,
        },
        [SC] = {
                [STOP] = STOP, [RUN] = STOP, [SC] = SC, [RES] = STOP,
                [RP2P] = STOP, [PC] = ERR, [PCP2P] = ERR, [ERR] = ERR,
        },
        [RES] = {
                [STOP] = STOP, [RUN] = STOP, [SC] = STOP, [RES] = RES,
                [RP2P] = STOP, [PC] = STOP, [PCP2P] = STOP, [ERR] = ERR,
        },
        [RP2P] = {
                [STOP] = STOP, [RUN] = RUN, [SC] = STOP, [RES] = STOP,
                [RP2P] = RP2P, [PC] = RUN, [PCP2P] = PCP2P, [ERR] = ERR,
        },
        [PC] = {
                [STOP] = RUN, [RUN] = RUN, [SC] = PCP2P, [RES] = RUN,
                [RP2P] = RUN, [PC] = PC, [PCP2P] = PCP2P, [ERR] = ERR,
        },
        [PCP2P] = {
                [STOP] = RP2P, [RUN] = RP2P, [SC] = SC, [RES] = RP2P,
                [RP2P] = RP2P, [PC] = PC, [PCP2P] = PCP2P, [ERR] = ERR,
        },
        [ERR] = {
                [STOP] = ERR, [RUN] = ERR, [SC] = ERR, [RES] = ERR,
                [RP2P] = ERR, [PC] = ERR, [PCP2P] = ERR, [ERR] = ERR,
        },
};

static bool state_valid(int s) {
        return s >= 0 && s < MIG_STATE_MAX;
}

const char *mig_state_to_string(MigState s) {
        return state_valid((int) s) ? state_names[s] : NULL;
}

int mig_state_from_string(const char *s) {
        if (!s)
                return -EINVAL;
        for (int i = 0; i < MIG_STATE_MAX; i++)
                if (strcmp(s, state_names[i]) == 0)
                        return i;
        return -EINVAL;
}

uint32_t mig_state_required_flags(MigState s) {
        switch (s) {
        case STOP:
        case RUN:
        case SC:
        case RES:
                return VFIO_MIGRATION_STOP_COPY;
        case RP2P:
                return VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P;
        case PC:
                return VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY;
        case PCP2P:
                return VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
        default:
                return UINT32_MAX; /* ERROR and out-of-range values never "exist" */
        }
}

bool mig_state_supported(uint32_t migration_flags, MigState s) {
        uint32_t required = mig_state_required_flags(s);
        return required != UINT32_MAX && (migration_flags & required) == required;
}

bool mig_flags_valid(uint32_t migration_flags) {
        const uint32_t known = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
        return (migration_flags & VFIO_MIGRATION_STOP_COPY) && !(migration_flags & ~known);
}

const char *mig_flag_to_string(uint32_t bit) {
        for (size_t i = 0; i < sizeof flag_names / sizeof flag_names[0]; i++)
                if (bit == (1u << i))
                        return flag_names[i];
        return NULL;
}

int mig_flag_from_string(const char *s) {
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < sizeof flag_names / sizeof flag_names[0]; i++)
                if (strcmp(s, flag_names[i]) == 0)
                        return (int) (1u << i);
        return -EINVAL;
}

bool mig_state_is_saving(MigState s) {
        return s == PC || s == PCP2P || s == SC;
}

bool mig_state_is_running(MigState s) {
        return s == RUN || s == RP2P || s == PC || s == PCP2P;
}

bool mig_state_is_p2p_active(MigState s) {
        return s == RUN || s == PC;
}

MigState mig_state_p2p_quiesced(MigState s) {
        switch (s) {
        case RUN:
                return RP2P;
        case PC:
                return PCP2P;
        default:
                return s;
        }
}

bool mig_arc_opens_session(MigState from, MigState to) {
        return (from == RUN && to == PC) || (from == RP2P && to == PCP2P) ||
               (from == STOP && to == SC) || (from == STOP && to == RES);
}

int mig_next_state(uint32_t migration_flags, MigState cur, MigState target, MigState *ret_next) {
        MigState next;

        if (!state_valid((int) cur) || !mig_state_supported(migration_flags, cur))
                return -EINVAL;
        if (!state_valid((int) target) || !mig_state_supported(migration_flags, target))
                return -EINVAL;

        /* Arcs through unsupported optional states are skipped over. ERROR is never supported,
         * so the kernel's loop never leaves it: stop there instead (the upstream fix). */
        next = next_hop[cur][target];
        while (next != ERR && !mig_state_supported(migration_flags, next))
                next = next_hop[next][target];

        if (next == ERR)
                return -EINVAL;
        *ret_next = next;
        return 0;
}

int mig_path(uint32_t migration_flags, MigState cur, MigState target, MigState ret_path[static MIG_PATH_MAX]) {
        MigState path[MIG_PATH_MAX];
        int n = 0;

        if (!state_valid((int) cur) || !mig_state_supported(migration_flags, cur) ||
            !state_valid((int) target) || !mig_state_supported(migration_flags, target))
                return -EINVAL;

        while (cur != target) {
                MigState next;
                int r = mig_next_state(migration_flags, cur, target, &next);
                if (r < 0)
                        return r;
                if (n >= MIG_PATH_MAX)
                        return -ELOOP; /* the table is acyclic; this would be a bug in it */
                path[n++] = next;
                cur = next;
        }
        memcpy(ret_path, path, n * sizeof path[0]);
        return n;
}

MigVerdict mig_check_transition(uint32_t migration_flags, MigState cur, MigState target) {
        MigState path[MIG_PATH_MAX];

        if (!mig_flags_valid(migration_flags))
                return MIG_VERDICT_INVALID_FLAGS;
        if (!state_valid((int) cur) || !state_valid((int) target))
                return MIG_VERDICT_INVALID_STATE;
        if (target == ERR)
                return MIG_VERDICT_TARGET_ERROR;
        if (cur == ERR)
                return MIG_VERDICT_CURRENT_ERROR;
        if (!mig_state_supported(migration_flags, target))
                return MIG_VERDICT_TARGET_UNSUPPORTED;
        if (!mig_state_supported(migration_flags, cur))
                return MIG_VERDICT_CURRENT_UNSUPPORTED;
        if (cur == SC && (target == PC || target == PCP2P))
                return MIG_VERDICT_FORBIDDEN_ARC;
        /* Every remaining pair has a path; checking keeps the verdict honest if the table changes. */
        if (mig_path(migration_flags, cur, target, path) < 0)
                return MIG_VERDICT_FORBIDDEN_ARC;
        return MIG_VERDICT_OK;
}

const char *mig_verdict_to_string(MigVerdict v) {
        static const char *const table[_MIG_VERDICT_MAX] = {
                [MIG_VERDICT_OK] = "transition allowed",
                [MIG_VERDICT_CURRENT_ERROR] = "the device is in the error state; only a reset recovers it",
                [MIG_VERDICT_TARGET_ERROR] = "the error state cannot be requested",
                [MIG_VERDICT_TARGET_UNSUPPORTED] = "the device does not support the requested state",
                [MIG_VERDICT_CURRENT_UNSUPPORTED] = "the device reports a state its migration flags do not allow",
                [MIG_VERDICT_FORBIDDEN_ARC] =
                        "stop-copy cannot go back to pre-copy (the uAPI forbids it; unfixed kernels hang on it)",
                [MIG_VERDICT_INVALID_STATE] = "not a migration state",
                [MIG_VERDICT_INVALID_FLAGS] = "the device's migration flags are not a combination the uAPI defines",
        };
        return (int) v >= 0 && v < _MIG_VERDICT_MAX ? table[v] : "unknown verdict";
}
