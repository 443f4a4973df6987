/* SPDX-License-Identifier: GPL-2.0-or-later */

/* org.vfiomig1.Manager at /org/vfiomig1. */

#include <string.h>

#include "bus-move.h"
#include "bus-polkit.h"
#include "bus-service.h"
#include "bus-util.h"
#include "config.h" /* PACKAGE_VERSION */
#include "log.h"
#include "migration.h"
#include <inttypes.h>
#include "vfiomig1.h"

static int attach_error(sd_bus_error *error, int r, const ErrorMessage *err) {
        switch (r) {
        case -EINVAL:
        case -EEXIST:
                return bus_error_from_message(error, SD_BUS_ERROR_INVALID_ARGS, r, err);
        case -ENODEV:
        case -ENOENT:
                return bus_error_from_message(error, VFIOMIG_ERROR_NO_SUCH_DEVICE, r, err);
        case -E2BIG:
                return bus_error_from_message(error, VFIOMIG_ERROR_LIMIT_EXCEEDED, r, err);
        case -ENXIO:
        case -EOPNOTSUPP:
                return bus_error_from_message(error, VFIOMIG_ERROR_NOT_SUPPORTED, r, err);
        case -EBUSY:
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, err);
        case -ENOMEM:
                return r;
        default:
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_FAILED, r, err);
        }
}

/* Reads AttachDevice's options: every key a sim option, applied to o->sim. */
static int read_attach_options(sd_bus_message *m, AttachOptions *o, sd_bus_error *error) {
        _cleanup_strv_free_ char **strv = NULL;
        ErrorMessage err = {};
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        for (;;) {
                OptionValue v;
                OptionType type;
                const char *key;

                r = sd_bus_message_enter_container(m, 'e', "sv");
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                r = sd_bus_message_read_basic(m, 's', &key);
                if (r < 0)
                        return r;
                type = sim_option_type(key);
                if (type < 0)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "unknown option '%s'", key);
                r = bus_read_option_value(m, key, type, &v, &strv, error);
                if (r < 0)
                        return r;
                r = sim_config_apply(&o->sim, key, &v, &err);
                if (r < 0)
                        return bus_error_from_message(error, SD_BUS_ERROR_INVALID_ARGS, r, &err);
                o->sim_options_given = true;
                r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_exit_container(m);
}

