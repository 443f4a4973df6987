/* SPDX-License-Identifier: GPL-2.0-or-later */

#include "ctl-bus.h"
#include "strv.h"
#include "ctl-output.h"
#include "vfiomig1.h"

#define DBUS_ERROR_PREFIX "org.freedesktop.DBus.Error."
#define PROPERTIES_INTERFACE "org.freedesktop.DBus.Properties"

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

/* sd-bus's built-in default when $DBUS_SYSTEM_BUS_ADDRESS is unset. */
#define DEFAULT_SYSTEM_BUS_ADDRESS "unix:path=/run/dbus/system_bus_socket"

const char *ctl_system_bus_address(void) {
        const char *e = secure_getenv("DBUS_SYSTEM_BUS_ADDRESS");

        return e && *e ? e : DEFAULT_SYSTEM_BUS_ADDRESS;
}

int ctl_bus_connect(const char *address, uint64_t timeout_usec, sd_bus **ret) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        int r;

        if (address) {
                r = sd_bus_new(&bus);
                if (r < 0)
                        return log_error_errno(r, "Failed to allocate bus: %m");
                r = sd_bus_set_address(bus, address);
                if (r < 0)
                        return log_error_errno(r, "Failed to set bus address '%s': %m", address);
                r = sd_bus_set_bus_client(bus, true);
                if (r < 0)
                        return log_error_errno(r, "Failed to set bus client: %m");
                r = sd_bus_start(bus);
                if (r < 0)
                        return log_error_errno(r, "Failed to connect to bus at %s: %m", address);
        } else {
                r = sd_bus_open_system(&bus);
                if (r < 0) {
                        log_error_errno(r, "Failed to connect to the system bus at %s: %m",
                                        ctl_system_bus_address());
                        if (r == -ENOENT || r == -ECONNREFUSED)
                                log_hint("is D-Bus running? Use --address=ADDRESS for another bus");
                        return r;
                }
        }

        if (timeout_usec > 0) {
                r = sd_bus_set_method_call_timeout(bus, timeout_usec);
                if (r < 0)
                        return log_error_errno(r, "Failed to set method call timeout: %m");
        }

        *ret = TAKE_PTR(bus);
        return 0;
}

