/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * The receiving side. Channels arrive one by one from the listener (stream_in_adopt()). Threads:
 *   ring       io_uring threads, each owning channels c ≡ ring (mod rings): per channel a 40-byte
 *              header receive, then — for an ordered packet the reassembly admits — the payload
 *              straight into its own buffer (MSG_WAITALL); a packet that must wait leaves its
 *              channel unread ("parked") until writers free budget or the frontier moves;
 *     or, without io_uring, one blocking receiver thread per channel (also with TLS in user space:
 *     GnuTLS opens the records on the channel's own thread);
 *   writer     one per device: takes the device's packets in device order and writes its
 *              RESUMING data fd; answers INITIAL_DONE with INITIAL_LOADED; checks END;
 *   supervisor the stall timer, and the teardown (best-effort ABORT, then shutdown(2) of every
 *              socket) on failure, abort or free.
 * One mutex (in->lock) covers the reassembly and the states below; channel 0's sends have their
 * own (send_lock), since writers, the main thread and the supervisor all send there.
 *
 * Memory: payload buffers are allocated only once admitted, and admission counts payloads still
 * being received ("in flight") against the budget as if already buffered. Applied buffers of the
 * usual size are kept for reuse (fresh pages cost more than the copy into them) as long as what
 * is held and what is kept together stay within the budget. So a peer can make us hold the
 * budget plus per-channel constants, and never more.
 */

#include <assert.h>
#include <endian.h>
#include <stdarg.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "crc32c.h"
#include "log.h"
#include "reassembly.h"
#include "stream-auth.h"
#include "stream-internal.h"
#include "stream-testing.h"


typedef enum RxState {
        RX_NEW,        /* adopted, nothing received yet */
        RX_HDR,
        RX_PAYLOAD,
        RX_CTL,
        RX_PARKED,
        RX_DONE,
} RxState;

typedef struct InRing InRing;

typedef struct InChannel {
        StreamIn *in;
        unsigned index;
        int fd;
        StreamTlsSession *tls;           /* NULL: cleartext; fixed once adopted */
        InRing *ring;
        /* under in->lock */
        bool adopted;
        bool parked;
        uint8_t binding[STREAM_BINDING_SIZE];  /* stream_channel_binding() of the connection */
        /* the receiving thread's own (h also read under the lock while parked) */
        RxState state;
        bool posted;
        uint8_t hdr[STREAM_HEADER_SIZE];
        size_t got;
        StreamHeader h;
        uint8_t *payload;
        uint64_t reserved;               /* the admitted payload's cost, in in->inflight */
        uint8_t ctl[STREAM_CONTROL_PAYLOAD_MAX];
        pthread_t thread;
        bool thread_started;
} InChannel;

typedef struct InDevice {
        StreamIn *in;
        unsigned index;
        VfioDev *dev;
        int fd;
        pthread_cond_t cond;
        pthread_t thread;
        bool thread_started;
        /* under in->lock */
        bool waiting;                    /* looked and found nothing to apply; nothing added since */
        bool done;                       /* END applied and matched */
        /* the writer's own */
        bool initial_done;
        bool ended;                      /* END applied and matched; DEVICE_DONE follows its BLOB */
        uint64_t bytes, packets;
        StreamDigest digest;             /* over the ordered packets applied, for COMPLETE */
} InDevice;

struct InRing {
        StreamIn *in;
        unsigned index;
        struct io_uring ring;
        bool ring_ok;
        int wake_fd;
        uint64_t wake_buf;
        bool wake_pending;               /* under in->lock */
        unsigned parked;                 /* under in->lock */
        unsigned outstanding;
        pthread_t thread;
        bool thread_started;
};

struct StreamIn {
        StreamInConfig cfg;
        EventQueue events;
        uint8_t job_id[STREAM_JOB_ID_SIZE];
        uint64_t budget;
        uint32_t max_payload;
        uint64_t stall_usec;
        uint64_t reserve;
        bool use_uring;
        StreamTransport transport;       /* the first channel's; every other must match */
        StreamListener *listener;        /* the main thread's */

        pthread_mutex_t lock;
        pthread_mutex_t send_lock;
        pthread_cond_t progress_cond, sup_cond;
        unsigned n_channels;             /* 0 until the first HELLO is accepted */
        unsigned n_adopted;
        uint32_t hello_flags;
        uint32_t peer_max_payload;       /* what the source takes in one packet */
        bool connected;
        bool teardown, dead, torn_down, exiting;
        bool completed, peer_aborted, switchover;
        uint32_t abort_reason;
        char abort_text[STREAM_ABORT_TEXT_MAX + 1];
        unsigned devices_done;
        uint64_t last_progress_usec;
        bool deferred;                   /* a channel broke: reported unless an ABORT explains it */
        int deferred_error;
        uint64_t deferred_deadline;
        char deferred_text[256];
        unsigned sock_threads;           /* receiving threads still running */
        Reassembly *reasm;
        uint64_t inflight;
        unsigned parked;
        unsigned n_rings;
        InRing *rings;
        void *cache;                     /* recycled payload buffers of cache_size bytes, linked */
        uint64_t cache_bytes;
        uint32_t cache_size;

        InChannel channels[STREAM_CHANNELS_MAX];
        InDevice devices[STREAM_DEVICES_MAX];
        pthread_t sup_thread;
        bool sup_started;

        StreamCounters counters;
};

enum {
        OP_WAKE = 1,
        OP_RECV,
        OP_CANCEL,
};

/* ---- failure and teardown ---- */

static void wake_everyone_locked(StreamIn *in) {
        uint64_t one = 1;

        pthread_cond_broadcast(&in->progress_cond);
        pthread_cond_broadcast(&in->sup_cond);
        for (unsigned d = 0; d < in->cfg.device_count; d++)
                pthread_cond_broadcast(&in->devices[d].cond);
        for (unsigned k = 0; in->rings && k < in->n_rings; k++)
                if (in->rings[k].wake_fd >= 0)
                        (void) !write(in->rings[k].wake_fd, &one, sizeof one);
}

static void request_teardown_locked(StreamIn *in, uint32_t abort_reason, const char *text) {
        if (in->teardown)
                return;
        in->teardown = true;
        in->abort_reason = abort_reason;
        if (text)
                (void) snprintf(in->abort_text, sizeof in->abort_text, "%.*s", STREAM_ABORT_TEXT_MAX, text);
        wake_everyone_locked(in);
}

static void in_fail_event_locked(StreamIn *in, int device, int error, uint32_t abort_reason, const char *text) {
        StreamEvent e = {
                .type = STREAM_EVENT_FAILED,
                .device = device,
                .error = error < 0 ? error : -EIO,
        };

        if (in->teardown)
                return;
        (void) snprintf(e.text, sizeof e.text, "%s", text);
        log_warning("stream in: %s", e.text);
        event_queue_push(&in->events, &e);
        request_teardown_locked(in, abort_reason, e.text);
}

_printf_(4, 5) static void in_fail_locked(StreamIn *in, int error, uint32_t abort_reason, const char *format, ...) {
        char text[sizeof ((StreamEvent *) NULL)->text];
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(text, sizeof text, format, ap);
        va_end(ap);
        in_fail_event_locked(in, -1, error, abort_reason, text);
}

/* A protocol violation by the source in a packet that arrived on ch. */
static void violation_locked(StreamIn *in, const InChannel *ch, const StreamHeader *h, const char *why) {
        if (h && stream_packet_is_ordered(h->type))
                in_fail_locked(in, -EBADMSG, STREAM_ABORT_PROTOCOL,
                               "peer violation on channel %u: %s (%s, stream sequence number %llu, device %u, device sequence number %llu)",
                               ch->index, why, stream_packet_type_to_string(h->type), (unsigned long long) h->stream_seq,
                               h->device, (unsigned long long) h->device_seq);
        else if (h)
                in_fail_locked(in, -EBADMSG, STREAM_ABORT_PROTOCOL, "peer violation on channel %u: %s (%s)", ch->index, why,
                               stream_packet_type_to_string(h->type));
        else
                in_fail_locked(in, -EBADMSG, STREAM_ABORT_PROTOCOL, "peer violation on channel %u: %s", ch->index, why);
}

static void violation(StreamIn *in, const InChannel *ch, const StreamHeader *h, const char *why) {
        pthread_mutex_lock(&in->lock);
        violation_locked(in, ch, h, why);
        pthread_mutex_unlock(&in->lock);
}

/* A channel ended. Channel 0 is where an ABORT would have come, in order, before its end; the
 * source may close other channels a moment before we read that ABORT: wait for it a little. */
static void channel_closed(StreamIn *in, InChannel *ch, int error) {
        char text[256];
        int e = error == 0 || error == -ECONNRESET ? -ECONNRESET : error;

        if (e == -ECONNRESET)
                (void) snprintf(text, sizeof text, "the source closed channel %u before the migration completed", ch->index);
        else if (e == -EACCES && ch->tls)
                (void) snprintf(text, sizeof text, "the source ended channel %u: %s", ch->index, stream_tls_error(ch->tls));
        else if (e == -EBADMSG && ch->tls)
                (void) snprintf(text, sizeof text, "a TLS record on channel %u does not authenticate (altered on the way?)",
                                ch->index);
        else
                (void) snprintf(text, sizeof text, "receiving on channel %u failed: %s", ch->index, strerror(-error));
        pthread_mutex_lock(&in->lock);
        if (!in->completed && !in->peer_aborted && !in->dead && !in->teardown) {
                if (in->deferred)
                        in_fail_locked(in, in->deferred_error, 0, "%s", in->deferred_text);
                else if (ch->index == 0)
                        in_fail_locked(in, e, 0, "%s", text);
                else {
                        in->deferred = true;
                        in->deferred_error = e;
                        in->deferred_deadline = stream_now_usec() + STREAM_PEER_ABORT_WAIT_USEC;
                        memcpy(in->deferred_text, text, sizeof text);
                        pthread_cond_broadcast(&in->sup_cond);
                }
        }
        pthread_mutex_unlock(&in->lock);
}

static void sock_thread_exit(StreamIn *in) {
        pthread_mutex_lock(&in->lock);
        in->sock_threads--;
        pthread_cond_broadcast(&in->sup_cond);
        pthread_mutex_unlock(&in->lock);
}

/* ---- buffers ---- */

static uint64_t held_locked(StreamIn *in) {
        return reassembly_buffered_bytes(in->reasm) + in->inflight;
}

static uint8_t *buffer_get_locked(StreamIn *in, uint32_t length) {
        void *buf = in->cache;

        if (length == 0 || length != in->cache_size || !buf)
                return NULL;
        memcpy(&in->cache, buf, sizeof(void *));
        in->cache_bytes -= in->cache_size;
        return buf;
}

static void cache_trim_locked(StreamIn *in) {
        while (in->cache && held_locked(in) + in->cache_bytes > in->budget) {
                void *buf = in->cache;
                memcpy(&in->cache, buf, sizeof(void *));
                in->cache_bytes -= in->cache_size;
                free(buf);
        }
}

static void buffer_put_locked(StreamIn *in, uint8_t *buf, uint32_t length) {
        if (!buf)
                return;
        if (in->cache_size == 0 && length >= STREAM_PAYLOAD_MIN)
                in->cache_size = length; /* the source's chunk size, most likely */
        if (length == in->cache_size && held_locked(in) + in->cache_bytes + length <= in->budget) {
                memcpy(buf, &in->cache, sizeof(void *));
                in->cache = buf;
                in->cache_bytes += length;
                return;
        }
        free(buf);
}

/* ---- admission ---- */

static void update_peak_locked(StreamIn *in) {
        uint64_t held = reassembly_buffered_bytes(in->reasm) + in->inflight;
        if (held > atomic_load(&in->counters.peak))
                atomic_store(&in->counters.peak, held);
}

/* The reassembly's verdict, made stricter by what is still being received: payloads in flight
 * count as buffered. 1: admitted, 0: wait, < 0: a violation (*why). */
static int admission_locked(StreamIn *in, const InChannel *ch, const char **why) {
        uint64_t cost, held;
        int k;

        k = reassembly_admit(in->reasm, ch->index, &ch->h, why);
        if (k < 0)
                return k;
        if (k != REASM_ADMIT)
                return 0;
        cost = (uint64_t) ch->h.length + REASSEMBLY_PACKET_OVERHEAD;
        held = reassembly_buffered_bytes(in->reasm) + in->inflight;
        if (held + cost + (ch->h.stream_seq == reassembly_frontier(in->reasm) ? 0 : in->reserve) > in->budget)
                return 0;
        /* Not a rule of the protocol, a choice: when the packet's device writer is busy anyway
         * (the device, not the network, is the bottleneck), buffering far ahead of it gains
         * nothing and costs memory (fresh pages, colder caches); leave the data in the socket
         * and let TCP slow the source. Reordering for a writer that waits still gets the whole
         * budget, and a writer that runs dry wakes the parked channels, so nothing stalls. */
        if (!in->devices[ch->h.device].waiting &&
            held + cost > (4 * (uint64_t) in->n_channels + 4) * MAX((uint64_t) ch->h.length, (uint64_t) STREAM_PAYLOAD_MIN))
                return 0;
        return 1;
}

static void check_deadlock_locked(StreamIn *in);

/* Tries to admit the packet whose header ch holds. 1: admitted (ch->payload may still need
 * allocating), 0: parked, < 0: violation reported. */
static int admit_locked(StreamIn *in, InChannel *ch) {
        const char *why = NULL;
        int k;

        k = admission_locked(in, ch, &why);
        if (k < 0) {
                violation_locked(in, ch, &ch->h, why);
                return k;
        }
        if (k == 0) {
                if (!ch->parked) {
                        ch->parked = true;
                        in->parked++;
                        if (ch->ring)
                                ch->ring->parked++;
                        check_deadlock_locked(in);
                }
                return 0;
        }
        if (ch->parked) {
                ch->parked = false;
                in->parked--;
                if (ch->ring)
                        ch->ring->parked--;
        }
        ch->reserved = (uint64_t) ch->h.length + REASSEMBLY_PACKET_OVERHEAD;
        in->inflight += ch->reserved;
        update_peak_locked(in);
        ch->payload = buffer_get_locked(in, ch->h.length);
        cache_trim_locked(in);
        return 1;
}

static void wake_parked_locked(StreamIn *in) {
        if (in->parked == 0)
                return;
        if (in->use_uring) {
                uint64_t one = 1;
                for (unsigned k = 0; k < in->n_rings; k++) {
                        InRing *rg = &in->rings[k];
                        if (rg->parked > 0 && !rg->wake_pending) {
                                rg->wake_pending = true;
                                (void) !write(rg->wake_fd, &one, sizeof one);
                        }
                }
        } else
                pthread_cond_broadcast(&in->progress_cond);
}

/* Every channel waits with a header, every writer has nothing to apply, and no waiting packet
 * could be admitted: nothing can ever move again. An honest source cannot get here (its
 * frontier packet is always at the head of a channel and, once received, applicable), so
 * this is a violation, named as precisely as we can. */
static void check_deadlock_locked(StreamIn *in) {
        uint64_t frontier;
        bool frontier_waits = false;

        if (!in->reasm || in->teardown || in->n_adopted < in->n_channels || in->parked < in->n_channels)
                return;
        for (unsigned d = 0; d < in->cfg.device_count; d++)
                if (!in->devices[d].waiting)
                        return;
        frontier = reassembly_frontier(in->reasm);
        for (unsigned c = 0; c < in->n_channels; c++) {
                const char *why = NULL;
                int k = admission_locked(in, &in->channels[c], &why);
                if (k != 0)
                        return; /* admissible now (its ring will see it), or a violation found when it tries */
                if (in->channels[c].h.stream_seq == frontier)
                        frontier_waits = true;
        }
        if (frontier_waits)
                in_fail_locked(in, -EBADMSG, STREAM_ABORT_PROTOCOL,
                               "peer violation: the budget (%llu bytes) is held by packets that can never be applied (a device sequence number is missing); stream sequence number %llu waits",
                               (unsigned long long) in->budget, (unsigned long long) frontier);
        else
                in_fail_locked(in, -EBADMSG, STREAM_ABORT_PROTOCOL,
                               "peer violation: no channel carries stream sequence number %llu (every channel waits with a later one)",
                               (unsigned long long) frontier);
}

/* ---- packets ---- */

/* A header arrived on ch. Returns the next state: RX_HDR, RX_PAYLOAD (ordered, admitted),
 * RX_CTL (a control payload follows), RX_PARKED, or RX_DONE. */
static RxState on_header(StreamIn *in, InChannel *ch) {
        const char *why = NULL;
        int k;

        k = stream_header_decode(ch->hdr, in->max_payload, in->cfg.device_count, &ch->h, &why);
        if (k < 0) {
                violation(in, ch, NULL, why);
                return RX_DONE;
        }
        if (!stream_packet_is_ordered(ch->h.type)) {
                if (ch->index != 0 && (ch->h.type == STREAM_PACKET_SWITCHOVER || ch->h.type == STREAM_PACKET_ABORT)) {
                        violation(in, ch, &ch->h, "a control packet on a channel other than 0");
                        return RX_DONE;
                }
                switch (ch->h.type) {
                case STREAM_PACKET_SWITCHOVER:
                        pthread_mutex_lock(&in->lock);
                        if (!in->switchover && !in->teardown) {
                                in->switchover = true;
                                event_queue_pushf(&in->events, STREAM_EVENT_SWITCHOVER, -1, 0, 0, NULL);
                        }
                        pthread_mutex_unlock(&in->lock);
                        return RX_HDR;
                case STREAM_PACKET_ABORT:
                        return RX_CTL;
                default:
                        violation(in, ch, &ch->h, "a packet that only a destination sends");
                        return RX_DONE;
                }
        }

        pthread_mutex_lock(&in->lock);
        if (in->teardown)
                k = -ESHUTDOWN;
        else
                k = admit_locked(in, ch);
        pthread_mutex_unlock(&in->lock);
        if (k < 0)
                return RX_DONE;
        return k == 0 ? RX_PARKED : RX_PAYLOAD;
}

/* Makes sure the admitted payload has a buffer. false on failure (reported). */
static bool payload_alloc(StreamIn *in, InChannel *ch) {
        if (ch->payload || ch->h.length == 0)
                return true;
        ch->payload = malloc(ch->h.length);
        if (ch->payload)
                return true;
        pthread_mutex_lock(&in->lock);
        in_fail_locked(in, -ENOMEM, STREAM_ABORT_INTERNAL, "out of memory for a %u-byte packet", ch->h.length);
        pthread_mutex_unlock(&in->lock);
        return false;
}

/* The admitted payload arrived completely. Returns RX_HDR or RX_DONE. */
static RxState on_payload(StreamIn *in, InChannel *ch) {
        const char *why = NULL;
        InDevice *d;
        int k;

        if (crc32c(ch->payload, ch->h.length) != ch->h.payload_crc) {
                pthread_mutex_lock(&in->lock);
                in->inflight -= ch->reserved;
                ch->reserved = 0;
                ch->payload = mfree(ch->payload);
                violation_locked(in, ch, &ch->h, "payload CRC mismatch");
                pthread_mutex_unlock(&in->lock);
                return RX_DONE;
        }
        pthread_mutex_lock(&in->lock);
        in->inflight -= ch->reserved;
        ch->reserved = 0;
        if (in->teardown) {
                ch->payload = mfree(ch->payload);
                pthread_mutex_unlock(&in->lock);
                return RX_DONE;
        }
        k = reassembly_add_admitted(in->reasm, ch->index, &ch->h, TAKE_PTR(ch->payload), &why);
        if (k < 0) {
                if (k == -ENOMEM)
                        in_fail_locked(in, k, STREAM_ABORT_INTERNAL, "out of memory");
                else
                        violation_locked(in, ch, &ch->h, why);
                pthread_mutex_unlock(&in->lock);
                return RX_DONE;
        }
        update_peak_locked(in);
        d = &in->devices[ch->h.device];
        d->waiting = false;
        pthread_cond_signal(&d->cond);
        wake_parked_locked(in); /* the frontier may have moved */
        pthread_mutex_unlock(&in->lock);
        return RX_HDR;
}

static RxState on_control_payload(StreamIn *in, InChannel *ch) {
        uint32_t reason;
        char text[STREAM_ABORT_TEXT_MAX + 1];
        size_t n = ch->h.length - 4;

        /* only ABORT has a payload among the control packets a source sends */
        memcpy(&reason, ch->ctl, 4);
        reason = le32toh(reason);
        memcpy(text, ch->ctl + 4, n);
        text[n] = '\0';
        for (size_t k = 0; k < n && text[k]; k++)
                if ((unsigned char) text[k] < 0x20 || text[k] == 0x7f)
                        text[k] = '?';
        pthread_mutex_lock(&in->lock);
        if (!in->teardown) {
                in->peer_aborted = true;
                log_info("stream in: the source aborted (%s): %s", stream_abort_to_string(reason), text);
                event_queue_pushf(&in->events, STREAM_EVENT_PEER_ABORT, -1, 0, reason, "%s", text);
                request_teardown_locked(in, 0, NULL);
        }
        pthread_mutex_unlock(&in->lock);
        return RX_DONE;
}

/* ---- channel 0's sends ---- */

static int send_control(StreamIn *in, uint8_t type, uint16_t device, const void *payload, uint32_t length,
                        uint64_t timeout_usec) {
        uint8_t buf[STREAM_HEADER_SIZE + STREAM_DST_PAYLOAD_MAX];
        StreamTlsSession *tls;
        int fd, r;

        assert(length <= STREAM_DST_PAYLOAD_MAX);
        if (length > 0)
                memcpy(buf + STREAM_HEADER_SIZE, payload, length);
        stream_encode_packet(buf, type, 0, device, 0, 0, buf + STREAM_HEADER_SIZE, length);

        /* send_lock before the state lock: the supervisor closes channel 0 holding send_lock */
        pthread_mutex_lock(&in->send_lock);
        pthread_mutex_lock(&in->lock);
        fd = in->channels[0].adopted && !in->dead ? in->channels[0].fd : -EBADF;
        tls = in->channels[0].tls;
        pthread_mutex_unlock(&in->lock);
        if (fd < 0)
                r = -ENOTCONN;
        else
                r = stream_chan_send_all(fd, tls, buf, STREAM_HEADER_SIZE + length, stream_now_usec() + timeout_usec, -1);
        pthread_mutex_unlock(&in->send_lock);
        return r;
}

/* ---- writers ---- */

static int apply_data(StreamIn *in, InDevice *d, const ReasmPacket *p) {
        const uint8_t *buf = p->payload;
        uint32_t n = p->header.length, off = 0;

        while (off < n) {
                ssize_t k = vfio_dev_data_write(d->dev, d->fd, buf + off, n - off);
                if (k <= 0) {
                        int r = k < 0 ? (int) k : -EIO;
                        char text[sizeof ((StreamEvent *) NULL)->text];

                        (void) snprintf(text, sizeof text,
                                        "device %u (%s) refused the migration data at byte %llu of its stream: %s",
                                        d->index, d->dev->name, (unsigned long long) (d->bytes + off),
                                        k < 0 ? strerror(-r) : "it wrote nothing");
                        pthread_mutex_lock(&in->lock);
                        in_fail_event_locked(in, (int) d->index, r, STREAM_ABORT_DEVICE, text);
                        pthread_mutex_unlock(&in->lock);
                        return r;
                }
                off += (uint32_t) k;
        }
        d->bytes += n;
        d->packets++;
        atomic_fetch_add(&in->counters.bytes, n);
        atomic_fetch_add(&in->counters.packets, 1);
        atomic_fetch_add(&in->counters.device_bytes[d->index], n);
        return 0;
}

static void device_violation(StreamIn *in, InDevice *d, const StreamHeader *h, const char *why) {
        pthread_mutex_lock(&in->lock);
        in_fail_locked(in, -EBADMSG, STREAM_ABORT_PROTOCOL,
                       "peer violation: %s (device %u, %s with stream sequence number %llu, device sequence number %llu)", why,
                       d->index, stream_packet_type_to_string(h->type), (unsigned long long) h->stream_seq,
                       (unsigned long long) h->device_seq);
        pthread_mutex_unlock(&in->lock);
}

static int apply(StreamIn *in, InDevice *d, ReasmPacket *p) {
        const StreamHeader *h = &p->header;
        int r;

        switch (h->type) {
        case STREAM_PACKET_DATA:
                if ((h->flags & STREAM_DATA_FLAG_INITIAL) && d->initial_done) {
                        device_violation(in, d, h, "initial pre-copy data after INITIAL_DONE");
                        return -EBADMSG;
                }
                return apply_data(in, d, p);

        case STREAM_PACKET_INITIAL_DONE:
                if (d->initial_done) {
                        device_violation(in, d, h, "INITIAL_DONE repeated");
                        return -EBADMSG;
                }
                d->initial_done = true;
                r = send_control(in, STREAM_PACKET_INITIAL_LOADED, (uint16_t) d->index, NULL, 0,
                                 STREAM_CONTROL_SEND_TIMEOUT_USEC);
                pthread_mutex_lock(&in->lock);
                if (r < 0)
                        in_fail_locked(in, r, 0, "cannot send INITIAL_LOADED for device %u on channel 0: %s", d->index,
                                       strerror(-r));
                else if (!in->teardown)
                        event_queue_pushf(&in->events, STREAM_EVENT_INITIAL_LOADED, (int) d->index, 0, 0, NULL);
                pthread_mutex_unlock(&in->lock);
                return r;

        case STREAM_PACKET_END: {
                uint64_t bytes, packets;
                char why[160];

                memcpy(&bytes, p->payload, 8);
                memcpy(&packets, p->payload + 8, 8);
                bytes = le64toh(bytes);
                packets = le64toh(packets);
                if (bytes != d->bytes || packets != d->packets) {
                        (void) snprintf(why, sizeof why,
                                        "END announces %llu bytes in %llu DATA packets, %llu bytes in %llu packets arrived",
                                        (unsigned long long) bytes, (unsigned long long) packets,
                                        (unsigned long long) d->bytes, (unsigned long long) d->packets);
                        device_violation(in, d, h, why);
                        return -EBADMSG;
                }
                /* the device is done once its BLOB (always sent, maybe empty) is here too */
                d->ended = true;
                return 0;
        }

        case STREAM_PACKET_BLOB: {
                StreamEvent e = {
                        .type = STREAM_EVENT_BLOB,
                        .device = (int) d->index,
                        .blob = TAKE_PTR(p->payload),
                        .blob_size = h->length,
                };
                pthread_mutex_lock(&in->lock);
                if (in->teardown || e.blob_size == 0)
                        free(e.blob);
                else
                        event_queue_push(&in->events, &e);
                d->done = true;
                in->devices_done++;
                if (!in->teardown)
                        event_queue_pushf(&in->events, STREAM_EVENT_DEVICE_DONE, (int) d->index, 0, 0, NULL);
                pthread_cond_broadcast(&in->sup_cond);
                pthread_mutex_unlock(&in->lock);
                return 0;
        }
        default:
                device_violation(in, d, h, "a packet type that is not ordered");
                return -EBADMSG;
        }
}

static void *writer_thread(void *arg) {
        InDevice *d = arg;
        StreamIn *in = d->in;

        stream_thread_name("si-write", (int) d->index);
        pthread_mutex_lock(&in->lock);
        for (;;) {
                ReasmPacket *p = NULL;
                const char *why = NULL;
                uint8_t *buf;
                uint32_t length;
                int k;

                if (in->teardown)
                        break;
                if (!in->reasm) {
                        pthread_cond_wait(&d->cond, &in->lock);
                        continue;
                }
                k = reassembly_next(in->reasm, (uint16_t) d->index, &p, &why);
                if (k < 0) {
                        in_fail_locked(in, -EBADMSG, STREAM_ABORT_PROTOCOL, "peer violation: %s (device %u)", why, d->index);
                        break;
                }
                if (k == 0) {
                        d->waiting = true;
                        wake_parked_locked(in); /* what waits for a busy writer may come in now */
                        check_deadlock_locked(in);
                        if (in->teardown)
                                break;
                        pthread_cond_wait(&d->cond, &in->lock);
                        continue;
                }
                d->waiting = false;
                pthread_mutex_unlock(&in->lock);

                /* Before applying: the BLOB's DEVICE_DONE may make the job send COMPLETE at once.
                 * The packet passed its CRC check on arrival; should applying fail, the job fails. */
                stream_digest_add(&d->digest, &p->header);
                k = apply(in, d, p);

                pthread_mutex_lock(&in->lock);
                buf = TAKE_PTR(p->payload);
                length = p->header.length;
                reassembly_release(in->reasm, p);
                buffer_put_locked(in, buf, length);
                in->last_progress_usec = stream_now_usec();
                wake_parked_locked(in);
                if (k < 0)
                        break;
        }
        d->waiting = true;
        pthread_mutex_unlock(&in->lock);
        return NULL;
}

/* ---- receivers: io_uring ---- */

static struct io_uring_sqe *ring_sqe(struct io_uring *ring) {
        struct io_uring_sqe *sqe;

        while (!(sqe = io_uring_get_sqe(ring)))
                (void) io_uring_submit(ring);
        return sqe;
}

static void ring_post_recv(InRing *rg, InChannel *ch) {
        struct io_uring_sqe *sqe = ring_sqe(&rg->ring);
        uint8_t *buf;
        size_t need;

        switch (ch->state) {
        case RX_HDR:
                buf = ch->hdr;
                need = STREAM_HEADER_SIZE;
                break;
        case RX_PAYLOAD:
                buf = ch->payload;
                need = ch->h.length;
                break;
        default:
                buf = ch->ctl;
                need = ch->h.length;
                break;
        }
        io_uring_prep_recv(sqe, ch->fd, buf + ch->got, need - ch->got, MSG_WAITALL);
        io_uring_sqe_set_data64(sqe, ((uint64_t) OP_RECV << 32) | ch->index);
        ch->posted = true;
        rg->outstanding++;
}

static void ring_post_wake(InRing *rg) {
        struct io_uring_sqe *sqe = ring_sqe(&rg->ring);

        io_uring_prep_read(sqe, rg->wake_fd, &rg->wake_buf, sizeof rg->wake_buf, 0);
        io_uring_sqe_set_data64(sqe, (uint64_t) OP_WAKE << 32);
        rg->outstanding++;
}

/* Moves ch on from a state whose data is complete (or from an admitted header). */
static void advance(StreamIn *in, InChannel *ch, RxState next) {
        for (;;) {
                ch->got = 0;
                ch->state = next;
                if (next != RX_PAYLOAD)
                        return;
                if (!payload_alloc(in, ch)) {
                        ch->state = RX_DONE;
                        return;
                }
                if (ch->h.length > 0)
                        return;
                next = on_payload(in, ch); /* nothing to receive */
        }
}

static void ring_on_recv(InRing *rg, InChannel *ch, int res) {
        StreamIn *in = rg->in;
        size_t need;

        ch->posted = false;
        if (ch->state == RX_DONE || ch->state == RX_PARKED)
                return;
        if (res == -EINTR || res == -EAGAIN)
                return; /* posted again */
        if (res <= 0) {
                channel_closed(in, ch, res);
                ch->state = RX_DONE;
                return;
        }
        ch->got += (size_t) res;
        need = ch->state == RX_HDR ? STREAM_HEADER_SIZE : ch->h.length;
        if (ch->got < need)
                return;
        switch (ch->state) {
        case RX_HDR:
                advance(in, ch, on_header(in, ch));
                break;
        case RX_PAYLOAD:
                advance(in, ch, on_payload(in, ch));
                break;
        case RX_CTL:
                advance(in, ch, on_control_payload(in, ch));
                break;
        default:
                break;
        }
}

static void *in_ring_thread(void *arg) {
        InRing *rg = arg;
        StreamIn *in = rg->in;
        unsigned entries = 2 * (in->n_channels / in->n_rings + 1) + 8;
        int r;

        stream_thread_name("si-ring", (int) rg->index);
        r = stream_ring_init(&rg->ring, entries);
        if (r < 0) {
                pthread_mutex_lock(&in->lock);
                in_fail_locked(in, r, STREAM_ABORT_INTERNAL, "cannot set up an io_uring for receiving: %s", strerror(-r));
                pthread_mutex_unlock(&in->lock);
                sock_thread_exit(in);
                return NULL;
        }
        rg->ring_ok = true;
        ring_post_wake(rg);

        for (;;) {
                InChannel *admitted[STREAM_CHANNELS_MAX];
                unsigned n_admitted = 0;
                struct io_uring_cqe *cqe;
                unsigned head, seen = 0;

                pthread_mutex_lock(&in->lock);
                if (in->dead) {
                        pthread_mutex_unlock(&in->lock);
                        break;
                }
                if (rg->parked > 0 && !in->teardown) {
                        /* smallest stream sequence number first */
                        InChannel *parked[STREAM_CHANNELS_MAX];
                        unsigned n = 0;
                        for (unsigned c = rg->index; c < in->n_channels; c += in->n_rings)
                                if (in->channels[c].parked) {
                                        unsigned k = n++;
                                        while (k > 0 && parked[k - 1]->h.stream_seq > in->channels[c].h.stream_seq) {
                                                parked[k] = parked[k - 1];
                                                k--;
                                        }
                                        parked[k] = &in->channels[c];
                                }
                        for (unsigned k = 0; k < n && !in->teardown; k++) {
                                int a = admit_locked(in, parked[k]);
                                if (a < 0)
                                        parked[k]->state = RX_DONE;
                                else if (a > 0)
                                        admitted[n_admitted++] = parked[k];
                        }
                }
                for (unsigned c = rg->index; c < in->n_channels; c += in->n_rings) {
                        InChannel *ch = &in->channels[c];
                        if (ch->adopted && ch->state == RX_NEW)
                                ch->state = RX_HDR;
                }
                pthread_mutex_unlock(&in->lock);

                for (unsigned k = 0; k < n_admitted; k++)
                        advance(in, admitted[k], RX_PAYLOAD);
                for (unsigned c = rg->index; c < in->n_channels; c += in->n_rings) {
                        InChannel *ch = &in->channels[c];
                        if (!ch->posted && (ch->state == RX_HDR || ch->state == RX_PAYLOAD || ch->state == RX_CTL))
                                ring_post_recv(rg, ch);
                }

                r = io_uring_submit_and_wait(&rg->ring, 1);
                if (r < 0 && r != -EINTR && r != -ETIME && r != -EBUSY && r != -EAGAIN) {
                        pthread_mutex_lock(&in->lock);
                        in_fail_locked(in, r, STREAM_ABORT_INTERNAL, "io_uring_enter failed: %s", strerror(-r));
                        pthread_mutex_unlock(&in->lock);
                        break;
                }
                io_uring_for_each_cqe(&rg->ring, head, cqe) {
                        unsigned op = (unsigned) (cqe->user_data >> 32), c = (unsigned) (cqe->user_data & 0xffffffffu);

                        seen++;
                        rg->outstanding--;
                        if (op == OP_WAKE) {
                                pthread_mutex_lock(&in->lock);
                                rg->wake_pending = false;
                                pthread_mutex_unlock(&in->lock);
                                ring_post_wake(rg);
                        } else if (op == OP_RECV)
                                ring_on_recv(rg, &in->channels[c], cqe->res);
                }
                io_uring_cq_advance(&rg->ring, seen);
        }

        if (rg->outstanding > 0) {
                struct io_uring_sqe *sqe = ring_sqe(&rg->ring);
                io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
                io_uring_sqe_set_data64(sqe, (uint64_t) OP_CANCEL << 32);
                rg->outstanding++;
        }
        while (rg->outstanding > 0) {
                struct io_uring_cqe *cqe;
                unsigned head, seen = 0;

                r = io_uring_submit_and_wait(&rg->ring, 1);
                if (r < 0 && r != -EINTR && r != -ETIME && r != -EBUSY && r != -EAGAIN)
                        break;
                io_uring_for_each_cqe(&rg->ring, head, cqe) {
                        seen++;
                        rg->outstanding--;
                }
                io_uring_cq_advance(&rg->ring, seen);
        }
        sock_thread_exit(in);
        return NULL;
}

/* ---- receivers: blocking ---- */

static void *in_receiver_thread(void *arg) {
        InChannel *ch = arg;
        StreamIn *in = ch->in;
        RxState st = RX_HDR;
        int r;

        stream_thread_name("si-recv", (int) ch->index);
        while (st != RX_DONE) {
                switch (st) {
                case RX_HDR:
                        r = stream_chan_recv_exact(ch->fd, ch->tls, ch->hdr, STREAM_HEADER_SIZE);
                        if (r < 0) {
                                channel_closed(in, ch, r);
                                st = RX_DONE;
                                break;
                        }
                        st = on_header(in, ch);
                        break;
                case RX_PARKED:
                        pthread_mutex_lock(&in->lock);
                        for (;;) {
                                if (in->teardown) {
                                        st = RX_DONE;
                                        break;
                                }
                                r = admit_locked(in, ch);
                                if (r != 0) {
                                        st = r > 0 ? RX_PAYLOAD : RX_DONE;
                                        break;
                                }
                                pthread_cond_wait(&in->progress_cond, &in->lock);
                        }
                        pthread_mutex_unlock(&in->lock);
                        break;
                case RX_PAYLOAD:
                        if (!payload_alloc(in, ch)) {
                                st = RX_DONE;
                                break;
                        }
                        r = stream_chan_recv_exact(ch->fd, ch->tls, ch->payload, ch->h.length);
                        if (r < 0) {
                                channel_closed(in, ch, r);
                                st = RX_DONE;
                                break;
                        }
                        st = on_payload(in, ch);
                        break;
                case RX_CTL:
                        r = stream_chan_recv_exact(ch->fd, ch->tls, ch->ctl, ch->h.length);
                        if (r < 0) {
                                channel_closed(in, ch, r);
                                st = RX_DONE;
                                break;
                        }
                        st = on_control_payload(in, ch);
                        break;
                default:
                        st = RX_DONE;
                        break;
                }
        }
        sock_thread_exit(in);
        return NULL;
}

/* ---- supervisor: stall timer and teardown ---- */

static void *supervisor_thread(void *arg) {
        StreamIn *in = arg;

        stream_thread_name("si-sup", -1);
        pthread_mutex_lock(&in->lock);
        while (!in->teardown) {
                uint64_t now = stream_now_usec(), deadline = 0;

                if (in->deferred) {
                        if (now >= in->deferred_deadline) {
                                in_fail_locked(in, in->deferred_error, 0, "%s", in->deferred_text);
                                break;
                        }
                        deadline = in->deferred_deadline;
                }
                if (in->n_adopted > 0 && in->devices_done < in->cfg.device_count && !in->completed &&
                    !in->switchover && in->n_adopted == (in->n_channels ?: 1) &&
                    (!in->reasm || reassembly_buffered_bytes(in->reasm) == 0)) {
                        /* Pre-copy with nothing waiting: a source with nothing new to send (or one
                         * waiting for its operator's Switchover()) is not stalled. The clock starts
                         * again from here; keepalive notices a dead peer host meanwhile. */
                        in->last_progress_usec = now;
                        deadline = deadline ? MIN(deadline, now + in->stall_usec) : now + in->stall_usec;
                } else if (in->n_adopted > 0 && in->devices_done < in->cfg.device_count && !in->completed) {
                        uint64_t stall = in->last_progress_usec + in->stall_usec;
                        if (now >= stall) {
                                in_fail_locked(in, -ETIMEDOUT, STREAM_ABORT_TIMEOUT,
                                               "stalled: no packet applied for %llu s (%u of %u channels connected, %u of %u devices done, stream sequence number %llu awaited, %llu bytes buffered)",
                                               (unsigned long long) ((in->stall_usec + USEC_PER_SEC - 1) / USEC_PER_SEC),
                                               in->n_adopted, in->n_channels ?: 1, in->devices_done, in->cfg.device_count,
                                               (unsigned long long) (in->reasm ? reassembly_frontier(in->reasm) : 0),
                                               (unsigned long long) (in->reasm ? reassembly_buffered_bytes(in->reasm) : 0));
                                break;
                        }
                        deadline = deadline ? MIN(deadline, stall) : stall;
                }
                stream_cond_wait_until(&in->sup_cond, &in->lock, deadline);
        }

        if (in->abort_reason != 0 && in->channels[0].adopted) {
                uint8_t payload[STREAM_CONTROL_PAYLOAD_MAX];
                uint32_t reason = htole32(in->abort_reason);
                size_t n = strnlen(in->abort_text, STREAM_ABORT_TEXT_MAX);

                memcpy(payload, &reason, 4);
                memcpy(payload + 4, in->abort_text, n);
                /* never more than the source said it takes */
                n = MIN(n, (size_t) (in->peer_max_payload > 4 ? in->peer_max_payload - 4 : 0));
                pthread_mutex_unlock(&in->lock);
                (void) send_control(in, STREAM_PACKET_ABORT, STREAM_JOB_DEVICE, payload, (uint32_t) (4 + n),
                                    STREAM_ABORT_GRACE_USEC);
                pthread_mutex_lock(&in->lock);
        }
        in->dead = true;
        for (unsigned c = 0; c < STREAM_CHANNELS_MAX; c++)
                if (in->channels[c].adopted)
                        (void) shutdown(in->channels[c].fd, SHUT_RDWR);
        wake_everyone_locked(in);
        /* Once nobody receives on them, close the sockets: a peer that is still sending learns
         * at once (unread data makes the close a reset) instead of waiting on a full window. */
        while (in->sock_threads > 0)
                pthread_cond_wait(&in->sup_cond, &in->lock);
        pthread_mutex_unlock(&in->lock);
        pthread_mutex_lock(&in->send_lock);
        pthread_mutex_lock(&in->lock);
        for (unsigned c = 0; c < STREAM_CHANNELS_MAX; c++)
                if (in->channels[c].adopted)
                        in->channels[c].fd = safe_close(in->channels[c].fd);
        in->torn_down = true;
        pthread_mutex_unlock(&in->lock);
        pthread_mutex_unlock(&in->send_lock);
        return NULL;
}

/* ---- adoption ---- */

const uint8_t *stream_in_token(StreamIn *in) {
        return in->cfg.token;
}

const uint8_t *stream_in_job_id(StreamIn *in) {
        return in->job_id;
}

uint32_t stream_in_max_payload(StreamIn *in) {
        return in->max_payload;
}

void stream_in_set_listener(StreamIn *in, StreamListener *l) {
        in->listener = l;
}

StreamListener *stream_in_get_listener(StreamIn *in) {
        return in->listener;
}

static unsigned online_cpus(void) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (unsigned) n : 1;
}

