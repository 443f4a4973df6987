/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * vfiomigctl's address space verbs (space create|list|show|destroy, map, unmap,
 * attach-space) and sim-dma, which reads and writes a simulated device's DMA through its space.
 */

#include <fcntl.h>
#include <inttypes.h>

#include "vfiomigctl.h"

int space_to_json(const SpaceInfo *s, bool full, json_object **ret) {
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

int verb_space_create(int argc, char *argv[]) {
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

int verb_space_list(int argc, char *argv[]) {
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

int verb_space_show(int argc, char *argv[]) {
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

int verb_space_destroy(int argc, char *argv[]) {
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
        r = ctl_call(bus, m, NULL);
        if (r < 0 || arg_json == JSON_FORMAT_OFF)
                return r;
        return print_detached(path + strlen(VFIOMIG_SPACE_PATH_PREFIX "/"), path);
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

int verb_map(int argc, char *argv[]) {
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
        r = ctl_call(bus, m, NULL);
        if (r < 0)
                return r;
        return show_space_after(bus, path);
}

int verb_unmap(int argc, char *argv[]) {
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
        r = ctl_call(bus, m, NULL);
        if (r < 0)
                return r;
        return show_space_after(bus, path);
}

int verb_attach_space(int argc, char *argv[]) {
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
        r = ctl_call(bus, m, NULL);
        if (r < 0)
                return r;
        return show_device_after(bus, device);
}

/* ---- simulated DMA ---- */

/* The device at DEV, which must be simulated: only those have org.vfiomig1.SimDevice, and the
 * bus's own error for a missing interface would blame the daemon's version. */
int resolve_sim_device(sd_bus *bus, const char *dev, char **ret_path) {
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


int verb_sim_dma_write(int argc, char *argv[]) {
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

int verb_sim_dma_read(int argc, char *argv[]) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(json_object_putp) json_object *j = NULL;
        _cleanup_free_ char *path = NULL, *encoded = NULL;
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

        if (arg_output)
                return write_output(arg_output, 0666, data, size);

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
