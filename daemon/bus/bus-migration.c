/* SPDX-License-Identifier: GPL-2.0-or-later */

/* org.vfiomig1.Migration at /org/vfiomig1/migration/_N, one object per migration job. */

#include <stdlib.h>
#include <string.h>

#include "bus-polkit.h"
#include "bus-service.h"
#include "bus-util.h"
#include "log.h"
#include "migration.h"
#include "vfiomig1.h"

static BusService *service_of(Migration *j) {
        return j->manager->hooks.userdata;
}

int bus_migration_path(unsigned id, char **ret) {
        return asprintf(ret, VFIOMIG_MIGRATION_PATH_PREFIX "/_%u", id) < 0 ? -ENOMEM : 0;
}

Migration *bus_migration_from_path(BusService *s, const char *path, sd_bus_error *error) {
        const size_t n = strlen(VFIOMIG_MIGRATION_PATH_PREFIX);
        Migration *j = NULL;
        unsigned long id = 0;

        if (path && strncmp(path, VFIOMIG_MIGRATION_PATH_PREFIX, n) == 0 && path[n] == '/' && path[n + 1] == '_' &&
            path[n + 2] >= '1' && path[n + 2] <= '9') {
                char *end;
                id = strtoul(path + n + 2, &end, 10);
                if (*end != 0 || id > UINT32_MAX)
                        id = 0;
                else
                        j = manager_find_migration(s->manager, (unsigned) id);
        }
        if (!j && id > 0)
                sd_bus_error_setf(error, VFIOMIG_ERROR_NO_SUCH_MIGRATION,
                                  "No migration job %lu: it never existed, or it ended and was forgotten", id);
        else if (!j)
                sd_bus_error_setf(error, VFIOMIG_ERROR_NO_SUCH_MIGRATION, "No migration at %s", path ?: "");
        return j;
}

int bus_migration_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                              void **ret_found, sd_bus_error *error) {
        Migration *j = bus_migration_from_path(userdata, path, NULL);

        if (!j)
                return 0;
        *ret_found = j;
        return 1;
}

int bus_migration_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***ret_nodes,
                                  sd_bus_error *error) {
        BusService *s = userdata;
        _cleanup_strv_free_ char **nodes = new0(char *, s->manager->n_migrations + 1);

        if (!nodes)
                return -ENOMEM;
        for (size_t i = 0; i < s->manager->n_migrations; i++) {
                int r = bus_migration_path(s->manager->migrations[i]->id, &nodes[i]);
                if (r < 0)
                        return r;
        }
        *ret_nodes = TAKE_PTR(nodes);
        return 1;
}

int bus_migration_emit_completed(BusService *s, Migration *j) {
        _cleanup_free_ char *path = NULL;
        int r;

        r = bus_migration_path(j->id, &path);
        if (r < 0)
                return r;
        return sd_bus_emit_signal(s->bus, path, VFIOMIG_MIGRATION_INTERFACE, "Completed", "ss",
                                  migration_phase_to_string(j->phase),
                                  j->phase == MIGRATION_COMPLETED ? "" : j->error ?: "");
}

static int property_get_id(sd_bus *bus, const char *path, const char *interface, const char *property,
                           sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        return sd_bus_message_append(reply, "u", j->id);
}

static int property_get_direction(sd_bus *bus, const char *path, const char *interface, const char *property,
                                  sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        return sd_bus_message_append(reply, "s", migration_direction_to_string(j->direction));
}

