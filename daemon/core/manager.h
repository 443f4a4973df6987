/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The daemon's core state: the devices it owns and what the kernel offers. It knows nothing of
 * D-Bus; the bus layer installs hooks to hear about devices appearing, disappearing and changing.
 * Every resource a client can create here is capped (max_devices).
 */

#include <systemd/sd-event.h>

#include "address-space.h"
#include "device.h"
#include "kernel-device.h"
#include "kernel-features.h"
#include "sim-device.h"
#include "stream-tls.h"
#include "transition.h"

#define MANAGER_MAX_DEVICES_DEFAULT 256u
#define MANAGER_MAX_DEVICES_LIMIT 4096u
#define MANAGER_MAX_SPACES_DEFAULT 64u
#define MANAGER_MAX_SPACES_LIMIT 1024u
#define MANAGER_MAX_MAPPINGS_DEFAULT 1024u
#define MANAGER_MAX_MAPPINGS_LIMIT IOMMU_MAPPINGS_KERNEL_MAX
#define MANAGER_MAX_REASSEMBLY_BYTES_MIN (UINT64_C(64) << 20) /* one job's smallest reassembly budget */

typedef struct StreamListener StreamListener;

typedef struct ManagerOptions {
        bool allow_simulated;
        const char *stream_listen;  /* "host:port" incoming migrations are taken on; NULL = [::]:7179 */
        StreamTlsContext *tls;      /* the stream's TLS credentials (the manager takes a reference); NULL: none */
        bool allow_cleartext;       /* without tls: migrate to and from non-loopback addresses anyway */
        unsigned max_devices;      /* 0 = default */
        unsigned max_spaces;       /* 0 = default */
        unsigned max_mappings;     /* per space; 0 = default */
        uint64_t max_pinned_bytes; /* over all spaces; 0 = the machine's physical memory */
        uint64_t max_reassembly_bytes; /* budgets of all incoming migrations; 0 = a quarter of the memory */
        bool serial_transitions;   /* group moves one device after another (GROUP_SERIAL) */
        KernelContextOptions kernel;
} ManagerOptions;

typedef struct ManagerHooks {
        void (*device_added)(Manager *m, Device *d, void *userdata);
        void (*device_removed)(Manager *m, Device *d, void *userdata); /* before it is freed */
        void (*device_changed)(Manager *m, Device *d, void *userdata);
        void (*space_added)(Manager *m, AddressSpace *s, void *userdata);
        void (*space_removed)(Manager *m, AddressSpace *s, void *userdata); /* before it is freed */
        void (*space_changed)(Manager *m, AddressSpace *s, void *userdata);
        /* something persistent changed: the state must be saved (core/persist.c) */
        void (*state_changed)(Manager *m, void *userdata);
        void (*migration_added)(Manager *m, Migration *j, void *userdata);
        void (*migration_changed)(Manager *m, Migration *j, void *userdata);  /* progress, phase */
        void (*migration_finished)(Manager *m, Migration *j, void *userdata); /* completed, failed or cancelled */
        void (*migration_removed)(Manager *m, Migration *j, void *userdata);  /* before it is freed */
        void *userdata;
} ManagerHooks;

struct Manager {
        ManagerOptions options;
        KernelContext *kernel;
        KernelFeatures features;
        Device **devices;
        size_t n_devices;
        AddressSpace **spaces;
        size_t n_spaces;
        unsigned next_space_number;
        bool fd_store;             /* a service manager keeps our fds across restarts */
        ManagerHooks hooks;
        sd_event *event;           /* migration jobs run on it (manager_set_event()) */
        Migration **migrations;    /* running and recently finished jobs, oldest first */
        size_t n_migrations;
        unsigned next_migration_id;
        StreamListener *listener;  /* made on the first PrepareIncoming */
        int stream_socket_fd;      /* a listening socket systemd passed ("stream"), or -EBADF */
};

/* What AttachDevice was given besides the address. */
typedef struct AttachOptions {
        SimConfig sim;
        bool sim_options_given;
} AttachOptions;

void attach_options_init(AttachOptions *o);

