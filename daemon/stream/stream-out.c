/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * The sending side. Threads:
 *   setup      connects the channels, runs their TLS handshakes (when TLS is configured), sends
 *              HELLOs, reads WELCOMEs, then ends;
 *   reader     one per device: reads its data fd into pool buffers (header room in front), seals
 *              the header and queues the packet on a channel — sequence numbers are assigned and
 *              the packet queued under one lock, so every channel's queue is in stream order;
 *   ring       io_uring threads, each owning channels c ≡ ring (mod rings): one send in flight per
 *              channel; ring 0 also receives channel 0 (INITIAL_LOADED, COMPLETE, ABORT), and
 *              every ring watches its other channels, where a destination sends nothing;
 *     or, without io_uring, one blocking sender thread per channel and one receiver polling all
 *     (also with TLS in user space: GnuTLS seals and opens records on the channel's own threads);
 *   supervisor the stall timer; tears everything down on failure, abort or free: a best-effort
 *              ABORT, then shutdown(2) of every socket, which ends every blocked send and receive.
 * One mutex (o->lock) covers queues, the pool, sequence numbers and the states below.
 */

#include <endian.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "crc32c.h"
#include "log.h"
#include "stream-auth.h"
#include "stream-internal.h"
#include "stream-testing.h"

typedef struct OutPacket OutPacket;
struct OutPacket {
        OutPacket *next;
        uint8_t *buf;            /* header, then payload */
        size_t size;             /* header + payload */
        uint32_t payload;
        uint8_t type;
        int device;
        bool pooled;
        bool last_of_device;     /* DEVICE_SENT once it went out */
};

typedef struct OutRing OutRing;

typedef struct OutChannel {
        StreamOut *o;
        unsigned index;
        int fd;
        StreamTlsSession *tls;               /* NULL: cleartext; set before connected, then fixed */
        OutRing *ring;
        /* under o->lock */
        OutPacket *head, *tail;              /* ordered packets, in stream order */
        OutPacket *urgent_head, *urgent_tail; /* control packets (channel 0): SWITCHOVER, ABORT */
        uint64_t queued;                     /* bytes queued or in flight */
        bool idle;                           /* the sender found nothing: wake it on enqueue */
        bool broken;
        uint8_t binding[STREAM_BINDING_SIZE]; /* stream_channel_binding() of the connection */
        /* channels ≥ 1: the destination sends nothing there; one byte is a violation */
        bool side_posted, side_done;
        uint8_t side_byte;
        pthread_cond_t cond;                 /* blocking sender */
        /* the sender's own */
        OutPacket *inflight;
        size_t sent;
        _Atomic uint64_t rate;               /* test knob: bytes per second */
        uint64_t next_usec;
        pthread_t thread;
        bool thread_started;
} OutChannel;

typedef enum ReadMode {
        READ_IDLE,
        READ_PRECOPY,
        READ_STOPCOPY,
} ReadMode;

typedef struct OutDevice {
        StreamOut *o;
        unsigned index;
        VfioDev *dev;
        pthread_cond_t cond;
        pthread_t thread;
        bool thread_started;
        /* under o->lock */
        ReadMode want;
        int fd;
        bool busy;               /* the reader is between reads, not waiting for a command */
        bool exited;
        bool finished;           /* END queued */
        uint64_t next_device_seq;
        uint64_t data_bytes, data_packets;
        bool initial_loaded;     /* INITIAL_LOADED arrived */
        bool sent_reported;      /* DEVICE_SENT went out */
        bool last_out;           /* its BLOB was handed to a sender */
        StreamDigest digest;     /* over its ordered packets, as COMPLETE must echo it */
        /* the reader's own (also read under o->lock by the receiver, after it was set) */
        bool initial_done_sent;
        bool initial_known;
        uint64_t initial_bytes;
        uint8_t *blob;
        size_t blob_size;
        bool has_blob;
} OutDevice;

struct OutRing {
        StreamOut *o;
        unsigned index;
        struct io_uring ring;
        bool ring_ok;
        int wake_fd;
        uint64_t wake_buf;
        bool wake_pending;       /* under o->lock */
        unsigned outstanding;
        pthread_t thread;
        bool thread_started;
};

/* Receive state of channel 0, owned by whichever thread receives it. */
typedef struct OutRx {
        uint8_t hdr[STREAM_HEADER_SIZE];
        uint8_t payload[STREAM_DST_PAYLOAD_MAX];
        StreamHeader h;
        size_t got;
        bool in_payload;
        bool posted;
        bool done;
} OutRx;

struct StreamOut {
        StreamOutConfig cfg;
        EventQueue events;
        bool use_uring;
        StreamTransport transport;      /* once connected */
        unsigned n_channels, n_rings;
        uint32_t announced_payload;
        uint32_t chunk;                 /* effective, once connected */
        int setup_wake_fd;

        pthread_mutex_t lock;
        pthread_cond_t pool_cond, sup_cond;
        bool connected;
        bool stopping;                  /* readers stop; only urgent packets go out */
        bool teardown;                  /* the supervisor is (or has been) asked to stop everything */
        bool dead;                      /* sockets shut down: every thread leaves */
        bool torn_down;
        bool exiting;
        bool completed;                 /* COMPLETE arrived and matched */
        bool switchover_out;            /* SWITCHOVER was handed to the sender */
        unsigned devices_out;           /* devices whose BLOB was handed to a sender */
        bool handed_all;                /* every byte of the migration was handed to a sender */
        uint64_t stall_usec;
        uint64_t last_progress_usec;    /* a send completed or a packet arrived */
        bool sup_unarmed;               /* the supervisor waits without a stall deadline */
        uint8_t job_id[STREAM_JOB_ID_SIZE];
        bool peer_aborted;
        bool abort_done;                /* our ABORT went out */
        bool deferred;                  /* a connection failed: reported unless an ABORT explains it */
        int deferred_error;
        uint64_t deferred_deadline;
        char deferred_text[256];
        unsigned sock_threads;          /* threads that use the sockets, still running */
        uint32_t abort_reason;
        char abort_text[STREAM_ABORT_TEXT_MAX + 1];
        uint64_t next_stream_seq;
        unsigned rr;
        OutPacket *pool;
        OutPacket *pool_free;
        unsigned pool_cap, pool_count;
        uint64_t bw_next_usec;
        uint64_t queued_total;

        OutChannel channels[STREAM_CHANNELS_MAX];
        OutDevice devices[STREAM_DEVICES_MAX];
        OutRing *rings;
        OutRx rx;

        pthread_t setup_thread, sup_thread, rx_thread;
        bool setup_started, sup_started, rx_started;

        StreamCounters counters;
};

enum {
        OP_WAKE = 1,
        OP_SEND,
        OP_RECV,
        OP_CANCEL,
};

static uint64_t ud_pack(unsigned op, unsigned channel) {
        return ((uint64_t) op << 32) | channel;
}

/* ---- failure and teardown ---- */

static void wake_everyone_locked(StreamOut *o) {
        uint64_t one = 1;

        pthread_cond_broadcast(&o->pool_cond);
        pthread_cond_broadcast(&o->sup_cond);
        for (unsigned d = 0; d < o->cfg.device_count; d++)
                pthread_cond_broadcast(&o->devices[d].cond);
        for (unsigned c = 0; c < o->n_channels; c++)
                pthread_cond_broadcast(&o->channels[c].cond);
        for (unsigned k = 0; o->rings && k < o->n_rings; k++)
                if (o->rings[k].wake_fd >= 0)
                        (void) !write(o->rings[k].wake_fd, &one, sizeof one);
        if (o->setup_wake_fd >= 0)
                (void) !write(o->setup_wake_fd, &one, sizeof one);
}

static void request_teardown_locked(StreamOut *o, uint32_t abort_reason, const char *text) {
        if (o->teardown)
                return;
        o->teardown = true;
        o->stopping = true;
        o->abort_reason = abort_reason;
        if (text)
                (void) snprintf(o->abort_text, sizeof o->abort_text, "%.*s", STREAM_ABORT_TEXT_MAX, text);
        wake_everyone_locked(o);
}

_printf_(4, 5) static void out_fail_locked(StreamOut *o, int error, uint32_t abort_reason, const char *format, ...) {
        StreamEvent e = {
                .type = STREAM_EVENT_FAILED,
                .device = -1,
                .error = error < 0 ? error : -EIO,
        };
        va_list ap;

        if (o->teardown)
                return; /* already stopping: the first failure is the one reported */
        va_start(ap, format);
        (void) vsnprintf(e.text, sizeof e.text, format, ap);
        va_end(ap);
        log_warning("stream out: %s", e.text);
        event_queue_push(&o->events, &e);
        request_teardown_locked(o, abort_reason, e.text);
}

/* A connection broke. The destination may have sent an ABORT on channel 0 just before hanging
 * up, which we may not have read yet: give it a moment to arrive and explain the failure. */
_printf_(3, 4) static void out_conn_failed_locked(StreamOut *o, int error, const char *format, ...) {
        va_list ap;

        if (o->teardown || o->deferred || o->completed)
                return; /* after COMPLETE the destination may hang up any channel, in any order */
        o->deferred = true;
        o->deferred_error = error;
        o->deferred_deadline = stream_now_usec() + STREAM_PEER_ABORT_WAIT_USEC;
        va_start(ap, format);
        (void) vsnprintf(o->deferred_text, sizeof o->deferred_text, format, ap);
        va_end(ap);
        pthread_cond_broadcast(&o->sup_cond);
}

static void sock_thread_exit(StreamOut *o) {
        pthread_mutex_lock(&o->lock);
        o->sock_threads--;
        pthread_cond_broadcast(&o->sup_cond);
        pthread_mutex_unlock(&o->lock);
}

/* ---- packets, pool, queues ---- */

static OutPacket *packet_new(uint8_t type, int device, uint32_t payload) {
        OutPacket *p = malloc(sizeof(OutPacket) + STREAM_HEADER_SIZE + payload);

        if (!p)
                return NULL;
        *p = (OutPacket) {
                .buf = (uint8_t *) (p + 1),
                .size = STREAM_HEADER_SIZE + (size_t) payload,
                .payload = payload,
                .type = type,
                .device = device,
        };
        return p;
}

static void packet_release_locked(StreamOut *o, OutPacket *p) {
        if (!p)
                return;
        if (p->pooled) {
                p->next = o->pool_free;
                o->pool_free = p;
                pthread_cond_broadcast(&o->pool_cond);
        } else
                free(p);
}

static void channel_push_locked(StreamOut *o, OutChannel *ch, OutPacket *p, bool urgent) {
        uint64_t peak;

        p->next = NULL;
        if (o->queued_total == 0) {
                o->last_progress_usec = stream_now_usec(); /* the stall clock runs from here */
                if (o->sup_unarmed) /* it sleeps without a deadline: give it one */
                        pthread_cond_broadcast(&o->sup_cond);
        }
        if (urgent) {
                if (ch->urgent_tail)
                        ch->urgent_tail->next = p;
                else
                        ch->urgent_head = p;
                ch->urgent_tail = p;
        } else {
                if (ch->tail)
                        ch->tail->next = p;
                else
                        ch->head = p;
                ch->tail = p;
        }
        ch->queued += p->size;
        o->queued_total += p->size;
        peak = atomic_load(&o->counters.peak);
        if (o->queued_total > peak)
                atomic_store(&o->counters.peak, o->queued_total);
        if (ch->idle) {
                ch->idle = false;
                if (o->use_uring) {
                        OutRing *rg = ch->ring;
                        uint64_t one = 1;
                        if (rg && !rg->wake_pending) {
                                rg->wake_pending = true;
                                (void) !write(rg->wake_fd, &one, sizeof one);
                        }
                } else
                        pthread_cond_signal(&ch->cond);
        }
}

/* Latches handed_all once SWITCHOVER and every packet of every device went to the senders:
 * from then on the destination may have everything and commit, so a failure without an answer
 * leaves the outcome unknown (proto/stream-protocol.md §3.2). Handed, not sent, so that the
 * latch is never late: early only widens the window in which the source keeps its devices
 * stopped. */
static void note_handed_locked(StreamOut *o) {
        if (o->handed_all || !o->switchover_out || o->devices_out < o->cfg.device_count || o->teardown)
                return;
        for (unsigned c = 0; c < o->n_channels; c++)
                if (o->channels[c].head)
                        return;
        o->handed_all = true;
        o->last_progress_usec = stream_now_usec(); /* the wait for COMPLETE starts */
        pthread_cond_broadcast(&o->sup_cond);
}

/* The next packet to send on ch: control packets first; ordered ones only while running. */
static OutPacket *channel_pop_locked(StreamOut *o, OutChannel *ch) {
        OutPacket *p;

        if (ch->urgent_head) {
                p = ch->urgent_head;
                ch->urgent_head = p->next;
                if (!ch->urgent_head)
                        ch->urgent_tail = NULL;
                if (p->type == STREAM_PACKET_SWITCHOVER) {
                        o->switchover_out = true;
                        note_handed_locked(o);
                }
                return p;
        }
        if (o->stopping || !ch->head)
                return NULL;
        p = ch->head;
        ch->head = p->next;
        if (!ch->head)
                ch->tail = NULL;
        if (p->last_of_device && !o->devices[p->device].last_out) {
                o->devices[p->device].last_out = true;
                o->devices_out++;
        }
        note_handed_locked(o);
        if (p->type == STREAM_PACKET_DATA) {
                /* counted as it is handed to the socket: exact once the destination confirms */
                atomic_fetch_add(&o->counters.bytes, p->payload);
                atomic_fetch_add(&o->counters.packets, 1);
                atomic_fetch_add(&o->counters.device_bytes[p->device], p->payload);
        }
        return p;
}

static void channel_drop_queued_locked(StreamOut *o, OutChannel *ch) {
        while (ch->head) {
                OutPacket *p = ch->head;
                ch->head = p->next;
                ch->queued -= p->size;
                o->queued_total -= p->size;
                packet_release_locked(o, p);
        }
        ch->tail = NULL;
        while (ch->urgent_head) {
                OutPacket *p = ch->urgent_head;
                ch->urgent_head = p->next;
                ch->queued -= p->size;
                o->queued_total -= p->size;
                packet_release_locked(o, p);
        }
        ch->urgent_tail = NULL;
}

/* Least loaded channel, ties broken round-robin. */
static OutChannel *pick_channel_locked(StreamOut *o) {
        OutChannel *best = NULL;

        for (unsigned k = 0; k < o->n_channels; k++) {
                OutChannel *ch = &o->channels[(o->rr + k) % o->n_channels];
                if (!best || ch->queued < best->queued)
                        best = ch;
        }
        o->rr = (o->rr + 1) % o->n_channels;
        return best;
}

/* Assigns the sequence numbers and queues: the one place ordered packets enter the channels. */
static void enqueue_ordered_locked(StreamOut *o, OutDevice *d, OutPacket *p, uint8_t flags, uint32_t payload_crc) {
        StreamHeader h = {
                .type = p->type,
                .flags = flags,
                .device = (uint16_t) d->index,
                .stream_seq = o->next_stream_seq++,
                .device_seq = d->next_device_seq++,
                .length = p->payload,
                .payload_crc = payload_crc,
        };

        stream_header_encode(&h, p->buf);
        stream_digest_add(&d->digest, &h);
        channel_push_locked(o, pick_channel_locked(o), p, false);
}

static int enqueue_small_ordered_locked(StreamOut *o, OutDevice *d, uint8_t type, const void *payload,
                                        uint32_t length, bool last) {
        OutPacket *p = packet_new(type, (int) d->index, length);

        if (!p)
                return -ENOMEM;
        if (length > 0)
                memcpy(p->buf + STREAM_HEADER_SIZE, payload, length);
        p->last_of_device = last;
        enqueue_ordered_locked(o, d, p, 0, crc32c(p->buf + STREAM_HEADER_SIZE, length));
        return 0;
}

static int enqueue_control_locked(StreamOut *o, uint8_t type, const void *payload, uint32_t length) {
        OutPacket *p = packet_new(type, -1, length);

        if (!p)
                return -ENOMEM;
        if (length > 0)
                memcpy(p->buf + STREAM_HEADER_SIZE, payload, length);
        stream_encode_packet(p->buf, type, 0, STREAM_JOB_DEVICE, 0, 0, p->buf + STREAM_HEADER_SIZE, length);
        channel_push_locked(o, &o->channels[0], p, true);
        return 0;
}

/* A packet went out completely. */
static void packet_sent_locked(StreamOut *o, OutChannel *ch, OutPacket *p) {
        o->last_progress_usec = stream_now_usec();
        ch->queued -= p->size;
        o->queued_total -= p->size;
        if (p->last_of_device && !o->teardown && !o->devices[p->device].sent_reported) {
                o->devices[p->device].sent_reported = true;
                event_queue_pushf(&o->events, STREAM_EVENT_DEVICE_SENT, p->device, 0, 0, NULL);
        }
        if (p->type == STREAM_PACKET_ABORT) {
                o->abort_done = true;
                pthread_cond_broadcast(&o->sup_cond);
        }
        packet_release_locked(o, p);
}

static void packet_failed_locked(StreamOut *o, OutChannel *ch, OutPacket *p, int error) {
        ch->broken = true;
        ch->queued -= p->size;
        o->queued_total -= p->size;
        packet_release_locked(o, p);
        if (!o->dead)
                out_conn_failed_locked(o, error, "sending on channel %u failed: %s", ch->index, strerror(-error));
        pthread_cond_broadcast(&o->sup_cond);
}

/* ---- what the destination sends on channel 0 ---- */

/* A complete header in rx->hdr: returns the payload length still to receive (0 when handled). */
static int out_rx_header(StreamOut *o, OutRx *rx) {
        const char *why = NULL;
        int r;

        r = stream_header_decode(rx->hdr, (uint32_t) MIN((size_t) o->announced_payload, sizeof rx->payload),
                                 o->cfg.device_count, &rx->h, &why);
        if (r < 0) {
                pthread_mutex_lock(&o->lock);
                out_fail_locked(o, -EBADMSG, STREAM_ABORT_PROTOCOL, "the destination sent a bad packet header on channel 0: %s",
                                why);
                pthread_mutex_unlock(&o->lock);
                return r;
        }
        if (rx->h.type != STREAM_PACKET_ABORT && rx->h.type != STREAM_PACKET_INITIAL_LOADED &&
            rx->h.type != STREAM_PACKET_COMPLETE) {
                pthread_mutex_lock(&o->lock);
                out_fail_locked(o, -EBADMSG, STREAM_ABORT_PROTOCOL,
                                "the destination sent %s on channel 0, which only a source sends",
                                stream_packet_type_to_string(rx->h.type));
                pthread_mutex_unlock(&o->lock);
                return -EBADMSG;
        }
        return (int) rx->h.length;
}

/* The commit rule (proto/stream-protocol.md §3.1): COMPLETE counts only after SWITCHOVER and
 * every device's END and BLOB went out, and only if it echoes, per device, what was sent. */
static bool check_complete_locked(StreamOut *o, const OutRx *rx, char *why, size_t size) {
        StreamCompleteRecord rec[STREAM_DEVICES_MAX];
        const char *bad = NULL;

        if (!o->switchover_out) {
                (void) snprintf(why, size, "it came before SWITCHOVER was sent");
                return false;
        }
        for (unsigned d = 0; d < o->cfg.device_count; d++)
                if (!o->devices[d].finished || !o->devices[d].last_out) {
                        (void) snprintf(why, size, "it came before the END and BLOB of device %u were sent", d);
                        return false;
                }
        if (stream_complete_decode(rx->payload, rx->h.length, o->cfg.device_count, rec, &bad) < 0) {
                (void) snprintf(why, size, "%s", bad);
                return false;
        }
        for (unsigned d = 0; d < o->cfg.device_count; d++) {
                OutDevice *dv = &o->devices[d];
                uint8_t digest[STREAM_DIGEST_SIZE];

                if (rec[d].data_bytes != dv->data_bytes || rec[d].data_packets != dv->data_packets) {
                        (void) snprintf(why, size,
                                        "device %u: it claims %llu bytes in %llu DATA packets, %llu bytes in %llu were sent",
                                        d, (unsigned long long) rec[d].data_bytes, (unsigned long long) rec[d].data_packets,
                                        (unsigned long long) dv->data_bytes, (unsigned long long) dv->data_packets);
                        return false;
                }
                stream_digest_peek(&dv->digest, digest);
                if (!stream_equal_ct(digest, rec[d].digest, sizeof digest)) {
                        (void) snprintf(why, size, "device %u: the digest of what was received differs from what was sent",
                                        d);
                        return false;
                }
        }
        return true;
}

static void out_rx_packet(StreamOut *o, OutRx *rx) {
        const StreamHeader *h = &rx->h;

        pthread_mutex_lock(&o->lock);
        o->last_progress_usec = stream_now_usec();
        if (o->teardown) {
                pthread_mutex_unlock(&o->lock);
                return;
        }
        switch (h->type) {
        case STREAM_PACKET_INITIAL_LOADED: {
                OutDevice *d = &o->devices[h->device];
                if (!d->initial_done_sent) {
                        out_fail_locked(o, -EBADMSG, STREAM_ABORT_PROTOCOL,
                                        "the destination sent INITIAL_LOADED for device %u before its INITIAL_DONE",
                                        h->device);
                        break;
                }
                if (d->initial_loaded)
                        break; /* a repeat says nothing new */
                d->initial_loaded = true;
                event_queue_pushf(&o->events, STREAM_EVENT_INITIAL_LOADED, h->device, 0, 0, NULL);
                break;
        }
        case STREAM_PACKET_COMPLETE:
                if (!o->completed) {
                        char why[200];

                        if (!check_complete_locked(o, rx, why, sizeof why)) {
                                out_fail_locked(o, -EBADMSG, STREAM_ABORT_PROTOCOL,
                                                "the destination sent a COMPLETE that proves nothing: %s", why);
                                break;
                        }
                        /* The destination has everything, so every finished device went out,
                         * even if its sender has not said so yet: keep the events in order. */
                        for (unsigned d = 0; d < o->cfg.device_count; d++)
                                if (o->devices[d].finished && !o->devices[d].sent_reported) {
                                        o->devices[d].sent_reported = true;
                                        event_queue_pushf(&o->events, STREAM_EVENT_DEVICE_SENT, (int) d, 0, 0, NULL);
                                }
                        o->completed = true;
                        event_queue_pushf(&o->events, STREAM_EVENT_COMPLETE, -1, 0, 0, NULL);
                }
                break;
        case STREAM_PACKET_ABORT: {
                uint32_t reason = (uint32_t) rx->payload[0] | (uint32_t) rx->payload[1] << 8 |
                                  (uint32_t) rx->payload[2] << 16 | (uint32_t) rx->payload[3] << 24;
                char text[STREAM_ABORT_TEXT_MAX + 1];
                size_t n = h->length - 4;

                memcpy(text, rx->payload + 4, n);
                text[n] = '\0';
                for (size_t k = 0; k < n && text[k]; k++)
                        if ((unsigned char) text[k] < 0x20 || text[k] == 0x7f)
                                text[k] = '?';
                o->peer_aborted = true;
                log_info("stream out: the destination aborted (%s): %s", stream_abort_to_string(reason), text);
                event_queue_pushf(&o->events, STREAM_EVENT_PEER_ABORT, -1, 0, reason, "%s", text);
                request_teardown_locked(o, 0, NULL);
                break;
        }
        default:
                break;
        }
        pthread_mutex_unlock(&o->lock);
}

static void out_rx_end(StreamOut *o, int error) {
        pthread_mutex_lock(&o->lock);
        o->rx.done = true;
        pthread_cond_broadcast(&o->sup_cond);
        if (!o->dead && !o->completed && !o->peer_aborted) {
                if (o->deferred) /* no ABORT came: the first failure it is */
                        out_fail_locked(o, o->deferred_error, 0, "%s", o->deferred_text);
                else if (error == 0 || error == -ECONNRESET)
                        out_fail_locked(o, -ECONNRESET, 0, "the destination closed channel 0 before the migration completed");
                else if (error == -EACCES && o->channels[0].tls)
                        out_fail_locked(o, error, 0, "the destination ended channel 0: %s", stream_tls_error(o->channels[0].tls));
                else if (error == -EBADMSG && o->channels[0].tls)
                        out_fail_locked(o, error, STREAM_ABORT_PROTOCOL,
                                        "a TLS record on channel 0 does not authenticate (altered on the way?)");
                else
                        out_fail_locked(o, error, 0, "receiving on channel 0 failed: %s", strerror(-error));
        }
        pthread_mutex_unlock(&o->lock);
}

/* Something arrived on channel c ≥ 1 (res > 0: a byte; 0: its end; < 0: an error). */
static void out_side_end(StreamOut *o, OutChannel *ch, int res) {
        pthread_mutex_lock(&o->lock);
        ch->side_done = true;
        if (!o->dead && !o->completed && !o->peer_aborted) {
                if (res > 0)
                        out_fail_locked(o, -EBADMSG, STREAM_ABORT_PROTOCOL,
                                        "the destination sent data on channel %u; it sends only on channel 0", ch->index);
                else
                        out_conn_failed_locked(o, res < 0 ? res : -ECONNRESET, "the destination closed channel %u%s%s",
                                               ch->index, res < 0 ? ": " : "", res < 0 ? strerror(-res) : "");
        }
        pthread_cond_broadcast(&o->sup_cond);
        pthread_mutex_unlock(&o->lock);
}

/* ---- readers ---- */

/* Waits for a pool buffer; NULL when stopping or the device's command changed. */
static OutPacket *pool_take_locked(StreamOut *o, OutDevice *d, ReadMode mode) {
        for (;;) {
                OutPacket *p;

                if (o->stopping || d->want != mode)
                        return NULL;
                if (o->pool_free) {
                        p = o->pool_free;
                        o->pool_free = p->next;
                        return p;
                }
                if (o->pool_count < o->pool_cap) {
                        p = &o->pool[o->pool_count];
                        p->buf = malloc(STREAM_HEADER_SIZE + (size_t) o->chunk);
                        if (!p->buf) {
                                out_fail_locked(o, -ENOMEM, STREAM_ABORT_INTERNAL, "out of memory for send buffers");
                                return NULL;
                        }
                        p->pooled = true;
                        o->pool_count++;
                        return p;
                }
                pthread_cond_wait(&o->pool_cond, &o->lock);
        }
}

/* Bandwidth limit: a virtual clock shared by all readers. false when interrupted. */
static bool bandwidth_wait_locked(StreamOut *o, OutDevice *d, ReadMode mode, uint64_t bytes) {
        uint64_t now = stream_now_usec(), start, rate = o->cfg.bandwidth_limit;

        if (rate == 0)
                return true;
        /* up to 50 ms of unused allowance carries over */
        start = MAX(o->bw_next_usec, now > 50 * USEC_PER_MSEC ? now - 50 * USEC_PER_MSEC : 0);
        o->bw_next_usec = start + (uint64_t) ((unsigned __int128) bytes * USEC_PER_SEC / rate);
        while (start > (now = stream_now_usec())) {
                if (o->stopping || d->want != mode)
                        return false;
                stream_cond_wait_until(&d->cond, &o->lock, start);
        }
        return true;
}

static int precopy_initial(OutDevice *d, int fd, uint64_t *ret) {
        uint64_t initial = 0, dirty = 0;
        int r;

        r = vfio_dev_precopy_info(d->dev, fd, &initial, &dirty);
        if (r < 0)
                return r;
        *ret = initial;
        return 0;
}

static void *reader_thread(void *arg) {
        OutDevice *d = arg;
        StreamOut *o = d->o;
        uint64_t backoff = 0;

        stream_thread_name("so-read", (int) d->index);
        pthread_mutex_lock(&o->lock);
        for (;;) {
                ReadMode mode;
                OutPacket *p;
                bool initial = false, need_initial_done = false, temporary_end = false;
                uint32_t crc = 0;
                ssize_t n;
                int fd, r = 0;

                if (o->stopping)
                        break;
                if (d->want == READ_IDLE || !o->connected) {
                        if (d->busy) {
                                d->busy = false;
                                pthread_cond_broadcast(&d->cond);
                        }
                        backoff = 0;
                        pthread_cond_wait(&d->cond, &o->lock);
                        continue;
                }
                d->busy = true;
                mode = d->want;
                fd = d->fd;

                if (backoff > 0) {
                        uint64_t until = stream_now_usec() + backoff;
                        while (!o->stopping && d->want == mode && stream_now_usec() < until)
                                stream_cond_wait_until(&d->cond, &o->lock, until);
                        if (o->stopping || d->want != mode)
                                continue;
                }

                p = pool_take_locked(o, d, mode);
                if (!p)
                        continue;
                if (!bandwidth_wait_locked(o, d, mode, o->chunk)) {
                        packet_release_locked(o, p);
                        continue;
                }
                pthread_mutex_unlock(&o->lock);

                if (mode == READ_PRECOPY && !d->initial_done_sent) {
                        if (!d->initial_known) {
                                r = precopy_initial(d, fd, &d->initial_bytes);
                                d->initial_known = r >= 0;
                        }
                        initial = d->initial_bytes > 0;
                }
                if (r >= 0) {
                        n = vfio_dev_data_read(d->dev, fd, p->buf + STREAM_HEADER_SIZE, o->chunk);
                        if (n > 0) {
                                crc = crc32c(p->buf + STREAM_HEADER_SIZE, (size_t) n);
                                if (mode == READ_PRECOPY && !d->initial_done_sent) {
                                        r = precopy_initial(d, fd, &d->initial_bytes);
                                        need_initial_done = r >= 0 && d->initial_bytes == 0;
                                }
                        } else if (n == -ENOMSG || (n == 0 && mode == READ_PRECOPY)) {
                                /* the temporary end of pre-copy (ENOMSG, or 0 from mtty) */
                                temporary_end = true;
                                if (mode == READ_STOPCOPY)
                                        r = -ENOMSG;
                                else if (!d->initial_done_sent) {
                                        r = precopy_initial(d, fd, &d->initial_bytes);
                                        need_initial_done = r >= 0 && d->initial_bytes == 0;
                                }
                        } else if (n < 0)
                                r = (int) n;
                } else
                        n = r;

                pthread_mutex_lock(&o->lock);
                if (r < 0) {
                        packet_release_locked(o, p);
                        if (r == -ENOMSG)
                                out_fail_locked(o, r, STREAM_ABORT_DEVICE,
                                                "device %u (%s) reported a temporary end of data during stop-copy",
                                                d->index, d->dev->name);
                        else
                                out_fail_locked(o, r, STREAM_ABORT_DEVICE, "reading the migration data of device %u (%s) failed: %s",
                                                d->index, d->dev->name, strerror(-r));
                        break;
                }
                if (o->stopping) {
                        packet_release_locked(o, p);
                        break;
                }
                if (n > 0) {
                        uint8_t flags = 0;
                        if (mode == READ_PRECOPY)
                                flags = STREAM_DATA_FLAG_PRECOPY | (initial ? STREAM_DATA_FLAG_INITIAL : 0);
                        p->type = STREAM_PACKET_DATA;
                        p->device = (int) d->index;
                        p->payload = (uint32_t) n;
                        p->size = STREAM_HEADER_SIZE + (size_t) n;
                        p->last_of_device = false;
                        enqueue_ordered_locked(o, d, p, flags, crc);
                        d->data_bytes += (uint64_t) n;
                        d->data_packets++;
                        backoff = 0;
                } else
                        packet_release_locked(o, p);

                if (need_initial_done) {
                        r = enqueue_small_ordered_locked(o, d, STREAM_PACKET_INITIAL_DONE, NULL, 0, false);
                        if (r < 0) {
                                out_fail_locked(o, r, STREAM_ABORT_INTERNAL, "out of memory");
                                break;
                        }
                        d->initial_done_sent = true;
                }

                if (temporary_end)
                        backoff = backoff ? MIN(backoff * 2, 100 * USEC_PER_MSEC) : 10 * USEC_PER_MSEC;
                else if (n == 0) {
                        /* the permanent end of stop-copy: END, then the BLOB */
                        uint8_t end[STREAM_END_PAYLOAD_SIZE];
                        uint64_t bytes = htole64(d->data_bytes), packets = htole64(d->data_packets);

                        memcpy(end, &bytes, 8);
                        memcpy(end + 8, &packets, 8);
                        /* Always a BLOB, empty when the device has none, right behind END: the
                         * destination cannot tell "no blob" from "not yet", so it waits for one
                         * before it calls the device done (and its job commits). */
                        r = enqueue_small_ordered_locked(o, d, STREAM_PACKET_END, end, sizeof end, false);
                        if (r >= 0)
                                r = enqueue_small_ordered_locked(o, d, STREAM_PACKET_BLOB, d->blob,
                                                                 (uint32_t) (d->has_blob ? d->blob_size : 0), true);
                        if (r < 0) {
                                out_fail_locked(o, r, STREAM_ABORT_INTERNAL, "out of memory");
                                break;
                        }
                        d->finished = true;
                        d->want = READ_IDLE;
                }
        }
        d->busy = false;
        d->exited = true;
        pthread_cond_broadcast(&d->cond);
        pthread_mutex_unlock(&o->lock);
        return NULL;
}

/* ---- senders: io_uring ---- */

/* The ring is sized for everything it can have in flight; should the SQ still be full, submit. */
static struct io_uring_sqe *ring_sqe(struct io_uring *ring) {
        struct io_uring_sqe *sqe;

        while (!(sqe = io_uring_get_sqe(ring)))
                (void) io_uring_submit(ring);
        return sqe;
}

static void ring_prep_send(OutRing *rg, OutChannel *ch) {
        struct io_uring_sqe *sqe = ring_sqe(&rg->ring);

        /* MSG_WAITALL makes io_uring retry a short send itself; it also reaches the socket's
         * sendmsg, which TCP ignores but kernel TLS refuses (EOPNOTSUPP: tls_sw_sendmsg takes
         * only MSG_MORE, MSG_DONTWAIT, MSG_NOSIGNAL and MSG_EOR). There short sends come back
         * here for the rest. */
        io_uring_prep_send(sqe, ch->fd, ch->inflight->buf + ch->sent, ch->inflight->size - ch->sent,
                           ch->tls ? MSG_NOSIGNAL : MSG_NOSIGNAL | MSG_WAITALL);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_SEND, ch->index));
        rg->outstanding++;
}

