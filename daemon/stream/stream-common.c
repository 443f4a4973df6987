/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <time.h>

#include "log.h"
#include "stream-internal.h"
#include "stream-testing.h"

uint64_t stream_now_usec(void) {
        struct timespec ts;
        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000u;
}

void stream_thread_name(const char *what, int n) {
        char name[16];

        if (n >= 0)
                (void) snprintf(name, sizeof name, "vfm-%s%d", what, n);
        else
                (void) snprintf(name, sizeof name, "vfm-%s", what);
        (void) pthread_setname_np(pthread_self(), name);
}

struct timespec stream_timespec_of(uint64_t usec) {
        return (struct timespec) {
                .tv_sec = (time_t) (usec / USEC_PER_SEC),
                .tv_nsec = (long) (usec % USEC_PER_SEC) * 1000,
        };
}

int stream_cond_init(pthread_cond_t *c) {
        pthread_condattr_t attr;
        int r;

        r = pthread_condattr_init(&attr);
        if (r != 0)
                return -r;
        (void) pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        r = pthread_cond_init(c, &attr);
        (void) pthread_condattr_destroy(&attr);
        return -r;
}

void stream_cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, uint64_t deadline_usec) {
        struct timespec ts;

        if (deadline_usec == 0) {
                (void) pthread_cond_wait(c, m);
                return;
        }
        ts = stream_timespec_of(deadline_usec);
        (void) pthread_cond_timedwait(c, m, &ts);
}

/* ---- events ---- */

int event_queue_init(EventQueue *q) {
        *q = (EventQueue) { .fd = -EBADF };
        q->items = new0(StreamEvent, STREAM_EVENT_QUEUE_MAX);
        if (!q->items)
                return -ENOMEM;
        q->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (q->fd < 0) {
                q->items = mfree(q->items);
                return -errno;
        }
        (void) pthread_mutex_init(&q->lock, NULL);
        return 0;
}

void event_queue_done(EventQueue *q) {
        if (!q->items)
                return;
        for (size_t k = 0; k < q->n; k++)
                free(q->items[(q->head + k) % STREAM_EVENT_QUEUE_MAX].blob);
        q->items = mfree(q->items);
        q->fd = safe_close(q->fd);
        (void) pthread_mutex_destroy(&q->lock);
}

static bool event_is_terminal(StreamEventType t) {
        return t == STREAM_EVENT_FAILED || t == STREAM_EVENT_PEER_ABORT || t == STREAM_EVENT_COMPLETE;
}

void event_queue_push(EventQueue *q, const StreamEvent *e) {
        uint64_t one = 1;

        pthread_mutex_lock(&q->lock);
        /* After FAILED or PEER_ABORT nothing more is said; COMPLETE may be followed by nothing
         * but is not followed by FAILED either. */
        if (q->closed || (q->terminal && event_is_terminal(e->type)) || q->n == STREAM_EVENT_QUEUE_MAX) {
                if (!q->closed && q->n == STREAM_EVENT_QUEUE_MAX)
                        log_error("stream: event queue full, dropping %d", (int) e->type);
                pthread_mutex_unlock(&q->lock);
                free(e->blob);
                return;
        }
        if (event_is_terminal(e->type))
                q->terminal = true;
        q->items[(q->head + q->n) % STREAM_EVENT_QUEUE_MAX] = *e;
        q->n++;
        (void) !write(q->fd, &one, sizeof one);
        pthread_mutex_unlock(&q->lock);
}

void event_queue_pushf(EventQueue *q, StreamEventType type, int device, int error, uint32_t reason,
                       const char *format, ...) {
        StreamEvent e = {
                .type = type,
                .device = device,
                .error = error,
                .reason = reason,
        };
        va_list ap;

        if (format) {
                va_start(ap, format);
                (void) vsnprintf(e.text, sizeof e.text, format, ap);
                va_end(ap);
        }
        event_queue_push(q, &e);
}

