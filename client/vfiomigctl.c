/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vfiomigctl: the operator's client of vfiomigd. Every decision stays with the daemon; the client
 * turns text into org.vfiomig1 calls and replies into text or JSON. It checks on its own side only
 * what it can report better than the daemon could: state names, --option keys and value types,
 * address space names, access modes, number syntax and the shape of the command line, all before
 * it connects to any bus. Whether a mapping is aligned, fits its file or overlaps another is the
 * daemon's to say.
 */

#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>

#include "config.h"
#include "ctl-bus.h"
#include "ctl-output.h"
#include "ctl-parse.h"
#include "ctl-token.h"
#include "ctl-wait.h"
#include "stream-wire.h"
#include "vfiomig1.h"

/* Failures exit 1; a command line we cannot act on exits 2, so that a script can tell its own
 * mistake from a refusal by the daemon. run() and the verbs return it as a positive value. */
#define EXIT_USAGE 2
/* migrate and wait: the source sent everything and cannot know whether the destination committed.
 * Neither success nor failure: the devices stay stopped until an operator resolves the job, so a
 * script must not treat it as either. */
#define EXIT_INDETERMINATE 3

#define usage_error(...) (log_error(__VA_ARGS__), EXIT_USAGE)

static const char *arg_address = NULL;
static JsonFormat arg_json = JSON_FORMAT_OFF;
static uint64_t arg_timeout_usec = 0;
static bool arg_quiet = false;
static CtlOptionValue *arg_options = NULL;
static size_t arg_n_options = 0;
static const char *arg_recover = NULL;
static bool arg_force_without_p2p = false;
static const char *arg_backend = NULL;
static const char *arg_sim_mapping = NULL;
static const char *arg_file = NULL;
static const char *arg_data = NULL;
static const char *arg_output = NULL;
static uint64_t arg_offset = 0, arg_length = 0, arg_iova = 0;
static bool arg_offset_set = false, arg_length_set = false, arg_iova_set = false;
static int arg_access = -1; /* CTL_ACCESS_* bits; unset means read and write */
static bool arg_run = false;
static uint64_t arg_reassembly_budget = 0, arg_stall_timeout = 0;
static bool arg_reassembly_budget_set = false, arg_stall_timeout_set = false;
static uint64_t arg_setup_timeout = 0;
static bool arg_setup_timeout_set = false;
static const char *arg_to = NULL;
static const char *arg_token = NULL;
static const char *arg_token_file = NULL;
static unsigned arg_channels = 0;
static bool arg_channels_set = false;
static bool arg_no_precopy = false;
static uint64_t arg_bandwidth = 0, arg_downtime = 0;
static bool arg_bandwidth_set = false, arg_downtime_set = false;
static const char *arg_switchover = NULL;
static bool arg_no_io_uring = false;
static bool arg_no_wait = false;

/* sim-dma write --file reads the whole file into one message; the daemon's own limit per DMA
 * is far lower and it says so, but nothing larger than this is worth reading into memory. */
#define SIM_DMA_FILE_MAX (UINT64_C(64) << 20)

static void arg_options_free(void) {
        for (size_t i = 0; i < arg_n_options; i++)
                ctl_option_value_done(&arg_options[i]);
        free(arg_options);
        arg_options = NULL;
        arg_n_options = 0;
}

static const char *yes_no(bool b) {
        return b ? "yes" : "no";
}

/* Empty values read better as "n/a" than as nothing after the colon. */
static const char *na(const char *s) {
        return s && *s ? s : "n/a";
}

static int acquire_bus(sd_bus **ret) {
        return ctl_bus_connect(arg_address, arg_timeout_usec, ret);
}

static int check_device_name(const char *dev) {
        if (!ctl_device_name_is_valid(dev))
                return usage_error("Invalid device '%s': expected an id, an address or an object path.", dev);
        return 0;
}

static int check_space_name(const char *space) {
        if (!ctl_space_name_is_valid(space))
                return usage_error("Invalid address space '%s': expected an id such as s0, or an object path "
                                   "%s/ID.", space, VFIOMIG_SPACE_PATH_PREFIX);
        return 0;
}

/* A usage error unless the option a verb needs was given. */
static int require_option(const char *verb, bool given, const char *option) {
        if (!given)
                return usage_error("'%s' needs %s. See '%s --help'.", verb, option, PROGRAM_NAME);
        return 0;
}

static int check_state(const char *what, const char *state) {
        _cleanup_free_ char *states = NULL;

        if (ctl_state_is_settable(state))
                return 0;

        states = ctl_settable_states_list();
        if (!states)
                return log_error_errno(ENOMEM, "Out of memory.");
        if (streq(state, "error"))
                return usage_error("Invalid %s 'error': a device only ever falls into it; valid states: %s.",
                                   what, states);
        return usage_error("Invalid %s '%s'; valid states: %s.", what, state, states);
}

static int device_to_json(const DeviceInfo *d, bool full, json_object **ret) {
        _cleanup_(json_object_putp) json_object *j = NULL;
        int r;

        j = json_object_new_object();
        if (!j)
                return -ENOMEM;

        r = json_add_string(j, "id", d->id);
        if (r >= 0)
                r = json_add_string(j, "address", d->address);
        if (r >= 0)
                r = json_add_string(j, "object", d->object);
        if (r >= 0)
                r = json_add_string(j, "driver", d->driver);
        if (r >= 0)
                r = json_add_string(j, "backend", d->backend);
        if (r >= 0 && full)
                r = json_add_strv(j, "migration_flags", d->migration_flags);
        if (r >= 0)
                r = json_add_string(j, "state", d->state);
        if (r >= 0)
                r = json_add_bool(j, "migratable", d->migratable);
        if (r >= 0 && full)
                r = json_add_string(j, "migratable_reason", d->migratable_reason);
        if (r >= 0 && full)
                r = json_add_uint64(j, "stop_copy_size", d->stop_copy_size);
        if (r >= 0 && full)
                r = json_add_string(j, "last_transition", d->last_transition);
        if (r >= 0 && full)
                r = json_add_string(j, "address_space",
                                    d->address_space && !streq(d->address_space, "/") ? d->address_space : NULL);
        if (r >= 0 && full)
                r = json_add_uint64(j, "clients", d->clients);
        if (r >= 0 && full)
                r = json_add_string(j, "migration",
                                    d->migration && !streq(d->migration, "/") ? d->migration : NULL);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(j);
        return 0;
}