static int method_attach_device(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        BusService *s = userdata;
        _cleanup_free_ char *path = NULL;
        ErrorMessage err = {};
        AttachOptions options;
        const char *address;
        Device *d = NULL;
        int r;

        attach_options_init(&options);
        r = sd_bus_message_read(m, "s", &address);
        if (r < 0)
                return r;
        r = read_attach_options(m, &options, error);
        if (r < 0)
                return r;
        r = manager_check_attach(s->manager, address, &options, NULL, &err);
        if (r < 0)
                return attach_error(error, r, &err);

        const char *details[] = { "address", address, NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MANAGE_DEVICES, details, &s->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        r = manager_attach(s->manager, address, &options, &d, &err);
        if (r < 0)
                return attach_error(error, r, &err);
        r = bus_device_path(d->id, &path);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(m, "o", path);
}

static int method_detach_device(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        BusService *s = userdata;
        ErrorMessage err = {};
        const char *what;
        Device *d;
        int r;

        r = sd_bus_message_read(m, "s", &what);
        if (r < 0)
                return r;
        d = manager_find_device(s->manager, what);
        if (!d)
                return sd_bus_error_setf(error, VFIOMIG_ERROR_NO_SUCH_DEVICE, "No device '%s' is attached", what);
        r = manager_check_detach(s->manager, d, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, &err);

        const char *details[] = { "device", d->id, NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MANAGE_DEVICES, details, &s->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        /* The device may have gone while polkit thought: look it up again. */
        d = manager_find_device(s->manager, what);
        if (!d)
                return sd_bus_error_setf(error, VFIOMIG_ERROR_NO_SUCH_DEVICE, "No device '%s' is attached", what);
        r = manager_detach(s->manager, d, &err);
        if (r < 0)
                return bus_error_from_message(error, r == -EBUSY ? VFIOMIG_ERROR_BUSY : VFIOMIG_ERROR_DEVICE_FAILED, r,
                                              &err);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_list_devices(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        BusService *s = userdata;
        int r;

        r = sd_bus_message_new_method_return(m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(sso)");
        if (r < 0)
                return r;
        for (size_t i = 0; i < s->manager->n_devices; i++) {
                Device *d = s->manager->devices[i];
                _cleanup_free_ char *path = NULL;

                r = bus_device_path(d->id, &path);
                if (r < 0)
                        return r;
                r = sd_bus_message_append(reply, "(sso)", d->id, d->dev->address, path);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_get_device(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        BusService *s = userdata;
        _cleanup_free_ char *path = NULL;
        const char *what;
        Device *d;
        int r;

        r = sd_bus_message_read(m, "s", &what);
        if (r < 0)
                return r;
        d = manager_find_device(s->manager, what);
        if (!d)
                return sd_bus_error_setf(error, VFIOMIG_ERROR_NO_SUCH_DEVICE, "No device '%s' is attached", what);
        r = bus_device_path(d->id, &path);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(m, "o", path);
}

/* Resolving is validation too: unknown or repeated devices fail before polkit is asked. After
 * polkit answers the handler runs again, so a device detached meanwhile is caught. */
static int resolve_devices(BusService *s, char **paths, size_t max, Device ***ret, size_t *ret_n,
                           sd_bus_error *error) {
        _cleanup_free_ Device **devices = NULL;
        size_t n = 0;

        for (char **p = paths; p && *p; p++)
                n++;
        if (n == 0)
                return sd_bus_error_set(error, SD_BUS_ERROR_INVALID_ARGS, "no devices given");
        if (n > max)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "%zu devices given, more than the %zu allowed",
                                         n, max);
        devices = new0(Device *, n);
        if (!devices)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                devices[i] = bus_device_from_path(s, paths[i], error);
                if (!devices[i])
                        return -EINVAL;
                for (size_t j = 0; j < i; j++)
                        if (devices[j] == devices[i])
                                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "%s is listed twice",
                                                         paths[i]);
        }
        *ret = TAKE_PTR(devices);
        *ret_n = n;
        return 0;
}

static int method_set_states(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_strv_free_ char **paths = NULL;
        _cleanup_free_ Device **devices = NULL;
        BusService *s = userdata;
        bool force = false;
        const BusOption options[] = {
                { VFIOMIG_OPTION_FORCE_WITHOUT_P2P, "b", &force },
                {},
        };
        const char *target_name;
        size_t n = 0;
        int target, r;

        r = sd_bus_message_read_strv(m, &paths);
        if (r < 0)
                return r;
        r = sd_bus_message_read(m, "s", &target_name);
        if (r < 0)
                return r;
        r = bus_read_options(m, options, error);
        if (r < 0)
                return r;

        target = mig_state_from_string(target_name);
        if (target < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "'%s' is not a migration state", target_name);
        r = resolve_devices(s, paths, s->manager->options.max_devices, &devices, &n, error);
        if (r < 0)
                return r;

        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_SET_STATE, (const char *const[]) { "target", target_name, NULL },
                                    &s->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        return bus_move_group(s, m, TAKE_PTR(devices), TAKE_PTR(paths), n, target, force, error);
}

static int method_create_address_space(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        BusService *s = userdata;
        _cleanup_free_ char *path = NULL;
        const char *backend = NULL, *style = NULL;
        const BusOption options[] = {
                { VFIOMIG_OPTION_BACKEND, "s", &backend },
                { VFIOMIG_OPTION_SIM_MAPPING, "s", &style },
                {},
        };
        ErrorMessage err = {};
        SpaceOptions o;
        AddressSpace *space = NULL;
        int r;

        space_options_init(&o);
        r = bus_read_options(m, options, error);
        if (r < 0)
                return r;
        if (backend) {
                o.backend = iommu_backend_from_string(backend);
                if (o.backend < 0)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "unknown backend '%s' (known: iommufd, legacy, sim)", backend);
        }
        if (style) {
                o.sim_style = sim_mapping_style_from_string(style);
                o.sim_style_given = true;
                if (o.sim_style < 0)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "unknown sim-mapping '%s' (known: by-file, by-address)", style);
        }
        r = manager_check_create_space(s->manager, &o, &err);
        if (r < 0)
                return bus_error_from_message(error,
                                              r == -E2BIG        ? VFIOMIG_ERROR_LIMIT_EXCEEDED :
                                              r == -EOPNOTSUPP ? VFIOMIG_ERROR_NOT_SUPPORTED : SD_BUS_ERROR_INVALID_ARGS,
                                              r, &err);

        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MAP_DMA, NULL, &s->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        r = manager_create_space(s->manager, &o, &space, &err);
        if (r < 0)
                return bus_error_from_message(error,
                                              r == -E2BIG        ? VFIOMIG_ERROR_LIMIT_EXCEEDED :
                                              r == -EOPNOTSUPP ? VFIOMIG_ERROR_NOT_SUPPORTED : VFIOMIG_ERROR_DEVICE_FAILED,
                                              r, &err);
        r = bus_space_path(space->id, &path);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(m, "o", path);
}

static int method_destroy_address_space(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        BusService *s = userdata;
        ErrorMessage err = {};
        AddressSpace *space;
        const char *path;
        int r;

        r = sd_bus_message_read(m, "o", &path);
        if (r < 0)
                return r;
        space = bus_space_from_path(s, path, error);
        if (!space)
                return -ENOENT;
        r = manager_check_destroy_space(s->manager, space, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, &err);

        const char *details[] = { "space", space->id, NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MAP_DMA, details, &s->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        r = manager_destroy_space(s->manager, space, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, &err);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_list_address_spaces(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        BusService *s = userdata;
        int r;

        r = sd_bus_message_new_method_return(m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(so)");
        if (r < 0)
                return r;
        for (size_t i = 0; i < s->manager->n_spaces; i++) {
                _cleanup_free_ char *path = NULL;
                r = bus_space_path(s->manager->spaces[i]->id, &path);
                if (r >= 0)
                        r = sd_bus_message_append(reply, "(so)", s->manager->spaces[i]->id, path);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int property_get_max_spaces(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        BusService *s = userdata;
        return sd_bus_message_append(reply, "u", (uint32_t) s->manager->options.max_spaces);
}

/* ---- migrations ---- */

static int migration_error(sd_bus_error *error, int r, const ErrorMessage *err) {
        switch (r) {
        case -EINVAL:
                return bus_error_from_message(error, SD_BUS_ERROR_INVALID_ARGS, r, err);
        case -EOPNOTSUPP:
                return bus_error_from_message(error, VFIOMIG_ERROR_NOT_MIGRATABLE, r, err);
        case -EXDEV:
                return bus_error_from_message(error, VFIOMIG_ERROR_P2P_REQUIRED, r, err);
        case -EBUSY:
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, err);
        case -E2BIG:
                return bus_error_from_message(error, VFIOMIG_ERROR_LIMIT_EXCEEDED, r, err);
        case -EBADMSG:
        case -EIO:
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_FAILED, r, err);
        case -EADDRINUSE:
        case -EADDRNOTAVAIL:
        case -EACCES:
                /* the stream port cannot be bound (PrepareIncoming) */
                return bus_error_from_message(error, VFIOMIG_ERROR_NOT_SUPPORTED, r, err);
        case -ENOKEY:
                /* cleartext to or from a non-loopback address, without credentials */
                return bus_error_from_message(error, VFIOMIG_ERROR_INSECURE_TRANSPORT, r, err);
        case -ENOMEM:
                return r;
        default:
                return bus_error_from_message(error, VFIOMIG_ERROR_TRANSFER_FAILED, r, err);
        }
}

static int reply_job(sd_bus_message *m, Migration *j) {
        _cleanup_free_ char *path = NULL;
        int r = bus_migration_path(j->id, &path);
        if (r < 0)
                return r;
        return sd_bus_reply_method_return(m, "o", path);
}

static int method_start_migration(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_strv_free_ char **paths = NULL;
        _cleanup_free_ Device **devices = NULL;
        BusService *s = userdata;
        MigrationOptions o;
        uint32_t channels = MIGRATION_CHANNELS_DEFAULT;
        const char *peer, *token, *switchover = NULL;
        bool precopy = false, precopy_seen = false;
        const BusOption options[] = {
                { VFIOMIG_OPTION_CHANNELS, "u", &channels },
                { VFIOMIG_OPTION_PRECOPY, "b", &precopy, &precopy_seen },
                { VFIOMIG_OPTION_BANDWIDTH_LIMIT, "t", &o.bandwidth_limit },
                { VFIOMIG_OPTION_SWITCHOVER, "s", &switchover },
                { VFIOMIG_OPTION_DOWNTIME_LIMIT, "t", &o.downtime_limit_ms },
                { VFIOMIG_OPTION_STALL_TIMEOUT, "t", &o.stall_timeout_ms },
                { VFIOMIG_OPTION_FORCE_WITHOUT_P2P, "b", &o.force_without_p2p },
                { VFIOMIG_OPTION_IO_URING, "b", &o.io_uring },
                {},
        };
        struct sockaddr_storage sa;
        socklen_t sa_len;
        uint8_t token_bytes[STREAM_TOKEN_SIZE];
        ErrorMessage err = {};
        Migration *j = NULL;
        size_t n = 0;
        int r;

        migration_options_init(&o);
        r = sd_bus_message_read_strv(m, &paths);
        if (r < 0)
                return r;
        r = sd_bus_message_read(m, "ss", &peer, &token);
        if (r < 0)
                return r;
        r = bus_read_options(m, options, error);
        if (r < 0)
                return r;
        o.channels = channels;
        if (precopy_seen)
                o.precopy = precopy;
        if (switchover && !streq(switchover, "auto") && !streq(switchover, "manual"))
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "switchover must be \"auto\" or \"manual\", not \"%s\"", switchover);
        o.switchover_manual = switchover && streq(switchover, "manual");
        r = migration_parse_peer(peer, &sa, &sa_len, &err);
        if (r >= 0)
                r = migration_parse_token(token, token_bytes, &err);
        if (r < 0)
                return bus_error_from_message(error, SD_BUS_ERROR_INVALID_ARGS, r, &err);
        r = resolve_devices(s, paths, STREAM_DEVICES_MAX, &devices, &n, error);
        if (r < 0)
                return r;
        r = migration_check(s->manager, devices, n, MIGRATION_OUTGOING, &o, &err);
        if (r < 0)
                return migration_error(error, r, &err);

        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MIGRATE, (const char *const[]) { "peer", peer, NULL },
                                    &s->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        r = migration_start(s->manager, devices, n, peer, token, &o, &j, &err);
        if (r < 0)
                return migration_error(error, r, &err);
        return reply_job(m, j);
}

static int method_prepare_incoming(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_strv_free_ char **paths = NULL, **addresses = NULL;
        _cleanup_free_ Device **devices = NULL;
        _cleanup_free_ char *path = NULL;
        BusService *s = userdata;
        MigrationOptions o;
        const BusOption options[] = {
                { VFIOMIG_OPTION_RUN, "b", &o.run },
                { VFIOMIG_OPTION_REASSEMBLY_BUDGET, "t", &o.budget },
                { VFIOMIG_OPTION_STALL_TIMEOUT, "t", &o.stall_timeout_ms },
                { VFIOMIG_OPTION_SETUP_TIMEOUT, "t", &o.setup_timeout_ms },
                { VFIOMIG_OPTION_FORCE_WITHOUT_P2P, "b", &o.force_without_p2p },
                { VFIOMIG_OPTION_IO_URING, "b", &o.io_uring },
                {},
        };
        StreamListener *listener;
        ErrorMessage err = {};
        Migration *j = NULL;
        size_t n = 0;
        int r;

        migration_options_init(&o);
        r = sd_bus_message_read_strv(m, &paths);
        if (r < 0)
                return r;
        r = bus_read_options(m, options, error);
        if (r < 0)
                return r;
        if (o.stall_timeout_ms > UINT64_C(24) * 3600 * 1000)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "the stall timeout is at most a day, not %" PRIu64 " ms", o.stall_timeout_ms);
        r = resolve_devices(s, paths, STREAM_DEVICES_MAX, &devices, &n, error);
        if (r < 0)
                return r;
        r = migration_check(s->manager, devices, n, MIGRATION_INCOMING, &o, &err);
        if (r < 0)
                return migration_error(error, r, &err);

        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MIGRATE, NULL, &s->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        r = migration_prepare_incoming(s->manager, devices, n, &o, &j, &err);
        if (r < 0)
                return migration_error(error, r, &err);

        r = manager_get_stream_listener(s->manager, &listener, &err);
        if (r >= 0)
                r = stream_listener_addresses(listener, &addresses);
        if (r < 0)
                return r;
        r = bus_migration_path(j->id, &path);
        if (r < 0)
                return r;
        r = sd_bus_message_new_method_return(m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_append(reply, "os", path, j->token_hex);
        if (r >= 0)
                r = sd_bus_message_append_strv(reply, addresses);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int method_list_migrations(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        BusService *s = userdata;
        int r;

        r = sd_bus_message_new_method_return(m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(ussto)");
        if (r < 0)
                return r;
        for (size_t i = 0; i < s->manager->n_migrations; i++) {
                Migration *j = s->manager->migrations[i];
                _cleanup_free_ char *path = NULL;

                r = bus_migration_path(j->id, &path);
                if (r < 0)
                        return r;
                r = sd_bus_message_append(reply, "(ussto)", j->id, migration_direction_to_string(j->direction),
                                          migration_phase_to_string(j->phase), migration_bytes_transferred(j), path);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int property_get_max_migrations(sd_bus *bus, const char *path, const char *interface, const char *property,
                                       sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "u", (uint32_t) MIGRATIONS_RUNNING_MAX);
}

/* Empty until the first PrepareIncoming makes the listener: binding a port nobody asked for is
 * not a side effect of reading a property. */
static int property_get_stream_addresses(sd_bus *bus, const char *path, const char *interface,
                                         const char *property, sd_bus_message *reply, void *userdata,
                                         sd_bus_error *error) {
        BusService *s = userdata;
        _cleanup_strv_free_ char **addresses = NULL;
        int r;

        if (s->manager->listener) {
                r = stream_listener_addresses(s->manager->listener, &addresses);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_append_strv(reply, addresses);
}

static int property_get_max_mappings(sd_bus *bus, const char *path, const char *interface, const char *property,
                                     sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        BusService *s = userdata;
        return sd_bus_message_append(reply, "u", (uint32_t) s->manager->options.max_mappings);
}

static int property_get_max_pinned_bytes(sd_bus *bus, const char *path, const char *interface,
                                         const char *property, sd_bus_message *reply, void *userdata,
                                         sd_bus_error *error) {
        BusService *s = userdata;
        return sd_bus_message_append(reply, "t", s->manager->options.max_pinned_bytes);
}

static int property_get_fd_store(sd_bus *bus, const char *path, const char *interface, const char *property,
                                 sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        BusService *s = userdata;
        return sd_bus_message_append(reply, "b", manager_has_fd_store(s->manager));
}

static int property_get_version(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append(reply, "s", PACKAGE_VERSION);
}

static int property_get_kernel_features(sd_bus *bus, const char *path, const char *interface,
                                        const char *property, sd_bus_message *reply, void *userdata,
                                        sd_bus_error *error) {
        BusService *s = userdata;
        _cleanup_strv_free_ char **l = NULL;
        int r;

        r = kernel_features_to_strv(&s->manager->features, &l);
        if (r < 0)
                return r;
        return sd_bus_message_append_strv(reply, l);
}

static int property_get_simulation_allowed(sd_bus *bus, const char *path, const char *interface,
                                           const char *property, sd_bus_message *reply, void *userdata,
                                           sd_bus_error *error) {
        BusService *s = userdata;
        return sd_bus_message_append(reply, "b", s->manager->options.allow_simulated);
}

static int property_get_max_devices(sd_bus *bus, const char *path, const char *interface, const char *property,
                                    sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        BusService *s = userdata;
        return sd_bus_message_append(reply, "u", (uint32_t) s->manager->options.max_devices);
}

static int property_get_device_count(sd_bus *bus, const char *path, const char *interface, const char *property,
                                     sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        BusService *s = userdata;
        return sd_bus_message_append(reply, "u", (uint32_t) s->manager->n_devices);
}

const sd_bus_vtable bus_manager_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Version", "s", property_get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("KernelFeatures", "as", property_get_kernel_features, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("SimulationAllowed", "b", property_get_simulation_allowed, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxDevices", "u", property_get_max_devices, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("DeviceCount", "u", property_get_device_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("MaxAddressSpaces", "u", property_get_max_spaces, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxMappings", "u", property_get_max_mappings, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxPinnedBytes", "t", property_get_max_pinned_bytes, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MaxMigrations", "u", property_get_max_migrations, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("StreamAddresses", "as", property_get_stream_addresses, 0, 0),
        SD_BUS_PROPERTY("FileDescriptorStore", "b", property_get_fd_store, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_METHOD_WITH_ARGS("AttachDevice",
                                SD_BUS_ARGS("s", address, "a{sv}", options),
                                SD_BUS_RESULT("o", device),
                                method_attach_device,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DetachDevice",
                                SD_BUS_ARGS("s", address_or_id),
                                SD_BUS_NO_RESULT,
                                method_detach_device,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListDevices",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(sso)", devices),
                                method_list_devices,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetDevice",
                                SD_BUS_ARGS("s", address_or_id),
                                SD_BUS_RESULT("o", device),
                                method_get_device,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetStates",
                                SD_BUS_ARGS("ao", devices, "s", target, "a{sv}", options),
                                SD_BUS_RESULT("a(os)", results),
                                method_set_states,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("CreateAddressSpace",
                                SD_BUS_ARGS("a{sv}", options),
                                SD_BUS_RESULT("o", space),
                                method_create_address_space,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DestroyAddressSpace",
                                SD_BUS_ARGS("o", space),
                                SD_BUS_NO_RESULT,
                                method_destroy_address_space,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListAddressSpaces",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(so)", spaces),
                                method_list_address_spaces,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("PrepareIncoming",
                                SD_BUS_ARGS("ao", devices, "a{sv}", options),
                                SD_BUS_RESULT("o", migration, "s", token, "as", addresses),
                                method_prepare_incoming,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("StartMigration",
                                SD_BUS_ARGS("ao", devices, "s", peer, "s", token, "a{sv}", options),
                                SD_BUS_RESULT("o", migration),
                                method_start_migration,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListMigrations",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(ussto)", migrations),
                                method_list_migrations,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_SIGNAL_WITH_ARGS("DeviceAttached", SD_BUS_ARGS("s", id, "o", device), 0),
        SD_BUS_SIGNAL_WITH_ARGS("DeviceDetached", SD_BUS_ARGS("s", id, "o", device), 0),
        SD_BUS_VTABLE_END,
};
