/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * Moving TLS records (user space: GnuTLS; or the kernel's, with kTLS).
 *
 * Socket mode: GnuTLS's push and pull functions call sendmsg(2) and recv(2) themselves, blocking
 * or not per call; the handshake, the stream handshake (HELLO ... PROOF), the destination's
 * control packets and the blocking threads (when io_uring is off) use it.
 *
 * Ring mode (stream_tls_ring_start()), for io_uring: push appends the sealed records to an
 * outbound buffer and pull serves the inbound buffer, and neither touches the socket; the
 * caller's ring sends the one and receives into the other. So a 1 MiB packet is sealed into
 * about 64 records by GnuTLS and goes out in one SEND, and one RECV brings in many records,
 * where the blocking path made a send(2) per record. No gnutls_record_cork(): the push function
 * already gathers the records, and corking would copy the plaintext once more.
 *
 * Whatever GnuTLS sends on its own (a KeyUpdate after 2^24 records under one key) goes through
 * push like any record, so it lands in the outbound buffer in order; what it receives that is
 * not data (a KeyUpdate) it handles inside gnutls_record_recv(), and stream_tls_open() goes on
 * opening as long as the inbound buffer has bytes.
 */

#include <errno.h>
#include <gnutls/gnutls.h>
#include <linux/tls.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "log.h"
#include "stream-testing.h"
#include "stream-tls-internal.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

/* Bytes a TLS 1.3 record adds (5 header, 1 content type, 16 tag) with room to spare; the
 * outbound buffer grows if GnuTLS ever adds more (padding). */
#define RECORD_OVERHEAD 64u
/* One sealed packet at most: the largest payload (16 MiB) and its records' overhead. */
#define SEAL_MAX (17u * 1024u * 1024u)

/* ---- transport ---- */

static int wbuf_reserve(StreamTlsSession *s, size_t more) {
        size_t need, size;
        uint8_t *b;

        if (s->wbuf_off == s->wbuf_len)
                s->wbuf_off = s->wbuf_len = 0;
        need = s->wbuf_len + more;
        if (need <= s->wbuf_size)
                return 0;
        if (s->wbuf_off > 0) {
                memmove(s->wbuf, s->wbuf + s->wbuf_off, s->wbuf_len - s->wbuf_off);
                s->wbuf_len -= s->wbuf_off;
                s->wbuf_off = 0;
                need = s->wbuf_len + more;
                if (need <= s->wbuf_size)
                        return 0;
        }
        if (need > SEAL_MAX)
                return -ENOBUFS;
        size = MAX(need, MIN(2 * s->wbuf_size, (size_t) SEAL_MAX));
        b = realloc(s->wbuf, size);
        if (!b)
                return -ENOMEM;
        s->wbuf = b;
        s->wbuf_size = size;
        return 0;
}

static ssize_t push_memory(StreamTlsSession *s, const giovec_t *iov, int n) {
        size_t total = 0;
        int r;

        for (int k = 0; k < n; k++)
                total += iov[k].iov_len;
        r = wbuf_reserve(s, total);
        if (r < 0) {
                s->send_errno = -r;
                gnutls_transport_set_errno(s->session, -r);
                errno = -r;
                return -1;
        }
        for (int k = 0; k < n; k++) {
                memcpy(s->wbuf + s->wbuf_len, iov[k].iov_base, iov[k].iov_len);
                s->wbuf_len += iov[k].iov_len;
        }
        return (ssize_t) total;
}

ssize_t tls_push(gnutls_transport_ptr_t p, const giovec_t *iov, int n) {
        StreamTlsSession *s = p;
        struct msghdr m = { .msg_iov = (struct iovec *) iov, .msg_iovlen = (size_t) n };
        ssize_t k;

        if (s->ring_send)
                return push_memory(s, iov, n);

        do
                k = sendmsg(s->fd, &m, MSG_NOSIGNAL | atomic_load(&s->send_flags));
        while (k < 0 && errno == EINTR);
        if (k < 0) {
                s->send_errno = errno;
                gnutls_transport_set_errno(s->session, errno);
        }
        return k;
}

ssize_t tls_pull(gnutls_transport_ptr_t p, void *buf, size_t n) {
        StreamTlsSession *s = p;
        ssize_t k;

        if (s->rbuf) {
                if (s->rbuf_off == s->rbuf_len && s->ring_recv) {
                        /* the ring brings more; GnuTLS keeps what it has of a record */
                        s->recv_errno = EAGAIN;
                        gnutls_transport_set_errno(s->session, EAGAIN);
                        errno = EAGAIN;
                        return -1;
                }
                if (s->rbuf_off == s->rbuf_len) {
                        do
                                k = recv(s->fd, s->rbuf, TLS_RECV_BUFFER_SIZE, atomic_load(&s->recv_flags));
                        while (k < 0 && errno == EINTR);
                        if (k < 0) {
                                s->recv_errno = errno;
                                gnutls_transport_set_errno(s->session, errno);
                                return k;
                        }
                        if (k == 0) {
                                s->peer_closed = true;
                                return 0;
                        }
                        s->rbuf_off = 0;
                        s->rbuf_len = (size_t) k;
                }
                k = (ssize_t) MIN(n, s->rbuf_len - s->rbuf_off);
                memcpy(buf, s->rbuf + s->rbuf_off, (size_t) k);
                s->rbuf_off += (size_t) k;
                return k;
        }
        do
                k = recv(s->fd, buf, n, atomic_load(&s->recv_flags));
        while (k < 0 && errno == EINTR);
        if (k < 0) {
                s->recv_errno = errno;
                gnutls_transport_set_errno(s->session, errno);
                return k;
        }
        if (k == 0)
                s->peer_closed = true;
        if (!s->handshake_done && s->prefix_len < sizeof s->prefix) {
                size_t c = MIN((size_t) k, sizeof s->prefix - s->prefix_len);
                memcpy(s->prefix + s->prefix_len, buf, c);
                s->prefix_len += c;
        }
        return k;
}

int tls_pull_timeout(gnutls_transport_ptr_t p, unsigned ms) {
        StreamTlsSession *s = p;
        struct pollfd pfd = { .fd = s->fd, .events = POLLIN };
        int r;

        if (s->rbuf && s->rbuf_off < s->rbuf_len)
                return 1;
        if (s->ring_recv)
                return 0;
        if (atomic_load(&s->recv_flags) & MSG_DONTWAIT)
                ms = 0;
        r = poll(&pfd, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : (int) MIN(ms, (unsigned) INT32_MAX));
        if (r < 0)
                gnutls_transport_set_errno(s->session, errno);
        return r;
}


/* ---- records ---- */

static ssize_t record_error(StreamTlsSession *s, ssize_t r, bool sending) {
        int e = sending ? s->send_errno : s->recv_errno;

        switch (r) {
        case GNUTLS_E_AGAIN:
        case GNUTLS_E_INTERRUPTED:
                return -EAGAIN;
        case GNUTLS_E_PREMATURE_TERMINATION:
        case GNUTLS_E_UNEXPECTED_PACKET_LENGTH:
                return s->peer_closed ? -ECONNRESET : -EBADMSG;
        case GNUTLS_E_PUSH_ERROR:
        case GNUTLS_E_PULL_ERROR:
                return e == EWOULDBLOCK ? -EAGAIN : e > 0 ? -e : -EIO;
        case GNUTLS_E_FATAL_ALERT_RECEIVED:
                (void) tls_alert_text(s);
                return -EACCES;
        default:
                return -EBADMSG;
        }
}

ssize_t stream_tls_send(StreamTlsSession *s, const void *buf, size_t n, bool dontwait) {
        ssize_t k;

        if (s->transport == STREAM_TRANSPORT_TLS_KERNEL) {
                do
                        k = send(s->fd, buf, n, MSG_NOSIGNAL | (dontwait ? MSG_DONTWAIT : 0));
                while (k < 0 && errno == EINTR);
                return k < 0 ? (errno == EWOULDBLOCK ? -EAGAIN : -errno) : k;
        }
        atomic_store(&s->send_flags, dontwait ? MSG_DONTWAIT : 0);
        errno = 0;
        k = gnutls_record_send(s->session, buf, n);
        if (k < 0)
                log_debug("tls: sending failed: %s", gnutls_strerror((int) k));
        return k >= 0 ? k : record_error(s, k, true);
}

/* kTLS: the kernel hands over application data as is, and any other record (an alert) only
 * with its type in a control message, one record per call. */
static ssize_t ktls_recv(StreamTlsSession *s, void *buf, size_t n, bool dontwait) {
        uint8_t control[CMSG_SPACE(sizeof(uint8_t))];
        struct iovec iov = { .iov_base = buf, .iov_len = n };
        struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control };
        struct cmsghdr *c;
        ssize_t k;

        do
                k = recvmsg(s->fd, &m, dontwait ? MSG_DONTWAIT : 0);
        while (k < 0 && errno == EINTR);
        if (k == 0)
                return -ECONNRESET;
        if (k < 0)
                /* EBADMSG: a record that does not authenticate */
                return errno == EWOULDBLOCK ? -EAGAIN : errno == EIO ? -ECONNRESET : -errno;
        c = CMSG_FIRSTHDR(&m);
        if (c && c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_GET_RECORD_TYPE) {
                uint8_t type = *CMSG_DATA(c);
                if (type == 23) /* application data */
                        return k;
                if (type == 21 && k >= 2) { /* an alert: level, description */
                        const uint8_t *a = buf;
                        if (a[1] == GNUTLS_A_CLOSE_NOTIFY)
                                return -ECONNRESET;
                        (void) tls_alert_text_of(s, (gnutls_alert_description_t) a[1]);
                        return -EACCES;
                }
                /* a handshake message after the handshake (KeyUpdate): the kernel cannot follow */
                return -EBADMSG;
        }
        return k;
}

