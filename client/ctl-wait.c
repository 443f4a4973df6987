/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <inttypes.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <systemd/sd-event.h>
#include <time.h>

#include "ctl-output.h"
#include "ctl-parse.h"
#include "ctl-wait.h"
#include "vfiomig1.h"

/* The display is redrawn at most this often, however fast the daemon signals. */
#define REDRAW_INTERVAL_USEC (UINT64_C(250) * 1000)

struct CtlMigrationWatch {
        sd_bus *bus;
        sd_event *event;
        sd_bus_slot *changed_slot, *completed_slot, *owner_slot, *disconnected_slot, *cancel_slot;
        sd_event_source *sigint_source, *redraw_source;
        sigset_t saved_mask;
        bool mask_saved;

        char *path;
        MigrationInfo info;
        bool finished;
        char *result, *error;
        int failure;            /* negative errno: vfiomigd or the bus went away, or a second Ctrl-C */

        unsigned n_sigint;

        bool progress;
        bool drawn;             /* a progress line is on the screen */
        uint64_t last_draw_usec;
};

uint64_t ctl_now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * UINT64_C(1000000) + (uint64_t) ts.tv_nsec / 1000;
}

void ctl_wait_result_done(CtlWaitResult *r) {
        if (!r)
                return;
        migration_info_done(&r->info);
        free(r->result);
        free(r->error);
        *r = (CtlWaitResult) {};
}

static void progress_clear(CtlMigrationWatch *w) {
        if (!w->drawn)
                return;
        fputs("\r\033[K", stderr);
        fflush(stderr);
        w->drawn = false;
}

static void progress_draw(CtlMigrationWatch *w) {
        _cleanup_free_ char *line = NULL;
        const MigrationInfo *i = &w->info;
        MigrationProgress p = {
                .phase = i->phase,
                .transferred = i->bytes_transferred,
                .expected = i->bytes_expected,
                .rate = i->rate,
                .ready_for_switchover = streq_ptr(i->direction, "outgoing") &&
                                        streq_ptr(i->switchover_mode, "manual") && streq_ptr(i->phase, "precopy") &&
                                        i->initial_data_loaded && !i->switchover_requested,
                .id = i->id,
        };
        struct winsize ws = {};
        size_t width = 0;

        if (!w->progress)
                return;

        line = format_migration_progress(&p);
        if (!line)
                return; /* out of memory for a progress line: the display just stays as it was */

        /* A line wider than the terminal would wrap, and '\r' would then redraw only its tail. */
        if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) >= 0 && ws.ws_col > 1)
                width = (size_t) ws.ws_col - 1;
        if (width > 0 && strlen(line) > width)
                line[width] = 0;

        fprintf(stderr, "\r%s\033[K", line);
        fflush(stderr);
        w->drawn = true;
        w->last_draw_usec = ctl_now_usec();
}

static int on_redraw(sd_event_source *s, uint64_t usec, void *userdata) {
        progress_draw(userdata);
        return 0;
}

/* Draws now, or arms the timer for when the last drawing is old enough. */
static void progress_update(CtlMigrationWatch *w) {
        uint64_t now, due;
        int r;

        if (!w->progress)
                return;

        now = ctl_now_usec();
        due = w->last_draw_usec + REDRAW_INTERVAL_USEC;
        if (!w->drawn || now >= due) {
                progress_draw(w);
                return;
        }

        if (w->redraw_source) {
                int enabled = SD_EVENT_OFF;

                (void) sd_event_source_get_enabled(w->redraw_source, &enabled);
                if (enabled != SD_EVENT_OFF)
                        return; /* already due */
                r = sd_event_source_set_time(w->redraw_source, due);
                if (r >= 0)
                        r = sd_event_source_set_enabled(w->redraw_source, SD_EVENT_ONESHOT);
        } else
                r = sd_event_add_time(w->event, &w->redraw_source, CLOCK_MONOTONIC, due, /* accuracy= */ 0,
                                      on_redraw, w);
        if (r < 0)
                progress_draw(w); /* no timer: draw a little too often rather than show stale numbers */
}

static void finish(CtlMigrationWatch *w, const char *result, const char *error) {
        if (w->finished)
                return;
        w->finished = true;
        free(w->result);
        w->result = result ? strdup(result) : NULL;
        if (error && *error && !w->error)
                w->error = strdup(error);
}

static void fail(CtlMigrationWatch *w, int error) {
        if (w->failure == 0)
                w->failure = error;
}

static bool is_our_job(CtlMigrationWatch *w, sd_bus_message *m) {
        return w->path && streq_ptr(sd_bus_message_get_path(m), w->path);
}

