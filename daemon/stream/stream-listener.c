/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * The destination's front door. One thread polls the listening socket and the accepted but not
 * yet identified connections. A connection must send its HELLO within a few seconds; at most a
 * bounded number wait at once (the oldest is dropped for a newer one), so a flood of idle or slow
 * connections costs a constant amount of memory and cannot keep an honest source out for long.
 * A complete HELLO is matched to a registered StreamIn by its job identifier and checked by it;
 * the WELCOME carries the destination's proof of the token, and the connection stays here until
 * the source's PROOF arrived and verified (protocol version 2, proto/stream-protocol.md §1).
 * Only then is it handed over: a connection that cannot prove the token never touches the job.
 * Anything else gets a refusing WELCOME and is closed once the peer stops sending (closing with
 * unread bytes would reset the connection and could lose the WELCOME).
 *
 * With TLS credentials (stream_listener_new_secure()) a connection's first byte must start a
 * TLS handshake, which runs here, non-blocking, within the same deadline as the HELLO; the
 * HELLO, the WELCOME, the PROOF and everything after travel inside TLS, and the proofs cover the
 * TLS exporter. A cleartext HELLO gets a cleartext refusal that names TLS. Without credentials it
 * is the reverse: a TLS ClientHello is answered with a cleartext refusal (which the source's TLS
 * reports as "does not speak TLS") and logged, and cleartext from a non-loopback address is
 * refused unless explicitly allowed.
 */

#include <arpa/inet.h>
#include <endian.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"
#include "stream-auth.h"
#include "stream-internal.h"
#include "stream-testing.h"

#define PENDING_ABS_MAX 1024u
#define REFUSED_LINGER_USEC (1 * USEC_PER_SEC)

typedef enum PendingPhase {
        PENDING_FIRST,           /* nothing read: is it TLS? */
        PENDING_TLS,             /* the TLS handshake runs */
        PENDING_HELLO,           /* reading the HELLO */
} PendingPhase;

typedef struct Pending {
        int fd;
        uint64_t deadline;
        PendingPhase phase;
        StreamTlsSession *tls;
        short events;            /* what the poll waits for */
        char peer[INET6_ADDRSTRLEN + 8];
        bool loopback;
        bool closing;            /* refused: draining until the peer closes or the deadline */
        size_t got, need;
        uint8_t buf[STREAM_HELLO_MAX_SIZE];      /* the HELLO as received: part of the proofs */
        /* accepted, waiting for the PROOF */
        StreamHello *hello;
        uint8_t welcome[STREAM_WELCOME_SIZE];
        uint8_t nonce_dst[STREAM_NONCE_SIZE];
        uint8_t binding[STREAM_BINDING_SIZE];
        uint8_t proof[STREAM_PROOF_SIZE];
        size_t proof_got;
} Pending;

struct StreamListener {
        int fd;
        int wake_fd;
        pthread_t thread;
        bool thread_started;
        char **addresses;

        pthread_mutex_t lock;
        StreamIn **ins;          /* under lock */
        size_t n_ins;
        bool stop;
        StreamTlsContext *tls;   /* fixed at creation */
        bool allow_cleartext;

        /* the thread's own */
        Pending *pending[PENDING_ABS_MAX]; /* oldest first */
        unsigned n_pending;

        _Atomic uint64_t hello_timeout_usec;
        _Atomic unsigned max_pending;
        _Atomic unsigned stat_pending;
};

static bool token_equal(const uint8_t *a, const uint8_t *b) {
        return stream_equal_ct(a, b, STREAM_TOKEN_SIZE);
}

/* Under l->lock. */
static StreamIn *find_job_locked(StreamListener *l, const uint8_t job_id[static STREAM_JOB_ID_SIZE]) {
        for (size_t k = 0; k < l->n_ins; k++)
                if (stream_equal_ct(stream_in_job_id(l->ins[k]), job_id, STREAM_JOB_ID_SIZE))
                        return l->ins[k];
        return NULL;
}

static void pending_remove(StreamListener *l, unsigned k, bool close_fd) {
        Pending *p = l->pending[k];

        stream_tls_session_free(p->tls);
        if (close_fd)
                safe_close(p->fd);
        free(p->hello);
        free(p);
        memmove(l->pending + k, l->pending + k + 1, (l->n_pending - k - 1) * sizeof l->pending[0]);
        l->n_pending--;
        atomic_store(&l->stat_pending, l->n_pending);
}

