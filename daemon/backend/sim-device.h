/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The simulated migratable device: the embedded default that lets the whole product run on a
 * machine without VFIO hardware, and what most tests drive. It is faithful rather than friendly:
 * the kernel's arc table and multi-step walk (one arc at a time, failing where a driver fails),
 * a real data fd per session, precopy info only in PRE_COPY states, initial bytes that shrink as
 * they are read and dirty bytes that grow while the device runs, an exact MIG_DATA_SIZE,
 * ENOMSG at the temporary end of pre-copy (0 with mtty quirks), PRE_COPY→STOP_COPY continuing on
 * the same fd, a RESUMING side that refuses corrupt data and fails RESUMING→STOP on a truncated
 * stream (staying in RESUMING, as mtty does), ERROR left only by reset, and reset ending every
 * session (I/O on an old data fd: ENODEV), and PRECOPY_INFOv2 with REINIT (reinit_after).
 *
 * Device state is state_size bytes in 64 KiB blocks whose content follows from (seed, block,
 * generation); see sim-stream.h. The first precopy_size bytes (rounded up to whole blocks) are
 * offered during pre-copy; the rest only in stop-copy. While running the device rewrites
 * dirty_rate bytes per second (whole blocks, chosen pseudo-randomly from the seed).
 *
 * The data fd is one end of a socket pair whose other end the device holds: it identifies the
 * session and reports its end (poll sees HUP), but the stream itself is produced and consumed
 * through the data_read()/data_write() operations. Raw read(2) on it sees no data.
 */

#include "vfio-dev.h"

#define SIM_STATE_SIZE_MAX (UINT64_C(64) << 30)
#define SIM_DIRTY_RATE_MAX (UINT64_C(64) << 30)
#define SIM_NAME_MAX 64
#define SIM_ARC_LATENCY_MAX_USEC (UINT64_C(60) * 1000000)

typedef uint64_t (*SimClock)(void *userdata);

typedef struct SimConfig {
        uint64_t state_size;
        uint64_t precopy_size;      /* unless precopy_size_set: a quarter MiB, at most state_size */
        bool precopy_size_set;
        uint64_t dirty_rate;        /* bytes per second while running */
        uint32_t migration_flags;   /* VFIO_MIGRATION_* */
        uint64_t seed;
        bool seed_set;              /* false: derived from the device name */
        bool mtty_quirks;           /* read() returns 0, not ENOMSG, at the temporary end of pre-copy */
        /* Device reconfiguration during pre-copy: once reinit_after bytes of a session were read
         * in pre-copy, every pre-copy block is rewritten and becomes initial data again. With
         * PRECOPY_INFOv2 the next precopy info reports VFIO_PRECOPY_INFO_REINIT and initial bytes
         * start over, dirty bytes reset; with v1 the rewritten blocks are dirty data. Once per
         * session; 0 never. Not kept across a daemon restart. */
        uint64_t reinit_after;
        bool refuse_precopy_v2;     /* the PRECOPY_INFOv2 opt-in fails (EINVAL), like a driver before 7.2;
                                     * not kept across a daemon restart either (persist.c predates both) */
        /* Fault injection, one bit per arc (from * 8 + to): executing the arc fails with EIO and
         * leaves the device in ERROR (fail_to_error) or where it was (fail_in_place). */
        uint64_t fail_to_error;
        uint64_t fail_in_place;
        /* Each arc (or each arc in latency_arcs, when not 0) takes this long, with the device's
         * lock held as a driver holds its state mutex: a GET waits too. */
        uint64_t arc_latency_usec;
        uint64_t latency_arcs;
        SimClock clock;             /* microseconds; NULL = CLOCK_MONOTONIC */
        void *clock_userdata;
} SimConfig;

#define SIM_ARC_BIT(from, to) (UINT64_C(1) << ((unsigned) (from) * 8u + (unsigned) (to)))

void sim_config_init(SimConfig *c);
int sim_config_validate(const SimConfig *c, ErrorMessage *err);
/* Parses "from>to" (state names, e.g. "stop>stop-copy") into an arc bit. */
int sim_arc_from_string(const char *s, uint64_t *ret_bit);
/* Device names: 1..SIM_NAME_MAX characters of [A-Za-z0-9_], so "sim_NAME" is a D-Bus path element. */
bool sim_name_valid(const char *name);

int sim_device_new(const char *name, const SimConfig *c, VfioDev **ret, ErrorMessage *err);

/* True if d is a simulated device. */
bool vfio_dev_is_sim(const VfioDev *d);
/* Identifies the current device state (seed and every block's generation): equal digests on
 * source and destination prove a migration carried the state exactly. */
uint64_t sim_device_state_digest(VfioDev *d);
const SimConfig *sim_device_config(VfioDev *d);
/* Rewrites n blocks now, as if the device had run; for tests that need dirty data without
 * waiting for the clock. Only while running. */
int sim_device_dirty_blocks(VfioDev *d, uint64_t n);
/* Reconfigures the device now, as the reinit option does after its byte count: for tests that
 * need a REINIT at a chosen moment. Only in a pre-copy save session, once per session (-EBUSY). */
int sim_device_reconfigure(VfioDev *d);

/* What survives a restart of the daemon: configuration, migration state and content. Sessions
 * do not: like a kernel device whose data fd died with its process, a device found in a
 * session state has no session, and leaving RESUMING then needs a reset. */
typedef struct SimSnapshot {
        SimConfig config;        /* clock not included */
        MigState state;
        uint64_t seed;
        uint64_t nblocks;
        uint32_t *gens;          /* nblocks generations */
} SimSnapshot;

int sim_device_snapshot(VfioDev *d, SimSnapshot *ret);
void sim_snapshot_done(SimSnapshot *s);
/* Recreates a device from a snapshot, adopting device_fd (the descriptor clients were given). */
int sim_device_restore(const char *name, const SimSnapshot *s, int device_fd, VfioDev **ret, ErrorMessage *err);
