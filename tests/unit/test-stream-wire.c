/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The stream protocol codec against proto/stream-protocol.md. */

#include <criterion/criterion.h>
#include <errno.h>
#include <endian.h>
#include <stdio.h>
#include <string.h>

#include "crc32c.h"
#include "wire.h"

static StreamHello sample_hello(uint32_t devices) {
        StreamHello h = {
                .major = STREAM_PROTOCOL_MAJOR,
                .minor = STREAM_PROTOCOL_MINOR,
                .channel_index = 2,
                .channel_count = 4,
                .device_count = devices,
                .flags = STREAM_HELLO_FLAG_PRECOPY,
                .max_payload = 1u << 20,
        };
        for (int i = 0; i < STREAM_TOKEN_SIZE; i++)
                h.token[i] = (uint8_t) (i * 7 + 1);
        for (uint32_t i = 0; i < devices; i++) {
                h.devices[i] = (StreamDeviceInfo) {
                        .migration_flags = 7,
                        .stream_format = STREAM_FORMAT_SIM,
                        .vendor_id = 0xffff,
                        .device_id = 0xffff,
                        .stop_copy_size = 1000 + i,
                        .state_size = 4096 * (i + 1),
                };
                snprintf(h.devices[i].driver, sizeof h.devices[i].driver, "sim");
        }
        return h;
}

Test(stream_wire, hello_round_trip_and_layout) {
        StreamHello h = sample_hello(3), back;
        uint8_t buf[1024];
        size_t peek;
        const char *why = NULL;
        int n = stream_hello_encode(&h, buf, sizeof buf);

        cr_assert_eq(n, 64 + 3 * 128 + 4);
        cr_assert_eq(memcmp(buf, "VFMHELLO", 8), 0);
        cr_assert_eq(buf[12], 2, "channel index at offset 12, little-endian");
        cr_assert_eq(buf[48], 3, "device count at offset 48");
        cr_assert_eq(memcmp(buf + 64 + 32, "sim", 4), 0, "driver name at offset 32 of the first record");
        cr_assert_eq(stream_hello_peek_size(buf, 64, &peek, &why), 0);
        cr_assert_eq(peek, (size_t) n);
        cr_assert_eq(stream_hello_decode(buf, (size_t) n, &back, &why), 0, "%s", why);
        cr_assert_eq(back.channel_index, 2);
        cr_assert_eq(back.channel_count, 4);
        cr_assert_arr_eq(back.token, h.token, STREAM_TOKEN_SIZE);
        cr_assert_eq(back.device_count, 3);
        cr_assert_eq(back.devices[2].stop_copy_size, 1002);
        cr_assert_eq(back.devices[1].state_size, 8192);
        cr_assert_str_eq(back.devices[0].driver, "sim");
        cr_assert_eq(back.flags, STREAM_HELLO_FLAG_PRECOPY);
}

Test(stream_wire, hello_refuses_every_corruption) {
        StreamHello h = sample_hello(2), back;
        uint8_t buf[1024];
        int n = stream_hello_encode(&h, buf, sizeof buf);
        const char *why;

        /* Every single-bit change anywhere is refused (the CRC covers it all). */
        for (int at = 0; at < n; at++)
                for (int bit = 0; bit < 8; bit += 3) {
                        buf[at] ^= (uint8_t) (1u << bit);
                        why = NULL;
                        int r = stream_hello_decode(buf, (size_t) n, &back, &why);
                        buf[at] ^= (uint8_t) (1u << bit);
                        cr_assert_lt(r, 0, "a flip at byte %d bit %d was accepted", at, bit);
                        cr_assert_not_null(why);
                }
        cr_assert_eq(stream_hello_decode(buf, (size_t) n - 1, &back, &why), -EBADMSG);

        /* Valid CRC, wrong content: each is named. */
        static const struct { int at; uint8_t value; const char *why; } bad[] = {
                { 14, 0, "channel" },  /* channel count 0 */
                { 12, 9, "channel" },  /* index beyond count */
                { 52, 2, "flags" },
                { 60, 1, "reserved" },
                { 64 + 4, 5, "stream format" },
                { 64 + 100, 1, "reserved" },
                { 64 + 32, 0, "driver" },
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                uint8_t copy[1024];
                memcpy(copy, buf, (size_t) n);
                copy[bad[i].at] = bad[i].value;
                uint32_t crc = htole32(crc32c(copy, (size_t) n - 4));
                memcpy(copy + n - 4, &crc, 4);
                why = NULL;
                cr_assert_eq(stream_hello_decode(copy, (size_t) n, &back, &why), -EBADMSG, "case %zu", i);
                cr_assert(strstr(why, bad[i].why), "case %zu: %s", i, why);
        }

        /* Another major version is recognised as such. */
        h.major = 2;
        n = stream_hello_encode(&h, buf, sizeof buf);
        cr_assert_eq(stream_hello_decode(buf, (size_t) n, &back, &why), -EPROTONOSUPPORT);
        cr_assert_eq(back.major, 2);

        h = sample_hello(2);
        h.device_count = 0;
        cr_assert_eq(stream_hello_encode(&h, buf, sizeof buf), -EINVAL);
        h.device_count = 65;
        cr_assert_eq(stream_hello_encode(&h, buf, sizeof buf), -EINVAL);
}

