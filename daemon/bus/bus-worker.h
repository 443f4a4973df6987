/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Long device work off the event loop: run() executes in a thread of its own, then done() runs
 * back on the event loop, where everything else happens, so that done() may touch the daemon's
 * objects and reply to the bus. run() must touch only what the caller handed it, and must end
 * soon when the caller asks it to (through what it handed over): the thread is joined before
 * anything run() uses is freed, by worker_join() at the latest.
 */

#include <systemd/sd-event.h>

typedef struct Worker Worker;
typedef void (*WorkerRun)(void *userdata);
typedef void (*WorkerDone)(void *userdata);

/* The worker frees itself after done(); *ret (may be NULL) is valid until then. */
int worker_start(sd_event *event, WorkerRun run, WorkerDone done, void *userdata, Worker **ret);
/* Waits for run() to return (the caller has asked it to end), then runs done() and frees the
 * worker, on the calling (event loop) thread: for shutdown, when the loop no longer dispatches. */
void worker_join(Worker *w);
