/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * The sending side's data path: the device readers that fill and queue packets, the io_uring
 * and blocking sender threads, and the receiving of what the destination sends on channel 0.
 */

#include <endian.h>
#include <inttypes.h>
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
#include "stream-out-internal.h"

static uint64_t ud_pack(unsigned op, unsigned channel) {
        return ((uint64_t) op << 32) | channel;
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
                if (d->initial_rounds == 0) {
                        out_fail_locked(o, -EBADMSG, STREAM_ABORT_PROTOCOL,
                                        "the destination sent INITIAL_LOADED for device %u before its INITIAL_DONE",
                                        h->device);
                        break;
                }
                if (o->peer_minor < STREAM_MINOR_REINIT) {
                        if (d->initial_loaded || d->initial_acks > 0)
                                break; /* 2.0: a repeat says nothing new */
                } else if (d->initial_acks >= d->initial_rounds) {
                        out_fail_locked(o, -EBADMSG, STREAM_ABORT_PROTOCOL,
                                        "the destination sent INITIAL_LOADED for device %u %u times, for %u INITIAL_DONE",
                                        h->device, d->initial_acks + 1, d->initial_rounds);
                        break;
                }
                d->initial_acks++;
                /* 2.1: an acknowledgement of an earlier round, while new initial data is out, is
                 * not the one the switchover waits for (§2.6) */
                if (d->initial_acks < d->initial_rounds || !d->initial_done_sent || d->initial_loaded)
                        break;
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
                out_request_teardown_locked(o, 0, NULL);
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

/* PRECOPY_INFOv2 after INITIAL_DONE: new initial bytes mean the device re-opened its initial
 * data (REINIT, or initial bytes that grew again when another caller saw the flag first). The
 * session either re-opens the round, for the destination to acknowledge again (2.1), or sends the
 * new bytes as dirty data and says once that the switchover cannot wait for them. Called without
 * o->lock, by the reader only. */
static int precopy_check_reinit(StreamOut *o, OutDevice *d, int fd) {
        uint64_t initial = 0, dirty = 0;
        uint32_t flags = 0;
        bool again;
        int r;

        r = vfio_dev_precopy_info_flags(d->dev, fd, &initial, &dirty, &flags);
        if (r < 0)
                return log_debug_errno(r, "stream out: precopy info of device %u failed: %m", d->index);
        if (initial == 0)
                return 0; /* a REINIT without new initial bytes has nothing to re-send */
        again = o->peer_minor >= STREAM_MINOR_REINIT && d->initial_rounds < STREAM_INITIAL_ROUNDS_MAX;
        pthread_mutex_lock(&o->lock);
        if (again) {
                d->initial_done_sent = false;
                d->initial_loaded = false;
                d->initial_bytes = initial;
                event_queue_pushf(&o->events, STREAM_EVENT_INITIAL_REINIT, (int) d->index, 0, 1,
                                  "%" PRIu64 " bytes of new initial data (round %u)%s", initial, d->initial_rounds + 1,
                                  flags & VFIO_PRECOPY_INFO_REINIT
                                          ? ""
                                          : ", initial bytes that grew again (another caller read the REINIT flag)");
        } else if (!d->reinit_unacked) {
                d->reinit_unacked = true;
                event_queue_pushf(&o->events, STREAM_EVENT_INITIAL_REINIT, (int) d->index, 0, 0,
                                  "%" PRIu64 " bytes of new initial data, sent as dirty data: %s", initial,
                                  o->peer_minor < STREAM_MINOR_REINIT
                                          ? "the destination speaks protocol 2.0, which cannot acknowledge it again"
                                          : "the device re-opened its initial data 8 times");
        }
        pthread_mutex_unlock(&o->lock);
        return 0;
}

void *out_reader_thread(void *arg) {
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
                        out_packet_release_locked(o, p);
                        continue;
                }
                pthread_mutex_unlock(&o->lock);

                /* Advisory: should precopy info fail here, the read below says what is wrong. */
                if (mode == READ_PRECOPY && d->initial_done_sent && d->dev->precopy_info_version == VFIO_PRECOPY_INFO_V2)
                        (void) precopy_check_reinit(o, d, fd);
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
                        out_packet_release_locked(o, p);
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
                        out_packet_release_locked(o, p);
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
                        out_enqueue_ordered_locked(o, d, p, flags, crc);
                        d->data_bytes += (uint64_t) n;
                        d->data_packets++;
                        backoff = 0;
                } else
                        out_packet_release_locked(o, p);

                if (need_initial_done) {
                        r = out_enqueue_small_ordered_locked(o, d, STREAM_PACKET_INITIAL_DONE, NULL, 0, false);
                        if (r < 0) {
                                out_fail_locked(o, r, STREAM_ABORT_INTERNAL, "out of memory");
                                break;
                        }
                        d->initial_done_sent = true;
                        d->initial_rounds++;
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
                        r = out_enqueue_small_ordered_locked(o, d, STREAM_PACKET_END, end, sizeof end, false);
                        if (r >= 0)
                                r = out_enqueue_small_ordered_locked(o, d, STREAM_PACKET_BLOB, d->blob,
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

/* User-space TLS on the ring (stream_tls_ring_start()): the ring moves ciphertext, GnuTLS seals
 * and opens it in memory on this thread. */
static bool ring_tls(const OutChannel *ch) {
        return ch->tls && stream_tls_transport(ch->tls) == STREAM_TRANSPORT_TLS_USER;
}

static void ring_prep_send(OutRing *rg, OutChannel *ch) {
        struct io_uring_sqe *sqe = stream_ring_sqe(&rg->ring);

        if (ring_tls(ch)) {
                /* the sealed records of the whole packet, in one send over the plain socket */
                const uint8_t *p;
                size_t n = stream_tls_ring_out(ch->tls, &p);

                io_uring_prep_send(sqe, ch->fd, p, n, MSG_NOSIGNAL | MSG_WAITALL);
        } else
                /* MSG_WAITALL makes io_uring retry a short send itself; it also reaches the
                 * socket's sendmsg, which TCP ignores but kernel TLS refuses (EOPNOTSUPP:
                 * tls_sw_sendmsg takes only MSG_MORE, MSG_DONTWAIT, MSG_NOSIGNAL and MSG_EOR).
                 * There short sends come back here for the rest. */
                io_uring_prep_send(sqe, ch->fd, ch->inflight->buf + ch->sent, ch->inflight->size - ch->sent,
                                   ch->tls ? MSG_NOSIGNAL : MSG_NOSIGNAL | MSG_WAITALL);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_SEND, ch->index));
        rg->outstanding++;
}

