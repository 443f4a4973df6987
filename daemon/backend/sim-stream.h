/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The migration data stream of the simulated device. It is self-describing and self-checking:
 * the content of every block follows from (seed, block, generation), so a destination can verify
 * every byte it receives without holding the state, and a source can produce it without storing
 * it. All integers are little-endian.
 *
 *   stream  := header record* end
 *   header  (64 bytes):  u64 magic "vfmsim01" | u32 version (1) | u32 migration flags of the source
 *                        | u64 seed | u64 state size | u32 block size | 20 reserved zero bytes
 *                        | u32 CRC32C of bytes 0..59
 *   record  (32 + length bytes): u32 magic "VREC" | u16 type (1 = data) | u16 zero | u64 block index
 *                        | u32 generation | u32 length | u32 zero | u32 CRC32C of bytes 0..27
 *                        | length bytes of block content at that generation
 *   end     (32 + 16 bytes): a record of type 2 whose "block index" is the number of blocks, with
 *                        a 16-byte payload: u64 number of data records in the stream | u64 digest
 *
 * A block may appear several times (pre-copy sends it, the device dirties it, it is sent again);
 * generations of one block strictly increase along the stream. The digest sums a hash of
 * (seed, block, generation) over every block's final generation, so it identifies the device
 * state the stream carries, independently of the order and number of records.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SIM_STREAM_MAGIC UINT64_C(0x31306d69736d6676) /* "vfmsim01" */
#define SIM_STREAM_VERSION 1u
#define SIM_RECORD_MAGIC UINT32_C(0x43455256)         /* "VREC" */
#define SIM_HEADER_SIZE 64u
#define SIM_RECORD_HEADER_SIZE 32u
#define SIM_END_PAYLOAD_SIZE 16u
#define SIM_END_RECORD_SIZE (SIM_RECORD_HEADER_SIZE + SIM_END_PAYLOAD_SIZE)
#define SIM_BLOCK_SIZE 65536u
#define SIM_GEN_NONE UINT32_MAX

enum {
        SIM_RECORD_DATA = 1,
        SIM_RECORD_END = 2,
};

typedef struct SimStreamHeader {
        uint32_t migration_flags;
        uint64_t seed;
        uint64_t state_size;
        uint32_t block_size;
} SimStreamHeader;

uint64_t sim_mix64(uint64_t x);

static inline uint64_t sim_block_count(uint64_t state_size) {
        return (state_size + SIM_BLOCK_SIZE - 1) / SIM_BLOCK_SIZE;
}

static inline uint32_t sim_block_length(uint64_t state_size, uint64_t block) {
        uint64_t start = block * SIM_BLOCK_SIZE;
        return (uint32_t) (state_size - start < SIM_BLOCK_SIZE ? state_size - start : SIM_BLOCK_SIZE);
}

/* Bytes of content of one block at one generation, from byte offset on. */
void sim_block_content(uint64_t seed, uint64_t block, uint32_t gen, uint32_t offset, void *buf, size_t n);
/* True when buf equals that content. */
bool sim_block_content_equal(uint64_t seed, uint64_t block, uint32_t gen, uint32_t offset, const void *buf, size_t n);

/* The digest term of one block; the state digest is the sum of the terms of all blocks. */
uint64_t sim_digest_term(uint64_t seed, uint64_t block, uint32_t gen);
uint64_t sim_state_digest(uint64_t seed, const uint32_t *gens, uint64_t nblocks);

void sim_header_encode(const SimStreamHeader *h, uint8_t out[static SIM_HEADER_SIZE]);
void sim_record_header_encode(uint16_t type, uint64_t index, uint32_t gen, uint32_t length,
                              uint8_t out[static SIM_RECORD_HEADER_SIZE]);
void sim_end_payload_encode(uint64_t data_records, uint64_t digest, uint8_t out[static SIM_END_PAYLOAD_SIZE]);

/*
 * The destination side: consumes the stream in arbitrary segments and validates as it goes.
 * Any violation fails the loader for good (sim_loader_error() says why); a stream that stops
 * early is merely incomplete.
 */
typedef struct SimLoader SimLoader;

int sim_loader_new(uint32_t migration_flags, uint64_t state_size, SimLoader **ret);
SimLoader *sim_loader_free(SimLoader *l);
/* 0, or -EINVAL once the stream is found invalid. */
int sim_loader_feed(SimLoader *l, const void *buf, size_t n);
bool sim_loader_complete(const SimLoader *l);
bool sim_loader_failed(const SimLoader *l);
const char *sim_loader_error(const SimLoader *l);
/* Valid once complete: the seed and per-block generations the stream carried. */
uint64_t sim_loader_seed(const SimLoader *l);
const uint32_t *sim_loader_gens(const SimLoader *l);
uint64_t sim_loader_bytes(const SimLoader *l);
