/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * vfiomigd on the system bus: the connection, the object tree (Manager at /org/vfiomig1 with an
 * ObjectManager, one Device object per attached device), the polkit registry, and the
 * service-manager notifications. Objects are registered before the name is requested, and
 * READY=1 is sent only once the name is ours, so a caller that sees the name sees everything.
 */

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "bus-polkit.h"
#include "manager.h"
#include "migration.h"
#include "persist.h"

/* A peer holding a copy of a device fd, watched so that its disconnection is noticed. */
typedef struct ClientTrack {
        Device *device;
        char *client;
        sd_bus_track *track;
} ClientTrack;

typedef struct MoveJob MoveJob;

typedef struct BusService {
        sd_event *event;
        sd_bus *bus;
        Manager *manager;
        Persist *persist;
        PolkitRegistry *polkit;
        ClientTrack *tracks;
        size_t n_tracks;

        /* PropertiesChanged is emitted from an idle event, coalescing bursts and keeping
         * emission out of property getters that discover a change. */
        sd_event_source *emit_source;
        Device **changed;
        size_t n_changed;
        AddressSpace **changed_spaces;
        size_t n_changed_spaces;
        Migration **changed_migrations;
        size_t n_changed_migrations;
        bool device_count_changed;

        bool name_acquired;

        MoveJob *moves;              /* state changes running on worker threads (bus-move.c) */
} BusService;

/* persist may be NULL (no state is saved then). */
int bus_service_new(sd_event *event, Manager *manager, Persist *persist, BusService **ret);
BusService *bus_service_free(BusService *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(BusService *, bus_service_free);

/* Tells the service manager what the daemon holds (STATUS=). */
void bus_service_update_status(BusService *s);

/* bus-manager.c */
extern const sd_bus_vtable bus_manager_vtable[];
/* bus-device.c */
extern const sd_bus_vtable bus_device_vtable[];
int bus_device_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **ret_found,
                           sd_bus_error *error);
int bus_device_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***ret_nodes,
                               sd_bus_error *error);
/* Resolves a device object path sent by a client. NULL with error set (NoSuchDevice, InvalidArgs). */
Device *bus_device_from_path(BusService *s, const char *path, sd_bus_error *error);

/* bus-space.c */
extern const sd_bus_vtable bus_space_vtable[];
int bus_space_path(const char *id, char **ret);
int bus_space_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **ret_found,
                          sd_bus_error *error);
int bus_space_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***ret_nodes, sd_bus_error *error);
/* NULL with error set (NoSuchAddressSpace). */
AddressSpace *bus_space_from_path(BusService *s, const char *path, sd_bus_error *error);

/* bus-sim-device.c */
extern const sd_bus_vtable bus_sim_device_vtable[];
int bus_sim_device_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                               void **ret_found, sd_bus_error *error);

/* bus-migration.c */
extern const sd_bus_vtable bus_migration_vtable[];
int bus_migration_path(unsigned id, char **ret);
int bus_migration_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                              void **ret_found, sd_bus_error *error);
int bus_migration_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***ret_nodes,
                                  sd_bus_error *error);
/* NULL with error set (NoSuchMigration). */
Migration *bus_migration_from_path(BusService *s, const char *path, sd_bus_error *error);
int bus_migration_emit_completed(BusService *s, Migration *j);

/* Watches client (a unique name) as a holder of d's fd, forgetting it when it disconnects. */
int bus_service_track_client(BusService *s, Device *d, const char *client);
void bus_service_untrack_clients(BusService *s, Device *d);
