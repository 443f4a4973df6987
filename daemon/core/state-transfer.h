/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Saving a stopped device's state into a client's file descriptor, and loading it back, as one
 * operation each. Both run to completion in a worker thread (a device's state may take seconds to
 * move), touching only the backend device; the result is applied to the Device on the main
 * thread.
 *
 * Save: STOP → STOP_COPY, read the data fd to its end into the client's fd, STOP_COPY → STOP.
 * Load: STOP → RESUMING, write the client's bytes into the data fd, RESUMING → STOP (the commit).
 *
 * A load the device refused — a write error, or a commit that fails because the stream was
 * incomplete — ends with a reset: some drivers (mtty) keep bytes they refused and would load them
 * at the next RESUMING → STOP, so the refused data must never get a chance to commit. A load that
 * is cancelled or runs past its deadline ends the same way.
 *
 * The client is hostile: its pipe may never drain or never fill. Client I/O never blocks for
 * longer than STATE_TRANSFER_POLL_USEC; between waits the transfer checks its cancel flag and its
 * deadline, so a worker can always be stopped and joined within about that time.
 */

#include <stdatomic.h>

#include "error-message.h"
#include "transition.h"
#include "vfio-dev.h"

#define STATE_TRANSFER_CHUNK (UINT64_C(1) << 20)
#define STATE_TRANSFER_POLL_USEC (UINT64_C(100) * 1000)
/* Option "timeout" of SaveState/LoadState, in milliseconds: the whole transfer's deadline. */
#define STATE_TRANSFER_TIMEOUT_DEFAULT_MSEC (UINT64_C(600) * 1000)
#define STATE_TRANSFER_TIMEOUT_MAX_MSEC (UINT64_C(24) * 3600 * 1000)

typedef enum StateTransferKind {
        STATE_TRANSFER_SAVE,
        STATE_TRANSFER_LOAD,
} StateTransferKind;

typedef enum StateTransferFailure {
        STATE_TRANSFER_OK,
        STATE_TRANSFER_REFUSED_STATE,    /* the device was not stopped, or not migratable */
        STATE_TRANSFER_TRANSITION,       /* entering or leaving the session failed */
        STATE_TRANSFER_DEVICE_IO,        /* reading the device's data failed */
        STATE_TRANSFER_STREAM_REJECTED,  /* the device refused the data or the commit */
        STATE_TRANSFER_CLIENT_IO,        /* reading or writing the client's fd failed */
        STATE_TRANSFER_CANCELLED,        /* CancelTransfer, or the daemon is stopping */
        STATE_TRANSFER_TIMED_OUT,        /* the deadline passed */
} StateTransferFailure;

/* Why a transfer is asked to give up (StateTransfer.cancel). */
typedef enum StateTransferCancel {
        STATE_TRANSFER_RUN,
        STATE_TRANSFER_CANCEL_REQUESTED,  /* Device.CancelTransfer */
        STATE_TRANSFER_CANCEL_STOPPING,   /* the daemon is stopping */
} StateTransferCancel;

/* How the worker reaches the client's file without ever blocking on it for long. */
typedef enum StateTransferClientIo {
        STATE_TRANSFER_IO_FILE,         /* a regular file or block device: I/O does not wait for a peer */
        STATE_TRANSFER_IO_PIPE,         /* a pipe or FIFO: spliced to/from a relay pipe of our own with
                                         * SPLICE_F_NONBLOCK (the caller's file keeps its flags) */
        STATE_TRANSFER_IO_SOCKET,       /* send()/recv() with MSG_DONTWAIT on the client's socket */
} StateTransferClientIo;

typedef struct StateTransfer {
        /* in */
        StateTransferKind kind;
        VfioDev *dev;
        int client_fd;               /* owned by the transfer */
        StateTransferClientIo client_io;
        int relay[2];                /* STATE_TRANSFER_IO_PIPE only: our pipe, non-blocking both ends */
        size_t relay_pending;        /* bytes in the relay not yet spliced to the client */
        uint64_t deadline;           /* CLOCK_MONOTONIC µs; 0 = none */
        uint64_t timeout_msec;       /* what the deadline was made of, for the message */
        atomic_int cancel;           /* a StateTransferCancel, set by any thread */
        /* out */
        uint64_t bytes;
        int error;                   /* 0 or a negative errno */
        StateTransferFailure failure;
        int final_state;             /* -1 if unknown */
        bool reset;                  /* the device was reset */
        ErrorMessage message;
} StateTransfer;

/* Checks that can be made before starting, on the main thread. -EINVAL for a file descriptor the
 * transfer cannot bound in time (a character device, a file on FUSE) or opened the wrong way. */
int state_transfer_check(StateTransferKind kind, VfioDev *dev, int client_fd, ErrorMessage *err);
/* Sets t->client_fd to a descriptor of the transfer's own for client_fd (which stays the
 * caller's), and how to use it without ever blocking on it: t->kind must be set. O_NONBLOCK cannot
 * be set on the caller's open file (it would change under the caller), and reopening a pipe
 * through /proc needs access the daemon (without CAP_DAC_OVERRIDE) lacks to another user's pipe:
 * a pipe or FIFO is spliced through a relay pipe instead. */
int state_transfer_open_client(StateTransfer *t, int client_fd, ErrorMessage *err);
/* Closes what the transfer holds (state_transfer_run() does it when it ends). Idempotent. */
void state_transfer_close(StateTransfer *t);
/* The deadline for a timeout in milliseconds from now. */
uint64_t state_transfer_deadline(uint64_t timeout_msec);
/* Asks a running transfer to give up, from any thread; the first reason sticks. */
void state_transfer_cancel(StateTransfer *t, StateTransferCancel why);
/* Runs the whole transfer, blocking. Fills the out fields; returns t->error. */
int state_transfer_run(StateTransfer *t);