static void ring_prep_recv(OutRing *rg, StreamOut *o) {
        struct io_uring_sqe *sqe = ring_sqe(&rg->ring);
        OutRx *rx = &o->rx;
        uint8_t *buf = rx->in_payload ? rx->payload : rx->hdr;
        size_t need = rx->in_payload ? rx->h.length : STREAM_HEADER_SIZE;

        io_uring_prep_recv(sqe, o->channels[0].fd, buf + rx->got, need - rx->got, MSG_WAITALL);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_RECV, 0));
        rx->posted = true;
        rg->outstanding++;
}

static void ring_prep_side_recv(OutRing *rg, OutChannel *ch) {
        struct io_uring_sqe *sqe = ring_sqe(&rg->ring);

        io_uring_prep_recv(sqe, ch->fd, &ch->side_byte, 1, 0);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_RECV, ch->index));
        ch->side_posted = true;
        rg->outstanding++;
}

static void ring_prep_wake(OutRing *rg) {
        struct io_uring_sqe *sqe = ring_sqe(&rg->ring);

        io_uring_prep_read(sqe, rg->wake_fd, &rg->wake_buf, sizeof rg->wake_buf, 0);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_WAKE, 0));
        rg->outstanding++;
}

/* Channel 0's receive completed with res. */
static void ring_on_recv(OutRing *rg, StreamOut *o, int res) {
        OutRx *rx = &o->rx;
        int k;

        rx->posted = false;
        if (res <= 0) {
                if (res == -EINTR || res == -EAGAIN)
                        return; /* posted again */
                out_rx_end(o, res);
                return;
        }
        rx->got += (size_t) res;
        if (!rx->in_payload) {
                if (rx->got < STREAM_HEADER_SIZE)
                        return;
                k = out_rx_header(o, rx);
                rx->got = 0;
                if (k < 0) {
                        rx->done = true;
                        return;
                }
                if (k > 0) {
                        rx->in_payload = true;
                        return;
                }
                out_rx_packet(o, rx);
                return;
        }
        if (rx->got < rx->h.length)
                return;
        out_rx_packet(o, rx);
        rx->in_payload = false;
        rx->got = 0;
}

