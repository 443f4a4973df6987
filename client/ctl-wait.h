/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Following a migration job to its end: the signals of org.vfiomig1.Migration (PropertiesChanged
 * for progress, Completed for the result), an optional one-line progress display on stderr, and
 * Ctrl-C, which cancels the job once and keeps waiting for how it ends; a second Ctrl-C stops
 * waiting. The subscription is made before the job can end (for a new job, before the call that
 * starts it), so no signal is missed; the properties are read once more after it, so a job that
 * had ended already is noticed too.
 */

#include <systemd/sd-bus.h>

#include "ctl-bus.h"

typedef struct CtlMigrationWatch CtlMigrationWatch;

/* Subscribes to the signals of every migration job and to vfiomigd leaving the bus, and blocks
 * SIGINT, so that a Ctrl-C before the wait begins is kept for it. */
int ctl_migration_watch_new(sd_bus *bus, CtlMigrationWatch **ret);
/* Unsubscribes, discards a Ctrl-C still pending and restores the signal mask. NULL-safe. */
CtlMigrationWatch *ctl_migration_watch_free(CtlMigrationWatch *w);
DEFINE_TRIVIAL_CLEANUP_FUNC(CtlMigrationWatch *, ctl_migration_watch_free);

typedef struct CtlWaitResult {
        MigrationInfo info;     /* the job's properties at the end */
        char *result;           /* "completed", "failed" or "cancelled" */
        char *error;            /* Completed's error text, for when the job is gone before it was read */
        uint64_t duration_usec; /* from start_usec to the end; 0 when start_usec was 0 */
} CtlWaitResult;

void ctl_wait_result_done(CtlWaitResult *r);

/* Waits until the job at path has ended, drawing its progress on stderr when progress is set
 * (at most four times a second). start_usec is the CLOCK_MONOTONIC time the job was started, 0
 * when unknown. Returns 0 with ret filled however the job ended; -ECANCELED when a second Ctrl-C
 * stopped the wait; another negative errno (logged) when the job cannot be read, vfiomigd left
 * the bus or the connection broke. */
int ctl_migration_watch_wait(CtlMigrationWatch *w, const char *path, bool progress, uint64_t start_usec,
                             CtlWaitResult *ret);

/* CLOCK_MONOTONIC in µs. */
uint64_t ctl_now_usec(void);