int event_queue_pop(EventQueue *q, StreamEvent *ret) {
        uint64_t v;

        pthread_mutex_lock(&q->lock);
        if (q->n == 0) {
                /* Empty: reset the eventfd so it is readable only while events wait. */
                (void) !read(q->fd, &v, sizeof v);
                pthread_mutex_unlock(&q->lock);
                return 0;
        }
        *ret = q->items[q->head];
        q->items[q->head] = (StreamEvent) {};
        q->head = (q->head + 1) % STREAM_EVENT_QUEUE_MAX;
        q->n--;
        if (q->n == 0)
                (void) !read(q->fd, &v, sizeof v);
        pthread_mutex_unlock(&q->lock);
        return 1;
}

void event_queue_close(EventQueue *q) {
        pthread_mutex_lock(&q->lock);
        q->closed = true;
        pthread_mutex_unlock(&q->lock);
}

/* ---- sockets ---- */

static int wait_fd(int fd, short events, uint64_t deadline_usec, int wake_fd) {
        struct pollfd p[2] = {
                { .fd = fd, .events = events },
                { .fd = wake_fd, .events = POLLIN },
        };
        int timeout = -1, r;

        if (deadline_usec > 0) {
                uint64_t now = stream_now_usec();
                if (now >= deadline_usec)
                        return -ETIMEDOUT;
                timeout = (int) MIN((deadline_usec - now + 999) / 1000, (uint64_t) INT32_MAX);
        }
        r = poll(p, wake_fd >= 0 ? 2 : 1, timeout);
        if (r < 0)
                return errno == EINTR ? 0 : -errno;
        if (r == 0)
                return -ETIMEDOUT;
        if (wake_fd >= 0 && (p[1].revents & POLLIN))
                return -ECANCELED;
        return 0;
}

/* One send or receive: the socket's or the TLS session's. */
static ssize_t chan_send(int fd, StreamTlsSession *tls, const void *p, size_t n, bool dontwait) {
        ssize_t k;

        if (tls)
                return stream_tls_send(tls, p, n, dontwait);
        k = send(fd, p, n, MSG_NOSIGNAL | (dontwait ? MSG_DONTWAIT : 0));
        return k < 0 ? (errno == EWOULDBLOCK ? -EAGAIN : -errno) : k;
}

static ssize_t chan_recv(int fd, StreamTlsSession *tls, void *p, size_t n, bool dontwait) {
        ssize_t k;

        if (tls)
                return stream_tls_recv(tls, p, n, dontwait);
        k = recv(fd, p, n, dontwait ? MSG_DONTWAIT : MSG_WAITALL);
        if (k == 0)
                return -ECONNRESET;
        return k < 0 ? (errno == EWOULDBLOCK ? -EAGAIN : -errno) : k;
}

