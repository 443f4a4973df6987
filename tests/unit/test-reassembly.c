/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Reassembly: an honest source is never refused and never deadlocks a bounded destination,
 * whatever the interleaving of its channels; every violation is caught.
 */

#include <criterion/criterion.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "reassembly.h"

#define MAX_PAYLOAD 4096u

typedef struct Sent {
        StreamHeader h;
} Sent;

/* A channel: the ordered packets the source sent on it, in order. */
typedef struct Channel {
        Sent *packets;
        size_t n, head;
} Channel;

static uint64_t rng = 88172645463325252u;
static uint64_t next_random(void) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        return rng;
}

static uint8_t *payload_of(const StreamHeader *h) {
        uint8_t *p = malloc(h->length ? h->length : 1);
        cr_assert_not_null(p);
        memset(p, (int) (h->device_seq & 0xff), h->length);
        return p;
}

/* An honest source: devices × packets, each device's packets in order, each packet sent on a
 * random channel, stream sequence numbers in production order. */
static void produce(Channel *channels, unsigned n_channels, unsigned devices, unsigned per_device) {
        uint64_t stream_seq = 0, *device_seq = calloc(devices, sizeof *device_seq);
        unsigned total = devices * per_device, *left = calloc(devices, sizeof *left);

        for (unsigned d = 0; d < devices; d++)
                left[d] = per_device;
        for (unsigned i = 0; i < n_channels; i++)
                channels[i] = (Channel) { .packets = calloc(total, sizeof(Sent)) };
        for (unsigned k = 0; k < total; k++) {
                unsigned d;
                do
                        d = (unsigned) (next_random() % devices);
                while (left[d] == 0);
                left[d]--;
                bool last = left[d] == 0;
                Channel *c = &channels[next_random() % n_channels];
                c->packets[c->n++] = (Sent) { .h = {
                        .type = last ? STREAM_PACKET_END : STREAM_PACKET_DATA,
                        .device = (uint16_t) d,
                        .stream_seq = stream_seq++,
                        .device_seq = device_seq[d]++,
                        .length = last ? STREAM_END_PAYLOAD_SIZE : (uint32_t) (1 + next_random() % MAX_PAYLOAD),
                } };
        }
        free(device_seq);
        free(left);
}

Test(reassembly, honest_sources_never_deadlock_and_stay_in_budget) {
        uint64_t all = 0, waits = 0;

        for (int round = 0; round < 200; round++) {
                unsigned n_channels = 1 + (unsigned) (next_random() % 8), devices = 1 + (unsigned) (next_random() % 4);
                unsigned per_device = 1 + (unsigned) (next_random() % 200);
                uint64_t budget = 2 * (MAX_PAYLOAD + REASSEMBLY_PACKET_OVERHEAD) + next_random() % (64 * MAX_PAYLOAD);
                Channel channels[8];
                Reassembly *r = NULL;
                uint64_t *expect = calloc(devices, sizeof *expect), peak = 0;
                unsigned delivered = 0, total = devices * per_device;

                produce(channels, n_channels, devices, per_device);
                cr_assert_eq(reassembly_new(devices, n_channels, budget, MAX_PAYLOAD, &r), 0);

                while (delivered < total) {
                        bool progress = false;
                        /* The receiving side: look at a random admissible channel head. */
                        unsigned start = (unsigned) next_random();
                        for (unsigned k = 0; k < n_channels && !progress; k++) {
                                Channel *c = &channels[(start + k) % n_channels];
                                const char *why = NULL;
                                if (c->head == c->n)
                                        continue;
                                int v = reassembly_admit(r, (unsigned) (c - channels), &c->packets[c->head].h, &why);
                                cr_assert_geq(v, 0, "an honest packet refused: %s", why);
                                if (v == REASM_WAIT) {
                                        waits++;
                                        continue;
                                }
                                StreamHeader h = c->packets[c->head++].h;
                                cr_assert_eq(reassembly_add(r, (unsigned) (c - channels), &h, payload_of(&h), &why), 0,
                                             "%s", why);
                                progress = true;
                        }
                        peak = MAX(peak, reassembly_buffered_bytes(r));
                        cr_assert_leq(reassembly_buffered_bytes(r), budget);
                        /* The applying side: a random device drains some of what is ready. */
                        for (unsigned d = 0; d < devices; d++) {
                                ReasmPacket *p;
                                const char *why = NULL;
                                unsigned quota = (unsigned) (next_random() % 3);
                                int k;
                                while (quota-- > 0 && (k = reassembly_next(r, (uint16_t) d, &p, &why)) > 0) {
                                        cr_assert_eq(p->header.device_seq, expect[d]++, "out of order");
                                        if (p->header.type == STREAM_PACKET_DATA)
                                                cr_assert_eq(p->payload[0], (uint8_t) (p->header.device_seq & 0xff));
                                        reassembly_release(r, p);
                                        delivered++;
                                        progress = true;
                                }
                                cr_assert_geq(k, 0, "%s", why);
                        }
                        if (!progress) {
                                /* Nothing admissible and nothing to apply must never happen while
                                 * packets are outstanding: that would be the deadlock. */
                                bool applicable = false;
                                for (unsigned d = 0; d < devices; d++) {
                                        ReasmPacket *p;
                                        if (reassembly_next(r, (uint16_t) d, &p, NULL) > 0) {
                                                cr_assert_eq(p->header.device_seq, expect[d]++);
                                                reassembly_release(r, p);
                                                delivered++;
                                                applicable = true;
                                        }
                                }
                                cr_assert(applicable, "deadlock: round %d, %u/%u delivered, frontier %llu, buffered %llu",
                                          round, delivered, total, (unsigned long long) reassembly_frontier(r),
                                          (unsigned long long) reassembly_buffered_bytes(r));
                        }
                }
                for (unsigned d = 0; d < devices; d++) {
                        cr_assert_eq(expect[d], per_device);
                        cr_assert(reassembly_device_ended(r, (uint16_t) d));
                }
                cr_assert_eq(reassembly_buffered_bytes(r), 0);
                all += total;
                reassembly_free(r);
                for (unsigned i = 0; i < n_channels; i++)
                        free(channels[i].packets);
                free(expect);
        }
        /* The rounds must really have exercised the budget, not just passed through. */
        cr_assert_gt(all, 10000);
        cr_assert_gt(waits, 1000, "the budget never held a channel back (%llu)", (unsigned long long) waits);
        cr_log_info("%llu packets, %llu waits", (unsigned long long) all, (unsigned long long) waits);
}

