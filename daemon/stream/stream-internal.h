/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * What the engine's three parts (stream-out*.c, stream-in*.c, stream-listener.c) share and nobody
 * else needs: the event queue, deadline-bounded socket I/O, io_uring setup, and the hand-over of
 * an accepted channel from the listener to its StreamIn.
 */

#include <liburing.h>
#include <pthread.h>
#include <stdatomic.h>

#include "stream-engine.h"
#include "stream-tls.h"

#define USEC_PER_SEC UINT64_C(1000000)
#define USEC_PER_MSEC UINT64_C(1000)

#define STREAM_CONNECT_TIMEOUT_USEC (10 * USEC_PER_SEC)    /* TCP connect of one channel */
#define STREAM_HANDSHAKE_TIMEOUT_USEC (10 * USEC_PER_SEC)  /* HELLO sent → WELCOME read */
#define STREAM_HELLO_TIMEOUT_USEC (5 * USEC_PER_SEC)       /* accepted → HELLO read */
#define STREAM_PENDING_MAX 64u                              /* unauthenticated connections held */
#define STREAM_ABORT_GRACE_USEC (1 * USEC_PER_SEC)         /* how long a best-effort ABORT may take */
#define STREAM_PEER_ABORT_WAIT_USEC (200 * USEC_PER_MSEC)  /* a broken connection: does an ABORT explain it? */
#define STREAM_CONTROL_SEND_TIMEOUT_USEC (5 * USEC_PER_SEC) /* a destination's 40-byte control packet */
#define STREAM_HELLO_MAX_SIZE (STREAM_HELLO_FIXED_SIZE + STREAM_DEVICES_MAX * STREAM_HELLO_DEVICE_SIZE + STREAM_HELLO_CRC_SIZE)
#define STREAM_CONTROL_PAYLOAD_MAX (4 + STREAM_ABORT_TEXT_MAX)
/* What a destination may send in one packet: an ABORT or a COMPLETE for every device. */
#define STREAM_DST_PAYLOAD_MAX MAX((size_t) STREAM_CONTROL_PAYLOAD_MAX, (size_t) STREAM_DEVICES_MAX * STREAM_COMPLETE_RECORD_SIZE)

/* Events: at most a few per device and per job (repeats of SWITCHOVER and INITIAL_LOADED are
 * dropped), so a fixed capacity bounds what a peer can make us queue. */
#define STREAM_KEEPALIVE_IDLE_SEC 10
#define STREAM_KEEPALIVE_INTERVAL_SEC 5
#define STREAM_KEEPALIVE_COUNT 3
/* Unacknowledged data (or unanswered probes) for this long ends a connection (TCP_USER_TIMEOUT). */
#define STREAM_USER_TIMEOUT_MSEC 30000u

#define STREAM_EVENT_QUEUE_MAX ((4 + 2 * STREAM_INITIAL_ROUNDS_MAX) * STREAM_DEVICES_MAX + 16)

/* What StreamOut and StreamIn count for stream_*_stats(), updated by their threads. */
typedef struct StreamCounters {
        _Atomic uint64_t bytes, packets, peak;
        _Atomic uint64_t device_bytes[STREAM_DEVICES_MAX];
        _Atomic unsigned channels_up;
} StreamCounters;

/* Fills ret from the counters (buffered is left 0: each side knows its own). */
void stream_counters_read(StreamCounters *c, unsigned device_count, bool io_uring, StreamStats *ret);

uint64_t stream_now_usec(void);
/* The protocol minor version this side offers: STREAM_PROTOCOL_MINOR unless a test said otherwise. */
uint16_t stream_source_minor(void);
uint16_t stream_destination_minor(void);
/* Names the calling thread "vfm-WHAT[N]" (n < 0: no number), for top -H and perf. */
void stream_thread_name(const char *what, int n);
/* For pthread_cond_timedwait() on a CLOCK_MONOTONIC condition variable. */
struct timespec stream_timespec_of(uint64_t usec);
int stream_cond_init(pthread_cond_t *c);
/* Waits until signalled or the monotonic deadline (0: forever). */
void stream_cond_wait_until(pthread_cond_t *c, pthread_mutex_t *m, uint64_t deadline_usec);

typedef struct EventQueue {
        pthread_mutex_t lock;
        StreamEvent *items;
        size_t head, n;
        int fd;                     /* eventfd, readable while events are queued */
        bool closed;                /* no more events are accepted */
        bool terminal;              /* a FAILED, PEER_ABORT or COMPLETE went out */
} EventQueue;

int event_queue_init(EventQueue *q);
void event_queue_done(EventQueue *q);
/* Queues e (taking its blob); drops it when closed. */
void event_queue_push(EventQueue *q, const StreamEvent *e);
/* Queues a simple event. */
void event_queue_pushf(EventQueue *q, StreamEventType type, int device, int error, uint32_t reason,
                       const char *format, ...) _printf_(6, 7);
