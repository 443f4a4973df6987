/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * TLS 1.3 for the stream's channels (GnuTLS). A StreamTlsContext holds what a daemon trusts and
 * who it is: x509 (a CA, the host's certificate and key, used both as server and as client
 * certificate, an optional CRL) or a pre-shared key, and an optional allow-list of peer
 * identities. A StreamTlsSession runs on one connected TCP socket: the handshake (mutual, TLS 1.3
 * only, no session tickets), then either the kernel's record layer (kTLS: the fd carries plain
 * bytes from then on) or GnuTLS's: on the socket (stream_tls_send()/stream_tls_recv()), or in
 * memory while the caller's io_uring moves the ciphertext (ring mode: stream_tls_seal() and
 * stream_tls_open()).
 *
 * Threads: a context is immutable once made and may be shared (reference counted, atomically).
 * A session's send side and receive side may be used by two threads at once (GnuTLS allows it
 * once the handshake is over, and this module never renegotiates or asks for a key update); each
 * side by one thread at a time.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "error-message.h"

#define STREAM_TLS_BINDING_SIZE 32
#define STREAM_TLS_BINDING_LABEL "EXPORTER-vfiomigd-channel-binding"
#define STREAM_TLS_PEER_PREFIX_MAX 128   /* first bytes a peer sent, kept to explain a failed handshake */

typedef enum StreamTransport {
        STREAM_TRANSPORT_CLEARTEXT,
        STREAM_TRANSPORT_TLS_USER,        /* GnuTLS seals and opens records in user space */
        STREAM_TRANSPORT_TLS_KERNEL,      /* kTLS: the kernel does, the fd moves plain bytes */
        _STREAM_TRANSPORT_MAX,
} StreamTransport;

/* "cleartext", "tls-user", "tls-kernel" */
const char *stream_transport_to_string(StreamTransport t);

typedef struct StreamTlsConfig {
        /* x509 */
        const char *ca_file;
        const char *cert_file;
        const char *key_file;
        const char *crl_file;            /* optional */
        /* or PSK: a psktool file of "identity:hexkey" lines */
        const char *psk_file;
        const char *psk_identity;        /* the identity this host presents; NULL: the file's first */
        /* peers allowed in (fnmatch patterns against the subject DN, each SAN DNS name and IP
         * address, or the PSK identity); NULL or empty: any peer the credentials vouch for */
        char *const *allowed_peers;
        bool ktls;                       /* try the kernel's TLS after the handshake */
} StreamTlsConfig;

typedef struct StreamTlsContext StreamTlsContext;
typedef struct StreamTlsSession StreamTlsSession;