static int devices_to_json(const DeviceList *l, json_object **ret) {
        _cleanup_(json_object_putp) json_object *array = NULL;
        int r;

        array = json_object_new_array();
        if (!array)
                return -ENOMEM;
        for (size_t i = 0; i < l->n_devices; i++) {
                json_object *j = NULL;

                r = device_to_json(&l->devices[i], /* full= */ false, &j);
                if (r < 0)
                        return r;
                r = json_append(array, j);
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(array);
        return 0;
}

static int devices_to_table(const DeviceList *l, Table **ret) {
        static const char *const headers[] = { "ID", "ADDRESS", "DRIVER", "BACKEND", "STATE", "MIGRATABLE" };
        _cleanup_(table_freep) Table *t = NULL;
        int r;

        t = table_new(headers, ELEMENTSOF(headers));
        if (!t)
                return -ENOMEM;
        for (size_t i = 0; i < l->n_devices; i++) {
                const DeviceInfo *d = &l->devices[i];
                const char *row[] = { d->id, d->address, d->driver, d->backend, d->state, yes_no(d->migratable) };

                r = table_add_row(t, row);
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(t);
        return 0;
}

static int print_json(json_object *j) {
        if (arg_quiet)
                return 0;
        return json_print(j, arg_json, stdout);
}

/* A listing's table, or the empty message when it has no rows; nothing with --quiet. */
static int print_table(Table *t, size_t n_rows, const char *empty) {
        if (arg_quiet)
                return 0;
        if (n_rows == 0) {
                puts(empty);
                return 0;
        }
        return table_print(t, stdout);
}

static int print_devices(const DeviceList *l) {
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_(table_freep) Table *t = NULL;
        int r;

        if (arg_json != JSON_FORMAT_OFF) {
                r = devices_to_json(l, &j);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        r = devices_to_table(l, &t);
        if (r < 0)
                return log_error_errno(r, "Failed to build table: %m");
        return print_table(t, l->n_devices, "No devices attached.");
}

static int verb_list(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(device_list_done) DeviceList l = {};
        int r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_get_devices(bus, &l);
        if (r < 0)
                return r;

        return print_devices(&l);
}

static int status_manager(void) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL, *devices = NULL;
        _cleanup_(manager_info_done) ManagerInfo m = {};
        _cleanup_(device_list_done) DeviceList l = {};
        _cleanup_(table_freep) Table *t = NULL;
        _cleanup_free_ char *features = NULL, *addresses = NULL;
        char pinned[FORMAT_BYTES_MAX];
        int r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_get_manager_info(bus, &m);
        if (r < 0)
                return r;
        r = ctl_get_devices(bus, &l);
        if (r < 0)
                return r;

        if (arg_json != JSON_FORMAT_OFF) {
                j = json_object_new_object();
                if (!j)
                        return log_error_errno(ENOMEM, "Out of memory.");
                r = json_add_string(j, "version", m.version);
                if (r >= 0)
                        r = json_add_strv(j, "kernel_features", m.kernel_features);
                if (r >= 0)
                        r = json_add_bool(j, "simulation_allowed", m.simulation_allowed);
                if (r >= 0)
                        r = json_add_uint64(j, "device_count", m.device_count);
                if (r >= 0)
                        r = json_add_uint64(j, "max_devices", m.max_devices);
                if (r >= 0)
                        r = json_add_uint64(j, "max_address_spaces", m.max_address_spaces);
                if (r >= 0)
                        r = json_add_uint64(j, "max_mappings", m.max_mappings);
                if (r >= 0)
                        r = json_add_uint64(j, "max_pinned_bytes", m.max_pinned_bytes);
                if (r >= 0)
                        r = json_add_bool(j, "file_descriptor_store", m.file_descriptor_store);
                if (r >= 0)
                        r = json_add_uint64(j, "max_migrations", m.max_migrations);
                if (r >= 0)
                        r = json_add_strv(j, "stream_addresses", m.stream_addresses);
                if (r >= 0)
                        r = devices_to_json(&l, &devices);
                if (r >= 0)
                        r = json_add(j, "devices", TAKE_PTR(devices));
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        features = strv_join_spaces(m.kernel_features);
        addresses = strv_join_spaces(m.stream_addresses);
        if (!features || !addresses)
                return log_error_errno(ENOMEM, "Out of memory.");
        r = devices_to_table(&l, &t);
        if (r < 0)
                return log_error_errno(r, "Failed to build table: %m");
        if (arg_quiet)
                return 0;

        printf("Version: %s\n"
               "KernelFeatures: %s\n"
               "SimulationAllowed: %s\n"
               "FileDescriptorStore: %s\n"
               "DeviceCount: %" PRIu32 "\n"
               "MaxDevices: %" PRIu32 "\n"
               "MaxAddressSpaces: %" PRIu32 "\n"
               "MaxMappings: %" PRIu32 "\n"
               "MaxPinnedBytes: %" PRIu64 " (%s)\n"
               "MaxMigrations: %" PRIu32 "\n"
               "StreamAddresses: %s\n"
               "\n",
               na(m.version), na(features), yes_no(m.simulation_allowed), yes_no(m.file_descriptor_store),
               m.device_count, m.max_devices, m.max_address_spaces, m.max_mappings, m.max_pinned_bytes,
               format_bytes(pinned, sizeof(pinned), m.max_pinned_bytes), m.max_migrations, na(addresses));
        if (l.n_devices == 0) {
                puts("No devices attached.");
                return 0;
        }
        return table_print(t, stdout);
}

static int status_device(const char *dev) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_(device_info_done) DeviceInfo d = {};
        _cleanup_free_ char *path = NULL, *flags = NULL;
        char size[FORMAT_BYTES_MAX];
        int r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_resolve_device(bus, dev, &path);
        if (r < 0)
                return r;
        r = ctl_get_device_info(bus, path, /* gone_ok= */ false, &d);
        if (r < 0)
                return r;

        if (arg_json != JSON_FORMAT_OFF) {
                r = device_to_json(&d, /* full= */ true, &j);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        flags = strv_join_spaces(d.migration_flags);
        if (!flags)
                return log_error_errno(ENOMEM, "Out of memory.");
        if (arg_quiet)
                return 0;

        printf("Id: %s\n"
               "Object: %s\n"
               "Address: %s\n"
               "Driver: %s\n"
               "Backend: %s\n"
               "MigrationFlags: %s\n"
               "Migratable: %s\n"
               "MigratableReason: %s\n"
               "State: %s\n",
               na(d.id), d.object, na(d.address), na(d.driver), na(d.backend), na(flags),
               yes_no(d.migratable), na(d.migratable_reason), na(d.state));
        if (d.stop_copy_size >= 1024)
                printf("StopCopySize: %" PRIu64 " (%s)\n", d.stop_copy_size,
                       format_bytes(size, sizeof(size), d.stop_copy_size));
        else
                printf("StopCopySize: %" PRIu64 "\n", d.stop_copy_size);
        printf("LastTransition: %s\n"
               "AddressSpace: %s\n"
               "Clients: %" PRIu32 "\n"
               "Migration: %s\n",
               na(d.last_transition), d.address_space && !streq(d.address_space, "/") ? d.address_space : "n/a",
               d.clients, d.migration && !streq(d.migration, "/") ? d.migration : "n/a");
        return 0;
}

static int verb_status(int argc, char *argv[]) {
        int r;

        if (argc < 2)
                return status_manager();

        r = check_device_name(argv[1]);
        if (r != 0)
                return r;
        return status_device(argv[1]);
}

static int append_sim_options(sd_bus_message *m) {
        int r;

        r = sd_bus_message_open_container(m, SD_BUS_TYPE_ARRAY, "{sv}");
        if (r < 0)
                return r;

        for (size_t i = 0; i < arg_n_options; i++) {
                const CtlOptionValue *o = &arg_options[i];
                const char *sig = o->option->signature;

                r = sd_bus_message_open_container(m, SD_BUS_TYPE_DICT_ENTRY, "sv");
                if (r < 0)
                        return r;
                r = sd_bus_message_append_basic(m, 's', o->option->key);
                if (r < 0)
                        return r;
                r = sd_bus_message_open_container(m, SD_BUS_TYPE_VARIANT, sig);
                if (r < 0)
                        return r;

                if (streq(sig, "t"))
                        r = sd_bus_message_append_basic(m, 't', &o->u64);
                else if (streq(sig, "u")) {
                        uint32_t u = (uint32_t) o->u64;

                        r = sd_bus_message_append_basic(m, 'u', &u);
                } else if (streq(sig, "b")) {
                        int b = o->boolean;

                        r = sd_bus_message_append_basic(m, 'b', &b);
                } else if (streq(sig, "s"))
                        r = sd_bus_message_append_basic(m, 's', o->str);
                else if (streq(sig, "as"))
                        r = sd_bus_message_append_strv(m, o->strv);
                else
                        r = -EOPNOTSUPP; /* ctl_option_value_parse() let no other signature through */
                if (r < 0)
                        return r;

                r = sd_bus_message_close_container(m);
                if (r < 0)
                        return r;
                r = sd_bus_message_close_container(m);
                if (r < 0)
                        return r;
        }

        return sd_bus_message_close_container(m);
}

static int verb_attach(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_(device_info_done) DeviceInfo d = {};
        const char *address = argv[1], *path;
        int r;

        if (!*address)
                return usage_error("Empty device address.");

        r = acquire_bus(&bus);
        if (r < 0)
                return r;

        r = ctl_new_method_call(bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, "AttachDevice", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "s", address);
        if (r >= 0)
                r = append_sim_options(m);
        if (r < 0)
                return log_error_errno(r, "Failed to append AttachDevice arguments: %m");

        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "o", &path);
        if (r < 0)
                return log_error_errno(r, "Failed to parse AttachDevice reply: %m");

        /* The daemon names the device; ask it rather than guess the id from the address. */
        r = ctl_get_device_info(bus, path, /* gone_ok= */ false, &d);
        if (r < 0)
                return r;

        if (arg_json != JSON_FORMAT_OFF) {
                j = json_object_new_object();
                if (!j)
                        return log_error_errno(ENOMEM, "Out of memory.");
                r = json_add_string(j, "id", d.id);
                if (r >= 0)
                        r = json_add_string(j, "object", d.object);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        if (!arg_quiet)
                printf("Attached %s as %s (%s)\n", d.address && *d.address ? d.address : address,
                       na(d.id), d.object);
        return 0;
}

static int verb_detach(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(device_info_done) DeviceInfo d = {};
        const char *dev = argv[1];
        int r;

        r = check_device_name(dev);
        if (r != 0)
                return r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;

        /* DetachDevice takes an id or address; a path is translated through the device's Id. */
        if (dev[0] == '/') {
                r = ctl_get_device_info(bus, dev, /* gone_ok= */ false, &d);
                if (r < 0)
                        return r;
                dev = d.id;
        }

        r = ctl_new_method_call(bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, "DetachDevice", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "s", dev);
        if (r < 0)
                return log_error_errno(r, "Failed to append DetachDevice arguments: %m");

        return ctl_call(bus, m, NULL);
}

static int verb_set_state(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_(device_info_done) DeviceInfo d = {};
        _cleanup_free_ char *path = NULL;
        const char *dev = argv[1], *target = argv[2], *reached;
        int r;

        r = check_device_name(dev);
        if (r != 0)
                return r;
        r = check_state("state", target);
        if (r != 0)
                return r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_resolve_device(bus, dev, &path);
        if (r < 0)
                return r;
        /* Read before the transition, so that nothing can fail after the device has moved. */
        if (arg_json != JSON_FORMAT_OFF) {
                r = ctl_get_device_info(bus, path, /* gone_ok= */ false, &d);
                if (r < 0)
                        return r;
        }

        r = ctl_new_method_call(bus, path, VFIOMIG_DEVICE_INTERFACE, "SetState", &m);
        if (r < 0)
                return r;
        if (arg_recover)
                r = sd_bus_message_append(m, "sa{sv}", target, 1, VFIOMIG_OPTION_RECOVER_STATE, "s", arg_recover);
        else
                r = sd_bus_message_append(m, "sa{sv}", target, 0);
        if (r < 0)
                return log_error_errno(r, "Failed to append SetState arguments: %m");

        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "s", &reached);
        if (r < 0)
                return log_error_errno(r, "Failed to parse SetState reply: %m");

        /* Success means the target was reached; anything else must not look like success. */
        if (!streq(reached, target)) {
                log_error("%s is in state '%s', not the requested '%s'.", dev, reached, target);
                return -EIO;
        }

        if (arg_json != JSON_FORMAT_OFF) {
                j = json_object_new_object();
                if (!j)
                        return log_error_errno(ENOMEM, "Out of memory.");
                r = json_add_string(j, "id", d.id);
                if (r >= 0)
                        r = json_add_string(j, "object", path);
                if (r >= 0)
                        r = json_add_string(j, "state", reached);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        if (!arg_quiet)
                puts(reached);
        return 0;
}

static int verb_set_states(int argc, char *argv[]) {
        static const char *const headers[] = { "ID", "STATE" };
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(json_object_putp) json_object *array = NULL;
        _cleanup_(device_list_done) DeviceList l = {};
        _cleanup_(table_freep) Table *t = NULL;
        const char *target = argv[1], *path, *reached;
        size_t n = (size_t) argc - 2;
        bool all_reached = true;
        int r;

        r = check_state("state", target);
        if (r != 0)
                return r;
        for (int i = 2; i < argc; i++) {
                r = check_device_name(argv[i]);
                if (r != 0)
                        return r;
        }

        r = acquire_bus(&bus);
        if (r < 0)
                return r;

        /* Ids for the report are read before the move, so that nothing can fail after it. */
        l.devices = new0(DeviceInfo, n);
        if (!l.devices)
                return log_error_errno(ENOMEM, "Out of memory.");
        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *p = NULL;

                r = ctl_resolve_device(bus, argv[2 + i], &p);
                if (r < 0)
                        return r;
                r = ctl_get_device_info(bus, p, /* gone_ok= */ false, &l.devices[i]);
                if (r < 0)
                        return r;
                l.n_devices++;
        }

        r = ctl_new_method_call(bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, "SetStates", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(m, SD_BUS_TYPE_ARRAY, "o");
        for (size_t i = 0; r >= 0 && i < n; i++)
                r = sd_bus_message_append_basic(m, 'o', l.devices[i].object);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0 && arg_force_without_p2p)
                r = sd_bus_message_append(m, "sa{sv}", target, 1, VFIOMIG_OPTION_FORCE_WITHOUT_P2P, "b", 1);
        else if (r >= 0)
                r = sd_bus_message_append(m, "sa{sv}", target, 0);
        if (r < 0)
                return log_error_errno(r, "Failed to append SetStates arguments: %m");

        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;

        array = json_object_new_array();
        t = table_new(headers, ELEMENTSOF(headers));
        if (!array || !t)
                return log_error_errno(ENOMEM, "Out of memory.");

        r = sd_bus_message_enter_container(reply, SD_BUS_TYPE_ARRAY, "(os)");
        if (r < 0)
                return log_error_errno(r, "Failed to parse SetStates reply: %m");
        while ((r = sd_bus_message_read(reply, "(os)", &path, &reached)) > 0) {
                _cleanup_(json_object_putp) json_object *j = NULL;
                const char *id = path;

                for (size_t i = 0; i < l.n_devices; i++)
                        if (streq(l.devices[i].object, path) && l.devices[i].id) {
                                id = l.devices[i].id;
                                break;
                        }

                if (!streq(reached, target)) {
                        log_error("%s is in state '%s', not the requested '%s'.", id, reached, target);
                        all_reached = false;
                }

                j = json_object_new_object();
                if (!j)
                        return log_error_errno(ENOMEM, "Out of memory.");
                r = json_add_string(j, "id", id);
                if (r >= 0)
                        r = json_add_string(j, "object", path);
                if (r >= 0)
                        r = json_add_string(j, "state", reached);
                if (r >= 0)
                        r = json_append(array, TAKE_PTR(j));
                if (r >= 0)
                        r = table_add_row(t, (const char *const[]) { id, reached });
                if (r < 0)
                        return log_error_errno(r, "Failed to build output: %m");
        }
        if (r < 0)
                return log_error_errno(r, "Failed to parse SetStates reply: %m");
        r = sd_bus_message_exit_container(reply);
        if (r < 0)
                return log_error_errno(r, "Failed to parse SetStates reply: %m");

        if (!all_reached)
                return -EIO;

        if (arg_json != JSON_FORMAT_OFF)
                return print_json(array);
        if (arg_quiet)
                return 0;
        return table_print(t, stdout);
}

static int call_device_method(const char *dev, const char *member, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *path = NULL;
        int r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_resolve_device(bus, dev, &path);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, path, VFIOMIG_DEVICE_INTERFACE, member, &m);
        if (r < 0)
                return r;
        /* The reply is complete in memory, so it stays readable after the bus is closed here. */
        return ctl_call(bus, m, ret_reply);
}

static int verb_reset(int argc, char *argv[]) {
        int r;

        r = check_device_name(argv[1]);
        if (r != 0)
                return r;
        return call_device_method(argv[1], "Reset", NULL);
}

static int verb_precopy_info(int argc, char *argv[]) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        uint64_t initial, dirty;
        int r;

        r = check_device_name(argv[1]);
        if (r != 0)
                return r;
        r = call_device_method(argv[1], "GetPrecopyInfo", &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "tt", &initial, &dirty);
        if (r < 0)
                return log_error_errno(r, "Failed to parse GetPrecopyInfo reply: %m");

        if (arg_json != JSON_FORMAT_OFF) {
                j = json_object_new_object();
                if (!j)
                        return log_error_errno(ENOMEM, "Out of memory.");
                r = json_add_uint64(j, "initial_bytes", initial);
                if (r >= 0)
                        r = json_add_uint64(j, "dirty_bytes", dirty);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        if (!arg_quiet)
                printf("initial: %" PRIu64 " bytes, dirty: %" PRIu64 " bytes\n", initial, dirty);
        return 0;
}

/* ---- address spaces ---- */

static int space_to_json(const SpaceInfo *s, bool full, json_object **ret) {
        _cleanup_(json_object_putp) json_object *j = NULL, *mappings = NULL;
        int r;

        j = json_object_new_object();
        if (!j)
                return -ENOMEM;

        r = json_add_string(j, "id", s->id);
        if (r >= 0)
                r = json_add_string(j, "object", s->object);
        if (r >= 0)
                r = json_add_string(j, "backend", s->backend);
        if (r >= 0)
                r = json_add_uint64(j, "mapping_count", s->mapping_count);
        if (r >= 0)
                r = json_add_uint64(j, "pinned_bytes", s->pinned_bytes);
        if (r >= 0)
                r = json_add_strv(j, "devices", s->devices);
        if (r >= 0 && full)
                r = json_add_string(j, "live_update", s->live_update);
        if (r < 0)
                return r;

        if (full) {
                mappings = json_object_new_array();
                if (!mappings)
                        return -ENOMEM;
                for (size_t i = 0; i < s->n_mappings; i++) {
                        _cleanup_(json_object_putp) json_object *e = json_object_new_object();
                        const MappingInfo *m = &s->mappings[i];

                        if (!e)
                                return -ENOMEM;
                        r = json_add_uint64(e, "iova", m->iova);
                        if (r >= 0)
                                r = json_add_uint64(e, "length", m->length);
                        if (r >= 0)
                                r = json_add_uint64(e, "offset", m->offset);
                        if (r >= 0)
                                r = json_add_strv(e, "access", m->access);
                        if (r >= 0)
                                r = json_append(mappings, TAKE_PTR(e));
                        if (r < 0)
                                return r;
                }
                r = json_add(j, "mappings", TAKE_PTR(mappings));
                if (r < 0)
                        return r;
        }

        *ret = TAKE_PTR(j);
        return 0;
}

/* "sim_a,sim_b" from device object paths, "-" for none. */
static char *device_ids_join(char *const *paths) {
        size_t len = 2;
        char *s, *p;

        for (char *const *i = paths; i && *i; i++)
                len += strlen(ctl_object_path_last(*i)) + 1;
        s = p = malloc(len);
        if (!s)
                return NULL;
        *p = 0;
        for (char *const *i = paths; i && *i; i++)
                p = stpcpy(stpcpy(p, i == paths ? "" : ","), ctl_object_path_last(*i));
        if (p == s)
                strcpy(s, "-");
        return s;
}

static int verb_space_create(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_(space_info_done) SpaceInfo info = {};
        const char *path;
        int r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;

        r = ctl_new_method_call(bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, "CreateAddressSpace", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(m, SD_BUS_TYPE_ARRAY, "{sv}");
        if (r >= 0 && arg_backend)
                r = sd_bus_message_append(m, "{sv}", VFIOMIG_OPTION_BACKEND, "s", arg_backend);
        if (r >= 0 && arg_sim_mapping)
                r = sd_bus_message_append(m, "{sv}", VFIOMIG_OPTION_SIM_MAPPING, "s", arg_sim_mapping);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_error_errno(r, "Failed to append CreateAddressSpace arguments: %m");

        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "o", &path);
        if (r < 0)
                return log_error_errno(r, "Failed to parse CreateAddressSpace reply: %m");

        /* The id is the last element of the path; the backend the daemon chose is worth showing,
         * but a space destroyed meanwhile by someone else does not make this command fail. */
        r = ctl_get_space_info(bus, path, /* with_mappings= */ false, /* gone_ok= */ true, &info);
        if (r < 0)
                return r;

        if (arg_json != JSON_FORMAT_OFF) {
                j = json_object_new_object();
                if (!j)
                        return log_error_errno(ENOMEM, "Out of memory.");
                r = json_add_string(j, "id", ctl_object_path_last(path));
                if (r >= 0)
                        r = json_add_string(j, "object", path);
                if (r >= 0)
                        r = json_add_string(j, "backend", info.backend);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        if (!arg_quiet)
                printf("Created %s%saddress space %s (%s)\n", info.backend ?: "", info.backend ? " " : "",
                       ctl_object_path_last(path), path);
        return 0;
}

static int verb_space_list(int argc, char *argv[]) {
        static const char *const headers[] = { "ID", "BACKEND", "MAPPINGS", "PINNED", "DEVICES" };
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(json_object_putp) json_object *array = NULL;
        _cleanup_(space_list_done) SpaceList l = {};
        _cleanup_(table_freep) Table *t = NULL;
        int r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_get_spaces(bus, &l);
        if (r < 0)
                return r;

        if (arg_json != JSON_FORMAT_OFF) {
                array = json_object_new_array();
                if (!array)
                        return log_error_errno(ENOMEM, "Out of memory.");
                for (size_t i = 0; i < l.n_spaces; i++) {
                        json_object *j = NULL;

                        r = space_to_json(&l.spaces[i], /* full= */ false, &j);
                        if (r >= 0)
                                r = json_append(array, j);
                        if (r < 0)
                                return log_error_errno(r, "Failed to build JSON: %m");
                }
                return print_json(array);
        }

        t = table_new(headers, ELEMENTSOF(headers));
        if (!t)
                return log_error_errno(ENOMEM, "Out of memory.");
        for (size_t i = 0; i < l.n_spaces; i++) {
                const SpaceInfo *s = &l.spaces[i];
                _cleanup_free_ char *devices = device_ids_join(s->devices);
                char count[16], pinned[FORMAT_BYTES_MAX];

                if (!devices)
                        return log_error_errno(ENOMEM, "Out of memory.");
                (void) snprintf(count, sizeof(count), "%" PRIu32, s->mapping_count);
                r = table_add_row(t, (const char *const[]) {
                        s->id, s->backend, count, format_bytes(pinned, sizeof(pinned), s->pinned_bytes), devices });
                if (r < 0)
                        return log_error_errno(r, "Failed to build table: %m");
        }
        return print_table(t, l.n_spaces, "No address spaces.");
}

static int verb_space_show(int argc, char *argv[]) {
        static const char *const headers[] = { "IOVA", "LENGTH", "OFFSET", "ACCESS" };
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_(space_info_done) SpaceInfo s = {};
        _cleanup_(table_freep) Table *t = NULL;
        _cleanup_free_ char *path = NULL, *devices = NULL;
        char pinned[FORMAT_BYTES_MAX];
        int r;

        r = check_space_name(argv[1]);
        if (r != 0)
                return r;
        r = ctl_space_path(argv[1], &path);
        if (r < 0)
                return log_error_errno(r, "Out of memory.");

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_get_space_info(bus, path, /* with_mappings= */ true, /* gone_ok= */ false, &s);
        if (r < 0)
                return r;

        if (arg_json != JSON_FORMAT_OFF) {
                r = space_to_json(&s, /* full= */ true, &j);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        devices = strv_join_spaces(s.devices);
        t = table_new(headers, ELEMENTSOF(headers));
        if (!devices || !t)
                return log_error_errno(ENOMEM, "Out of memory.");
        for (size_t i = 0; i < s.n_mappings; i++) {
                const MappingInfo *m = &s.mappings[i];
                _cleanup_free_ char *access = ctl_access_format(m->access);
                char iova[24], length[24], offset[24];

                if (!access)
                        return log_error_errno(ENOMEM, "Out of memory.");
                (void) snprintf(iova, sizeof(iova), "0x%" PRIx64, m->iova);
                (void) snprintf(length, sizeof(length), "0x%" PRIx64, m->length);
                (void) snprintf(offset, sizeof(offset), "0x%" PRIx64, m->offset);
                r = table_add_row(t, (const char *const[]) { iova, length, offset, access });
                if (r < 0)
                        return log_error_errno(r, "Failed to build table: %m");
        }
        if (arg_quiet)
                return 0;

        printf("Id: %s\n"
               "Object: %s\n"
               "Backend: %s\n"
               "MappingCount: %" PRIu32 "\n",
               na(s.id), s.object, na(s.backend), s.mapping_count);
        if (s.pinned_bytes >= 1024)
                printf("PinnedBytes: %" PRIu64 " (%s)\n", s.pinned_bytes,
                       format_bytes(pinned, sizeof(pinned), s.pinned_bytes));
        else
                printf("PinnedBytes: %" PRIu64 "\n", s.pinned_bytes);
        printf("LiveUpdate: %s\n"
               "Devices: %s\n"
               "\n",
               na(s.live_update), na(devices));
        if (s.n_mappings == 0) {
                puts("No mappings.");
                return 0;
        }
        return table_print(t, stdout);
}

static int verb_space_destroy(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *path = NULL;
        int r;

        r = check_space_name(argv[1]);
        if (r != 0)
                return r;
        r = ctl_space_path(argv[1], &path);
        if (r < 0)
                return log_error_errno(r, "Out of memory.");

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, "DestroyAddressSpace", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "o", path);
        if (r < 0)
                return log_error_errno(r, "Failed to append DestroyAddressSpace arguments: %m");
        return ctl_call(bus, m, NULL);
}

/* Opens the file to map the way the access asks for, and never blocks on a FIFO: the daemon is
 * the one to say that a pipe cannot be mapped. */
static int open_mapped_file(const char *path, int access) {
        _cleanup_close_ int fd = -EBADF;
        int flags;

        fd = open(path, ctl_access_open_mode(access) | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        if (fd < 0)
                return log_error_errno(errno, "Failed to open %s for %s: %m", path,
                                       access & CTL_ACCESS_WRITE ? "reading and writing" : "reading");
        flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0)
                return log_error_errno(errno, "Failed to set up %s: %m", path);
        return TAKE_FD(fd);
}

static int verb_map(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -EBADF;
        int access = arg_access >= 0 ? arg_access : CTL_ACCESS_READ | CTL_ACCESS_WRITE;
        int r;

        r = check_space_name(argv[1]);
        if (r == 0)
                r = require_option("map", arg_file, "--file=PATH");
        if (r == 0)
                r = require_option("map", arg_length_set, "--length=N");
        if (r == 0)
                r = require_option("map", arg_iova_set, "--iova=N");
        if (r != 0)
                return r;
        r = ctl_space_path(argv[1], &path);
        if (r < 0)
                return log_error_errno(r, "Out of memory.");

        fd = open_mapped_file(arg_file, access);
        if (fd < 0)
                return fd;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, path, VFIOMIG_SPACE_INTERFACE, "Map", &m);
        if (r < 0)
                return r;
        /* sd-bus sends a duplicate of fd; ours closes when we return. */
        r = sd_bus_message_append(m, "httt", fd, arg_offset, arg_length, arg_iova);
        if (r >= 0)
                r = sd_bus_message_append_strv(m, (char **) ctl_access_to_bus_names(access));
        if (r < 0)
                return log_error_errno(r, "Failed to append Map arguments: %m");
        return ctl_call(bus, m, NULL);
}

static int verb_unmap(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *path = NULL;
        int r;

        r = check_space_name(argv[1]);
        if (r == 0)
                r = require_option("unmap", arg_iova_set, "--iova=N");
        if (r == 0)
                r = require_option("unmap", arg_length_set, "--length=N");
        if (r != 0)
                return r;
        r = ctl_space_path(argv[1], &path);
        if (r < 0)
                return log_error_errno(r, "Out of memory.");

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, path, VFIOMIG_SPACE_INTERFACE, "Unmap", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "tt", arg_iova, arg_length);
        if (r < 0)
                return log_error_errno(r, "Failed to append Unmap arguments: %m");
        return ctl_call(bus, m, NULL);
}

