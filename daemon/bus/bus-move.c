/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <stdlib.h>
#include <string.h>

#include "bus-move.h"
#include "bus-util.h"
#include "bus-worker.h"
#include "log.h"
#include "strv.h"
#include "vfiomig1.h"

typedef struct MoveJob MoveJob;
struct MoveJob {
        BusService *service;
        MoveJob *prev, *next;        /* in service->moves */
        sd_bus_message *call;
        Worker *worker;
        bool group;
        DeviceMove one;
        GroupMove many;
        Device **devices;            /* the group's, owned */
        char **paths;                /* the group's object paths, for the reply */
        int *results;                /* the group's states reached */
};

int bus_move_error(sd_bus_error *error, Device *d, int r, const TransitionReport *report, const ErrorMessage *err) {
        _cleanup_free_ char *steps = NULL;

        if (r == -EOPNOTSUPP)
                return bus_error_from_message(error, VFIOMIG_ERROR_NOT_MIGRATABLE, r, err);
        if (r == -EBUSY)
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, err);
        if (r == -EBADMSG)
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_FAILED, r, err);
        if (report->verdict == MIG_VERDICT_CURRENT_ERROR)
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_IN_ERROR, r, err);
        if (report->verdict != MIG_VERDICT_OK)
                return bus_error_from_message(error, VFIOMIG_ERROR_INVALID_TRANSITION, r, err);
        if (report->n_steps <= 1)
                /* not even the state could be read */
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_FAILED, r, err);

        (void) transition_report_format(report, &steps);
        return sd_bus_error_setf(error, VFIOMIG_ERROR_TRANSITION_FAILED, "%s. Steps: %s", err->text,
                                 steps ?: "unavailable");
}

int bus_group_error(sd_bus_error *error, GroupOutcome outcome, int r, const ErrorMessage *err) {
        switch (outcome) {
        case GROUP_REFUSED_NOT_MIGRATABLE:
                return bus_error_from_message(error, VFIOMIG_ERROR_NOT_MIGRATABLE, r, err);
        case GROUP_REFUSED_INVALID_TRANSITION:
                return bus_error_from_message(error, VFIOMIG_ERROR_INVALID_TRANSITION, r, err);
        case GROUP_REFUSED_DEVICE_IN_ERROR:
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_IN_ERROR, r, err);
        case GROUP_REFUSED_NO_P2P:
                return bus_error_from_message(error, VFIOMIG_ERROR_P2P_REQUIRED, r, err);
        case GROUP_REFUSED_DUPLICATE:
                return bus_error_from_message(error, SD_BUS_ERROR_INVALID_ARGS, r, err);
        case GROUP_DEVICE_UNREADABLE:
        case GROUP_REFUSED_REFUSED_DATA:
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_FAILED, r, err);
        case GROUP_REFUSED_BUSY:
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, err);
        default:
                return bus_error_from_message(error, VFIOMIG_ERROR_TRANSITION_FAILED, r, err);
        }
}

