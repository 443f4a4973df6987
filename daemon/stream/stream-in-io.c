/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * The receiving side's data path: the per-channel receive state machine (headers, admitted
 * payloads, control packets), channel 0's sends, the device writers that apply packets, and
 * the io_uring and blocking receiver threads.
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
#include "stream-in-internal.h"

/* ---- packets ---- */

/* A header arrived on ch. Returns the next state: RX_HDR, RX_PAYLOAD (ordered, admitted),
 * RX_CTL (a control payload follows), RX_PARKED, or RX_DONE. */
static RxState on_header(StreamIn *in, InChannel *ch) {
        const char *why = NULL;
        int k;

        k = stream_header_decode(ch->hdr, in->max_payload, in->cfg.device_count, &ch->h, &why);
        if (k < 0) {
                in_violation(in, ch, NULL, why);
                return RX_DONE;
        }
        if (!stream_packet_is_ordered(ch->h.type)) {
                if (ch->index != 0 && (ch->h.type == STREAM_PACKET_SWITCHOVER || ch->h.type == STREAM_PACKET_ABORT)) {
                        in_violation(in, ch, &ch->h, "a control packet on a channel other than 0");
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
                        in_violation(in, ch, &ch->h, "a packet that only a destination sends");
                        return RX_DONE;
                }
        }

        pthread_mutex_lock(&in->lock);
        if (in->teardown)
                k = -ESHUTDOWN;
        else
                k = in_admit_locked(in, ch);
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
                in_violation_locked(in, ch, &ch->h, "payload CRC mismatch");
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
                        in_violation_locked(in, ch, &ch->h, why);
                pthread_mutex_unlock(&in->lock);
                return RX_DONE;
        }
        in_update_peak_locked(in);
        d = &in->devices[ch->h.device];
        d->waiting = false;
        pthread_cond_signal(&d->cond);
        in_wake_parked_locked(in); /* the frontier may have moved */
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
                in_request_teardown_locked(in, 0, NULL);
        }
        pthread_mutex_unlock(&in->lock);
        return RX_DONE;
}

/* ---- channel 0's sends ---- */

int in_send_control(StreamIn *in, uint8_t type, uint16_t device, const void *payload, uint32_t length,
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
                        /* 2.1 (§2.6): the source's device reported new initial data (REINIT) */
                        if (in->minor < STREAM_MINOR_REINIT) {
                                device_violation(in, d, h, "initial pre-copy data after INITIAL_DONE");
                                return -EBADMSG;
                        }
                        if (d->initial_rounds >= STREAM_INITIAL_ROUNDS_MAX) {
                                device_violation(in, d, h, "initial data re-opened more often than 8 times");
                                return -EBADMSG;
                        }
                        d->initial_done = false;
                        pthread_mutex_lock(&in->lock);
                        if (!in->teardown)
                                event_queue_pushf(&in->events, STREAM_EVENT_INITIAL_REINIT, (int) d->index, 0, 0,
                                                  "round %u", d->initial_rounds + 1);
                        pthread_mutex_unlock(&in->lock);
                }
                return apply_data(in, d, p);

        case STREAM_PACKET_INITIAL_DONE:
                if (d->initial_done) {
                        device_violation(in, d, h, "INITIAL_DONE repeated");
                        return -EBADMSG;
                }
                d->initial_done = true;
                d->initial_rounds++;
                r = in_send_control(in, STREAM_PACKET_INITIAL_LOADED, (uint16_t) d->index, NULL, 0,
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

void *in_writer_thread(void *arg) {
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
                        in_wake_parked_locked(in); /* what waits for a busy writer may come in now */
                        in_check_deadlock_locked(in);
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
                in_buffer_put_locked(in, buf, length);
                in->last_progress_usec = stream_now_usec();
                in_wake_parked_locked(in);
                if (k < 0)
                        break;
        }
        d->waiting = true;
        pthread_mutex_unlock(&in->lock);
        return NULL;
}

/* ---- receivers: io_uring ---- */

/* User-space TLS on the ring (stream_tls_ring_start()): the ring receives ciphertext, GnuTLS
 * opens it in memory on this thread. */
static bool ring_tls(const InChannel *ch) {
        return ch->tls && stream_tls_transport(ch->tls) == STREAM_TRANSPORT_TLS_USER;
}

