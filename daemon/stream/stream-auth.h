/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The cryptography of protocol version 2 (proto/stream-protocol.md §1.4, §2.5), with GnuTLS:
 * the job identifier a HELLO carries instead of the token, the proofs both ends give of knowing
 * the token (HMAC-SHA256 over the whole handshake of one channel), and the per-device digest
 * COMPLETE carries. The token itself never leaves the daemon. No I/O here.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire.h"

/* First STREAM_JOB_ID_SIZE bytes of HMAC-SHA256(token, "vfiomigd job id"). */
int stream_job_id(const uint8_t token[static STREAM_TOKEN_SIZE], uint8_t ret[static STREAM_JOB_ID_SIZE]);

/* Fills buf with n bytes from the kernel's random source. */
int stream_random(uint8_t *buf, size_t n);

typedef enum StreamProofSide {
        STREAM_PROOF_DST,        /* MAC_dst, in the WELCOME */
        STREAM_PROOF_SRC,        /* MAC_src, in the PROOF */
} StreamProofSide;

/* The handshake of one channel, as both ends saw it on the wire. */
typedef struct StreamTranscript {
        const uint8_t *hello;                       /* the whole HELLO as sent */
        size_t hello_size;
        const uint8_t *welcome;                     /* its first STREAM_WELCOME_SIZE bytes as sent */
        const uint8_t *nonce_src, *nonce_dst;
        uint16_t channel_index, channel_count;
        const uint8_t *binding;                     /* STREAM_BINDING_SIZE bytes */
} StreamTranscript;

/* HMAC-SHA256(token, label || HELLO || WELCOME[0..95] || nonce_src || nonce_dst ||
 * index (u16le) || count (u16le) || binding). */
int stream_proof_mac(const uint8_t token[static STREAM_TOKEN_SIZE], StreamProofSide side, const StreamTranscript *t,
                     uint8_t ret[static STREAM_MAC_SIZE]);
/* Computes the expected MAC and compares it with mac in constant time: true when equal. */
bool stream_proof_verify(const uint8_t token[static STREAM_TOKEN_SIZE], StreamProofSide side, const StreamTranscript *t,
                         const uint8_t mac[static STREAM_MAC_SIZE]);
/* Constant-time comparison. */
bool stream_equal_ct(const uint8_t *a, const uint8_t *b, size_t n);

/* The per-device digest of COMPLETE: SHA-256 over one record per ordered packet. */
typedef struct StreamDigest {
        void *hd;                                   /* gnutls_hash_hd_t */
} StreamDigest;

int stream_digest_init(StreamDigest *d);
/* Adds the record of one ordered packet (its header: sequence, type, flags, length, CRC). */
void stream_digest_add(StreamDigest *d, const StreamHeader *h);
/* Copies the digest so far out (the digest goes on). */
void stream_digest_peek(StreamDigest *d, uint8_t ret[static STREAM_DIGEST_SIZE]);
void stream_digest_done(StreamDigest *d);