/* What the handshake sends, through TLS once it runs: bytes sent, or a negative errno. */
static ssize_t pending_send(Pending *p, const void *buf, size_t n) {
        ssize_t k;

        if (p->tls && p->phase == PENDING_HELLO)
                return stream_tls_send(p->tls, buf, n, true);
        k = send(p->fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        return k < 0 ? -errno : k;
}

/* What the handshake reads, through TLS once it runs: bytes read, 0 at the peer's end, -EAGAIN
 * when nothing waits, another negative errno (logged when TLS says why). */
static ssize_t pending_recv(Pending *p, void *buf, size_t n) {
        ssize_t k;

        if (p->tls) {
                /* until EAGAIN: what GnuTLS holds, poll(2) does not see */
                k = stream_tls_recv(p->tls, buf, n, true);
                if (k == -EACCES)
                        log_warning("stream listener: %s ended the connection: %s", p->peer, stream_tls_error(p->tls));
                else if (k == -EBADMSG)
                        log_warning("stream listener: a TLS record from %s does not authenticate", p->peer);
                return k == -ECONNRESET ? 0 : k;
        }
        k = recv(p->fd, buf, n, MSG_DONTWAIT);
        if (k < 0)
                return errno == EINTR ? -EAGAIN : -errno;
        return k;
}

/* Answers with a refusing WELCOME and lets the connection drain. */
static void refuse(Pending *p, uint32_t status, uint16_t channel_index, const char *reason) {
        StreamWelcome w = {
                .major = STREAM_PROTOCOL_MAJOR,
                .minor = stream_destination_minor(),
                .status = status,
                .channel_index = channel_index,
        };
        uint8_t out[STREAM_WELCOME_SIZE];

        log_debug("stream listener: refusing a connection: %s: %s", stream_refusal_to_string(status), reason);
        (void) snprintf(w.reason, sizeof w.reason, "%s", reason);
        stream_welcome_encode(&w, out);
        (void) pending_send(p, out, sizeof out);
        (void) shutdown(p->fd, SHUT_WR);
        p->closing = true;
        p->deadline = stream_now_usec() + REFUSED_LINGER_USEC;
}

/* Gives up on an accepted connection whose PROOF failed or that the job no longer takes: an
 * ABORT says why (the source reads channel 0), then the connection drains and closes. */
static void drop_after_welcome(Pending *p, const char *text) {
        uint8_t buf[STREAM_HEADER_SIZE + STREAM_CONTROL_PAYLOAD_MAX];
        uint32_t reason = htole32(STREAM_ABORT_PROTOCOL);
        size_t n = strnlen(text, STREAM_ABORT_TEXT_MAX);

        log_warning("stream listener: dropping a connection after its WELCOME: %s", text);
        memcpy(buf + STREAM_HEADER_SIZE, &reason, 4);
        memcpy(buf + STREAM_HEADER_SIZE + 4, text, n);
        stream_encode_packet(buf, STREAM_PACKET_ABORT, 0, STREAM_JOB_DEVICE, 0, 0, buf + STREAM_HEADER_SIZE,
                             (uint32_t) (4 + n));
        (void) pending_send(p, buf, STREAM_HEADER_SIZE + 4 + n);
        (void) shutdown(p->fd, SHUT_WR);
        p->closing = true;
        p->deadline = stream_now_usec() + REFUSED_LINGER_USEC;
}

/* A complete HELLO: refuse, or answer with an accepting WELCOME and its proof and wait for the
 * source's PROOF. */
static void dispatch(StreamListener *l, Pending *p) {
        _cleanup_free_ StreamHello *h = NULL;
        uint8_t out[STREAM_WELCOME_SIZE + STREAM_WELCOME_PROOF_SIZE];
        StreamWelcome w = {
                .major = STREAM_PROTOCOL_MAJOR,
                .minor = stream_destination_minor(),
        };
        StreamIn *match;
        char reason[STREAM_REASON_TEXT_SIZE + 1] = "";
        const char *why = NULL;
        uint32_t status;
        size_t n;
        ssize_t k;
        int r;

        h = new0(StreamHello, 1);
        if (!h)
                return refuse(p, STREAM_REFUSE_BUSY, 0, "out of memory");
        r = stream_hello_decode(p->buf, p->got, h, &why);
        if (r == -EPROTONOSUPPORT) {
                (void) snprintf(reason, sizeof reason, "version %u.%u; this destination speaks %u.%u", h->major, h->minor,
                                STREAM_PROTOCOL_MAJOR, stream_destination_minor());
                return refuse(p, STREAM_REFUSE_VERSION, 0, reason);
        }
        if (r < 0)
                return refuse(p, STREAM_REFUSE_BAD_HELLO, 0, why);
        if (stream_random(w.nonce, sizeof w.nonce) < 0 || stream_channel_binding(p->tls, p->binding) < 0)
                return refuse(p, STREAM_REFUSE_BUSY, h->channel_index, "cannot make a nonce");

        pthread_mutex_lock(&l->lock);
        match = find_job_locked(l, h->job_id);
        if (!match) {
                pthread_mutex_unlock(&l->lock);
                return refuse(p, STREAM_REFUSE_TOKEN, h->channel_index, "no prepared job has this token");
        }
        status = stream_in_check_hello(match, h, reason);
        if (status == STREAM_ACCEPTED) {
                StreamTranscript t = {
                        .hello = p->buf,
                        .hello_size = p->got,
                        .welcome = out,
                        .nonce_src = h->nonce,
                        .nonce_dst = w.nonce,
                        .channel_index = h->channel_index,
                        .channel_count = h->channel_count,
                        .binding = p->binding,
                };
                w.channel_index = h->channel_index;
                w.minor = MIN(h->minor, stream_destination_minor()); /* the session's minor (§1.5) */
                w.max_payload = stream_in_max_payload(match);
                stream_welcome_encode(&w, out); /* the MAC covers these bytes */
                if (stream_proof_mac(stream_in_token(match), STREAM_PROOF_DST, &t, w.mac) < 0)
                        status = STREAM_REFUSE_BUSY;
        }
        pthread_mutex_unlock(&l->lock);
        if (status != STREAM_ACCEPTED)
                return refuse(p, status, h->channel_index, reason[0] ? reason : "cannot prove the token");

        n = stream_welcome_encode_full(&w, out);
        /* A fresh connection's send buffer takes 160 bytes at once; one that does not is no
         * honest source's. */
        k = pending_send(p, out, n);
        if (k != (ssize_t) n) {
                log_debug("stream listener: cannot send the WELCOME at once, closing the connection");
                p->closing = true;
                p->deadline = 0;
                return;
        }
        memcpy(p->welcome, out, STREAM_WELCOME_SIZE);
        memcpy(p->nonce_dst, w.nonce, STREAM_NONCE_SIZE);
        p->hello = TAKE_PTR(h);
        p->proof_got = 0;
        p->deadline = stream_now_usec() + atomic_load(&l->hello_timeout_usec);
}

/* The PROOF is complete: verify it and hand the channel over. Returns true when handed over. */
static bool prove(StreamListener *l, Pending *p) {
        const StreamHello *h = p->hello;
        char reason[STREAM_REASON_TEXT_SIZE + 1] = "", text[STREAM_ABORT_TEXT_MAX + 1];
        const char *why = NULL;
        StreamProof proof;
        StreamIn *match;
        uint32_t status;

        if (stream_proof_decode(p->proof, &proof, &why) < 0) {
                (void) snprintf(text, sizeof text, "bad PROOF on channel %u: %s", h->channel_index, why);
                drop_after_welcome(p, text);
                return false;
        }
        pthread_mutex_lock(&l->lock);
        match = find_job_locked(l, h->job_id);
        if (!match) {
                pthread_mutex_unlock(&l->lock);
                drop_after_welcome(p, "the job went away during the handshake");
                return false;
        }
        {
                StreamTranscript t = {
                        .hello = p->buf,
                        .hello_size = p->got,
                        .welcome = p->welcome,
                        .nonce_src = h->nonce,
                        .nonce_dst = p->nonce_dst,
                        .channel_index = h->channel_index,
                        .channel_count = h->channel_count,
                        .binding = p->binding,
                };
                if (!stream_proof_verify(stream_in_token(match), STREAM_PROOF_SRC, &t, proof.mac)) {
                        pthread_mutex_unlock(&l->lock);
                        (void) snprintf(text, sizeof text,
                                        "the source's proof on channel %u is wrong: it does not know the job's token",
                                        h->channel_index);
                        drop_after_welcome(p, text);
                        return false;
                }
        }
        status = stream_in_adopt(match, p->fd, p->tls, h, p->binding, reason);
        pthread_mutex_unlock(&l->lock);
        if (status != STREAM_ACCEPTED) {
                (void) snprintf(text, sizeof text, "channel %u: %s: %s", h->channel_index,
                                stream_refusal_to_string(status), reason);
                drop_after_welcome(p, text);
                return false;
        }
        p->tls = NULL; /* the job's now */
        return true;
}

/* The first byte decides: TLS (a handshake record) or cleartext (a HELLO, or anything else,
 * which the HELLO decoder then refuses). Returns false to drop the connection. */
static bool pending_first(StreamListener *l, Pending *p) {
        StreamTlsContext *tls;
        bool allow_cleartext, tls_peer;
        uint8_t b;
        ssize_t k;
        int r;

        k = recv(p->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (k == 0)
                return false;
        if (k < 0)
                return errno == EAGAIN || errno == EINTR;
        tls_peer = stream_tls_looks_like_tls((const uint8_t[]) { b, 3 }, 2);

        tls = stream_tls_context_ref(l->tls);
        allow_cleartext = l->allow_cleartext;

        if (tls && !tls_peer) {
                stream_tls_context_unref(tls);
                log_warning("stream listener: refusing a cleartext connection from %s: this daemon only takes TLS", p->peer);
                refuse(p, STREAM_REFUSE_BAD_HELLO, 0, "this destination only takes TLS: the source needs TLS credentials");
                return true;
        }
        if (!tls && tls_peer) {
                log_warning("stream listener: %s started a TLS handshake, but this daemon has no TLS credentials "
                            "(see vfiomigd.conf(5)): refusing", p->peer);
                refuse(p, STREAM_REFUSE_BAD_HELLO, 0, "this destination does not speak TLS: it has no credentials");
                return true;
        }
        if (!tls && !allow_cleartext && !p->loopback) {
                log_warning("stream listener: refusing a cleartext connection from %s, which is not a loopback address: "
                            "configure TLS credentials (or allow-cleartext, unsafe)", p->peer);
                refuse(p, STREAM_REFUSE_BAD_HELLO, 0,
                       "cleartext from a non-loopback address is refused: this destination has no TLS credentials");
                return true;
        }
        if (tls) {
                ErrorMessage err = {};
                r = stream_tls_session_new(tls, p->fd, true, &p->tls, &err);
                stream_tls_context_unref(tls);
                if (r < 0) {
                        log_error_errno(r, "stream listener: cannot start TLS with %s: %s", p->peer, err.text);
                        return false;
                }
                p->phase = PENDING_TLS;
                return true;
        }
        p->phase = PENDING_HELLO;
        return true;
}

static bool pending_tls(StreamListener *l, Pending *p) {
        ErrorMessage err = {};
        StreamTransport t;
        int r;

        r = stream_tls_handshake_step(p->tls, &p->events, &err);
        if (r == 0)
                return true;
        if (r < 0) {
                /* who and why: the destination's side of every refusal is this line */
                log_warning("stream listener: TLS with %s failed: %s", p->peer, err.text);
                return false;
        }
        r = stream_tls_start(p->tls, &t, &err);
        if (r < 0) {
                log_warning("stream listener: TLS with %s: %s", p->peer, err.text);
                return false;
        }
        log_debug("stream listener: TLS with %s (%s, %s, %s)", p->peer, stream_tls_peer_name(p->tls),
                  stream_tls_cipher_name(p->tls), stream_transport_to_string(t));
        p->phase = PENDING_HELLO;
        p->events = POLLIN;
        /* The HELLO's own window starts now: a source sends its HELLOs once every channel's TLS
         * handshake is done, and on a slow host those take a while one after another. */
        p->deadline = stream_now_usec() + atomic_load(&l->hello_timeout_usec);
        return true;
}

/* Reads what arrived. Returns false when the entry is finished (removed by the caller). */
static bool pending_read(StreamListener *l, Pending *p, bool *handed_over) {
        for (;;) {
                ssize_t k;

                if (p->closing) {
                        uint8_t scratch[4096];
                        k = recv(p->fd, scratch, sizeof scratch, MSG_DONTWAIT);
                        if (k > 0)
                                continue;
                        return k < 0 && (errno == EAGAIN || errno == EINTR);
                }
                if (p->phase == PENDING_FIRST) {
                        if (!pending_first(l, p))
                                return false;
                        if (p->phase == PENDING_FIRST)
                                return true;
                        continue;
                }
                if (p->phase == PENDING_TLS) {
                        if (!pending_tls(l, p))
                                return false;
                        if (p->phase == PENDING_TLS)
                                return true;
                        continue; /* the HELLO may have come with the handshake's last flight */
                }
                if (p->hello) {
                        /* exactly the PROOF: what follows it belongs to the job (under TLS,
                         * records read ahead stay in the session, which the job takes) */
                        k = pending_recv(p, p->proof + p->proof_got, sizeof p->proof - p->proof_got);
                        if (k == -EAGAIN)
                                return true;
                        if (k <= 0)
                                return false;
                        p->proof_got += (size_t) k;
                        if (p->proof_got < sizeof p->proof)
                                continue;
                        if (prove(l, p)) {
                                *handed_over = true;
                                return false;
                        }
                        continue;
                }
                k = pending_recv(p, p->buf + p->got, p->need - p->got);
                if (k == -EAGAIN)
                        return true;
                if (k <= 0)
                        return false;
                p->got += (size_t) k;
                if (p->got < p->need)
                        continue;
                if (p->need == STREAM_HELLO_FIXED_SIZE) {
                        const char *why = NULL;
                        uint16_t major = 0, minor = 0;
                        size_t total = 0;
                        int r = stream_hello_peek_size(p->buf, p->got, &total, &major, &minor, &why);
                        if (r == -EPROTONOSUPPORT) {
                                char reason[STREAM_REASON_TEXT_SIZE + 1];
                                (void) snprintf(reason, sizeof reason, "version %u.%u; this destination speaks %u.%u",
                                                major, minor, STREAM_PROTOCOL_MAJOR, stream_destination_minor());
                                refuse(p, STREAM_REFUSE_VERSION, 0, reason);
                                continue;
                        }
                        if (r < 0) {
                                refuse(p, STREAM_REFUSE_BAD_HELLO, 0, why);
                                continue;
                        }
                        p->need = total;
                        continue;
                }
                dispatch(l, p);
        }
}

static bool is_loopback(const struct sockaddr_storage *ss) {
        if (ss->ss_family == AF_INET)
                return (ntohl(((const struct sockaddr_in *) ss)->sin_addr.s_addr) >> 24) == 127;
        if (ss->ss_family == AF_INET6) {
                const struct in6_addr *a = &((const struct sockaddr_in6 *) ss)->sin6_addr;
                return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
        }
        return false;
}

static void accept_some(StreamListener *l) {
        unsigned max = MIN(atomic_load(&l->max_pending), PENDING_ABS_MAX);

        for (unsigned n = 0; n < 256; n++) {
                Pending *p;
                struct sockaddr_storage ss = {};
                socklen_t len = sizeof ss;
                int fd = accept4(l->fd, (struct sockaddr *) &ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);

                if (fd < 0) {
                        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                                log_debug("stream listener: accept: %m");
                        return;
                }
                p = new0(Pending, 1);
                if (!p) {
                        safe_close(fd);
                        continue;
                }
                p->fd = fd;
                p->events = POLLIN;
                p->loopback = is_loopback(&ss);
                if (stream_format_address((struct sockaddr *) &ss, len, p->peer, sizeof p->peer) < 0)
                        (void) snprintf(p->peer, sizeof p->peer, "?");
                p->need = STREAM_HELLO_FIXED_SIZE;
                p->deadline = stream_now_usec() + atomic_load(&l->hello_timeout_usec);
                while (l->n_pending >= MAX(max, 1u)) {
                        log_debug("stream listener: too many connections without a HELLO, dropping the oldest");
                        pending_remove(l, 0, true);
                }
                l->pending[l->n_pending++] = p;
                atomic_store(&l->stat_pending, l->n_pending);
        }
}

static void *listener_thread(void *arg) {
        StreamListener *l = arg;
        struct pollfd *fds;

        stream_thread_name("listener", -1);
        fds = new0(struct pollfd, PENDING_ABS_MAX + 2);
        if (!fds) {
                log_error("stream listener: out of memory, not accepting connections");
                return NULL;
        }
        for (;;) {
                uint64_t now, next = 0;
                unsigned n;
                int timeout = -1, r;
                bool stop;

                pthread_mutex_lock(&l->lock);
                stop = l->stop;
                pthread_mutex_unlock(&l->lock);
                if (stop)
                        break;

                now = stream_now_usec();
                for (unsigned k = 0; k < l->n_pending;) {
                        Pending *p = l->pending[k];
                        if (now >= p->deadline) {
                                if (!p->closing)
                                        log_debug("stream listener: no HELLO in time, closing the connection");
                                pending_remove(l, k, true);
                                continue;
                        }
                        next = next ? MIN(next, p->deadline) : p->deadline;
                        k++;
                }
                if (next)
                        timeout = (int) MIN((next - now + 999) / 1000, (uint64_t) INT32_MAX);

                fds[0] = (struct pollfd) { .fd = l->wake_fd, .events = POLLIN };
                fds[1] = (struct pollfd) { .fd = l->fd, .events = POLLIN };
                n = l->n_pending;
                for (unsigned k = 0; k < n; k++)
                        fds[2 + k] = (struct pollfd) { .fd = l->pending[k]->fd,
                                                       .events = l->pending[k]->closing ? POLLIN : l->pending[k]->events };
                r = poll(fds, 2 + n, timeout);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        log_error("stream listener: poll: %m");
                        break;
                }
                if (fds[0].revents & POLLIN) {
                        uint64_t v;
                        (void) !read(l->wake_fd, &v, sizeof v);
                }
                /* Connections that sent something first (an honest source sends its HELLO at
                 * once), then new ones; walk backwards so removals keep indices valid. */
                for (unsigned k = n; k-- > 0;) {
                        bool handed_over = false;
                        if (!fds[2 + k].revents)
                                continue;
                        if (!pending_read(l, l->pending[k], &handed_over))
                                pending_remove(l, k, !handed_over);
                }
                if (fds[1].revents & POLLIN)
                        accept_some(l);
        }
        free(fds);
        return NULL;
}

/* ---- setup ---- */

static int parse_address(const char *address, char **ret_host, char **ret_port) {
        _cleanup_free_ char *host = NULL, *port = NULL;
        const char *colon;

        if (!address)
                return -EINVAL;
        if (address[0] == '[') {
                const char *end = strchr(address, ']');
                if (!end || end[1] != ':')
                        return -EINVAL;
                host = strndup(address + 1, (size_t) (end - address - 1));
                port = strdup(end + 2);
        } else {
                colon = strrchr(address, ':');
                if (!colon)
                        return -EINVAL;
                host = strndup(address, (size_t) (colon - address));
                port = strdup(colon + 1);
        }
        if (!host || !port)
                return -ENOMEM;
        if (!port[0] || strspn(port, "0123456789") != strlen(port))
                return -EINVAL;
        *ret_host = TAKE_PTR(host);
        *ret_port = TAKE_PTR(port);
        return 0;
}

static int listen_on(const char *address, int *ret_fd, ErrorMessage *err) {
        _cleanup_free_ char *host = NULL, *port = NULL;
        struct addrinfo hints = {
                .ai_flags = AI_PASSIVE | AI_NUMERICSERV,
                .ai_socktype = SOCK_STREAM,
                .ai_protocol = IPPROTO_TCP,
        }, *res = NULL;
        int r, last = -EADDRNOTAVAIL;

        r = parse_address(address, &host, &port);
        if (r < 0)
                return error_setf(err, r, "invalid listen address '%s': expected HOST:PORT or [IPV6]:PORT", address ?: "");
        r = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
        if (r != 0)
                return error_setf(err, -EADDRNOTAVAIL, "cannot resolve '%s': %s", address, gai_strerror(r));

        for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
                _cleanup_close_ int fd = -EBADF;
                int one = 1, zero = 0;

                fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, IPPROTO_TCP);
                if (fd < 0) {
                        last = -errno;
                        continue;
                }
                (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
                if (ai->ai_family == AF_INET6)
                        (void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
                if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 128) < 0) {
                        last = -errno;
                        continue;
                }
                *ret_fd = TAKE_FD(fd);
                freeaddrinfo(res);
                return 0;
        }
        freeaddrinfo(res);
        return error_setf(err, last, "cannot listen on %s: %m", address);
}