static int on_properties_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        CtlMigrationWatch *w = userdata;
        _cleanup_strv_free_ char **invalidated = NULL;
        const char *interface;
        int r;

        if (!is_our_job(w, m) || w->finished)
                return 0;

        r = sd_bus_message_read(m, "s", &interface);
        if (r < 0 || !streq(interface, VFIOMIG_MIGRATION_INTERFACE))
                return 0;
        r = ctl_read_properties(m, ctl_migration_properties, &w->info, w->path);
        if (r < 0)
                return 0; /* logged; the next signal or the final read sets things right */
        r = sd_bus_message_read_strv(m, &invalidated);
        if (r >= 0 && invalidated && invalidated[0]) {
                /* Changed without the value: read them all again. A job gone meanwhile ends the
                 * wait below when its Completed arrives, or the final read says so. */
                progress_clear(w);
                r = ctl_get_migration_info(w->bus, w->path, /* gone_ok= */ true, &w->info);
                if (r < 0)
                        return 0;
        }

        /* Completed ends the wait; a final phase does too, so that a lost signal cannot hang us. */
        if (ctl_phase_ends_wait(w->info.phase)) {
                finish(w, w->info.phase, NULL);
                return 0;
        }
        progress_update(w);
        return 0;
}

static int on_completed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        CtlMigrationWatch *w = userdata;
        const char *result, *error;
        int r;

        if (!is_our_job(w, m))
                return 0;

        r = sd_bus_message_read(m, "ss", &result, &error);
        if (r < 0) {
                log_error_errno(r, "Failed to parse the Completed signal of %s: %m", w->path);
                finish(w, NULL, NULL);
                return 0;
        }
        /* The signal's result wins over a phase read earlier: it is the daemon's last word. */
        w->finished = false;
        free(w->error);
        w->error = NULL;
        finish(w, result, error);
        return 0;
}

static int on_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        CtlMigrationWatch *w = userdata;
        const char *name, *old_owner, *new_owner;

        if (!w->path || w->finished)
                return 0;
        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 || !streq(name, VFIOMIG_BUS_NAME))
                return 0;
        if (*new_owner)
                return 0;

        progress_clear(w);
        log_error("vfiomigd left the bus while migration %" PRIu32 " was running: how it ended is unknown.",
                  w->info.id);
        log_hint("'journalctl -u vfiomigd' tells why it stopped");
        fail(w, -ESRCH);
        return 0;
}

static int on_disconnected(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        CtlMigrationWatch *w = userdata;

        if (w->finished)
                return 0;
        progress_clear(w);
        log_error("Lost the bus connection while waiting for migration %" PRIu32 ".", w->info.id);
        fail(w, -ECONNRESET);
        return 0;
}

static int on_cancel_reply(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        CtlMigrationWatch *w = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(m);

        w->cancel_slot = sd_bus_slot_unref(w->cancel_slot);
        if (!e)
                return 0;
        /* Busy: it ended before the Cancel arrived, and the Completed signal says how. */
        if (w->finished || sd_bus_error_has_name(e, VFIOMIG_ERROR_BUSY))
                return 0;

        progress_clear(w);
        (void) ctl_log_call_error(w->bus, "Cancel", e, sd_bus_message_get_errno(m));
        progress_update(w);
        return 0;
}

static int on_sigint(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        CtlMigrationWatch *w = userdata;
        int r;

        if (w->finished)
                return 0;

        if (++w->n_sigint > 1) {
                progress_clear(w);
                fail(w, -ECANCELED);
                return 0;
        }

        progress_clear(w);
        fprintf(stderr, PROGRAM_NAME ": Cancelling migration %" PRIu32 "; press Ctrl-C again to stop waiting.\n",
                w->info.id);
        r = sd_bus_call_method_async(w->bus, &w->cancel_slot, VFIOMIG_BUS_NAME, w->path, VFIOMIG_MIGRATION_INTERFACE,
                                     "Cancel", on_cancel_reply, w, NULL);
        if (r < 0)
                log_error_errno(r, "Failed to call Cancel on %s: %m", w->path);
        progress_update(w);
        return 0;
}

CtlMigrationWatch *ctl_migration_watch_free(CtlMigrationWatch *w) {
        if (!w)
                return NULL;

        progress_clear(w);
        sd_bus_slot_unref(w->changed_slot);
        sd_bus_slot_unref(w->completed_slot);
        sd_bus_slot_unref(w->owner_slot);
        sd_bus_slot_unref(w->disconnected_slot);
        sd_bus_slot_unref(w->cancel_slot);
        sd_event_source_unref(w->sigint_source);
        sd_event_source_unref(w->redraw_source);
        if (w->bus && w->event)
                (void) sd_bus_detach_event(w->bus);
        sd_event_unref(w->event);
        sd_bus_unref(w->bus);

        if (w->mask_saved) {
                sigset_t ss;

                /* A Ctrl-C nobody read any more must not kill us once it is unblocked. */
                sigemptyset(&ss);
                sigaddset(&ss, SIGINT);
                while (sigtimedwait(&ss, NULL, &(struct timespec) {}) == SIGINT)
                        ;
                (void) sigprocmask(SIG_SETMASK, &w->saved_mask, NULL);
        }

        migration_info_done(&w->info);
        free(w->path);
        free(w->result);
        free(w->error);
        free(w);
        return NULL;
}