typedef struct SendDone {
        OutChannel *ch;
        int error;
} SendDone;

static void *out_ring_thread(void *arg) {
        OutRing *rg = arg;
        StreamOut *o = rg->o;
        SendDone done[STREAM_CHANNELS_MAX];
        unsigned entries = 3 * (o->n_channels / o->n_rings + 1) + 8;
        int r;

        stream_thread_name("so-ring", (int) rg->index);
        r = stream_ring_init(&rg->ring, entries);
        if (r < 0) {
                pthread_mutex_lock(&o->lock);
                out_fail_locked(o, r, STREAM_ABORT_INTERNAL, "cannot set up an io_uring for sending: %s", strerror(-r));
                o->sock_threads--;
                pthread_cond_broadcast(&o->sup_cond);
                pthread_mutex_unlock(&o->lock);
                return NULL;
        }
        rg->ring_ok = true;
        ring_prep_wake(rg);

        for (;;) {
                struct io_uring_cqe *cqe;
                unsigned head, seen = 0, n_done = 0;
                uint64_t timer = 0;
                bool post_recv = false;
                OutChannel *side[STREAM_CHANNELS_MAX];
                unsigned n_side = 0;
                int recv_res[STREAM_CHANNELS_MAX];
                unsigned recv_ch[STREAM_CHANNELS_MAX], n_recv = 0;

                pthread_mutex_lock(&o->lock);
                if (o->dead) {
                        pthread_mutex_unlock(&o->lock);
                        break;
                }
                if (o->connected) {
                        uint64_t now = 0;
                        for (unsigned c = rg->index; c < o->n_channels; c += o->n_rings) {
                                OutChannel *ch = &o->channels[c];
                                uint64_t rate = atomic_load(&ch->rate);
                                if (ch->inflight || ch->broken)
                                        continue;
                                if (rate > 0) {
                                        now = now ?: stream_now_usec();
                                        if (now < ch->next_usec && (ch->head || ch->urgent_head)) {
                                                timer = timer ? MIN(timer, ch->next_usec) : ch->next_usec;
                                                continue;
                                        }
                                }
                                ch->inflight = channel_pop_locked(o, ch);
                                if (!ch->inflight) {
                                        ch->idle = true;
                                        continue;
                                }
                                ch->sent = 0;
                                if (rate > 0)
                                        ch->next_usec = MAX(ch->next_usec, now) +
                                                        (uint64_t) ((unsigned __int128) ch->inflight->size * USEC_PER_SEC / rate);
                                ring_prep_send(rg, ch);
                        }
                        post_recv = rg->index == 0 && !o->rx.posted && !o->rx.done;
                        for (unsigned c = rg->index; c < o->n_channels; c += o->n_rings)
                                if (c > 0 && !o->channels[c].side_posted && !o->channels[c].side_done)
                                        side[n_side++] = &o->channels[c];
                }
                pthread_mutex_unlock(&o->lock);
                if (post_recv)
                        ring_prep_recv(rg, o);
                for (unsigned k = 0; k < n_side; k++)
                        ring_prep_side_recv(rg, side[k]);

                if (timer) {
                        uint64_t now = stream_now_usec();
                        struct __kernel_timespec ts = {
                                .tv_sec = (long long) ((timer > now ? timer - now : 0) / USEC_PER_SEC),
                                .tv_nsec = (long long) ((timer > now ? timer - now : 0) % USEC_PER_SEC) * 1000,
                        };
                        r = io_uring_submit_and_wait_timeout(&rg->ring, &cqe, 1, &ts, NULL);
                } else
                        r = io_uring_submit_and_wait(&rg->ring, 1);
                if (r < 0 && r != -EINTR && r != -ETIME && r != -EBUSY && r != -EAGAIN) {
                        pthread_mutex_lock(&o->lock);
                        out_fail_locked(o, r, STREAM_ABORT_INTERNAL, "io_uring_enter failed: %s", strerror(-r));
                        pthread_mutex_unlock(&o->lock);
                        break;
                }

                io_uring_for_each_cqe(&rg->ring, head, cqe) {
                        unsigned op = (unsigned) (cqe->user_data >> 32), c = (unsigned) (cqe->user_data & 0xffffffffu);
                        int res = cqe->res;

                        seen++;
                        rg->outstanding--;
                        switch (op) {
                        case OP_WAKE:
                                pthread_mutex_lock(&o->lock);
                                rg->wake_pending = false;
                                pthread_mutex_unlock(&o->lock);
                                ring_prep_wake(rg);
                                break;
                        case OP_SEND: {
                                OutChannel *ch = &o->channels[c];
                                if (res == -EINTR || res == -EAGAIN) {
                                        ring_prep_send(rg, ch);
                                        break;
                                }
                                if (res < 0) {
                                        done[n_done++] = (SendDone) { .ch = ch, .error = res };
                                        break;
                                }
                                ch->sent += (size_t) res;
                                if (res == 0 || ch->sent < ch->inflight->size) {
                                        if (res == 0) {
                                                done[n_done++] = (SendDone) { .ch = ch, .error = -EPIPE };
                                                break;
                                        }
                                        ring_prep_send(rg, ch); /* a short send: the rest */
                                        break;
                                }
                                done[n_done++] = (SendDone) { .ch = ch };
                                break;
                        }
                        case OP_RECV:
                                /* after this batch's sends: a reply must not overtake the
                                 * completion of what it answers */
                                recv_ch[n_recv] = c;
                                recv_res[n_recv++] = res;
                                break;
                        default:
                                break;
                        }
                }
                io_uring_cq_advance(&rg->ring, seen);

                if (n_done > 0) {
                        pthread_mutex_lock(&o->lock);
                        for (unsigned k = 0; k < n_done; k++) {
                                OutChannel *ch = done[k].ch;
                                OutPacket *p = TAKE_PTR(ch->inflight);
                                if (done[k].error < 0)
                                        packet_failed_locked(o, ch, p, done[k].error);
                                else
                                        packet_sent_locked(o, ch, p);
                        }
                        pthread_mutex_unlock(&o->lock);
                }
                for (unsigned k = 0; k < n_recv; k++) {
                        if (recv_ch[k] == 0) {
                                ring_on_recv(rg, o, recv_res[k]);
                                continue;
                        }
                        o->channels[recv_ch[k]].side_posted = false;
                        if (recv_res[k] == -EINTR || recv_res[k] == -EAGAIN)
                                continue; /* posted again */
                        out_side_end(o, &o->channels[recv_ch[k]], recv_res[k]);
                }
        }

        /* Everything still in flight ends: cancel it and wait until the kernel lets go of our
         * buffers. The sockets are shut down by now, so nothing blocks for long. */
        if (rg->outstanding > 0) {
                struct io_uring_sqe *sqe = io_uring_get_sqe(&rg->ring);
                if (sqe) {
                        io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
                        io_uring_sqe_set_data64(sqe, ud_pack(OP_CANCEL, 0));
                        rg->outstanding++;
                }
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
        /* Packets that were in flight on our channels go back (free() releases the rest). */
        pthread_mutex_lock(&o->lock);
        for (unsigned c = rg->index; c < o->n_channels; c += o->n_rings) {
                OutChannel *ch = &o->channels[c];
                if (ch->inflight) {
                        OutPacket *p = TAKE_PTR(ch->inflight);
                        ch->queued -= p->size;
                        o->queued_total -= p->size;
                        packet_release_locked(o, p);
                }
        }
        o->sock_threads--;
        pthread_cond_broadcast(&o->sup_cond);
        pthread_mutex_unlock(&o->lock);
        return NULL;
}

/* ---- senders: blocking ---- */

static void *out_sender_thread(void *arg) {
        OutChannel *ch = arg;
        StreamOut *o = ch->o;

        stream_thread_name("so-send", (int) ch->index);
        pthread_mutex_lock(&o->lock);
        for (;;) {
                uint64_t rate = atomic_load(&ch->rate);
                OutPacket *p;
                int r;

                if (o->dead || ch->broken)
                        break;
                if (!o->connected) {
                        pthread_cond_wait(&ch->cond, &o->lock);
                        continue;
                }
                if (rate > 0 && (ch->head || ch->urgent_head)) {
                        uint64_t now = stream_now_usec();
                        if (now < ch->next_usec) {
                                stream_cond_wait_until(&ch->cond, &o->lock, ch->next_usec);
                                continue;
                        }
                }
                p = channel_pop_locked(o, ch);
                if (!p) {
                        ch->idle = true;
                        pthread_cond_wait(&ch->cond, &o->lock);
                        continue;
                }
                if (rate > 0)
                        ch->next_usec = MAX(ch->next_usec, stream_now_usec()) +
                                        (uint64_t) ((unsigned __int128) p->size * USEC_PER_SEC / rate);
                ch->inflight = p;
                pthread_mutex_unlock(&o->lock);
                r = stream_chan_send_blocking(ch->fd, ch->tls, p->buf, p->size);
                pthread_mutex_lock(&o->lock);
                ch->inflight = NULL;
                if (r < 0)
                        packet_failed_locked(o, ch, p, r);
                else
                        packet_sent_locked(o, ch, p);
        }
        o->sock_threads--;
        pthread_cond_broadcast(&o->sup_cond);
        pthread_mutex_unlock(&o->lock);
        return NULL;
}

/* Waits until channel 0 has something to read; meanwhile any byte or end on another channel is
 * reported. false when the receiving is over. */
static bool wait_channel0(StreamOut *o) {
        for (;;) {
                struct pollfd p[STREAM_CHANNELS_MAX];
                StreamTlsSession *tls[STREAM_CHANNELS_MAX];
                unsigned map[STREAM_CHANNELS_MAX], n = 0;
                bool dead;

                pthread_mutex_lock(&o->lock);
                dead = o->dead;
                for (unsigned c = 0; c < o->n_channels && !dead; c++)
                        if (c == 0 || !o->channels[c].side_done) {
                                map[n] = c;
                                tls[n] = o->channels[c].tls;
                                p[n++] = (struct pollfd) { .fd = o->channels[c].fd, .events = POLLIN };
                        }
                pthread_mutex_unlock(&o->lock);
                if (dead)
                        return false;
                /* records GnuTLS already read and opened: poll(2) cannot see them */
                if (tls[0] && stream_tls_pending(tls[0]))
                        return true;
                if (poll(p, n, -1) < 0) {
                        if (errno == EINTR)
                                continue;
                        return true; /* let the blocking receive report it */
                }
                for (unsigned k = 1; k < n; k++)
                        if (p[k].revents) {
                                uint8_t b;
                                ssize_t got;

                                if (tls[k]) {
                                        /* a record that is not data (an alert) is not a violation */
                                        got = stream_tls_recv(tls[k], &b, 1, true);
                                        if (got == -EAGAIN)
                                                continue;
                                        if (got == -ECONNRESET)
                                                got = 0;
                                } else {
                                        got = recv(p[k].fd, &b, 1, MSG_DONTWAIT);
                                        if (got < 0 && (errno == EAGAIN || errno == EINTR))
                                                continue;
                                        if (got < 0)
                                                got = -errno;
                                }
                                out_side_end(o, &o->channels[map[k]], got > 0 ? 1 : (int) got);
                        }
                if (p[0].revents)
                        return true;
        }
}

static void *out_receiver_thread(void *arg) {
        StreamOut *o = arg;
        OutRx *rx = &o->rx;
        StreamTlsSession *tls;
        int fd, r;

        stream_thread_name("so-recv", (int) 0);
        pthread_mutex_lock(&o->lock);
        while (!o->connected && !o->dead)
                pthread_cond_wait(&o->channels[0].cond, &o->lock);
        fd = o->channels[0].fd;
        tls = o->channels[0].tls;
        pthread_mutex_unlock(&o->lock);
        if (fd < 0) {
                sock_thread_exit(o);
                return NULL;
        }

        for (;;) {
                if (!wait_channel0(o))
                        break;
                r = stream_chan_recv_exact(fd, tls, rx->hdr, STREAM_HEADER_SIZE);
                if (r < 0) {
                        out_rx_end(o, r);
                        break;
                }
                r = out_rx_header(o, rx);
                if (r < 0)
                        break;
                if (r > 0) {
                        r = stream_chan_recv_exact(fd, tls, rx->payload, rx->h.length);
                        if (r < 0) {
                                out_rx_end(o, r);
                                break;
                        }
                }
                out_rx_packet(o, rx);
        }
        sock_thread_exit(o);
        return NULL;
}

/* ---- setup: connect and handshake ---- */

static int setup_socket(StreamOut *o, int *ret_fd) {
        _cleanup_close_ int fd = -EBADF;
        int one = 1, sndbuf = stream_test_get_sndbuf(), rcvbuf = stream_test_get_rcvbuf();

        fd = socket(o->cfg.peer.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_TCP);
        if (fd < 0)
                return -errno;
        /* small control packets (END, SWITCHOVER) must not wait for an ACK */
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        stream_socket_set_keepalive(fd);
        if (sndbuf > 0)
                (void) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
        if (rcvbuf > 0)
                (void) setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
        if (connect(fd, (const struct sockaddr *) &o->cfg.peer, o->cfg.peer_len) < 0 && errno != EINPROGRESS)
                return -errno;
        *ret_fd = TAKE_FD(fd);
        return 0;
}

static int connect_all(StreamOut *o, int *fds, ErrorMessage *err) {
        uint64_t deadline = stream_now_usec() + STREAM_CONNECT_TIMEOUT_USEC;
        bool pending[STREAM_CHANNELS_MAX] = {};
        unsigned left = 0;
        char peer[128] = "?";
        int r;

        (void) stream_format_address((const struct sockaddr *) &o->cfg.peer, o->cfg.peer_len, peer, sizeof peer);
        for (unsigned c = 0; c < o->n_channels; c++) {
                r = setup_socket(o, &fds[c]);
                if (r < 0)
                        return error_setf(err, r, "cannot connect channel %u to %s: %m", c, peer);
                pending[c] = true;
                left++;
        }
        while (left > 0) {
                struct pollfd p[STREAM_CHANNELS_MAX + 1];
                unsigned map[STREAM_CHANNELS_MAX], n = 0;
                uint64_t now = stream_now_usec();

                if (now >= deadline)
                        return error_setf(err, -ETIMEDOUT, "cannot connect to %s: timed out after %llu s", peer,
                                          (unsigned long long) (STREAM_CONNECT_TIMEOUT_USEC / USEC_PER_SEC));
                for (unsigned c = 0; c < o->n_channels; c++)
                        if (pending[c]) {
                                map[n] = c;
                                p[n++] = (struct pollfd) { .fd = fds[c], .events = POLLOUT };
                        }
                p[n] = (struct pollfd) { .fd = o->setup_wake_fd, .events = POLLIN };
                r = poll(p, n + 1, (int) ((deadline - now + 999) / 1000));
                if (r < 0 && errno != EINTR)
                        return error_setf(err, -errno, "poll: %m");
                if (p[n].revents & POLLIN)
                        return -ECANCELED;
                for (unsigned k = 0; r > 0 && k < n; k++) {
                        int so_error = 0;
                        socklen_t len = sizeof so_error;
                        if (!p[k].revents)
                                continue;
                        if (getsockopt(fds[map[k]], SOL_SOCKET, SO_ERROR, &so_error, &len) < 0)
                                so_error = errno;
                        if (so_error != 0)
                                return error_setf(err, -so_error, "cannot connect channel %u to %s: %m", map[k], peer);
                        pending[map[k]] = false;
                        left--;
                }
        }
        return 0;
}

/* A failure to read the WELCOME, said as the peer would have it understood. */
static int welcome_read_error(StreamOut *o, unsigned c, StreamTlsSession *tls, int r, ErrorMessage *err) {
        if (r == -ETIMEDOUT)
                return error_setf(err, r, "no WELCOME on channel %u within %llu s", c,
                                  (unsigned long long) (STREAM_HANDSHAKE_TIMEOUT_USEC / USEC_PER_SEC));
        /* TLS 1.3: the destination checks our certificate after our side of the handshake
         * ended, and says no with an alert we read here */
        if (r == -EACCES && tls)
                return error_setf(err, r, "the destination refused the TLS connection on channel %u: %s", c,
                                  stream_tls_error(tls));
        if (r == -EBADMSG && tls)
                return error_setf(err, r, "a TLS record on channel %u does not authenticate", c);
        return error_setf(err, r, "reading the WELCOME on channel %u failed: %m", c);
}

/*
 * HELLO on every channel, then per channel: the WELCOME, whose proof must show the destination
 * knows the token (MAC_dst over this channel's whole handshake), and our PROOF in return. No
 * device state moves before every channel passed (proto/stream-protocol.md §1).
 */
static int handshake_all(StreamOut *o, int *fds, StreamTlsSession **tls, uint32_t *ret_max_payload, ErrorMessage *err) {
        uint64_t deadline = stream_now_usec() + STREAM_HANDSHAKE_TIMEOUT_USEC;
        _cleanup_free_ uint8_t *hellos = NULL;
        StreamHello h = {
                .major = STREAM_PROTOCOL_MAJOR,
                .minor = STREAM_PROTOCOL_MINOR,
                .channel_count = (uint16_t) o->n_channels,
                .device_count = o->cfg.device_count,
                .flags = o->cfg.precopy ? STREAM_HELLO_FLAG_PRECOPY : 0,
                .max_payload = o->announced_payload,
        };
        uint8_t nonces[STREAM_CHANNELS_MAX][STREAM_NONCE_SIZE];
        uint32_t max_payload = STREAM_PAYLOAD_MAX;
        size_t size = stream_hello_size(o->cfg.device_count);
        int r;

        memcpy(h.job_id, o->job_id, STREAM_JOB_ID_SIZE);
        memcpy(h.devices, o->cfg.infos, sizeof(StreamDeviceInfo) * o->cfg.device_count);
        hellos = malloc(size * o->n_channels);
        if (!hellos)
                return -ENOMEM;
        r = stream_random(&nonces[0][0], sizeof nonces[0] * o->n_channels);
        if (r < 0)
                return error_setf(err, r, "cannot make the handshake's nonces: %m");
        for (unsigned c = 0; c < o->n_channels; c++) {
                h.channel_index = (uint16_t) c;
                memcpy(h.nonce, nonces[c], STREAM_NONCE_SIZE);
                r = stream_hello_encode(&h, hellos + c * size, size);
                if (r < 0)
                        return error_setf(err, r, "cannot encode the HELLO (bad device information?)");
                r = stream_chan_send_all(fds[c], tls[c], hellos + c * size, size, deadline, o->setup_wake_fd);
                if (r < 0 && r != -ECANCELED && tls[c]) {
                        /* the destination refused our certificate after our handshake ended
                         * (TLS 1.3), and hung up: its alert says why */
                        uint8_t b[2]; /* an alert's size: kTLS hands it over whole or not at all */
                        int k = stream_chan_recv_all(fds[c], tls[c], b, sizeof b, stream_now_usec() + 500 * USEC_PER_MSEC,
                                                     o->setup_wake_fd);
                        if (k == -EACCES)
                                return welcome_read_error(o, c, tls[c], k, err);
                }
                if (r < 0)
                        return r == -ECANCELED ? r : error_setf(err, r, "sending the HELLO on channel %u failed: %m", c);
        }

        for (unsigned c = 0; c < o->n_channels; c++) {
                uint8_t in[STREAM_WELCOME_SIZE + STREAM_WELCOME_PROOF_SIZE], out[STREAM_PROOF_SIZE];
                StreamWelcome w;
                StreamProof proof;
                StreamTranscript t;
                const char *why = NULL;

                r = stream_chan_recv_all(fds[c], tls[c], in, STREAM_WELCOME_SIZE, deadline, o->setup_wake_fd);
                if (r == -ECANCELED)
                        return r;
                if (r < 0)
                        return welcome_read_error(o, c, tls[c], r, err);
                r = stream_welcome_decode(in, &w, &why);
                /* -EPROTO: the destination said no; -EBADMSG: it broke the protocol */
                if (r < 0)
                        return error_setf(err, -EBADMSG, "the destination sent a bad WELCOME on channel %u: %s", c, why);
                if (w.status != STREAM_ACCEPTED)
                        return error_setf(err, -EPROTO, "the destination refused channel %u: %s%s%s", c,
                                          stream_refusal_to_string(w.status), w.reason[0] ? ": " : "", w.reason);
                if (w.major != STREAM_PROTOCOL_MAJOR)
                        return error_setf(err, -EPROTO, "the destination speaks protocol version %u.%u", w.major,
                                          w.minor);
                if (w.channel_index != c)
                        return error_setf(err, -EBADMSG, "the destination's WELCOME on channel %u names channel %u", c,
                                          w.channel_index);
                r = stream_chan_recv_all(fds[c], tls[c], in + STREAM_WELCOME_SIZE, STREAM_WELCOME_PROOF_SIZE, deadline,
                                         o->setup_wake_fd);
                if (r == -ECANCELED)
                        return r;
                if (r < 0)
                        return error_setf(err, -EBADMSG,
                                          "the destination accepted channel %u without proving it knows the job's token (%s)",
                                          c, r == -ETIMEDOUT ? "no proof in time" : "no proof before the connection ended");
                stream_welcome_decode_proof(in + STREAM_WELCOME_SIZE, &w);
                t = (StreamTranscript) {
                        .hello = hellos + c * size,
                        .hello_size = size,
                        .welcome = in,
                        .nonce_src = nonces[c],
                        .nonce_dst = w.nonce,
                        .channel_index = (uint16_t) c,
                        .channel_count = (uint16_t) o->n_channels,
                        .binding = o->channels[c].binding,
                };
                if (!stream_proof_verify(o->cfg.token, STREAM_PROOF_DST, &t, w.mac))
                        return error_setf(err, -EBADMSG,
                                          "the destination's proof on channel %u is wrong: it does not know the job's token "
                                          "(or the handshake was tampered with); no device state was sent", c);
                r = stream_proof_mac(o->cfg.token, STREAM_PROOF_SRC, &t, proof.mac);
                if (r < 0)
                        return error_setf(err, r, "cannot compute the proof for channel %u", c);
                stream_proof_encode(&proof, out);
                r = stream_chan_send_all(fds[c], tls[c], out, sizeof out, deadline, o->setup_wake_fd);
                if (r < 0)
                        return r == -ECANCELED ? r : error_setf(err, r, "sending the PROOF on channel %u failed: %m", c);
                max_payload = MIN(max_payload, w.max_payload);
        }
        *ret_max_payload = max_payload;
        return 0;
}

/* The TLS handshake failed because the destination answered in cleartext: a daemon without
 * credentials refuses with a cleartext WELCOME, whose reason we read and pass on. */
static int not_tls_error(StreamOut *o, unsigned c, int fd, StreamTlsSession *tls, ErrorMessage *err) {
        uint8_t in[STREAM_WELCOME_SIZE];
        const uint8_t *prefix;
        size_t n = stream_tls_peer_prefix(tls, &prefix);
        StreamWelcome w;
        const char *why = NULL;

        if (n <= sizeof in && memcmp(prefix, STREAM_WELCOME_MAGIC, MIN(n, strlen(STREAM_WELCOME_MAGIC))) == 0) {
                memcpy(in, prefix, n);
                if (stream_recv_all(fd, in + n, sizeof in - n, stream_now_usec() + USEC_PER_SEC, o->setup_wake_fd) >= 0 &&
                    stream_welcome_decode(in, &w, &why) >= 0 && w.status != STREAM_ACCEPTED)
                        return error_setf(err, -EPROTONOSUPPORT,
                                          "the destination does not speak TLS: it refused channel %u in cleartext: %s%s%s", c,
                                          stream_refusal_to_string(w.status), w.reason[0] ? ": " : "", w.reason);
        }
        return error_setf(err, -EPROTONOSUPPORT, "the destination does not speak TLS: it answered channel %u in cleartext", c);
}

/* TLS on every channel, one after the other (a handshake costs about a millisecond). */
static int tls_all(StreamOut *o, int *fds, StreamTlsSession **tls, StreamTransport *ret, ErrorMessage *err) {
        uint64_t deadline = stream_now_usec() + STREAM_HANDSHAKE_TIMEOUT_USEC;
        StreamTransport first = STREAM_TRANSPORT_CLEARTEXT;
        int r;

        if (!o->cfg.tls) {
                *ret = STREAM_TRANSPORT_CLEARTEXT;
                return 0;
        }
        for (unsigned c = 0; c < o->n_channels; c++) {
                ErrorMessage why = {};
                StreamTransport t;

                r = stream_tls_session_new(o->cfg.tls, fds[c], false, &tls[c], &why);
                if (r >= 0)
                        r = stream_tls_handshake(tls[c], deadline, o->setup_wake_fd, &why);
                if (r == -ECANCELED)
                        return r;
                if (r == -EPROTONOSUPPORT)
                        return not_tls_error(o, c, fds[c], tls[c], err);
                if (r < 0)
                        return error_setf(err, r, "TLS on channel %u: %s", c, why.text);
                r = stream_tls_start(tls[c], &t, &why);
                if (r < 0)
                        return error_setf(err, r, "TLS on channel %u: %s", c, why.text);
                if (c == 0)
                        first = t;
                else if (t != first)
                        return error_setf(err, -EIO, "TLS on channel %u runs %s, channel 0 %s", c, stream_transport_to_string(t),
                                          stream_transport_to_string(first));
        }
        /* the socket threads were chosen before: io_uring only moves plain bytes */
        if (o->use_uring && first != STREAM_TRANSPORT_TLS_KERNEL)
                return error_setf(err, -EIO, "kernel TLS could not take the channels, and io_uring needs it");
        log_info("stream out: TLS to %s (%s), %s", stream_tls_peer_name(tls[0]), stream_tls_cipher_name(tls[0]),
                 first == STREAM_TRANSPORT_TLS_KERNEL ? "records in the kernel (kTLS)" : "records in user space (GnuTLS)");
        *ret = first;
        return 0;
}

static void *setup_thread(void *arg) {
        StreamOut *o = arg;
        int fds[STREAM_CHANNELS_MAX];
        StreamTlsSession *tls[STREAM_CHANNELS_MAX] = {};
        StreamTransport transport = STREAM_TRANSPORT_CLEARTEXT;
        ErrorMessage err = {};
        uint32_t max_payload = 0;
        int r;

        stream_thread_name("so-setup", -1);
        for (unsigned c = 0; c < STREAM_CHANNELS_MAX; c++)
                fds[c] = -EBADF;

        r = connect_all(o, fds, &err);
        if (r >= 0)
                r = tls_all(o, fds, tls, &transport, &err);
        for (unsigned c = 0; r >= 0 && c < o->n_channels; c++) {
                r = stream_channel_binding(tls[c], o->channels[c].binding);
                if (r < 0)
                        r = error_setf(&err, r, "TLS on channel %u: cannot export the channel binding", c);
        }
        if (r >= 0)
                r = handshake_all(o, fds, tls, &max_payload, &err);
        if (r >= 0) {
                for (unsigned d = 0; d < o->cfg.device_count; d++)
                        if (o->devices[d].has_blob && o->devices[d].blob_size > max_payload) {
                                r = error_setf(&err, -E2BIG,
                                               "the destination takes at most %u bytes per packet, the blob of device %u has %zu",
                                               max_payload, d, o->devices[d].blob_size);
                                break;
                        }
        }
        /* blocking from now on: the blocking senders need it; io_uring polls sockets anyway */
        for (unsigned c = 0; r >= 0 && c < o->n_channels; c++)
                r = stream_fd_set_nonblock(fds[c], false);

        pthread_mutex_lock(&o->lock);
        if (r < 0 || o->stopping) {
                for (unsigned c = 0; c < o->n_channels; c++) {
                        tls[c] = stream_tls_session_free(tls[c]);
                        fds[c] = safe_close(fds[c]);
                }
                if (r < 0 && r != -ECANCELED)
                        out_fail_locked(o, r, 0, "%s", err.text[0] ? err.text : strerror(-r));
                pthread_mutex_unlock(&o->lock);
                return NULL;
        }
        for (unsigned c = 0; c < o->n_channels; c++) {
                o->channels[c].fd = fds[c];
                o->channels[c].tls = tls[c];
        }
        o->transport = transport;
        o->chunk = MIN(o->cfg.chunk, max_payload);
        o->connected = true;
        atomic_store(&o->counters.channels_up, o->n_channels);
        if (o->use_uring)
                log_info("stream out: %u channel%s up (%s, io_uring, %u ring thread%s), %u-byte packets", o->n_channels,
                         o->n_channels == 1 ? "" : "s", stream_transport_to_string(transport), o->n_rings,
                         o->n_rings == 1 ? "" : "s", o->chunk);
        else
                log_info("stream out: %u channel%s up (%s, blocking I/O, a thread per channel), %u-byte packets",
                         o->n_channels, o->n_channels == 1 ? "" : "s", stream_transport_to_string(transport), o->chunk);
        {
                char peer[128] = "";
                (void) stream_format_address((const struct sockaddr *) &o->cfg.peer, o->cfg.peer_len, peer, sizeof peer);
                event_queue_pushf(&o->events, STREAM_EVENT_CONNECTED, -1, 0, 0, "%s", peer);
        }
        /* wake the readers, senders and rings */
        for (unsigned d = 0; d < o->cfg.device_count; d++)
                pthread_cond_broadcast(&o->devices[d].cond);
        for (unsigned c = 0; c < o->n_channels; c++)
                pthread_cond_broadcast(&o->channels[c].cond);
        for (unsigned k = 0; o->rings && k < o->n_rings; k++) {
                uint64_t one = 1;
                o->rings[k].wake_pending = true;
                (void) !write(o->rings[k].wake_fd, &one, sizeof one);
        }
        pthread_mutex_unlock(&o->lock);
        return NULL;
}

/* ---- supervisor ---- */

static void *supervisor_thread(void *arg) {
        StreamOut *o = arg;

        stream_thread_name("so-sup", -1);
        pthread_mutex_lock(&o->lock);
        while (!o->teardown) {
                uint64_t deadline = 0, now = stream_now_usec();

                if (o->deferred && !o->completed) {
                        if (now >= o->deferred_deadline) {
                                out_fail_locked(o, o->deferred_error, 0, "%s", o->deferred_text);
                                break;
                        }
                        deadline = o->deferred_deadline;
                }
                /* Stalled: something waits to go out and no send completes, or everything went
                 * out and the destination does not answer. A pre-copy with nothing to send is
                 * not a stall. */
                if (o->connected && !o->completed && (o->queued_total > 0 || o->handed_all)) {
                        uint64_t stall = o->last_progress_usec + o->stall_usec;
                        if (now >= stall) {
                                out_fail_locked(o, -ETIMEDOUT, STREAM_ABORT_TIMEOUT,
                                                o->handed_all ? "stalled: everything was sent, and the destination did not confirm the commit within %llu s"
                                                              : "stalled: nothing could be sent for %llu s (the destination stopped reading)",
                                                (unsigned long long) ((o->stall_usec + USEC_PER_SEC - 1) / USEC_PER_SEC));
                                break;
                        }
                        deadline = deadline ? MIN(deadline, stall) : stall;
                }
                o->sup_unarmed = deadline == 0;
                stream_cond_wait_until(&o->sup_cond, &o->lock, deadline);
        }

        for (unsigned c = 0; c < o->n_channels; c++)
                channel_drop_queued_locked(o, &o->channels[c]);

        if (o->abort_reason != 0 && o->connected && !o->channels[0].broken) {
                uint8_t payload[STREAM_CONTROL_PAYLOAD_MAX];
                uint32_t reason = htole32(o->abort_reason);
                size_t n = strnlen(o->abort_text, STREAM_ABORT_TEXT_MAX);
                uint64_t deadline = stream_now_usec() + STREAM_ABORT_GRACE_USEC;

                memcpy(payload, &reason, 4);
                memcpy(payload + 4, o->abort_text, n);
                if (enqueue_control_locked(o, STREAM_PACKET_ABORT, payload, (uint32_t) (4 + n)) >= 0) {
                        while (!o->abort_done && !o->channels[0].broken && stream_now_usec() < deadline)
                                stream_cond_wait_until(&o->sup_cond, &o->lock, deadline);
                        /* Keep the other channels open until the destination hangs up on
                         * channel 0, so it reads the ABORT before it sees them close. */
                        while (o->abort_done && !o->rx.done && stream_now_usec() < deadline)
                                stream_cond_wait_until(&o->sup_cond, &o->lock, deadline);
                }
                if (!o->abort_done)
                        log_debug("stream out: the ABORT did not go out in time");
        }

        o->dead = true;
        for (unsigned c = 0; c < o->n_channels; c++)
                if (o->channels[c].fd >= 0)
                        (void) shutdown(o->channels[c].fd, SHUT_RDWR);
        wake_everyone_locked(o);
        /* Once nobody uses them, close the sockets: the peer learns at once. */
        while (o->sock_threads > 0)
                pthread_cond_wait(&o->sup_cond, &o->lock);
        for (unsigned c = 0; c < o->n_channels; c++)
                o->channels[c].fd = safe_close(o->channels[c].fd);
        o->torn_down = true;
        pthread_cond_broadcast(&o->sup_cond);
        pthread_mutex_unlock(&o->lock);
        return NULL;
}

/* ---- the API ---- */

static void stop_and_join(StreamOut *o) {
        pthread_mutex_lock(&o->lock);
        o->exiting = true;
        request_teardown_locked(o, 0, NULL);
        pthread_mutex_unlock(&o->lock);

        if (o->sup_started)
                (void) pthread_join(o->sup_thread, NULL);
        else {
                pthread_mutex_lock(&o->lock);
                o->dead = true;
                wake_everyone_locked(o);
                pthread_mutex_unlock(&o->lock);
        }
        if (o->setup_started)
                (void) pthread_join(o->setup_thread, NULL);
        for (unsigned d = 0; d < o->cfg.device_count; d++)
                if (o->devices[d].thread_started)
                        (void) pthread_join(o->devices[d].thread, NULL);
        for (unsigned k = 0; o->rings && k < o->n_rings; k++)
                if (o->rings[k].thread_started)
                        (void) pthread_join(o->rings[k].thread, NULL);
        for (unsigned c = 0; c < o->n_channels; c++)
                if (o->channels[c].thread_started)
                        (void) pthread_join(o->channels[c].thread, NULL);
        if (o->rx_started)
                (void) pthread_join(o->rx_thread, NULL);
        o->sup_started = o->setup_started = o->rx_started = false;
}

StreamOut *stream_out_free(StreamOut *o) {
        if (!o)
                return NULL;
        stop_and_join(o);

        for (unsigned c = 0; c < o->n_channels; c++) {
                OutChannel *ch = &o->channels[c];
                channel_drop_queued_locked(o, ch);
                if (ch->inflight)
                        packet_release_locked(o, TAKE_PTR(ch->inflight));
                ch->tls = stream_tls_session_free(ch->tls);
                ch->fd = safe_close(ch->fd);
                (void) pthread_cond_destroy(&ch->cond);
        }
        for (unsigned k = 0; o->rings && k < o->n_rings; k++) {
                if (o->rings[k].ring_ok)
                        io_uring_queue_exit(&o->rings[k].ring);
                safe_close(o->rings[k].wake_fd);
        }
        free(o->rings);
        for (unsigned k = 0; k < o->pool_count; k++)
                free(o->pool[k].buf);
        free(o->pool);
        for (unsigned d = 0; d < o->cfg.device_count; d++) {
                free(o->devices[d].blob);
                stream_digest_done(&o->devices[d].digest);
                (void) pthread_cond_destroy(&o->devices[d].cond);
        }
        safe_close(o->setup_wake_fd);
        (void) pthread_cond_destroy(&o->pool_cond);
        (void) pthread_cond_destroy(&o->sup_cond);
        (void) pthread_mutex_destroy(&o->lock);
        event_queue_done(&o->events);
        stream_tls_context_unref(o->cfg.tls);
        free(o);
        return NULL;
}

static unsigned online_cpus(void) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        return n > 0 ? (unsigned) n : 1;
}