/* Where the current state's bytes go, and how many it needs. */
static uint8_t *rx_target(InChannel *ch, size_t *ret_need) {
        switch (ch->state) {
        case RX_HDR:
                *ret_need = STREAM_HEADER_SIZE;
                return ch->hdr;
        case RX_PAYLOAD:
                *ret_need = ch->h.length;
                return ch->payload;
        default:
                *ret_need = ch->h.length;
                return ch->ctl;
        }
}

static void ring_post_recv(InRing *rg, InChannel *ch) {
        struct io_uring_sqe *sqe = stream_ring_sqe(&rg->ring);
        uint8_t *buf;
        size_t need;

        if (ring_tls(ch)) {
                /* as much ciphertext as fits: many records per completion */
                need = stream_tls_ring_in(ch->tls, &buf);
                io_uring_prep_recv(sqe, ch->fd, buf, need, 0);
        } else {
                buf = rx_target(ch, &need);
                io_uring_prep_recv(sqe, ch->fd, buf + ch->got, need - ch->got, MSG_WAITALL);
        }
        io_uring_sqe_set_data64(sqe, ((uint64_t) OP_RECV << 32) | ch->index);
        ch->posted = true;
        rg->outstanding++;
}

static void ring_post_wake(InRing *rg) {
        struct io_uring_sqe *sqe = stream_ring_sqe(&rg->ring);

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

static bool rx_wants(const InChannel *ch) {
        return ch->state == RX_HDR || ch->state == RX_PAYLOAD || ch->state == RX_CTL;
}

/* n more bytes of the current state's are in: moves on when they are complete. */
static void rx_got(StreamIn *in, InChannel *ch, size_t n) {
        size_t need;

        ch->got += n;
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

/* Opens the received records into the state machine until a record is incomplete or the
 * channel stops (parked: the rest waits, opened once it is admitted). */
static void rx_open(StreamIn *in, InChannel *ch) {
        while (rx_wants(ch)) {
                size_t need;
                uint8_t *buf = rx_target(ch, &need);
                ssize_t k = stream_tls_open(ch->tls, buf + ch->got, need - ch->got);

                if (k == -EAGAIN)
                        return;
                if (k < 0) {
                        in_channel_closed(in, ch, (int) k);
                        ch->state = RX_DONE;
                        return;
                }
                rx_got(in, ch, (size_t) k);
        }
}

static void ring_on_recv(InRing *rg, InChannel *ch, int res) {
        StreamIn *in = rg->in;

        ch->posted = false;
        if (ch->state == RX_DONE || ch->state == RX_PARKED)
                return;
        if (res == -EINTR || res == -EAGAIN)
                return; /* posted again */
        if (res <= 0) {
                in_channel_closed(in, ch, res);
                ch->state = RX_DONE;
                return;
        }
        if (ring_tls(ch)) {
                stream_tls_ring_received(ch->tls, (size_t) res);
                rx_open(in, ch);
                return;
        }
        rx_got(in, ch, (size_t) res);
}

void *in_ring_thread(void *arg) {
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
                in_sock_thread_exit(in);
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
                                int a = in_admit_locked(in, parked[k]);
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
                        if (ch->posted || !rx_wants(ch))
                                continue;
                        /* records already here: received while parked, or read ahead during the
                         * stream handshake */
                        if (ring_tls(ch) && stream_tls_pending(ch->tls)) {
                                rx_open(in, ch);
                                if (!rx_wants(ch))
                                        continue;
                        }
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

        stream_ring_drain(&rg->ring, &rg->outstanding, (uint64_t) OP_CANCEL << 32);
        in_sock_thread_exit(in);
        return NULL;
}

/* ---- receivers: blocking ---- */

void *in_receiver_thread(void *arg) {
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
                                in_channel_closed(in, ch, r);
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
                                r = in_admit_locked(in, ch);
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
                                in_channel_closed(in, ch, r);
                                st = RX_DONE;
                                break;
                        }
                        st = on_payload(in, ch);
                        break;
                case RX_CTL:
                        r = stream_chan_recv_exact(ch->fd, ch->tls, ch->ctl, ch->h.length);
                        if (r < 0) {
                                in_channel_closed(in, ch, r);
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
        in_sock_thread_exit(in);
        return NULL;
}