const char *ctl_bus_error_hint(const char *name) {
        static const struct {
                const char *name;
                const char *hint;
        } hints[] = {
                { VFIOMIG_ERROR_NO_SUCH_DEVICE,
                  "'vfiomigctl list' shows the attached devices" },
                { VFIOMIG_ERROR_NOT_MIGRATABLE,
                  "the device's driver has no VFIO migration support; "
                  "'vfiomigctl status DEV' shows why (MigratableReason)" },
                { VFIOMIG_ERROR_INVALID_TRANSITION,
                  "the target is not reachable from the current state with this device's "
                  "migration flags; 'vfiomigctl status DEV' shows both" },
                { VFIOMIG_ERROR_TRANSITION_FAILED,
                  "the device failed the transition; the message lists every step vfiomigd took and where the "
                  "device was left ('vfiomigctl status DEV' shows State and LastTransition)" },
                { VFIOMIG_ERROR_DEVICE_IN_ERROR,
                  "a device in the error state only leaves it by 'vfiomigctl reset DEV'" },
                { VFIOMIG_ERROR_P2P_REQUIRED,
                  "a device of the group lacks P2P support; "
                  "--force-without-p2p moves the group anyway" },
                { VFIOMIG_ERROR_BUSY,
                  "it cannot do that in its present situation (its state, a transfer in progress, devices or "
                  "mappings in an address space, clients holding the device); the message says what to do first" },
                { VFIOMIG_ERROR_STREAM_REJECTED,
                  "the device did not accept that state (corrupt, truncated or from an incompatible device); "
                  "it was reset, so nothing of it was loaded" },
                { VFIOMIG_ERROR_TRANSFER_FAILED,
                  "moving the state to or from the file failed; the message says where" },
                { VFIOMIG_ERROR_LIMIT_EXCEEDED,
                  "a limit of vfiomigd was reached; 'vfiomigctl status' shows MaxDevices, MaxAddressSpaces, "
                  "MaxMappings and MaxPinnedBytes" },
                { VFIOMIG_ERROR_NOT_SUPPORTED,
                  "this vfiomigd or host kernel cannot do that; "
                  "'vfiomigctl status' lists KernelFeatures and SimulationAllowed" },
                { VFIOMIG_ERROR_DEVICE_FAILED,
                  "the device or its driver failed; vfiomigd's log has the details "
                  "(journalctl -u vfiomigd)" },
                { VFIOMIG_ERROR_NO_PRECOPY_SESSION,
                  "precopy information exists only in the pre-copy and pre-copy-p2p states" },
                { VFIOMIG_ERROR_NO_SUCH_ADDRESS_SPACE,
                  "'vfiomigctl space list' shows the address spaces" },
                { VFIOMIG_ERROR_MAPPING_CONFLICT,
                  "the range overlaps a mapping, or would split one (unmap whole mappings); "
                  "'vfiomigctl space show SPACE' lists the mappings" },
                { VFIOMIG_ERROR_NO_SUCH_MAPPING,
                  "nothing is mapped in that range; 'vfiomigctl space show SPACE' lists the mappings" },
                { VFIOMIG_ERROR_DMA_FAULT,
                  "the device's address space does not map that IOVA range with the access needed; "
                  "'vfiomigctl status DEV' shows its AddressSpace, 'vfiomigctl space show SPACE' the mappings" },
                { VFIOMIG_ERROR_NO_SUCH_MIGRATION,
                  "'vfiomigctl jobs' lists the migrations vfiomigd knows (finished ones are kept only for a while)" },
                { VFIOMIG_ERROR_PEER_UNREACHABLE,
                  "nothing accepted the connection: is 'vfiomigctl incoming' prepared on the destination, and do "
                  "--to's host and port (default " STRINGIFY(VFIOMIG_STREAM_PORT) ") name one of the addresses it "
                  "printed?" },
                { VFIOMIG_ERROR_PEER_REJECTED,
                  "the destination refused the handshake (a wrong token, other devices, or devices that do not "
                  "match); the message gives its reason, 'vfiomigctl job' on the destination tells more" },
                { VFIOMIG_ERROR_PEER_VIOLATION,
                  "the other side broke the stream protocol; the job was given up, the source devices run again "
                  "and the destination devices were reset" },
                { VFIOMIG_ERROR_PEER_ABORTED,
                  "the other side gave up and sent its reason; its 'vfiomigctl job' and log tell more" },
                { VFIOMIG_ERROR_PEER_LOST,
                  "a connection broke or made no progress; check the network between the hosts (the destination "
                  "waits --stall-timeout before it gives up)" },
                { VFIOMIG_ERROR_TIMEOUT,
                  "vfiomigd gave up waiting: a transfer's --timeout, a migration's --stall-timeout or an incoming "
                  "job's --setup-timeout passed; the devices were put back (see the message)" },
                { VFIOMIG_ERROR_NO_TRANSFER,
                  "no save-state or load-state runs on that device (it may have ended just now)" },
                { VFIOMIG_ERROR_AUTHENTICATION_FAILED,
                  "the peer did not prove its identity: check the CA, certificates, allow-list or PSK in "
                  "vfiomigd.conf(5) on both hosts" },
                { VFIOMIG_ERROR_INSECURE_TRANSPORT,
                  "cleartext was refused: configure TLS credentials on both hosts (vfiomigd.conf(5)), or allow "
                  "cleartext explicitly where that is safe" },
                { VFIOMIG_ERROR_CANCELLED,
                  "the job was cancelled ('vfiomigctl cancel' or Ctrl-C); the source devices keep running" },
                { DBUS_ERROR_PREFIX "AccessDenied",
                  "not authorized: run as root or get the polkit action granted" },
                { DBUS_ERROR_PREFIX "InteractiveAuthorizationRequired",
                  "not authorized: run as root or get the polkit action granted" },
                { DBUS_ERROR_PREFIX "ServiceUnknown",
                  "vfiomigd is not running on this bus" },
                { DBUS_ERROR_PREFIX "NameHasNoOwner",
                  "vfiomigd is not running on this bus" },
                { DBUS_ERROR_PREFIX "InvalidArgs",
                  "vfiomigd rejected an argument; vfiomigctl(1) describes what each command takes" },
                { DBUS_ERROR_PREFIX "UnknownObject",
                  "no such object: the device, address space or migration may be gone; "
                  "'vfiomigctl list', 'vfiomigctl space list' and 'vfiomigctl jobs' show what exists" },
                { DBUS_ERROR_PREFIX "UnknownMethod",
                  "this vfiomigd does not implement the call; client and daemon versions differ" },
                { DBUS_ERROR_PREFIX "UnknownInterface",
                  "this vfiomigd does not implement the call; client and daemon versions differ" },
                { DBUS_ERROR_PREFIX "NoReply",
                  "vfiomigd did not answer in time; --timeout=SECONDS allows longer" },
                { DBUS_ERROR_PREFIX "Timeout",
                  "vfiomigd did not answer in time; --timeout=SECONDS allows longer" },
                { DBUS_ERROR_PREFIX "Disconnected",
                  "the bus connection was lost; is the bus still running?" },
        };

        if (!name)
                return NULL;
        for (size_t i = 0; i < ELEMENTSOF(hints); i++)
                if (streq(name, hints[i].name))
                        return hints[i].hint;
        return NULL;
}