static int property_get_devices(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "o");
        if (r < 0)
                return r;
        for (size_t i = 0; i < j->n_devices; i++) {
                _cleanup_free_ char *p = NULL;
                /* By id: a device detached after the job ended is still named, at its old path. */
                r = bus_device_path(j->device_ids[i], &p);
                if (r < 0)
                        return r;
                r = sd_bus_message_append(reply, "o", p);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

static int property_get_channels(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        /* Outgoing: what was asked for; incoming: what the source opened (0 until it connects). */
        return sd_bus_message_append(reply, "u", j->direction == MIGRATION_OUTGOING ? j->options.channels
                                                                                      : j->stats.channels_up);
}

static int property_get_precopy(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        return sd_bus_message_append(reply, "b", j->precopy);
}

static int property_get_switchover_mode(sd_bus *bus, const char *path, const char *interface,
                                        const char *property, sd_bus_message *reply, void *userdata,
                                        sd_bus_error *error) {
        Migration *j = userdata;
        if (j->direction == MIGRATION_INCOMING)
                return sd_bus_message_append(reply, "s", "");
        return sd_bus_message_append(reply, "s", j->options.switchover_manual ? "manual" : "auto");
}

static int property_get_downtime_limit(sd_bus *bus, const char *path, const char *interface,
                                       const char *property, sd_bus_message *reply, void *userdata,
                                       sd_bus_error *error) {
        Migration *j = userdata;
        return sd_bus_message_append(reply, "t", j->direction == MIGRATION_OUTGOING ? j->options.downtime_limit_ms
                                                                                      : UINT64_C(0));
}

static int property_get_phase(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        return sd_bus_message_append(reply, "s", migration_phase_to_string(j->phase));
}

static int property_get_peer(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        return sd_bus_message_append(reply, "s", j->peer ?: "");
}

static int property_get_bytes_transferred(sd_bus *bus, const char *path, const char *interface,
                                          const char *property, sd_bus_message *reply, void *userdata,
                                          sd_bus_error *error) {
        return sd_bus_message_append(reply, "t", migration_bytes_transferred(userdata));
}

static int property_get_bytes_expected(sd_bus *bus, const char *path, const char *interface,
                                       const char *property, sd_bus_message *reply, void *userdata,
                                       sd_bus_error *error) {
        Migration *j = userdata;
        return sd_bus_message_append(reply, "t", j->bytes_expected);
}

static int property_get_rate(sd_bus *bus, const char *path, const char *interface, const char *property,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        return sd_bus_message_append(reply, "t", migration_phase_is_final(j->phase) ? UINT64_C(0) : j->rate);
}

static int property_get_initial_loaded(sd_bus *bus, const char *path, const char *interface,
                                       const char *property, sd_bus_message *reply, void *userdata,
                                       sd_bus_error *error) {
        return sd_bus_message_append(reply, "b", migration_initial_data_loaded(userdata));
}

static int property_get_initial_reinits(sd_bus *bus, const char *path, const char *interface,
                                        const char *property, sd_bus_message *reply, void *userdata,
                                        sd_bus_error *error) {
        return sd_bus_message_append(reply, "u", migration_initial_data_reinits(userdata));
}

static int property_get_switchover_requested(sd_bus *bus, const char *path, const char *interface,
                                             const char *property, sd_bus_message *reply, void *userdata,
                                             sd_bus_error *error) {
        Migration *j = userdata;
        return sd_bus_message_append(reply, "b", j->switchover_requested);
}

static int property_get_downtime(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        return sd_bus_message_append(reply, "t", j->downtime_ms);
}

static int property_get_estimated_downtime(sd_bus *bus, const char *path, const char *interface,
                                          const char *property, sd_bus_message *reply, void *userdata,
                                          sd_bus_error *error) {
        Migration *j = userdata;
        bool known = j->phase == MIGRATION_PRECOPY && j->estimated_downtime_ms != MIGRATION_ESTIMATE_UNKNOWN;
        /* 0 when there is no estimate (not pre-copying, or the link rate is not measured yet). */
        return sd_bus_message_append(reply, "t", known ? MAX(j->estimated_downtime_ms, UINT64_C(1)) : UINT64_C(0));
}

static int property_get_duration(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "t", migration_duration_ms(userdata));
}

static int property_get_committed(sd_bus *bus, const char *path, const char *interface, const char *property,
                                  sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        return sd_bus_message_append(reply, "b", j->committed);
}

static int property_get_error(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        return sd_bus_message_append(reply, "s", j->error ?: "");
}

static int property_get_transport(sd_bus *bus, const char *path, const char *interface, const char *property,
                                  sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        return sd_bus_message_append(reply, "s", stream_transport_to_string(j->transport));
}

static int property_get_error_name(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        return sd_bus_message_append(reply, "s", j->error_name ?: "");
}

