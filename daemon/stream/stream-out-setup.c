/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * The sending side's setup thread: sockets, connect, TLS, and the v2 HELLO/WELCOME handshake of
 * every channel.
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
                .minor = stream_source_minor(),
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
                /* The destination answers the lower of the two minors (§1.5); every channel the same. */
                if (w.minor > stream_source_minor() || (c > 0 && w.minor != o->peer_minor))
                        return error_setf(err, -EBADMSG, "the destination's WELCOME on channel %u says version %u.%u, "
                                          "which is not what this source offered and channel 0 accepted", c, w.major, w.minor);
                o->peer_minor = w.minor;
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
        log_info("stream out: TLS to %s (%s), %s", stream_tls_peer_name(tls[0]), stream_tls_cipher_name(tls[0]),
                 first == STREAM_TRANSPORT_TLS_KERNEL ? "records in the kernel (kTLS)"
                 : o->use_uring                       ? "records in user space (GnuTLS), ciphertext on io_uring"
                                                      : "records in user space (GnuTLS)");
        *ret = first;
        return 0;
}

void *out_setup_thread(void *arg) {
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
        /* user-space TLS on the ring: GnuTLS seals and opens in memory, the ring moves the
         * ciphertext (both directions: channel 0 receives, the others watch for an alert) */
        for (unsigned c = 0; r >= 0 && o->use_uring && transport == STREAM_TRANSPORT_TLS_USER && c < o->n_channels; c++) {
                r = stream_tls_ring_start(tls[c], true, true);
                if (r < 0)
                        r = error_setf(&err, r, "TLS on channel %u: cannot set up its buffers: %s", c, strerror(-r));
        }

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