int stream_out_new(const StreamOutConfig *c, StreamOut **ret, ErrorMessage *err) {
        StreamOut *o;
        size_t blob_max = 0;
        int r;

        if (c->channels < 1 || c->channels > STREAM_CHANNELS_MAX)
                return error_setf(err, -EINVAL, "the channel count must be between 1 and %u", STREAM_CHANNELS_MAX);
        if (c->device_count < 1 || c->device_count > STREAM_DEVICES_MAX)
                return error_setf(err, -EINVAL, "the device count must be between 1 and %u", STREAM_DEVICES_MAX);
        if (c->chunk > STREAM_PAYLOAD_MAX)
                return error_setf(err, -EINVAL, "the chunk size must be at most %u bytes", STREAM_PAYLOAD_MAX);
        if (c->rings > c->channels)
                return error_setf(err, -EINVAL, "more rings (%u) than channels (%u)", c->rings, c->channels);
        if (c->peer_len == 0 || c->peer_len > sizeof c->peer ||
            (c->peer.ss_family != AF_INET && c->peer.ss_family != AF_INET6))
                return error_setf(err, -EAFNOSUPPORT, "the destination address is not an IPv4 or IPv6 address");
        for (unsigned d = 0; d < c->device_count; d++) {
                if (!c->devices[d])
                        return error_setf(err, -EINVAL, "device %u is missing", d);
                if (c->blobs[d] && c->blob_sizes[d] > STREAM_BLOB_MAX)
                        return error_setf(err, -E2BIG, "the blob of device %u has %zu bytes, at most %u are allowed", d,
                                          c->blob_sizes[d], STREAM_BLOB_MAX);
                if (c->blobs[d])
                        blob_max = MAX(blob_max, c->blob_sizes[d]);
        }

        o = new0(StreamOut, 1);
        if (!o)
                return -ENOMEM;
        o->cfg = *c;
        o->cfg.tls = stream_tls_context_ref(c->tls);
        o->cfg.chunk = c->chunk ?: STREAM_CHUNK_DEFAULT;
        o->n_channels = c->channels;
        o->stall_usec = c->stall_timeout_usec ?: STREAM_STALL_TIMEOUT_USEC_DEFAULT;
        o->setup_wake_fd = -EBADF;
        /* what we send (DATA, BLOB), and room for the destination's longest ABORT or COMPLETE */
        o->announced_payload = (uint32_t) MIN((size_t) STREAM_PAYLOAD_MAX,
                                              MAX(MAX((size_t) o->cfg.chunk, blob_max), (size_t) STREAM_DST_PAYLOAD_MAX));
        (void) pthread_mutex_init(&o->lock, NULL);
        r = stream_cond_init(&o->pool_cond);
        if (r >= 0)
                r = stream_cond_init(&o->sup_cond);
        for (unsigned k = 0; r >= 0 && k < o->n_channels; k++) {
                o->channels[k] = (OutChannel) { .o = o, .index = k, .fd = -EBADF, .idle = true };
                r = stream_cond_init(&o->channels[k].cond);
        }
        for (unsigned d = 0; r >= 0 && d < c->device_count; d++) {
                OutDevice *dv = &o->devices[d];
                *dv = (OutDevice) { .o = o, .index = d, .dev = c->devices[d], .fd = -EBADF };
                r = stream_cond_init(&dv->cond);
                if (r >= 0)
                        r = stream_digest_init(&dv->digest);
                if (r >= 0 && c->blobs[d]) {
                        dv->has_blob = true;
                        dv->blob_size = c->blob_sizes[d];
                        dv->blob = malloc(MAX(dv->blob_size, (size_t) 1));
                        if (!dv->blob)
                                r = -ENOMEM;
                        else
                                memcpy(dv->blob, c->blobs[d], dv->blob_size);
                }
                o->cfg.blobs[d] = NULL; /* borrowed; we keep copies */
        }
        if (r < 0) {
                /* conditions not yet initialized are zero-filled; destroying them is harmless */
                o->cfg.device_count = c->device_count;
                stream_out_free(o);
                return error_setf(err, r, "cannot set up the stream: %m");
        }
        r = stream_job_id(o->cfg.token, o->job_id);
        if (r < 0) {
                stream_out_free(o);
                return error_setf(err, r, "cannot derive the job identifier: %m");
        }
        o->pool_cap = MIN(4 * o->n_channels + 4, 64u);
        o->pool = new0(OutPacket, o->pool_cap);
        r = o->pool ? event_queue_init(&o->events) : -ENOMEM;
        if (r < 0) {
                stream_out_free(o);
                return error_setf(err, r, "cannot set up the stream: %m");
        }
        o->setup_wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (o->setup_wake_fd < 0) {
                r = -errno;
                stream_out_free(o);
                return error_setf(err, r, "eventfd: %m");
        }

        o->use_uring = c->io_uring && stream_io_uring_available();
        if (c->io_uring && !o->use_uring)
                log_info("stream out: io_uring is not available here, using blocking I/O");
        else if (o->use_uring && c->tls && !stream_tls_context_ktls(c->tls)) {
                /* GnuTLS records on the ring would need our own sealing into ring buffers; until
                 * then user-space TLS runs on the blocking per-channel threads, which also spread
                 * the crypto over the CPUs. */
                log_info("stream out: no kernel TLS here: TLS in user space, on blocking I/O");
                o->use_uring = false;
        }
        o->n_rings = c->rings ?: MIN(c->channels, online_cpus());

        if (o->use_uring) {
                o->rings = new0(OutRing, o->n_rings);
                if (!o->rings) {
                        stream_out_free(o);
                        return error_setf(err, -ENOMEM, "cannot set up the stream: out of memory");
                }
                for (unsigned k = 0; k < o->n_rings; k++) {
                        /* blocking: io_uring polls it either way, and older kernels fail a read
                         * of a non-blocking file with EAGAIN instead of waiting */
                        o->rings[k] = (OutRing) { .o = o, .index = k, .wake_fd = eventfd(0, EFD_CLOEXEC) };
                        if (o->rings[k].wake_fd < 0) {
                                r = -errno;
                                stream_out_free(o);
                                return error_setf(err, r, "eventfd: %m");
                        }
                }
                for (unsigned k = 0; k < o->n_channels; k++)
                        o->channels[k].ring = &o->rings[k % o->n_rings];
        }

        pthread_mutex_lock(&o->lock);
        r = -pthread_create(&o->sup_thread, NULL, supervisor_thread, o);
        o->sup_started = r >= 0;
        for (unsigned k = 0; r >= 0 && o->use_uring && k < o->n_rings; k++) {
                r = -pthread_create(&o->rings[k].thread, NULL, out_ring_thread, &o->rings[k]);
                o->rings[k].thread_started = r >= 0;
                o->sock_threads += r >= 0;
        }
        for (unsigned k = 0; r >= 0 && !o->use_uring && k < o->n_channels; k++) {
                r = -pthread_create(&o->channels[k].thread, NULL, out_sender_thread, &o->channels[k]);
                o->channels[k].thread_started = r >= 0;
                o->sock_threads += r >= 0;
        }
        if (r >= 0 && !o->use_uring) {
                r = -pthread_create(&o->rx_thread, NULL, out_receiver_thread, o);
                o->rx_started = r >= 0;
                o->sock_threads += r >= 0;
        }
        pthread_mutex_unlock(&o->lock);
        for (unsigned d = 0; r >= 0 && d < c->device_count; d++) {
                r = -pthread_create(&o->devices[d].thread, NULL, reader_thread, &o->devices[d]);
                o->devices[d].thread_started = r >= 0;
        }
        if (r >= 0) {
                r = -pthread_create(&o->setup_thread, NULL, setup_thread, o);
                o->setup_started = r >= 0;
        }
        if (r < 0) {
                stream_out_free(o);
                return error_setf(err, r, "cannot start the stream's threads: %m");
        }
        *ret = o;
        return 0;
}

