/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Safe migration-state transitions on top of the device operations table.
 *
 * One device: read the real state, validate the request against the kernel's arc table before
 * anything reaches the device (unsupported states, ERROR as a target, STOP_COPY→PRE_COPY*, which
 * spins forever inside unfixed kernels), issue one SET and, if it fails, follow QEMU's policy:
 * read back where the device really is, try the caller's recover state, and reset as the last
 * resort. Every ioctl-level step is recorded so the caller can tell the operator exactly what
 * happened to the device.
 *
 * Several devices: move them in P2P-safe order, so that no device that can still initiate
 * peer-to-peer DMA runs while another is stopped: all to RUNNING_P2P/PRE_COPY_P2P before any
 * stops, all to RUNNING_P2P before any runs freely. A group that includes a device without P2P
 * support is refused unless forced. A failure rolls every device back to where it started.
 * The devices of one phase move in parallel (a thread per device but one, joined before the next
 * phase), so a phase costs its slowest device's arc, not the sum; a failing device does not stop
 * the others of its phase, and the rollback then starts from wherever each one got.
 */

#include "error-message.h"
#include "mig-state.h"
#include "vfio-dev.h"

#define TRANSITION_STEPS_MAX 16
#define TRANSITION_NO_RECOVER (-1)

typedef enum TransitionAction {
        TRANSITION_GET,
        TRANSITION_SET,
        TRANSITION_RECOVER, /* a SET to the caller's recover state */
        TRANSITION_RESET,
        _TRANSITION_ACTION_MAX,
} TransitionAction;

typedef struct TransitionStep {
        TransitionAction action;
        MigState requested;  /* SET and RECOVER */
        int result;          /* 0 or a negative errno */
        int observed;        /* the state read back (GET) or reached (SET/RESET on success); -1 unknown */
} TransitionStep;

typedef struct TransitionReport {
        TransitionStep steps[TRANSITION_STEPS_MAX];
        size_t n_steps;
        int initial;         /* state before, -1 if it could not be read */
        int final;           /* state after, -1 if unknown */
        MigVerdict verdict;  /* why the request was refused before reaching the device */
        bool reached;        /* the target was reached */
        bool recovered;      /* a failed SET was followed by reaching the recover state */
        bool reset;          /* the device was reset */
} TransitionReport;

/* A readable account, e.g. "SET stop-copy: Input/output error; GET: error; RESET: ok (running)". */
int transition_report_format(const TransitionReport *r, char **ret);

/*
 * Validates and performs one transition. recover_state is a MigState or TRANSITION_NO_RECOVER.
 * Returns 0 when the target was reached, with *ret_data_fd the new session fd or -EBADF.
 * Errors: -EOPNOTSUPP (device not migratable), -EINVAL (refused before the device; see
 * report->verdict), -EIO/-errno from the device (the SET failed; see the report for what
 * recovery did). ret_data_fd is written only on success; report always.
 */
int transition_run(VfioDev *d, MigState target, int recover_state, TransitionReport *report,
                   int *ret_data_fd, ErrorMessage *err);

typedef struct GroupMember {
        VfioDev *dev;
        MigState target;
        /* outputs */
        int result;          /* 0, or why this device failed or was not moved */
        int reached;         /* state at the end, -1 if unknown */
        int data_fd;         /* a session fd the final move opened, else -EBADF; the caller owns it */
        TransitionReport report; /* the step that failed, or the last step taken */
} GroupMember;

typedef enum GroupFlags {
        /* move a group that includes devices without P2P support, without quiescing them */
        GROUP_FORCE_WITHOUT_P2P = 1 << 0,
        /* one device after another within each phase, for drivers that cannot take concurrent
         * transitions of their devices (vfiomigd.conf "parallel-transitions": false) */
        GROUP_SERIAL = 1 << 1,
} GroupFlags;

/*
 * Moves every member to its target in P2P-safe order, each phase's members in parallel (unless
 * GROUP_SERIAL). The
 * VfioDev backends must allow operations on different devices from different threads at once
 * (each device is used by one thread at a time). With one member this is transition_run()
 * without a recover state, on the calling thread. Returns 0 when all reached their targets; else
 * the first error, after rolling all members back to their original states where possible
 * (each member's result and reached state say how that went). -EOPNOTSUPP with
 * GROUP_FORCE_WITHOUT_P2P unset: a member of a multi-device group lacks P2P; nothing was changed.
 */
int group_transition_run(GroupMember *members, size_t n, GroupFlags flags, ErrorMessage *err);
void group_members_close_fds(GroupMember *members, size_t n);