static MoveJob *move_job_free(MoveJob *j) {
        if (!j)
                return NULL;
        if (j->service) {
                if (j->prev)
                        j->prev->next = j->next;
                else
                        j->service->moves = j->next;
                if (j->next)
                        j->next->prev = j->prev;
        }
        sd_bus_message_unref(j->call);
        free(j->devices);
        strv_free(j->paths);
        free(j->results);
        free(j);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(MoveJob *, move_job_free);

static void move_run(void *userdata) {
        MoveJob *j = userdata;

        if (j->group)
                manager_group_move_run(&j->many);
        else
                device_move_run(&j->one);
}

static int reply_group(MoveJob *j, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int *results = j->results;
        GroupOutcome outcome;
        ErrorMessage err = {};
        size_t n = j->many.n;
        int r;

        r = manager_group_move_end(&j->many, results, &outcome, &err);
        if (r < 0 && outcome == GROUP_FAILED) {
                /* Say where every device ended up: the caller gets no result array. */
                size_t len = strlen(err.text);
                for (size_t i = 0; i < n && len < sizeof err.text; i++)
                        len += (size_t) snprintf(err.text + len, sizeof err.text - len, "%s %s %s", i == 0 ? ". Now:" : ",",
                                                 j->devices[i]->id, mig_state_to_string(results[i]) ?: "unknown");
        }
        if (r < 0)
                return bus_group_error(error, outcome, r, &err);

        r = sd_bus_message_new_method_return(j->call, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(os)");
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                r = sd_bus_message_append(reply, "(os)", j->paths[i], mig_state_to_string(results[i]) ?: "");
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int reply_one(MoveJob *j, sd_bus_error *error) {
        ErrorMessage err = {};
        int r;

        r = device_move_end(&j->one, &err);
        if (r < 0 && j->one.reset)
                return bus_error_from_message(error, r == -EOPNOTSUPP ? VFIOMIG_ERROR_NOT_SUPPORTED : VFIOMIG_ERROR_DEVICE_FAILED,
                                              r, &err);
        if (r < 0)
                return bus_move_error(error, j->one.device, r, &j->one.report, &err);
        if (j->one.reset)
                return sd_bus_reply_method_return(j->call, NULL);
        return sd_bus_reply_method_return(j->call, "s", mig_state_to_string(j->one.target));
}

static void move_done(void *userdata) {
        _cleanup_(move_job_freep) MoveJob *j = userdata;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = j->group ? reply_group(j, &error) : reply_one(j, &error);
        if (r < 0) {
                if (!sd_bus_error_is_set(&error))
                        (void) sd_bus_error_set_errno(&error, r);
                r = sd_bus_reply_method_error(j->call, &error);
        }
        if (r < 0)
                log_warning_errno(r, "Failed to reply to %s, ignoring: %m", sd_bus_message_get_member(j->call));
}

static int start(BusService *s, MoveJob *j) {
        int r;

        r = worker_start(s->event, move_run, move_done, j, &j->worker);
        if (r < 0)
                return r;
        j->service = s;
        j->next = s->moves;
        if (s->moves)
                s->moves->prev = j;
        s->moves = j;
        return 1;
}

int bus_move_device(BusService *s, sd_bus_message *call, Device *d, bool reset, MigState target, int recover_state,
                    sd_bus_error *error) {
        _cleanup_(move_job_freep) MoveJob *j = NULL;
        ErrorMessage err = {};
        int r;

        j = new0(MoveJob, 1);
        if (!j)
                return -ENOMEM;
        r = device_move_begin(&j->one, d, NULL, reset, target, recover_state, &err);
        if (r < 0)
                return bus_move_error(error, d, r, &j->one.report, &err);
        j->call = sd_bus_message_ref(call);
        r = start(s, j);
        if (r < 0) {
                device_move_abort(&j->one);
                return r;
        }
        TAKE_PTR(j);
        return 1;
}

int bus_move_group(BusService *s, sd_bus_message *call, Device **devices, char **paths, size_t n, MigState target,
                   bool force_without_p2p, sd_bus_error *error) {
        _cleanup_(move_job_freep) MoveJob *j = NULL;
        GroupOutcome outcome = GROUP_FAILED;
        ErrorMessage err = {};
        int r;

        j = new0(MoveJob, 1);
        if (!j) {
                free(devices);
                strv_free(paths);
                return -ENOMEM;
        }
        j->group = true;
        j->devices = devices;
        j->paths = paths;
        j->results = new0(int, n);
        if (!j->results)
                return -ENOMEM;
        r = manager_group_move_begin(&j->many, s->manager, NULL, devices, n, target, force_without_p2p, &outcome, &err);
        if (r < 0)
                return bus_group_error(error, outcome, r, &err);
        j->call = sd_bus_message_ref(call);
        r = start(s, j);
        if (r < 0) {
                manager_group_move_abort(&j->many);
                return r;
        }
        TAKE_PTR(j);
        return 1;
}

void bus_moves_join(BusService *s) {
        while (s->moves) {
                log_info("Waiting for a state change of %s to end.",
                         s->moves->group ? "a group of devices" : s->moves->one.device->id);
                worker_join(s->moves->worker); /* runs move_done(), which unlinks and frees the job */
        }
}
