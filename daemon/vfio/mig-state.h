/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The VFIO migration v2 state machine as the kernel defines it (vfio_main.c,
 * vfio_mig_get_next_state()): which states a device's migration flags make available, and the
 * first hop of the kernel's preferred path between any two states. Both the simulated device
 * (which must walk exactly as a kernel driver is walked) and the transition validator above the
 * device layer use this; it depends on nothing but the uAPI definitions.
 */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vfio-uapi.h"

typedef enum vfio_device_mig_state MigState;

#define MIG_STATE_MAX VFIO_DEVICE_STATE_NR
/* No path is longer than this: the longest (RESUMING→PRE_COPY) takes four arcs. */
#define MIG_PATH_MAX 8

const char *mig_state_to_string(MigState s);
/* Returns the state, or -EINVAL for an unknown name. */
int mig_state_from_string(const char *s);

/* The VFIO_MIGRATION_* bits a device needs for state s to exist; ERROR never exists. */
uint32_t mig_state_required_flags(MigState s);
bool mig_state_supported(uint32_t migration_flags, MigState s);

/* STOP_COPY alone, or with P2P and/or PRE_COPY: the only combinations the uAPI defines. */
bool mig_flags_valid(uint32_t migration_flags);
/* Name of the bit in VFIO_MIGRATION_* order ("stop-copy", "p2p", "pre-copy"), or NULL. */
const char *mig_flag_to_string(uint32_t bit);
/* Returns the bit, or -EINVAL. */
int mig_flag_from_string(const char *s);

/* PRE_COPY, PRE_COPY_P2P and STOP_COPY: the states of an open saving session. */
bool mig_state_is_saving(MigState s);
/* The device performs DMA and may change its state: RUNNING, RUNNING_P2P, PRE_COPY(_P2P). */
bool mig_state_is_running(MigState s);
/* Running and free to initiate P2P DMA: RUNNING and PRE_COPY. */
bool mig_state_is_p2p_active(MigState s);
/* The P2P-quiesced twin of a P2P-active state (RUNNING→RUNNING_P2P, PRE_COPY→PRE_COPY_P2P);
 * any other state is returned unchanged. */
MigState mig_state_p2p_quiesced(MigState s);

/* True if the direct arc from→to opens a data transfer session and hands out a data_fd. */
bool mig_arc_opens_session(MigState from, MigState to);

/*
 * The kernel's next-step function: the first arc of the path from cur to target for a device
 * with these migration flags, skipping unsupported optional states. Returns 0 and the next state,
 * or -EINVAL where the kernel refuses. Unlike unfixed kernels it also refuses, instead of spinning
 * forever, the arcs whose table entry is ERROR (STOP_COPY→PRE_COPY and STOP_COPY→PRE_COPY_P2P).
 */
int mig_next_state(uint32_t migration_flags, MigState cur, MigState target, MigState *ret_next);

/* The whole path, excluding cur and including target; an empty path when cur == target.
 * Returns the number of states written to ret_path (at most MIG_PATH_MAX), or -EINVAL. */
int mig_path(uint32_t migration_flags, MigState cur, MigState target, MigState ret_path[static MIG_PATH_MAX]);

typedef enum MigVerdict {
        MIG_VERDICT_OK,
        MIG_VERDICT_CURRENT_ERROR,        /* the device is in ERROR: only a reset leaves it */
        MIG_VERDICT_TARGET_ERROR,         /* ERROR cannot be requested */
        MIG_VERDICT_TARGET_UNSUPPORTED,   /* the device lacks the flag the target state needs */
        MIG_VERDICT_CURRENT_UNSUPPORTED,  /* the device reports a state its flags do not allow */
        MIG_VERDICT_FORBIDDEN_ARC,        /* STOP_COPY→PRE_COPY(_P2P): refused by the uAPI */
        MIG_VERDICT_INVALID_STATE,        /* not a state value at all */
        MIG_VERDICT_INVALID_FLAGS,        /* the device's migration flags are not a defined set */
        _MIG_VERDICT_MAX,
} MigVerdict;

/* Decides whether a transition may be requested, before anything reaches a device. */
MigVerdict mig_check_transition(uint32_t migration_flags, MigState cur, MigState target);
/* A sentence explaining the verdict, for error messages. */
const char *mig_verdict_to_string(MigVerdict v);
