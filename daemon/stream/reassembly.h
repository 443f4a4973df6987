/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The destination's reassembly of ordered packets (proto/stream-protocol.md §2.1–2.4): packets
 * of one device arrive on any channel and are handed out strictly in device sequence order,
 * within a budget of bytes, with the flow-control rule that keeps a bounded destination from
 * deadlocking: only the frontier packet (the smallest stream sequence number not yet received)
 * may take the last maximum-payload's worth of the budget.
 *
 * The caller reads a packet header, asks reassembly_admit() whether to receive the payload now
 * or leave the channel unread, receives it (checking its CRC), hands it over with
 * reassembly_add(), and takes packets out with reassembly_next() per device, releasing each once
 * applied. Not thread-safe: the caller serializes access.
 */

#include <stdbool.h>
#include <stdint.h>

#include "wire.h"

/* What a buffered packet costs beyond its payload: it bounds the number of tiny packets. */
#define REASSEMBLY_PACKET_OVERHEAD 256u
/* How far ahead of the frontier (in stream sequence numbers) a packet may be received. */
#define REASSEMBLY_WINDOW 65536u

typedef struct ReasmPacket {
        StreamHeader header;
        uint8_t *payload; /* owned; NULL for an empty payload */
} ReasmPacket;

typedef struct Reassembly Reassembly;

/* budget must hold at least two maximum packets. */
int reassembly_new(uint32_t device_count, uint32_t channel_count, uint64_t budget, uint32_t max_payload,
                   Reassembly **ret);
Reassembly *reassembly_free(Reassembly *r);

typedef enum ReasmVerdict {
        REASM_WAIT = 0,   /* leave the channel unread for now; ask again after progress */
        REASM_ADMIT = 1,  /* receive the payload now */
} ReasmVerdict;

/* For an ordered packet whose header was read from channel: admit, wait, or a violation
 * (-EBADMSG with *why). */
int reassembly_admit(Reassembly *r, uint32_t channel, const StreamHeader *h, const char **why);
/* Takes payload (h->length bytes, malloc'd, CRC checked by the caller) into the buffer. Call only
 * after REASM_ADMIT for this header. */
int reassembly_add(Reassembly *r, uint32_t channel, const StreamHeader *h, uint8_t *payload, const char **why);
/* Like reassembly_add(), for a caller that receives payloads concurrently: it admitted the header
 * earlier (REASM_ADMIT), counted the payload against the budget itself from then on, and other
 * packets may have been added since. Only the sequence rules are checked again (a duplicate may
 * have arrived meanwhile on another channel); the budget decision made at admission stands, as
 * the frontier may have moved past other admitted packets in between. */
int reassembly_add_admitted(Reassembly *r, uint32_t channel, const StreamHeader *h, uint8_t *payload,
                            const char **why);
/* The device's next packet in device order: 1 with *ret, 0 when it has not arrived, -EBADMSG on
 * a violation only visible now (a repeated device sequence number, packets after END). */
int reassembly_next(Reassembly *r, uint16_t device, ReasmPacket **ret, const char **why);
/* Frees an applied packet and its budget. */
void reassembly_release(Reassembly *r, ReasmPacket *p);

uint64_t reassembly_buffered_bytes(const Reassembly *r);
uint64_t reassembly_frontier(const Reassembly *r);
/* The device's applied END, if any. */
bool reassembly_device_ended(const Reassembly *r, uint16_t device);
