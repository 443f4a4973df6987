/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The TLS module on its own: handshakes between two sessions of this process over a socketpair
 * (and TCP loopback for the kernel TLS attempt), with a throwaway CA the test makes with
 * tools/make-test-pki.sh. Each failure mode must be refused on the side that decides it with a
 * text naming the cause, and on the other side with the peer's refusal.
 */

#include <criterion/criterion.h>
#include <errno.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macro.h"
#include "stream-testing.h"
#include "stream-tls.h"

static char pki[256];

static void run(const char *cmd) {
        int r = system(cmd);
        cr_assert_eq(r, 0, "%s failed (%d)", cmd, r);
}

static void make_pki(void) {
        const char *script = getenv("MAKE_TEST_PKI");
        char cmd[1024];

        cr_assert(script, "MAKE_TEST_PKI is not set (run through meson test)");
        (void) snprintf(pki, sizeof pki, "/tmp/test-stream-tls.XXXXXX");
        cr_assert(mkdtemp(pki));
        (void) snprintf(cmd, sizeof cmd, "%s --ip 127.0.0.1 %s a b && %s --expired %s old && %s --not-yet-valid %s young",
                        script, pki, script, pki, script, pki);
        run(cmd);
        (void) snprintf(cmd, sizeof cmd, "%s --ca-name 'another CA' %s/other x", script, pki);
        run(cmd);
        (void) snprintf(cmd, sizeof cmd, "%s --psk host-a %s/psk1 a && %s --psk host-a %s/psk2 a", script, pki, script,
                        pki);
        run(cmd);
}

static void remove_pki(void) {
        char cmd[512];

        (void) snprintf(cmd, sizeof cmd, "rm -rf '%s'", pki);
        (void) !system(cmd);
}

TestSuite(stream_tls, .init = make_pki, .fini = remove_pki, .timeout = 60);

static StreamTlsContext *x509_ctx(const char *dir, const char *host, char *const *allowed) {
        char ca[512], cert[512], key[512];
        StreamTlsConfig c = { .ca_file = ca, .cert_file = cert, .key_file = key, .allowed_peers = allowed };
        StreamTlsContext *ctx = NULL;
        ErrorMessage err = {};

        (void) snprintf(ca, sizeof ca, "%s/%s/ca-cert.pem", dir, host);
        (void) snprintf(cert, sizeof cert, "%s/%s/server-cert.pem", dir, host);
        (void) snprintf(key, sizeof key, "%s/%s/server-key.pem", dir, host);
        cr_assert_eq(stream_tls_context_new(&c, &ctx, &err), 0, "context for %s: %s", host, err.text);
        return ctx;
}

static StreamTlsContext *psk_ctx(const char *file, char *const *allowed) {
        StreamTlsConfig c = { .psk_file = file, .allowed_peers = allowed };
        StreamTlsContext *ctx = NULL;
        ErrorMessage err = {};

        cr_assert_eq(stream_tls_context_new(&c, &ctx, &err), 0, "psk context: %s", err.text);
        return ctx;
}

typedef struct Pair {
        int fd[2];                  /* 0: client, 1: server */
        StreamTlsSession *s[2];
        int r[2];
        ErrorMessage err[2];
} Pair;

/* Runs both handshakes in this thread, step by step on non-blocking sockets. A side that fails
 * shuts its socket down, as the engine does, so the other one learns. */
static void handshake_pair(Pair *p, StreamTlsContext *client, StreamTlsContext *server) {
        bool done[2] = {};

        *p = (Pair) {};
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, p->fd), 0);
        cr_assert_eq(stream_tls_session_new(client, p->fd[0], false, &p->s[0], &p->err[0]), 0);
        cr_assert_eq(stream_tls_session_new(server, p->fd[1], true, &p->s[1], &p->err[1]), 0);
        for (unsigned round = 0; !(done[0] && done[1]); round++) {
                struct pollfd pf[2];
                cr_assert_lt(round, 1000u, "the handshake does not end");
                for (int k = 0; k < 2; k++) {
                        short ev = POLLIN;
                        pf[k] = (struct pollfd) { .fd = -1 };
                        if (done[k])
                                continue;
                        p->r[k] = stream_tls_handshake_step(p->s[k], &ev, &p->err[k]);
                        if (p->r[k] != 0) {
                                done[k] = true;
                                if (p->r[k] < 0)
                                        (void) shutdown(p->fd[k], SHUT_RDWR);
                                continue;
                        }
                        pf[k] = (struct pollfd) { .fd = p->fd[k], .events = ev };
                }
                if (!(done[0] && done[1]))
                        cr_assert_geq(poll(pf, 2, 5000), 0);
        }
}

/* In TLS 1.3 the client's handshake ends before the server has checked the client's
 * certificate: the client learns of a refusal from its first read. */
