/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <endian.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "macro.h"
#include "sim-stream.h"

uint64_t sim_mix64(uint64_t x) {
        /* splitmix64's finalizer: a cheap bijection with full avalanche */
        x += UINT64_C(0x9e3779b97f4a7c15);
        x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
        return x ^ (x >> 31);
}

static uint64_t block_base(uint64_t seed, uint64_t block, uint32_t gen) {
        return sim_mix64(seed ^ sim_mix64(block) ^ sim_mix64(((uint64_t) gen << 32) | 0x5bd1e995u));
}

static inline uint64_t content_word(uint64_t base, uint64_t index) {
        return sim_mix64(base + index * UINT64_C(0xd6e8feb86659fd93));
}

void sim_block_content(uint64_t seed, uint64_t block, uint32_t gen, uint32_t offset, void *buf, size_t n) {
        uint64_t base = block_base(seed, block, gen);
        uint8_t *p = buf;
        uint64_t w = offset / 8;
        unsigned skip = offset % 8;

        if (skip && n) {
                uint64_t v = htole64(content_word(base, w++));
                size_t k = MIN(n, 8 - (size_t) skip);
                memcpy(p, (uint8_t *) &v + skip, k);
                p += k;
                n -= k;
        }
        for (; n >= 8; n -= 8, p += 8) {
                uint64_t v = htole64(content_word(base, w++));
                memcpy(p, &v, 8);
        }
        if (n) {
                uint64_t v = htole64(content_word(base, w));
                memcpy(p, &v, n);
        }
}

bool sim_block_content_equal(uint64_t seed, uint64_t block, uint32_t gen, uint32_t offset, const void *buf, size_t n) {
        uint8_t expected[4096];
        const uint8_t *p = buf;

        while (n > 0) {
                size_t k = MIN(n, sizeof expected);
                sim_block_content(seed, block, gen, offset, expected, k);
                if (memcmp(expected, p, k) != 0)
                        return false;
                p += k;
                offset += (uint32_t) k;
                n -= k;
        }
        return true;
}

uint64_t sim_digest_term(uint64_t seed, uint64_t block, uint32_t gen) {
        return sim_mix64(block_base(seed, block, gen) ^ UINT64_C(0x243f6a8885a308d3));
}

uint64_t sim_state_digest(uint64_t seed, const uint32_t *gens, uint64_t nblocks) {
        uint64_t sum = 0;
        for (uint64_t b = 0; b < nblocks; b++)
                sum += sim_digest_term(seed, b, gens[b]);
        return sum;
}

static void put_u16(uint8_t *p, uint16_t v) {
        v = htole16(v);
        memcpy(p, &v, 2);
}
static void put_u32(uint8_t *p, uint32_t v) {
        v = htole32(v);
        memcpy(p, &v, 4);
}
static void put_u64(uint8_t *p, uint64_t v) {
        v = htole64(v);
        memcpy(p, &v, 8);
}
static uint16_t get_u16(const uint8_t *p) {
        uint16_t v;
        memcpy(&v, p, 2);
        return le16toh(v);
}
static uint32_t get_u32(const uint8_t *p) {
        uint32_t v;
        memcpy(&v, p, 4);
        return le32toh(v);
}
static uint64_t get_u64(const uint8_t *p) {
        uint64_t v;
        memcpy(&v, p, 8);
        return le64toh(v);
}

void sim_header_encode(const SimStreamHeader *h, uint8_t out[static SIM_HEADER_SIZE]) {
        memset(out, 0, SIM_HEADER_SIZE);
        put_u64(out + 0, SIM_STREAM_MAGIC);
        put_u32(out + 8, SIM_STREAM_VERSION);
        put_u32(out + 12, h->migration_flags);
        put_u64(out + 16, h->seed);
        put_u64(out + 24, h->state_size);
        put_u32(out + 32, h->block_size);
        put_u32(out + 60, crc32c(out, 60));
}

void sim_record_header_encode(uint16_t type, uint64_t index, uint32_t gen, uint32_t length,
                              uint8_t out[static SIM_RECORD_HEADER_SIZE]) {
        memset(out, 0, SIM_RECORD_HEADER_SIZE);
        put_u32(out + 0, SIM_RECORD_MAGIC);
        put_u16(out + 4, type);
        put_u64(out + 8, index);
        put_u32(out + 16, gen);
        put_u32(out + 20, length);
        put_u32(out + 28, crc32c(out, 28));
}

