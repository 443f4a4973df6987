/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "reassembly.h"

typedef struct Heap {
        ReasmPacket **items; /* min-heap by device sequence number */
        size_t n, allocated;
} Heap;

typedef struct ReasmDevice {
        uint64_t next_seq;       /* device sequence number to hand out next */
        Heap pending;
        bool ended;              /* END was handed out */
        bool blob_done;          /* BLOB was handed out after END */
} ReasmDevice;

typedef struct ReasmChannel {
        bool any;
        uint64_t last;           /* stream sequence number of the last packet added from it */
} ReasmChannel;

struct Reassembly {
        uint32_t device_count;
        uint32_t channel_count;
        uint64_t budget;
        uint64_t reserve;        /* what only the frontier may use */
        uint64_t buffered;
        uint64_t frontier;
        uint8_t received[REASSEMBLY_WINDOW / 8]; /* stream seqs in [frontier, frontier + window) */
        ReasmChannel *channels;
        ReasmDevice *devices;
};

static uint64_t cost(uint32_t length) {
        return (uint64_t) length + REASSEMBLY_PACKET_OVERHEAD;
}

static int violation(const char **why, const char *reason) {
        if (why)
                *why = reason;
        return -EBADMSG;
}

int reassembly_new(uint32_t device_count, uint32_t channel_count, uint64_t budget, uint32_t max_payload,
                   Reassembly **ret) {
        Reassembly *r;

        if (device_count < 1 || device_count > STREAM_DEVICES_MAX || channel_count < 1 ||
            channel_count > STREAM_CHANNELS_MAX || max_payload > STREAM_PAYLOAD_MAX ||
            budget < 2 * cost(max_payload))
                return -EINVAL;
        r = new0(Reassembly, 1);
        if (!r)
                return -ENOMEM;
        r->device_count = device_count;
        r->channel_count = channel_count;
        r->budget = budget;
        r->reserve = cost(max_payload);
        r->channels = new0(ReasmChannel, channel_count);
        r->devices = new0(ReasmDevice, device_count);
        if (!r->channels || !r->devices) {
                reassembly_free(r);
                return -ENOMEM;
        }
        *ret = r;
        return 0;
}

static void packet_free(ReasmPacket *p) {
        if (!p)
                return;
        free(p->payload);
        free(p);
}

Reassembly *reassembly_free(Reassembly *r) {
        if (!r)
                return NULL;
        for (uint32_t i = 0; r->devices && i < r->device_count; i++) {
                for (size_t k = 0; k < r->devices[i].pending.n; k++)
                        packet_free(r->devices[i].pending.items[k]);
                free(r->devices[i].pending.items);
        }
        free(r->devices);
        free(r->channels);
        free(r);
        return NULL;
}

static bool received_bit(const Reassembly *r, uint64_t seq) {
        uint64_t i = seq % REASSEMBLY_WINDOW;
        return r->received[i / 8] & (1u << (i % 8));
}

static void set_received_bit(Reassembly *r, uint64_t seq, bool on) {
        uint64_t i = seq % REASSEMBLY_WINDOW;
        if (on)
                r->received[i / 8] |= (uint8_t) (1u << (i % 8));
        else
                r->received[i / 8] &= (uint8_t) ~(1u << (i % 8));
}

/* The rules that make a packet a violation, whatever the budget. */
static int check_sequence(const Reassembly *r, uint32_t channel, const StreamHeader *h, const char **why) {
        const ReasmDevice *d;

        if (channel >= r->channel_count)
                return violation(why, "channel index out of range");
        if (!stream_packet_is_ordered(h->type))
                return violation(why, "not an ordered packet");
        if (h->device >= r->device_count)
                return violation(why, "device index out of range");
        d = &r->devices[h->device];

        if (r->channels[channel].any && h->stream_seq <= r->channels[channel].last)
                return violation(why, "stream sequence number does not increase along its channel");
        if (h->stream_seq < r->frontier)
                return violation(why, "stream sequence number already received");
        if (h->device_seq < d->next_seq)
                return violation(why, "device sequence number already applied");
        if (d->ended && (h->type != STREAM_PACKET_BLOB || d->blob_done))
                return violation(why, "a packet for a device after its end");
        return 0;
}

int reassembly_admit(Reassembly *r, uint32_t channel, const StreamHeader *h, const char **why) {
        uint64_t need;
        int k;

        k = check_sequence(r, channel, h, why);
        if (k < 0)
                return k;

        /* Back-pressure, not violations: too far ahead, or no room outside the reserve. */
        if (h->stream_seq - r->frontier >= REASSEMBLY_WINDOW)
                return REASM_WAIT;
        if (received_bit(r, h->stream_seq))
                return violation(why, "stream sequence number repeated");
        need = cost(h->length);
        if (h->stream_seq == r->frontier)
                return r->buffered + need <= r->budget ? REASM_ADMIT : REASM_WAIT;
        return r->buffered + need + r->reserve <= r->budget ? REASM_ADMIT : REASM_WAIT;
}