static void client_learns_refusal(Pair *p, const char *what) {
        uint8_t b[16];
        ssize_t k;

        if (p->r[0] < 0) {
                cr_assert(strstr(p->err[0].text, what), "client: %s", p->err[0].text);
                return;
        }
        cr_assert_eq(p->r[0], 1);
        do
                k = stream_tls_recv(p->s[0], b, sizeof b, false);
        while (k == -EAGAIN);
        cr_assert_eq(k, -EACCES, "client read: %zd", k);
        cr_assert(strstr(stream_tls_error(p->s[0]), what), "client: %s", stream_tls_error(p->s[0]));
}

static void pair_done(Pair *p) {
        stream_tls_session_free(p->s[0]);
        stream_tls_session_free(p->s[1]);
        safe_close(p->fd[0]);
        safe_close(p->fd[1]);
}

static char path_buf[512];
/* PKI/HOST/FILE */
static const char *path(const char *host, const char *file) {
        (void) snprintf(path_buf, sizeof path_buf, "%s/%s/%s", pki, host, file);
        return path_buf;
}

Test(stream_tls, handshake_and_binding) {
        StreamTlsContext *a = x509_ctx(pki, "a", NULL), *b = x509_ctx(pki, "b", NULL);
        uint8_t ba[32], bb[32], bc[32], zero[32] = {};
        StreamTransport t;
        Pair p, q;

        handshake_pair(&p, a, b);
        cr_assert_eq(p.r[0], 1, "client: %s", p.err[0].text);
        cr_assert_eq(p.r[1], 1, "server: %s", p.err[1].text);
        cr_assert_str_eq(stream_tls_peer_name(p.s[0]), "CN=b,O=vfiomigd tests");
        cr_assert_str_eq(stream_tls_peer_name(p.s[1]), "CN=a,O=vfiomigd tests");
        cr_assert(strstr(stream_tls_cipher_name(p.s[0]), "TLS1.3"), "%s", stream_tls_cipher_name(p.s[0]));
        cr_assert_eq(stream_tls_channel_binding(p.s[0], ba), 0);
        cr_assert_eq(stream_tls_channel_binding(p.s[1], bb), 0);
        cr_assert_arr_eq(ba, bb, 32, "the exporter differs between the ends");
        cr_assert_arr_neq(ba, zero, 32);

        /* another connection between the same hosts binds to something else */
        handshake_pair(&q, b, a);
        cr_assert_eq(q.r[0], 1, "%s", q.err[0].text);
        cr_assert_eq(q.r[1], 1, "%s", q.err[1].text);
        cr_assert_eq(stream_tls_channel_binding(q.s[1], bc), 0);
        cr_assert_arr_neq(ba, bc, 32);

        /* a socketpair has no kernel TLS: user space it is */
        cr_assert_eq(stream_tls_start(p.s[0], &t, NULL), 0);
        cr_assert_eq(t, STREAM_TRANSPORT_TLS_USER);
        cr_assert_str_eq(stream_transport_to_string(t), "tls-user");
        pair_done(&p);
        pair_done(&q);
        stream_tls_context_unref(a);
        stream_tls_context_unref(b);
}

typedef struct Sender {
        StreamTlsSession *s;
        const uint8_t *buf;
        size_t n;
        int r;
} Sender;

static void *sender(void *arg) {
        Sender *x = arg;
        size_t off = 0;

        while (off < x->n) {
                ssize_t k = stream_tls_send(x->s, x->buf + off, x->n - off, false);
                if (k == -EAGAIN) {
                        struct pollfd pf = { .fd = -1 };
                        (void) poll(&pf, 0, 1);
                        continue;
                }
                if (k < 0) {
                        x->r = (int) k;
                        return NULL;
                }
                off += (size_t) k;
        }
        return NULL;
}

static void recv_all(StreamTlsSession *s, uint8_t *buf, size_t n) {
        size_t off = 0;

        while (off < n) {
                ssize_t k = stream_tls_recv(s, buf + off, n - off, false);
                if (k == -EAGAIN) {
                        struct pollfd pf = { .fd = -1 };
                        (void) poll(&pf, 0, 1);
                        continue;
                }
                cr_assert_gt(k, 0, "recv: %s", strerror((int) -k));
                off += (size_t) k;
        }
}