static int verb_attach_space(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *device = NULL, *space = NULL;
        int r;

        r = check_device_name(argv[1]);
        if (r == 0)
                r = check_space_name(argv[2]);
        if (r != 0)
                return r;
        r = ctl_space_path(argv[2], &space);
        if (r < 0)
                return log_error_errno(r, "Out of memory.");

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_resolve_device(bus, argv[1], &device);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, device, VFIOMIG_DEVICE_INTERFACE, "AttachAddressSpace", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "o", space);
        if (r < 0)
                return log_error_errno(r, "Failed to append AttachAddressSpace arguments: %m");
        return ctl_call(bus, m, NULL);
}

/* ---- simulated DMA ---- */

/* The device at DEV, which must be simulated: only those have org.vfiomig1.SimDevice, and the
 * bus's own error for a missing interface would blame the daemon's version. */
static int resolve_sim_device(sd_bus *bus, const char *dev, char **ret_path) {
        _cleanup_(device_info_done) DeviceInfo d = {};
        _cleanup_free_ char *path = NULL;
        int r;

        r = ctl_resolve_device(bus, dev, &path);
        if (r < 0)
                return r;
        r = ctl_get_device_info(bus, path, /* gone_ok= */ false, &d);
        if (r < 0)
                return r;
        if (!streq_ptr(d.backend, VFIOMIG_BACKEND_SIM)) {
                log_error("%s is a %s device: sim-dma drives only simulated devices (sim:NAME).", na(d.id),
                          na(d.backend));
                return -EOPNOTSUPP;
        }
        *ret_path = TAKE_PTR(path);
        return 0;
}

/* All of fd, at most max bytes. -EFBIG past max, for the caller to word; other failures are logged
 * naming name. */
static int read_whole_fd(int fd, const char *name, uint64_t max, void **ret, size_t *ret_size) {
        _cleanup_free_ uint8_t *buf = NULL;
        size_t size = 0, allocated = 0;

        for (;;) {
                ssize_t n;

                if (size == allocated) {
                        uint8_t *grown;

                        if (allocated > max)
                                return -EFBIG;
                        allocated = allocated ? allocated * 2 : 65536;
                        grown = realloc(buf, allocated);
                        if (!grown)
                                return log_error_errno(ENOMEM, "Out of memory.");
                        buf = grown;
                }
                n = read(fd, buf + size, allocated - size);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return log_error_errno(errno, "Failed to read %s: %m", name);
                }
                if (n == 0)
                        break;
                size += (size_t) n;
        }
        if (size > max)
                return -EFBIG;

        *ret = TAKE_PTR(buf);
        *ret_size = size;
        return 0;
}

static int read_whole_file(const char *path, uint64_t max, void **ret, size_t *ret_size) {
        _cleanup_close_ int fd = -EBADF;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return log_error_errno(errno, "Failed to open %s: %m", path);
        r = read_whole_fd(fd, path, max, ret, ret_size);
        if (r == -EFBIG)
                return log_error_errno(r, "%s is larger than %" PRIu64 " bytes.", path, max);
        return r;
}

static int write_all(int fd, const void *data, size_t size) {
        const uint8_t *p = data;

        while (size > 0) {
                ssize_t n = write(fd, p, size);

                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                p += n;
                size -= (size_t) n;
        }
        return 0;
}

static int verb_sim_dma_write(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *path = NULL;
        _cleanup_free_ void *buf = NULL;
        const void *data;
        size_t size = 0;
        int r;

        r = check_device_name(argv[1]);
        if (r == 0)
                r = require_option("sim-dma write", arg_iova_set, "--iova=N");
        if (r == 0)
                r = require_option("sim-dma write", arg_data || arg_file, "--data=STRING or --file=PATH");
        if (r != 0)
                return r;
        if (arg_data && arg_file)
                return usage_error("--data= and --file= exclude each other: give the bytes one way.");
        if (arg_data && !*arg_data)
                return usage_error("--data= is empty: a DMA writes at least one byte.");

        if (arg_file) {
                r = read_whole_file(arg_file, SIM_DMA_FILE_MAX, &buf, &size);
                if (r < 0)
                        return r;
                data = buf;
        } else {
                data = arg_data;
                size = strlen(arg_data);
        }

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = resolve_sim_device(bus, argv[1], &path);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, path, VFIOMIG_SIM_DEVICE_INTERFACE, "DmaWrite", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "t", arg_iova);
        if (r >= 0)
                r = sd_bus_message_append_array(m, 'y', data, size);
        if (r < 0)
                return log_error_errno(r, "Failed to append DmaWrite arguments: %m");
        return ctl_call(bus, m, NULL);
}

static int verb_sim_dma_read(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_free_ char *path = NULL, *encoded = NULL;
        _cleanup_close_ int fd = -EBADF;
        const void *data;
        size_t size;
        int r;

        r = check_device_name(argv[1]);
        if (r == 0)
                r = require_option("sim-dma read", arg_iova_set, "--iova=N");
        if (r == 0)
                r = require_option("sim-dma read", arg_length_set, "--length=N");
        if (r != 0)
                return r;
        if (arg_output && arg_json != JSON_FORMAT_OFF)
                return usage_error("--output= and --json= exclude each other: the bytes go to one place.");

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = resolve_sim_device(bus, argv[1], &path);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, path, VFIOMIG_SIM_DEVICE_INTERFACE, "DmaRead", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "tt", arg_iova, arg_length);
        if (r < 0)
                return log_error_errno(r, "Failed to append DmaRead arguments: %m");
        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read_array(reply, 'y', &data, &size);
        if (r < 0)
                return log_error_errno(r, "Failed to parse DmaRead reply: %m");

        if (arg_output) {
                if (streq(arg_output, "-")) {
                        if (arg_quiet)
                                return 0;
                        if (fwrite(data, 1, size, stdout) != size)
                                return log_error_errno(EIO, "Failed to write output: %m");
                        return 0;
                }
                fd = open(arg_output, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY, 0666);
                if (fd < 0)
                        return log_error_errno(errno, "Failed to open %s: %m", arg_output);
                r = write_all(fd, data, size);
                if (r < 0)
                        return log_error_errno(r, "Failed to write %s: %m", arg_output);
                if (close(TAKE_FD(fd)) < 0)
                        return log_error_errno(errno, "Failed to write %s: %m", arg_output);
                return 0;
        }

        if (arg_json != JSON_FORMAT_OFF) {
                encoded = base64_encode(data, size);
                j = json_object_new_object();
                if (!encoded || !j)
                        return log_error_errno(ENOMEM, "Out of memory.");
                r = json_add_uint64(j, "iova", arg_iova);
                if (r >= 0)
                        r = json_add_uint64(j, "length", size);
                if (r >= 0)
                        r = json_add_string(j, "data", encoded);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        if (arg_quiet)
                return 0;
        return hexdump(stdout, arg_iova, data, size);
}

