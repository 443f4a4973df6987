/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * libFuzzer target for the protocol version 2 handshake and commit messages: a peer's HELLO
 * (peek, then decode), WELCOME with its proof, PROOF, and COMPLETE, and the proof verification
 * a destination and a source run over what arrived (HMAC-SHA256 with the job's token). Any
 * crash, sanitizer report or leak is a bug; refusals are expected. A proof that verifies
 * without the token would be a catastrophe: the target aborts if one does.
 *
 *     CC=clang meson setup build-fuzz -Dfuzz=true && ninja -C build-fuzz
 *     mkdir -p /tmp/corpus-hs && build-fuzz/tests/fuzz/fuzz-handshake -max_total_time=600 /tmp/corpus-hs
 *
 * The first input byte picks the message (modulo 3) and, in one input of eight, leaves the
 * CRCs as mutated; the rest is the message, whose CRCs are otherwise fixed up (fuzz-crc.h).
 */

#include <stdlib.h>
#include <string.h>

#include "fuzz-crc.h"
#include "macro.h"
#include "stream-auth.h"
#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const uint8_t TOKEN[STREAM_TOKEN_SIZE] = { 0x5a, 0x01, 0x02, 0x03 };

static void fuzz_hello(const uint8_t *data, size_t size) {
        StreamHello h;
        const char *why = NULL;
        uint16_t major = 0, minor = 0;
        size_t total = 0;
        uint8_t welcome[STREAM_WELCOME_SIZE] = {}, nonce_dst[STREAM_NONCE_SIZE] = {}, binding[STREAM_BINDING_SIZE] = {};
        uint8_t mac[STREAM_MAC_SIZE];

        if (stream_hello_peek_size(data, size, &total, &major, &minor, &why) != 0 || total > size)
                return;
        if (stream_hello_decode(data, total, &h, &why) < 0)
                return;
        /* What a destination does with an accepted HELLO: prove, and check a source's proof
         * taken from the bytes after it. */
        {
                StreamTranscript t = {
                        .hello = data,
                        .hello_size = total,
                        .welcome = welcome,
                        .nonce_src = h.nonce,
                        .nonce_dst = nonce_dst,
                        .channel_index = h.channel_index,
                        .channel_count = h.channel_count,
                        .binding = binding,
                };
                if (stream_proof_mac(TOKEN, STREAM_PROOF_DST, &t, mac) < 0)
                        abort();
                if (size - total >= STREAM_PROOF_SIZE) {
                        StreamProof p;
                        if (stream_proof_decode(data + total, &p, &why) == 0 &&
                            stream_proof_verify(TOKEN, STREAM_PROOF_SRC, &t, p.mac))
                                abort(); /* a forged proof verified */
                }
        }
}

static void fuzz_welcome(const uint8_t *data, size_t size) {
        StreamWelcome w;
        const char *why = NULL;
        uint8_t hello[STREAM_HELLO_FIXED_SIZE] = {}, nonce_src[STREAM_NONCE_SIZE] = {}, binding[STREAM_BINDING_SIZE] = {};

        if (size < STREAM_WELCOME_SIZE || stream_welcome_decode(data, &w, &why) < 0)
                return;
        if (w.status != STREAM_ACCEPTED || size < STREAM_WELCOME_SIZE + STREAM_WELCOME_PROOF_SIZE)
                return;
        stream_welcome_decode_proof(data + STREAM_WELCOME_SIZE, &w);
        {
                StreamTranscript t = {
                        .hello = hello,
                        .hello_size = sizeof hello,
                        .welcome = data,
                        .nonce_src = nonce_src,
                        .nonce_dst = w.nonce,
                        .channel_index = w.channel_index,
                        .channel_count = 1,
                        .binding = binding,
                };
                if (stream_proof_verify(TOKEN, STREAM_PROOF_DST, &t, w.mac))
                        abort(); /* a forged proof verified */
        }
}

static void fuzz_complete(const uint8_t *data, size_t size) {
        StreamCompleteRecord rec[STREAM_DEVICES_MAX];
        StreamHeader h;
        const char *why = NULL;
        uint32_t devices;

        if (size < 1 + STREAM_HEADER_SIZE)
                return;
        devices = 1 + data[0] % STREAM_DEVICES_MAX;
        if (stream_header_decode(data + 1, 1u << 20, devices, &h, &why) < 0 || h.type != STREAM_PACKET_COMPLETE)
                return;
        data += 1 + STREAM_HEADER_SIZE;
        size -= 1 + STREAM_HEADER_SIZE;
        if (h.length > size)
                return;
        (void) stream_complete_decode(data, h.length, devices, rec, &why);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        _cleanup_free_ uint8_t *buf = NULL;
        bool raw;

        if (size < 1)
                return 0;
        /* One input in eight keeps its CRCs as mutated, so the CRC refusals stay covered; the
         * others get correct ones (fuzz-crc.h), so mutations reach the checks behind them.
         * libFuzzer's input is read-only: fix them up in a copy of exactly the input's size. */
        raw = ((data[0] >> 2) & 7) == 7;
        buf = malloc(size);
        if (!buf)
                return 0;
        memcpy(buf, data, size);
        switch (data[0] % 3) {
        case 0:
                if (!raw) {
                        size_t total;
                        fuzz_crc_fix_hello(buf + 1, size - 1);
                        if (fuzz_hello_size(buf + 1, size - 1, &total) == 0 && total <= size - 1)
                                fuzz_crc_fix_proof(buf + 1 + total, size - 1 - total);
                }
                fuzz_hello(buf + 1, size - 1);
                break;
        case 1:
                if (!raw)
                        fuzz_crc_fix_welcome(buf + 1, size - 1);
                fuzz_welcome(buf + 1, size - 1);
                break;
        default:
                if (!raw && size >= 2 + STREAM_HEADER_SIZE)
                        (void) fuzz_crc_fix_header(buf + 2, buf + 2 + STREAM_HEADER_SIZE, size - 2 - STREAM_HEADER_SIZE);
                fuzz_complete(buf + 1, size - 1);
                break;
        }
        return 0;
}