int event_queue_pop(EventQueue *q, StreamEvent *ret);
void event_queue_close(EventQueue *q);

/* Sends all n bytes (MSG_NOSIGNAL), waiting for room until the monotonic deadline (0: forever).
 * wake_fd, when ≥ 0, interrupts the wait with -ECANCELED once readable. */
int stream_send_all(int fd, const void *buf, size_t n, uint64_t deadline_usec, int wake_fd);
/* Receives exactly n bytes; -ECONNRESET at an end of stream, -ETIMEDOUT past the deadline. */
int stream_recv_all(int fd, void *buf, size_t n, uint64_t deadline_usec, int wake_fd);
/* Receives exactly n bytes on a blocking socket: -ECONNRESET at an end of stream. */
int stream_recv_exact(int fd, void *buf, size_t n);
/* The same on a channel: through its TLS session when tls is non-NULL (GnuTLS records, or the
 * kernel's with kTLS), on the bare socket otherwise. A TLS peer's fatal alert is -EACCES
 * (stream_tls_error() says what it means); a record that does not authenticate is -EBADMSG. */
int stream_chan_send_all(int fd, StreamTlsSession *tls, const void *buf, size_t n, uint64_t deadline_usec, int wake_fd);
int stream_chan_recv_all(int fd, StreamTlsSession *tls, void *buf, size_t n, uint64_t deadline_usec, int wake_fd);
int stream_chan_recv_exact(int fd, StreamTlsSession *tls, void *buf, size_t n);
/* Sends all n bytes on a blocking socket. */
int stream_chan_send_blocking(int fd, StreamTlsSession *tls, const void *buf, size_t n);
int stream_fd_set_nonblock(int fd, bool nonblock);
/* SO_KEEPALIVE with short probes and TCP_USER_TIMEOUT: a dead peer host is noticed within
 * about 30 s, whether the connection is idle or has data in flight. */
void stream_socket_set_keepalive(int fd);
/* The channel binding of a connected channel (proto/stream-protocol.md §1.4): the TLS exporter
 * of its session once the TLS handshake is over, 32 zero bytes in cleartext (tls NULL). */
int stream_channel_binding(StreamTlsSession *tls, uint8_t ret[static STREAM_BINDING_SIZE]);

/* A ring for one thread: SINGLE_ISSUER|DEFER_TASKRUN when the kernel has them. Call it from
 * the thread that will submit. */
int stream_ring_init(struct io_uring *ring, unsigned entries);
/* A free SQE: the rings are sized for everything they can have in flight; should the SQ still be
 * full, what is queued is submitted first. */
struct io_uring_sqe *stream_ring_sqe(struct io_uring *ring);
/* At a ring thread's end: cancels everything in flight (one cancel SQE with cancel_user_data)
 * and reaps completions until *outstanding is 0, so that the kernel has let go of every buffer
 * before they are freed. */
void stream_ring_drain(struct io_uring *ring, unsigned *outstanding, uint64_t cancel_user_data);

/* Formats a socket address as "host:port" ("[v6]:port"). */
int stream_format_address(const struct sockaddr *sa, socklen_t len, char *buf, size_t size);

/* Builds a packet header into out (payload CRC over payload). */
void stream_encode_packet(uint8_t out[static STREAM_HEADER_SIZE], uint8_t type, uint8_t flags, uint16_t device,
                          uint64_t stream_seq, uint64_t device_seq, const void *payload, uint32_t length);

/* The listener's hand-over, called on the listener's thread with the listener's lock held
 * (so in cannot go away), once the source's PROOF was verified: adopts fd and its TLS session
 * tls (NULL: cleartext) (returns 0, fd and tls taken), or returns a refusal code with reason
 * filled (fd and tls untouched: the listener closes them). binding is the channel's
 * (stream_channel_binding()). */
uint32_t stream_in_adopt(StreamIn *in, int fd, StreamTlsSession *tls, const StreamHello *hello,
                         const uint8_t binding[static STREAM_BINDING_SIZE], char reason[static STREAM_REASON_TEXT_SIZE + 1]);
/* The job token, for the listener's proofs, and the job identifier HELLOs name it by. */
const uint8_t *stream_in_token(StreamIn *in);
const uint8_t *stream_in_job_id(StreamIn *in);
/* The checks of stream_in_adopt() that change nothing, made before the WELCOME is sent; the
 * same refusal codes. Called with the listener's lock held. */
uint32_t stream_in_check_hello(StreamIn *in, const StreamHello *hello, char reason[static STREAM_REASON_TEXT_SIZE + 1]);
/* The largest payload this destination accepts (announced in the WELCOME). */
uint32_t stream_in_max_payload(StreamIn *in);
/* Registration bookkeeping, under the listener's lock. */
void stream_in_set_listener(StreamIn *in, StreamListener *l);
StreamListener *stream_in_get_listener(StreamIn *in);