/* The first channel fixes the channel count: the reassembly and the receivers follow from it. */
static int start_receiving_locked(StreamIn *in, unsigned channels) {
        int r;

        r = reassembly_new(in->cfg.device_count, channels, in->budget, in->max_payload, &in->reasm);
        if (r < 0)
                return r;
        in->n_channels = channels;
        for (unsigned d = 0; d < in->cfg.device_count; d++)
                pthread_cond_broadcast(&in->devices[d].cond);
        if (!in->use_uring)
                return 0;

        in->n_rings = MIN(in->cfg.rings ?: online_cpus(), channels);
        in->rings = new0(InRing, in->n_rings);
        if (!in->rings)
                return -ENOMEM;
        for (unsigned k = 0; k < in->n_rings; k++)
                in->rings[k] = (InRing) { .in = in, .index = k, .wake_fd = -EBADF };
        for (unsigned k = 0; k < in->n_rings; k++) {
                /* blocking: io_uring polls it either way, and older kernels fail a read of a
                 * non-blocking file with EAGAIN instead of waiting */
                in->rings[k].wake_fd = eventfd(0, EFD_CLOEXEC);
                if (in->rings[k].wake_fd < 0)
                        return -errno;
        }
        for (unsigned c = 0; c < channels; c++)
                in->channels[c].ring = &in->rings[c % in->n_rings];
        for (unsigned k = 0; k < in->n_rings; k++) {
                r = -pthread_create(&in->rings[k].thread, NULL, in_ring_thread, &in->rings[k]);
                if (r < 0)
                        return r;
                in->rings[k].thread_started = true;
                in->sock_threads++;
        }
        return 0;
}