/* ---- device state to and from files ---- */

/* How much longer than the transfer's deadline the call waits for the daemon's answer. */
#define TRANSFER_TIMEOUT_GRACE_USEC (UINT64_C(5) * 1000000)

static int append_option_u64(sd_bus_message *m, const char *key, uint64_t t);

/* "-" is our own stdin or stdout, so the state can flow through a pipe. */
static int open_state_file(const char *path, bool save) {
        int fd;

        if (streq(path, "-"))
                fd = fcntl(save ? STDOUT_FILENO : STDIN_FILENO, F_DUPFD_CLOEXEC, 3);
        else
                fd = save ? open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY, 0600)
                          : open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return log_error_errno(errno, "Failed to open %s for %s: %m", path, save ? "writing" : "reading");
        return fd;
}

static int transfer_state(const char *dev, const char *file, bool save) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -EBADF;
        uint64_t bytes, timeout_msec = 0;
        int r;

        r = check_device_name(dev);
        if (r != 0)
                return r;
        if (arg_timeout_usec > 0) {
                r = ctl_transfer_timeout_msec(arg_timeout_usec, &timeout_msec);
                if (r < 0)
                        return usage_error("--timeout= of %s is the transfer's deadline, at most a day (86400).",
                                           save ? "save-state" : "load-state");
        }
        if (save && streq(file, "-") && arg_json != JSON_FORMAT_OFF)
                return usage_error("'save-state DEV -' writes the state to stdout, which --json would share.");
        fd = open_state_file(file, save);
        if (fd < 0)
                return fd;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        /* A device's state may take a while to move. Without --timeout= the daemon's own deadline
         * (10 minutes) ends a stuck transfer, so the call need not time out here. With it, the
         * daemon gets it as the transfer's deadline and the call waits a little longer, so that
         * the daemon's Timeout, which says the device was put back, is what the user sees. */
        if (arg_timeout_usec == 0)
                r = sd_bus_set_method_call_timeout(bus, UINT64_MAX);
        else
                r = sd_bus_set_method_call_timeout(bus, arg_timeout_usec + TRANSFER_TIMEOUT_GRACE_USEC);
        if (r < 0)
                return log_error_errno(r, "Failed to set the method call timeout: %m");
        r = ctl_resolve_device(bus, dev, &path);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, path, VFIOMIG_DEVICE_INTERFACE, save ? "SaveState" : "LoadState", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "h", fd);
        if (r >= 0)
                r = sd_bus_message_open_container(m, SD_BUS_TYPE_ARRAY, "{sv}");
        if (r >= 0 && arg_timeout_usec > 0)
                r = append_option_u64(m, VFIOMIG_OPTION_TIMEOUT, timeout_msec);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_error_errno(r, "Failed to append arguments: %m");
        fd = safe_close(fd); /* the message holds its own copy: EOF reaches the daemon when it is done */
        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "t", &bytes);
        if (r < 0)
                return log_error_errno(r, "Failed to parse the reply: %m");

        if (arg_json != JSON_FORMAT_OFF) {
                j = json_object_new_object();
                if (!j)
                        return log_error_errno(ENOMEM, "Out of memory.");
                r = json_add_uint64(j, "bytes", bytes);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }
        if (!arg_quiet && !(save && streq(file, "-")))
                printf("%s %" PRIu64 " bytes of device state %s %s\n", save ? "Saved" : "Loaded", bytes,
                       save ? "to" : "from", streq(file, "-") ? "standard input" : file);
        return 0;
}

static int verb_save_state(int argc, char *argv[]) {
        return transfer_state(argv[1], argv[2], true);
}

static int verb_load_state(int argc, char *argv[]) {
        return transfer_state(argv[1], argv[2], false);
}

static int verb_cancel_transfer(int argc, char *argv[]) {
        int r;

        r = check_device_name(argv[1]);
        if (r != 0)
                return r;
        r = call_device_method(argv[1], "CancelTransfer", NULL);
        if (r < 0)
                return r;
        if (!arg_quiet)
                printf("The transfer of %s was cancelled; the device is idle again.\n", argv[1]);
        return 0;
}

static int verb_revoke_clients(int argc, char *argv[]) {
        int r;

        r = check_device_name(argv[1]);
        if (r != 0)
                return r;
        return call_device_method(argv[1], "RevokeClients", NULL);
}

/* ---- migrations ---- */

static int check_job_name(const char *job, char **ret_path) {
        int r;

        r = ctl_migration_path(job, ret_path);
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory.");
        if (r == -ERANGE)
                return usage_error("Invalid migration '%s': the id is past 2^32-1.", job);
        if (r < 0)
                return usage_error("Invalid migration '%s': expected its id N (3), _N or the object path %s/_N.",
                                   job, VFIOMIG_MIGRATION_PATH_PREFIX);
        return 0;
}

/* The object paths of DEV... in the order given. */
static int resolve_devices(sd_bus *bus, char **devs, size_t n, char ***ret) {
        _cleanup_strv_free_ char **paths = NULL;

        paths = new0(char *, n + 1);
        if (!paths)
                return log_error_errno(ENOMEM, "Out of memory.");
        for (size_t i = 0; i < n; i++) {
                int r = ctl_resolve_device(bus, devs[i], &paths[i]);
                if (r < 0)
                        return r;
        }
        *ret = TAKE_PTR(paths);
        return 0;
}

static int append_object_paths(sd_bus_message *m, char **paths) {
        int r;

        r = sd_bus_message_open_container(m, SD_BUS_TYPE_ARRAY, "o");
        for (char **p = paths; r >= 0 && *p; p++)
                r = sd_bus_message_append_basic(m, 'o', *p);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        return r;
}

static int append_option_bool(sd_bus_message *m, const char *key, bool b) {
        return sd_bus_message_append(m, "{sv}", key, "b", (int) b);
}

static int append_option_u64(sd_bus_message *m, const char *key, uint64_t t) {
        return sd_bus_message_append(m, "{sv}", key, "t", t);
}

static const char *job_error_text(const MigrationInfo *i, const char *fallback) {
        if (i->error && *i->error)
                return i->error;
        if (fallback && *fallback)
                return fallback;
        return "no reason given";
}

static int migration_to_json(const MigrationInfo *i, json_object **ret) {
        _cleanup_(json_object_putp) json_object *j = NULL;
        int r;

        j = json_object_new_object();
        if (!j)
                return -ENOMEM;

        r = json_add_uint64(j, "id", i->id);
        if (r >= 0)
                r = json_add_string(j, "object", i->object);
        if (r >= 0)
                r = json_add_string(j, "direction", i->direction);
        if (r >= 0)
                r = json_add_string(j, "phase", i->phase);
        if (r >= 0)
                r = json_add_string(j, "peer", i->peer);
        if (r >= 0)
                r = json_add_strv(j, "devices", i->devices);
        if (r >= 0)
                r = json_add_uint64(j, "channels", i->channels);
        if (r >= 0)
                r = json_add_bool(j, "precopy", i->precopy);
        if (r >= 0)
                r = json_add_string(j, "switchover_mode", i->switchover_mode);
        if (r >= 0)
                r = json_add_uint64(j, "downtime_limit", i->downtime_limit);
        if (r >= 0)
                r = json_add_uint64(j, "bytes_transferred", i->bytes_transferred);
        if (r >= 0)
                r = json_add_uint64(j, "bytes_expected", i->bytes_expected);
        if (r >= 0)
                r = json_add_uint64(j, "rate", i->rate);
        if (r >= 0)
                r = json_add_bool(j, "initial_data_loaded", i->initial_data_loaded);
        if (r >= 0)
                r = json_add_bool(j, "switchover_requested", i->switchover_requested);
        if (r >= 0)
                r = json_add_uint64(j, "downtime", i->downtime);
        if (r >= 0)
                r = json_add_string(j, "error_name", i->error_name);
        if (r >= 0)
                r = json_add_string(j, "error", i->error);
        if (r >= 0)
                r = json_add_bool(j, "committed", i->committed);
        if (r >= 0)
                r = json_add_string(j, "transport", i->transport);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(j);
        return 0;
}

/* How a waited-for job ended: the job's properties as JSON, or a summary line, on stdout in every
 * case (it is what was waited for), and for a job that did not complete, why, on stderr. */
static int print_wait_result(const CtlWaitResult *res) {
        const MigrationInfo *i = &res->info;
        bool completed = streq(res->result, "completed");
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_free_ char *summary = NULL;
        const char *hint;
        int r;

        if (arg_json != JSON_FORMAT_OFF) {
                r = migration_to_json(i, &j);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                r = print_json(j);
                if (r < 0)
                        return log_error_errno(r, "Failed to write output: %m");
        } else if (!arg_quiet) {
                summary = format_migration_summary(&(MigrationSummary) {
                        .id = i->id,
                        .direction = i->direction,
                        .result = res->result,
                        .bytes = i->bytes_transferred,
                        .duration_usec = res->duration_usec,
                        .downtime_ms = i->downtime,
                });
                if (!summary)
                        return log_error_errno(ENOMEM, "Out of memory.");
                puts(summary);
        }

        if (completed)
                return 0;

        (void) fflush(stdout);
        if (streq(res->result, "indeterminate")) {
                log_error("Migration %" PRIu32 " is indeterminate: every byte was sent, but the destination neither "
                          "confirmed nor refused the commit (%s%s%s). The source devices stay stopped until the job "
                          "is resolved.", i->id, job_error_text(i, res->error),
                          i->error_name && *i->error_name ? ", " : "", i->error_name ?: "");
                log_hint("run 'vfiomigctl job N' on the destination (N: its incoming job); if Committed is yes, "
                         "'vfiomigctl resolve %" PRIu32 " committed' here, else 'vfiomigctl resolve %" PRIu32
                         " not-committed' to run the source devices again", i->id, i->id);
                return EXIT_INDETERMINATE;
        }
        if (i->error_name && *i->error_name)
                log_error("Migration %" PRIu32 " %s: %s (%s)", i->id, res->result, job_error_text(i, res->error),
                          i->error_name);
        else
                log_error("Migration %" PRIu32 " %s: %s", i->id, res->result, job_error_text(i, res->error));
        hint = ctl_bus_error_hint(i->error_name);
        if (hint)
                log_hint("%s", hint);
        return -EIO;
}

/* Follows the job at path to its end through watch, which was subscribed before the job could end. */
static int wait_for_job(CtlMigrationWatch *watch, const char *path, uint64_t start_usec) {
        _cleanup_(ctl_wait_result_done) CtlWaitResult res = {};
        uint32_t id = 0;
        int r;

        r = ctl_migration_watch_wait(watch, path, isatty(STDERR_FILENO) && !arg_quiet, start_usec, &res);
        if (r == -ECANCELED) {
                (void) ctl_migration_id_from_path(path, &id);
                log_error("Stopped waiting for migration %" PRIu32 ", which is being cancelled.", id);
                log_hint("'vfiomigctl wait %" PRIu32 "' follows it to its end", id);
                return r;
        }
        if (r < 0)
                return r;

        return print_wait_result(&res);
}

/* The source's half, ready to paste: the same device names (a group is usually named alike on both
 * hosts), the address to connect to (a placeholder when there is none), and where the token comes
 * from (never the token itself: on a command line every local user can read it). */
static int fput_quoted(FILE *f, const char *prefix, const char *word) {
        _cleanup_free_ char *q = shell_quote(word);

        if (!q)
                return -ENOMEM;
        fputs(prefix, f);
        fputs(q, f);
        return 0;
}

static int source_command(char **devs, size_t n, const char *address, char **ret) {
        _cleanup_free_ char *buf = NULL;
        size_t size = 0;
        FILE *f;
        int r = 0;

        f = open_memstream(&buf, &size);
        if (!f)
                return -ENOMEM;
        fputs(PROGRAM_NAME " migrate", f);
        for (size_t i = 0; i < n && r >= 0; i++)
                r = fput_quoted(f, " ", devs[i]);
        if (r >= 0 && address)
                r = fput_quoted(f, " --to ", address);
        else if (r >= 0)
                fputs(" --to HOST", f);
        if (r >= 0)
                fputs(" --token-file TOKENFILE", f);
        if (fclose(f) != 0 && r >= 0)
                r = -ENOMEM;
        if (r < 0)
                return r;

        *ret = TAKE_PTR(buf);
        return 0;
}

/* incoming --token-file: created before the call, removed again unless the token made it in. */
typedef struct TokenFile {
        const char *path; /* set while the file is ours to remove */
        int fd;
} TokenFile;

static void token_file_abandonp(TokenFile *t) {
        if (t->fd >= 0)
                (void) close(t->fd);
        if (t->path)
                (void) unlink(t->path);
}

