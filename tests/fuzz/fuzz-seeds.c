/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Writes the seed corpora of the fuzz targets into DIR/<target>/, built with the codec itself so
 * that they stay valid when a message changes:
 *
 *     build-fuzz/tests/fuzz/fuzz-seeds tests/fuzz/corpus
 *
 * The input format of each target is described at the top of its source.
 */

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bus-service.h"
#include "vfiomig1.h"
#include "wire.h"

typedef struct Buf {
        uint8_t data[8192];
        size_t size;
} Buf;

static void put(Buf *b, const void *p, size_t n) {
        if (n == 0)
                return;
        if (b->size + n > sizeof b->data) {
                fprintf(stderr, "seed too large\n");
                exit(EXIT_FAILURE);
        }
        memcpy(b->data + b->size, p, n);
        b->size += n;
}

static void put8(Buf *b, uint8_t v) {
        put(b, &v, 1);
}

static void write_seed(const char *dir, const char *target, const char *name, const Buf *b) {
        char path[4096];
        FILE *f;

        (void) snprintf(path, sizeof path, "%s/%s", dir, target);
        if (mkdir(path, 0755) < 0 && errno != EEXIST) {
                perror(path);
                exit(EXIT_FAILURE);
        }
        (void) snprintf(path, sizeof path, "%s/%s/%s", dir, target, name);
        f = fopen(path, "we");
        if (!f || fwrite(b->data, 1, b->size, f) != b->size || fclose(f) != 0) {
                perror(path);
                exit(EXIT_FAILURE);
        }
}

/* ---- fuzz-stream ---- */

static void hello_seed(const char *dir) {
        StreamHello h = {
                .major = STREAM_PROTOCOL_MAJOR,
                .minor = STREAM_PROTOCOL_MINOR,
                .channel_index = 1,
                .channel_count = 2,
                .device_count = 2,
                .flags = STREAM_HELLO_FLAG_PRECOPY,
                .max_payload = 1u << 20,
        };
        uint8_t enc[STREAM_HELLO_FIXED_SIZE + 2 * STREAM_HELLO_DEVICE_SIZE + STREAM_HELLO_CRC_SIZE + 512];
        Buf b = {};
        int n;

        h.devices[0] = (StreamDeviceInfo) { .migration_flags = 0xf, .stream_format = STREAM_FORMAT_SIM,
                                            .vendor_id = 0xffff, .device_id = 0xffff, .stop_copy_size = 4096,
                                            .state_size = 4096, .driver = "sim" };
        h.devices[1] = (StreamDeviceInfo) { .migration_flags = 0x1, .stream_format = STREAM_FORMAT_DRIVER,
                                            .vendor_id = 0x1234, .device_id = 0x11e8, .stop_copy_size = 1u << 20,
                                            .driver = "vfio-pci" };
        n = stream_hello_encode(&h, enc, sizeof enc);
        if (n < 0) {
                fprintf(stderr, "stream_hello_encode: %s\n", strerror(-n));
                exit(EXIT_FAILURE);
        }
        put8(&b, 2);
        put(&b, enc, (size_t) n);
        write_seed(dir, "fuzz-stream", "hello", &b);
        b.data[0] = 2 | (7 << 2); /* CRCs left alone */
        write_seed(dir, "fuzz-stream", "hello-raw", &b);
}

static void welcome_seeds(const char *dir) {
        StreamWelcome w = {
                .major = STREAM_PROTOCOL_MAJOR,
                .minor = STREAM_PROTOCOL_MINOR,
                .channel_index = 1,
                .max_payload = 1u << 20,
        };
        uint8_t enc[STREAM_WELCOME_SIZE];
        Buf b = {};

        stream_welcome_encode(&w, enc);
        put8(&b, 3);
        put(&b, enc, sizeof enc);
        write_seed(dir, "fuzz-stream", "welcome", &b);

        w.status = STREAM_REFUSE_TOKEN;
        w.max_payload = 0;
        (void) snprintf(w.reason, sizeof w.reason, "no prepared job has this token");
        stream_welcome_encode(&w, enc);
        b.size = 0;
        put8(&b, 3);
        put(&b, enc, sizeof enc);
        write_seed(dir, "fuzz-stream", "welcome-refused", &b);
}

