/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Migration jobs: one object per outgoing or incoming migration of a group of devices
 * (DESIGN §5). The job owns the devices for its duration (they answer Busy to anything else),
 * makes every device state transition on the main thread in P2P-safe order, and drives the
 * data path (stream/stream-engine.h) through its phases:
 *
 *   outgoing: setup (channels) → precopy (devices in PRE_COPY, data flowing, until the
 *             destination has loaded the initial data and the estimated stop-copy time fits the
 *             downtime limit, or Switchover()) → stop-copy (devices in STOP_COPY, the rest
 *             flowing) → completed (the destination committed; devices moved to STOP).
 *   incoming: setup (devices in RESUMING, waiting for channels) → precopy → stop-copy →
 *             resuming (committing RESUMING → STOP, then running if asked) → completed.
 *
 * Cancel or failure in any phase: the source devices return to RUNNING (the guest keeps
 * running), the destination devices are reset, and both jobs say why — except once the source
 * has handed the last byte to its senders (the destination may then have committed): without
 * a valid COMPLETE or an ABORT from the destination, the source keeps its devices stopped and the
 * job becomes indeterminate, until the orchestrator asks the destination job (Committed) and
 * calls migration_resolve() (proto/stream-protocol.md §3.2).
 */

#include <systemd/sd-event.h>

#include "error-message.h"
#include "macro.h"
#include "stream-engine.h"

typedef struct Manager Manager;
typedef struct Device Device;
typedef struct Migration Migration;

#define MIGRATIONS_RUNNING_MAX 8u       /* concurrent jobs */
#define MIGRATIONS_KEPT_MAX 16u         /* finished jobs kept for inspection */
#define MIGRATION_DOWNTIME_DEFAULT_MS 300u
#define MIGRATION_CHANNELS_DEFAULT 2u
#define MIGRATION_BLOB_MAX STREAM_BLOB_MAX
#define MIGRATION_TICK_USEC (500 * UINT64_C(1000))  /* progress and switchover decisions */
#define MIGRATION_STALL_TICKS 4u        /* pre-copy that stops shrinking for this long has converged */
#define MIGRATION_RATE_MIN_WAITING (UINT64_C(1) << 20) /* bytes waiting in a tick that measures the link */
#define MIGRATION_ESTIMATE_UNKNOWN UINT64_MAX
#define MIGRATION_BUDGET_MAX_GIB 16u     /* reassembly-budget cap, lowered to a quarter of the memory */
#define MIGRATION_STALL_TIMEOUT_MIN_MS 1000u
#define MIGRATION_TIMEOUT_MAX_MS (UINT64_C(24) * 3600 * 1000)
#define MIGRATION_SETUP_TIMEOUT_DEFAULT_MS (UINT64_C(600) * 1000)

typedef enum MigrationDirection {
        MIGRATION_OUTGOING,
        MIGRATION_INCOMING,
        _MIGRATION_DIRECTION_MAX,
} MigrationDirection;

typedef enum MigrationPhase {
        MIGRATION_SETUP,
        MIGRATION_PRECOPY,
        MIGRATION_STOP_COPY,
        MIGRATION_RESUMING,
        MIGRATION_COMPLETED,
        MIGRATION_FAILED,
        MIGRATION_CANCELLED,
        MIGRATION_INDETERMINATE,        /* outgoing: the outcome is unknown; devices stopped until Resolve */
        _MIGRATION_PHASE_MAX,
} MigrationPhase;

const char *migration_direction_to_string(MigrationDirection d);
const char *migration_phase_to_string(MigrationPhase p);
bool migration_phase_is_final(MigrationPhase p);
/* Whether addr is a loopback address (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104). */
bool migration_address_is_loopback(const struct sockaddr_storage *addr);

typedef struct MigrationOptions {
        unsigned channels;              /* outgoing: 1..64 */
        int precopy;                    /* outgoing: -1 = when every device supports it */
        uint64_t bandwidth_limit;       /* outgoing: bytes/s, 0 = none */
        bool switchover_manual;         /* outgoing: wait for Switchover() */
        uint64_t downtime_limit_ms;     /* outgoing: what automatic switchover aims for */
        bool force_without_p2p;         /* both: allow a group with a device lacking P2P */
        bool run;                       /* incoming: run the devices after committing */
        uint64_t budget;                /* incoming: reassembly bytes, 0 = default */
        uint64_t stall_timeout_ms;      /* both: 0 = default */
        uint64_t setup_timeout_ms;      /* incoming: how long a prepared job waits for its source, 0 = default */
        bool io_uring;                  /* both: false forces plain I/O (tests, comparisons) */
} MigrationOptions;

void migration_options_init(MigrationOptions *o);

struct Migration {
        Manager *manager;
        unsigned id;
        MigrationDirection direction;
        MigrationPhase phase;
        MigrationOptions options;
        Device *devices[STREAM_DEVICES_MAX];   /* NULL once detached (only possible after the job ended) */
        char *device_ids[STREAM_DEVICES_MAX];  /* kept for the record after a device is detached */
        size_t n_devices;
        bool initial_loaded[STREAM_DEVICES_MAX];
        unsigned initial_reinits;       /* rounds of initial data re-opened by REINIT, all devices */
        bool device_done[STREAM_DEVICES_MAX];     /* outgoing: END sent; incoming: END arrived and matched */
        bool precopy;                   /* decided at start */
        bool switchover_requested;      /* Switchover() was called, or auto decided */
        char *peer;                     /* "host:port" of the other side; incoming: once known */
        uint8_t token[STREAM_TOKEN_SIZE];
        char token_hex[2 * STREAM_TOKEN_SIZE + 1];

