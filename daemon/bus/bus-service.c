/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <inttypes.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "bus-service.h"
#include "bus-util.h"
#include "log.h"
#include "vfiomig1.h"

static int emit_pending(sd_event_source *source, void *userdata) {
        BusService *s = userdata;
        int r;

        for (size_t i = 0; i < s->n_changed; i++) {
                _cleanup_free_ char *path = NULL;
                if (bus_device_path(s->changed[i]->id, &path) < 0)
                        continue;
                r = sd_bus_emit_properties_changed(s->bus, path, VFIOMIG_DEVICE_INTERFACE, "State", "LastTransition",
                                                   "AddressSpace", "Clients", "Migration", NULL);
                if (r < 0)
                        log_warning_errno(r, "Failed to emit PropertiesChanged for %s, ignoring: %m", path);
        }
        s->n_changed = 0;

        for (size_t i = 0; i < s->n_changed_spaces; i++) {
                _cleanup_free_ char *path = NULL;
                if (bus_space_path(s->changed_spaces[i]->id, &path) < 0)
                        continue;
                r = sd_bus_emit_properties_changed(s->bus, path, VFIOMIG_SPACE_INTERFACE, "MappingCount",
                                                   "PinnedBytes", "LiveUpdate", "Devices", NULL);
                if (r < 0)
                        log_warning_errno(r, "Failed to emit PropertiesChanged for %s, ignoring: %m", path);
        }
        s->n_changed_spaces = 0;

        for (size_t i = 0; i < s->n_changed_migrations; i++) {
                _cleanup_free_ char *path = NULL;
                if (bus_migration_path(s->changed_migrations[i]->id, &path) < 0)
                        continue;
                r = sd_bus_emit_properties_changed(s->bus, path, VFIOMIG_MIGRATION_INTERFACE, "Phase", "Peer",
                                                   "Channels", "Transport", "BytesTransferred", "BytesExpected", "Rate",
                                                   "InitialDataLoaded", "SwitchoverRequested", "EstimatedDowntime",
                                                   "Downtime", "Duration", "Error", "ErrorName", "Committed", NULL);
                if (r < 0)
                        log_warning_errno(r, "Failed to emit PropertiesChanged for %s, ignoring: %m", path);
        }
        s->n_changed_migrations = 0;

        if (s->device_count_changed) {
                s->device_count_changed = false;
                bus_service_update_status(s);
                r = sd_bus_emit_properties_changed(s->bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE,
                                                   "DeviceCount", NULL);
                if (r < 0)
                        log_warning_errno(r, "Failed to emit PropertiesChanged for the manager, ignoring: %m");
        }
        return sd_event_source_set_enabled(source, SD_EVENT_OFF);
}

static void schedule_emit(BusService *s) {
        if (s->emit_source)
                (void) sd_event_source_set_enabled(s->emit_source, SD_EVENT_ONESHOT);
}

static int add_unique(void ***list, size_t *n, void *item) {
        void **l;

        for (size_t i = 0; i < *n; i++)
                if ((*list)[i] == item)
                        return 0;
        l = reallocarray(*list, *n + 1, sizeof *l);
        if (!l)
                return log_oom();
        *list = l;
        l[(*n)++] = item;
        return 1;
}

static void remove_item(void **list, size_t *n, void *item) {
        for (size_t i = 0; i < *n; i++)
                if (list[i] == item) {
                        memmove(list + i, list + i + 1, (*n - i - 1) * sizeof *list);
                        (*n)--;
                        return;
                }
}

static void forget_changed(BusService *s, Device *d) {
        for (size_t i = 0; i < s->n_changed; i++)
                if (s->changed[i] == d) {
                        memmove(s->changed + i, s->changed + i + 1, (s->n_changed - i - 1) * sizeof *s->changed);
                        s->n_changed--;
                        return;
                }
}

static void on_device_changed(Manager *m, Device *d, void *userdata) {
        BusService *s = userdata;

        if (add_unique((void ***) &s->changed, &s->n_changed, d) > 0)
                schedule_emit(s);
}

static void on_space_changed(Manager *m, AddressSpace *space, void *userdata) {
        BusService *s = userdata;

        if (add_unique((void ***) &s->changed_spaces, &s->n_changed_spaces, space) > 0)
                schedule_emit(s);
}