typedef struct Stream {
        Buf b;
        uint64_t stream_seq;
        uint64_t device_seq[4];
} Stream;

static void packet(Stream *s, uint8_t control, uint8_t type, uint8_t flags, uint16_t device, const void *payload,
                   uint32_t length) {
        StreamHeader h = { .type = type, .flags = flags, .device = device };
        uint8_t enc[STREAM_HEADER_SIZE];

        if (stream_packet_is_ordered(type)) {
                h.stream_seq = s->stream_seq++;
                h.device_seq = s->device_seq[device]++;
        }
        stream_header_seal(&h, payload, length);
        stream_header_encode(&h, enc);
        put8(&s->b, control);
        put(&s->b, enc, sizeof enc);
        put(&s->b, payload, length);
}

static void end_packet(Stream *s, uint8_t control, uint16_t device, uint64_t bytes, uint64_t packets) {
        uint64_t end[2] = { htole64(bytes), htole64(packets) };
        packet(s, control, STREAM_PACKET_END, 0, device, end, sizeof end);
}

static void stream_seeds(const char *dir) {
        static const char data[] = "device state, device state, device state";
        uint8_t abort_payload[4 + 16] = { STREAM_ABORT_CANCELLED };
        Stream s = {};

        /* stop-copy only: two devices, interleaved over three channels */
        put8(&s.b, 0);
        packet(&s, 0, STREAM_PACKET_SWITCHOVER, 0, STREAM_JOB_DEVICE, NULL, 0);
        packet(&s, 1, STREAM_PACKET_DATA, 0, 0, data, 20);
        packet(&s, 2, STREAM_PACKET_DATA, 0, 1, data, sizeof data);
        packet(&s, 1, STREAM_PACKET_DATA, 0, 0, data + 20, 21);
        end_packet(&s, 2, 0, 41, 2);
        end_packet(&s, 1, 1, sizeof data, 1);
        packet(&s, 2, STREAM_PACKET_BLOB, 0, 0, "blob", 4);
        packet(&s, 1, STREAM_PACKET_BLOB, 0, 1, NULL, 0);
        write_seed(dir, "fuzz-stream", "stream", &s.b);

        /* pre-copy, packets held back against the budget, handed over as the daemon's receiver
         * does; an ABORT at the end */
        s = (Stream) {};
        put8(&s.b, 0x20);
        packet(&s, 0x80 | 0, STREAM_PACKET_DATA, STREAM_DATA_FLAG_PRECOPY | STREAM_DATA_FLAG_INITIAL, 0, data, 16);
        packet(&s, 0x80 | 1, STREAM_PACKET_DATA, STREAM_DATA_FLAG_PRECOPY | STREAM_DATA_FLAG_INITIAL, 2, data, 16);
        packet(&s, 0x80 | 0, STREAM_PACKET_INITIAL_DONE, 0, 0, NULL, 0);
        packet(&s, 1, STREAM_PACKET_INITIAL_DONE, 0, 2, NULL, 0);
        packet(&s, 0x80 | 3, STREAM_PACKET_DATA, STREAM_DATA_FLAG_PRECOPY, 0, data, 8);
        packet(&s, 0, STREAM_PACKET_SWITCHOVER, 0, STREAM_JOB_DEVICE, NULL, 0);
        packet(&s, 3, STREAM_PACKET_DATA, 0, 2, data, 32);
        end_packet(&s, 0x80 | 0, 0, 24, 2);
        end_packet(&s, 1, 2, 48, 2);
        memcpy(abort_payload + 4, "operator says no", 16);
        packet(&s, 0, STREAM_PACKET_ABORT, 0, STREAM_JOB_DEVICE, abort_payload, sizeof abort_payload);
        write_seed(dir, "fuzz-stream", "stream-precopy", &s.b);

        /* 2.1 (stream-protocol.md §2.6): device 0's initial data re-opened after its INITIAL_DONE
         * (a REINIT), a second INITIAL_DONE, then dirty data and stop-copy */
        s = (Stream) {};
        put8(&s.b, 0x20);
        packet(&s, 0, STREAM_PACKET_DATA, STREAM_DATA_FLAG_PRECOPY | STREAM_DATA_FLAG_INITIAL, 0, data, 16);
        packet(&s, 0, STREAM_PACKET_INITIAL_DONE, 0, 0, NULL, 0);
        packet(&s, 0x80 | 1, STREAM_PACKET_DATA, STREAM_DATA_FLAG_PRECOPY | STREAM_DATA_FLAG_INITIAL, 0, data, 12);
        packet(&s, 1, STREAM_PACKET_DATA, STREAM_DATA_FLAG_PRECOPY | STREAM_DATA_FLAG_INITIAL, 0, data + 12, 12);
        packet(&s, 0, STREAM_PACKET_INITIAL_DONE, 0, 0, NULL, 0);
        packet(&s, 1, STREAM_PACKET_DATA, STREAM_DATA_FLAG_PRECOPY, 0, data, 8);
        packet(&s, 0, STREAM_PACKET_SWITCHOVER, 0, STREAM_JOB_DEVICE, NULL, 0);
        packet(&s, 1, STREAM_PACKET_DATA, 0, 0, data, 20);
        end_packet(&s, 0, 0, 68, 5);
        packet(&s, 1, STREAM_PACKET_BLOB, 0, 0, NULL, 0);
        write_seed(dir, "fuzz-stream", "stream-reinit", &s.b);
}