Test(stream_wire, welcome) {
        StreamWelcome w = { .major = 1, .status = STREAM_REFUSE_TOKEN, .channel_index = 3 }, back;
        uint8_t buf[STREAM_WELCOME_SIZE];
        const char *why;

        snprintf(w.reason, sizeof w.reason, "no prepared job has this token");
        stream_welcome_encode(&w, buf);
        cr_assert_eq(stream_welcome_decode(buf, &back, &why), 0);
        cr_assert_eq(back.status, STREAM_REFUSE_TOKEN);
        cr_assert_str_eq(back.reason, "no prepared job has this token");
        cr_assert_str_eq(stream_refusal_to_string(back.status), "token");
        for (int at = 0; at < STREAM_WELCOME_SIZE; at++) {
                buf[at] ^= 0x40;
                cr_assert_lt(stream_welcome_decode(buf, &back, &why), 0, "flip at %d accepted", at);
                buf[at] ^= 0x40;
        }
        w = (StreamWelcome) { .major = 1, .status = STREAM_ACCEPTED, .max_payload = 1024 };
        stream_welcome_encode(&w, buf);
        cr_assert_eq(stream_welcome_decode(buf, &back, &why), -EBADMSG, "an accepted WELCOME needs a sane payload size");
}

Test(stream_wire, headers) {
        uint8_t payload[100], buf[STREAM_HEADER_SIZE];
        StreamHeader h = { .type = STREAM_PACKET_DATA, .flags = STREAM_DATA_FLAG_PRECOPY, .device = 1,
                           .stream_seq = 77, .device_seq = 5 }, back;
        const char *why;

        memset(payload, 0xab, sizeof payload);
        stream_header_seal(&h, payload, sizeof payload);
        stream_header_encode(&h, buf);
        cr_assert_eq(stream_header_decode(buf, 1 << 20, 2, &back, &why), 0);
        cr_assert_eq(back.stream_seq, 77);
        cr_assert_eq(back.device_seq, 5);
        cr_assert_eq(back.length, 100);
        cr_assert_eq(back.payload_crc, crc32c(payload, 100));
        for (int at = 0; at < STREAM_HEADER_SIZE; at++) {
                buf[at] ^= 1;
                cr_assert_lt(stream_header_decode(buf, 1 << 20, 2, &back, &why), 0, "flip at %d accepted", at);
                buf[at] ^= 1;
        }

        static const struct { StreamHeader h; uint32_t max, devices; const char *why; } bad[] = {
                { { .type = STREAM_PACKET_DATA, .device = 0, .length = 5000 }, 4096, 1, "longer" },
                { { .type = STREAM_PACKET_DATA, .device = 0, .length = 0 }, 4096, 1, "empty" },
                { { .type = STREAM_PACKET_DATA, .device = 1, .length = 1 }, 4096, 1, "device index" },
                { { .type = STREAM_PACKET_DATA, .flags = 4, .device = 0, .length = 1 }, 4096, 1, "flags" },
                { { .type = STREAM_PACKET_END, .device = 0, .length = 8 }, 4096, 1, "END" },
                { { .type = STREAM_PACKET_INITIAL_DONE, .device = 0, .length = 1 }, 4096, 1, "payload" },
                { { .type = STREAM_PACKET_SWITCHOVER, .device = 0 }, 4096, 1, "names a device" },
                { { .type = STREAM_PACKET_COMPLETE, .device = STREAM_JOB_DEVICE, .stream_seq = 1 }, 4096, 1,
                  "sequence" },
                { { .type = STREAM_PACKET_ABORT, .device = STREAM_JOB_DEVICE, .length = 2 }, 4096, 1, "ABORT" },
                { { .type = STREAM_PACKET_BLOB, .device = 0, .length = (1u << 20) + 1 }, 16u << 20, 1, "BLOB" },
                { { .type = 9, .device = 0 }, 4096, 1, "unknown packet type" },
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                stream_header_encode(&bad[i].h, buf);
                why = NULL;
                cr_assert_eq(stream_header_decode(buf, bad[i].max, bad[i].devices, &back, &why), -EBADMSG, "case %zu", i);
                cr_assert(why && strstr(why, bad[i].why), "case %zu: %s", i, why);
        }
        cr_assert(stream_packet_is_ordered(STREAM_PACKET_BLOB));
        cr_assert(!stream_packet_is_ordered(STREAM_PACKET_ABORT));
        cr_assert_str_eq(stream_packet_type_to_string(STREAM_PACKET_INITIAL_LOADED), "INITIAL_LOADED");
        cr_assert_str_eq(stream_abort_to_string(STREAM_ABORT_TIMEOUT), "timeout");
}
