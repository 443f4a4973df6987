/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Long device work off the event loop: run() executes in a thread of its own, then done() runs
 * back on the event loop, where everything else happens, so that done() may touch the daemon's
 * objects and reply to the bus. run() must touch only what the caller handed it.
 */

#include <systemd/sd-event.h>

typedef struct Worker Worker;
typedef void (*WorkerRun)(void *userdata);
typedef void (*WorkerDone)(void *userdata);

/* The worker frees itself after done(). */
int worker_start(sd_event *event, WorkerRun run, WorkerDone done, void *userdata);