static int verb_incoming(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_strv_free_ char **paths = NULL, **addresses = NULL;
        _cleanup_free_ char *joined = NULL, *command = NULL;
        const char *path, *token, *address;
        _cleanup_(token_file_abandonp) TokenFile token_file = { .fd = -EBADF };
        bool have_id;
        uint32_t id;
        int r;

        for (int i = 1; i < argc; i++) {
                r = check_device_name(argv[i]);
                if (r != 0)
                        return r;
        }

        /* Before the job exists: a token with nowhere to go would leave a job nobody can join. */
        if (arg_token_file) {
                r = ctl_token_file_create(arg_token_file);
                if (r == -EEXIST)
                        return usage_error("--token-file= '%s' exists: the token goes only into a new file, created "
                                           "for this (a symlink is not followed).", arg_token_file);
                if (r < 0)
                        return usage_error("Cannot create --token-file= '%s': %s.", arg_token_file, strerror(-r));
                token_file = (TokenFile) { .path = arg_token_file, .fd = r };
        }

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = resolve_devices(bus, argv + 1, (size_t) argc - 1, &paths);
        if (r < 0)
                return r;

        r = ctl_new_method_call(bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, "PrepareIncoming", &m);
        if (r < 0)
                return r;
        r = append_object_paths(m, paths);
        if (r >= 0)
                r = sd_bus_message_open_container(m, SD_BUS_TYPE_ARRAY, "{sv}");
        if (r >= 0 && arg_run)
                r = append_option_bool(m, VFIOMIG_OPTION_RUN, true);
        if (r >= 0 && arg_reassembly_budget_set)
                r = append_option_u64(m, VFIOMIG_OPTION_REASSEMBLY_BUDGET, arg_reassembly_budget);
        if (r >= 0 && arg_stall_timeout_set)
                r = append_option_u64(m, VFIOMIG_OPTION_STALL_TIMEOUT, arg_stall_timeout);
        if (r >= 0 && arg_setup_timeout_set)
                r = append_option_u64(m, VFIOMIG_OPTION_SETUP_TIMEOUT, arg_setup_timeout);
        if (r >= 0 && arg_force_without_p2p)
                r = append_option_bool(m, VFIOMIG_OPTION_FORCE_WITHOUT_P2P, true);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_error_errno(r, "Failed to append PrepareIncoming arguments: %m");

        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "os", &path, &token);
        if (r >= 0)
                r = sd_bus_message_read_strv(reply, &addresses);
        if (r < 0)
                return log_error_errno(r, "Failed to parse PrepareIncoming reply: %m");
        have_id = ctl_migration_id_from_path(path, &id) >= 0;

        if (token_file.path) {
                r = ctl_token_file_write(TAKE_FD(token_file.fd), token);
                if (r < 0) {
                        log_error_errno(r, "Failed to write the token to %s: %m", token_file.path);
                        if (have_id)
                                log_hint("'%s cancel %" PRIu32 "' drops the job nobody can join now", PROGRAM_NAME,
                                         id);
                        return r;
                }
                token_file.path = NULL; /* written: keep it */
        }

        if (arg_json != JSON_FORMAT_OFF) {
                j = json_object_new_object();
                if (!j)
                        return log_error_errno(ENOMEM, "Out of memory.");
                r = json_add_string(j, "migration", path);
                if (r >= 0)
                        r = arg_token_file ? json_add_string(j, "token_file", arg_token_file)
                                           : json_add_string(j, "token", token);
                if (r >= 0)
                        r = json_add_strv(j, "addresses", addresses);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        joined = strv_join_spaces(addresses);
        if (!joined)
                return log_error_errno(ENOMEM, "Out of memory.");
        address = ctl_pick_peer_address(addresses);
        r = source_command(argv + 1, (size_t) argc - 1, address, &command);
        if (r < 0)
                return log_error_errno(r, "Out of memory.");

        /* -q silences everything but the token: it is the one thing that cannot be had again. */
        if (arg_quiet) {
                if (!arg_token_file)
                        printf("%s\n", token);
                return 0;
        }
        if (have_id)
                printf("Prepared incoming migration %" PRIu32 " (%s)\n", id, path);
        else
                printf("Prepared incoming migration %s\n", path);
        if (arg_token_file)
                printf("Token: written to %s\n", arg_token_file);
        else
                printf("Token: %s\n", token);
        printf("Addresses: %s\n", na(joined));
        (void) fflush(stdout);
        log_hint("on the source host, run: %s", command);
        log_hint("with the token in TOKENFILE (mode 0600), or '--token -' to read it from standard input; "
                 "'--token TOKEN' shows it to every local user");
        if (!address)
                log_hint("vfiomigd reported no address: HOST is this host's name or address (port %d)",
                         VFIOMIG_STREAM_PORT);
        if (have_id)
                log_hint("'%s wait %" PRIu32 "' follows the migration here", PROGRAM_NAME, id);
        else
                log_hint("'%s wait %s' follows the migration here", PROGRAM_NAME, path);
        return 0;
}

/* The token for migrate, from --token-file=FILE, --token=- (standard input) or --token=HEX, checked
 * before any bus is contacted. Messages never repeat what a file or standard input held. */
static int load_token(char ret[static CTL_TOKEN_HEX_LEN + 1]) {
        const char *why = NULL;
        bool shared = false;
        int r;

        if (arg_token_file) {
                r = ctl_token_read_file(arg_token_file, ret, &shared, &why);
                if (r == -EINVAL && why)
                        return usage_error("Invalid --token-file= '%s': its content %s; expected the 64 hex digits "
                                           "'vfiomigctl incoming' wrote.", arg_token_file, why);
                if (r < 0)
                        return usage_error("Cannot read --token-file= '%s': %s.", arg_token_file, strerror(-r));
                if (shared)
                        log_error("Warning: %s is readable by users other than its owner, who could take over the job "
                                    "with it.", arg_token_file);
                return 0;
        }
        if (streq(arg_token, "-")) {
                r = ctl_token_read_fd(STDIN_FILENO, ret, &why);
                if (r == -EINVAL && why)
                        return usage_error("Invalid token on standard input (--token=-): it %s; expected the 64 "
                                           "hex digits 'vfiomigctl incoming' printed.", why);
                if (r < 0)
                        return usage_error("Cannot read the token from standard input (--token=-): %s.",
                                           strerror(-r));
                return 0;
        }
        r = ctl_token_parse(arg_token, strlen(arg_token), ret, &why);
        if (r < 0)
                return usage_error("Invalid --token= '%s': expected the 64 hex digits 'vfiomigctl incoming' printed.",
                                   arg_token);
        return 0;
}

static int verb_migrate(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(ctl_migration_watch_freep) CtlMigrationWatch *watch = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_strv_free_ char **paths = NULL;
        _cleanup_free_ char *host = NULL, *peer = NULL;
        char token[CTL_TOKEN_HEX_LEN + 1];
        const char *path;
        uint64_t start;
        uint16_t port;
        int r;

        for (int i = 1; i < argc; i++) {
                r = check_device_name(argv[i]);
                if (r != 0)
                        return r;
        }
        r = require_option("migrate", arg_to, "--to=HOST[:PORT]");
        if (r == 0)
                r = require_option("migrate", arg_token || arg_token_file,
                                   "--token-file=FILE or --token=- (the token 'vfiomigctl incoming' printed on the "
                                   "destination)");
        if (r != 0)
                return r;
        if (arg_token && arg_token_file)
                return usage_error("--token= and --token-file= are two ways of saying the same thing: give one.");

        r = ctl_parse_host_port(arg_to, VFIOMIG_STREAM_PORT, &host, &port);
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory.");
        if (r == -ERANGE)
                return usage_error("Invalid --to= '%s': the port must be between 1 and 65535.", arg_to);
        if (r < 0)
                return usage_error("Invalid --to= '%s': expected HOST, HOST:PORT or [IPV6]:PORT.", arg_to);
        peer = ctl_peer_format(host, port);
        if (!peer)
                return log_error_errno(ENOMEM, "Out of memory.");

        r = load_token(token);
        if (r != 0)
                return r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = resolve_devices(bus, argv + 1, (size_t) argc - 1, &paths);
        if (r < 0)
                return r;

        /* Before the job exists, so that not even a job that ends at once slips past. */
        if (!arg_no_wait) {
                r = ctl_migration_watch_new(bus, &watch);
                if (r < 0)
                        return r;
        }

        r = ctl_new_method_call(bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, "StartMigration", &m);
        if (r < 0)
                return r;
        r = append_object_paths(m, paths);
        if (r >= 0)
                r = sd_bus_message_append(m, "ss", peer, token);
        if (r >= 0)
                r = sd_bus_message_open_container(m, SD_BUS_TYPE_ARRAY, "{sv}");
        if (r >= 0 && arg_channels_set)
                r = sd_bus_message_append(m, "{sv}", VFIOMIG_OPTION_CHANNELS, "u", (uint32_t) arg_channels);
        if (r >= 0 && arg_no_precopy)
                r = append_option_bool(m, VFIOMIG_OPTION_PRECOPY, false);
        if (r >= 0 && arg_bandwidth_set)
                r = append_option_u64(m, VFIOMIG_OPTION_BANDWIDTH_LIMIT, arg_bandwidth);
        if (r >= 0 && arg_switchover)
                r = sd_bus_message_append(m, "{sv}", VFIOMIG_OPTION_SWITCHOVER, "s", arg_switchover);
        if (r >= 0 && arg_downtime_set)
                r = append_option_u64(m, VFIOMIG_OPTION_DOWNTIME_LIMIT, arg_downtime);
        if (r >= 0 && arg_stall_timeout_set)
                r = append_option_u64(m, VFIOMIG_OPTION_STALL_TIMEOUT, arg_stall_timeout);
        if (r >= 0 && arg_no_io_uring)
                r = append_option_bool(m, VFIOMIG_OPTION_IO_URING, false);
        if (r >= 0 && arg_force_without_p2p)
                r = append_option_bool(m, VFIOMIG_OPTION_FORCE_WITHOUT_P2P, true);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_error_errno(r, "Failed to append StartMigration arguments: %m");

        start = ctl_now_usec();
        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read(reply, "o", &path);
        if (r < 0)
                return log_error_errno(r, "Failed to parse StartMigration reply: %m");

        if (arg_no_wait) {
                if (arg_json != JSON_FORMAT_OFF) {
                        j = json_object_new_object();
                        if (!j)
                                return log_error_errno(ENOMEM, "Out of memory.");
                        r = json_add_string(j, "migration", path);
                        if (r < 0)
                                return log_error_errno(r, "Failed to build JSON: %m");
                        return print_json(j);
                }
                if (!arg_quiet)
                        puts(path);
                return 0;
        }

        return wait_for_job(watch, path, start);
}

typedef struct MigrationInfos {
        MigrationInfo *infos;
        size_t n_infos;
} MigrationInfos;

static void migration_infos_done(MigrationInfos *mi) {
        for (size_t i = 0; i < mi->n_infos; i++)
                migration_info_done(&mi->infos[i]);
        mi->infos = mfree(mi->infos);
        mi->n_infos = 0;
}

static int verb_jobs(int argc, char *argv[]) {
        static const char *const headers[] = { "ID", "DIRECTION", "PHASE", "BYTES", "COMMITTED", "TRANSPORT",
                                               "OBJECT" };
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(json_object_putp) json_object *array = NULL;
        _cleanup_(migration_list_done) MigrationList l = {};
        _cleanup_(table_freep) Table *t = NULL;
        _cleanup_(migration_infos_done) MigrationInfos mi = {};
        MigrationInfo *infos;
        int r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_get_migrations(bus, &l);
        if (r < 0)
                return r;
        /* ListMigrations carries neither; a job that went meanwhile shows "-". */
        infos = mi.infos = new0(MigrationInfo, l.n_entries ?: 1);
        if (!infos)
                return log_error_errno(ENOMEM, "Out of memory.");
        mi.n_infos = l.n_entries;
        for (size_t i = 0; i < l.n_entries; i++) {
                r = ctl_get_migration_info(bus, l.entries[i].object, /* gone_ok= */ true, &infos[i]);
                if (r < 0)
                        return r;
        }

        if (arg_json != JSON_FORMAT_OFF) {
                array = json_object_new_array();
                if (!array)
                        return log_error_errno(ENOMEM, "Out of memory.");
                for (size_t i = 0; i < l.n_entries; i++) {
                        const MigrationListEntry *e = &l.entries[i];
                        _cleanup_(json_object_putp) json_object *j = json_object_new_object();

                        r = j ? 0 : -ENOMEM;
                        if (r >= 0)
                                r = json_add_uint64(j, "id", e->id);
                        if (r >= 0)
                                r = json_add_string(j, "object", e->object);
                        if (r >= 0)
                                r = json_add_string(j, "direction", e->direction);
                        if (r >= 0)
                                r = json_add_string(j, "phase", e->phase);
                        if (r >= 0)
                                r = json_add_uint64(j, "bytes_transferred", e->bytes_transferred);
                        if (r >= 0 && infos[i].object)
                                r = json_add_bool(j, "committed", infos[i].committed);
                        if (r >= 0 && infos[i].object)
                                r = json_add_string(j, "transport", infos[i].transport);
                        if (r >= 0)
                                r = json_append(array, TAKE_PTR(j));
                        if (r < 0)
                                return log_error_errno(r, "Failed to build JSON: %m");
                }
                return print_json(array);
        }

        t = table_new(headers, ELEMENTSOF(headers));
        if (!t)
                return log_error_errno(ENOMEM, "Out of memory.");
        for (size_t i = 0; i < l.n_entries; i++) {
                const MigrationListEntry *e = &l.entries[i];
                char id[16], bytes[FORMAT_BYTES_MAX];

                (void) snprintf(id, sizeof(id), "%" PRIu32, e->id);
                r = table_add_row(t, (const char *const[]) {
                        id, e->direction, e->phase, format_bytes(bytes, sizeof(bytes), e->bytes_transferred),
                        infos[i].object ? yes_no(infos[i].committed) : "-",
                        infos[i].object && infos[i].transport ? infos[i].transport : "-", e->object });
                if (r < 0)
                        return log_error_errno(r, "Failed to build table: %m");
        }
        return print_table(t, l.n_entries, "No migrations.");
}