Test(stream_tls, seal_open_round_trip) {
        StreamTlsContext *a = x509_ctx(pki, "a", NULL), *b = x509_ctx(pki, "b", NULL);
        size_t n = 3u << 20;
        uint8_t *out = malloc(n), *in = malloc(n);
        uint8_t small[64];
        pthread_t t;
        Sender x;
        Pair p;

        cr_assert(out && in);
        for (size_t k = 0; k < n; k++)
                out[k] = (uint8_t) (k * 2654435761u >> 13);
        handshake_pair(&p, a, b);
        cr_assert_eq(p.r[0], 1, "%s", p.err[0].text);
        cr_assert_eq(p.r[1], 1, "%s", p.err[1].text);

        x = (Sender) { .s = p.s[0], .buf = out, .n = n };
        cr_assert_eq(pthread_create(&t, NULL, sender, &x), 0);
        recv_all(p.s[1], in, n);
        cr_assert_eq(pthread_join(t, NULL), 0);
        cr_assert_eq(x.r, 0);
        cr_assert_arr_eq(in, out, n);

        /* and the other way, while the first direction is idle */
        x = (Sender) { .s = p.s[1], .buf = out, .n = 1000 };
        sender(&x);
        cr_assert_eq(x.r, 0);
        recv_all(p.s[0], in, 1000);
        cr_assert_arr_eq(in, out, 1000);

        /* the ciphertext on the wire is not the plaintext, and a flipped bit is refused */
        x = (Sender) { .s = p.s[0], .buf = out, .n = 64 };
        sender(&x);
        {
                uint8_t raw[256];
                ssize_t k;
                struct pollfd pf = { .fd = p.fd[1], .events = POLLIN };
                cr_assert_eq(poll(&pf, 1, 2000), 1);
                k = recv(p.fd[1], raw, sizeof raw, 0);
                cr_assert_gt(k, 64);
                cr_assert_null(memmem(raw, (size_t) k, out, 16), "plaintext on the wire");
                raw[k - 5] ^= 1;
                /* hand the tampered record back to the receiver through a fresh socketpair end */
                cr_assert_eq(send(p.fd[0], raw, (size_t) k, 0), k);
        }
        {
                ssize_t k;
                for (;;) {
                        k = stream_tls_recv(p.s[1], small, sizeof small, false);
                        if (k != -EAGAIN)
                                break;
                }
                cr_assert_eq(k, -EBADMSG, "a tampered record gave %zd", k);
        }
        pair_done(&p);
        free(out);
        free(in);
        stream_tls_context_unref(a);
        stream_tls_context_unref(b);
}

Test(stream_tls, unknown_ca) {
        StreamTlsContext *a = x509_ctx(pki, "a", NULL);
        char xdir[300];
        StreamTlsContext *xx;
        Pair p;

        (void) snprintf(xdir, sizeof xdir, "%s/other", pki);
        xx = x509_ctx(xdir, "x", NULL);
        /* the client trusts another CA: it refuses the server's certificate */
        handshake_pair(&p, xx, a);
        cr_assert_eq(p.r[0], -EKEYREJECTED, "client: %d %s", p.r[0], p.err[0].text);
        cr_assert(strstr(p.err[0].text, "unknown CA"), "%s", p.err[0].text);
        cr_assert(strstr(p.err[0].text, "vfiomigd test CA"), "%s", p.err[0].text);
        cr_assert_lt(p.r[1], 0);
        cr_assert(strstr(p.err[1].text, "does not accept our certificate"), "server: %s", p.err[1].text);
        pair_done(&p);

        /* the server trusts only another CA (while its own certificate is from ours, so the
         * client goes on): it refuses the client's certificate */
        {
                char ca[300], cert[300], key[300];
                StreamTlsConfig c = { .ca_file = ca, .cert_file = cert, .key_file = key };
                ErrorMessage e = {};
                (void) snprintf(ca, sizeof ca, "%s/other/ca-cert.pem", pki);
                (void) snprintf(cert, sizeof cert, "%s/b/server-cert.pem", pki);
                (void) snprintf(key, sizeof key, "%s/b/server-key.pem", pki);
                stream_tls_context_unref(xx);
                cr_assert_eq(stream_tls_context_new(&c, &xx, &e), 0, "%s", e.text);
        }
        handshake_pair(&p, a, xx);
        cr_assert_eq(p.r[1], -EKEYREJECTED, "server: %d %s", p.r[1], p.err[1].text);
        cr_assert(strstr(p.err[1].text, "unknown CA"), "%s", p.err[1].text);
        client_learns_refusal(&p, "does not accept our certificate");
        pair_done(&p);
        stream_tls_context_unref(a);
        stream_tls_context_unref(xx);
}

Test(stream_tls, expired_and_not_yet_valid) {
        StreamTlsContext *a = x509_ctx(pki, "a", NULL), *old = x509_ctx(pki, "old", NULL),
                         *young = x509_ctx(pki, "young", NULL);
        Pair p;

        handshake_pair(&p, old, a);
        cr_assert_eq(p.r[1], -EKEYREJECTED, "server: %d %s", p.r[1], p.err[1].text);
        cr_assert(strstr(p.err[1].text, "expired on 2020-12-31"), "%s", p.err[1].text);
        client_learns_refusal(&p, "does not accept our certificate");
        pair_done(&p);

        handshake_pair(&p, a, young);
        cr_assert_eq(p.r[0], -EKEYREJECTED, "client: %d %s", p.r[0], p.err[0].text);
        cr_assert(strstr(p.err[0].text, "not valid yet: not before 2099-01-01"), "%s", p.err[0].text);
        pair_done(&p);
        stream_tls_context_unref(a);
        stream_tls_context_unref(old);
        stream_tls_context_unref(young);
}