void sim_end_payload_encode(uint64_t data_records, uint64_t digest, uint8_t out[static SIM_END_PAYLOAD_SIZE]) {
        put_u64(out + 0, data_records);
        put_u64(out + 8, digest);
}

typedef enum LoaderPhase {
        LOADER_HEADER,
        LOADER_RECORD_HEADER,
        LOADER_DATA,
        LOADER_END_PAYLOAD,
        LOADER_DONE,
        LOADER_FAILED,
} LoaderPhase;

struct SimLoader {
        uint32_t migration_flags;
        uint64_t state_size;
        uint64_t nblocks;

        LoaderPhase phase;
        uint8_t buf[SIM_HEADER_SIZE];
        size_t have;

        uint64_t seed;
        uint32_t *gens;
        uint64_t blocks_received;
        uint64_t data_records;
        uint64_t bytes;

        uint64_t block;
        uint32_t gen;
        uint32_t length;
        uint32_t pos;

        char error[160];
};

int sim_loader_new(uint32_t migration_flags, uint64_t state_size, SimLoader **ret) {
        _cleanup_free_ SimLoader *l = NULL;
        uint64_t nblocks = sim_block_count(state_size);

        l = calloc(1, sizeof *l);
        if (!l)
                return -ENOMEM;
        l->migration_flags = migration_flags;
        l->state_size = state_size;
        l->nblocks = nblocks;
        l->gens = malloc(MAX(nblocks, 1u) * sizeof l->gens[0]);
        if (!l->gens)
                return -ENOMEM;
        for (uint64_t b = 0; b < nblocks; b++)
                l->gens[b] = SIM_GEN_NONE;
        *ret = TAKE_PTR(l);
        return 0;
}

SimLoader *sim_loader_free(SimLoader *l) {
        if (!l)
                return NULL;
        free(l->gens);
        free(l);
        return NULL;
}

_printf_(2, 3) static int loader_fail(SimLoader *l, const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(l->error, sizeof l->error, format, ap);
        va_end(ap);
        l->phase = LOADER_FAILED;
        return -EINVAL;
}

/* Gathers a fixed-size piece into l->buf; returns true once it is complete. */
static bool gather(SimLoader *l, size_t want, const uint8_t **p, size_t *n) {
        size_t k = MIN(want - l->have, *n);
        memcpy(l->buf + l->have, *p, k);
        l->have += k;
        *p += k;
        *n -= k;
        return l->have == want;
}

static int loader_take_header(SimLoader *l) {
        const uint8_t *h = l->buf;

        if (get_u64(h) != SIM_STREAM_MAGIC)
                return loader_fail(l, "not a simulated-device stream (bad magic)");
        if (get_u32(h + 60) != crc32c(h, 60))
                return loader_fail(l, "stream header checksum mismatch");
        if (get_u32(h + 8) != SIM_STREAM_VERSION)
                return loader_fail(l, "unsupported stream version %u", get_u32(h + 8));
        if (get_u32(h + 12) != l->migration_flags)
                return loader_fail(l, "source migration flags 0x%x differ from this device's 0x%x",
                                   get_u32(h + 12), l->migration_flags);
        if (get_u64(h + 24) != l->state_size)
                return loader_fail(l, "source state size %llu differs from this device's %llu",
                                   (unsigned long long) get_u64(h + 24), (unsigned long long) l->state_size);
        if (get_u32(h + 32) != SIM_BLOCK_SIZE)
                return loader_fail(l, "unsupported block size %u", get_u32(h + 32));
        for (size_t i = 36; i < 60; i++)
                if (h[i] != 0)
                        return loader_fail(l, "reserved header bytes are not zero");
        l->seed = get_u64(h + 16);
        l->phase = LOADER_RECORD_HEADER;
        l->have = 0;
        return 0;
}