bool stream_tls_pending(StreamTlsSession *s) {
        if (s->transport == STREAM_TRANSPORT_TLS_KERNEL)
                return false;
        return gnutls_record_check_pending(s->session) > 0 || (s->rbuf && s->rbuf_off < s->rbuf_len);
}

ssize_t stream_tls_recv(StreamTlsSession *s, void *buf, size_t n, bool dontwait) {
        ssize_t k;

        if (s->transport == STREAM_TRANSPORT_TLS_KERNEL)
                return ktls_recv(s, buf, n, dontwait);
        atomic_store(&s->recv_flags, dontwait ? MSG_DONTWAIT : 0);
        errno = 0;
        k = gnutls_record_recv(s->session, buf, n);
        if (k == 0)
                return -ECONNRESET; /* close_notify */
        return k > 0 ? k : record_error(s, k, false);
}

/* ---- ring mode ---- */

int stream_tls_ring_start(StreamTlsSession *s, bool send, bool recv) {
        if (!s->handshake_done || s->transport != STREAM_TRANSPORT_TLS_USER)
                return -EINVAL;
        if (recv && !s->rbuf) {
                s->rbuf = malloc(TLS_RECV_BUFFER_SIZE);
                if (!s->rbuf)
                        return -ENOMEM;
                s->rbuf_off = s->rbuf_len = 0;
        }
        /* what socket mode read ahead stays in rbuf and is opened first */
        s->ring_send = send;
        s->ring_recv = recv;
        return 0;
}