static bool same_text(const char *a, const char *b) {
        return strncmp(a, b, STREAM_DRIVER_NAME_SIZE) == 0;
}

static uint32_t check_device(const StreamDeviceInfo *want, const StreamDeviceInfo *got, unsigned index,
                             char reason[static STREAM_REASON_TEXT_SIZE + 1]) {
        const char *what = NULL;

        if (want->migration_flags != got->migration_flags)
                what = "migration flags";
        else if (want->stream_format != got->stream_format)
                what = "stream format";
        else if (!same_text(want->driver, got->driver))
                what = "driver";
        else if (want->vendor_id != 0xffff && got->vendor_id != 0xffff &&
                 (want->vendor_id != got->vendor_id || want->device_id != got->device_id))
                what = "PCI ids";
        else if (want->stream_format == STREAM_FORMAT_SIM && want->state_size != got->state_size)
                what = "state size";
        if (!what)
                return STREAM_ACCEPTED;
        (void) snprintf(reason, STREAM_REASON_TEXT_SIZE + 1, "device %u: %s differ", index, what);
        return STREAM_REFUSE_INCOMPATIBLE;
}

static uint32_t check_hello_locked(StreamIn *in, const StreamHello *h, char reason[static STREAM_REASON_TEXT_SIZE + 1]) {
        uint32_t status = STREAM_ACCEPTED;

        reason[0] = '\0';
        if (in->teardown || in->connected || in->completed) {
                (void) snprintf(reason, STREAM_REASON_TEXT_SIZE + 1, "the job takes no more channels");
                status = STREAM_REFUSE_BUSY;
                goto out;
        }
        if (h->device_count != in->cfg.device_count) {
                (void) snprintf(reason, STREAM_REASON_TEXT_SIZE + 1, "the job has %u devices, not %u", in->cfg.device_count,
                                h->device_count);
                status = STREAM_REFUSE_DEVICES;
                goto out;
        }
        for (unsigned d = 0; d < h->device_count && status == STREAM_ACCEPTED; d++)
                status = check_device(&in->cfg.infos[d], &h->devices[d], d, reason);
        if (status != STREAM_ACCEPTED)
                goto out;
        if (in->n_channels > 0) {
                if (h->channel_count != in->n_channels) {
                        (void) snprintf(reason, STREAM_REASON_TEXT_SIZE + 1, "channel count %u, the first channel said %u",
                                        h->channel_count, in->n_channels);
                        status = STREAM_REFUSE_CHANNELS;
                        goto out;
                }
                if (h->flags != in->hello_flags) {
                        (void) snprintf(reason, STREAM_REASON_TEXT_SIZE + 1, "the HELLO differs from the first channel's");
                        status = STREAM_REFUSE_BAD_HELLO;
                        goto out;
                }
        }
        if (h->channel_index >= h->channel_count || in->channels[h->channel_index].adopted) {
                (void) snprintf(reason, STREAM_REASON_TEXT_SIZE + 1, "channel %u is already connected", h->channel_index);
                status = STREAM_REFUSE_CHANNELS;
                goto out;
        }
out:
        return status;
}