/* A send of ch completed with res > 0: whether the packet is all out. */
static bool ring_sent(OutChannel *ch, int res) {
        const uint8_t *p;

        if (ring_tls(ch)) {
                stream_tls_ring_sent(ch->tls, (size_t) res);
                return stream_tls_ring_out(ch->tls, &p) == 0;
        }
        ch->sent += (size_t) res;
        return ch->sent >= ch->inflight->size;
}

static void ring_prep_recv(OutRing *rg, StreamOut *o) {
        struct io_uring_sqe *sqe = stream_ring_sqe(&rg->ring);
        OutRx *rx = &o->rx;
        OutChannel *ch = &o->channels[0];

        if (ring_tls(ch)) {
                uint8_t *p;
                size_t n = stream_tls_ring_in(ch->tls, &p);

                io_uring_prep_recv(sqe, ch->fd, p, n, 0);
        } else {
                uint8_t *buf = rx->in_payload ? rx->payload : rx->hdr;
                size_t need = rx->in_payload ? rx->h.length : STREAM_HEADER_SIZE;

                io_uring_prep_recv(sqe, ch->fd, buf + rx->got, need - rx->got, MSG_WAITALL);
        }
        io_uring_sqe_set_data64(sqe, ud_pack(OP_RECV, 0));
        rx->posted = true;
        rg->outstanding++;
}

static void ring_prep_side_recv(OutRing *rg, OutChannel *ch) {
        struct io_uring_sqe *sqe = stream_ring_sqe(&rg->ring);

        if (ring_tls(ch)) {
                /* records: an alert or close_notify is an end, not a violation */
                uint8_t *p;
                size_t n = stream_tls_ring_in(ch->tls, &p);

                io_uring_prep_recv(sqe, ch->fd, p, n, 0);
        } else
                io_uring_prep_recv(sqe, ch->fd, &ch->side_byte, 1, 0);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_RECV, ch->index));
        ch->side_posted = true;
        rg->outstanding++;
}

static void ring_prep_wake(OutRing *rg) {
        struct io_uring_sqe *sqe = stream_ring_sqe(&rg->ring);

        io_uring_prep_read(sqe, rg->wake_fd, &rg->wake_buf, sizeof rg->wake_buf, 0);
        io_uring_sqe_set_data64(sqe, ud_pack(OP_WAKE, 0));
        rg->outstanding++;
}