int stream_chan_send_all(int fd, StreamTlsSession *tls, const void *buf, size_t n, uint64_t deadline_usec, int wake_fd) {
        const uint8_t *p = buf;

        while (n > 0) {
                ssize_t k = chan_send(fd, tls, p, n, true);
                if (k < 0) {
                        int r;
                        if (k == -EINTR)
                                continue;
                        if (k != -EAGAIN)
                                return (int) k;
                        /* TLS: called again with the same buffer, as GnuTLS wants */
                        r = wait_fd(fd, POLLOUT, deadline_usec, wake_fd);
                        if (r < 0)
                                return r;
                        continue;
                }
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

int stream_chan_recv_all(int fd, StreamTlsSession *tls, void *buf, size_t n, uint64_t deadline_usec, int wake_fd) {
        uint8_t *p = buf;

        while (n > 0) {
                /* A TLS session answers from the record it holds before it reads the socket, so
                 * -EAGAIN means the socket is empty. */
                ssize_t k = chan_recv(fd, tls, p, n, true);
                if (k < 0) {
                        int r;
                        if (k == -EINTR)
                                continue;
                        if (k != -EAGAIN)
                                return (int) k;
                        r = wait_fd(fd, POLLIN, deadline_usec, wake_fd);
                        if (r < 0)
                                return r;
                        continue;
                }
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

int stream_chan_recv_exact(int fd, StreamTlsSession *tls, void *buf, size_t n) {
        uint8_t *p = buf;

        while (n > 0) {
                ssize_t k = chan_recv(fd, tls, p, n, false);
                if (k < 0) {
                        if (k == -EINTR)
                                continue;
                        return (int) k;
                }
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

int stream_chan_send_blocking(int fd, StreamTlsSession *tls, const void *buf, size_t n) {
        const uint8_t *p = buf;

        while (n > 0) {
                ssize_t k = chan_send(fd, tls, p, n, false);
                if (k < 0) {
                        if (k == -EINTR)
                                continue;
                        return (int) k;
                }
                if (k == 0)
                        return -EPIPE;
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

int stream_send_all(int fd, const void *buf, size_t n, uint64_t deadline_usec, int wake_fd) {
        return stream_chan_send_all(fd, NULL, buf, n, deadline_usec, wake_fd);
}

int stream_recv_all(int fd, void *buf, size_t n, uint64_t deadline_usec, int wake_fd) {
        return stream_chan_recv_all(fd, NULL, buf, n, deadline_usec, wake_fd);
}

int stream_recv_exact(int fd, void *buf, size_t n) {
        return stream_chan_recv_exact(fd, NULL, buf, n);
}

void stream_counters_read(StreamCounters *c, unsigned device_count, bool io_uring, StreamStats *ret) {
        *ret = (StreamStats) {
                .bytes = atomic_load(&c->bytes),
                .packets = atomic_load(&c->packets),
                .buffered_peak = atomic_load(&c->peak),
                .channels_up = atomic_load(&c->channels_up),
                .io_uring = io_uring,
        };
        for (unsigned d = 0; d < device_count && d < STREAM_DEVICES_MAX; d++)
                ret->device_bytes[d] = atomic_load(&c->device_bytes[d]);
}

void stream_socket_set_keepalive(int fd) {
        int one = 1, idle = STREAM_KEEPALIVE_IDLE_SEC, interval = STREAM_KEEPALIVE_INTERVAL_SEC,
            count = STREAM_KEEPALIVE_COUNT;
        unsigned user_timeout = STREAM_USER_TIMEOUT_MSEC;

        /* A peer host that dies or drops off the network sends no FIN: during an idle pre-copy
         * only keepalive probes notice. Keepalive never probes while data is unacknowledged,
         * though (the retransmission timer runs instead, for about 15 minutes by default):
         * TCP_USER_TIMEOUT bounds that case, and with it set the kernel also ends an idle
         * connection once probes went unanswered for that long. Best effort: the stall timers
         * of both sides cover a peer that is alive but does not move. */
        (void) setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
        (void) setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
        (void) setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
        (void) setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count);
        (void) setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof user_timeout);
}

int stream_channel_binding(StreamTlsSession *tls, uint8_t ret[static STREAM_BINDING_SIZE]) {
        /* Cleartext: nothing binds the proofs to this connection but the nonces. Under TLS the
         * exporter differs on every connection, so a proof cannot be relayed into another. */
        if (!tls) {
                memset(ret, 0, STREAM_BINDING_SIZE);
                return 0;
        }
        _Static_assert(STREAM_BINDING_SIZE == STREAM_TLS_BINDING_SIZE, "one binding size");
        return stream_tls_channel_binding(tls, ret);
}

int stream_fd_set_nonblock(int fd, bool nonblock) {
        int flags = fcntl(fd, F_GETFL);

        if (flags < 0)
                return -errno;
        flags = nonblock ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
        if (fcntl(fd, F_SETFL, flags) < 0)
                return -errno;
        return 0;
}

/* ---- io_uring ---- */

struct io_uring_sqe *stream_ring_sqe(struct io_uring *ring) {
        struct io_uring_sqe *sqe;

        while (!(sqe = io_uring_get_sqe(ring)))
                (void) io_uring_submit(ring);
        return sqe;
}

void stream_ring_drain(struct io_uring *ring, unsigned *outstanding, uint64_t cancel_user_data) {
        if (*outstanding > 0) {
                struct io_uring_sqe *sqe = stream_ring_sqe(ring);
                io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
                io_uring_sqe_set_data64(sqe, cancel_user_data);
                (*outstanding)++;
        }
        while (*outstanding > 0) {
                struct io_uring_cqe *cqe;
                unsigned head, seen = 0;
                int r = io_uring_submit_and_wait(ring, 1);

                if (r < 0 && r != -EINTR && r != -ETIME && r != -EBUSY && r != -EAGAIN)
                        break;
                io_uring_for_each_cqe(ring, head, cqe) {
                        seen++;
                        (*outstanding)--;
                }
                io_uring_cq_advance(ring, seen);
        }
}

int stream_ring_init(struct io_uring *ring, unsigned entries) {
        struct io_uring_params p = {
                .flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE |
                         IORING_SETUP_CLAMP,
                .cq_entries = 4 * entries,
        };
        int r;

        r = io_uring_queue_init_params(entries, ring, &p);
        if (r == -EINVAL) {
                /* An older kernel: no DEFER_TASKRUN (6.1) or SINGLE_ISSUER (6.0). */
                p = (struct io_uring_params) {
                        .flags = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP,
                        .cq_entries = 4 * entries,
                };
                r = io_uring_queue_init_params(entries, ring, &p);
        }
        return r;
}

bool stream_io_uring_available(void) {
        struct io_uring ring;
        int r;

        r = io_uring_queue_init(2, &ring, 0);
        if (r < 0) {
                log_debug_errno(r, "io_uring is not available: %m");
                return false;
        }
        io_uring_queue_exit(&ring);
        return true;
}

/* ---- formatting ---- */

int stream_format_address(const struct sockaddr *sa, socklen_t len, char *buf, size_t size) {
        char host[INET6_ADDRSTRLEN];

        if (sa->sa_family == AF_INET && len >= (socklen_t) sizeof(struct sockaddr_in)) {
                const struct sockaddr_in *in = (const struct sockaddr_in *) sa;
                if (!inet_ntop(AF_INET, &in->sin_addr, host, sizeof host))
                        return -errno;
                (void) snprintf(buf, size, "%s:%u", host, ntohs(in->sin_port));
                return 0;
        }
        if (sa->sa_family == AF_INET6 && len >= (socklen_t) sizeof(struct sockaddr_in6)) {
                const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;
                if (!inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host))
                        return -errno;
                (void) snprintf(buf, size, "[%s]:%u", host, ntohs(in6->sin6_port));
                return 0;
        }
        return -EAFNOSUPPORT;
}

void stream_encode_packet(uint8_t out[static STREAM_HEADER_SIZE], uint8_t type, uint8_t flags, uint16_t device,
                          uint64_t stream_seq, uint64_t device_seq, const void *payload, uint32_t length) {
        StreamHeader h = {
                .type = type,
                .flags = flags,
                .device = device,
                .stream_seq = stream_seq,
                .device_seq = device_seq,
        };

        stream_header_seal(&h, payload, length);
        stream_header_encode(&h, out);
}

/* ---- test knobs ---- */

static atomic_int test_sndbuf, test_rcvbuf;

void stream_test_set_socket_buffers(int sndbuf, int rcvbuf) {
        atomic_store(&test_sndbuf, sndbuf);
        atomic_store(&test_rcvbuf, rcvbuf);
}

/* The minor version each side speaks; -1: STREAM_PROTOCOL_MINOR. Tests make a side speak 2.0. */
static _Atomic int test_source_minor = -1, test_destination_minor = -1;

void stream_test_set_minors(int source, int destination) {
        atomic_store(&test_source_minor, source);
        atomic_store(&test_destination_minor, destination);
}

uint16_t stream_source_minor(void) {
        int m = atomic_load(&test_source_minor);
        return m >= 0 ? (uint16_t) m : STREAM_PROTOCOL_MINOR;
}

uint16_t stream_destination_minor(void) {
        int m = atomic_load(&test_destination_minor);
        return m >= 0 ? (uint16_t) m : STREAM_PROTOCOL_MINOR;
}

int stream_test_get_sndbuf(void) {
        return atomic_load(&test_sndbuf);
}

int stream_test_get_rcvbuf(void) {
        return atomic_load(&test_rcvbuf);
}