int ctl_log_call_error(sd_bus *bus, const char *member, const sd_bus_error *error, int r) {
        const char *address = NULL, *hint;

        if (r >= 0)
                r = -EIO;
        (void) sd_bus_get_address(bus, &address);
        address = address ?: "the bus";

        if (!sd_bus_error_is_set(error)) {
                /* No reply from anyone: a transport failure, so the address is what helps. */
                log_error_errno(r, "Failed to call %s on %s: %m", member, address);
                if (r == -ETIMEDOUT)
                        log_hint("vfiomigd did not answer in time; --timeout=SECONDS allows longer");
                return r;
        }

        /* sd-bus makes these up itself when no reply comes: they need the call and the bus named. */
        if (sd_bus_error_has_names(error, DBUS_ERROR_PREFIX "Timeout", DBUS_ERROR_PREFIX "NoReply",
                                   DBUS_ERROR_PREFIX "Disconnected"))
                log_error("Failed to call %s on %s: %s", member, address,
                          error->message && *error->message ? error->message : error->name);
        else
                log_error("%s", error->message && *error->message ? error->message : error->name);
        hint = ctl_bus_error_hint(error->name);
        if (sd_bus_error_has_names(error, DBUS_ERROR_PREFIX "ServiceUnknown",
                                   DBUS_ERROR_PREFIX "NameHasNoOwner"))
                log_hint("%s (%s)", hint, address);
        else if (hint)
                log_hint("%s", hint);
        return r;
}

int ctl_new_method_call(sd_bus *bus, const char *path, const char *interface, const char *member,
                        sd_bus_message **ret) {
        int r;

        r = sd_bus_message_new_method_call(bus, ret, VFIOMIG_BUS_NAME, path, interface, member);
        if (r < 0)
                return log_error_errno(r, "Failed to create %s call for %s: %m", member, path);
        return 0;
}

static int call_internal(sd_bus *bus, sd_bus_message *m, sd_bus_error *error, sd_bus_message **ret_reply) {
        /* usec=0: the bus's method call timeout, which --timeout sets. */
        return sd_bus_call(bus, m, /* usec= */ 0, error, ret_reply);
}

int ctl_call(sd_bus *bus, sd_bus_message *m, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = call_internal(bus, m, &error, ret_reply);
        if (r < 0)
                return ctl_log_call_error(bus, sd_bus_message_get_member(m), &error, r);
        return 0;
}