static void on_state_changed(Manager *m, void *userdata) {
        BusService *s = userdata;

        /* Synchronously, so the state is in the store before the caller's reply goes out. */
        (void) persist_save(s->persist);
}

static void on_space_added(Manager *m, AddressSpace *space, void *userdata) {
        BusService *s = userdata;
        _cleanup_free_ char *path = NULL;
        int r;

        if (bus_space_path(space->id, &path) < 0)
                return;
        r = sd_bus_emit_object_added(s->bus, path);
        if (r < 0)
                log_warning_errno(r, "Failed to emit InterfacesAdded for %s, ignoring: %m", path);
}

static void on_space_removed(Manager *m, AddressSpace *space, void *userdata) {
        BusService *s = userdata;
        _cleanup_free_ char *path = NULL;
        int r;

        remove_item((void **) s->changed_spaces, &s->n_changed_spaces, space);
        if (bus_space_path(space->id, &path) < 0)
                return;
        r = sd_bus_emit_object_removed(s->bus, path);
        if (r < 0)
                log_warning_errno(r, "Failed to emit InterfacesRemoved for %s, ignoring: %m", path);
}

/* Progress arrives at most every MIGRATION_TICK_USEC per job; phases in between. Both go out
 * coalesced from the idle event, so a burst of changes is one signal. */
static void on_migration_changed(Manager *m, Migration *j, void *userdata) {
        BusService *s = userdata;

        if (add_unique((void ***) &s->changed_migrations, &s->n_changed_migrations, j) > 0)
                schedule_emit(s);
}

static void on_migration_added(Manager *m, Migration *j, void *userdata) {
        BusService *s = userdata;
        _cleanup_free_ char *path = NULL;
        int r;

        if (bus_migration_path(j->id, &path) < 0)
                return;
        r = sd_bus_emit_object_added(s->bus, path);
        if (r < 0)
                log_warning_errno(r, "Failed to emit InterfacesAdded for %s, ignoring: %m", path);
}

static void on_migration_finished(Manager *m, Migration *j, void *userdata) {
        BusService *s = userdata;
        int r;

        /* The final properties first, so that a client reacting to Completed reads them. */
        remove_item((void **) s->changed_migrations, &s->n_changed_migrations, j);
        {
                _cleanup_free_ char *path = NULL;
                if (bus_migration_path(j->id, &path) >= 0) {
                        r = sd_bus_emit_properties_changed(s->bus, path, VFIOMIG_MIGRATION_INTERFACE, "Phase",
                                                           "BytesTransferred", "BytesExpected", "Rate", "EstimatedDowntime",
                                                           "Downtime", "Duration", "Error", "ErrorName", "Committed", NULL);
                        if (r < 0)
                                log_warning_errno(r, "Failed to emit PropertiesChanged for %s, ignoring: %m", path);
                }
        }
        r = bus_migration_emit_completed(s, j);
        if (r < 0)
                log_warning_errno(r, "Failed to emit Completed for migration %u, ignoring: %m", j->id);
}

static void on_migration_removed(Manager *m, Migration *j, void *userdata) {
        BusService *s = userdata;
        _cleanup_free_ char *path = NULL;
        int r;

        remove_item((void **) s->changed_migrations, &s->n_changed_migrations, j);
        if (bus_migration_path(j->id, &path) < 0)
                return;
        r = sd_bus_emit_object_removed(s->bus, path);
        if (r < 0)
                log_warning_errno(r, "Failed to emit InterfacesRemoved for %s, ignoring: %m", path);
}

/* ---- clients holding device fds ---- */

static void track_free(ClientTrack *t) {
        sd_bus_track_unref(t->track);
        free(t->client);
}

static int on_client_gone(sd_bus_track *track, void *userdata) {
        BusService *s = userdata;

        for (size_t i = 0; i < s->n_tracks; i++) {
                ClientTrack *t = &s->tracks[i];
                if (t->track != track)
                        continue;
                device_forget_client(t->device, t->client);
                track_free(t);
                memmove(s->tracks + i, s->tracks + i + 1, (s->n_tracks - i - 1) * sizeof *s->tracks);
                s->n_tracks--;
                return 0;
        }
        return 0;
}