int stream_out_event_fd(StreamOut *o) {
        return o->events.fd;
}

int stream_out_next_event(StreamOut *o, StreamEvent *ret) {
        return event_queue_pop(&o->events, ret);
}

static int check_device_locked(StreamOut *o, unsigned device) {
        if (device >= o->cfg.device_count)
                return -EINVAL;
        if (o->teardown)
                return -ESHUTDOWN;
        if (o->devices[device].finished || o->devices[device].exited)
                return -EALREADY;
        return 0;
}

/* Stops the reader of d and waits until it is idle. */
static void pause_locked(StreamOut *o, OutDevice *d) {
        if (d->want == READ_IDLE && !d->busy)
                return;
        d->want = READ_IDLE;
        pthread_cond_broadcast(&d->cond);
        pthread_cond_broadcast(&o->pool_cond);
        while (d->busy && !d->exited)
                pthread_cond_wait(&d->cond, &o->lock);
}

int stream_out_start_precopy(StreamOut *o, unsigned device, int data_fd) {
        int r;

        if (!o->cfg.precopy)
                return -EINVAL; /* the HELLO said no pre-copy */
        if (data_fd < 0)
                return -EBADF;
        pthread_mutex_lock(&o->lock);
        r = check_device_locked(o, device);
        if (r >= 0) {
                OutDevice *d = &o->devices[device];
                if (d->want == READ_STOPCOPY)
                        r = -EBUSY;
                else {
                        d->want = READ_PRECOPY;
                        d->fd = data_fd;
                        pthread_cond_broadcast(&d->cond);
                }
        }
        pthread_mutex_unlock(&o->lock);
        return r;
}

