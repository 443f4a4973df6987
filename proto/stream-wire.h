/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Constants of the vfiomigd stream protocol (proto/stream-protocol.md, which is normative).
 * The codec is daemon/stream/wire.c.
 */

#define STREAM_PROTOCOL_MAJOR 2
#define STREAM_PROTOCOL_MINOR 1
/* Minor versions a session can run: a peer's lower minor is spoken, a higher one answered with
 * ours (§1.5). 2.1 adds re-opened initial data (§2.6). */
#define STREAM_MINOR_REINIT 1
/* Rounds of initial data per device (2.1: each REINIT opens one more): bounds what a source makes
 * a destination queue and send. */
#define STREAM_INITIAL_ROUNDS_MAX 8u

#define STREAM_HELLO_MAGIC "VFMHELLO"
#define STREAM_WELCOME_MAGIC "VFMWELCM"
#define STREAM_PACKET_MAGIC "VFPK"
#define STREAM_PROOF_MAGIC "VFMPROOF"

#define STREAM_TOKEN_SIZE 32
#define STREAM_JOB_ID_SIZE 16               /* HMAC-SHA256(token, "vfiomigd job id"), truncated */
#define STREAM_NONCE_SIZE 32
#define STREAM_MAC_SIZE 32                  /* HMAC-SHA256 */
#define STREAM_BINDING_SIZE 32              /* channel binding: TLS exporter, or zeros in cleartext */
#define STREAM_DIGEST_SIZE 32               /* SHA-256 */
#define STREAM_HELLO_FIXED_SIZE 80
#define STREAM_HELLO_DEVICE_SIZE 128
#define STREAM_HELLO_CRC_SIZE 4
#define STREAM_WELCOME_SIZE 96              /* a refusal; an acceptance adds the proof below */
#define STREAM_WELCOME_PROOF_SIZE 64        /* destination nonce, MAC_dst */
#define STREAM_PROOF_SIZE 48
#define STREAM_HEADER_SIZE 40
#define STREAM_DRIVER_NAME_SIZE 64
#define STREAM_REASON_TEXT_SIZE 68

#define STREAM_CHANNELS_MAX 64
#define STREAM_DEVICES_MAX 64
#define STREAM_PAYLOAD_MIN (64u << 10)       /* a destination accepts at least this */
#define STREAM_PAYLOAD_MAX (16u << 20)       /* nobody sends more in one packet */
#define STREAM_BLOB_MAX (1u << 20)
#define STREAM_ABORT_TEXT_MAX 252
#define STREAM_COMPLETE_RECORD_SIZE 48      /* per device: data bytes, DATA packets, digest */
#define STREAM_DIGEST_RECORD_SIZE 24        /* what the per-device digest hashes per ordered packet */
#define STREAM_JOB_DEVICE 0xffffu             /* device index of packets about the whole job */

#define STREAM_HELLO_FLAG_PRECOPY (1u << 0)

enum {
        STREAM_FORMAT_DRIVER = 0,
        STREAM_FORMAT_SIM = 1,
};

enum {
        STREAM_ACCEPTED = 0,
        STREAM_REFUSE_BAD_HELLO = 1,
        STREAM_REFUSE_VERSION = 2,
        STREAM_REFUSE_TOKEN = 3,
        STREAM_REFUSE_CHANNELS = 4,
        STREAM_REFUSE_DEVICES = 5,
        STREAM_REFUSE_INCOMPATIBLE = 6,
        STREAM_REFUSE_BUSY = 7,
        STREAM_REFUSE_LIMIT = 8,
};

enum {
        STREAM_PACKET_DATA = 1,
        STREAM_PACKET_INITIAL_DONE = 2,
        STREAM_PACKET_END = 3,
        STREAM_PACKET_BLOB = 4,
        STREAM_PACKET_SWITCHOVER = 16,
        STREAM_PACKET_INITIAL_LOADED = 17,
        STREAM_PACKET_COMPLETE = 18,
        STREAM_PACKET_ABORT = 19,
};

#define STREAM_DATA_FLAG_PRECOPY (1u << 0)
#define STREAM_DATA_FLAG_INITIAL (1u << 1)

#define STREAM_END_PAYLOAD_SIZE 16

/* The labels of the proofs (§1.4) and of the job identifier, without a terminating NUL. */
#define STREAM_LABEL_JOB_ID "vfiomigd job id"
#define STREAM_LABEL_DST "vfiomigd v2 dst"
#define STREAM_LABEL_SRC "vfiomigd v2 src"

enum {
        STREAM_ABORT_CANCELLED = 1,
        STREAM_ABORT_DEVICE = 2,
        STREAM_ABORT_PROTOCOL = 3,
        STREAM_ABORT_INTERNAL = 4,
        STREAM_ABORT_TIMEOUT = 5,
};
