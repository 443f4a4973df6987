/* SPDX-License-Identifier: GPL-2.0-or-later */

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
                                                   NULL);
                if (r < 0)
                        log_warning_errno(r, "Failed to emit PropertiesChanged for %s, ignoring: %m", path);
        }
        s->n_changed = 0;

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
        Device **changed;

        for (size_t i = 0; i < s->n_changed; i++)
                if (s->changed[i] == d)
                        return;
        changed = reallocarray(s->changed, s->n_changed + 1, sizeof *changed);
        if (!changed) {
                log_oom();
                return;
        }
        s->changed = changed;
        s->changed[s->n_changed++] = d;
        schedule_emit(s);
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

        if (manager_status_text(s->manager, &text) >= 0)
                (void) sd_notifyf(false, "STATUS=%s", text);
}

static int on_name_acquired(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        BusService *s = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(reply);

        if (e) {
                log_error("Failed to acquire the bus name %s: %s", VFIOMIG_BUS_NAME, e->message ?: e->name);
                return sd_event_exit(s->event, -EEXIST);
        }
        s->name_acquired = true;
        log_info("Serving %s.", VFIOMIG_BUS_NAME);
        bus_service_update_status(s);
        (void) sd_notify(false, "READY=1");
        return 0;
}

int bus_service_new(sd_event *event, Manager *manager, BusService **ret) {
        _cleanup_(bus_service_freep) BusService *s = NULL;
        ManagerHooks hooks;
        int r;

        s = new0(BusService, 1);
        if (!s)
                return log_oom();
        s->event = sd_event_ref(event);
        s->manager = manager;

        r = sd_bus_open_system_with_description(&s->bus, "vfiomigd");
        if (r < 0)
                return log_error_errno(r, "Failed to connect to the system bus (%s): %m",
                                       getenv("DBUS_SYSTEM_BUS_ADDRESS") ?: "default address");

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
                .userdata = s,
        };
        manager_set_hooks(manager, &hooks);

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
        polkit_registry_free(s->polkit);
        sd_bus_flush_close_unref(s->bus);
        sd_event_unref(s->event);
        free(s->changed);
        free(s);
        return NULL;
}
