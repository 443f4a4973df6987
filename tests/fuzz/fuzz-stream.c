/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * libFuzzer target for everything a peer controls before and after the handshake: the HELLO
 * and WELCOME decoders, and a stream of packet headers and payloads fed through reassembly
 * exactly as a destination would (decode, check the payload CRC, admit, add, apply in device
 * order, release). Any crash, sanitizer report or leak is a bug; refusals are expected.
 *
 *     CC=clang meson setup build-fuzz -Dfuzz=true && ninja -C build-fuzz tests/fuzz/fuzz-stream
 *     mkdir -p /tmp/corpus && build-fuzz/tests/fuzz/fuzz-stream -max_total_time=600 -print_final_stats=1 \
 *             /tmp/corpus tests/fuzz/corpus/fuzz-stream
 *
 * The first input byte chooses what the rest is:
 *   bits 0-1  0, 1: a packet stream; 2: a HELLO; 3: a WELCOME
 *   bits 2-4  7: leave every CRC as the mutator made it (one input in eight), so that the CRC
 *             refusals stay covered; otherwise the harness writes the correct CRC32C into every
 *             CRC field the spec defines before decoding (fuzz-crc.h), so that mutations
 *             reach the checks behind the CRCs instead of dying at them
 *   bit 5     stream: hand payloads over as the daemon's receiver does (reassembly_add_admitted,
 *             budget counted by the caller) instead of reassembly_add
 * A packet stream is repeated [control byte][40-byte header][payload]: control bits 0-1 are the
 * channel, bit 7 set keeps the packet buffered (no device is drained after it), so that packets
 * pile up against the budget as they do behind a slow device.
 *
 * The seeds in tests/fuzz/corpus/fuzz-stream are written by fuzz-seeds.c from the codec.
 */

#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "fuzz-crc.h"
#include "reassembly.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum {
        MODE_STREAM_0 = 0,
        MODE_STREAM_1 = 1,
        MODE_HELLO = 2,
        MODE_WELCOME = 3,
};

/* Walks the stream with the framing fuzz_stream() reads it with. */
static void crc_fix_stream(uint8_t *buf, size_t size) {
        while (size > 1 + STREAM_HEADER_SIZE) {
                uint8_t *h = buf + 1;
                uint32_t length;

                buf += 1 + STREAM_HEADER_SIZE;
                size -= 1 + STREAM_HEADER_SIZE;
                length = fuzz_crc_fix_header(h, buf, size);
                if (length > size)
                        return;
                buf += length;
                size -= length;
        }
}

static void fuzz_hello(const uint8_t *data, size_t size) {
        StreamHello hello;
        const char *why;
        size_t total;

        if (fuzz_hello_size(data, size, &total) == 0 && total <= size)
                (void) stream_hello_decode(data, total, &hello, &why);
        /* and as a receiver that miscounted would: the whole input */
        (void) stream_hello_decode(data, size, &hello, &why);
}

static void fuzz_welcome(const uint8_t *data, size_t size) {
        StreamWelcome welcome;
        const char *why;

        if (size >= STREAM_WELCOME_SIZE)
                (void) stream_welcome_decode(data, &welcome, &why);
}

static void drain(Reassembly *r, uint32_t devices) {
        for (uint16_t d = 0; d < devices; d++) {
                ReasmPacket *p;
                const char *why;
                int k;

                while ((k = reassembly_next(r, d, &p, &why)) > 0)
                        reassembly_release(r, p);
        }
}

static void fuzz_stream(const uint8_t *data, size_t size, bool admitted) {
        const uint32_t devices = 3, channels = 4, max_payload = 512;
        Reassembly *r = NULL;

        if (reassembly_new(devices, channels, 8 * (max_payload + REASSEMBLY_PACKET_OVERHEAD), max_payload, &r) < 0)
                abort();
        while (size > 1 + STREAM_HEADER_SIZE) {
                uint32_t channel = data[0] % channels;
                bool hold = data[0] & 0x80;
                StreamHeader h;
                const char *why;
                uint8_t *payload;
                int k;

                k = stream_header_decode(data + 1, max_payload, devices, &h, &why);
                data += 1 + STREAM_HEADER_SIZE;
                size -= 1 + STREAM_HEADER_SIZE;
                if (k < 0 || h.length > size)
                        break;
                if (crc32c(data, h.length) != h.payload_crc)
                        break; /* the destination fails the job here */
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
                payload = h.length ? malloc(h.length) : NULL;
                if (h.length && !payload)
                        abort();
                if (h.length)
                        memcpy(payload, data, h.length);
                data += h.length;
                size -= h.length;
                k = admitted ? reassembly_add_admitted(r, channel, &h, payload, &why)
                             : reassembly_add(r, channel, &h, payload, &why);
                if (k < 0)
                        break;
                if (!hold)
                        drain(r, devices);
        }
        drain(r, devices);
        reassembly_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        uint8_t mode, *buf;
        bool raw;

        if (size == 0)
                return 0;
        mode = data[0];
        raw = ((mode >> 2) & 7) == 7;
        /* libFuzzer's input is read-only: fix the CRCs up in a copy of exactly the input's size,
         * so that ASan still sees every read past its end. */
        buf = malloc(size - 1 ? size - 1 : 1);
        if (!buf)
                abort();
        memcpy(buf, data + 1, size - 1);
        size--;

        switch (mode & 3) {
        case MODE_HELLO:
                if (!raw)
                        fuzz_crc_fix_hello(buf, size);
                fuzz_hello(buf, size);
                break;
        case MODE_WELCOME:
                if (!raw)
                        fuzz_crc_fix_welcome(buf, size);
                fuzz_welcome(buf, size);
                break;
        default:
                if (!raw)
                        crc_fix_stream(buf, size);
                fuzz_stream(buf, size, mode & 0x20);
        }
        free(buf);
        return 0;
}