static int strv_push(char ***l, size_t *n, char *s) {
        char **m;

        if (!s)
                return -ENOMEM;
        m = reallocarray(*l, *n + 2, sizeof(char *));
        if (!m) {
                free(s);
                return -ENOMEM;
        }
        m[(*n)++] = s;
        m[*n] = NULL;
        *l = m;
        return 0;
}

static bool is_wildcard(const struct sockaddr_storage *ss) {
        if (ss->ss_family == AF_INET)
                return ((const struct sockaddr_in *) ss)->sin_addr.s_addr == htonl(INADDR_ANY);
        if (ss->ss_family == AF_INET6)
                return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *) ss)->sin6_addr);
        return false;
}

/* Where sources can reach us: the bound address, or for a wildcard every address of every
 * interface that is up (loopback last; IPv6 link-local addresses need a scope and are left out). */
static int compute_addresses(StreamListener *l) {
        struct sockaddr_storage ss = {};
        socklen_t len = sizeof ss;
        char text[INET6_ADDRSTRLEN + 16];
        char **list = NULL;
        size_t n = 0;
        uint16_t port;
        bool v4 = false, v6 = false;
        int r;

        if (getsockname(l->fd, (struct sockaddr *) &ss, &len) < 0)
                return -errno;
        if (ss.ss_family == AF_INET) {
                port = ((struct sockaddr_in *) &ss)->sin_port;
                v4 = true;
        } else if (ss.ss_family == AF_INET6) {
                int only = 0;
                socklen_t olen = sizeof only;
                port = ((struct sockaddr_in6 *) &ss)->sin6_port;
                v6 = true;
                v4 = getsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &only, &olen) >= 0 && !only;
        } else
                return -EAFNOSUPPORT;

        if (is_wildcard(&ss)) {
                struct ifaddrs *ifs = NULL;
                if (getifaddrs(&ifs) >= 0) {
                        for (int pass = 0; pass < 2; pass++)
                                for (struct ifaddrs *i = ifs; i; i = i->ifa_next) {
                                        struct sockaddr_storage a = {};
                                        bool loopback = i->ifa_flags & IFF_LOOPBACK;
                                        if (!i->ifa_addr || !(i->ifa_flags & IFF_UP) || loopback != (pass == 1))
                                                continue;
                                        if (i->ifa_addr->sa_family == AF_INET && v4) {
                                                memcpy(&a, i->ifa_addr, sizeof(struct sockaddr_in));
                                                ((struct sockaddr_in *) &a)->sin_port = port;
                                                len = sizeof(struct sockaddr_in);
                                        } else if (i->ifa_addr->sa_family == AF_INET6 && v6) {
                                                memcpy(&a, i->ifa_addr, sizeof(struct sockaddr_in6));
                                                if (IN6_IS_ADDR_LINKLOCAL(&((struct sockaddr_in6 *) &a)->sin6_addr))
                                                        continue;
                                                ((struct sockaddr_in6 *) &a)->sin6_port = port;
                                                len = sizeof(struct sockaddr_in6);
                                        } else
                                                continue;
                                        if (stream_format_address((struct sockaddr *) &a, len, text, sizeof text) < 0)
                                                continue;
                                        r = strv_push(&list, &n, strdup(text));
                                        if (r < 0) {
                                                freeifaddrs(ifs);
                                                strv_free(list);
                                                return r;
                                        }
                                }
                        freeifaddrs(ifs);
                }
        }
        if (n == 0) {
                r = stream_format_address((struct sockaddr *) &ss, sizeof ss, text, sizeof text);
                if (r < 0)
                        return r;
                r = strv_push(&list, &n, strdup(text));
                if (r < 0)
                        return r;
        }
        l->addresses = list;
        return 0;
}