static int verb_job(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_(migration_info_done) MigrationInfo i = {};
        _cleanup_free_ char *path = NULL, *devices = NULL;
        char b1[FORMAT_BYTES_MAX], b2[FORMAT_BYTES_MAX], rate[FORMAT_RATE_MAX];
        int r;

        r = check_job_name(argv[1], &path);
        if (r != 0)
                return r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_get_migration_info(bus, path, /* gone_ok= */ false, &i);
        if (r < 0)
                return r;

        if (arg_json != JSON_FORMAT_OFF) {
                r = migration_to_json(&i, &j);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        devices = strv_join_spaces(i.devices);
        if (!devices)
                return log_error_errno(ENOMEM, "Out of memory.");
        if (arg_quiet)
                return 0;

        printf("Id: %" PRIu32 "\n"
               "Object: %s\n"
               "Direction: %s\n"
               "Phase: %s%s\n"
               "Peer: %s\n"
               "Devices: %s\n"
               "Channels: %" PRIu32 "\n"
               "Precopy: %s\n"
               "SwitchoverMode: %s\n"
               "DowntimeLimit: %" PRIu64 "ms\n"
               "BytesTransferred: %" PRIu64 " (%s)\n",
               i.id, i.object, na(i.direction), na(i.phase),
               streq_ptr(i.phase, "indeterminate") ? " (outcome unknown, devices stopped: resolve it)" : "", na(i.peer), na(devices), i.channels,
               yes_no(i.precopy), na(i.switchover_mode), i.downtime_limit, i.bytes_transferred,
               format_bytes(b1, sizeof(b1), i.bytes_transferred));
        if (i.bytes_expected > 0)
                printf("BytesExpected: %" PRIu64 " (%s)\n", i.bytes_expected,
                       format_bytes(b2, sizeof(b2), i.bytes_expected));
        else
                printf("BytesExpected: 0 (unknown)\n");
        printf("Rate: %" PRIu64 " (%s)\n"
               "InitialDataLoaded: %s\n"
               "SwitchoverRequested: %s\n",
               i.rate, format_rate(rate, sizeof(rate), i.rate), yes_no(i.initial_data_loaded),
               yes_no(i.switchover_requested));
        if (i.downtime > 0)
                printf("Downtime: %" PRIu64 "ms\n", i.downtime);
        else
                printf("Downtime: n/a\n");
        printf("ErrorName: %s\n"
               "Error: %s\n"
               "Committed: %s\n"
               "Transport: %s\n",
               na(i.error_name), na(i.error), yes_no(i.committed), na(i.transport));
        if (streq_ptr(i.phase, "indeterminate"))
                log_hint("the outcome is unknown: ask the destination ('vfiomigctl job N' there); then "
                         "'vfiomigctl resolve %" PRIu32 " committed' or 'not-committed'", i.id);
        return 0;
}

static int verb_wait(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(ctl_migration_watch_freep) CtlMigrationWatch *watch = NULL;
        _cleanup_free_ char *path = NULL;
        int r;

        r = check_job_name(argv[1], &path);
        if (r != 0)
                return r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_migration_watch_new(bus, &watch);
        if (r < 0)
                return r;
        /* How long the job ran before we came is not known: no duration in the summary. */
        return wait_for_job(watch, path, /* start_usec= */ 0);
}

static int call_migration_method(const char *job, const char *member) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *path = NULL;
        int r;

        r = check_job_name(job, &path);
        if (r != 0)
                return r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, path, VFIOMIG_MIGRATION_INTERFACE, member, &m);
        if (r < 0)
                return r;
        return ctl_call(bus, m, NULL);
}

static int verb_switchover(int argc, char *argv[]) {
        return call_migration_method(argv[1], "Switchover");
}

static int verb_resolve(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *path = NULL;
        bool committed;
        uint32_t id = 0;
        int r;

        r = check_job_name(argv[1], &path);
        if (r != 0)
                return r;
        if (!ctl_outcome_is_valid(argv[2]))
                return usage_error("Invalid outcome '%s': expected '" VFIOMIG_OUTCOME_COMMITTED "' (the destination "
                                   "job says Committed: yes) or '" VFIOMIG_OUTCOME_NOT_COMMITTED "'.", argv[2]);
        committed = streq(argv[2], VFIOMIG_OUTCOME_COMMITTED);
        (void) ctl_migration_id_from_path(path, &id);

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, path, VFIOMIG_MIGRATION_INTERFACE, "Resolve", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "s", argv[2]);
        if (r < 0)
                return log_error_errno(r, "Failed to append Resolve arguments: %m");
        r = ctl_call(bus, m, NULL);
        if (r < 0)
                return r;
        if (!arg_quiet)
                printf(committed ? "Migration %" PRIu32 " resolved as committed: the source devices stay stopped "
                                   "(the destination runs the workload) and the job is completed.\n"
                                 : "Migration %" PRIu32 " resolved as not committed: the source devices run again "
                                   "with their state and the job is failed.\n",
                       id);
        return 0;
}

static int verb_cancel(int argc, char *argv[]) {
        return call_migration_method(argv[1], "Cancel");
}

static int verb_blob_set(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_free_ char *path = NULL;
        _cleanup_free_ void *data = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *file = argv[2], *name;
        size_t size = 0;
        int r;

        r = check_device_name(argv[1]);
        if (r != 0)
                return r;

        if (streq(file, "-")) {
                name = "standard input";
                r = read_whole_fd(STDIN_FILENO, name, STREAM_BLOB_MAX, &data, &size);
        } else {
                name = file;
                fd = open(file, O_RDONLY | O_CLOEXEC | O_NOCTTY);
                if (fd < 0)
                        return log_error_errno(errno, "Failed to open %s: %m", file);
                r = read_whole_fd(fd, name, STREAM_BLOB_MAX, &data, &size);
        }
        if (r == -EFBIG)
                return log_error_errno(r, "%s holds more than %u bytes (1 MiB), the most a migration blob may hold.",
                                       name, STREAM_BLOB_MAX);
        if (r < 0)
                return r;

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_resolve_device(bus, argv[1], &path);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, path, VFIOMIG_DEVICE_INTERFACE, "SetMigrationBlob", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append_array(m, 'y', data ?: "", size);
        if (r < 0)
                return log_error_errno(r, "Failed to append SetMigrationBlob arguments: %m");
        return ctl_call(bus, m, NULL);
}

static int verb_blob_get(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_free_ char *path = NULL, *encoded = NULL;
        _cleanup_close_ int fd = -EBADF;
        const char *file = argc > 2 ? argv[2] : NULL;
        const void *data;
        size_t size;
        int r;

        r = check_device_name(argv[1]);
        if (r != 0)
                return r;
        if (file && !*file)
                return usage_error("Empty file name: give a path, or '-' for standard output.");
        if (file && !streq(file, "-") && arg_json != JSON_FORMAT_OFF)
                return usage_error("'blob get DEV FILE' writes the blob to FILE; --json= prints it instead: "
                                   "use one of them.");

        r = acquire_bus(&bus);
        if (r < 0)
                return r;
        r = ctl_resolve_device(bus, argv[1], &path);
        if (r < 0)
                return r;
        r = ctl_new_method_call(bus, path, VFIOMIG_DEVICE_INTERFACE, "GetMigrationBlob", &m);
        if (r < 0)
                return r;
        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_read_array(reply, 'y', &data, &size);
        if (r < 0)
                return log_error_errno(r, "Failed to parse GetMigrationBlob reply: %m");

        if (arg_json != JSON_FORMAT_OFF) {
                encoded = base64_encode(data, size);
                j = json_object_new_object();
                if (!encoded || !j)
                        return log_error_errno(ENOMEM, "Out of memory.");
                r = json_add_uint64(j, "length", size);
                if (r >= 0)
                        r = json_add_string(j, "data", encoded);
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        if (!file || streq(file, "-")) {
                if (arg_quiet || size == 0)
                        return 0;
                if (fwrite(data, 1, size, stdout) != size)
                        return log_error_errno(EIO, "Failed to write output: %m");
                return 0;
        }

        fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOCTTY, 0600);
        if (fd < 0)
                return log_error_errno(errno, "Failed to open %s: %m", file);
        r = write_all(fd, data, size);
        if (r < 0)
                return log_error_errno(r, "Failed to write %s: %m", file);
        if (close(TAKE_FD(fd)) < 0)
                return log_error_errno(errno, "Failed to write %s: %m", file);
        return 0;
}

/* Which verb-specific options a verb accepts. */
enum {
        VERB_TAKES_OPTION = 1 << 0,
        VERB_TAKES_RECOVER = 1 << 1,
        VERB_TAKES_FORCE_WITHOUT_P2P = 1 << 2,
        VERB_TAKES_BACKEND = 1 << 3,
        VERB_TAKES_SIM_MAPPING = 1 << 4,
        VERB_TAKES_FILE = 1 << 5,
        VERB_TAKES_OFFSET = 1 << 6,
        VERB_TAKES_LENGTH = 1 << 7,
        VERB_TAKES_IOVA = 1 << 8,
        VERB_TAKES_ACCESS = 1 << 9,
        VERB_TAKES_DATA = 1 << 10,
        VERB_TAKES_OUTPUT = 1 << 11,
        VERB_TAKES_RUN = 1 << 12,
        VERB_TAKES_REASSEMBLY_BUDGET = 1 << 13,
        VERB_TAKES_STALL_TIMEOUT = 1 << 14,
        VERB_TAKES_TO = 1 << 15,
        VERB_TAKES_TOKEN = 1 << 16,
        VERB_TAKES_CHANNELS = 1 << 17,
        VERB_TAKES_NO_PRECOPY = 1 << 18,
        VERB_TAKES_BANDWIDTH = 1 << 19,
        VERB_TAKES_DOWNTIME = 1 << 20,
        VERB_TAKES_SWITCHOVER = 1 << 21,
        VERB_TAKES_NO_IO_URING = 1 << 22,
        VERB_TAKES_NO_WAIT = 1 << 23,
        VERB_TAKES_TOKEN_FILE = 1 << 24,
        VERB_TAKES_SETUP_TIMEOUT = 1 << 25,
};

#define VERB_ANY ((unsigned) -1)

typedef struct Verb {
        const char *name;
        unsigned min_args, max_args; /* counting the verb itself, as argv[0] of dispatch */
        unsigned flags;
        int (*dispatch)(int argc, char *argv[]);
        /* A verb with subcommands ("space create") has no dispatch of its own. */
        const struct Verb *subverbs;
        size_t n_subverbs;
} Verb;

static const Verb space_verbs[] = {
        { "create",  1, 1, VERB_TAKES_BACKEND | VERB_TAKES_SIM_MAPPING, verb_space_create },
        { "list",    1, 1, 0,                                           verb_space_list },
        { "show",    2, 2, 0,                                           verb_space_show },
        { "destroy", 2, 2, 0,                                           verb_space_destroy },
};

static const Verb sim_dma_verbs[] = {
        { "write", 2, 2, VERB_TAKES_IOVA | VERB_TAKES_DATA | VERB_TAKES_FILE,     verb_sim_dma_write },
        { "read",  2, 2, VERB_TAKES_IOVA | VERB_TAKES_LENGTH | VERB_TAKES_OUTPUT, verb_sim_dma_read },
};

static const Verb blob_verbs[] = {
        { "set", 3, 3, 0, verb_blob_set },
        { "get", 2, 3, 0, verb_blob_get },
};

#define INCOMING_FLAGS                                                                                   \
        (VERB_TAKES_RUN | VERB_TAKES_REASSEMBLY_BUDGET | VERB_TAKES_STALL_TIMEOUT | VERB_TAKES_FORCE_WITHOUT_P2P | \
         VERB_TAKES_TOKEN_FILE | VERB_TAKES_SETUP_TIMEOUT)
#define MIGRATE_FLAGS                                                                                    \
        (VERB_TAKES_TO | VERB_TAKES_TOKEN | VERB_TAKES_TOKEN_FILE | VERB_TAKES_CHANNELS | VERB_TAKES_NO_PRECOPY | VERB_TAKES_BANDWIDTH | \
         VERB_TAKES_DOWNTIME | VERB_TAKES_SWITCHOVER | VERB_TAKES_NO_IO_URING | VERB_TAKES_FORCE_WITHOUT_P2P |   \
         VERB_TAKES_NO_WAIT | VERB_TAKES_STALL_TIMEOUT)

#define MAP_FLAGS (VERB_TAKES_FILE | VERB_TAKES_OFFSET | VERB_TAKES_LENGTH | VERB_TAKES_IOVA | VERB_TAKES_ACCESS)

static const Verb verbs[] = {
        { "list",           1, 1,        0,                            verb_list },
        { "status",         1, 2,        0,                            verb_status },
        { "attach",         2, 2,        VERB_TAKES_OPTION,            verb_attach },
        { "detach",         2, 2,        0,                            verb_detach },
        { "set-state",      3, 3,        VERB_TAKES_RECOVER,           verb_set_state },
        { "set-states",     3, VERB_ANY, VERB_TAKES_FORCE_WITHOUT_P2P, verb_set_states },
        { "reset",          2, 2,        0,                            verb_reset },
        { "precopy-info",   2, 2,        0,                            verb_precopy_info },
        { "space",          2, VERB_ANY, 0, NULL, space_verbs, ELEMENTSOF(space_verbs) },
        { "map",            2, 2,        MAP_FLAGS,                    verb_map },
        { "unmap",          2, 2,        VERB_TAKES_IOVA | VERB_TAKES_LENGTH, verb_unmap },
        { "attach-space",   3, 3,        0,                            verb_attach_space },
        { "revoke-clients", 2, 2,        0,                            verb_revoke_clients },
        { "save-state",     3, 3,        0,                            verb_save_state },
        { "load-state",     3, 3,        0,                            verb_load_state },
        { "cancel-transfer", 2, 2,       0,                            verb_cancel_transfer },
        { "sim-dma",        2, VERB_ANY, 0, NULL, sim_dma_verbs, ELEMENTSOF(sim_dma_verbs) },
        { "incoming",       2, VERB_ANY, INCOMING_FLAGS,               verb_incoming },
        { "migrate",        2, VERB_ANY, MIGRATE_FLAGS,                verb_migrate },
        { "jobs",           1, 1,        0,                            verb_jobs },
        { "job",            2, 2,        0,                            verb_job },
        { "wait",           2, 2,        0,                            verb_wait },
        { "switchover",     2, 2,        0,                            verb_switchover },
        { "cancel",         2, 2,        0,                            verb_cancel },
        { "resolve",        3, 3,        0,                            verb_resolve },
        { "blob",           2, VERB_ANY, 0, NULL, blob_verbs, ELEMENTSOF(blob_verbs) },
};