int bus_service_track_client(BusService *s, Device *d, const char *client) {
        _cleanup_(sd_bus_track_unrefp) sd_bus_track *track = NULL;
        _cleanup_free_ char *copy = NULL;
        ClientTrack *tracks;
        int r;

        for (size_t i = 0; i < s->n_tracks; i++)
                if (s->tracks[i].device == d && streq(s->tracks[i].client, client))
                        return 0;
        copy = strdup(client);
        if (!copy)
                return -ENOMEM;
        r = sd_bus_track_new(s->bus, &track, on_client_gone, s);
        if (r < 0)
                return r;
        r = sd_bus_track_add_name(track, client);
        if (r == -ENXIO) {
                /* Gone already: a client that left while we were down (a restart). */
                device_forget_client(d, client);
                return 0;
        }
        if (r < 0)
                return r;
        tracks = reallocarray(s->tracks, s->n_tracks + 1, sizeof *tracks);
        if (!tracks)
                return -ENOMEM;
        s->tracks = tracks;
        s->tracks[s->n_tracks++] = (ClientTrack) { .device = d, .client = TAKE_PTR(copy), .track = TAKE_PTR(track) };
        return 0;
}

void bus_service_untrack_clients(BusService *s, Device *d) {
        for (size_t i = 0; i < s->n_tracks;) {
                if (s->tracks[i].device != d) {
                        i++;
                        continue;
                }
                track_free(&s->tracks[i]);
                memmove(s->tracks + i, s->tracks + i + 1, (s->n_tracks - i - 1) * sizeof *s->tracks);
                s->n_tracks--;
        }
}

static void on_device_added(Manager *m, Device *d, void *userdata) {
        BusService *s = userdata;
        _cleanup_free_ char *path = NULL;
        int r;

        s->device_count_changed = true;
        schedule_emit(s);
        if (bus_device_path(d->id, &path) < 0)
                return;
        r = sd_bus_emit_object_added(s->bus, path);
        if (r < 0)
                log_warning_errno(r, "Failed to emit InterfacesAdded for %s, ignoring: %m", path);
        r = sd_bus_emit_signal(s->bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, "DeviceAttached", "so",
                               d->id, path);
        if (r < 0)
                log_warning_errno(r, "Failed to emit DeviceAttached for %s, ignoring: %m", path);
}

static void on_device_removed(Manager *m, Device *d, void *userdata) {
        BusService *s = userdata;
        _cleanup_free_ char *path = NULL;
        int r;

        forget_changed(s, d);
        bus_service_untrack_clients(s, d);
        s->device_count_changed = true;
        schedule_emit(s);
        if (bus_device_path(d->id, &path) < 0)
                return;
        /* The object still exists while this runs, so its interfaces can be listed. */
        r = sd_bus_emit_object_removed(s->bus, path);
        if (r < 0)
                log_warning_errno(r, "Failed to emit InterfacesRemoved for %s, ignoring: %m", path);
        r = sd_bus_emit_signal(s->bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, "DeviceDetached", "so",
                               d->id, path);
        if (r < 0)
                log_warning_errno(r, "Failed to emit DeviceDetached for %s, ignoring: %m", path);
}

void bus_service_update_status(BusService *s) {
        _cleanup_free_ char *text = NULL;

        if (manager_status_text(s->manager, &text) < 0)
                return;
        if (persist_refused(s->persist))
                (void) sd_notifyf(false, "STATUS=%s; the saved state was refused: fd store kept untouched, nothing "
                                  "saved (see vfiomigd(8))", text);
        else
                (void) sd_notifyf(false, "STATUS=%s", text);
}

/* RequestName's answers (the D-Bus specification); sd-bus does not export them. */
enum {
        REQUEST_NAME_PRIMARY_OWNER = 1,
        REQUEST_NAME_IN_QUEUE = 2,
        REQUEST_NAME_EXISTS = 3,
        REQUEST_NAME_ALREADY_OWNER = 4,
};

/* Without SD_BUS_NAME_QUEUE the bus answers EXISTS rather than an error when someone else owns
 * the name: that answer, not the absence of an error, decides whether we serve. A daemon that
 * does not own the name must not report READY=1, or the service manager would believe a second
 * instance is the one serving. */