Test(stream_tls, identity_allow_list) {
        char *const only_b[] = { (char *) "CN=b,*", NULL };
        char *const only_ip[] = { (char *) "127.0.0.1", NULL };
        char *const nobody[] = { (char *) "CN=c,*", (char *) "dns-of-c", NULL };
        StreamTlsContext *a = x509_ctx(pki, "a", NULL), *b_only = x509_ctx(pki, "a", only_b),
                         *ip_only = x509_ctx(pki, "b", only_ip), *none = x509_ctx(pki, "b", nobody),
                         *b = x509_ctx(pki, "b", NULL);
        Pair p;

        /* by subject pattern: a server that only lets b in takes b */
        handshake_pair(&p, b, b_only);
        cr_assert_eq(p.r[0], 1, "%s", p.err[0].text);
        cr_assert_eq(p.r[1], 1, "%s", p.err[1].text);
        pair_done(&p);
        /* by SAN IP address */
        handshake_pair(&p, a, ip_only);
        cr_assert_eq(p.r[1], 1, "%s", p.err[1].text);
        pair_done(&p);
        /* on the server: a is not allowed */
        handshake_pair(&p, a, none);
        cr_assert_eq(p.r[1], -EKEYREJECTED, "%d %s", p.r[1], p.err[1].text);
        cr_assert(strstr(p.err[1].text, "not allowed"), "%s", p.err[1].text);
        cr_assert(strstr(p.err[1].text, "CN=a,O=vfiomigd tests"), "%s", p.err[1].text);
        client_learns_refusal(&p, "does not allow our identity");
        pair_done(&p);
        /* on the client: the server (a) is not allowed either */
        handshake_pair(&p, none, a);
        cr_assert_eq(p.r[0], -EKEYREJECTED, "%d %s", p.r[0], p.err[0].text);
        cr_assert(strstr(p.err[0].text, "not allowed"), "%s", p.err[0].text);
        pair_done(&p);
        stream_tls_context_unref(a);
        stream_tls_context_unref(b);
        stream_tls_context_unref(b_only);
        stream_tls_context_unref(ip_only);
        stream_tls_context_unref(none);
}

Test(stream_tls, psk) {
        char f1[300], f2[300];
        StreamTlsContext *c1, *s1, *c2;
        uint8_t x[32], y[32];
        Pair p;

        (void) snprintf(f1, sizeof f1, "%s/psk1/a/psk.txt", pki);
        (void) snprintf(f2, sizeof f2, "%s/psk2/a/psk.txt", pki);
        c1 = psk_ctx(f1, NULL);
        s1 = psk_ctx(f1, NULL);
        c2 = psk_ctx(f2, NULL);

        handshake_pair(&p, c1, s1);
        cr_assert_eq(p.r[0], 1, "%s", p.err[0].text);
        cr_assert_eq(p.r[1], 1, "%s", p.err[1].text);
        cr_assert_str_eq(stream_tls_peer_name(p.s[1]), "psk:host-a");
        cr_assert_eq(stream_tls_channel_binding(p.s[0], x), 0);
        cr_assert_eq(stream_tls_channel_binding(p.s[1], y), 0);
        cr_assert_arr_eq(x, y, 32);
        pair_done(&p);

        /* same identity, another key */
        handshake_pair(&p, c2, s1);
        cr_assert_lt(p.r[0], 0);
        cr_assert_lt(p.r[1], 0);
        cr_assert(strstr(p.err[1].text, "PSK mismatch") || strstr(p.err[0].text, "PSK mismatch"), "server: %s / client: %s",
                  p.err[1].text, p.err[0].text);
        pair_done(&p);
        stream_tls_context_unref(c1);
        stream_tls_context_unref(s1);
        stream_tls_context_unref(c2);
}

