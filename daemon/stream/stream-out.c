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
 *
 * This file holds the object: failure and teardown, packets, the pool and the channel queues, the
 * supervisor and the API. The readers and the send/receive threads are in stream-out-io.c, the
 * setup thread in stream-out-setup.c, the shared structs in stream-out-internal.h.
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
#include "stream-out-internal.h"

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

void out_request_teardown_locked(StreamOut *o, uint32_t abort_reason, const char *text) {
        if (o->teardown)
                return;
        o->teardown = true;
        o->stopping = true;
        o->abort_reason = abort_reason;
        if (text)
                (void) snprintf(o->abort_text, sizeof o->abort_text, "%.*s", STREAM_ABORT_TEXT_MAX, text);
        wake_everyone_locked(o);
}

_printf_(4, 5) void out_fail_locked(StreamOut *o, int error, uint32_t abort_reason, const char *format, ...) {
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
        out_request_teardown_locked(o, abort_reason, e.text);
}

/* A connection broke. The destination may have sent an ABORT on channel 0 just before hanging
 * up, which we may not have read yet: give it a moment to arrive and explain the failure. */
_printf_(3, 4) void out_conn_failed_locked(StreamOut *o, int error, const char *format, ...) {
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

void out_sock_thread_exit(StreamOut *o) {
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

void out_packet_release_locked(StreamOut *o, OutPacket *p) {
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
OutPacket *out_channel_pop_locked(StreamOut *o, OutChannel *ch) {
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
                out_packet_release_locked(o, p);
        }
        ch->tail = NULL;
        while (ch->urgent_head) {
                OutPacket *p = ch->urgent_head;
                ch->urgent_head = p->next;
                ch->queued -= p->size;
                o->queued_total -= p->size;
                out_packet_release_locked(o, p);
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
void out_enqueue_ordered_locked(StreamOut *o, OutDevice *d, OutPacket *p, uint8_t flags, uint32_t payload_crc) {
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

int out_enqueue_small_ordered_locked(StreamOut *o, OutDevice *d, uint8_t type, const void *payload,
                                     uint32_t length, bool last) {
        OutPacket *p = packet_new(type, (int) d->index, length);

        if (!p)
                return -ENOMEM;
        if (length > 0)
                memcpy(p->buf + STREAM_HEADER_SIZE, payload, length);
        p->last_of_device = last;
        out_enqueue_ordered_locked(o, d, p, 0, crc32c(p->buf + STREAM_HEADER_SIZE, length));
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
void out_packet_sent_locked(StreamOut *o, OutChannel *ch, OutPacket *p) {
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
        out_packet_release_locked(o, p);
}

void out_packet_failed_locked(StreamOut *o, OutChannel *ch, OutPacket *p, int error) {
        ch->broken = true;
        ch->queued -= p->size;
        o->queued_total -= p->size;
        out_packet_release_locked(o, p);
        if (!o->dead)
                out_conn_failed_locked(o, error, "sending on channel %u failed: %s", ch->index, strerror(-error));
        pthread_cond_broadcast(&o->sup_cond);
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
        out_request_teardown_locked(o, 0, NULL);
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
                (void) pthread_join(o->out_setup_thread, NULL);
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
                        out_packet_release_locked(o, TAKE_PTR(ch->inflight));
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
                r = -pthread_create(&o->devices[d].thread, NULL, out_reader_thread, &o->devices[d]);
                o->devices[d].thread_started = r >= 0;
        }
        if (r >= 0) {
                r = -pthread_create(&o->out_setup_thread, NULL, out_setup_thread, o);
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
        out_request_teardown_locked(o, reason ?: STREAM_ABORT_INTERNAL, text ?: "");
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