static int read_property(sd_bus_message *m, const CtlProperty *p, void *field) {
        int r;

        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_VARIANT, p->signature);
        if (r < 0)
                return r;

        if (streq(p->signature, "s") || streq(p->signature, "o")) {
                const char *s;
                char *copy;

                r = sd_bus_message_read_basic(m, p->signature[0], &s);
                if (r < 0)
                        return r;
                copy = strdup(s);
                if (!copy)
                        return -ENOMEM;
                free(*(char **) field);
                *(char **) field = copy;
        } else if (streq(p->signature, "b")) {
                int b;

                r = sd_bus_message_read_basic(m, 'b', &b);
                if (r < 0)
                        return r;
                *(bool *) field = b;
        } else if (streq(p->signature, "u")) {
                r = sd_bus_message_read_basic(m, 'u', field);
                if (r < 0)
                        return r;
        } else if (streq(p->signature, "t")) {
                r = sd_bus_message_read_basic(m, 't', field);
                if (r < 0)
                        return r;
        } else if (streq(p->signature, "as") || streq(p->signature, "ao")) {
                char **l = NULL;

                r = sd_bus_message_read_strv(m, &l);
                if (r < 0)
                        return r;
                strv_free(*(char ***) field);
                *(char ***) field = l;
        } else
                return -EOPNOTSUPP;

        return sd_bus_message_exit_container(m);
}

int ctl_read_properties(sd_bus_message *m, const CtlProperty *map, void *userdata, const char *path) {
        int r;

        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_ARRAY, "{sv}");
        if (r < 0)
                goto parse_error;
        while ((r = sd_bus_message_enter_container(m, SD_BUS_TYPE_DICT_ENTRY, "sv")) > 0) {
                const CtlProperty *p = map;
                const char *name;

                r = sd_bus_message_read_basic(m, 's', &name);
                if (r < 0)
                        goto parse_error;

                while (p->name && !streq(p->name, name))
                        p++;
                if (p->name) {
                        r = read_property(m, p, (uint8_t *) userdata + p->offset);
                        if (r < 0)
                                return log_error_errno(r, "Failed to read property %s of %s: %m",
                                                       name, path);
                } else {
                        r = sd_bus_message_skip(m, "v");
                        if (r < 0)
                                goto parse_error;
                }

                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        goto parse_error;
        }
        if (r < 0)
                goto parse_error;
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                goto parse_error;
        return 0;

parse_error:
        return log_error_errno(r, "Failed to parse properties of %s: %m", path);
}

int ctl_get_properties(sd_bus *bus, const char *path, const char *interface, const CtlProperty *map,
                       void *userdata, bool gone_ok) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = ctl_new_method_call(bus, path, PROPERTIES_INTERFACE, "GetAll", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append(m, "s", interface);
        if (r < 0)
                return log_error_errno(r, "Failed to append GetAll arguments: %m");

        r = call_internal(bus, m, &error, &reply);
        if (r < 0) {
                if (gone_ok && sd_bus_error_has_names(&error, DBUS_ERROR_PREFIX "UnknownObject",
                                                      VFIOMIG_ERROR_NO_SUCH_DEVICE,
                                                      VFIOMIG_ERROR_NO_SUCH_ADDRESS_SPACE,
                                                      VFIOMIG_ERROR_NO_SUCH_MIGRATION))
                        return 0;
                return ctl_log_call_error(bus, "GetAll", &error, r);
        }

        r = ctl_read_properties(reply, map, userdata, path);
        if (r < 0)
                return r;
        return 1;
}

void manager_info_done(ManagerInfo *i) {
        if (!i)
                return;
        free(i->version);
        strv_free(i->kernel_features);
        strv_free(i->stream_addresses);
        *i = (ManagerInfo) {};
}