uint32_t stream_in_check_hello(StreamIn *in, const StreamHello *h, char reason[static STREAM_REASON_TEXT_SIZE + 1]) {
        uint32_t status;

        pthread_mutex_lock(&in->lock);
        status = check_hello_locked(in, h, reason);
        pthread_mutex_unlock(&in->lock);
        return status;
}

uint32_t stream_in_adopt(StreamIn *in, int fd, StreamTlsSession *tls, const StreamHello *h,
                         const uint8_t binding[static STREAM_BINDING_SIZE],
                         char reason[static STREAM_REASON_TEXT_SIZE + 1]) {
        InChannel *ch;
        uint32_t status;
        int r;

        pthread_mutex_lock(&in->lock);
        /* Checked again: another channel may have been adopted since the WELCOME went out. */
        status = check_hello_locked(in, h, reason);
        if (status == STREAM_ACCEPTED && in->n_channels > 0 && stream_tls_transport(tls) != in->transport) {
                (void) snprintf(reason, STREAM_REASON_TEXT_SIZE + 1, "channel %u runs %s, the first channel %s",
                                h->channel_index, stream_transport_to_string(stream_tls_transport(tls)),
                                stream_transport_to_string(in->transport));
                status = STREAM_REFUSE_CHANNELS;
        }
        if (status != STREAM_ACCEPTED)
                goto out;
        /* From here on the channel is ours: the source proved the token on it. */
        if (in->n_channels == 0) {
                in->hello_flags = h->flags;
                in->peer_max_payload = h->max_payload;
                in->transport = stream_tls_transport(tls);
                if (in->use_uring && tls && in->transport != STREAM_TRANSPORT_TLS_KERNEL) {
                        /* io_uring moves plain bytes: user-space TLS runs on blocking threads */
                        log_info("stream in: TLS in user space, on blocking I/O");
                        in->use_uring = false;
                }
                r = start_receiving_locked(in, h->channel_count);
                if (r < 0) {
                        in_fail_locked(in, r, STREAM_ABORT_INTERNAL, "cannot start receiving: %s", strerror(-r));
                        stream_tls_session_free(tls); /* taken, like fd */
                        (void) close(fd);
                        goto out;
                }
        }
        (void) stream_fd_set_nonblock(fd, false);
        stream_socket_set_keepalive(fd);
        {
                int sndbuf = stream_test_get_sndbuf(), rcvbuf = stream_test_get_rcvbuf();
                if (sndbuf > 0)
                        (void) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
                if (rcvbuf > 0)
                        (void) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        }
        ch = &in->channels[h->channel_index];
        ch->fd = fd;
        ch->tls = tls;
        ch->adopted = true;
        memcpy(ch->binding, binding, STREAM_BINDING_SIZE);
        in->n_adopted++;
        atomic_store(&in->counters.channels_up, in->n_adopted);
        in->last_progress_usec = stream_now_usec();
        pthread_cond_broadcast(&in->sup_cond);
        if (in->use_uring) {
                uint64_t one = 1;
                (void) !write(ch->ring->wake_fd, &one, sizeof one);
        } else {
                r = -pthread_create(&ch->thread, NULL, in_receiver_thread, ch);
                ch->thread_started = r >= 0;
                in->sock_threads += r >= 0;
                if (r < 0)
                        in_fail_locked(in, r, STREAM_ABORT_INTERNAL, "cannot start a receiver thread: %s", strerror(-r));
        }
        if (in->n_adopted == in->n_channels) {
                struct sockaddr_storage ss = {};
                socklen_t len = sizeof ss;
                char peer[128] = "";

                in->connected = true;
                if (getpeername(in->channels[0].fd, (struct sockaddr *) &ss, &len) >= 0)
                        (void) stream_format_address((struct sockaddr *) &ss, len, peer, sizeof peer);
                log_info("stream in: %u channel%s up from %s (%s%s%s, %s), budget %llu bytes, packets up to %u bytes",
                         in->n_channels, in->n_channels == 1 ? "" : "s", peer[0] ? peer : "?",
                         stream_transport_to_string(in->transport), tls ? " with " : "", tls ? stream_tls_peer_name(tls) : "",
                         in->use_uring ? "io_uring" : "blocking I/O", (unsigned long long) in->budget, in->max_payload);
                event_queue_pushf(&in->events, STREAM_EVENT_CONNECTED, -1, 0, 0, "%s", peer);
        }
out:
        pthread_mutex_unlock(&in->lock);
        return status;
}