static int on_name_acquired(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        BusService *s = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(reply);
        uint32_t answer = 0;
        int r;

        if (e) {
                log_error("Failed to acquire the bus name %s: %s", VFIOMIG_BUS_NAME, e->message ?: e->name);
                return sd_event_exit(s->event, -EACCES);
        }
        r = sd_bus_message_read(reply, "u", &answer);
        if (r < 0) {
                log_error_errno(r, "Failed to parse the bus's answer to RequestName(%s): %m", VFIOMIG_BUS_NAME);
                return sd_event_exit(s->event, r);
        }
        if (answer == REQUEST_NAME_EXISTS || answer == REQUEST_NAME_IN_QUEUE) {
                log_error("The bus name %s is owned by another process (another vfiomigd?): not serving, exiting.",
                          VFIOMIG_BUS_NAME);
                return sd_event_exit(s->event, -EEXIST);
        }
        if (answer != REQUEST_NAME_PRIMARY_OWNER && answer != REQUEST_NAME_ALREADY_OWNER) {
                log_error("The bus answered RequestName(%s) with %" PRIu32 ", which is no ownership: exiting.",
                          VFIOMIG_BUS_NAME, answer);
                return sd_event_exit(s->event, -EPROTO);
        }

        s->name_acquired = true;
        log_info("Serving %s.", VFIOMIG_BUS_NAME);
        bus_service_update_status(s);
        (void) sd_notify(false, "READY=1");
        return 0;
}

/* For method calls on a path below prefix that names no object (the prefix itself is the
 * enumerators'). Calls on an existing object go on to its vtable. */
static bool names_no_object(sd_bus_message *m, const char *prefix) {
        const char *path = sd_bus_message_get_path(m);
        return sd_bus_message_is_method_call(m, NULL, NULL) && path && !streq(path, prefix) &&
               !sd_bus_message_is_method_call(m, "org.freedesktop.DBus.Peer", NULL);
}

static int refuse_unknown_device(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        if (!names_no_object(m, VFIOMIG_DEVICE_PATH_PREFIX) ||
            bus_device_from_path(userdata, sd_bus_message_get_path(m), error))
                return 0;
        return -ENXIO; /* with error set: the reply */
}

static int refuse_unknown_space(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        if (!names_no_object(m, VFIOMIG_SPACE_PATH_PREFIX) ||
            bus_space_from_path(userdata, sd_bus_message_get_path(m), error))
                return 0;
        return -ENXIO;
}

static int refuse_unknown_migration(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        if (!names_no_object(m, VFIOMIG_MIGRATION_PATH_PREFIX) ||
            bus_migration_from_path(userdata, sd_bus_message_get_path(m), error))
                return 0;
        return -ENXIO;
}