int ctl_get_manager_info(sd_bus *bus, ManagerInfo *ret) {
        static const CtlProperty map[] = {
                { "Version", "s", offsetof(ManagerInfo, version) },
                { "KernelFeatures", "as", offsetof(ManagerInfo, kernel_features) },
                { "SimulationAllowed", "b", offsetof(ManagerInfo, simulation_allowed) },
                { "DeviceCount", "u", offsetof(ManagerInfo, device_count) },
                { "MaxDevices", "u", offsetof(ManagerInfo, max_devices) },
                { "MaxAddressSpaces", "u", offsetof(ManagerInfo, max_address_spaces) },
                { "MaxMappings", "u", offsetof(ManagerInfo, max_mappings) },
                { "MaxPinnedBytes", "t", offsetof(ManagerInfo, max_pinned_bytes) },
                { "FileDescriptorStore", "b", offsetof(ManagerInfo, file_descriptor_store) },
                { "MaxMigrations", "u", offsetof(ManagerInfo, max_migrations) },
                { "StreamAddresses", "as", offsetof(ManagerInfo, stream_addresses) },
                {},
        };
        _cleanup_(manager_info_done) ManagerInfo i = {};
        int r;

        r = ctl_get_properties(bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, map, &i,
                               /* gone_ok= */ false);
        if (r < 0)
                return r;

        *ret = i;
        i = (ManagerInfo) {};
        return 0;
}

void device_info_done(DeviceInfo *i) {
        if (!i)
                return;
        free(i->object);
        free(i->id);
        free(i->address);
        free(i->driver);
        free(i->backend);
        strv_free(i->migration_flags);
        free(i->migratable_reason);
        free(i->state);
        free(i->last_transition);
        free(i->address_space);
        free(i->migration);
        *i = (DeviceInfo) {};
}

int ctl_get_device_info(sd_bus *bus, const char *path, bool gone_ok, DeviceInfo *ret) {
        static const CtlProperty map[] = {
                { "Id", "s", offsetof(DeviceInfo, id) },
                { "Address", "s", offsetof(DeviceInfo, address) },
                { "Driver", "s", offsetof(DeviceInfo, driver) },
                { "Backend", "s", offsetof(DeviceInfo, backend) },
                { "MigrationFlags", "as", offsetof(DeviceInfo, migration_flags) },
                { "Migratable", "b", offsetof(DeviceInfo, migratable) },
                { "MigratableReason", "s", offsetof(DeviceInfo, migratable_reason) },
                { "State", "s", offsetof(DeviceInfo, state) },
                { "StopCopySize", "t", offsetof(DeviceInfo, stop_copy_size) },
                { "LastTransition", "s", offsetof(DeviceInfo, last_transition) },
                { "AddressSpace", "o", offsetof(DeviceInfo, address_space) },
                { "Clients", "u", offsetof(DeviceInfo, clients) },
                { "Migration", "o", offsetof(DeviceInfo, migration) },
                {},
        };
        _cleanup_(device_info_done) DeviceInfo i = {};
        int r;

        i.object = strdup(path);
        if (!i.object)
                return log_error_errno(ENOMEM, "Out of memory.");

        r = ctl_get_properties(bus, path, VFIOMIG_DEVICE_INTERFACE, map, &i, gone_ok);
        if (r <= 0)
                return r;

        *ret = i;
        i = (DeviceInfo) {};
        return 1;
}

void device_list_done(DeviceList *l) {
        if (!l)
                return;
        for (size_t i = 0; i < l->n_devices; i++)
                device_info_done(&l->devices[i]);
        free(l->devices);
        *l = (DeviceList) {};
}

static int device_info_compare(const void *a, const void *b) {
        const DeviceInfo *x = a, *y = b;

        return strcmp(x->id ?: "", y->id ?: "");
}