/* ---- the API ---- */

static void stop_and_join(StreamIn *in) {
        pthread_mutex_lock(&in->lock);
        in->exiting = true;
        request_teardown_locked(in, 0, NULL);
        pthread_mutex_unlock(&in->lock);

        if (in->sup_started)
                (void) pthread_join(in->sup_thread, NULL);
        pthread_mutex_lock(&in->lock);
        in->dead = true;
        wake_everyone_locked(in);
        pthread_mutex_unlock(&in->lock);
        in->sup_started = false;

        for (unsigned k = 0; in->rings && k < in->n_rings; k++)
                if (in->rings[k].thread_started) {
                        (void) pthread_join(in->rings[k].thread, NULL);
                        in->rings[k].thread_started = false;
                }
        for (unsigned c = 0; c < STREAM_CHANNELS_MAX; c++)
                if (in->channels[c].thread_started) {
                        (void) pthread_join(in->channels[c].thread, NULL);
                        in->channels[c].thread_started = false;
                }
        for (unsigned d = 0; d < in->cfg.device_count; d++)
                if (in->devices[d].thread_started) {
                        (void) pthread_join(in->devices[d].thread, NULL);
                        in->devices[d].thread_started = false;
                }
}

StreamIn *stream_in_free(StreamIn *in) {
        if (!in)
                return NULL;
        if (in->listener)
                stream_listener_unregister(in->listener, in);
        stop_and_join(in);

        for (unsigned c = 0; c < STREAM_CHANNELS_MAX; c++) {
                InChannel *ch = &in->channels[c];
                free(ch->payload);
                ch->tls = stream_tls_session_free(ch->tls);
                ch->fd = safe_close(ch->fd);
        }
        for (unsigned k = 0; in->rings && k < in->n_rings; k++) {
                if (in->rings[k].ring_ok)
                        io_uring_queue_exit(&in->rings[k].ring);
                safe_close(in->rings[k].wake_fd);
        }
        free(in->rings);
        while (in->cache) {
                void *buf = in->cache;
                memcpy(&in->cache, buf, sizeof(void *));
                free(buf);
        }
        reassembly_free(in->reasm);
        for (unsigned d = 0; d < in->cfg.device_count; d++) {
                stream_digest_done(&in->devices[d].digest);
                (void) pthread_cond_destroy(&in->devices[d].cond);
        }
        (void) pthread_cond_destroy(&in->progress_cond);
        (void) pthread_cond_destroy(&in->sup_cond);
        (void) pthread_mutex_destroy(&in->send_lock);
        (void) pthread_mutex_destroy(&in->lock);
        event_queue_done(&in->events);
        free(in);
        return NULL;
}