int stream_tls_seal(StreamTlsSession *s, const void *buf, size_t n) {
        size_t max = gnutls_record_get_max_size(s->session) ?: 16384;
        const uint8_t *p = buf;
        int r;

        if (!s->ring_send)
                return -EINVAL;
        r = wbuf_reserve(s, n + (n / max + 1) * RECORD_OVERHEAD);
        if (r < 0)
                return r;
        while (n > 0) {
                ssize_t k = gnutls_record_send(s->session, p, n);
                if (k == GNUTLS_E_INTERRUPTED)
                        continue;
                if (k < 0) {
                        /* push never blocks here: only our own buffer can fail it */
                        log_debug("tls: sealing failed: %s", gnutls_strerror((int) k));
                        return k == GNUTLS_E_PUSH_ERROR && s->send_errno > 0 ? -s->send_errno : -EIO;
                }
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

size_t stream_tls_ring_out(StreamTlsSession *s, const uint8_t **ret) {
        *ret = s->wbuf ? s->wbuf + s->wbuf_off : NULL;
        return s->wbuf_len - s->wbuf_off;
}

void stream_tls_ring_sent(StreamTlsSession *s, size_t n) {
        s->wbuf_off += MIN(n, s->wbuf_len - s->wbuf_off);
        if (s->wbuf_off == s->wbuf_len)
                s->wbuf_off = s->wbuf_len = 0;
}

size_t stream_tls_ring_in(StreamTlsSession *s, uint8_t **ret) {
        if (!s->ring_recv) {
                *ret = NULL;
                return 0;
        }
        if (s->rbuf_off == s->rbuf_len)
                s->rbuf_off = s->rbuf_len = 0;
        else if (s->rbuf_off > 0 && TLS_RECV_BUFFER_SIZE - s->rbuf_len < TLS_RECV_BUFFER_SIZE / 4) {
                memmove(s->rbuf, s->rbuf + s->rbuf_off, s->rbuf_len - s->rbuf_off);
                s->rbuf_len -= s->rbuf_off;
                s->rbuf_off = 0;
        }
        *ret = s->rbuf + s->rbuf_len;
        return TLS_RECV_BUFFER_SIZE - s->rbuf_len;
}

void stream_tls_ring_received(StreamTlsSession *s, size_t n) {
        s->rbuf_len += MIN(n, TLS_RECV_BUFFER_SIZE - s->rbuf_len);
}

ssize_t stream_tls_open(StreamTlsSession *s, void *buf, size_t n) {
        if (!s->ring_recv)
                return -EINVAL;
        for (;;) {
                size_t before = s->rbuf_off;
                ssize_t k;

                errno = 0;
                k = gnutls_record_recv(s->session, buf, n);
                if (k > 0)
                        return k;
                if (k == 0)
                        return -ECONNRESET; /* close_notify */
                /* a record that carried no data (a KeyUpdate) was handled: go on while the
                 * ring's bytes last and GnuTLS takes them (a flood of such records is bounded
                 * by GnuTLS: too many is an error) */
                if ((k == GNUTLS_E_AGAIN || k == GNUTLS_E_INTERRUPTED) && s->rbuf_off < s->rbuf_len &&
                    s->rbuf_off != before)
                        continue;
                if (k != GNUTLS_E_AGAIN)
                        log_debug("tls: opening failed: %s", gnutls_strerror((int) k));
                return record_error(s, k, false);
        }
}

/* ---- tests ---- */

int stream_tls_test_alert(StreamTlsSession *s, bool fatal, int description) {
        atomic_store(&s->send_flags, MSG_DONTWAIT);
        return gnutls_alert_send(s->session, fatal ? GNUTLS_AL_FATAL : GNUTLS_AL_WARNING,
                                 (gnutls_alert_description_t) description) < 0 ? -EIO : 0;
}

int stream_tls_test_key_update(StreamTlsSession *s, bool ask_peer) {
        atomic_store(&s->send_flags, MSG_DONTWAIT);
        return gnutls_session_key_update(s->session, ask_peer ? GNUTLS_KU_PEER : 0) < 0 ? -EIO : 0;
}