/* Loads and checks the credentials: every failure names the file and what is wrong with it. */
int stream_tls_context_new(const StreamTlsConfig *c, StreamTlsContext **ret, ErrorMessage *err);
StreamTlsContext *stream_tls_context_ref(StreamTlsContext *c);
StreamTlsContext *stream_tls_context_unref(StreamTlsContext *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(StreamTlsContext *, stream_tls_context_unref);
/* "x509 (subject ...)" or "psk (identity ...)", for the log. */
const char *stream_tls_context_describe(const StreamTlsContext *c);
/* Whether this kernel takes TCP_ULP "tls" (probed once per context; false when disabled). */
bool stream_tls_context_ktls(const StreamTlsContext *c);

/* A session on the connected socket fd (borrowed: the caller closes it, after freeing the
 * session). server: the accepting side, which requires the client's certificate. */
int stream_tls_session_new(StreamTlsContext *c, int fd, bool server, StreamTlsSession **ret, ErrorMessage *err);
StreamTlsSession *stream_tls_session_free(StreamTlsSession *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(StreamTlsSession *, stream_tls_session_free);

/* One non-blocking step of the handshake: 1 when done, 0 when it waits for the socket (POLLIN
 * or POLLOUT in *ret_events), or a negative errno with the reason in err:
 *   -EKEYREJECTED   we refused the peer (unknown CA, expired, not yet valid, revoked, identity
 *                   not allowed, unknown PSK identity);
 *   -EACCES         the peer refused us (its TLS alert is named);
 *   -EPROTONOSUPPORT the peer does not speak TLS (see stream_tls_peer_prefix());
 *   -ECONNRESET     the peer closed during the handshake; others from the socket. */
int stream_tls_handshake_step(StreamTlsSession *s, short *ret_events, ErrorMessage *err);
/* Runs the handshake to its end: -ETIMEDOUT past the monotonic deadline (µs, 0: none),
 * -ECANCELED once wake_fd (when ≥ 0) is readable. */
int stream_tls_handshake(StreamTlsSession *s, uint64_t deadline_usec, int wake_fd, ErrorMessage *err);
/* The first bytes the peer sent (for a cleartext answer to our ClientHello). */
size_t stream_tls_peer_prefix(StreamTlsSession *s, const uint8_t **ret);
/* Who the peer is: its subject DN or PSK identity. */
const char *stream_tls_peer_name(StreamTlsSession *s);
/* "TLS1.3 AES-128-GCM" */
const char *stream_tls_cipher_name(StreamTlsSession *s);

/* The per-channel binding the stream handshake MACs: the TLS exporter (RFC 8446 §7.5, label
 * STREAM_TLS_BINDING_LABEL, empty context), equal on both ends of one TLS connection and
 * different on any other. After the handshake only. */
int stream_tls_channel_binding(StreamTlsSession *s, uint8_t out[STREAM_TLS_BINDING_SIZE]);

/* After the handshake, with nothing sent or received yet: hands the record layer to the
 * kernel when the context allows it and the kernel can. Returns the transport that runs. A
 * failure after the kernel took one direction (it cannot be undone) is an error. */
int stream_tls_start(StreamTlsSession *s, StreamTransport *ret, ErrorMessage *err);
StreamTransport stream_tls_transport(StreamTlsSession *s);

/* Record I/O with send(2)/recv(2) semantics: bytes moved (a send may be partial), or -EAGAIN
 * (dontwait, or a non-blocking socket), -ECONNRESET at the peer's end of stream (close_notify
 * or a TCP FIN), -EACCES for the peer's fatal alert (stream_tls_error() names it), -EBADMSG for a record that does not authenticate, another negative errno.
 * After -EAGAIN from a send, call it again with the same buffer. */
ssize_t stream_tls_send(StreamTlsSession *s, const void *buf, size_t n, bool dontwait);
ssize_t stream_tls_recv(StreamTlsSession *s, void *buf, size_t n, bool dontwait);
/* Whether opened (or read-ahead) bytes wait in user space, where poll(2) does not see them. */
bool stream_tls_pending(StreamTlsSession *s);
/* Why the last call failed, when the peer said so (a TLS alert after our side of the handshake
 * finished: in TLS 1.3 a client learns that the server refused its certificate only from its
 * first read, where stream_tls_recv() returns -EACCES). "" otherwise. */
const char *stream_tls_error(StreamTlsSession *s);
/* Whether the first bytes look like a TLS record (a ClientHello: handshake content type and
 * a 3.x version). */
bool stream_tls_looks_like_tls(const uint8_t *buf, size_t n);

/* Ring mode (user-space TLS only, after stream_tls_start()): from now on the caller's ring moves
 * the ciphertext of the directions asked for, and GnuTLS never touches the socket for them. A
 * direction not asked for stays on the socket (the destination sends its control packets with
 * stream_tls_send() while its ring receives). What socket mode read ahead is opened first. */
int stream_tls_ring_start(StreamTlsSession *s, bool send, bool recv);
/* Seals n plaintext bytes into records appended to the outbound ciphertext; 0, -ENOBUFS (more
 * than one largest packet waits), -ENOMEM, -EIO. */
int stream_tls_seal(StreamTlsSession *s, const void *buf, size_t n);
/* The sealed ciphertext not yet sent (its size; *ret valid until the next seal), and how much of
 * it the ring sent. */
size_t stream_tls_ring_out(StreamTlsSession *s, const uint8_t **ret);
void stream_tls_ring_sent(StreamTlsSession *s, size_t n);
/* Where the ring receives ciphertext (room at the end of the inbound buffer; 0: full, while
 * unopened records wait), and how much it received there. */
size_t stream_tls_ring_in(StreamTlsSession *s, uint8_t **ret);
void stream_tls_ring_received(StreamTlsSession *s, size_t n);
/* Opens what was received: plaintext bytes (≤ n), or -EAGAIN when no whole record is left (a
 * partial one is kept), and like stream_tls_recv(): -ECONNRESET for close_notify, -EACCES for
 * the peer's fatal alert (stream_tls_error()), -EBADMSG for a record that does not authenticate.
 * The end of the TCP stream is the ring's to see (a receive of 0 bytes). */
ssize_t stream_tls_open(StreamTlsSession *s, void *buf, size_t n);