int stream_in_new(const StreamInConfig *c, StreamIn **ret, ErrorMessage *err) {
        StreamIn *in;
        uint64_t budget = c->budget ?: STREAM_BUDGET_DEFAULT;
        uint32_t max_payload = c->max_payload ?: STREAM_PAYLOAD_MAX;
        int r;

        if (c->device_count < 1 || c->device_count > STREAM_DEVICES_MAX)
                return error_setf(err, -EINVAL, "the device count must be between 1 and %u", STREAM_DEVICES_MAX);
        for (unsigned d = 0; d < c->device_count; d++) {
                if (!c->devices[d])
                        return error_setf(err, -EINVAL, "device %u is missing", d);
                if (c->data_fds[d] < 0)
                        return error_setf(err, -EBADF, "device %u has no data fd", d);
        }
        if (max_payload < STREAM_PAYLOAD_MIN || max_payload > STREAM_PAYLOAD_MAX)
                return error_setf(err, -EINVAL, "the maximum payload must be between %u and %u bytes", STREAM_PAYLOAD_MIN,
                                  STREAM_PAYLOAD_MAX);
        if (budget < 2 * ((uint64_t) STREAM_PAYLOAD_MIN + REASSEMBLY_PACKET_OVERHEAD))
                return error_setf(err, -EINVAL, "the reassembly budget must be at least %llu bytes",
                                  (unsigned long long) (2 * ((uint64_t) STREAM_PAYLOAD_MIN + REASSEMBLY_PACKET_OVERHEAD)));
        /* The budget must hold two maximum packets: halve the payload (a power of two stays one)
         * until it does. */
        while (2 * ((uint64_t) max_payload + REASSEMBLY_PACKET_OVERHEAD) > budget && max_payload / 2 >= STREAM_PAYLOAD_MIN)
                max_payload /= 2;
        if (2 * ((uint64_t) max_payload + REASSEMBLY_PACKET_OVERHEAD) > budget)
                max_payload = STREAM_PAYLOAD_MIN;

        in = new0(StreamIn, 1);
        if (!in)
                return -ENOMEM;
        in->cfg = *c;
        in->budget = budget;
        in->max_payload = max_payload;
        in->reserve = (uint64_t) max_payload + REASSEMBLY_PACKET_OVERHEAD;
        in->stall_usec = c->stall_timeout_usec ?: STREAM_STALL_TIMEOUT_USEC_DEFAULT;
        (void) pthread_mutex_init(&in->lock, NULL);
        (void) pthread_mutex_init(&in->send_lock, NULL);
        for (unsigned k = 0; k < STREAM_CHANNELS_MAX; k++)
                in->channels[k] = (InChannel) { .in = in, .index = k, .fd = -EBADF };
        r = stream_cond_init(&in->progress_cond);
        if (r >= 0)
                r = stream_cond_init(&in->sup_cond);
        for (unsigned d = 0; r >= 0 && d < c->device_count; d++) {
                in->devices[d] = (InDevice) { .in = in, .index = d, .dev = c->devices[d], .fd = c->data_fds[d] };
                r = stream_cond_init(&in->devices[d].cond);
                if (r >= 0)
                        r = stream_digest_init(&in->devices[d].digest);
        }
        if (r >= 0)
                r = event_queue_init(&in->events);
        if (r >= 0)
                r = stream_job_id(c->token, in->job_id);
        if (r < 0) {
                stream_in_free(in);
                return error_setf(err, r, "cannot set up the stream: %m");
        }
        in->use_uring = c->io_uring && stream_io_uring_available();
        if (c->io_uring && !in->use_uring)
                log_info("stream in: io_uring is not available here, using blocking I/O");

        r = -pthread_create(&in->sup_thread, NULL, supervisor_thread, in);
        in->sup_started = r >= 0;
        for (unsigned d = 0; r >= 0 && d < c->device_count; d++) {
                r = -pthread_create(&in->devices[d].thread, NULL, writer_thread, &in->devices[d]);
                in->devices[d].thread_started = r >= 0;
        }
        if (r < 0) {
                stream_in_free(in);
                return error_setf(err, r, "cannot start the stream's threads: %m");
        }
        *ret = in;
        return 0;
}