static int help(void) {
        _cleanup_free_ char *states = NULL, *keys = NULL;

        states = ctl_settable_states_list();
        keys = ctl_sim_option_keys_list();
        if (!states || !keys)
                return log_error_errno(ENOMEM, "Out of memory.");

        printf("%1$s [OPTIONS...] COMMAND [ARGS...]\n"
               "\n"
               "Control the VFIO devices and DMA address spaces owned by vfiomigd.\n"
               "\n"
               "Commands:\n"
               "  list                       List attached devices\n"
               "  status [DEV]               Show the daemon and its devices, or one device\n"
               "  attach ADDRESS             Attach a device (PCI address, sysfs path, sim:NAME)\n"
               "  detach DEV                 Detach a device\n"
               "  set-state DEV STATE        Move a device to a migration state\n"
               "  set-states STATE DEV...    Move devices together, in P2P-safe order\n"
               "  reset DEV                  Reset a device\n"
               "  precopy-info DEV           Show the pre-copy bytes still to be read\n"
               "\n"
               "DMA address spaces:\n"
               "  space create               Create an address space (--backend=, --sim-mapping=)\n"
               "  space list                 List address spaces\n"
               "  space show SPACE           Show an address space and its mappings\n"
               "  space destroy SPACE        Destroy an empty address space\n"
               "  map SPACE --file=PATH --length=N --iova=N [--offset=N] [--access=rw|r|w]\n"
               "                             Map a file range for device DMA\n"
               "  unmap SPACE --iova=N --length=N\n"
               "                             Remove the mappings in a range\n"
               "  attach-space DEV SPACE     Attach a device to an address space\n"
               "  revoke-clients DEV         Forget the clients of a device's fd and reset it\n"
               "  save-state DEV FILE        Save a stopped device's state to FILE ('-': stdout)\n"
               "  load-state DEV FILE        Load a stopped device's state from FILE ('-': stdin)\n"
               "  cancel-transfer DEV        End the save-state or load-state running on DEV\n"
               "  sim-dma write DEV --iova=N --data=STRING|--file=PATH\n"
               "                             DMA into memory from a simulated device\n"
               "  sim-dma read DEV --iova=N --length=N [--output=PATH]\n"
               "                             DMA out of memory by a simulated device\n"
               "\n"
               "Migrations:\n"
               "  incoming DEV... [--run] [--reassembly-budget=SIZE] [--stall-timeout=MS]\n"
               "          [--setup-timeout=MS] [--token-file=FILE]\n"
               "                             Prepare this host to receive devices; prints the job,\n"
               "                             its token and the addresses to migrate to\n"
               "  migrate DEV... --to=HOST[:PORT] --token-file=FILE|--token=-|--token=TOKEN\n"
               "          [--channels=N] [--no-precopy]\n"
               "          [--bandwidth=RATE] [--downtime=MS] [--switchover=auto|manual]\n"
               "          [--stall-timeout=MS] [--no-io-uring] [--no-wait]\n"
               "                             Send devices to a prepared host and wait for the end\n"
               "  jobs                       List migration jobs\n"
               "  job JOB                    Show a migration job\n"
               "  wait JOB                   Wait for a migration job to end, showing progress\n"
               "  switchover JOB             Stop the source devices now and send the rest\n"
               "  cancel JOB                 Cancel a migration job\n"
               "  resolve JOB committed|not-committed\n"
               "                             End an indeterminate job as the destination says\n"
               "  blob set DEV FILE          Set the blob sent after the device's data ('-': stdin)\n"
               "  blob get DEV [FILE]        Write the blob set or received to FILE or stdout\n"
               "\n"
               "Options:\n"
               "  -h --help                  Show this help\n"
               "     --version               Show package version\n"
               "     --address=ADDRESS       Connect to this bus instead of the system bus\n"
               "     --json=short|pretty|off Print JSON instead of text\n"
               "     --timeout=SECONDS       Wait this long for each method call; save-state,\n"
               "                             load-state: the transfer's deadline (default 600)\n"
               "  -q --quiet                 Print nothing on success ('incoming': only the token)\n"
               "     --option KEY=VALUE      attach: set an option of a simulated device\n"
               "     --recover=STATE         set-state: state to return to if the move fails\n"
               "     --force-without-p2p     set-states, incoming, migrate: allow devices lacking P2P\n"
               "     --backend=iommufd|legacy|sim\n"
               "                             space create: the IOMMU backend (default: the host's)\n"
               "     --sim-mapping=by-file|by-address\n"
               "                             space create: how a sim space maps (default by-file)\n"
               "     --file=PATH             map, sim-dma write: the file to map or write\n"
               "     --offset=N              map: offset in the file (default 0)\n"
               "     --length=N              map, unmap, sim-dma read: bytes\n"
               "     --iova=N                map, unmap, sim-dma: the I/O virtual address\n"
               "     --access=rw|r|w         map: what the device may do (default rw)\n"
               "     --data=STRING           sim-dma write: the bytes to write\n"
               "     --output=PATH           sim-dma read: write the raw bytes there ('-': stdout)\n"
               "     --run                   incoming: run the devices once they are loaded\n"
               "     --reassembly-budget=SIZE\n"
               "                             incoming: bytes held for reordering (default 256M)\n"
               "     --stall-timeout=MS      incoming, migrate: fail after this long without\n"
               "                             progress (default 30s)\n"
               "     --setup-timeout=MS      incoming: fail when no source joins in this long\n"
               "                             (default 10 minutes)\n"
               "     --to=HOST[:PORT]        migrate: the destination (port default %5$d)\n"
               "     --token-file=FILE       incoming: write the token to a new FILE (mode 0600)\n"
               "                             instead of printing it; migrate: read it from FILE\n"
               "     --token=-|TOKEN         migrate: the token from standard input, or TOKEN\n"
               "                             itself (visible to every local user: prefer a file)\n"
               "     --channels=N            migrate: TCP connections, 1-%6$d (default 2)\n"
               "     --no-precopy            migrate: stop the devices first, copy no data live\n"
               "     --bandwidth=RATE        migrate: limit the rate (default unlimited)\n"
               "     --downtime=MS           migrate: the downtime switchover aims for (default 300)\n"
               "     --switchover=auto|manual\n"
               "                             migrate: switch over by itself, or on 'switchover JOB'\n"
               "     --no-io-uring           migrate: plain socket I/O rather than io_uring\n"
               "     --no-wait               migrate: print the job and return at once\n"
               "\n"
               "DEV is a device id (sim_gpu0), an address (sim:gpu0, 0000:3b:00.1) or an object path.\n"
               "SPACE is an address space id (s0) or object path (%4$s/s0).\n"
               "N is a number, decimal or 0x hex, with an optional K, M, G or T suffix.\n"
               "SIZE, RATE: 512M, 1.5G, 4GiB; RATE also 100MB/s. MS: 300, 300ms or 30s.\n"
               "JOB is a migration id (3), _3 or object path (%7$s/_3).\n"
               "STATE is one of: %2$s.\n"
               "KEY is one of: %3$s.\n"
               "\n"
               "See the vfiomigctl(1) man page for details.\n",
               PROGRAM_NAME, states, keys, VFIOMIG_SPACE_PATH_PREFIX, VFIOMIG_STREAM_PORT, STREAM_CHANNELS_MAX,
               VFIOMIG_MIGRATION_PATH_PREFIX);
        return 0;
}

static int parse_sim_option(const char *assignment) {
        _cleanup_free_ char *key = NULL, *keys = NULL;
        const CtlSimOption *option;
        CtlOptionValue v, *grown;
        const char *value;
        int r;

        r = ctl_split_assignment(assignment, &key, &value);
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory.");
        if (r < 0)
                return usage_error("--option expects KEY=VALUE, got '%s'.", assignment);

        option = ctl_sim_option_find(key);
        if (!option) {
                keys = ctl_sim_option_keys_list();
                if (!keys)
                        return log_error_errno(ENOMEM, "Out of memory.");
                return usage_error("Unknown --option key '%s'; known keys: %s.", key, keys);
        }
        /* A dictionary has one value per key; which of two should win is anyone's guess. */
        for (size_t i = 0; i < arg_n_options; i++)
                if (arg_options[i].option == option)
                        return usage_error("--option %s given more than once.", key);

        r = ctl_option_value_parse(option, value, &v);
        if (r == -ENOMEM)
                return log_error_errno(r, "Out of memory.");
        if (r == -ERANGE)
                return usage_error("Value '%s' of --option %s is out of range for D-Bus type '%s'.",
                                   value, key, option->signature);
        if (r < 0)
                return usage_error("Invalid value '%s' for --option %s: expected %s.",
                                   value, key, ctl_signature_describe(option->signature));

        grown = reallocarray(arg_options, arg_n_options + 1, sizeof(CtlOptionValue));
        if (!grown) {
                ctl_option_value_done(&v);
                return log_error_errno(ENOMEM, "Out of memory.");
        }
        arg_options = grown;
        arg_options[arg_n_options++] = v;
        return 0;
}

/* parse_argv() returns this when the command is to be run; 0 when done (--help, --version),
 * EXIT_USAGE or a negative errno on failure. */
#define ARGV_RUN 1

