/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The codec of the stream protocol (proto/stream-protocol.md): encoding and strict decoding of
 * HELLO, WELCOME and packet headers. Decoders check everything the specification lets them
 * check without context (magic, CRC, reserved bytes, ranges) and say why they refuse; sequence
 * and budget rules need the job's state and live in reassembly.c. No I/O here.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "stream-wire.h"

typedef struct StreamDeviceInfo {
        uint32_t migration_flags;
        uint32_t stream_format;
        uint16_t vendor_id;           /* 0xffff when none */
        uint16_t device_id;
        uint64_t stop_copy_size;
        uint64_t state_size;
        char driver[STREAM_DRIVER_NAME_SIZE + 1];
} StreamDeviceInfo;

typedef struct StreamHello {
        uint16_t major, minor;
        uint16_t channel_index;
        uint16_t channel_count;
        uint8_t job_id[STREAM_JOB_ID_SIZE];
        uint8_t nonce[STREAM_NONCE_SIZE];  /* the source's, fresh per channel */
        uint32_t device_count;
        uint32_t flags;
        uint32_t max_payload;
        StreamDeviceInfo devices[STREAM_DEVICES_MAX];
} StreamHello;

typedef struct StreamWelcome {
        uint16_t major, minor;
        uint32_t status;
        uint16_t channel_index;
        uint32_t max_payload;
        char reason[STREAM_REASON_TEXT_SIZE + 1];
        /* accepted only: the proof that follows the first STREAM_WELCOME_SIZE bytes */
        uint8_t nonce[STREAM_NONCE_SIZE];  /* the destination's */
        uint8_t mac[STREAM_MAC_SIZE];      /* MAC_dst */
} StreamWelcome;

typedef struct StreamProof {
        uint8_t mac[STREAM_MAC_SIZE];      /* MAC_src */
} StreamProof;

typedef struct StreamHeader {
        uint8_t type;
        uint8_t flags;
        uint16_t device;
        uint64_t stream_seq;
        uint64_t device_seq;
        uint32_t length;
        uint32_t payload_crc;
} StreamHeader;

/* Encoded size of a HELLO with n devices. */
size_t stream_hello_size(uint32_t device_count);
/* Writes the HELLO into buf (stream_hello_size() bytes); -EINVAL for out-of-range fields. */
int stream_hello_encode(const StreamHello *h, uint8_t *buf, size_t size);
/* From the first STREAM_HELLO_FIXED_SIZE bytes: the size of the whole HELLO, or -EBADMSG
 * (with *why) when the fixed part is already wrong, or -EPROTONOSUPPORT with the peer's
 * version in ret_major/ret_minor (either may be NULL) when it speaks another major version
 * (any version's HELLO has the magic and the two version fields at offsets 0, 8 and 10). */
int stream_hello_peek_size(const uint8_t *buf, size_t size, size_t *ret_size, uint16_t *ret_major,
                           uint16_t *ret_minor, const char **why);
/* Decodes and checks a complete HELLO. -EBADMSG with *why naming the problem. A HELLO of
 * another major version still decodes its version fields and returns -EPROTONOSUPPORT. */
int stream_hello_decode(const uint8_t *buf, size_t size, StreamHello *ret, const char **why);

/* Encodes the first STREAM_WELCOME_SIZE bytes (what a refusal is made of). */
void stream_welcome_encode(const StreamWelcome *w, uint8_t out[static STREAM_WELCOME_SIZE]);
/* Encodes a whole WELCOME: STREAM_WELCOME_SIZE bytes, and for an acceptance the nonce and the
 * MAC after them. Returns the size written (out holds STREAM_WELCOME_SIZE + STREAM_WELCOME_PROOF_SIZE). */
size_t stream_welcome_encode_full(const StreamWelcome *w,
                                  uint8_t out[static STREAM_WELCOME_SIZE + STREAM_WELCOME_PROOF_SIZE]);
/* Decodes the first STREAM_WELCOME_SIZE bytes; the proof of an acceptance follows them on the
 * wire and is taken apart by stream_welcome_decode_proof(). */
int stream_welcome_decode(const uint8_t in[static STREAM_WELCOME_SIZE], StreamWelcome *ret, const char **why);
void stream_welcome_decode_proof(const uint8_t in[static STREAM_WELCOME_PROOF_SIZE], StreamWelcome *w);

void stream_proof_encode(const StreamProof *p, uint8_t out[static STREAM_PROOF_SIZE]);
int stream_proof_decode(const uint8_t in[static STREAM_PROOF_SIZE], StreamProof *ret, const char **why);

/* The COMPLETE payload: one record per device. */
typedef struct StreamCompleteRecord {
        uint64_t data_bytes;
        uint64_t data_packets;
        uint8_t digest[STREAM_DIGEST_SIZE];
} StreamCompleteRecord;

/* Writes device_count records (device_count * STREAM_COMPLETE_RECORD_SIZE bytes). */
void stream_complete_encode(const StreamCompleteRecord *records, uint32_t device_count, uint8_t *out);
/* -EBADMSG unless size is exactly device_count records. */
int stream_complete_decode(const uint8_t *in, size_t size, uint32_t device_count, StreamCompleteRecord *ret,
                           const char **why);
/* The digest record of one ordered packet (§2.5), from its header. */
void stream_digest_record(const StreamHeader *h, uint8_t out[static STREAM_DIGEST_RECORD_SIZE]);

void stream_header_encode(const StreamHeader *h, uint8_t out[static STREAM_HEADER_SIZE]);
/* Checks magic, CRC, reserved bytes, type, device index (< device_count or the job index for
 * control packets), flags and length (≤ max_payload; exact for fixed-size payloads: COMPLETE
 * carries device_count records). */
int stream_header_decode(const uint8_t in[static STREAM_HEADER_SIZE], uint32_t max_payload, uint32_t device_count,
                         StreamHeader *ret, const char **why);
/* True for DATA, INITIAL_DONE, END and BLOB. */
bool stream_packet_is_ordered(uint8_t type);
const char *stream_packet_type_to_string(uint8_t type);
const char *stream_refusal_to_string(uint32_t status);
const char *stream_abort_to_string(uint32_t reason);

/* Fills header fields and the payload CRC for a payload. */
void stream_header_seal(StreamHeader *h, const void *payload, uint32_t length);