int bus_service_new(sd_event *event, Manager *manager, Persist *persist, BusService **ret) {
        _cleanup_(bus_service_freep) BusService *s = NULL;
        ManagerHooks hooks;
        int r;

        s = new0(BusService, 1);
        if (!s)
                return log_oom();
        s->event = sd_event_ref(event);
        s->manager = manager;
        manager_set_event(manager, event);
        s->persist = persist;

        r = sd_bus_open_system_with_description(&s->bus, "vfiomigd");
        if (r < 0)
                return log_error_errno(r, "Failed to connect to the system bus (%s): %m",
                                       getenv("DBUS_SYSTEM_BUS_ADDRESS") ?: "default address");

        /* Before the vtables: a call to an object that does not exist gets our named error
         * (NoSuchDevice, NoSuchAddressSpace, NoSuchMigration) instead of sd-bus's UnknownObject. */
        r = sd_bus_add_fallback(s->bus, NULL, VFIOMIG_DEVICE_PATH_PREFIX, refuse_unknown_device, s);
        if (r >= 0)
                r = sd_bus_add_fallback(s->bus, NULL, VFIOMIG_SPACE_PATH_PREFIX, refuse_unknown_space, s);
        if (r >= 0)
                r = sd_bus_add_fallback(s->bus, NULL, VFIOMIG_MIGRATION_PATH_PREFIX, refuse_unknown_migration, s);
        if (r < 0)
                return log_error_errno(r, "Failed to register the unknown-object handlers: %m");

        r = sd_bus_add_object_vtable(s->bus, NULL, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE,
                                     bus_manager_vtable, s);
        if (r < 0)
                return log_error_errno(r, "Failed to register the manager object: %m");
        r = sd_bus_add_fallback_vtable(s->bus, NULL, VFIOMIG_DEVICE_PATH_PREFIX, VFIOMIG_DEVICE_INTERFACE,
                                       bus_device_vtable, bus_device_object_find, s);
        if (r < 0)
                return log_error_errno(r, "Failed to register the device objects: %m");
        r = sd_bus_add_node_enumerator(s->bus, NULL, VFIOMIG_DEVICE_PATH_PREFIX, bus_device_node_enumerator, s);
        if (r < 0)
                return log_error_errno(r, "Failed to register the device enumerator: %m");
        r = sd_bus_add_fallback_vtable(s->bus, NULL, VFIOMIG_DEVICE_PATH_PREFIX, VFIOMIG_SIM_DEVICE_INTERFACE,
                                       bus_sim_device_vtable, bus_sim_device_object_find, s);
        if (r < 0)
                return log_error_errno(r, "Failed to register the simulated device objects: %m");
        r = sd_bus_add_fallback_vtable(s->bus, NULL, VFIOMIG_SPACE_PATH_PREFIX, VFIOMIG_SPACE_INTERFACE,
                                       bus_space_vtable, bus_space_object_find, s);
        if (r < 0)
                return log_error_errno(r, "Failed to register the address space objects: %m");
        r = sd_bus_add_node_enumerator(s->bus, NULL, VFIOMIG_SPACE_PATH_PREFIX, bus_space_node_enumerator, s);
        if (r < 0)
                return log_error_errno(r, "Failed to register the address space enumerator: %m");
        r = sd_bus_add_fallback_vtable(s->bus, NULL, VFIOMIG_MIGRATION_PATH_PREFIX, VFIOMIG_MIGRATION_INTERFACE,
                                       bus_migration_vtable, bus_migration_object_find, s);
        if (r < 0)
                return log_error_errno(r, "Failed to register the migration objects: %m");
        r = sd_bus_add_node_enumerator(s->bus, NULL, VFIOMIG_MIGRATION_PATH_PREFIX, bus_migration_node_enumerator, s);
        if (r < 0)
                return log_error_errno(r, "Failed to register the migration enumerator: %m");
        r = sd_bus_add_object_manager(s->bus, NULL, VFIOMIG_MANAGER_PATH);
        if (r < 0)
                return log_error_errno(r, "Failed to register the object manager: %m");

        r = sd_event_add_defer(event, &s->emit_source, emit_pending, s);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate an event source: %m");
        (void) sd_event_source_set_enabled(s->emit_source, SD_EVENT_OFF);
        (void) sd_event_source_set_description(s->emit_source, "emit-properties-changed");

        hooks = (ManagerHooks) {
                .device_added = on_device_added,
                .device_removed = on_device_removed,
                .device_changed = on_device_changed,
                .space_added = on_space_added,
                .space_removed = on_space_removed,
                .space_changed = on_space_changed,
                .state_changed = on_state_changed,
                .migration_added = on_migration_added,
                .migration_changed = on_migration_changed,
                .migration_finished = on_migration_finished,
                .migration_removed = on_migration_removed,
                .userdata = s,
        };
        manager_set_hooks(manager, &hooks);

        /* Clients recorded before a restart: watch them again (the gone ones are dropped). */
        for (size_t i = 0; i < manager->n_devices; i++)
                for (char **c = manager->devices[i]->clients; c && *c; c++) {
                        r = bus_service_track_client(s, manager->devices[i], *c);
                        if (r < 0)
                                log_warning_errno(r, "Cannot watch client %s of %s, ignoring: %m", *c,
                                                  manager->devices[i]->id);
                }

        r = sd_bus_attach_event(s->bus, event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return log_error_errno(r, "Failed to attach the bus to the event loop: %m");
        r = sd_bus_request_name_async(s->bus, NULL, VFIOMIG_BUS_NAME, 0, on_name_acquired, s);
        if (r < 0)
                return log_error_errno(r, "Failed to request the bus name %s: %m", VFIOMIG_BUS_NAME);

        *ret = TAKE_PTR(s);
        return 0;
}

BusService *bus_service_free(BusService *s) {
        if (!s)
                return NULL;
        if (s->manager)
                manager_set_hooks(s->manager, &(ManagerHooks) {});
        sd_event_source_disable_unref(s->emit_source);
        for (size_t i = 0; i < s->n_tracks; i++)
                track_free(&s->tracks[i]);
        free(s->tracks);
        free(s->changed_spaces);
        free(s->changed_migrations);
        polkit_registry_free(s->polkit);
        sd_bus_flush_close_unref(s->bus);
        sd_event_unref(s->event);
        free(s->changed);
        free(s);
        return NULL;
}
