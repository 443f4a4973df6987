/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * The receiving side's face to the listener: the accessors it uses, checking a HELLO against
 * the job, and adopting a channel (starting the receivers once the channel count is known).
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
                if (h->flags != in->hello_flags || MIN(h->minor, stream_destination_minor()) != in->minor) {
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
                in->minor = MIN(h->minor, stream_destination_minor());
                in->peer_max_payload = h->max_payload;
                in->transport = stream_tls_transport(tls);
                r = start_receiving_locked(in, h->channel_count);
                if (r < 0) {
                        in_fail_locked(in, r, STREAM_ABORT_INTERNAL, "cannot start receiving: %s", strerror(-r));
                        stream_tls_session_free(tls); /* taken, like fd */
                        (void) close(fd);
                        goto out;
                }
        }
        if (in->use_uring && in->transport == STREAM_TRANSPORT_TLS_USER) {
                /* GnuTLS opens in memory what the ring receives; channel 0's control packets
                 * still go out on the socket (in_send_control(), from other threads) */
                r = stream_tls_ring_start(tls, false, true);
                if (r < 0) {
                        in_fail_locked(in, r, STREAM_ABORT_INTERNAL, "cannot set up TLS buffers for channel %u: %s",
                                       h->channel_index, strerror(-r));
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