/* ---- fuzz-options: the encoding its generator reads (see gen_*() there) ---- */

static void opt_string(Buf *b, const char *s) {
        size_t n = strlen(s);
        if (n > 96) {
                fprintf(stderr, "seed string too long\n");
                exit(EXIT_FAILURE);
        }
        put8(b, 0xff); /* a raw string, not a word from the target's list */
        put8(b, (uint8_t) n);
        put(b, s, n);
}

static void opt_u32(Buf *b, uint32_t v) {
        v = htole32(v);
        put8(b, 0x80); /* raw bytes, not an edge value */
        put(b, &v, 4);
}

static void opt_u64(Buf *b, uint64_t v) {
        v = htole64(v);
        put8(b, 0x80);
        put(b, &v, 8);
}

/* indices into gen_variant()'s type list */
enum { V_S, V_T, V_U, V_B, V_AS };

static void opt_key(Buf *b, const char *key, uint8_t variant_type) {
        opt_string(b, key);
        put8(b, variant_type);
}

/* The target picks its method with the first byte, modulo the methods with options it finds, in
 * vtable order: Manager, then Device for its running device, then Device for its stopped one. */
static uint8_t method_index(const char *member, unsigned nth) {
        const sd_bus_vtable *vtables[] = { bus_manager_vtable, bus_device_vtable, bus_device_vtable };
        unsigned i = 0;

        for (size_t k = 0; k < ELEMENTSOF(vtables); k++)
                for (const sd_bus_vtable *v = vtables[k]; v->type != _SD_BUS_VTABLE_END; v++) {
                        if (v->type != _SD_BUS_VTABLE_METHOD || !strstr(v->x.method.signature ?: "", "a{sv}"))
                                continue;
                        if (streq(v->x.method.member, member) && nth-- == 0)
                                return (uint8_t) i;
                        i++;
                }
        fprintf(stderr, "no method %s with options\n", member);
        exit(EXIT_FAILURE);
}