StreamListener *stream_listener_free(StreamListener *l) {
        if (!l)
                return NULL;
        if (l->thread_started) {
                uint64_t one = 1;
                pthread_mutex_lock(&l->lock);
                l->stop = true;
                pthread_mutex_unlock(&l->lock);
                (void) !write(l->wake_fd, &one, sizeof one);
                (void) pthread_join(l->thread, NULL);
        }
        while (l->n_pending > 0)
                pending_remove(l, l->n_pending - 1, true);
        for (size_t k = 0; k < l->n_ins; k++)
                stream_in_set_listener(l->ins[k], NULL);
        free(l->ins);
        stream_tls_context_unref(l->tls);
        strv_free(l->addresses);
        safe_close(l->fd);
        safe_close(l->wake_fd);
        (void) pthread_mutex_destroy(&l->lock);
        free(l);
        return NULL;
}

int stream_listener_new(int listen_fd, const char *address, StreamListener **ret, ErrorMessage *err) {
        return stream_listener_new_secure(listen_fd, address, NULL, false, ret, err);
}

int stream_listener_new_secure(int listen_fd, const char *address, StreamTlsContext *tls, bool allow_cleartext,
                               StreamListener **ret, ErrorMessage *err) {
        StreamListener *l;
        int r;

        l = new0(StreamListener, 1);
        if (!l)
                return -ENOMEM;
        l->fd = l->wake_fd = -EBADF;
        /* before the thread starts: a connection systemd holds for us may be waiting already */
        l->tls = stream_tls_context_ref(tls);
        l->allow_cleartext = allow_cleartext;
        (void) pthread_mutex_init(&l->lock, NULL);
        atomic_store(&l->hello_timeout_usec, STREAM_HELLO_TIMEOUT_USEC);
        atomic_store(&l->max_pending, STREAM_PENDING_MAX);

        if (listen_fd >= 0) {
                int accepting = 0;
                socklen_t len = sizeof accepting;

                if (getsockopt(listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &len) < 0 || !accepting) {
                        stream_listener_free(l);
                        return error_setf(err, -ENOTSOCK, "the stream socket passed in is not a listening socket");
                }
                /* Borrowed: we work on a duplicate (O_NONBLOCK is shared with the original). */
                l->fd = fcntl(listen_fd, F_DUPFD_CLOEXEC, 3);
                if (l->fd < 0 || stream_fd_set_nonblock(l->fd, true) < 0) {
                        r = -errno;
                        stream_listener_free(l);
                        return error_setf(err, r, "cannot use the stream socket passed in: %m");
                }
        } else {
                r = listen_on(address, &l->fd, err);
                if (r < 0) {
                        stream_listener_free(l);
                        return r;
                }
        }
        r = compute_addresses(l);
        if (r < 0) {
                stream_listener_free(l);
                return error_setf(err, r, "cannot tell the listening addresses: %m");
        }
        l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (l->wake_fd < 0) {
                r = -errno;
                stream_listener_free(l);
                return error_setf(err, r, "eventfd: %m");
        }
        r = -pthread_create(&l->thread, NULL, listener_thread, l);
        if (r < 0) {
                stream_listener_free(l);
                return error_setf(err, r, "cannot start the listener thread: %m");
        }
        l->thread_started = true;
        log_debug("stream listener: accepting on %s%s", l->addresses[0], l->addresses[1] ? " and more" : "");
        *ret = l;
        return 0;
}