        StreamOut *out;
        StreamIn *in;
        sd_event_source *event_source;  /* the engine's eventfd */
        sd_event_source *timer;         /* progress, rate and the automatic switchover */

        StreamStats stats;              /* the engine's last word, kept after it is gone */
        StreamTransport transport;      /* what protects the channels (expected until they are up) */
        uint64_t bytes_expected;        /* 0 = unknown */
        uint64_t rate;                  /* bytes per second, smoothed */
        uint64_t rate_measured;         /* outgoing: smoothed rate over busy ticks (what the link can do), 0 unknown */
        uint64_t estimated_downtime_ms; /* outgoing: stop-copy time at rate_measured; MIGRATION_ESTIMATE_UNKNOWN */
        bool told_over_limit;
        uint64_t last_tick_usec, last_tick_bytes;
        uint64_t last_tick_backlog;     /* outgoing: bytes read from the devices, not yet sent */
        uint64_t precopy_pending;       /* outgoing: initial + dirty bytes at the last tick */
        uint64_t precopy_pending_low;   /* outgoing: the lowest pending seen */
        unsigned stalled_ticks;         /* outgoing: ticks since pre-copy pending last reached a new low */
        uint64_t start_usec, switchover_usec, end_usec;
        uint64_t downtime_ms;
        bool committed;                 /* the destination's devices hold the state (incoming: committed here;
                                         * outgoing: COMPLETE proved it, or Resolve said so) */
        char *error;                    /* why it failed or was cancelled */
        const char *error_name;         /* the org.vfiomig1.Error.* name of that */
};

/* The checks of StartMigration/PrepareIncoming that change nothing: devices (count, duplicates,
 * migratable, idle, state), options, the job cap. -EINVAL, -EOPNOTSUPP (not migratable, pre-copy
 * missing), -EXDEV (a group device lacks P2P), -EIO (a state cannot be read), -EBUSY, -E2BIG. */
/* The largest reassembly budget a job may ask for. */
uint64_t migration_budget_max(void);
int migration_check(Manager *m, Device **devices, size_t n, MigrationDirection d, const MigrationOptions *o,
                    ErrorMessage *err);
/* Parses "host:port" ("1.2.3.4:7179", "[::1]:7179"; numeric hosts only: the daemon never waits for
 * name resolution) and a 64-digit hex token. -EINVAL with a message. */
int migration_parse_peer(const char *peer, struct sockaddr_storage *ret, socklen_t *ret_len, ErrorMessage *err);
/* The same, for addresses to listen on: port 0 (any) may be allowed. */
int migration_parse_address(const char *address, bool port_zero_ok, struct sockaddr_storage *ret, socklen_t *ret_len,
                            ErrorMessage *err);
int migration_parse_token(const char *hex, uint8_t ret[static STREAM_TOKEN_SIZE], ErrorMessage *err);

/* Outgoing: connects to the peer in the background and returns the job in SETUP. */
int migration_start(Manager *m, Device **devices, size_t n, const char *peer, const char *token_hex,
                    const MigrationOptions *o, Migration **ret, ErrorMessage *err);
/* Incoming: moves the devices to RESUMING, registers with the listener and returns the job. */
int migration_prepare_incoming(Manager *m, Device **devices, size_t n, const MigrationOptions *o,
                               Migration **ret, ErrorMessage *err);
/* Outgoing in SETUP or PRECOPY only (-EBUSY otherwise): switch over as soon as the destination
 * has loaded the initial data. */
int migration_switchover(Migration *j, ErrorMessage *err);
/* -EBUSY once the job has finished, or while it is indeterminate (resolve it). */
int migration_cancel(Migration *j, ErrorMessage *err);
/* An indeterminate outgoing job: "committed" moves the devices to STOP and completes the job;
 * "not-committed" runs them again and fails it. -EINVAL for another outcome, -EBUSY unless the
 * job is indeterminate. */
int migration_resolve(Migration *j, const char *outcome, ErrorMessage *err);
/* The reassembly memory all incoming jobs may hold together by default: a quarter of the memory
 * (vfiomigd.conf's max-reassembly-bytes overrides it). */
uint64_t migration_budget_total_max(void);
/* A running job is cancelled first (reason: the daemon stops), without hooks. */
Migration *migration_free(Migration *j);
DEFINE_TRIVIAL_CLEANUP_FUNC(Migration *, migration_free);

Migration *manager_find_migration(Manager *m, unsigned id);
/* A device is being detached: finished jobs stop pointing at it (running ones own their devices,
 * which cannot be detached). */
void manager_forget_migrated_device(Manager *m, Device *d);
/* Cancels every running job (the daemon stops): sources run again, destinations are reset. */
void manager_stop_migrations(Manager *m, const char *why);
size_t manager_running_migrations(Manager *m);

uint64_t migration_bytes_transferred(Migration *j);
bool migration_initial_data_loaded(Migration *j);
unsigned migration_initial_data_reinits(Migration *j);
/* Since the job was created; until it ended once it has. */
uint64_t migration_duration_ms(Migration *j);
