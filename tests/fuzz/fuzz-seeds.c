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

        memset(h.token, 0xa5, sizeof h.token);
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
}

int main(int argc, char *argv[]) {
        if (argc != 2) {
                fprintf(stderr, "usage: %s DIR (the corpus directory, e.g. tests/fuzz/corpus)\n", argv[0]);
                return EXIT_FAILURE;
        }
        hello_seed(argv[1]);
        welcome_seeds(argv[1]);
        stream_seeds(argv[1]);
        return EXIT_SUCCESS;
}