/* n more bytes of channel 0's current header or payload are in. */
static void rx_got(StreamOut *o, OutRx *rx, size_t n) {
        int k;

        rx->got += n;
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

/* Opens the records channel 0's ring received, packet by packet, until a record is incomplete. */
static void rx_open(StreamOut *o, OutRx *rx, StreamTlsSession *tls) {
        while (!rx->done) {
                uint8_t *buf = rx->in_payload ? rx->payload : rx->hdr;
                size_t need = rx->in_payload ? rx->h.length : STREAM_HEADER_SIZE;
                ssize_t k = stream_tls_open(tls, buf + rx->got, need - rx->got);

                if (k == -EAGAIN)
                        return;
                if (k < 0) {
                        out_rx_end(o, (int) k);
                        return;
                }
                rx_got(o, rx, (size_t) k);
        }
}

/* Channel 0's receive completed with res. */
static void ring_on_recv(OutRing *rg, StreamOut *o, int res) {
        OutRx *rx = &o->rx;
        OutChannel *ch = &o->channels[0];

        rx->posted = false;
        if (res <= 0) {
                if (res == -EINTR || res == -EAGAIN)
                        return; /* posted again */
                out_rx_end(o, res);
                return;
        }
        if (ring_tls(ch)) {
                stream_tls_ring_received(ch->tls, (size_t) res);
                rx_open(o, rx, ch->tls);
                return;
        }
        rx_got(o, rx, (size_t) res);
}

/* A receive on channel c ≥ 1 completed with res (or, res 0 with records pending, what socket mode
 * read ahead is looked at): what it means for out_side_end() (> 0: data, 0: the end, < 0: an
 * error), or -EAGAIN when nothing happened (a partial record, a KeyUpdate). */
static int side_received(OutChannel *ch, int res) {
        uint8_t b;
        ssize_t k;

        if (res < 0 || !ring_tls(ch))
                return res;
        if (res == 0 && !stream_tls_pending(ch->tls))
                return 0;
        stream_tls_ring_received(ch->tls, (size_t) res);
        k = stream_tls_open(ch->tls, &b, 1);
        if (k == -ECONNRESET)
                return 0;
        return k > 0 ? 1 : (int) k;
}

typedef struct SendDone {
        OutChannel *ch;
        int error;
} SendDone;

void *out_ring_thread(void *arg) {
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
                OutChannel *side[STREAM_CHANNELS_MAX], *to_send[STREAM_CHANNELS_MAX];
                unsigned n_side = 0, n_send = 0;
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
                                ch->inflight = out_channel_pop_locked(o, ch);
                                if (!ch->inflight) {
                                        ch->idle = true;
                                        continue;
                                }
                                ch->sent = 0;
                                if (rate > 0)
                                        ch->next_usec = MAX(ch->next_usec, now) +
                                                        (uint64_t) ((unsigned __int128) ch->inflight->size * USEC_PER_SEC / rate);
                                to_send[n_send++] = ch;
                        }
                        post_recv = rg->index == 0 && !o->rx.posted && !o->rx.done;
                        for (unsigned c = rg->index; c < o->n_channels; c += o->n_rings)
                                if (c > 0 && !o->channels[c].side_posted && !o->channels[c].side_done)
                                        side[n_side++] = &o->channels[c];
                }
                pthread_mutex_unlock(&o->lock);
                /* sealing takes a while: outside the lock, which the readers need */
                for (unsigned k = 0; k < n_send; k++) {
                        OutChannel *ch = to_send[k];
                        r = ring_tls(ch) ? stream_tls_seal(ch->tls, ch->inflight->buf, ch->inflight->size) : 0;
                        if (r < 0)
                                done[n_done++] = (SendDone) { .ch = ch, .error = r };
                        else
                                ring_prep_send(rg, ch);
                }
                /* records read ahead during the stream handshake, before the ring took over */
                if (post_recv && ring_tls(&o->channels[0]) && stream_tls_pending(o->channels[0].tls))
                        rx_open(o, &o->rx, o->channels[0].tls);
                if (post_recv && !o->rx.done)
                        ring_prep_recv(rg, o);
                for (unsigned k = 0; k < n_side; k++) {
                        if (ring_tls(side[k]) && stream_tls_pending(side[k]->tls)) {
                                r = side_received(side[k], 0);
                                if (r != -EAGAIN) {
                                        out_side_end(o, side[k], r);
                                        continue;
                                }
                        }
                        ring_prep_side_recv(rg, side[k]);
                }

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
                                if (res == 0) {
                                        done[n_done++] = (SendDone) { .ch = ch, .error = -EPIPE };
                                        break;
                                }
                                if (!ring_sent(ch, res)) {
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
                                        out_packet_failed_locked(o, ch, p, done[k].error);
                                else
                                        out_packet_sent_locked(o, ch, p);
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
                        r = side_received(&o->channels[recv_ch[k]], recv_res[k]);
                        if (r == -EAGAIN)
                                continue; /* a partial record: posted again */
                        out_side_end(o, &o->channels[recv_ch[k]], r);
                }
        }

        /* Everything still in flight ends: cancel it and wait until the kernel lets go of our
         * buffers. The sockets are shut down by now, so nothing blocks for long. */
        stream_ring_drain(&rg->ring, &rg->outstanding, ud_pack(OP_CANCEL, 0));
        /* Packets that were in flight on our channels go back (free() releases the rest). */
        pthread_mutex_lock(&o->lock);
        for (unsigned c = rg->index; c < o->n_channels; c += o->n_rings) {
                OutChannel *ch = &o->channels[c];
                if (ch->inflight) {
                        OutPacket *p = TAKE_PTR(ch->inflight);
                        ch->queued -= p->size;
                        o->queued_total -= p->size;
                        out_packet_release_locked(o, p);
                }
        }
        o->sock_threads--;
        pthread_cond_broadcast(&o->sup_cond);
        pthread_mutex_unlock(&o->lock);
        return NULL;
}

/* ---- senders: blocking ---- */

void *out_sender_thread(void *arg) {
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
                p = out_channel_pop_locked(o, ch);
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
                        out_packet_failed_locked(o, ch, p, r);
                else
                        out_packet_sent_locked(o, ch, p);
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

void *out_receiver_thread(void *arg) {
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
                out_sock_thread_exit(o);
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
        out_sock_thread_exit(o);
        return NULL;
}
