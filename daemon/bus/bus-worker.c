/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <pthread.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "bus-worker.h"
#include "log.h"
#include "macro.h"

struct Worker {
        pthread_t thread;
        int eventfd;
        sd_event_source *source;
        WorkerRun run;
        WorkerDone done;
        void *userdata;
};

static void *worker_thread(void *p) {
        Worker *w = p;
        uint64_t one = 1;

        w->run(w->userdata);
        /* The event loop wakes up and finishes the job on its own thread. */
        (void) !write(w->eventfd, &one, sizeof one);
        return NULL;
}

void worker_join(Worker *w) {
        int r;

        r = pthread_join(w->thread, NULL);
        if (r != 0)
                log_error_errno(-r, "Failed to join a device worker: %m");
        w->done(w->userdata);
        sd_event_source_disable_unref(w->source);
        safe_close(w->eventfd);
        free(w);
}

static int on_worker_done(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        worker_join(userdata);
        return 0;
}

int worker_start(sd_event *event, WorkerRun run, WorkerDone done, void *userdata, Worker **ret) {
        Worker *w;
        int r;

        w = new0(Worker, 1);
        if (!w)
                return -ENOMEM;
        *w = (Worker) { .run = run, .done = done, .userdata = userdata };
        w->eventfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (w->eventfd < 0) {
                r = -errno;
                free(w);
                return r;
        }
        r = sd_event_add_io(event, &w->source, w->eventfd, EPOLLIN, on_worker_done, w);
        if (r < 0)
                goto fail;
        (void) sd_event_source_set_description(w->source, "device-worker");
        r = -pthread_create(&w->thread, NULL, worker_thread, w);
        if (r < 0)
                goto fail;
        if (ret)
                *ret = w;
        return 0;
fail:
        sd_event_source_disable_unref(w->source);
        safe_close(w->eventfd);
        free(w);
        return r;
}
