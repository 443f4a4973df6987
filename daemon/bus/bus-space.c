/* SPDX-License-Identifier: GPL-2.0-or-later */

/* org.vfiomig1.AddressSpace at /org/vfiomig1/space/ID, one object per DMA address space. */

#include <string.h>

#include "bus-polkit.h"
#include "bus-service.h"
#include "bus-util.h"
#include "log.h"
#include "vfiomig1.h"

static BusService *service_of(AddressSpace *s) {
        return s->manager->hooks.userdata;
}

int bus_space_path(const char *id, char **ret) {
        return asprintf(ret, VFIOMIG_SPACE_PATH_PREFIX "/%s", id) < 0 ? -ENOMEM : 0;
}

AddressSpace *bus_space_from_path(BusService *s, const char *path, sd_bus_error *error) {
        const size_t n = strlen(VFIOMIG_SPACE_PATH_PREFIX);
        AddressSpace *space = NULL;

        if (path && strncmp(path, VFIOMIG_SPACE_PATH_PREFIX, n) == 0 && path[n] == '/')
                space = manager_find_space(s->manager, path + n + 1);
        if (!space)
                sd_bus_error_setf(error, VFIOMIG_ERROR_NO_SUCH_ADDRESS_SPACE, "No address space at %s", path ?: "");
        return space;
}

int bus_space_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **ret_found,
                          sd_bus_error *error) {
        AddressSpace *space = bus_space_from_path(userdata, path, NULL);

        if (!space)
                return 0;
        *ret_found = space;
        return 1;
}

int bus_space_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***ret_nodes, sd_bus_error *error) {
        BusService *s = userdata;
        _cleanup_strv_free_ char **nodes = new0(char *, s->manager->n_spaces + 1);

        if (!nodes)
                return -ENOMEM;
        for (size_t i = 0; i < s->manager->n_spaces; i++) {
                int r = bus_space_path(s->manager->spaces[i]->id, &nodes[i]);
                if (r < 0)
                        return r;
        }
        *ret_nodes = TAKE_PTR(nodes);
        return 1;
}

static int map_error(sd_bus_error *error, int r, const ErrorMessage *err) {
        switch (r) {
        case -EINVAL:
        case -EBADF:
                return bus_error_from_message(error, SD_BUS_ERROR_INVALID_ARGS, r, err);
        case -EEXIST:
                return bus_error_from_message(error, VFIOMIG_ERROR_MAPPING_CONFLICT, r, err);
        case -ENOENT:
                return bus_error_from_message(error, VFIOMIG_ERROR_NO_SUCH_MAPPING, r, err);
        case -E2BIG:
        case -ENOSPC:
                return bus_error_from_message(error, VFIOMIG_ERROR_LIMIT_EXCEEDED, r, err);
        case -EOPNOTSUPP:
                return bus_error_from_message(error, VFIOMIG_ERROR_NOT_SUPPORTED, r, err);
        case -ENOMEM:
                /* Pinning that ran into RLIMIT_MEMLOCK explains itself; our own allocations do not. */
                if (error_is_set(err))
                        return bus_error_from_message(error, VFIOMIG_ERROR_LIMIT_EXCEEDED, r, err);
                return r;
        default:
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_FAILED, r, err);
        }
}