int stream_in_event_fd(StreamIn *in) {
        return in->events.fd;
}

int stream_in_next_event(StreamIn *in, StreamEvent *ret) {
        return event_queue_pop(&in->events, ret);
}

int stream_in_complete(StreamIn *in) {
        StreamCompleteRecord records[STREAM_DEVICES_MAX];
        uint8_t payload[STREAM_DEVICES_MAX * STREAM_COMPLETE_RECORD_SIZE];
        int r = 0;

        pthread_mutex_lock(&in->lock);
        if (in->teardown)
                r = -ESHUTDOWN;
        else if (!in->connected)
                r = -ENOTCONN;
        else if (in->devices_done < in->cfg.device_count)
                r = -EINPROGRESS;
        else
                in->completed = true; /* before sending: the source may close at once */
        pthread_mutex_unlock(&in->lock);
        if (r < 0)
                return r;
        /* Every device's BLOB was applied (its writer is idle from here on): what it counted is final. */
        for (unsigned d = 0; d < in->cfg.device_count; d++) {
                records[d].data_bytes = in->devices[d].bytes;
                records[d].data_packets = in->devices[d].packets;
                stream_digest_peek(&in->devices[d].digest, records[d].digest);
        }
        stream_complete_encode(records, in->cfg.device_count, payload);
        r = send_control(in, STREAM_PACKET_COMPLETE, STREAM_JOB_DEVICE, payload,
                         in->cfg.device_count * STREAM_COMPLETE_RECORD_SIZE, STREAM_CONTROL_SEND_TIMEOUT_USEC);
        if (r < 0) {
                pthread_mutex_lock(&in->lock);
                in->completed = false;
                in_fail_locked(in, r, 0, "cannot send COMPLETE on channel 0: %s", strerror(-r));
                pthread_mutex_unlock(&in->lock);
        }
        return r;
}

