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
 *
 * This file holds the object: failure and teardown, buffers, admission, the supervisor and the
 * API. The receive state machine, writers and receiver threads are in stream-in-io.c, what the
 * listener calls (HELLO check, adoption) in stream-in-adopt.c, the shared structs in
 * stream-in-internal.h.
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

void in_request_teardown_locked(StreamIn *in, uint32_t abort_reason, const char *text) {
        if (in->teardown)
                return;
        in->teardown = true;
        in->abort_reason = abort_reason;
        if (text)
                (void) snprintf(in->abort_text, sizeof in->abort_text, "%.*s", STREAM_ABORT_TEXT_MAX, text);
        wake_everyone_locked(in);
}

void in_fail_event_locked(StreamIn *in, int device, int error, uint32_t abort_reason, const char *text) {
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
        in_request_teardown_locked(in, abort_reason, e.text);
}

_printf_(4, 5) void in_fail_locked(StreamIn *in, int error, uint32_t abort_reason, const char *format, ...) {
        char text[sizeof ((StreamEvent *) NULL)->text];
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(text, sizeof text, format, ap);
        va_end(ap);
        in_fail_event_locked(in, -1, error, abort_reason, text);
}

/* A protocol violation by the source in a packet that arrived on ch. */
void in_violation_locked(StreamIn *in, const InChannel *ch, const StreamHeader *h, const char *why) {
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

void in_violation(StreamIn *in, const InChannel *ch, const StreamHeader *h, const char *why) {
        pthread_mutex_lock(&in->lock);
        in_violation_locked(in, ch, h, why);
        pthread_mutex_unlock(&in->lock);
}

/* A channel ended. Channel 0 is where an ABORT would have come, in order, before its end; the
 * source may close other channels a moment before we read that ABORT: wait for it a little. */
void in_channel_closed(StreamIn *in, InChannel *ch, int error) {
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

void in_sock_thread_exit(StreamIn *in) {
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

void in_buffer_put_locked(StreamIn *in, uint8_t *buf, uint32_t length) {
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

void in_update_peak_locked(StreamIn *in) {
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

/* Tries to admit the packet whose header ch holds. 1: admitted (ch->payload may still need
 * allocating), 0: parked, < 0: violation reported. */
int in_admit_locked(StreamIn *in, InChannel *ch) {
        const char *why = NULL;
        int k;

        k = admission_locked(in, ch, &why);
        if (k < 0) {
                in_violation_locked(in, ch, &ch->h, why);
                return k;
        }
        if (k == 0) {
                if (!ch->parked) {
                        ch->parked = true;
                        in->parked++;
                        if (ch->ring)
                                ch->ring->parked++;
                        in_check_deadlock_locked(in);
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
        in_update_peak_locked(in);
        ch->payload = buffer_get_locked(in, ch->h.length);
        cache_trim_locked(in);
        return 1;
}

void in_wake_parked_locked(StreamIn *in) {
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
void in_check_deadlock_locked(StreamIn *in) {
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
                (void) in_send_control(in, STREAM_PACKET_ABORT, STREAM_JOB_DEVICE, payload, (uint32_t) (4 + n),
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

/* ---- the API ---- */

static void stop_and_join(StreamIn *in) {
        pthread_mutex_lock(&in->lock);
        in->exiting = true;
        in_request_teardown_locked(in, 0, NULL);
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
                r = -pthread_create(&in->devices[d].thread, NULL, in_writer_thread, &in->devices[d]);
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
        r = in_send_control(in, STREAM_PACKET_COMPLETE, STREAM_JOB_DEVICE, payload,
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
        in_request_teardown_locked(in, reason ?: STREAM_ABORT_INTERNAL, text ?: "");
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
