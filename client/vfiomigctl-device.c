/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vfiomigctl's device verbs: list, status, attach, detach, set-state(s), reset,
 * precopy-info, save-state, load-state, cancel-transfer and revoke-clients.
 */

#include <fcntl.h>
#include <inttypes.h>

#include "vfiomigctl.h"

int device_to_json(const DeviceInfo *d, bool full, json_object **ret) {
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

int print_devices(const DeviceList *l) {
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

int verb_list(int argc, char *argv[]) {
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

int verb_status(int argc, char *argv[]) {
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

int verb_attach(int argc, char *argv[]) {
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

int verb_detach(int argc, char *argv[]) {
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

        /* DetachDevice takes an id or address; a path is translated through the device's Id.
         * With --json the device is looked up first, to say which one went. */
        if (dev[0] == '/' || arg_json != JSON_FORMAT_OFF) {
                _cleanup_free_ char *path = NULL;

                r = ctl_resolve_device(bus, dev, &path);
                if (r >= 0)
                        r = ctl_get_device_info(bus, path, /* gone_ok= */ false, &d);
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

        r = ctl_call(bus, m, NULL);
        if (r < 0 || arg_json == JSON_FORMAT_OFF)
                return r;
        return print_detached(d.id, d.object);
}

int verb_set_state(int argc, char *argv[]) {
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

int verb_set_states(int argc, char *argv[]) {
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

int call_device_method(const char *dev, const char *member, sd_bus_message **ret_reply) {
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
        r = ctl_call(bus, m, ret_reply);
        if (r < 0 || ret_reply)
                return r;
        return show_device_after(bus, path);
}

int verb_reset(int argc, char *argv[]) {
        int r;

        r = check_device_name(argv[1]);
        if (r != 0)
                return r;
        return call_device_method(argv[1], "Reset", NULL);
}

int verb_precopy_info(int argc, char *argv[]) {
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

/* ---- device state to and from files ---- */

/* How much longer than the transfer's deadline the call waits for the daemon's answer. */
#define TRANSFER_TIMEOUT_GRACE_USEC (UINT64_C(5) * 1000000)


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

int verb_save_state(int argc, char *argv[]) {
        return transfer_state(argv[1], argv[2], true);
}

int verb_load_state(int argc, char *argv[]) {
        return transfer_state(argv[1], argv[2], false);
}

int verb_cancel_transfer(int argc, char *argv[]) {
        int r;

        r = check_device_name(argv[1]);
        if (r != 0)
                return r;
        r = call_device_method(argv[1], "CancelTransfer", NULL);
        if (r < 0)
                return r;
        if (!arg_quiet && arg_json == JSON_FORMAT_OFF)
                printf("The transfer of %s was cancelled; the device is idle again.\n", argv[1]);
        return 0;
}

int verb_revoke_clients(int argc, char *argv[]) {
        int r;

        r = check_device_name(argv[1]);
        if (r != 0)
                return r;
        return call_device_method(argv[1], "RevokeClients", NULL);
}