static int method_map(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        AddressSpace *space = userdata;
        _cleanup_strv_free_ char **access = NULL;
        ErrorMessage err = {};
        MapRequest req = {};
        int r;

        r = sd_bus_message_read(m, "httt", &req.fd, &req.offset, &req.length, &req.iova);
        if (r < 0)
                return r;
        r = sd_bus_message_read_strv(m, &access);
        if (r < 0)
                return r;
        r = access_from_strv(access, &req.access, &err);
        if (r < 0)
                return bus_error_from_message(error, SD_BUS_ERROR_INVALID_ARGS, r, &err);
        r = address_space_check_map(space, &req, &err);
        if (r < 0)
                return map_error(error, r, &err);

        const char *details[] = { "space", space->id, NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MAP_DMA, details, &service_of(space)->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        /* On success the state is saved (the manager's hooks) before the reply goes out. */
        r = address_space_map(space, &req, NULL, &err);
        if (r < 0)
                return map_error(error, r, &err);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_unmap(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        AddressSpace *space = userdata;
        ErrorMessage err = {};
        uint64_t iova, length;
        int r;

        r = sd_bus_message_read(m, "tt", &iova, &length);
        if (r < 0)
                return r;
        r = address_space_check_unmap(space, iova, length, &err);
        if (r < 0)
                return map_error(error, r, &err);

        const char *details[] = { "space", space->id, NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MAP_DMA, details, &service_of(space)->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        r = address_space_unmap(space, iova, length, &err);
        if (r < 0)
                return map_error(error, r, &err);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_list_mappings(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        AddressSpace *space = userdata;
        int r;

        r = sd_bus_message_new_method_return(m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(reply, 'a', "(tttas)");
        if (r < 0)
                return r;
        for (size_t i = 0; i < space->n_mappings; i++) {
                const IommuMapping *e = &space->mappings[i]->m;
                _cleanup_strv_free_ char **access = NULL;

                r = access_to_strv(e->access, &access);
                if (r < 0)
                        return r;
                r = sd_bus_message_open_container(reply, 'r', "tttas");
                if (r >= 0)
                        r = sd_bus_message_append(reply, "ttt", e->iova, e->length, e->offset);
                if (r >= 0)
                        r = sd_bus_message_append_strv(reply, access);
                if (r >= 0)
                        r = sd_bus_message_close_container(reply);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(reply);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int property_get_id(sd_bus *bus, const char *path, const char *interface, const char *property,
                           sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        AddressSpace *space = userdata;
        return sd_bus_message_append(reply, "s", space->id);
}

static int property_get_backend(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        AddressSpace *space = userdata;
        return sd_bus_message_append(reply, "s", iommu_backend_to_string(space->iommu->backend));
}

static int property_get_mapping_count(sd_bus *bus, const char *path, const char *interface, const char *property,
                                      sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        AddressSpace *space = userdata;
        return sd_bus_message_append(reply, "u", (uint32_t) space->n_mappings);
}

static int property_get_pinned_bytes(sd_bus *bus, const char *path, const char *interface, const char *property,
                                     sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        AddressSpace *space = userdata;
        return sd_bus_message_append(reply, "t", space->pinned_bytes);
}

static int property_get_live_update(sd_bus *bus, const char *path, const char *interface, const char *property,
                                    sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        AddressSpace *space = userdata;
        return sd_bus_message_append(reply, "s", address_space_live_update(space));
}

static int property_get_devices(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        AddressSpace *space = userdata;
        Manager *m = space->manager;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "o");
        if (r < 0)
                return r;
        for (size_t i = 0; i < m->n_devices; i++) {
                _cleanup_free_ char *p = NULL;
                if (m->devices[i]->space != space)
                        continue;
                r = bus_device_path(m->devices[i]->id, &p);
                if (r >= 0)
                        r = sd_bus_message_append(reply, "o", p);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}

const sd_bus_vtable bus_space_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Id", "s", property_get_id, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Backend", "s", property_get_backend, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MappingCount", "u", property_get_mapping_count, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("PinnedBytes", "t", property_get_pinned_bytes, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("LiveUpdate", "s", property_get_live_update, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Devices", "ao", property_get_devices, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_METHOD_WITH_ARGS("Map",
                                SD_BUS_ARGS("h", fd, "t", offset, "t", length, "t", iova, "as", access),
                                SD_BUS_NO_RESULT,
                                method_map,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Unmap",
                                SD_BUS_ARGS("t", iova, "t", length),
                                SD_BUS_NO_RESULT,
                                method_unmap,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("ListMappings",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("a(tttas)", mappings),
                                method_list_mappings,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};