static StreamHeader data(uint16_t device, uint64_t stream_seq, uint64_t device_seq, uint32_t length) {
        return (StreamHeader) { .type = STREAM_PACKET_DATA, .device = device, .stream_seq = stream_seq,
                                .device_seq = device_seq, .length = length };
}

static int add(Reassembly *r, unsigned channel, StreamHeader h, const char **why) {
        int v = reassembly_admit(r, channel, &h, why);
        if (v <= 0)
                return v == 0 ? -EAGAIN : v;
        return reassembly_add(r, channel, &h, payload_of(&h), why);
}

Test(reassembly, violations) {
        Reassembly *r = NULL;
        const char *why;
        ReasmPacket *p;

        cr_assert_eq(reassembly_new(2, 2, 1 << 20, MAX_PAYLOAD, &r), 0);
        cr_assert_eq(add(r, 0, data(0, 0, 0, 10), &why), 0);
        cr_assert_eq(add(r, 0, data(0, 0, 1, 10), &why), -EBADMSG);
        cr_assert(strstr(why, "does not increase along its channel"), "%s", why);
        cr_assert_eq(add(r, 1, data(0, 0, 1, 10), &why), -EBADMSG);
        cr_assert(strstr(why, "already received"), "%s", why);
        cr_assert_eq(add(r, 1, data(1, 2, 0, 10), &why), 0);
        cr_assert_eq(add(r, 0, data(1, 2, 1, 10), &why), -EBADMSG);
        cr_assert(strstr(why, "repeated"), "%s", why);
        cr_assert_eq(add(r, 0, data(7, 3, 0, 10), &why), -EBADMSG);
        cr_assert(strstr(why, "device index"), "%s", why);

        /* the same device sequence number on two stream sequence numbers shows when applied */
        cr_assert_eq(add(r, 0, data(1, 4, 0, 10), &why), 0);
        cr_assert_eq(reassembly_next(r, 0, &p, &why), 1);
        reassembly_release(r, p);
        cr_assert_eq(reassembly_next(r, 1, &p, &why), -EBADMSG);
        cr_assert(strstr(why, "device sequence number repeated"), "%s", why);

        /* a device's sequence number already applied */
        cr_assert_eq(add(r, 1, data(0, 5, 0, 10), &why), -EBADMSG);
        cr_assert(strstr(why, "already applied"), "%s", why);
        reassembly_free(r);

        /* after END only one BLOB; a DATA after END is caught when it comes up */
        cr_assert_eq(reassembly_new(1, 1, 1 << 20, MAX_PAYLOAD, &r), 0);
        StreamHeader end = { .type = STREAM_PACKET_END, .stream_seq = 0, .device_seq = 0, .length = 16 };
        cr_assert_eq(add(r, 0, end, &why), 0);
        cr_assert_eq(add(r, 0, data(0, 1, 1, 10), &why), 0, "admitted: END not applied yet");
        cr_assert_eq(reassembly_next(r, 0, &p, &why), 1);
        cr_assert_eq(p->header.type, STREAM_PACKET_END);
        reassembly_release(r, p);
        cr_assert_eq(reassembly_next(r, 0, &p, &why), -EBADMSG);
        cr_assert(strstr(why, "after its end"), "%s", why);
        StreamHeader late = data(0, 3, 3, 10);
        cr_assert_eq(reassembly_admit(r, 0, &late, &why), -EBADMSG, "after END is applied, at once");
        reassembly_free(r);

        cr_assert_eq(reassembly_new(1, 1, 2 * MAX_PAYLOAD, MAX_PAYLOAD, &r), -EINVAL, "budget below two packets");
}