int stream_out_pause(StreamOut *o, unsigned device) {
        int r = 0;

        if (device >= o->cfg.device_count)
                return -EINVAL;
        pthread_mutex_lock(&o->lock);
        if (o->devices[device].want == READ_STOPCOPY)
                r = -EBUSY;
        else
                pause_locked(o, &o->devices[device]);
        pthread_mutex_unlock(&o->lock);
        return r;
}

int stream_out_switchover(StreamOut *o) {
        int r;

        pthread_mutex_lock(&o->lock);
        if (o->teardown)
                r = -ESHUTDOWN;
        else if (!o->connected)
                r = -ENOTCONN;
        else
                r = enqueue_control_locked(o, STREAM_PACKET_SWITCHOVER, NULL, 0);
        pthread_mutex_unlock(&o->lock);
        return r;
}

bool stream_out_completed(StreamOut *o) {
        bool b;

        pthread_mutex_lock(&o->lock);
        b = o->completed;
        pthread_mutex_unlock(&o->lock);
        return b;
}

bool stream_out_handed_all(StreamOut *o) {
        bool b;

        pthread_mutex_lock(&o->lock);
        b = o->handed_all;
        pthread_mutex_unlock(&o->lock);
        return b;
}

int stream_out_start_stopcopy(StreamOut *o, unsigned device, int data_fd) {
        int r;

        if (data_fd < 0)
                return -EBADF;
        pthread_mutex_lock(&o->lock);
        r = check_device_locked(o, device);
        if (r >= 0) {
                OutDevice *d = &o->devices[device];
                if (d->want == READ_PRECOPY)
                        pause_locked(o, d);
                d->want = READ_STOPCOPY;
                d->fd = data_fd;
                pthread_cond_broadcast(&d->cond);
        }
        pthread_mutex_unlock(&o->lock);
        return r;
}