int ctl_migration_watch_new(sd_bus *bus, CtlMigrationWatch **ret) {
        _cleanup_(ctl_migration_watch_freep) CtlMigrationWatch *w = NULL;
        sigset_t ss;
        int r;

        w = new0(CtlMigrationWatch, 1);
        if (!w)
                return log_error_errno(ENOMEM, "Out of memory.");
        w->bus = sd_bus_ref(bus);

        sigemptyset(&ss);
        sigaddset(&ss, SIGINT);
        if (sigprocmask(SIG_BLOCK, &ss, &w->saved_mask) < 0)
                return log_error_errno(errno, "Failed to block SIGINT: %m");
        w->mask_saved = true;

        r = sd_event_new(&w->event);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate event loop: %m");

        /* By path namespace, since a new job's path is known only once it exists; the callbacks
         * keep only the signals of the job waited for. */
        r = sd_bus_add_match(bus, &w->changed_slot,
                             "type='signal',sender='" VFIOMIG_BUS_NAME "',"
                             "interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',"
                             "path_namespace='" VFIOMIG_MIGRATION_PATH_PREFIX "',"
                             "arg0='" VFIOMIG_MIGRATION_INTERFACE "'",
                             on_properties_changed, w);
        if (r >= 0)
                r = sd_bus_add_match(bus, &w->completed_slot,
                                     "type='signal',sender='" VFIOMIG_BUS_NAME "',"
                                     "interface='" VFIOMIG_MIGRATION_INTERFACE "',member='Completed',"
                                     "path_namespace='" VFIOMIG_MIGRATION_PATH_PREFIX "'",
                                     on_completed, w);
        if (r >= 0)
                r = sd_bus_add_match(bus, &w->owner_slot,
                                     "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                                     "interface='org.freedesktop.DBus',member='NameOwnerChanged',"
                                     "arg0='" VFIOMIG_BUS_NAME "'",
                                     on_name_owner_changed, w);
        if (r < 0)
                return log_error_errno(r, "Failed to subscribe to the signals of migration jobs: %m");
        /* Local to sd-bus: nothing is sent to the bus for this one. */
        r = sd_bus_match_signal(bus, &w->disconnected_slot, "org.freedesktop.DBus.Local",
                                "/org/freedesktop/DBus/Local", "org.freedesktop.DBus.Local", "Disconnected",
                                on_disconnected, w);
        if (r < 0)
                return log_error_errno(r, "Failed to watch the bus connection: %m");

        *ret = TAKE_PTR(w);
        return 0;
}

int ctl_migration_watch_wait(CtlMigrationWatch *w, const char *path, bool progress, uint64_t start_usec,
                             CtlWaitResult *ret) {
        int r;

        if (!w || !path || !ret)
                return -EINVAL;

        free(w->path);
        w->path = strdup(path);
        if (!w->path)
                return log_error_errno(ENOMEM, "Out of memory.");
        w->progress = progress;

        r = sd_event_add_signal(w->event, &w->sigint_source, SIGINT, on_sigint, w);
        if (r < 0)
                return log_error_errno(r, "Failed to handle SIGINT: %m");
        r = sd_bus_attach_event(w->bus, w->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, "Failed to attach the bus to the event loop: %m");

        /* After subscribing: a job that ended before is seen here, one that ends after by signal. */
        r = ctl_get_migration_info(w->bus, path, /* gone_ok= */ false, &w->info);
        if (r < 0)
                return r;

        if (ctl_phase_ends_wait(w->info.phase))
                finish(w, w->info.phase, NULL);
        else
                progress_draw(w);
        /* Iteration by iteration rather than sd_event_loop(): leaving that runs the exit source
         * sd_bus_attach_event() installs, which closes the bus we still want to read from. */
        while (!w->finished && w->failure == 0) {
                r = sd_event_run(w->event, UINT64_MAX);
                if (r < 0)
                        return log_error_errno(r, "Failed to run the event loop: %m");
        }
        progress_clear(w);
        if (w->failure < 0)
                return w->failure;

        /* The last word on the numbers. The job may have been dropped from the daemon's list of
         * finished jobs meanwhile; then what the signals said is all there is. */
        r = ctl_get_migration_info(w->bus, path, /* gone_ok= */ true, &w->info);
        if (r < 0)
                return r;

        *ret = (CtlWaitResult) {
                .info = w->info,
                .result = TAKE_PTR(w->result),
                .error = TAKE_PTR(w->error),
                .duration_usec = start_usec > 0 ? ctl_now_usec() - start_usec : 0,
        };
        w->info = (MigrationInfo) {};
        if (!ret->result) {
                ret->result = strdup(ret->info.phase ?: "failed");
                if (!ret->result)
                        return log_error_errno(ENOMEM, "Out of memory.");
        }
        return 0;
}