/* polkit for the migrate action, with the job's number as a detail rules can match. */
static int verify_migrate(sd_bus_message *m, Migration *j, sd_bus_error *error) {
        char id[16];

        (void) snprintf(id, sizeof id, "%u", j->id);
        return bus_verify_polkit_async(m, VFIOMIG_ACTION_MIGRATE, (const char *const[]) { "migration", id, NULL },
                                       &service_of(j)->polkit, error);
}

static int method_switchover(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        ErrorMessage err = {};
        int r;

        if (j->direction != MIGRATION_OUTGOING)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "migration %u is incoming: the source decides when to switch over", j->id);
        r = verify_migrate(m, j, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = migration_switchover(j, &err);
        if (r == -EBUSY)
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, &err);
        if (r < 0)
                return bus_error_from_message(error, SD_BUS_ERROR_INVALID_ARGS, r, &err);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_cancel(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        ErrorMessage err = {};
        int r;

        if (migration_phase_is_final(j->phase))
                return sd_bus_error_setf(error, VFIOMIG_ERROR_BUSY, "migration %u has ended (%s)", j->id,
                                         migration_phase_to_string(j->phase));
        if (j->phase == MIGRATION_INDETERMINATE)
                return sd_bus_error_setf(error, VFIOMIG_ERROR_BUSY, "migration %u is indeterminate: ask the "
                                         "destination job whether it committed and call Resolve()", j->id);
        r = verify_migrate(m, j, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = migration_cancel(j, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, &err);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_resolve(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Migration *j = userdata;
        ErrorMessage err = {};
        const char *outcome;
        int r;

        r = sd_bus_message_read(m, "s", &outcome);
        if (r < 0)
                return r;
        if (!streq(outcome, VFIOMIG_OUTCOME_COMMITTED) && !streq(outcome, VFIOMIG_OUTCOME_NOT_COMMITTED))
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "the outcome is \"%s\" or \"%s\", not \"%s\"",
                                         VFIOMIG_OUTCOME_COMMITTED, VFIOMIG_OUTCOME_NOT_COMMITTED, outcome);
        if (j->direction != MIGRATION_OUTGOING || j->phase != MIGRATION_INDETERMINATE)
                return sd_bus_error_setf(error, VFIOMIG_ERROR_BUSY,
                                         "migration %u is %s and %s: only an indeterminate outgoing job is resolved",
                                         j->id, migration_direction_to_string(j->direction),
                                         migration_phase_to_string(j->phase));
        r = verify_migrate(m, j, error);
        if (r <= 0)
                return r < 0 ? r : 1;

        r = migration_resolve(j, outcome, &err);
        if (r == -EINVAL)
                return bus_error_from_message(error, SD_BUS_ERROR_INVALID_ARGS, r, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, &err);
        return sd_bus_reply_method_return(m, NULL);
}

const sd_bus_vtable bus_migration_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Id", "u", property_get_id, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Direction", "s", property_get_direction, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Devices", "ao", property_get_devices, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Channels", "u", property_get_channels, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Transport", "s", property_get_transport, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Precopy", "b", property_get_precopy, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("SwitchoverMode", "s", property_get_switchover_mode, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("DowntimeLimit", "t", property_get_downtime_limit, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Phase", "s", property_get_phase, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Peer", "s", property_get_peer, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("BytesTransferred", "t", property_get_bytes_transferred, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("BytesExpected", "t", property_get_bytes_expected, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Rate", "t", property_get_rate, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("InitialDataLoaded", "b", property_get_initial_loaded, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("InitialDataReinits", "u", property_get_initial_reinits, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("SwitchoverRequested", "b", property_get_switchover_requested, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("EstimatedDowntime", "t", property_get_estimated_downtime, 0,
                        SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Downtime", "t", property_get_downtime, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Duration", "t", property_get_duration, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Error", "s", property_get_error, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("ErrorName", "s", property_get_error_name, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Committed", "b", property_get_committed, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_METHOD_WITH_ARGS("Switchover", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT, method_switchover,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Cancel", SD_BUS_NO_ARGS, SD_BUS_NO_RESULT, method_cancel, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Resolve", SD_BUS_ARGS("s", outcome), SD_BUS_NO_RESULT, method_resolve,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL_WITH_ARGS("Completed", SD_BUS_ARGS("s", result, "s", error), 0),
        SD_BUS_VTABLE_END,
};