int ctl_get_devices(sd_bus *bus, DeviceList *ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(device_list_done) DeviceList l = {};
        _cleanup_strv_free_ char **paths = NULL;
        size_t n_paths = 0;
        const char *path;
        int r;

        r = ctl_new_method_call(bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, "ListDevices", &m);
        if (r < 0)
                return r;
        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;

        /* Only the paths are taken from here; id and address come with the other properties, so
         * there is one source for each value. */
        r = sd_bus_message_enter_container(reply, SD_BUS_TYPE_ARRAY, "(sso)");
        if (r < 0)
                goto parse_error;
        while ((r = sd_bus_message_read(reply, "(sso)", NULL, NULL, &path)) > 0) {
                if (strv_extend(&paths, path) < 0)
                        return log_error_errno(ENOMEM, "Out of memory.");
                n_paths++;
        }
        if (r < 0)
                goto parse_error;
        r = sd_bus_message_exit_container(reply);
        if (r < 0)
                goto parse_error;

        if (n_paths > 0) {
                l.devices = new0(DeviceInfo, n_paths);
                if (!l.devices)
                        return log_error_errno(ENOMEM, "Out of memory.");
        }
        for (size_t i = 0; i < n_paths; i++) {
                r = ctl_get_device_info(bus, paths[i], /* gone_ok= */ true, &l.devices[l.n_devices]);
                if (r < 0)
                        return r;
                if (r > 0)
                        l.n_devices++;
        }

        if (l.n_devices > 1)
                qsort(l.devices, l.n_devices, sizeof(DeviceInfo), device_info_compare);

        *ret = l;
        l = (DeviceList) {};
        return 0;

parse_error:
        return log_error_errno(r, "Failed to parse ListDevices reply: %m");
}

int ctl_resolve_device(sd_bus *bus, const char *dev, char **ret_path) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        const char *path;
        char *copy;
        int r;

        if (dev[0] == '/')
                path = dev;
        else {
                r = ctl_new_method_call(bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE,
                                        "GetDevice", &m);
                if (r < 0)
                        return r;
                r = sd_bus_message_append(m, "s", dev);
                if (r < 0)
                        return log_error_errno(r, "Failed to append GetDevice arguments: %m");
                r = ctl_call(bus, m, &reply);
                if (r < 0)
                        return r;
                r = sd_bus_message_read(reply, "o", &path);
                if (r < 0)
                        return log_error_errno(r, "Failed to parse GetDevice reply: %m");
        }

        copy = strdup(path);
        if (!copy)
                return log_error_errno(ENOMEM, "Out of memory.");
        *ret_path = copy;
        return 0;
}

void space_info_done(SpaceInfo *i) {
        if (!i)
                return;
        free(i->object);
        free(i->id);
        free(i->backend);
        free(i->live_update);
        strv_free(i->devices);
        for (size_t k = 0; k < i->n_mappings; k++)
                strv_free(i->mappings[k].access);
        free(i->mappings);
        *i = (SpaceInfo) {};
}

static int read_mappings(sd_bus *bus, const char *path, bool gone_ok, SpaceInfo *i) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        int r;

        r = ctl_new_method_call(bus, path, VFIOMIG_SPACE_INTERFACE, "ListMappings", &m);
        if (r < 0)
                return r;
        r = call_internal(bus, m, &error, &reply);
        if (r < 0) {
                if (gone_ok && sd_bus_error_has_names(&error, DBUS_ERROR_PREFIX "UnknownObject",
                                                      VFIOMIG_ERROR_NO_SUCH_ADDRESS_SPACE))
                        return 0;
                return ctl_log_call_error(bus, "ListMappings", &error, r);
        }

        r = sd_bus_message_enter_container(reply, SD_BUS_TYPE_ARRAY, "(tttas)");
        if (r < 0)
                goto parse_error;
        for (;;) {
                MappingInfo e = {}, *grown;

                r = sd_bus_message_enter_container(reply, SD_BUS_TYPE_STRUCT, "tttas");
                if (r < 0)
                        goto parse_error;
                if (r == 0)
                        break;
                r = sd_bus_message_read(reply, "ttt", &e.iova, &e.length, &e.offset);
                if (r < 0)
                        goto parse_error;
                r = sd_bus_message_read_strv(reply, &e.access);
                if (r < 0)
                        goto parse_error;
                grown = reallocarray(i->mappings, i->n_mappings + 1, sizeof(MappingInfo));
                if (!grown) {
                        strv_free(e.access);
                        return log_error_errno(ENOMEM, "Out of memory.");
                }
                i->mappings = grown;
                i->mappings[i->n_mappings++] = e;
                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        goto parse_error;
        }
        r = sd_bus_message_exit_container(reply);
        if (r < 0)
                goto parse_error;
        return 1;