Test(stream_tls, peer_is_not_tls) {
        StreamTlsContext *a = x509_ctx(pki, "a", NULL);
        StreamTlsSession *s = NULL;
        ErrorMessage err = {};
        const uint8_t *prefix;
        int fd[2], r;
        char junk[128] = "VFMWELCM cleartext answer from a daemon without TLS";

        /* a client whose peer answers in cleartext */
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fd), 0);
        cr_assert_eq(stream_tls_session_new(a, fd[0], false, &s, &err), 0);
        cr_assert_eq(write(fd[1], junk, sizeof junk), (ssize_t) sizeof junk);
        r = stream_tls_handshake(s, 0, -1, &err);
        cr_assert_eq(r, -EPROTONOSUPPORT, "%d %s", r, err.text);
        cr_assert(strstr(err.text, "does not speak TLS"), "%s", err.text);
        /* GnuTLS stops after a record header's worth: the rest waits on the socket */
        cr_assert_geq(stream_tls_peer_prefix(s, &prefix), 5u);
        cr_assert_eq(memcmp(prefix, "VFMWE", 5), 0);
        stream_tls_session_free(s);
        safe_close(fd[0]);
        safe_close(fd[1]);

        /* a server whose client speaks cleartext */
        err = (ErrorMessage) {};
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fd), 0);
        cr_assert_eq(stream_tls_session_new(a, fd[0], true, &s, &err), 0);
        memcpy(junk, "VFMHELLO", 8);
        cr_assert_eq(write(fd[1], junk, sizeof junk), (ssize_t) sizeof junk);
        r = stream_tls_handshake(s, 0, -1, &err);
        cr_assert_eq(r, -EPROTONOSUPPORT, "%d %s", r, err.text);
        cr_assert(!stream_tls_looks_like_tls((const uint8_t *) junk, sizeof junk));
        stream_tls_session_free(s);
        safe_close(fd[0]);
        safe_close(fd[1]);

        /* the peer closes during the handshake; a deadline ends a silent one */
        err = (ErrorMessage) {};
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fd), 0);
        cr_assert_eq(stream_tls_session_new(a, fd[0], false, &s, &err), 0);
        r = stream_tls_handshake(s, 1, -1, &err);
        cr_assert_eq(r, -ETIMEDOUT, "%d %s", r, err.text);
        safe_close(fd[1]);
        stream_tls_session_free(s);
        cr_assert_eq(stream_tls_session_new(a, fd[0], false, &s, &err), 0);
        err = (ErrorMessage) {};
        r = stream_tls_handshake(s, 0, -1, &err);
        cr_assert(r == -ECONNRESET || r == -EPIPE, "%d %s", r, err.text);
        stream_tls_session_free(s);
        safe_close(fd[0]);
        stream_tls_context_unref(a);
}

Test(stream_tls, bad_credentials) {
        StreamTlsConfig c = {};
        StreamTlsContext *ctx = NULL;
        ErrorMessage err = {};
        char ca[300], cert[300];
        FILE *f;

        cr_assert_eq(stream_tls_context_new(&c, &ctx, &err), -EINVAL);
        cr_assert(strstr(err.text, "either x509 credentials or a PSK file"), "%s", err.text);

        (void) snprintf(ca, sizeof ca, "%s/a/ca-cert.pem", pki);
        (void) snprintf(cert, sizeof cert, "%s/a/server-cert.pem", pki);
        c = (StreamTlsConfig) { .ca_file = ca, .cert_file = cert, .key_file = "/nonexistent/server-key.pem" };
        err = (ErrorMessage) {};
        cr_assert_lt(stream_tls_context_new(&c, &ctx, &err), 0);
        cr_assert(strstr(err.text, "/nonexistent/server-key.pem"), "%s", err.text);

        /* a key that belongs to another certificate */
        c.key_file = path("b", "server-key.pem");
        err = (ErrorMessage) {};
        cr_assert_lt(stream_tls_context_new(&c, &ctx, &err), 0);
        cr_assert(strstr(err.text, "cannot load the certificate"), "%s", err.text);

        /* PSK files: garbage, a short key, a missing identity */
        (void) snprintf(ca, sizeof ca, "%s/bad-psk.txt", pki);
        f = fopen(ca, "we");
        cr_assert(f);
        fputs("nocolonhere\n", f);
        fclose(f);
        c = (StreamTlsConfig) { .psk_file = ca };
        err = (ErrorMessage) {};
        cr_assert_eq(stream_tls_context_new(&c, &ctx, &err), -EINVAL);
        cr_assert(strstr(err.text, ":1: expected \"identity:hexkey\""), "%s", err.text);
        f = fopen(ca, "we");
        fputs("id:00112233\n", f);
        fclose(f);
        err = (ErrorMessage) {};
        cr_assert_eq(stream_tls_context_new(&c, &ctx, &err), -EINVAL);
        cr_assert(strstr(err.text, "16 to 64 bytes"), "%s", err.text);
        c = (StreamTlsConfig) { .psk_file = path("psk1/a", "psk.txt"), .psk_identity = "nobody" };
        err = (ErrorMessage) {};
        cr_assert_eq(stream_tls_context_new(&c, &ctx, &err), -ENOENT);
        cr_assert(strstr(err.text, "no key for the identity \"nobody\""), "%s", err.text);
}