void stream_out_abort(StreamOut *o, uint32_t reason, const char *text) {
        if (!o)
                return;
        event_queue_close(&o->events);
        pthread_mutex_lock(&o->lock);
        if (!o->teardown)
                log_info("stream out: aborting (%s)%s%s", stream_abort_to_string(reason), text ? ": " : "", text ?: "");
        request_teardown_locked(o, reason ?: STREAM_ABORT_INTERNAL, text ?: "");
        pthread_mutex_unlock(&o->lock);
}

void stream_out_stats(StreamOut *o, StreamStats *ret) {
        stream_counters_read(&o->counters, o->cfg.device_count, o->use_uring, ret);
        pthread_mutex_lock(&o->lock);
        ret->buffered = o->queued_total;
        ret->transport = o->transport;
        pthread_mutex_unlock(&o->lock);
}

int stream_out_test_channel_binding(StreamOut *o, unsigned channel, uint8_t out[STREAM_TLS_BINDING_SIZE]) {
        int r = 0;

        pthread_mutex_lock(&o->lock);
        if (channel >= o->n_channels || !o->connected)
                r = -ENOTCONN;
        else if (!o->channels[channel].tls)
                r = -ENOPROTOOPT;
        else
                memcpy(out, o->channels[channel].binding, STREAM_TLS_BINDING_SIZE);
        pthread_mutex_unlock(&o->lock);
        return r;
}

void stream_out_test_set_channel_rate(StreamOut *o, unsigned channel, uint64_t bytes_per_second) {
        if (channel < o->n_channels)
                atomic_store(&o->channels[channel].rate, bytes_per_second);
}
