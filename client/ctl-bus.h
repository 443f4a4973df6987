/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * vfiomigctl's side of the org.vfiomig1 contract: connecting, calling with failures reported the
 * same way everywhere (the daemon's own message, then a hint saying what to do), reading
 * properties into typed structs, and turning whatever the user typed as DEV into an object
 * path. Every function here logs its own failures, so verbs just propagate the negative errno.
 */

#include <systemd/sd-bus.h>

#include "macro.h"

/* The address sd_bus_open_system() uses, for messages that must say which bus was tried. */
const char *ctl_system_bus_address(void);

/* address, or the system bus when NULL; timeout_usec 0 keeps the sd-bus default. */
int ctl_bus_connect(const char *address, uint64_t timeout_usec, sd_bus **ret);

/* One line of advice for a D-Bus error name, or NULL when there is nothing useful to add. */
const char *ctl_bus_error_hint(const char *name);

/* Reports a failed call: the daemon's message and a hint when there is an error reply, otherwise
 * the transport error together with the bus address. Returns a negative errno. */
int ctl_log_call_error(sd_bus *bus, const char *member, const sd_bus_error *error, int r);

/* A method call to vfiomigd. */
int ctl_new_method_call(sd_bus *bus, const char *path, const char *interface, const char *member,
                        sd_bus_message **ret);
/* sd_bus_call() with the method call timeout set on the bus, failures logged; 0 on success. */
int ctl_call(sd_bus *bus, sd_bus_message *m, sd_bus_message **ret_reply);

/* A property to store at offset in a struct. Signatures and field types: "s" and "o" char *
 * (owned), "b" bool, "u" uint32_t, "t" uint64_t, "as" and "ao" char ** (owned). */
typedef struct CtlProperty {
        const char *name;
        const char *signature;
        size_t offset;
} CtlProperty;

/* One GetAll; the map ends with an entry whose name is NULL. Properties not in the map are
 * skipped, so a newer daemon's additions do not break an older client. With gone_ok, returns 0
 * without logging when the object has disappeared (UnknownObject, NoSuchDevice,
 * NoSuchAddressSpace); otherwise 1 once read. */
int ctl_get_properties(sd_bus *bus, const char *path, const char *interface, const CtlProperty *map,
                       void *userdata, bool gone_ok);
/* The a{sv} at the read position of m (a GetAll reply, or the changed properties of
 * PropertiesChanged) into userdata by map; path is for messages. 0, or a logged negative errno. */
int ctl_read_properties(sd_bus_message *m, const CtlProperty *map, void *userdata, const char *path);

typedef struct ManagerInfo {
        char *version;
        char **kernel_features;
        bool simulation_allowed;
        uint32_t device_count;
        uint32_t max_devices;
        uint32_t max_address_spaces;
        uint32_t max_mappings;
        uint64_t max_pinned_bytes;
        bool file_descriptor_store;
        uint32_t max_migrations;
        char **stream_addresses;        /* "host:port" the daemon listens on for incoming streams */
} ManagerInfo;

void manager_info_done(ManagerInfo *i);
int ctl_get_manager_info(sd_bus *bus, ManagerInfo *ret);

typedef struct DeviceInfo {
        char *object;
        char *id;
        char *address;
        char *driver;
        char *backend;
        char **migration_flags;
        bool migratable;
        char *migratable_reason;
        char *state;
        uint64_t stop_copy_size;
        char *last_transition;
        char *address_space;    /* object path; "/" when the device is in no address space */
        uint32_t clients;
        char *migration;        /* object path of the job that owns the device; "/" when none */
} DeviceInfo;

void device_info_done(DeviceInfo *i);
/* With gone_ok, returns 0 when the device has been detached meanwhile; else 1. */
int ctl_get_device_info(sd_bus *bus, const char *path, bool gone_ok, DeviceInfo *ret);

typedef struct DeviceList {
        DeviceInfo *devices;
        size_t n_devices;
} DeviceList;

void device_list_done(DeviceList *l);
/* ListDevices and each device's properties, sorted by id. Devices detached while we read are
 * left out: the list is a snapshot, and "gone" is not an error for a snapshot. */
int ctl_get_devices(sd_bus *bus, DeviceList *ret);

/* An object path for DEV: a path is taken as it is, anything else goes through GetDevice. */
int ctl_resolve_device(sd_bus *bus, const char *dev, char **ret_path);

typedef struct MappingInfo {
        uint64_t iova;
        uint64_t length;
        uint64_t offset;
        char **access;          /* "read", "write" as on the bus */
} MappingInfo;

typedef struct SpaceInfo {
        char *object;
        char *id;
        char *backend;
        uint32_t mapping_count;
        uint64_t pinned_bytes;
        char *live_update;
        char **devices;         /* object paths */
        MappingInfo *mappings;  /* only with ctl_get_space_info(..., with_mappings = true) */
        size_t n_mappings;
} SpaceInfo;

void space_info_done(SpaceInfo *i);
/* The properties of the address space at path and, with_mappings, its ListMappings. With
 * gone_ok, returns 0 when the space has been destroyed meanwhile; else 1. */
int ctl_get_space_info(sd_bus *bus, const char *path, bool with_mappings, bool gone_ok, SpaceInfo *ret);

typedef struct SpaceList {
        SpaceInfo *spaces;
        size_t n_spaces;
} SpaceList;

void space_list_done(SpaceList *l);
/* ListAddressSpaces and each space's properties, in the daemon's order (creation order). Spaces
 * destroyed while we read are left out. */
int ctl_get_spaces(sd_bus *bus, SpaceList *ret);

typedef struct MigrationInfo {
        char *object;
        uint32_t id;
        char *direction;        /* "outgoing", "incoming" */
        char **devices;         /* object paths */
        uint32_t channels;
        bool precopy;
        char *switchover_mode;  /* "auto", "manual" */
        uint64_t downtime_limit;        /* ms */
        char *phase;
        char *peer;
        uint64_t bytes_transferred;
        uint64_t bytes_expected;        /* 0: unknown */
        uint64_t rate;                  /* bytes per second */
        bool initial_data_loaded;
        bool switchover_requested;
        uint64_t downtime;              /* ms, 0: unknown */
        char *error;
        char *error_name;
        bool committed;         /* the destination's devices hold the state (proven, or Resolve said so) */
        char *transport;        /* "tls-kernel", "tls-user", "cleartext"; NULL from a daemon without it */
} MigrationInfo;

/* The property map of org.vfiomig1.Migration into MigrationInfo, for ctl_read_properties(). */
extern const CtlProperty ctl_migration_properties[];

void migration_info_done(MigrationInfo *i);
/* Every property of the job at path into ret, replacing what it held (so a watcher can refresh
 * one struct). With gone_ok, returns 0 when the job no longer exists (ret untouched); else 1. */
int ctl_get_migration_info(sd_bus *bus, const char *path, bool gone_ok, MigrationInfo *ret);

typedef struct MigrationListEntry {
        uint32_t id;
        char *direction;
        char *phase;
        uint64_t bytes_transferred;
        char *object;
} MigrationListEntry;

typedef struct MigrationList {
        MigrationListEntry *entries;
        size_t n_entries;
} MigrationList;

void migration_list_done(MigrationList *l);
/* ListMigrations, in the daemon's order. */
int ctl_get_migrations(sd_bus *bus, MigrationList *ret);