parse_error:
        return log_error_errno(r, "Failed to parse ListMappings reply: %m");
}

int ctl_get_space_info(sd_bus *bus, const char *path, bool with_mappings, bool gone_ok, SpaceInfo *ret) {
        static const CtlProperty map[] = {
                { "Id", "s", offsetof(SpaceInfo, id) },
                { "Backend", "s", offsetof(SpaceInfo, backend) },
                { "MappingCount", "u", offsetof(SpaceInfo, mapping_count) },
                { "PinnedBytes", "t", offsetof(SpaceInfo, pinned_bytes) },
                { "LiveUpdate", "s", offsetof(SpaceInfo, live_update) },
                { "Devices", "ao", offsetof(SpaceInfo, devices) },
                {},
        };
        _cleanup_(space_info_done) SpaceInfo i = {};
        int r;

        i.object = strdup(path);
        if (!i.object)
                return log_error_errno(ENOMEM, "Out of memory.");

        r = ctl_get_properties(bus, path, VFIOMIG_SPACE_INTERFACE, map, &i, gone_ok);
        if (r <= 0)
                return r;
        if (with_mappings) {
                r = read_mappings(bus, path, gone_ok, &i);
                if (r <= 0)
                        return r;
        }

        *ret = i;
        i = (SpaceInfo) {};
        return 1;
}

void space_list_done(SpaceList *l) {
        if (!l)
                return;
        for (size_t i = 0; i < l->n_spaces; i++)
                space_info_done(&l->spaces[i]);
        free(l->spaces);
        *l = (SpaceList) {};
}

int ctl_get_spaces(sd_bus *bus, SpaceList *ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(space_list_done) SpaceList l = {};
        _cleanup_strv_free_ char **paths = NULL;
        size_t n_paths = 0;
        const char *path;
        int r;

        r = ctl_new_method_call(bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, "ListAddressSpaces", &m);
        if (r < 0)
                return r;
        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;

        r = sd_bus_message_enter_container(reply, SD_BUS_TYPE_ARRAY, "(so)");
        if (r < 0)
                goto parse_error;
        while ((r = sd_bus_message_read(reply, "(so)", NULL, &path)) > 0) {
                if (strv_extend(&paths, path) < 0)
                        return log_error_errno(ENOMEM, "Out of memory.");
                n_paths++;
        }
        if (r < 0)
                goto parse_error;
        r = sd_bus_message_exit_container(reply);
        if (r < 0)
                goto parse_error;

        if (n_paths > 0) {
                l.spaces = new0(SpaceInfo, n_paths);
                if (!l.spaces)
                        return log_error_errno(ENOMEM, "Out of memory.");
        }
        for (size_t i = 0; i < n_paths; i++) {
                r = ctl_get_space_info(bus, paths[i], /* with_mappings= */ false, /* gone_ok= */ true,
                                       &l.spaces[l.n_spaces]);
                if (r < 0)
                        return r;
                if (r > 0)
                        l.n_spaces++;
        }

        *ret = l;
        l = (SpaceList) {};
        return 0;

parse_error:
        return log_error_errno(r, "Failed to parse ListAddressSpaces reply: %m");
}

/* ---- migrations ---- */

