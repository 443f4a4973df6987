/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * libFuzzer target for everything a peer controls before and after the handshake: the HELLO
 * and WELCOME decoders, and a stream of packet headers and payloads fed through reassembly
 * exactly as a destination would (admit, add, apply in device order, release). Any crash,
 * sanitizer report or leak is a bug; refusals are expected.
 *
 *     CC=clang meson setup build-fuzz -Dfuzz=true && ninja -C build-fuzz
 *     mkdir -p /tmp/corpus && build-fuzz/tests/fuzz/fuzz-stream -max_total_time=600 /tmp/corpus tests/fuzz/corpus
 *
 * tests/fuzz/corpus holds two seeds: a valid HELLO and a short valid stream of two devices.
 */

#include <stdlib.h>
#include <string.h>

#include "reassembly.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fuzz_handshake(const uint8_t *data, size_t size) {
        StreamHello hello;
        StreamWelcome welcome;
        const char *why;
        size_t total;

        if (stream_hello_peek_size(data, size, &total, NULL, NULL, &why) == 0 && total <= size)
                (void) stream_hello_decode(data, total, &hello, &why);
        (void) stream_hello_decode(data, size, &hello, &why);
        if (size >= STREAM_WELCOME_SIZE)
                (void) stream_welcome_decode(data, &welcome, &why);
}

/* The input, after its first byte: repeated [channel byte][40-byte header][payload]. */
static void fuzz_stream(const uint8_t *data, size_t size) {
        const uint32_t devices = 3, channels = 4, max_payload = 512;
        Reassembly *r = NULL;

        if (reassembly_new(devices, channels, 8 * (max_payload + REASSEMBLY_PACKET_OVERHEAD), max_payload, &r) < 0)
                abort();
        while (size > 1 + STREAM_HEADER_SIZE) {
                uint32_t channel = data[0] % channels;
                StreamHeader h;
                const char *why;
                uint8_t *payload;
                int k;

                k = stream_header_decode(data + 1, max_payload, devices, &h, &why);
                data += 1 + STREAM_HEADER_SIZE;
                size -= 1 + STREAM_HEADER_SIZE;
                if (k < 0 || h.length > size)
                        break;
                if (!stream_packet_is_ordered(h.type)) {
                        data += h.length;
                        size -= h.length;
                        continue;
                }
                k = reassembly_admit(r, channel, &h, &why);
                if (k < 0)
                        break;
                if (k == REASM_WAIT) {
                        /* a destination would leave the channel; here, skip the packet */
                        data += h.length;
                        size -= h.length;
                        continue;
                }
                payload = malloc(h.length ? h.length : 1);
                if (!payload)
                        abort();
                memcpy(payload, data, h.length);
                data += h.length;
                size -= h.length;
                if (reassembly_add(r, channel, &h, payload, &why) < 0)
                        break;
                for (uint16_t d = 0; d < devices; d++) {
                        ReasmPacket *p;
                        while ((k = reassembly_next(r, d, &p, &why)) > 0)
                                reassembly_release(r, p);
                }
        }
        reassembly_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size == 0)
                return 0;
        if (data[0] & 1)
                fuzz_handshake(data + 1, size - 1);
        else
                fuzz_stream(data + 1, size - 1);
        return 0;
}