static int heap_push(Heap *h, ReasmPacket *p) {
        size_t i;

        if (h->n == h->allocated) {
                size_t n = h->allocated ? h->allocated * 2 : 16;
                ReasmPacket **items = reallocarray(h->items, n, sizeof *items);
                if (!items)
                        return -ENOMEM;
                h->items = items;
                h->allocated = n;
        }
        i = h->n++;
        while (i > 0) {
                size_t parent = (i - 1) / 2;
                if (h->items[parent]->header.device_seq <= p->header.device_seq)
                        break;
                h->items[i] = h->items[parent];
                i = parent;
        }
        h->items[i] = p;
        return 0;
}

static ReasmPacket *heap_pop(Heap *h) {
        ReasmPacket *top, *last;
        size_t i = 0;

        if (h->n == 0)
                return NULL;
        top = h->items[0];
        last = h->items[--h->n];
        while (2 * i + 1 < h->n) {
                size_t child = 2 * i + 1;
                if (child + 1 < h->n && h->items[child + 1]->header.device_seq < h->items[child]->header.device_seq)
                        child++;
                if (last->header.device_seq <= h->items[child]->header.device_seq)
                        break;
                h->items[i] = h->items[child];
                i = child;
        }
        if (h->n > 0)
                h->items[i] = last;
        return top;
}

static int add(Reassembly *r, uint32_t channel, const StreamHeader *h, uint8_t *payload, bool admitted,
               const char **why) {
        ReasmPacket *p;
        int k;

        if (admitted) {
                /* within the window at admission, and the frontier only moves up */
                k = check_sequence(r, channel, h, why);
                if (k >= 0 && (h->stream_seq - r->frontier >= REASSEMBLY_WINDOW || received_bit(r, h->stream_seq)))
                        k = violation(why, "stream sequence number repeated");
                if (k < 0) {
                        free(payload);
                        return k;
                }
        } else {
                k = reassembly_admit(r, channel, h, why);
                if (k != REASM_ADMIT) {
                        free(payload);
                        return k < 0 ? k : violation(why, "a packet added without being admitted");
                }
        }
        p = new0(ReasmPacket, 1);
        if (!p) {
                free(payload);
                return -ENOMEM;
        }
        p->header = *h;
        p->payload = payload;
        k = heap_push(&r->devices[h->device].pending, p);
        if (k < 0) {
                packet_free(p);
                return k;
        }
        r->channels[channel].any = true;
        r->channels[channel].last = h->stream_seq;
        r->buffered += cost(h->length);
        set_received_bit(r, h->stream_seq, true);
        while (received_bit(r, r->frontier)) {
                set_received_bit(r, r->frontier, false);
                r->frontier++;
        }
        return 0;
}

int reassembly_add(Reassembly *r, uint32_t channel, const StreamHeader *h, uint8_t *payload, const char **why) {
        return add(r, channel, h, payload, false, why);
}

int reassembly_add_admitted(Reassembly *r, uint32_t channel, const StreamHeader *h, uint8_t *payload,
                            const char **why) {
        return add(r, channel, h, payload, true, why);
}

int reassembly_next(Reassembly *r, uint16_t device, ReasmPacket **ret, const char **why) {
        ReasmDevice *d;
        ReasmPacket *p;

        if (device >= r->device_count)
                return -EINVAL;
        d = &r->devices[device];
        if (d->pending.n == 0 || d->pending.items[0]->header.device_seq != d->next_seq)
                return 0;
        p = heap_pop(&d->pending);
        /* the same device sequence number twice (with different stream sequence numbers) */
        if (d->pending.n > 0 && d->pending.items[0]->header.device_seq == p->header.device_seq) {
                reassembly_release(r, p);
                return violation(why, "device sequence number repeated");
        }
        if (d->ended && (p->header.type != STREAM_PACKET_BLOB || d->blob_done)) {
                reassembly_release(r, p);
                return violation(why, "a packet for a device after its end");
        }
        if (p->header.type == STREAM_PACKET_END)
                d->ended = true;
        else if (p->header.type == STREAM_PACKET_BLOB) {
                if (!d->ended) {
                        reassembly_release(r, p);
                        return violation(why, "a BLOB before its device's END");
                }
                d->blob_done = true;
        }
        d->next_seq++;
        *ret = p;
        return 1;
}

void reassembly_release(Reassembly *r, ReasmPacket *p) {
        if (!p)
                return;
        r->buffered -= cost(p->header.length);
        packet_free(p);
}

uint64_t reassembly_buffered_bytes(const Reassembly *r) {
        return r->buffered;
}

uint64_t reassembly_frontier(const Reassembly *r) {
        return r->frontier;
}

bool reassembly_device_ended(const Reassembly *r, uint16_t device) {
        return device < r->device_count && r->devices[device].ended;
}