static int parse_argv(int argc, char *argv[], char ***ret_args, size_t *ret_n_args) {
        enum {
                ARG_VERSION = 0x100,
                ARG_ADDRESS,
                ARG_JSON,
                ARG_TIMEOUT,
                ARG_OPTION,
                ARG_RECOVER,
                ARG_FORCE_WITHOUT_P2P,
                ARG_BACKEND,
                ARG_SIM_MAPPING,
                ARG_FILE,
                ARG_OFFSET,
                ARG_LENGTH,
                ARG_IOVA,
                ARG_ACCESS,
                ARG_DATA,
                ARG_OUTPUT,
                ARG_RUN,
                ARG_REASSEMBLY_BUDGET,
                ARG_STALL_TIMEOUT,
                ARG_SETUP_TIMEOUT,
                ARG_TO,
                ARG_TOKEN,
                ARG_TOKEN_FILE,
                ARG_CHANNELS,
                ARG_NO_PRECOPY,
                ARG_BANDWIDTH,
                ARG_DOWNTIME,
                ARG_SWITCHOVER,
                ARG_NO_IO_URING,
                ARG_NO_WAIT,
        };
        static const struct option options[] = {
                { "help",              no_argument,       NULL, 'h'                   },
                { "version",           no_argument,       NULL, ARG_VERSION           },
                { "address",           required_argument, NULL, ARG_ADDRESS           },
                { "json",              required_argument, NULL, ARG_JSON              },
                { "timeout",           required_argument, NULL, ARG_TIMEOUT           },
                { "quiet",             no_argument,       NULL, 'q'                   },
                { "option",            required_argument, NULL, ARG_OPTION            },
                { "recover",           required_argument, NULL, ARG_RECOVER           },
                { "force-without-p2p", no_argument,       NULL, ARG_FORCE_WITHOUT_P2P },
                { "backend",           required_argument, NULL, ARG_BACKEND           },
                { "sim-mapping",       required_argument, NULL, ARG_SIM_MAPPING       },
                { "file",              required_argument, NULL, ARG_FILE              },
                { "offset",            required_argument, NULL, ARG_OFFSET            },
                { "length",            required_argument, NULL, ARG_LENGTH            },
                { "iova",              required_argument, NULL, ARG_IOVA              },
                { "access",            required_argument, NULL, ARG_ACCESS            },
                { "data",              required_argument, NULL, ARG_DATA              },
                { "output",            required_argument, NULL, ARG_OUTPUT            },
                { "run",               no_argument,       NULL, ARG_RUN               },
                { "reassembly-budget", required_argument, NULL, ARG_REASSEMBLY_BUDGET },
                { "stall-timeout",     required_argument, NULL, ARG_STALL_TIMEOUT     },
                { "setup-timeout",     required_argument, NULL, ARG_SETUP_TIMEOUT     },
                { "to",                required_argument, NULL, ARG_TO                },
                { "token",             required_argument, NULL, ARG_TOKEN             },
                { "token-file",        required_argument, NULL, ARG_TOKEN_FILE        },
                { "channels",          required_argument, NULL, ARG_CHANNELS          },
                { "no-precopy",        no_argument,       NULL, ARG_NO_PRECOPY        },
                { "bandwidth",         required_argument, NULL, ARG_BANDWIDTH         },
                { "downtime",          required_argument, NULL, ARG_DOWNTIME          },
                { "switchover",        required_argument, NULL, ARG_SWITCHOVER        },
                { "no-io-uring",       no_argument,       NULL, ARG_NO_IO_URING       },
                { "no-wait",           no_argument,       NULL, ARG_NO_WAIT           },
                {}
        };
        _cleanup_free_ char **args = NULL;
        size_t n_args = 0;
        int c, r;

        args = new0(char *, (size_t) argc + 1);
        if (!args)
                return log_error_errno(ENOMEM, "Out of memory.");

        /* getopt_long() prefixes its own messages with argv[0]; make them look like ours. */
        argv[0] = (char *) PROGRAM_NAME;

        /* The leading '-' hands us the non-options in order, so options may follow the command
         * and its arguments even when POSIXLY_CORRECT would make getopt stop at the first one. */
        while ((c = getopt_long(argc, argv, "-hq", options, NULL)) >= 0)
                switch (c) {

                case 1:
                        args[n_args++] = optarg;
                        break;

                case 'h':
                        return help();

                case ARG_VERSION:
                        puts(PROGRAM_NAME " " PACKAGE_VERSION);
                        return 0;

                case ARG_ADDRESS:
                        if (!*optarg)
                                return usage_error("--address= requires a bus address.");
                        arg_address = optarg;
                        break;

                case ARG_JSON:
                        arg_json = json_format_from_string(optarg);
                        if (arg_json < 0)
                                return usage_error("Invalid --json= mode '%s': expected short, pretty or off.",
                                                   optarg);
                        break;

                case ARG_TIMEOUT:
                        r = ctl_parse_timeout(optarg, &arg_timeout_usec);
                        if (r < 0)
                                return usage_error("Invalid --timeout= '%s': expected a positive number of "
                                                   "seconds, optionally with up to six decimals.", optarg);
                        break;

                case 'q':
                        arg_quiet = true;
                        break;

                case ARG_OPTION:
                        r = parse_sim_option(optarg);
                        if (r != 0)
                                return r;
                        break;

                case ARG_RECOVER:
                        r = check_state("--recover= state", optarg);
                        if (r != 0)
                                return r;
                        arg_recover = optarg;
                        break;

                case ARG_FORCE_WITHOUT_P2P:
                        arg_force_without_p2p = true;
                        break;

                case ARG_BACKEND:
                        if (!ctl_backend_is_valid(optarg))
                                return usage_error("Invalid --backend= '%s': expected %s, %s or %s.", optarg,
                                                   VFIOMIG_BACKEND_IOMMUFD, VFIOMIG_BACKEND_LEGACY,
                                                   VFIOMIG_BACKEND_SIM);
                        arg_backend = optarg;
                        break;

                case ARG_SIM_MAPPING:
                        if (!ctl_sim_mapping_is_valid(optarg))
                                return usage_error("Invalid --sim-mapping= '%s': expected by-file or by-address.",
                                                   optarg);
                        arg_sim_mapping = optarg;
                        break;

                case ARG_FILE:
                        if (!*optarg)
                                return usage_error("--file= requires a path.");
                        arg_file = optarg;
                        break;

                case ARG_DATA:
                        arg_data = optarg;
                        break;

                case ARG_OUTPUT:
                        if (!*optarg)
                                return usage_error("--output= requires a path, or '-' for standard output.");
                        arg_output = optarg;
                        break;

                case ARG_OFFSET:
                case ARG_LENGTH:
                case ARG_IOVA: {
                        const char *name = c == ARG_OFFSET ? "--offset=" : c == ARG_LENGTH ? "--length=" : "--iova=";
                        uint64_t *v = c == ARG_OFFSET ? &arg_offset : c == ARG_LENGTH ? &arg_length : &arg_iova;
                        bool *set = c == ARG_OFFSET ? &arg_offset_set : c == ARG_LENGTH ? &arg_length_set : &arg_iova_set;

                        r = ctl_parse_size(optarg, v);
                        if (r == -ERANGE)
                                return usage_error("Invalid %s '%s': past 2^64-1.", name, optarg);
                        if (r < 0)
                                return usage_error("Invalid %s '%s': expected %s.", name, optarg,
                                                   ctl_signature_describe("t"));
                        *set = true;
                        break;
                }

                case ARG_ACCESS:
                        arg_access = ctl_access_from_string(optarg);
                        if (arg_access < 0)
                                return usage_error("Invalid --access= '%s': expected rw (read and write), r (device "
                                                   "reads only) or w (device writes only).", optarg);
                        break;

                case ARG_RUN:
                        arg_run = true;
                        break;

                case ARG_REASSEMBLY_BUDGET:
                        r = ctl_parse_bytes(optarg, /* rate= */ false, &arg_reassembly_budget);
                        if (r == -ERANGE)
                                return usage_error("Invalid --reassembly-budget= '%s': past 2^64-1 bytes.", optarg);
                        if (r < 0)
                                return usage_error("Invalid --reassembly-budget= '%s': expected a size such as "
                                                   "256M, 1.5G or 512MiB.", optarg);
                        /* 0 would mean "the default" on the bus, which is not what anyone typing it wants. */
                        if (arg_reassembly_budget == 0)
                                return usage_error("Invalid --reassembly-budget= '%s': must be more than 0.", optarg);
                        arg_reassembly_budget_set = true;
                        break;

                case ARG_STALL_TIMEOUT:
                case ARG_SETUP_TIMEOUT:
                case ARG_DOWNTIME: {
                        const char *name = c == ARG_STALL_TIMEOUT ? "--stall-timeout=" :
                                           c == ARG_SETUP_TIMEOUT ? "--setup-timeout=" : "--downtime=";
                        uint64_t *v = c == ARG_STALL_TIMEOUT ? &arg_stall_timeout :
                                      c == ARG_SETUP_TIMEOUT ? &arg_setup_timeout : &arg_downtime;

                        r = ctl_parse_msec(optarg, v);
                        if (r == -ERANGE)
                                return usage_error("Invalid %s '%s': past 2^64-1 milliseconds.", name, optarg);
                        if (r < 0)
                                return usage_error("Invalid %s '%s': expected milliseconds such as 300, 300ms or 30s.",
                                                   name, optarg);
                        if (*v == 0)
                                return usage_error("Invalid %s '%s': must be more than 0.", name, optarg);
                        if (c == ARG_STALL_TIMEOUT)
                                arg_stall_timeout_set = true;
                        else if (c == ARG_SETUP_TIMEOUT)
                                arg_setup_timeout_set = true;
                        else
                                arg_downtime_set = true;
                        break;
                }

                case ARG_TO:
                        arg_to = optarg;
                        break;

                case ARG_TOKEN:
                        arg_token = optarg;
                        break;

                case ARG_TOKEN_FILE:
                        if (!*optarg)
                                return usage_error("--token-file= requires a path.");
                        if (streq(optarg, "-"))
                                return usage_error("--token-file= takes a path; '--token -' reads the token from "
                                                   "standard input.");
                        arg_token_file = optarg;
                        break;

                case ARG_CHANNELS:
                        r = ctl_parse_unsigned(optarg, 1, STREAM_CHANNELS_MAX, &arg_channels);
                        if (r < 0)
                                return usage_error("Invalid --channels= '%s': expected a number from 1 to %d.", optarg,
                                                   STREAM_CHANNELS_MAX);
                        arg_channels_set = true;
                        break;

                case ARG_NO_PRECOPY:
                        arg_no_precopy = true;
                        break;

                case ARG_BANDWIDTH:
                        r = ctl_parse_bytes(optarg, /* rate= */ true, &arg_bandwidth);
                        if (r == -ERANGE)
                                return usage_error("Invalid --bandwidth= '%s': past 2^64-1 bytes per second.", optarg);
                        if (r < 0)
                                return usage_error("Invalid --bandwidth= '%s': expected bytes per second such as "
                                                   "100M, 1.5G or 500MiB/s (0 for no limit).", optarg);
                        arg_bandwidth_set = true;
                        break;

                case ARG_SWITCHOVER:
                        if (!ctl_switchover_mode_is_valid(optarg))
                                return usage_error("Invalid --switchover= '%s': expected auto or manual.", optarg);
                        arg_switchover = optarg;
                        break;

                case ARG_NO_IO_URING:
                        arg_no_io_uring = true;
                        break;

                case ARG_NO_WAIT:
                        arg_no_wait = true;
                        break;

                case '?':
                        /* getopt_long() has said what is wrong. */
                        return EXIT_USAGE;

                default:
                        return log_error_errno(EINVAL, "Unhandled option %d.", c);
                }

        /* After "--", getopt stops and leaves the rest for us. */
        for (int i = optind; i < argc; i++)
                args[n_args++] = argv[i];

        *ret_args = TAKE_PTR(args);
        *ret_n_args = n_args;
        return ARGV_RUN;
}

static const Verb *find_verb(const Verb *table, size_t n, const char *name) {
        for (size_t i = 0; i < n; i++)
                if (streq(name, table[i].name))
                        return &table[i];
        return NULL;
}

/* "'map', 'unmap' and 'sim-dma read'": every command that takes the option flag, for usage errors. */
static char *verbs_taking(unsigned flag) {
        char names[32][48];
        size_t n = 0, len = 1;
        char *s, *p;

        for (size_t i = 0; i < ELEMENTSOF(verbs); i++) {
                if ((verbs[i].flags & flag) && n < ELEMENTSOF(names))
                        (void) snprintf(names[n++], sizeof(names[0]), "'%s'", verbs[i].name);
                for (size_t k = 0; k < verbs[i].n_subverbs; k++)
                        if ((verbs[i].subverbs[k].flags & flag) && n < ELEMENTSOF(names))
                                (void) snprintf(names[n++], sizeof(names[0]), "'%s %s'", verbs[i].name,
                                                verbs[i].subverbs[k].name);
        }
        for (size_t i = 0; i < n; i++)
                len += strlen(names[i]) + 5;
        s = p = malloc(len);
        if (!s)
                return NULL;
        *p = 0;
        for (size_t i = 0; i < n; i++)
                p = stpcpy(stpcpy(p, i == 0 ? "" : i + 1 == n ? " and " : ", "), names[i]);
        return s;
}

/* Every verb-specific option given must be one the command takes. */
static int check_verb_options(const Verb *verb) {
        const struct {
                unsigned flag;
                const char *name;
                bool given;
        } options[] = {
                { VERB_TAKES_OPTION,            "--option",            arg_n_options > 0     },
                { VERB_TAKES_RECOVER,           "--recover=",          arg_recover           },
                { VERB_TAKES_FORCE_WITHOUT_P2P, "--force-without-p2p", arg_force_without_p2p },
                { VERB_TAKES_BACKEND,           "--backend=",          arg_backend           },
                { VERB_TAKES_SIM_MAPPING,       "--sim-mapping=",      arg_sim_mapping       },
                { VERB_TAKES_FILE,              "--file=",             arg_file              },
                { VERB_TAKES_OFFSET,            "--offset=",           arg_offset_set        },
                { VERB_TAKES_LENGTH,            "--length=",           arg_length_set        },
                { VERB_TAKES_IOVA,              "--iova=",             arg_iova_set          },
                { VERB_TAKES_ACCESS,            "--access=",           arg_access >= 0       },
                { VERB_TAKES_DATA,              "--data=",             arg_data              },
                { VERB_TAKES_OUTPUT,            "--output=",           arg_output            },
                { VERB_TAKES_RUN,               "--run",               arg_run               },
                { VERB_TAKES_REASSEMBLY_BUDGET, "--reassembly-budget=", arg_reassembly_budget_set },
                { VERB_TAKES_STALL_TIMEOUT,     "--stall-timeout=",    arg_stall_timeout_set },
                { VERB_TAKES_SETUP_TIMEOUT,     "--setup-timeout=",    arg_setup_timeout_set },
                { VERB_TAKES_TO,                "--to=",               arg_to                },
                { VERB_TAKES_TOKEN,             "--token=",            arg_token             },
                { VERB_TAKES_TOKEN_FILE,        "--token-file=",       arg_token_file        },
                { VERB_TAKES_CHANNELS,          "--channels=",         arg_channels_set      },
                { VERB_TAKES_NO_PRECOPY,        "--no-precopy",        arg_no_precopy        },
                { VERB_TAKES_BANDWIDTH,         "--bandwidth=",        arg_bandwidth_set     },
                { VERB_TAKES_DOWNTIME,          "--downtime=",         arg_downtime_set      },
                { VERB_TAKES_SWITCHOVER,        "--switchover=",       arg_switchover        },
                { VERB_TAKES_NO_IO_URING,       "--no-io-uring",       arg_no_io_uring       },
                { VERB_TAKES_NO_WAIT,           "--no-wait",           arg_no_wait           },
        };

        for (size_t i = 0; i < ELEMENTSOF(options); i++) {
                _cleanup_free_ char *list = NULL;

                if (!options[i].given || (verb->flags & options[i].flag))
                        continue;
                list = verbs_taking(options[i].flag);
                if (!list)
                        return log_error_errno(ENOMEM, "Out of memory.");
                return usage_error("%s is only valid with %s.", options[i].name, list);
        }
        return 0;
}

static int dispatch_verb(size_t n_args, char **args) {
        const Verb *verb = NULL;
        const char *name;
        char full_name[64];
        int r;

        if (n_args == 0)
                return usage_error("Missing command. See '%s --help'.", PROGRAM_NAME);

        verb = find_verb(verbs, ELEMENTSOF(verbs), args[0]);
        if (!verb)
                return usage_error("Unknown command '%s'. See '%s --help'.", args[0], PROGRAM_NAME);
        name = verb->name;

        if (verb->n_subverbs > 0) {
                const Verb *sub;
                char choices[128] = "";
                size_t at = 0;

                for (size_t i = 0; i < verb->n_subverbs && at < sizeof(choices); i++)
                        at += (size_t) snprintf(choices + at, sizeof(choices) - at, "%s%s", i > 0 ? ", " : "",
                                                verb->subverbs[i].name);

                if (n_args < 2)
                        return usage_error("Missing subcommand for '%s': expected one of %s.", verb->name, choices);
                sub = find_verb(verb->subverbs, verb->n_subverbs, args[1]);
                if (!sub)
                        return usage_error("Unknown subcommand '%s %s': expected one of %s.", verb->name, args[1],
                                           choices);
                (void) snprintf(full_name, sizeof(full_name), "%s %s", verb->name, sub->name);
                name = full_name;
                verb = sub;
                n_args--;
                args++;
        }

        if (n_args < verb->min_args)
                return usage_error("Too few arguments for '%s'. See '%s --help'.", name, PROGRAM_NAME);
        if (verb->max_args != VERB_ANY && n_args > verb->max_args)
                return usage_error("Too many arguments for '%s'. See '%s --help'.", name, PROGRAM_NAME);

        r = check_verb_options(verb);
        if (r != 0)
                return r;

        r = verb->dispatch((int) n_args, args);
        if (r != 0)
                return r;

        /* A full disk or a closed pipe must not pass for success: scripts read what we wrote. */
        if (fflush(stdout) != 0)
                return log_error_errno(errno, "Failed to write output: %m");
        if (ferror(stdout))
                return log_error_errno(EIO, "Failed to write output: %m");
        return 0;
}

static int run(int argc, char *argv[]) {
        _cleanup_free_ char **args = NULL;
        size_t n_args = 0;
        int r;

        r = parse_argv(argc, argv, &args, &n_args);
        if (r != ARGV_RUN)
                return r;

        return dispatch_verb(n_args, args);
}

int main(int argc, char *argv[]) {
        int r;

        r = run(argc, argv);
        arg_options_free();

        /* Negative errno: already reported, exit 1. Positive: an exit status (EXIT_USAGE). */
        return r < 0 ? EXIT_FAILURE : r;
}
