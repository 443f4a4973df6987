/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * For fuzz targets that feed the stream codec: write the correct CRC32C into every CRC field of
 * a message before it is decoded, so that mutations reach the checks behind the CRCs. A target
 * should leave a fraction of its inputs alone (fuzz-stream: one in eight) so that the CRC
 * refusals stay covered too.
 */

#include <endian.h>
#include <stdint.h>
#include <string.h>

#include "crc32c.h"
#include "wire.h"

/* Where proto/stream-protocol.md puts the CRC32Cs. Every one covers the bytes of its structure
 * before it, from the structure's start: the HELLO's is its last 4 bytes (its size follows from
 * the device count, stream_hello_peek_size()), the WELCOME's is at the end of its first
 * STREAM_WELCOME_SIZE bytes, the PROOF's (version 2) its last 4 bytes, a packet header's its
 * last 4 bytes; a header also carries its payload's CRC. When a message grows, these follow
 * the constants in proto/stream-wire.h; a new CRC field is one more line in fuzz_crc_fix_*(). */
#define FUZZ_HELLO_CRC_SIZE STREAM_HELLO_CRC_SIZE
#define FUZZ_WELCOME_CRC_OFFSET (STREAM_WELCOME_SIZE - 4)
#define FUZZ_HEADER_CRC_OFFSET (STREAM_HEADER_SIZE - 4)
#define FUZZ_HEADER_LENGTH_OFFSET 24
#define FUZZ_HEADER_PAYLOAD_CRC_OFFSET 28

static inline void fuzz_put_crc(uint8_t *at, const uint8_t *from, size_t n) {
        uint32_t c = htole32(crc32c(from, n));
        memcpy(at, &c, 4);
}

static inline uint32_t fuzz_get_le32(const uint8_t *p) {
        uint32_t v;
        memcpy(&v, p, 4);
        return le32toh(v);
}

/* The size of the whole HELLO from its fixed part, as the codec computes it (its signature
 * gained the version fields in protocol version 2). */
static inline int fuzz_hello_size(const uint8_t *buf, size_t size, size_t *ret) {
        const char *why;
        return stream_hello_peek_size(buf, size, ret, NULL, NULL, &why);
}

static inline void fuzz_crc_fix_hello(uint8_t *buf, size_t size) {
        size_t total;

        if (fuzz_hello_size(buf, size, &total) < 0 || total > size || total < FUZZ_HELLO_CRC_SIZE)
                return;
        fuzz_put_crc(buf + total - FUZZ_HELLO_CRC_SIZE, buf, total - FUZZ_HELLO_CRC_SIZE);
}

static inline void fuzz_crc_fix_welcome(uint8_t *buf, size_t size) {
        if (size >= STREAM_WELCOME_SIZE)
                fuzz_put_crc(buf + FUZZ_WELCOME_CRC_OFFSET, buf, FUZZ_WELCOME_CRC_OFFSET);
}

#ifdef STREAM_PROOF_SIZE
/* Protocol version 2's PROOF: its CRC covers the bytes before it. */
static inline void fuzz_crc_fix_proof(uint8_t *buf, size_t size) {
        if (size >= STREAM_PROOF_SIZE)
                fuzz_put_crc(buf + STREAM_PROOF_SIZE - 4, buf, STREAM_PROOF_SIZE - 4);
}
#endif

/* A packet header at h, followed by avail bytes: its payload CRC when the payload is all there,
 * then its own CRC. Returns the payload length it announces. */
static inline uint32_t fuzz_crc_fix_header(uint8_t *h, const uint8_t *payload, size_t avail) {
        uint32_t length = fuzz_get_le32(h + FUZZ_HEADER_LENGTH_OFFSET);

        if (length <= avail)
                fuzz_put_crc(h + FUZZ_HEADER_PAYLOAD_CRC_OFFSET, payload, length);
        fuzz_put_crc(h + FUZZ_HEADER_CRC_OFFSET, h, FUZZ_HEADER_CRC_OFFSET);
        return length;
}