static int loader_take_record_header(SimLoader *l) {
        const uint8_t *h = l->buf;
        uint16_t type;

        if (get_u32(h) != SIM_RECORD_MAGIC)
                return loader_fail(l, "bad record magic after %llu bytes", (unsigned long long) l->bytes);
        if (get_u32(h + 28) != crc32c(h, 28))
                return loader_fail(l, "record header checksum mismatch after %llu bytes",
                                   (unsigned long long) l->bytes);
        if (get_u16(h + 6) != 0 || get_u32(h + 24) != 0)
                return loader_fail(l, "reserved record bytes are not zero");

        type = get_u16(h + 4);
        l->block = get_u64(h + 8);
        l->gen = get_u32(h + 16);
        l->length = get_u32(h + 20);
        l->pos = 0;
        l->have = 0;

        switch (type) {
        case SIM_RECORD_DATA:
                if (l->block >= l->nblocks)
                        return loader_fail(l, "record for block %llu beyond the state's %llu blocks",
                                           (unsigned long long) l->block, (unsigned long long) l->nblocks);
                if (l->length != sim_block_length(l->state_size, l->block))
                        return loader_fail(l, "record for block %llu has length %u, expected %u",
                                           (unsigned long long) l->block, l->length,
                                           sim_block_length(l->state_size, l->block));
                if (l->gen == SIM_GEN_NONE ||
                    (l->gens[l->block] != SIM_GEN_NONE && l->gen <= l->gens[l->block]))
                        return loader_fail(l, "block %llu generation %u does not advance",
                                           (unsigned long long) l->block, l->gen);
                l->phase = LOADER_DATA;
                return 0;
        case SIM_RECORD_END:
                if (l->length != SIM_END_PAYLOAD_SIZE || l->gen != 0 || l->block != l->nblocks)
                        return loader_fail(l, "malformed end record");
                l->phase = LOADER_END_PAYLOAD;
                return 0;
        default:
                return loader_fail(l, "unknown record type %u", type);
        }
}

static int loader_take_end(SimLoader *l) {
        uint64_t records = get_u64(l->buf), digest = get_u64(l->buf + 8);

        if (l->blocks_received != l->nblocks)
                return loader_fail(l, "stream ended with %llu of %llu blocks",
                                   (unsigned long long) l->blocks_received, (unsigned long long) l->nblocks);
        if (records != l->data_records)
                return loader_fail(l, "end record counts %llu data records, stream had %llu",
                                   (unsigned long long) records, (unsigned long long) l->data_records);
        if (digest != sim_state_digest(l->seed, l->gens, l->nblocks))
                return loader_fail(l, "state digest mismatch");
        l->phase = LOADER_DONE;
        return 0;
}

int sim_loader_feed(SimLoader *l, const void *buf, size_t n) {
        const uint8_t *p = buf;
        int r;

        if (l->phase == LOADER_FAILED)
                return -EINVAL;

        while (n > 0) {
                size_t before = n;

                switch (l->phase) {
                case LOADER_HEADER:
                        if (gather(l, SIM_HEADER_SIZE, &p, &n) && (r = loader_take_header(l)) < 0)
                                return r;
                        break;
                case LOADER_RECORD_HEADER:
                        if (gather(l, SIM_RECORD_HEADER_SIZE, &p, &n) && (r = loader_take_record_header(l)) < 0)
                                return r;
                        break;
                case LOADER_DATA: {
                        size_t k = MIN((size_t) (l->length - l->pos), n);
                        if (!sim_block_content_equal(l->seed, l->block, l->gen, l->pos, p, k))
                                return loader_fail(l, "content of block %llu generation %u is corrupt",
                                                   (unsigned long long) l->block, l->gen);
                        l->pos += (uint32_t) k;
                        p += k;
                        n -= k;
                        if (l->pos == l->length) {
                                if (l->gens[l->block] == SIM_GEN_NONE)
                                        l->blocks_received++;
                                l->gens[l->block] = l->gen;
                                l->data_records++;
                                l->phase = LOADER_RECORD_HEADER;
                        }
                        break;
                }
                case LOADER_END_PAYLOAD:
                        if (gather(l, SIM_END_PAYLOAD_SIZE, &p, &n) && (r = loader_take_end(l)) < 0)
                                return r;
                        break;
                case LOADER_DONE:
                        return loader_fail(l, "%zu bytes after the end of the stream", n);
                case LOADER_FAILED:
                        return -EINVAL;
                }
                l->bytes += before - n;
        }
        return 0;
}

bool sim_loader_complete(const SimLoader *l) {
        return l->phase == LOADER_DONE;
}

bool sim_loader_failed(const SimLoader *l) {
        return l->phase == LOADER_FAILED;
}

const char *sim_loader_error(const SimLoader *l) {
        if (l->phase == LOADER_FAILED)
                return l->error;
        if (l->phase != LOADER_DONE)
                return "the stream is incomplete";
        return NULL;
}

uint64_t sim_loader_seed(const SimLoader *l) {
        return l->seed;
}

const uint32_t *sim_loader_gens(const SimLoader *l) {
        return l->gens;
}

uint64_t sim_loader_bytes(const SimLoader *l) {
        return l->bytes;
}
