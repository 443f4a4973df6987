/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The simulated device's stream format, checked by building streams by hand. */

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sim-stream.h"
#include "vfio-uapi.h"

#define FLAGS (VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P)

typedef struct Buf {
        uint8_t *data;
        size_t size;
} Buf;

static void append(Buf *b, const void *p, size_t n) {
        b->data = realloc(b->data, b->size + n);
        cr_assert_not_null(b->data);
        memcpy(b->data + b->size, p, n);
        b->size += n;
}

static void append_block(Buf *b, uint64_t seed, uint64_t state_size, uint64_t block, uint32_t gen) {
        uint8_t head[SIM_RECORD_HEADER_SIZE], content[SIM_BLOCK_SIZE];
        uint32_t len = sim_block_length(state_size, block);

        sim_record_header_encode(SIM_RECORD_DATA, block, gen, len, head);
        sim_block_content(seed, block, gen, 0, content, len);
        append(b, head, sizeof head);
        append(b, content, len);
}

/* header, every block once (block 1 twice, at generations 0 then 3), end */
static Buf build_stream(uint64_t seed, uint64_t state_size) {
        SimStreamHeader h = { .migration_flags = FLAGS, .seed = seed, .state_size = state_size,
                              .block_size = SIM_BLOCK_SIZE };
        uint64_t n = sim_block_count(state_size), records = 0;
        uint32_t gens[16] = {};
        uint8_t head[SIM_HEADER_SIZE], end_head[SIM_RECORD_HEADER_SIZE], end_payload[SIM_END_PAYLOAD_SIZE];
        Buf b = {};

        cr_assert_leq(n, 16);
        sim_header_encode(&h, head);
        append(&b, head, sizeof head);
        for (uint64_t i = 0; i < n; i++, records++)
                append_block(&b, seed, state_size, i, 0);
        if (n > 1) {
                append_block(&b, seed, state_size, 1, 3);
                gens[1] = 3;
                records++;
        }
        sim_record_header_encode(SIM_RECORD_END, n, 0, SIM_END_PAYLOAD_SIZE, end_head);
        sim_end_payload_encode(records, sim_state_digest(seed, gens, n), end_payload);
        append(&b, end_head, sizeof end_head);
        append(&b, end_payload, sizeof end_payload);
        return b;
}

static SimLoader *loader(uint64_t state_size) {
        SimLoader *l = NULL;
        cr_assert_eq(sim_loader_new(FLAGS, state_size, &l), 0);
        return l;
}

Test(sim_stream, content_is_random_access_and_seeded) {
        uint8_t whole[1000], part[37];

        sim_block_content(42, 3, 1, 0, whole, sizeof whole);
        for (uint32_t off = 0; off + sizeof part <= sizeof whole; off += 13) {
                sim_block_content(42, 3, 1, off, part, sizeof part);
                cr_assert_arr_eq(part, whole + off, sizeof part);
                cr_assert(sim_block_content_equal(42, 3, 1, off, whole + off, sizeof part));
        }
        sim_block_content(43, 3, 1, 0, part, sizeof part);
        cr_assert(memcmp(part, whole, sizeof part) != 0, "another seed must give other content");
        sim_block_content(42, 3, 2, 0, part, sizeof part);
        cr_assert(memcmp(part, whole, sizeof part) != 0, "another generation must give other content");
        whole[500] ^= 1;
        cr_assert(!sim_block_content_equal(42, 3, 1, 0, whole, sizeof whole));
}

Test(sim_stream, accepts_a_valid_stream_in_any_segmentation) {
        const uint64_t size = 3 * SIM_BLOCK_SIZE + 1000;
        Buf b = build_stream(7, size);
        unsigned seg_sizes[] = { 1, 3, 31, 32, 33, 64, 4096, 65568, 1 << 20 };

        for (size_t i = 0; i < sizeof seg_sizes / sizeof seg_sizes[0]; i++) {
                SimLoader *l = loader(size);
                for (size_t off = 0; off < b.size; off += seg_sizes[i]) {
                        size_t k = b.size - off < seg_sizes[i] ? b.size - off : seg_sizes[i];
                        cr_assert_eq(sim_loader_feed(l, b.data + off, k), 0, "segment %u at %zu: %s", seg_sizes[i],
                                     off, sim_loader_error(l));
                        if (off + k < b.size)
                                cr_assert(!sim_loader_complete(l));
                }
                cr_assert(sim_loader_complete(l));
                cr_assert_eq(sim_loader_seed(l), 7);
                cr_assert_eq(sim_loader_gens(l)[1], 3);
                cr_assert_eq(sim_loader_gens(l)[2], 0);
                cr_assert_eq(sim_loader_bytes(l), b.size);
                sim_loader_free(l);
        }
        free(b.data);
}

