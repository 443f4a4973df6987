/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * A device the daemon owns: a backend device plus what the daemon remembers about it — its
 * bus id, the last state it saw, the data fd of an open migration session, and an account of
 * the last transition. State changes found or made here are reported to the manager's hooks so
 * that the bus layer can emit PropertiesChanged.
 */

#include "error-message.h"
#include "transition.h"
#include "vfio-dev.h"

typedef struct Manager Manager;
typedef struct AddressSpace AddressSpace;
typedef struct Migration Migration;
typedef struct StateTransfer StateTransfer;

/* Handed-out device fds, one client (a D-Bus peer) each, are capped per device. */
#define DEVICE_CLIENTS_MAX 16u

typedef struct Device {
        Manager *manager;
        char *id;               /* "sim_gpu0", "pci_0000_3b_00_1", "mdev_<uuid with _>" */
        VfioDev *dev;
        AddressSpace *space;    /* the DMA address space it is attached to, or NULL */
        char **clients;         /* unique bus names of the peers holding a copy of its fd */
        MigState state;         /* last state read or reached */
        bool state_known;
        int session_fd;         /* data fd of the open save/load session, or -EBADF */
        char *last_transition;  /* "running → stop-copy: ok", or the failure report */
        const char *busy;       /* what a worker thread is doing with the device ("saving its state"), or NULL */
        bool moving;            /* a DeviceMove or group move runs: device_refresh_state() keeps to the cache */
        StateTransfer *transfer; /* the SaveState/LoadState that worker runs, or NULL */
        /* A refused LoadState left its bytes in the device (still RESUMING) and no reset cleared
         * them: any move out of RESUMING would commit them, so only a reset may follow. */
        bool holds_refused_data;
        Migration *migration;   /* the job that owns the device while it migrates, or NULL */
        uint8_t *blob;          /* opaque per-device data travelling with a migration (≤ 1 MiB) */
        size_t blob_size;
} Device;

/* The bus id of a device: "sim_NAME", "pci_DDDD_BB_DD_F", "mdev_<uuid with _>", else "dev_<escaped>". */
int device_id_from_vfio_dev(const VfioDev *d, char **ret);

int device_new(Manager *m, VfioDev *dev, Device **ret);
Device *device_free(Device *d);
DEFINE_TRIVIAL_CLEANUP_FUNC(Device *, device_free);

/* Reads the state from the device, updating the cache (and notifying when it changed). */
int device_refresh_state(Device *d, MigState *ret);

/* -EBUSY with a message while a worker thread owns the device. */
int device_check_idle(Device *d, ErrorMessage *err);

/* device_check_idle, and -EBADMSG while the device holds refused migration data. */
int device_check_state_change(Device *d, ErrorMessage *err);
/* The same on behalf of a migration job: the job's own devices are not busy for it. */
int device_check_state_change_for(Device *d, const Migration *owner, ErrorMessage *err);

/* Replaces the blob (copied; size 0 clears it). -E2BIG over MIGRATION_BLOB_MAX, -EBUSY while
 * the device migrates. */
int device_set_blob(Device *d, const void *data, size_t size, ErrorMessage *err);
/* Takes ownership of data (received with a migration). */
void device_adopt_blob(Device *d, uint8_t *data, size_t size);
/* After a failed LoadState: remembers whether the device still holds the bytes it refused. */
void device_note_refused_load(Device *d, bool reset, int final_state);

/* A validated transition with recovery (core/transition.h); keeps the session fd, the cached
 * state and LastTransition up to date. *ret_report is always filled. */
/* A state change or reset in three parts, so that the slow middle can run on a worker thread:
 * begin checks and marks the device busy (on the event loop), run touches only the VfioDev and
 * the DeviceMove (any thread), end records the outcome and clears busy (on the event loop). */
typedef struct DeviceMove {
        Device *device;
        bool reset;
        MigState target;
        int recover_state;          /* or TRANSITION_NO_RECOVER */
        /* run()'s results */
        int result;
        int data_fd;                /* a session the move opened; end() hands it to the device */
        TransitionReport report;
        ErrorMessage err;
} DeviceMove;

int device_move_begin(DeviceMove *mv, Device *d, const Migration *owner, bool reset, MigState target,
                      int recover_state, ErrorMessage *err);
void device_move_run(DeviceMove *mv);
int device_move_end(DeviceMove *mv, ErrorMessage *err);
/* Instead of run and end, when run never started: the device is idle again, nothing recorded. */
void device_move_abort(DeviceMove *mv);

/* All three parts on the calling thread. */
int device_set_state(Device *d, MigState target, int recover_state, TransitionReport *ret_report, ErrorMessage *err);
int device_reset(Device *d, ErrorMessage *err);
/* The same on behalf of the migration job that owns the device. */
int device_reset_for(Device *d, const Migration *owner, ErrorMessage *err);
/* -ENOMSG when the device has no open pre-copy session. */
int device_precopy_info(Device *d, uint64_t *ret_initial, uint64_t *ret_dirty, ErrorMessage *err);
int device_stop_copy_size(Device *d, uint64_t *ret, ErrorMessage *err);

/* -EINVAL incompatible backends, -EBUSY attached to another space already. */
int device_check_attach_space(Device *d, AddressSpace *s, ErrorMessage *err);
int device_attach_space(Device *d, AddressSpace *s, ErrorMessage *err);
/* Releases the device from its space (when it is detached from the daemon). */
void device_leave_space(Device *d);

/* A copy of the device fd for client (a unique bus name), recorded as a client. -E2BIG over
 * DEVICE_CLIENTS_MAX clients, -EOPNOTSUPP for a device without an fd. */
int device_open_fd(Device *d, const char *client, int *ret_fd, ErrorMessage *err);
bool device_has_client(Device *d, const char *client);
void device_forget_client(Device *d, const char *client);
size_t device_client_count(Device *d);
/* Forgets every client and resets the device: a descriptor cannot be taken back from another
 * process, but whoever still holds one finds a freshly reset device, with its migration
 * session (if any) ended. */
int device_revoke_clients(Device *d, ErrorMessage *err);

/* After an operation: closes the session fd if the device left its session states, records the
 * state, and notifies. Used by group moves, which run the transitions themselves. */
void device_note_outcome(Device *d, int reached, int data_fd, const char *summary);