static void options_seeds(const char *dir) {
        static const char token[] = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        const uint8_t the_device = 0; /* gen_path(): the target's running sim device */
        Buf b = {};

        put8(&b, method_index("AttachDevice", 0));
        opt_string(&b, "sim:new");
        put8(&b, 5);
        opt_key(&b, "state-size", V_T), opt_u64(&b, 8192);
        opt_key(&b, "flags", V_AS), put8(&b, 3), opt_string(&b, "stop-copy"), opt_string(&b, "p2p"),
                opt_string(&b, "pre-copy");
        opt_key(&b, "fail-arcs", V_AS), put8(&b, 1), opt_string(&b, "running>stop");
        opt_key(&b, "mtty-quirks", V_B), put8(&b, 1);
        opt_key(&b, "seed", V_T), opt_u64(&b, 7);
        write_seed(dir, "fuzz-options", "attach-device", &b);

        b.size = 0;
        put8(&b, method_index("SetStates", 0));
        put8(&b, 1), put8(&b, the_device);
        opt_string(&b, "stop");
        put8(&b, 1);
        opt_key(&b, VFIOMIG_OPTION_FORCE_WITHOUT_P2P, V_B), put8(&b, 1);
        write_seed(dir, "fuzz-options", "set-states", &b);

        b.size = 0;
        put8(&b, method_index("CreateAddressSpace", 0));
        put8(&b, 2);
        opt_key(&b, VFIOMIG_OPTION_BACKEND, V_S), opt_string(&b, "sim");
        opt_key(&b, VFIOMIG_OPTION_SIM_MAPPING, V_S), opt_string(&b, "by-address");
        write_seed(dir, "fuzz-options", "create-address-space", &b);

        b.size = 0;
        put8(&b, method_index("PrepareIncoming", 0));
        put8(&b, 1), put8(&b, the_device);
        put8(&b, 5);
        opt_key(&b, VFIOMIG_OPTION_RUN, V_B), put8(&b, 1);
        opt_key(&b, VFIOMIG_OPTION_REASSEMBLY_BUDGET, V_T), opt_u64(&b, UINT64_C(1) << 27);
        opt_key(&b, VFIOMIG_OPTION_STALL_TIMEOUT, V_T), opt_u64(&b, 5000);
        opt_key(&b, VFIOMIG_OPTION_IO_URING, V_B), put8(&b, 0);
        opt_key(&b, VFIOMIG_OPTION_FORCE_WITHOUT_P2P, V_B), put8(&b, 0);
        write_seed(dir, "fuzz-options", "prepare-incoming", &b);

        b.size = 0;
        put8(&b, method_index("StartMigration", 0));
        put8(&b, 1), put8(&b, the_device);
        opt_string(&b, "127.0.0.1:7179");
        opt_string(&b, token);
        put8(&b, 6);
        opt_key(&b, VFIOMIG_OPTION_CHANNELS, V_U), opt_u32(&b, 4);
        opt_key(&b, VFIOMIG_OPTION_PRECOPY, V_B), put8(&b, 1);
        opt_key(&b, VFIOMIG_OPTION_BANDWIDTH_LIMIT, V_T), opt_u64(&b, 1000000);
        opt_key(&b, VFIOMIG_OPTION_SWITCHOVER, V_S), opt_string(&b, "manual");
        opt_key(&b, VFIOMIG_OPTION_DOWNTIME_LIMIT, V_T), opt_u64(&b, 300);
        opt_key(&b, VFIOMIG_OPTION_IO_URING, V_B), put8(&b, 1);
        write_seed(dir, "fuzz-options", "start-migration", &b);

        b.size = 0;
        put8(&b, method_index("SetState", 0));
        opt_string(&b, "stop");
        put8(&b, 1);
        opt_key(&b, VFIOMIG_OPTION_RECOVER_STATE, V_S), opt_string(&b, "running");
        write_seed(dir, "fuzz-options", "set-state", &b);

        b.size = 0;
        put8(&b, method_index("SaveState", 1));
        put8(&b, 0); /* the memfd */
        put8(&b, 0);
        write_seed(dir, "fuzz-options", "save-state", &b);

        b.size = 0;
        put8(&b, method_index("LoadState", 1));
        put8(&b, 1); /* a pipe's read end */
        put8(&b, 0);
        write_seed(dir, "fuzz-options", "load-state", &b);
}