int manager_new(const ManagerOptions *options, Manager **ret);
Manager *manager_free(Manager *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(Manager *, manager_free);

void manager_set_hooks(Manager *m, const ManagerHooks *hooks);
void manager_set_event(Manager *m, sd_event *e);
/* A listening socket to take incoming migrations on, instead of binding stream_listen. */
void manager_adopt_stream_socket(Manager *m, int fd);
/* The listener, made on first use. */
int manager_get_stream_listener(Manager *m, StreamListener **ret, ErrorMessage *err);
void manager_notify_device_changed(Manager *m, Device *d);
void manager_notify_space_changed(Manager *m, AddressSpace *s);
void manager_notify_state_changed(Manager *m);

uint64_t manager_pinned_bytes(Manager *m);
bool manager_has_fd_store(Manager *m);

typedef struct SpaceOptions {
        int backend;                 /* IommuBackend, or -1 for what the host offers */
        SimMappingStyle sim_style;   /* sim only */
        bool sim_style_given;
} SpaceOptions;

void space_options_init(SpaceOptions *o);
/* Validation without change: -EINVAL (sim not allowed, style for a non-sim backend), -E2BIG. */
int manager_check_create_space(Manager *m, const SpaceOptions *o, ErrorMessage *err);
/* -EOPNOTSUPP when the host offers no such backend. */
int manager_create_space(Manager *m, const SpaceOptions *o, AddressSpace **ret, ErrorMessage *err);
/* -EBUSY while devices are attached or mappings exist. */
int manager_check_destroy_space(Manager *m, AddressSpace *s, ErrorMessage *err);
int manager_destroy_space(Manager *m, AddressSpace *s, ErrorMessage *err);
AddressSpace *manager_find_space(Manager *m, const char *id);
/* Adds a space made elsewhere (restore after a restart). */
int manager_add_space(Manager *m, AddressSpace *s);
/* Adds a device made elsewhere (restore after a restart). */
int manager_add_device(Manager *m, Device *d);

/* The checks that need no device access: well-formed address, simulation allowed, not attached
 * yet, capacity left, options only for sim devices. -EINVAL (malformed, not allowed, options
 * misplaced), -EEXIST (attached already, *ret_existing set when non-NULL), -E2BIG (full). */
int manager_check_attach(Manager *m, const char *address, const AttachOptions *o, Device **ret_existing,
                         ErrorMessage *err);
/* Checks again, then opens the device. Besides the above: -ENODEV/-ENOENT no such device, -ENXIO
 * not usable through VFIO, -EBUSY in use, other errnos from the kernel. */
int manager_attach(Manager *m, const char *address, const AttachOptions *o, Device **ret, ErrorMessage *err);
/* -EBUSY unless the device is running (detaching mid-migration would disrupt it). */
int manager_check_detach(Manager *m, Device *d, ErrorMessage *err);
int manager_detach(Manager *m, Device *d, ErrorMessage *err);

/* By id ("sim_a"), by address as attached ("sim:a", "0000:3b:00.1"), or by any other form of a
 * kernel address that resolves to an attached device ("3B:00.1", a sysfs path). NULL if none. */
Device *manager_find_device(Manager *m, const char *address_or_id);

typedef enum GroupOutcome {
        GROUP_DONE,
        GROUP_REFUSED_NOT_MIGRATABLE,
        GROUP_REFUSED_INVALID_TRANSITION,
        GROUP_REFUSED_DEVICE_IN_ERROR,
        GROUP_REFUSED_NO_P2P,
        GROUP_REFUSED_DUPLICATE,
        GROUP_FAILED,          /* a device failed; all were rolled back as far as possible */
        GROUP_DEVICE_UNREADABLE,
        GROUP_REFUSED_BUSY,    /* a worker thread owns one of the devices */
        GROUP_REFUSED_REFUSED_DATA, /* a device holds migration data it refused (device_check_state_change) */
} GroupOutcome;

/* Moves devices together in P2P-safe order (group_transition_run()), recording the outcome on
 * every device. results[i] receives each device's final state (-1 unknown). */
int manager_set_states(Manager *m, Device **devices, size_t n, MigState target, bool force_without_p2p,
                       int *results, GroupOutcome *ret_outcome, ErrorMessage *err);
/* The same on behalf of the migration job that owns the devices. */
int manager_set_states_for(Manager *m, const Migration *owner, Device **devices, size_t n, MigState target,
                           bool force_without_p2p, int *results, GroupOutcome *ret_outcome, ErrorMessage *err);

/* manager_set_states_for() in three parts, as DeviceMove (device.h): begin checks and marks every
 * device busy, run (any thread) touches only the VfioDevs and g, end records the outcome on every
 * device. devices must stay valid until end (busy devices cannot be detached). */
typedef struct GroupMove {
        Manager *manager;
        Device **devices;
        size_t n;
        MigState target;
        GroupFlags flags;
        GroupMember *members;
        int result;
        ErrorMessage err;
} GroupMove;

int manager_group_move_begin(GroupMove *g, Manager *m, const Migration *owner, Device **devices, size_t n,
                             MigState target, bool force_without_p2p, GroupOutcome *ret_outcome, ErrorMessage *err);
void manager_group_move_run(GroupMove *g);
int manager_group_move_end(GroupMove *g, int *results, GroupOutcome *ret_outcome, ErrorMessage *err);
/* Instead of run and end, when run never started: the devices are idle again, nothing recorded. */
void manager_group_move_abort(GroupMove *g);

/* "3 devices attached (2 simulated)" for STATUS= */
int manager_status_text(Manager *m, char **ret);