const CtlProperty ctl_migration_properties[] = {
        { "Id", "u", offsetof(MigrationInfo, id) },
        { "Direction", "s", offsetof(MigrationInfo, direction) },
        { "Devices", "ao", offsetof(MigrationInfo, devices) },
        { "Channels", "u", offsetof(MigrationInfo, channels) },
        { "Precopy", "b", offsetof(MigrationInfo, precopy) },
        { "SwitchoverMode", "s", offsetof(MigrationInfo, switchover_mode) },
        { "DowntimeLimit", "t", offsetof(MigrationInfo, downtime_limit) },
        { "Phase", "s", offsetof(MigrationInfo, phase) },
        { "Peer", "s", offsetof(MigrationInfo, peer) },
        { "BytesTransferred", "t", offsetof(MigrationInfo, bytes_transferred) },
        { "BytesExpected", "t", offsetof(MigrationInfo, bytes_expected) },
        { "Rate", "t", offsetof(MigrationInfo, rate) },
        { "InitialDataLoaded", "b", offsetof(MigrationInfo, initial_data_loaded) },
        { "SwitchoverRequested", "b", offsetof(MigrationInfo, switchover_requested) },
        { "Downtime", "t", offsetof(MigrationInfo, downtime) },
        { "Error", "s", offsetof(MigrationInfo, error) },
        { "ErrorName", "s", offsetof(MigrationInfo, error_name) },
        { "Committed", "b", offsetof(MigrationInfo, committed) },
        { "Transport", "s", offsetof(MigrationInfo, transport) },
        {},
};

void migration_info_done(MigrationInfo *i) {
        if (!i)
                return;
        free(i->object);
        free(i->direction);
        strv_free(i->devices);
        free(i->switchover_mode);
        free(i->phase);
        free(i->peer);
        free(i->error);
        free(i->transport);
        free(i->error_name);
        *i = (MigrationInfo) {};
}

int ctl_get_migration_info(sd_bus *bus, const char *path, bool gone_ok, MigrationInfo *ret) {
        _cleanup_(migration_info_done) MigrationInfo i = {};
        int r;

        i.object = strdup(path);
        if (!i.object)
                return log_error_errno(ENOMEM, "Out of memory.");

        r = ctl_get_properties(bus, path, VFIOMIG_MIGRATION_INTERFACE, ctl_migration_properties, &i, gone_ok);
        if (r <= 0)
                return r;

        /* Replaces what ret held: a watcher refreshes the same struct. */
        migration_info_done(ret);
        *ret = i;
        i = (MigrationInfo) {};
        return 1;
}

void migration_list_done(MigrationList *l) {
        if (!l)
                return;
        for (size_t i = 0; i < l->n_entries; i++) {
                free(l->entries[i].direction);
                free(l->entries[i].phase);
                free(l->entries[i].object);
        }
        free(l->entries);
        *l = (MigrationList) {};
}

int ctl_get_migrations(sd_bus *bus, MigrationList *ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(migration_list_done) MigrationList l = {};
        const char *direction, *phase, *path;
        uint64_t bytes;
        uint32_t id;
        int r;

        r = ctl_new_method_call(bus, VFIOMIG_MANAGER_PATH, VFIOMIG_MANAGER_INTERFACE, "ListMigrations", &m);
        if (r < 0)
                return r;
        r = ctl_call(bus, m, &reply);
        if (r < 0)
                return r;

        r = sd_bus_message_enter_container(reply, SD_BUS_TYPE_ARRAY, "(ussto)");
        if (r < 0)
                goto parse_error;
        while ((r = sd_bus_message_read(reply, "(ussto)", &id, &direction, &phase, &bytes, &path)) > 0) {
                MigrationListEntry *grown;

                grown = reallocarray(l.entries, l.n_entries + 1, sizeof(MigrationListEntry));
                if (!grown)
                        return log_error_errno(ENOMEM, "Out of memory.");
                l.entries = grown;
                l.entries[l.n_entries] = (MigrationListEntry) {
                        .id = id,
                        .direction = strdup(direction),
                        .phase = strdup(phase),
                        .bytes_transferred = bytes,
                        .object = strdup(path),
                };
                l.n_entries++;
                if (!l.entries[l.n_entries - 1].direction || !l.entries[l.n_entries - 1].phase ||
                    !l.entries[l.n_entries - 1].object)
                        return log_error_errno(ENOMEM, "Out of memory.");
        }
        if (r < 0)
                goto parse_error;
        r = sd_bus_message_exit_container(reply);
        if (r < 0)
                goto parse_error;

        *ret = l;
        l = (MigrationList) {};
        return 0;

parse_error:
        return log_error_errno(r, "Failed to parse ListMigrations reply: %m");
}