Test(reassembly, a_hostile_source_cannot_grow_memory) {
        Reassembly *r = NULL;
        const uint64_t budget = 4 * (MAX_PAYLOAD + REASSEMBLY_PACKET_OVERHEAD);
        const char *why;
        unsigned admitted = 0;

        cr_assert_eq(reassembly_new(2, 2, budget, MAX_PAYLOAD, &r), 0);
        /* Never the frontier packet (stream 0), only packets ahead of it: buffered up to the
         * budget minus the reserve, then the channel must wait; far-ahead ones wait at once. */
        for (uint64_t s = 1; s < 1000; s++) {
                StreamHeader h = data(1, s, s, MAX_PAYLOAD);
                int v = reassembly_admit(r, 1, &h, &why);
                cr_assert_geq(v, 0);
                if (v == REASM_WAIT)
                        break;
                cr_assert_eq(reassembly_add(r, 1, &h, payload_of(&h), &why), 0);
                admitted++;
        }
        cr_assert_leq(reassembly_buffered_bytes(r), budget - (MAX_PAYLOAD + REASSEMBLY_PACKET_OVERHEAD));
        cr_assert_lt(admitted, 4);
        StreamHeader far = data(0, REASSEMBLY_WINDOW + 5, 0, 1);
        cr_assert_eq(reassembly_admit(r, 0, &far, &why), REASM_WAIT, "beyond the window: wait");
        /* The frontier packet still fits: the reserve is there for it. */
        StreamHeader frontier = data(1, 0, 0, MAX_PAYLOAD);
        cr_assert_eq(reassembly_admit(r, 0, &frontier, &why), REASM_ADMIT);
        reassembly_free(r);
}

/* A destination receives payloads concurrently: it admits a header, counts the payload against
 * the budget itself, receives it, then adds it. Meanwhile another channel's frontier packet may
 * be admitted (into the reserve) and added, after which the first packet no longer passes the
 * budget rule, although memory never exceeded the budget: reassembly_add_admitted() keeps the
 * decision made at admission and checks only the sequence rules. */
Test(reassembly, concurrent_receivers_keep_their_admission) {
        const uint64_t c = MAX_PAYLOAD + REASSEMBLY_PACKET_OVERHEAD;
        Reassembly *r = NULL;
        const char *why;
        StreamHeader x = data(0, 2, 1, MAX_PAYLOAD), f = data(1, 0, 0, MAX_PAYLOAD), dup = data(1, 2, 1, 10);
        ReasmPacket *p;

        cr_assert_eq(reassembly_new(2, 2, 2 * c, MAX_PAYLOAD, &r), 0);
        /* the caller's view: x (not the frontier) fits outside the reserve, with nothing held */
        cr_assert_eq(reassembly_admit(r, 0, &x, &why), REASM_ADMIT);
        /* with x held by the caller, the frontier packet still fits the whole budget */
        cr_assert_eq(reassembly_admit(r, 1, &f, &why), REASM_ADMIT);
        cr_assert_eq(reassembly_add(r, 1, &f, payload_of(&f), &why), 0);
        /* x would no longer be admitted now... */
        cr_assert_eq(reassembly_admit(r, 0, &x, &why), REASM_WAIT);
        /* ...but it was, and is taken */
        cr_assert_eq(reassembly_add_admitted(r, 0, &x, payload_of(&x), &why), 0, "%s", why);
        cr_assert_eq(reassembly_buffered_bytes(r), 2 * c);
        /* sequence rules still hold */
        cr_assert_eq(reassembly_add_admitted(r, 1, &dup, payload_of(&dup), &why), -EBADMSG);
        cr_assert(strstr(why, "repeated") || strstr(why, "does not increase"), "%s", why);
        cr_assert_eq(reassembly_next(r, 1, &p, &why), 1);
        reassembly_release(r, p);
        reassembly_free(r);
}