/* ---- fuzz-persist ---- */

/* States as persist.c writes them (version 2): "state", simulated devices and two simulated
 * spaces whose mappings share one memfd (entry fd-1: three ranges in s0, one in s1) beside a
 * second open of it (fd-2); "kernel", the kernel objects, a kernel device and a legacy space
 * beside the simulated ones (the record of tests/unit/test-persist-state.c); "state-v1", a
 * record of the version before, which is still read. Fixed text: a real save has random sim
 * seeds, and these must be the same at every run. */
static void persist_seed(const char *dir, const char *name, const char *text) {
        Buf b = {};

        put(&b, text, strlen(text));
        write_seed(dir, "fuzz-persist", name, &b);
}

static void persist_seeds(const char *dir) {
        persist_seed(dir, "state",
                     "{\"version\":2,\"next-space\":2,\"kernel\":{\"next-container-id\":1,\"containers\":[]},"
                     "\"spaces\":[{\"id\":\"s0\",\"backend\":\"sim\",\"prepared\":true,\"next-serial\":4,"
                     "\"sim-mapping\":\"by-file\",\"mappings\":["
                     "{\"iova\":1048576,\"length\":4096,\"offset\":0,\"access\":3,\"by-file\":true,\"serial\":0},"
                     "{\"iova\":1114112,\"length\":4096,\"offset\":65536,\"access\":3,\"by-file\":true,\"serial\":1},"
                     "{\"iova\":1179648,\"length\":4096,\"offset\":131072,\"access\":3,\"by-file\":true,\"serial\":2},"
                     "{\"iova\":9437184,\"length\":4096,\"offset\":524288,\"access\":3,\"by-file\":true,\"serial\":3}]},"
                     "{\"id\":\"s1\",\"backend\":\"sim\",\"prepared\":true,\"next-serial\":1,"
                     "\"sim-mapping\":\"by-address\",\"mappings\":["
                     "{\"iova\":1048576,\"length\":8192,\"offset\":262144,\"access\":1,\"by-file\":false,\"serial\":0}]}],"
                     "\"devices\":[{\"id\":\"sim_gpu\",\"address\":\"sim:gpu\",\"backend\":\"sim\",\"space\":\"s0\","
                     "\"clients\":[],\"sim\":{\"state-size\":1048576,\"precopy-size\":262144,\"dirty-rate\":1048576,"
                     "\"flags\":7,\"mtty-quirks\":false,\"fail-to-error\":0,\"fail-in-place\":0,"
                     "\"seed\":2611089343310470147,\"state\":\"running\",\"gens\":[[3,1],[9,1],[15,1]]}},"
                     "{\"id\":\"sim_nic\",\"address\":\"sim:nic\",\"backend\":\"sim\","
                     "\"last-transition\":\"running \\u2192 stop: ok\",\"clients\":[],\"sim\":{\"state-size\":1048576,"
                     "\"precopy-size\":262144,\"dirty-rate\":0,\"flags\":7,\"mtty-quirks\":false,\"fail-to-error\":0,"
                     "\"fail-in-place\":0,\"seed\":13757707658564104406,\"state\":\"stop\",\"gens\":[]}}],"
                     "\"fds\":[{\"name\":\"fd-1\",\"users\":[\"map-s0-0\",\"map-s0-1\",\"map-s0-2\",\"map-s1-0\"]},"
                     "{\"name\":\"fd-2\",\"users\":[\"map-s0-3\"]},{\"name\":\"fd-3\",\"users\":[\"sim-device-gpu\"]},"
                     "{\"name\":\"fd-4\",\"users\":[\"sim-device-nic\"]}]}");
        persist_seed(dir, "kernel",
                     "{\"version\":2,\"fds\":[{\"name\":\"fd-1\",\"users\":[\"k-iommufd\"]},"
                     "{\"name\":\"fd-2\",\"users\":[\"k-container-1\"]},{\"name\":\"fd-3\",\"users\":[\"k-group-12\"]},"
                     "{\"name\":\"fd-4\",\"users\":[\"map-s0-1\",\"sim-device-gpu\"]},"
                     "{\"name\":\"fd-5\",\"users\":[\"k-device-0000_3b_00_1\"]}],"
                     "\"next-space\":3,\"kernel\":{\"iommufd\":\"k-iommufd\",\"next-container-id\":2,\"containers\":["
                     "{\"id\":1,\"fd\":\"k-container-1\",\"iommu-set\":true,\"update-vaddr\":true,"
                     "\"groups\":[{\"number\":12,\"fd\":\"k-group-12\",\"mdev\":false}]}]},\"spaces\":["
                     "{\"id\":\"s0\",\"backend\":\"sim\",\"prepared\":false,\"next-serial\":2,\"sim-mapping\":\"by-file\","
                     "\"mappings\":[{\"iova\":1073741824,\"length\":1048576,\"offset\":0,\"access\":3,\"by-file\":true,"
                     "\"serial\":1}]},{\"id\":\"s1\",\"backend\":\"legacy\",\"prepared\":true,\"next-serial\":0,"
                     "\"kernel\":{\"backend\":\"legacy\",\"container\":1},\"mappings\":[]}],\"devices\":["
                     "{\"id\":\"sim_gpu\",\"address\":\"sim:gpu\",\"backend\":\"sim\",\"space\":\"s0\","
                     "\"last-transition\":\"running -> stop: ok\",\"clients\":[\":1.42\"],\"sim\":{\"state-size\":1048576,"
                     "\"precopy-size\":262144,\"dirty-rate\":0,\"flags\":7,\"mtty-quirks\":false,\"fail-to-error\":0,"
                     "\"fail-in-place\":0,\"seed\":18446744073709551615,\"state\":\"running\","
                     "\"gens\":[[3,1],[15,4294967295]]}},{\"id\":\"pci_0000_3b_00_1\",\"address\":\"0000:3b:00.1\","
                     "\"backend\":\"legacy\",\"space\":\"s1\",\"clients\":[],\"kernel\":{\"name\":\"0000:3b:00.1\","
                     "\"address\":\"0000:3b:00.1\",\"driver\":\"vfio-pci\",\"sysfs-path\":null,"
                     "\"fd\":\"k-device-0000_3b_00_1\",\"path\":\"legacy\",\"iommu-group\":12,\"mdev\":false,\"devid\":0,"
                     "\"ioas-id\":null,\"hwpt-id\":null}}]}");
        persist_seed(dir, "state-v1",
                     "{\"version\":1,\"next-space\":1,\"kernel\":{\"next-container-id\":1,\"containers\":[]},"
                     "\"spaces\":[{\"id\":\"s0\",\"backend\":\"sim\",\"prepared\":true,\"next-serial\":1,"
                     "\"sim-mapping\":\"by-file\",\"mappings\":[{\"iova\":1073741824,\"length\":1048576,\"offset\":0,"
                     "\"access\":3,\"by-file\":true,\"serial\":0}]}],\"devices\":[]}");
}

int main(int argc, char *argv[]) {
        if (argc != 2) {
                fprintf(stderr, "usage: %s DIR (the corpus directory, e.g. tests/fuzz/corpus)\n", argv[0]);
                return EXIT_FAILURE;
        }
        hello_seed(argv[1]);
        welcome_seeds(argv[1]);
        stream_seeds(argv[1]);
        options_seeds(argv[1]);
        persist_seeds(argv[1]);
        return EXIT_SUCCESS;
}