Test(sim_stream, refuses_every_single_bit_flip_in_headers) {
        const uint64_t size = 2 * SIM_BLOCK_SIZE;
        Buf b = build_stream(9, size);
        /* stream header, first record header, and the end record */
        size_t ranges[][2] = { { 0, SIM_HEADER_SIZE },
                               { SIM_HEADER_SIZE, SIM_HEADER_SIZE + SIM_RECORD_HEADER_SIZE },
                               { b.size - SIM_END_RECORD_SIZE, b.size } };

        for (size_t r = 0; r < 3; r++)
                for (size_t at = ranges[r][0]; at < ranges[r][1]; at++)
                        for (int bit = 0; bit < 8; bit += 3) {
                                SimLoader *l = loader(size);
                                b.data[at] ^= (uint8_t) (1u << bit);
                                int ret = sim_loader_feed(l, b.data, b.size);
                                b.data[at] ^= (uint8_t) (1u << bit);
                                cr_assert(ret < 0 && sim_loader_failed(l), "flip at byte %zu bit %d accepted", at, bit);
                                sim_loader_free(l);
                        }
        free(b.data);
}

Test(sim_stream, refuses_corrupt_content_truncation_and_trailing_data) {
        const uint64_t size = 2 * SIM_BLOCK_SIZE;
        Buf b = build_stream(9, size);
        SimLoader *l;

        l = loader(size);
        b.data[SIM_HEADER_SIZE + SIM_RECORD_HEADER_SIZE + 100] ^= 0x40;
        cr_assert_eq(sim_loader_feed(l, b.data, b.size), -EINVAL);
        cr_assert(strstr(sim_loader_error(l), "corrupt"));
        cr_assert_eq(sim_loader_feed(l, "x", 1), -EINVAL, "a failed loader stays failed");
        b.data[SIM_HEADER_SIZE + SIM_RECORD_HEADER_SIZE + 100] ^= 0x40;
        sim_loader_free(l);

        l = loader(size);
        cr_assert_eq(sim_loader_feed(l, b.data, b.size - 1), 0);
        cr_assert(!sim_loader_complete(l) && !sim_loader_failed(l));
        cr_assert_str_eq(sim_loader_error(l), "the stream is incomplete");
        cr_assert_eq(sim_loader_feed(l, b.data + b.size - 1, 1), 0);
        cr_assert(sim_loader_complete(l));
        cr_assert_eq(sim_loader_feed(l, "x", 1), -EINVAL);
        sim_loader_free(l);

        /* A destination of another size or with other flags refuses the header. */
        l = loader(size + 1);
        cr_assert_eq(sim_loader_feed(l, b.data, SIM_HEADER_SIZE), -EINVAL);
        cr_assert(strstr(sim_loader_error(l), "state size"));
        sim_loader_free(l);
        cr_assert_eq(sim_loader_new(VFIO_MIGRATION_STOP_COPY, size, &l), 0);
        cr_assert_eq(sim_loader_feed(l, b.data, SIM_HEADER_SIZE), -EINVAL);
        cr_assert(strstr(sim_loader_error(l), "flags"));
        sim_loader_free(l);
        free(b.data);
}

Test(sim_stream, refuses_missing_blocks_and_stale_generations) {
        const uint64_t size = 2 * SIM_BLOCK_SIZE;
        uint8_t head[SIM_HEADER_SIZE], end_head[SIM_RECORD_HEADER_SIZE], end_payload[SIM_END_PAYLOAD_SIZE];
        SimStreamHeader h = { .migration_flags = FLAGS, .seed = 1, .state_size = size, .block_size = SIM_BLOCK_SIZE };
        uint32_t gens[2] = { 0, 0 };
        SimLoader *l;
        Buf b = {};

        /* Only block 0, with an end record whose digest covers it honestly. */
        sim_header_encode(&h, head);
        append(&b, head, sizeof head);
        append_block(&b, 1, size, 0, 0);
        sim_record_header_encode(SIM_RECORD_END, 2, 0, SIM_END_PAYLOAD_SIZE, end_head);
        sim_end_payload_encode(1, sim_state_digest(1, gens, 2), end_payload);
        append(&b, end_head, sizeof end_head);
        append(&b, end_payload, sizeof end_payload);
        l = loader(size);
        cr_assert_eq(sim_loader_feed(l, b.data, b.size), -EINVAL);
        cr_assert(strstr(sim_loader_error(l), "1 of 2 blocks"), "%s", sim_loader_error(l));
        sim_loader_free(l);
        free(b.data);

        /* The same block twice at the same generation. */
        b = (Buf) {};
        append(&b, head, sizeof head);
        append_block(&b, 1, size, 0, 4);
        append_block(&b, 1, size, 0, 4);
        l = loader(size);
        cr_assert_eq(sim_loader_feed(l, b.data, b.size), -EINVAL);
        cr_assert(strstr(sim_loader_error(l), "does not advance"));
        sim_loader_free(l);
        free(b.data);
}
