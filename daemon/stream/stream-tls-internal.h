/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * What stream-tls.c (credentials, handshake, kTLS) and stream-tls-io.c (moving records: on the
 * socket, or in memory for io_uring) share and nobody else needs.
 */

#include <gnutls/gnutls.h>
#include <stdatomic.h>

#include "stream-tls.h"

/* Ciphertext read ahead (socket mode) or received by the ring (ring mode): a few records'
 * worth, so that one recv(2) or one io_uring completion carries many 16 KiB records. */
#define TLS_RECV_BUFFER_SIZE (512u * 1024u)

struct StreamTlsSession {
        StreamTlsContext *ctx;
        gnutls_session_t session;
        int fd;
        bool server;
        bool handshake_done;
        StreamTransport transport;
        _Atomic int send_flags, recv_flags;
        int send_errno, recv_errno;  /* the socket's, for GNUTLS_E_PUSH_ERROR/PULL_ERROR */
        /* user-space records, after the handshake: GnuTLS reads a record's header and then its
         * body, two recv(2) per 16 KiB; we read ahead in large pieces and serve it from here.
         * In ring mode the ring fills it instead, and the pull function never touches the socket. */
        uint8_t *rbuf;
        size_t rbuf_off, rbuf_len;
        /* ring mode, sending: the records GnuTLS sealed, waiting for the ring to send them */
        uint8_t *wbuf;
        size_t wbuf_off, wbuf_len, wbuf_size;
        bool ring_send, ring_recv;   /* which direction the caller's ring moves */
        uint8_t prefix[STREAM_TLS_PEER_PREFIX_MAX];
        size_t prefix_len;
        bool peer_closed;
        char verify_error[400];
        int verify_alert;            /* the alert that tells the peer why (0: bad_certificate) */
        char peer_error[200];        /* what the peer's last fatal alert means */
        char peer_name[256];
        char cipher[160];
};

/* GnuTLS's transport functions (stream-tls-io.c): the socket, or memory in ring mode. */
ssize_t tls_push(gnutls_transport_ptr_t p, const giovec_t *iov, int n);
ssize_t tls_pull(gnutls_transport_ptr_t p, void *buf, size_t n);
int tls_pull_timeout(gnutls_transport_ptr_t p, unsigned ms);

/* The peer's fatal alert, as a sentence (kept in s->peer_error). */
const char *tls_alert_text_of(StreamTlsSession *s, gnutls_alert_description_t a);
const char *tls_alert_text(StreamTlsSession *s);