void stream_in_abort(StreamIn *in, uint32_t reason, const char *text) {
        if (!in)
                return;
        event_queue_close(&in->events);
        pthread_mutex_lock(&in->lock);
        if (!in->teardown)
                log_info("stream in: aborting (%s)%s%s", stream_abort_to_string(reason), text ? ": " : "", text ?: "");
        request_teardown_locked(in, reason ?: STREAM_ABORT_INTERNAL, text ?: "");
        pthread_mutex_unlock(&in->lock);
}

void stream_in_stats(StreamIn *in, StreamStats *ret) {
        stream_counters_read(&in->counters, in->cfg.device_count, in->use_uring, ret);
        pthread_mutex_lock(&in->lock);
        ret->transport = in->transport;
        ret->io_uring = in->use_uring;
        if (in->reasm)
                ret->buffered = reassembly_buffered_bytes(in->reasm) + in->inflight;
        pthread_mutex_unlock(&in->lock);
}

int stream_in_test_channel_binding(StreamIn *in, unsigned channel, uint8_t out[STREAM_TLS_BINDING_SIZE]) {
        int r = 0;

        pthread_mutex_lock(&in->lock);
        if (channel >= STREAM_CHANNELS_MAX || !in->channels[channel].adopted)
                r = -ENOTCONN;
        else if (!in->channels[channel].tls)
                r = -ENOPROTOOPT;
        else
                memcpy(out, in->channels[channel].binding, STREAM_TLS_BINDING_SIZE);
        pthread_mutex_unlock(&in->lock);
        return r;
}