int stream_listener_addresses(StreamListener *l, char ***ret) {
        size_t n = 0;
        char **copy;

        while (l->addresses[n])
                n++;
        copy = new0(char *, n + 1);
        if (!copy)
                return -ENOMEM;
        for (size_t k = 0; k < n; k++) {
                copy[k] = strdup(l->addresses[k]);
                if (!copy[k]) {
                        strv_free(copy);
                        return -ENOMEM;
                }
        }
        *ret = copy;
        return 0;
}

int stream_listener_register(StreamListener *l, StreamIn *in) {
        StreamIn **m;
        int r = 0;

        pthread_mutex_lock(&l->lock);
        for (size_t k = 0; k < l->n_ins; k++)
                if (l->ins[k] == in || token_equal(stream_in_token(l->ins[k]), stream_in_token(in))) {
                        r = -EEXIST;
                        goto out;
                }
        if (stream_in_get_listener(in)) {
                r = -EBUSY;
                goto out;
        }
        m = reallocarray(l->ins, l->n_ins + 1, sizeof *m);
        if (!m) {
                r = -ENOMEM;
                goto out;
        }
        l->ins = m;
        l->ins[l->n_ins++] = in;
        stream_in_set_listener(in, l);
out:
        pthread_mutex_unlock(&l->lock);
        return r;
}

void stream_listener_unregister(StreamListener *l, StreamIn *in) {
        if (!l || !in)
                return;
        pthread_mutex_lock(&l->lock);
        for (size_t k = 0; k < l->n_ins; k++)
                if (l->ins[k] == in) {
                        memmove(l->ins + k, l->ins + k + 1, (l->n_ins - k - 1) * sizeof l->ins[0]);
                        l->n_ins--;
                        stream_in_set_listener(in, NULL);
                        break;
                }
        pthread_mutex_unlock(&l->lock);
}

void stream_listener_test_set_limits(StreamListener *l, uint64_t hello_timeout_usec, unsigned max_pending) {
        uint64_t one = 1;

        atomic_store(&l->hello_timeout_usec, hello_timeout_usec ?: STREAM_HELLO_TIMEOUT_USEC);
        atomic_store(&l->max_pending, MIN(max_pending ?: STREAM_PENDING_MAX, PENDING_ABS_MAX));
        (void) !write(l->wake_fd, &one, sizeof one);
}

unsigned stream_listener_test_pending(StreamListener *l) {
        return atomic_load(&l->stat_pending);
}
