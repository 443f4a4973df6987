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
 * at the next RESUMING → STOP, so the refused data must never get a chance to commit.
 */

#include "error-message.h"
#include "transition.h"
#include "vfio-dev.h"

#define STATE_TRANSFER_CHUNK (UINT64_C(1) << 20)

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
        STATE_TRANSFER_CANCELLED,
} StateTransferFailure;

typedef struct StateTransfer {
        /* in */
        StateTransferKind kind;
        VfioDev *dev;
        int client_fd;               /* owned by the transfer */
        const volatile bool *cancel; /* checked between chunks; may be NULL */
        /* out */
        uint64_t bytes;
        int error;                   /* 0 or a negative errno */
        StateTransferFailure failure;
        int final_state;             /* -1 if unknown */
        bool reset;                  /* the device was reset */
        ErrorMessage message;
} StateTransfer;

/* Checks that can be made before starting, on the main thread. */
int state_transfer_check(StateTransferKind kind, VfioDev *dev, int client_fd, ErrorMessage *err);
/* Runs the whole transfer, blocking. Fills the out fields; returns t->error. */
int state_transfer_run(StateTransfer *t);
