/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vfiomigctl: the operator's client of vfiomigd. Every decision stays with the daemon; the client
 * turns text into org.vfiomig1 calls and replies into text or JSON. It checks on its own side only
 * what it can report better than the daemon could: state names, --option keys and value types,
 * and the shape of the command line, all before it connects to any bus.
 */

#include <getopt.h>
#include <inttypes.h>

#include "config.h"
#include "ctl-bus.h"
#include "ctl-output.h"
#include "ctl-parse.h"
#include "vfiomig1.h"

/* Failures exit 1; a command line we cannot act on exits 2, so that a script can tell its own
 * mistake from a refusal by the daemon. run() and the verbs return it as a positive value. */
#define EXIT_USAGE 2

#define usage_error(...) (log_error(__VA_ARGS__), EXIT_USAGE)

static const char *arg_address = NULL;
static JsonFormat arg_json = JSON_FORMAT_OFF;
static uint64_t arg_timeout_usec = 0;
static bool arg_quiet = false;
static CtlOptionValue *arg_options = NULL;
static size_t arg_n_options = 0;
static const char *arg_recover = NULL;
static bool arg_force_without_p2p = false;

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
        if (arg_quiet)
                return 0;
        if (l->n_devices == 0) {
                puts("No devices attached.");
                return 0;
        }
        return table_print(t, stdout);
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
        _cleanup_free_ char *features = NULL;
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
                        r = devices_to_json(&l, &devices);
                if (r >= 0)
                        r = json_add(j, "devices", TAKE_PTR(devices));
                if (r < 0)
                        return log_error_errno(r, "Failed to build JSON: %m");
                return print_json(j);
        }

        features = strv_join_spaces(m.kernel_features);
        if (!features)
                return log_error_errno(ENOMEM, "Out of memory.");
        r = devices_to_table(&l, &t);
        if (r < 0)
                return log_error_errno(r, "Failed to build table: %m");
        if (arg_quiet)
                return 0;

        printf("Version: %s\n"
               "KernelFeatures: %s\n"
               "SimulationAllowed: %s\n"
               "DeviceCount: %" PRIu32 "\n"
               "MaxDevices: %" PRIu32 "\n"
               "\n",
               na(m.version), na(features), yes_no(m.simulation_allowed), m.device_count, m.max_devices);
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
        printf("LastTransition: %s\n", na(d.last_transition));
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

/* Which verb-specific options a verb accepts. */
enum {
        VERB_TAKES_OPTION = 1 << 0,
        VERB_TAKES_RECOVER = 1 << 1,
        VERB_TAKES_FORCE_WITHOUT_P2P = 1 << 2,
};

#define VERB_ANY ((unsigned) -1)

typedef struct Verb {
        const char *name;
        unsigned min_args, max_args; /* counting the verb itself, as argv[0] of dispatch */
        unsigned flags;
        int (*dispatch)(int argc, char *argv[]);
} Verb;

static const Verb verbs[] = {
        { "list",         1, 1,        0,                            verb_list },
        { "status",       1, 2,        0,                            verb_status },
        { "attach",       2, 2,        VERB_TAKES_OPTION,            verb_attach },
        { "detach",       2, 2,        0,                            verb_detach },
        { "set-state",    3, 3,        VERB_TAKES_RECOVER,           verb_set_state },
        { "set-states",   3, VERB_ANY, VERB_TAKES_FORCE_WITHOUT_P2P, verb_set_states },
        { "reset",        2, 2,        0,                            verb_reset },
        { "precopy-info", 2, 2,        0,                            verb_precopy_info },
};

static int help(void) {
        _cleanup_free_ char *states = NULL, *keys = NULL;

        states = ctl_settable_states_list();
        keys = ctl_sim_option_keys_list();
        if (!states || !keys)
                return log_error_errno(ENOMEM, "Out of memory.");

        printf("%1$s [OPTIONS...] COMMAND [ARGS...]\n"
               "\n"
               "Control the VFIO devices owned by vfiomigd.\n"
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
               "Options:\n"
               "  -h --help                  Show this help\n"
               "     --version               Show package version\n"
               "     --address=ADDRESS       Connect to this bus instead of the system bus\n"
               "     --json=short|pretty|off Print JSON instead of text\n"
               "     --timeout=SECONDS       Wait this long for each method call\n"
               "  -q --quiet                 Print nothing on success\n"
               "     --option KEY=VALUE      attach: set an option of a simulated device\n"
               "     --recover=STATE         set-state: state to return to if the move fails\n"
               "     --force-without-p2p     set-states: move devices lacking P2P support too\n"
               "\n"
               "DEV is a device id (sim_gpu0), an address (sim:gpu0, 0000:3b:00.1) or an object path.\n"
               "STATE is one of: %2$s.\n"
               "KEY is one of: %3$s.\n"
               "\n"
               "See the vfiomigctl(1) man page for details.\n",
               PROGRAM_NAME, states, keys);
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

static int dispatch_verb(size_t n_args, char **args) {
        const Verb *verb = NULL;
        int r;

        if (n_args == 0)
                return usage_error("Missing command. See '%s --help'.", PROGRAM_NAME);

        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (streq(args[0], verbs[i].name)) {
                        verb = &verbs[i];
                        break;
                }
        if (!verb)
                return usage_error("Unknown command '%s'. See '%s --help'.", args[0], PROGRAM_NAME);

        if (n_args < verb->min_args)
                return usage_error("Too few arguments for '%s'. See '%s --help'.", verb->name, PROGRAM_NAME);
        if (verb->max_args != VERB_ANY && n_args > verb->max_args)
                return usage_error("Too many arguments for '%s'. See '%s --help'.", verb->name, PROGRAM_NAME);

        if (arg_n_options > 0 && !(verb->flags & VERB_TAKES_OPTION))
                return usage_error("--option is only valid with 'attach'.");
        if (arg_recover && !(verb->flags & VERB_TAKES_RECOVER))
                return usage_error("--recover= is only valid with 'set-state'.");
        if (arg_force_without_p2p && !(verb->flags & VERB_TAKES_FORCE_WITHOUT_P2P))
                return usage_error("--force-without-p2p is only valid with 'set-states'.");

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