/* Kernel TLS where this kernel has it; either way data must flow and the transport be named. */
Test(stream_tls, kernel_tls_or_user_space_on_tcp) {
        char ca[300], cert[300], key[300];
        StreamTlsConfig cfg = { .ca_file = ca, .cert_file = cert, .key_file = key, .ktls = true };
        StreamTlsContext *ctx = NULL;
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof sa;
        int l, fds[2];
        Pair p = {};
        StreamTransport t0, t1;
        uint8_t out[100000], in[100000];
        pthread_t th;
        Sender x;
        bool done[2] = {};
        ErrorMessage err = {};

        (void) snprintf(ca, sizeof ca, "%s/a/ca-cert.pem", pki);
        (void) snprintf(cert, sizeof cert, "%s/a/server-cert.pem", pki);
        (void) snprintf(key, sizeof key, "%s/a/server-key.pem", pki);
        cr_assert_eq(stream_tls_context_new(&cfg, &ctx, &err), 0, "%s", err.text);
        l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_eq(bind(l, (struct sockaddr *) &sa, sizeof sa), 0);
        cr_assert_eq(listen(l, 1), 0);
        cr_assert_eq(getsockname(l, (struct sockaddr *) &sa, &len), 0);
        fds[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        (void) connect(fds[0], (struct sockaddr *) &sa, sizeof sa);
        fds[1] = accept4(l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        cr_assert_geq(fds[1], 0);
        safe_close(l);
        p.fd[0] = fds[0];
        p.fd[1] = fds[1];
        cr_assert_eq(stream_tls_session_new(ctx, fds[0], false, &p.s[0], &err), 0);
        cr_assert_eq(stream_tls_session_new(ctx, fds[1], true, &p.s[1], &err), 0);
        while (!(done[0] && done[1])) {
                for (int k = 0; k < 2; k++) {
                        short ev;
                        if (done[k])
                                continue;
                        p.r[k] = stream_tls_handshake_step(p.s[k], &ev, &p.err[k]);
                        cr_assert_geq(p.r[k], 0, "%s", p.err[k].text);
                        done[k] = p.r[k] == 1;
                }
        }
        cr_assert_eq(stream_tls_start(p.s[0], &t0, &err), 0, "%s", err.text);
        cr_assert_eq(stream_tls_start(p.s[1], &t1, &err), 0, "%s", err.text);
        cr_assert_eq(t0, t1);
        cr_assert_eq(t0 == STREAM_TRANSPORT_TLS_KERNEL, stream_tls_context_ktls(ctx));
        cr_log_info("transport on this kernel: %s", stream_transport_to_string(t0));
        for (size_t k = 0; k < sizeof out; k++)
                out[k] = (uint8_t) (k * 7);
        x = (Sender) { .s = p.s[0], .buf = out, .n = sizeof out };
        cr_assert_eq(pthread_create(&th, NULL, sender, &x), 0);
        recv_all(p.s[1], in, sizeof in);
        pthread_join(th, NULL);
        cr_assert_eq(x.r, 0);
        cr_assert_arr_eq(in, out, sizeof out);
        pair_done(&p);
        stream_tls_context_unref(ctx);
}

/* ---- ring mode: the ciphertext moved by hand, as the engine's io_uring moves it ---- */

static StreamTlsContext *ring_ctx(void) {
        char f[300];

        (void) snprintf(f, sizeof f, "%s/psk1/a/psk.txt", pki);
        return psk_ctx(f, NULL);
}

/* A handshake, then user-space records on both ends, in ring mode when ring is set. */
static void ring_pair(Pair *p, StreamTlsContext *c, bool ring) {
        StreamTransport t;

        handshake_pair(p, c, c);
        cr_assert_eq(p->r[0], 1, "%s", p->err[0].text);
        cr_assert_eq(p->r[1], 1, "%s", p->err[1].text);
        for (int k = 0; k < 2; k++) {
                cr_assert_eq(stream_tls_start(p->s[k], &t, NULL), 0);
                cr_assert_eq(t, STREAM_TRANSPORT_TLS_USER);
                if (ring)
                        cr_assert_eq(stream_tls_ring_start(p->s[k], true, true), 0);
        }
}

static uint8_t *pattern(size_t n, unsigned salt) {
        uint8_t *b = malloc(n);

        cr_assert(b);
        for (size_t k = 0; k < n; k++)
                b[k] = (uint8_t) ((k + salt) * 2654435761u >> 13);
        return b;
}

/* What s sealed and the ring has not sent yet, all of it (malloc'd), as sent. */
static uint8_t *take_sealed(StreamTlsSession *s, size_t *ret_n) {
        const uint8_t *p;
        size_t n = stream_tls_ring_out(s, &p);
        uint8_t *b = malloc(n ?: 1);

        cr_assert(b);
        memcpy(b, p, n);
        stream_tls_ring_sent(s, n);
        cr_assert_eq(stream_tls_ring_out(s, &p), 0u);
        *ret_n = n;
        return b;
}

/* n bytes of ciphertext arrive at s in one receive. */
static void feed(StreamTlsSession *s, const uint8_t *buf, size_t n) {
        uint8_t *p;
        size_t room = stream_tls_ring_in(s, &p);

        cr_assert_geq(room, n, "%zu bytes do not fit in %zu", n, room);
        memcpy(p, buf, n);
        stream_tls_ring_received(s, n);
}

/* Opens into buf (at most n) until a result that is not data; returns the bytes opened, the
 * last result in *ret_last. */
static size_t open_all(StreamTlsSession *s, uint8_t *buf, size_t n, ssize_t *ret_last) {
        size_t got = 0;
        ssize_t k;

        for (;;) {
                k = stream_tls_open(s, buf + got, n - got);
                if (k <= 0)
                        break;
                got += (size_t) k;
                cr_assert_leq(got, n);
                if (got == n) {
                        uint8_t extra;
                        k = stream_tls_open(s, &extra, 1);
                        cr_assert_leq(k, 0, "more plaintext than was sealed");
                        break;
                }
        }
        *ret_last = k;
        return got;
}

Test(stream_tls, ring_record_split_across_receives) {
        StreamTlsContext *c = ring_ctx();
        size_t n = 40000, clen, got = 0;
        uint8_t *out = pattern(n, 1), *in = malloc(n), *ct;
        /* inside the first record's 5-byte header, in its body, then across a record boundary */
        size_t cuts[] = { 1, 4, 5, 10000, 16409, 16420 };
        size_t prev = 0;
        ssize_t last;
        Pair p;

        ring_pair(&p, c, true);
        cr_assert_eq(stream_tls_seal(p.s[0], out, n), 0);
        ct = take_sealed(p.s[0], &clen);
        cr_assert_gt(clen, n + 3 * 22 - 1, "three records with their overhead: %zu bytes", clen);
        cr_assert_null(memmem(ct, clen, out, 64), "plaintext among the sealed records");
        for (size_t k = 0; k <= ELEMENTSOF(cuts); k++) {
                size_t end = k < ELEMENTSOF(cuts) ? cuts[k] : clen;
                feed(p.s[1], ct + prev, end - prev);
                prev = end;
                got += open_all(p.s[1], in + got, n - got, &last);
                cr_assert_eq(last, -EAGAIN, "after %zu bytes: %zd", end, last);
                if (end < 16384 + 22)
                        cr_assert_eq(got, 0u, "a partial record opened (%zu bytes in)", end);
        }
        cr_assert_eq(got, n);
        cr_assert_arr_eq(in, out, n);
        pair_done(&p);
        free(out);
        free(in);
        free(ct);
        stream_tls_context_unref(c);
}

Test(stream_tls, ring_many_records_in_one_receive) {
        StreamTlsContext *c = ring_ctx();
        size_t sizes[] = { (1u << 20) + 32, 100, 300 * 1024 }, total = 0, clen, off = 0, got = 0;
        uint8_t *out[3], *in, *ct, *room;
        ssize_t last;
        Pair p;

        ring_pair(&p, c, true);
        /* three packets sealed one after the other before the ring sends: one buffer */
        for (int k = 0; k < 3; k++) {
                out[k] = pattern(sizes[k], (unsigned) k);
                cr_assert_eq(stream_tls_seal(p.s[0], out[k], sizes[k]), 0);
                total += sizes[k];
        }
        ct = take_sealed(p.s[0], &clen);
        in = malloc(total);
        cr_assert(in);
        /* each receive as large as the inbound buffer takes: dozens of records at once */
        while (off < clen) {
                size_t space = stream_tls_ring_in(p.s[1], &room), n = MIN(space, clen - off);
                cr_assert_gt(space, 16u * 16406u, "the receive buffer holds only %zu bytes", space);
                feed(p.s[1], ct + off, n);
                off += n;
                got += open_all(p.s[1], in + got, total - got, &last);
                cr_assert_eq(last, -EAGAIN, "%zd", last);
        }
        cr_assert_eq(got, total);
        for (size_t k = 0, at = 0; k < 3; at += sizes[k], k++) {
                cr_assert_arr_eq(in + at, out[k], sizes[k], "packet %zu", k);
                free(out[k]);
        }
        pair_done(&p);
        free(in);
        free(ct);
        stream_tls_context_unref(c);
}

Test(stream_tls, ring_corrupted_record) {
        StreamTlsContext *c = ring_ctx();
        size_t n = 50000, clen, got;
        uint8_t *out = pattern(n, 7), *in = malloc(n), *ct;
        ssize_t last;
        Pair p;

        ring_pair(&p, c, true);
        cr_assert_eq(stream_tls_seal(p.s[0], out, n), 0);
        ct = take_sealed(p.s[0], &clen);
        ct[16406 + 5 + 1000] ^= 0x20; /* a bit in the second record's body */
        feed(p.s[1], ct, clen);
        got = open_all(p.s[1], in, n, &last);
        cr_assert_eq(got, 16384u, "the first record is intact and opens");
        cr_assert_arr_eq(in, out, got);
        cr_assert_eq(last, -EBADMSG, "the altered record gave %zd (%s)", last, strerror((int) -last));
        pair_done(&p);
        free(out);
        free(in);
        free(ct);
        stream_tls_context_unref(c);
}

Test(stream_tls, ring_alert_and_close_notify) {
        StreamTlsContext *c = ring_ctx();
        uint8_t *out = pattern(1000, 3), in[2000], *ct;
        size_t clen, got;
        ssize_t last;
        Pair p;

        /* data, then the peer's fatal alert in the same receive: the data, then -EACCES named */
        ring_pair(&p, c, true);
        cr_assert_eq(stream_tls_seal(p.s[0], out, 1000), 0);
        cr_assert_eq(stream_tls_test_alert(p.s[0], true, GNUTLS_A_ACCESS_DENIED), 0);
        ct = take_sealed(p.s[0], &clen);
        feed(p.s[1], ct, clen);
        got = open_all(p.s[1], in, sizeof in, &last);
        cr_assert_eq(got, 1000u);
        cr_assert_arr_eq(in, out, 1000);
        cr_assert_eq(last, -EACCES, "an alert gave %zd", last);
        cr_assert(strstr(stream_tls_error(p.s[1]), "access denied") || strstr(stream_tls_error(p.s[1]), "Access"),
                  "%s", stream_tls_error(p.s[1]));
        cr_assert(strstr(stream_tls_error(p.s[1]), "does not allow our identity"), "%s", stream_tls_error(p.s[1]));
        free(ct);
        pair_done(&p);

        /* data, then close_notify: the data, then the end (-ECONNRESET) */
        ring_pair(&p, c, true);
        cr_assert_eq(stream_tls_seal(p.s[0], out, 1000), 0);
        cr_assert_eq(stream_tls_test_alert(p.s[0], false, GNUTLS_A_CLOSE_NOTIFY), 0);
        ct = take_sealed(p.s[0], &clen);
        feed(p.s[1], ct, clen);
        got = open_all(p.s[1], in, sizeof in, &last);
        cr_assert_eq(got, 1000u);
        cr_assert_arr_eq(in, out, 1000);
        cr_assert_eq(last, -ECONNRESET, "close_notify gave %zd", last);
        cr_assert_str_eq(stream_tls_error(p.s[1]), "", "close_notify is not a refusal");
        free(ct);
        pair_done(&p);
        free(out);
        stream_tls_context_unref(c);
}

Test(stream_tls, ring_key_update_flows_through_the_buffers) {
        StreamTlsContext *c = ring_ctx();
        size_t n = 20000, clen, got;
        uint8_t *a = pattern(n, 11), *b = pattern(n, 12), *in = malloc(2 * n), *ct;
        ssize_t last;
        Pair p;

        ring_pair(&p, c, true);
        /* what GnuTLS sends on its own (after 2^24 records) lands among the sealed records;
         * asking the peer to update too makes the peer's next seal carry its own KeyUpdate */
        cr_assert_eq(stream_tls_seal(p.s[0], a, n), 0);
        cr_assert_eq(stream_tls_test_key_update(p.s[0], true), 0);
        cr_assert_eq(stream_tls_seal(p.s[0], b, n), 0);
        ct = take_sealed(p.s[0], &clen);
        feed(p.s[1], ct, clen);
        got = open_all(p.s[1], in, 2 * n, &last);
        cr_assert_eq(got, 2 * n, "opened %zu bytes across the KeyUpdate, then %zd", got, last);
        cr_assert_arr_eq(in, a, n);
        cr_assert_arr_eq(in + n, b, n, "the records under the new key");
        free(ct);

        cr_assert_eq(stream_tls_seal(p.s[1], a, 100), 0);
        ct = take_sealed(p.s[1], &clen);
        feed(p.s[0], ct, clen);
        got = open_all(p.s[0], in, 100, &last);
        cr_assert_eq(got, 100u, "the peer's answer after its own KeyUpdate: %zd", last);
        cr_assert_arr_eq(in, a, 100);
        free(ct);
        pair_done(&p);
        free(a);
        free(b);
        free(in);
        stream_tls_context_unref(c);
}

Test(stream_tls, ring_takes_over_what_socket_mode_read_ahead) {
        StreamTlsContext *c = ring_ctx();
        uint8_t *a = pattern(3000, 21), *b = pattern(5000, 22), in[5000];
        size_t got;
        ssize_t last;
        Sender x;
        Pair p;

        ring_pair(&p, c, false);
        /* two messages on the socket; the receiver reads the first, and reads ahead the second */
        x = (Sender) { .s = p.s[0], .buf = a, .n = 3000 };
        sender(&x);
        cr_assert_eq(x.r, 0);
        x = (Sender) { .s = p.s[0], .buf = b, .n = 5000 };
        sender(&x);
        cr_assert_eq(x.r, 0);
        {
                struct pollfd pf = { .fd = p.fd[1], .events = POLLIN };
                cr_assert_eq(poll(&pf, 1, 2000), 1);
                (void) poll(&pf, 0, 50); /* both messages in the socket */
        }
        recv_all(p.s[1], in, 3000);
        cr_assert_arr_eq(in, a, 3000);
        cr_assert(stream_tls_pending(p.s[1]), "the second message was not read ahead");
        cr_assert_eq(stream_tls_ring_start(p.s[1], false, true), 0);
        got = open_all(p.s[1], in, 5000, &last);
        cr_assert_eq(got, 5000u, "%zd", last);
        cr_assert_arr_eq(in, b, 5000);
        /* a direction left on the socket still works */
        x = (Sender) { .s = p.s[1], .buf = a, .n = 3000 };
        sender(&x);
        cr_assert_eq(x.r, 0);
        recv_all(p.s[0], in, 3000);
        cr_assert_arr_eq(in, a, 3000);
        pair_done(&p);
        free(a);
        free(b);
        stream_tls_context_unref(c);
}
