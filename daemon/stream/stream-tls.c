/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * Why things are the way they are here:
 *  - TLS 1.3 only, and no session tickets: every channel does a full mutual handshake, and no
 *    post-handshake record (a NewSessionTicket) can arrive after the record layer went to the
 *    kernel, which would fail it.
 *  - Certificates are checked in our own verify callback, not by host name: peers are named by
 *    address, and the orchestrator, not DNS, says which host is which. The CA says the peer is one
 *    of ours; the allow-list (when set) says which of ours may talk to us.
 *  - The server does not send its list of acceptable CAs, so a client with a certificate from
 *    another CA still presents it and the server can say "unknown CA" instead of "no certificate".
 *  - Our own push/pull functions: the caller picks blocking or not per call (MSG_DONTWAIT), and
 *    the first bytes a peer sends are kept, so "the peer answered in cleartext" can be told
 *    apart from a broken TLS peer.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <fnmatch.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "hexdecoct.h"
#include "log.h"
#include "stream-tls-internal.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

/* AES-GCM first: with AES-NI it runs at several GB/s per core where ChaCha20 does a few hundred
 * MB/s, and GnuTLS would otherwise pick ChaCha20 here; it stays for peers without AES. */
#define PRIORITY_CIPHERS ":-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305"
#define PRIORITY_X509 "NORMAL:-VERS-ALL:+VERS-TLS1.3" PRIORITY_CIPHERS
#define PRIORITY_PSK "NORMAL:-VERS-ALL:+VERS-TLS1.3:-KX-ALL:+ECDHE-PSK:+DHE-PSK" PRIORITY_CIPHERS
#define PSK_FILE_MAX (64u * 1024u)
#define PSK_KEY_MAX 64u
#define PSK_IDENTITY_MAX 128u

typedef struct PskEntry {
        char identity[PSK_IDENTITY_MAX + 1];
        uint8_t key[PSK_KEY_MAX];
        size_t key_size;
} PskEntry;

struct StreamTlsContext {
        _Atomic unsigned n_ref;
        gnutls_certificate_credentials_t x509;
        gnutls_psk_server_credentials_t psk_server;
        gnutls_psk_client_credentials_t psk_client;
        gnutls_priority_t priority;
        PskEntry *psk;
        size_t n_psk;
        char **allowed;
        bool ktls;
        char describe[320];
};


static const char *const transport_names[_STREAM_TRANSPORT_MAX] = {
        [STREAM_TRANSPORT_CLEARTEXT] = "cleartext",
        [STREAM_TRANSPORT_TLS_USER] = "tls-user",
        [STREAM_TRANSPORT_TLS_KERNEL] = "tls-kernel",
};

const char *stream_transport_to_string(StreamTransport t) {
        return t >= 0 && t < _STREAM_TRANSPORT_MAX ? transport_names[t] : "?";
}

bool stream_tls_looks_like_tls(const uint8_t *buf, size_t n) {
        /* a record: content type handshake (22), legacy version 3.x */
        return n >= 2 && buf[0] == 22 && buf[1] == 3;
}

/* ---- identities ---- */

static bool allowed(const StreamTlsContext *c, const char *name) {
        if (!c->allowed || !c->allowed[0])
                return true;
        for (char **p = c->allowed; *p; p++)
                if (fnmatch(*p, name, 0) == 0)
                        return true;
        return false;
}

static void format_time(time_t t, char *buf, size_t size) {
        struct tm tm;

        if (t == (time_t) -1 || !gmtime_r(&t, &tm) || strftime(buf, size, "%Y-%m-%d %H:%M:%S UTC", &tm) == 0)
                (void) snprintf(buf, size, "?");
}

/* Whether any of the certificate's names is on the allow-list; *ret_names lists them for the
 * refusal's text. */
static bool certificate_allowed(const StreamTlsContext *c, gnutls_x509_crt_t crt, const char *dn, char *names,
                                size_t size) {
        bool ok = allowed(c, dn);
        size_t used;

        used = (size_t) snprintf(names, size, "subject \"%s\"", dn);
        for (unsigned k = 0; used < size; k++) {
                char san[256], text[INET6_ADDRSTRLEN + 8];
                size_t san_size = sizeof san - 1;
                unsigned critical = 0;
                int type = gnutls_x509_crt_get_subject_alt_name(crt, k, san, &san_size, &critical);

                if (type == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
                        break;
                if (type == GNUTLS_SAN_DNSNAME) {
                        san[MIN(san_size, sizeof san - 1)] = '\0';
                        (void) snprintf(text, sizeof text, "%.*s", (int) sizeof text - 1, san);
                } else if (type == GNUTLS_SAN_IPADDRESS && (san_size == 4 || san_size == 16)) {
                        if (!inet_ntop(san_size == 4 ? AF_INET : AF_INET6, san, text, sizeof text))
                                continue;
                } else
                        continue;
                ok = ok || allowed(c, text);
                used += (size_t) snprintf(names + used, size - used, ", \"%s\"", text);
        }
        return ok;
}

static int verify_certificate(gnutls_session_t session) {
        StreamTlsSession *s = gnutls_session_get_ptr(session);
        const StreamTlsContext *c = s->ctx;
        const gnutls_datum_t *chain;
        gnutls_x509_crt_t crt = NULL;
        gnutls_datum_t dn = {};
        unsigned n = 0, status = 0;
        char names[300], when[64];
        int r;

        chain = gnutls_certificate_get_peers(session, &n);
        if (!chain || n == 0) {
                (void) snprintf(s->verify_error, sizeof s->verify_error, "the peer presented no certificate");
                return -1;
        }
        if (gnutls_x509_crt_init(&crt) < 0 || gnutls_x509_crt_import(crt, &chain[0], GNUTLS_X509_FMT_DER) < 0 ||
            gnutls_x509_crt_get_dn3(crt, &dn, 0) < 0) {
                (void) snprintf(s->verify_error, sizeof s->verify_error, "the peer's certificate cannot be parsed");
                goto fail;
        }
        (void) snprintf(s->peer_name, sizeof s->peer_name, "%s", (const char *) dn.data);

        r = gnutls_certificate_verify_peers2(session, &status);
        if (r < 0) {
                (void) snprintf(s->verify_error, sizeof s->verify_error, "cannot verify the peer's certificate (%s): %s",
                                s->peer_name, gnutls_strerror(r));
                goto fail;
        }
        if (status & GNUTLS_CERT_REVOKED) {
                (void) snprintf(s->verify_error, sizeof s->verify_error,
                                "the peer's certificate (%s) is revoked by our certificate revocation list", s->peer_name);
                s->verify_alert = GNUTLS_A_CERTIFICATE_REVOKED;
                goto fail;
        }
        if (status & (GNUTLS_CERT_SIGNER_NOT_FOUND | GNUTLS_CERT_SIGNER_NOT_CA)) {
                gnutls_datum_t issuer = {};
                (void) gnutls_x509_crt_get_issuer_dn3(crt, &issuer, 0);
                (void) snprintf(s->verify_error, sizeof s->verify_error,
                                "unknown CA: the peer's certificate (%s) is issued by \"%s\", which our CA file does not vouch for",
                                s->peer_name, issuer.data ? (const char *) issuer.data : "?");
                gnutls_free(issuer.data);
                s->verify_alert = GNUTLS_A_UNKNOWN_CA;
                goto fail;
        }
        if (status & GNUTLS_CERT_EXPIRED) {
                format_time(gnutls_x509_crt_get_expiration_time(crt), when, sizeof when);
                (void) snprintf(s->verify_error, sizeof s->verify_error, "the peer's certificate (%s) expired on %s",
                                s->peer_name, when);
                s->verify_alert = GNUTLS_A_CERTIFICATE_EXPIRED;
                goto fail;
        }
        if (status & GNUTLS_CERT_NOT_ACTIVATED) {
                format_time(gnutls_x509_crt_get_activation_time(crt), when, sizeof when);
                (void) snprintf(s->verify_error, sizeof s->verify_error,
                                "the peer's certificate (%s) is not valid yet: not before %s", s->peer_name, when);
                goto fail;
        }
        if (status != 0) {
                gnutls_datum_t text = {};
                (void) gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &text, 0);
                (void) snprintf(s->verify_error, sizeof s->verify_error, "the peer's certificate (%s) is not trusted: %s",
                                s->peer_name, text.data ? (const char *) text.data : "?");
                gnutls_free(text.data);
                goto fail;
        }
        if (!certificate_allowed(c, crt, s->peer_name, names, sizeof names)) {
                (void) snprintf(s->verify_error, sizeof s->verify_error,
                                "the peer's identity is not allowed: none of %s is on the allowed-peers list", names);
                s->verify_alert = GNUTLS_A_ACCESS_DENIED;
                goto fail;
        }
        gnutls_free(dn.data);
        gnutls_x509_crt_deinit(crt);
        return 0;
fail:
        gnutls_free(dn.data);
        if (crt)
                gnutls_x509_crt_deinit(crt);
        return -1;
}

static int psk_server_key(gnutls_session_t session, const char *identity, gnutls_datum_t *key) {
        StreamTlsSession *s = gnutls_session_get_ptr(session);
        const StreamTlsContext *c = s->ctx;

        (void) snprintf(s->peer_name, sizeof s->peer_name, "psk:%s", identity);
        for (size_t k = 0; k < c->n_psk; k++) {
                if (!streq(c->psk[k].identity, identity))
                        continue;
                if (!allowed(c, identity)) {
                        (void) snprintf(s->verify_error, sizeof s->verify_error,
                                        "the peer's PSK identity \"%s\" is not on the allowed-peers list", identity);
                        s->verify_alert = GNUTLS_A_ACCESS_DENIED;
                        return -1;
                }
                key->data = gnutls_malloc(c->psk[k].key_size);
                if (!key->data)
                        return -1;
                memcpy(key->data, c->psk[k].key, c->psk[k].key_size);
                key->size = (unsigned) c->psk[k].key_size;
                return 0;
        }
        (void) snprintf(s->verify_error, sizeof s->verify_error, "unknown PSK identity \"%.128s\": not in our PSK file",
                        identity);
        s->verify_alert = GNUTLS_A_UNKNOWN_PSK_IDENTITY;
        return -1;
}

/* ---- the context ---- */

static int load_psk_file(const char *path, PskEntry **ret, size_t *ret_n, ErrorMessage *err) {
        _cleanup_fclose_ FILE *f = NULL;
        _cleanup_free_ PskEntry *list = NULL;
        char line[PSK_IDENTITY_MAX + 2 * PSK_KEY_MAX + 8];
        size_t n = 0, lineno = 0, total = 0;

        f = fopen(path, "re");
        if (!f)
                return error_setf(err, -errno, "cannot open the PSK file %s: %m", path);
        while (fgets(line, sizeof line, f)) {
                size_t len = strlen(line), hexlen;
                char *colon, *hex;
                PskEntry *e;

                lineno++;
                total += len;
                if (total > PSK_FILE_MAX)
                        return error_setf(err, -EFBIG, "the PSK file %s is larger than %u bytes", path, PSK_FILE_MAX);
                if (len > 0 && line[len - 1] != '\n' && !feof(f))
                        return error_setf(err, -EINVAL, "%s:%zu: line too long", path, lineno);
                while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r' || line[len - 1] == ' '))
                        line[--len] = '\0';
                if (len == 0 || line[0] == '#')
                        continue;
                colon = strchr(line, ':');
                if (!colon || colon == line || (size_t) (colon - line) > PSK_IDENTITY_MAX)
                        return error_setf(err, -EINVAL, "%s:%zu: expected \"identity:hexkey\"", path, lineno);
                *colon = '\0';
                hex = colon + 1;
                hexlen = strlen(hex);
                if (hexlen < 32 || hexlen > 2 * PSK_KEY_MAX || hexlen % 2 != 0)
                        return error_setf(err, -EINVAL, "%s:%zu: the key must be 16 to %u bytes in hexadecimal", path,
                                          lineno, PSK_KEY_MAX);
                e = reallocarray(list, n + 1, sizeof *list);
                if (!e)
                        return -ENOMEM;
                list = e;
                e = &list[n];
                *e = (PskEntry) { .key_size = hexlen / 2 };
                (void) snprintf(e->identity, sizeof e->identity, "%s", line);
                for (size_t k = 0; k < e->key_size; k++) {
                        int hi = unhexchar(hex[2 * k]), lo = unhexchar(hex[2 * k + 1]);
                        if (hi < 0 || lo < 0)
                                return error_setf(err, -EINVAL, "%s:%zu: the key is not hexadecimal", path, lineno);
                        e->key[k] = (uint8_t) (hi << 4 | lo);
                }
                n++;
        }
        if (n == 0)
                return error_setf(err, -EINVAL, "the PSK file %s has no \"identity:hexkey\" line", path);
        *ret = TAKE_PTR(list);
        *ret_n = n;
        return 0;
}

/* Whether TCP_ULP "tls" works here: on a loopback connection of our own (which also makes the
 * kernel load tls.ko where it is a module). */
static bool probe_ktls(void) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof a;
        _cleanup_close_ int l = -EBADF, c = -EBADF, s = -EBADF;
        bool ok;

        l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (l < 0 || c < 0 || bind(l, (struct sockaddr *) &a, sizeof a) < 0 || listen(l, 1) < 0 ||
            getsockname(l, (struct sockaddr *) &a, &len) < 0 || connect(c, (struct sockaddr *) &a, sizeof a) < 0) {
                log_debug_errno(errno, "tls: cannot probe kernel TLS (no loopback connection): %m");
                return false;
        }
        s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        ok = setsockopt(c, SOL_TCP, TCP_ULP, "tls", sizeof "tls") >= 0;
        if (!ok)
                log_debug_errno(errno, "tls: the kernel has no TLS (TCP_ULP \"tls\": %m)");
        return ok;
}

static void global_init(void) {
        /* gnutls_global_init() is reference counted and thread safe since 3.3; call it once. */
        static atomic_bool done;
        bool expected = false;

        if (atomic_compare_exchange_strong(&done, &expected, true))
                (void) gnutls_global_init();
}

StreamTlsContext *stream_tls_context_ref(StreamTlsContext *c) {
        if (c)
                atomic_fetch_add(&c->n_ref, 1);
        return c;
}

StreamTlsContext *stream_tls_context_unref(StreamTlsContext *c) {
        if (!c || atomic_fetch_sub(&c->n_ref, 1) > 1)
                return NULL;
        if (c->x509)
                gnutls_certificate_free_credentials(c->x509);
        if (c->psk_server)
                gnutls_psk_free_server_credentials(c->psk_server);
        if (c->psk_client)
                gnutls_psk_free_client_credentials(c->psk_client);
        if (c->priority)
                gnutls_priority_deinit(c->priority);
        if (c->psk)
                explicit_bzero(c->psk, c->n_psk * sizeof *c->psk);
        free(c->psk);
        strv_free(c->allowed);
        free(c);
        return NULL;
}

static int load_x509(StreamTlsContext *c, const StreamTlsConfig *cfg, ErrorMessage *err) {
        gnutls_x509_crt_t *certs = NULL;
        unsigned n_certs = 0;
        gnutls_datum_t dn = {};
        int r;

        if (!cfg->ca_file || !cfg->cert_file || !cfg->key_file)
                return error_setf(err, -EINVAL, "x509 needs a CA file, a certificate and a key");
        r = gnutls_certificate_allocate_credentials(&c->x509);
        if (r < 0)
                return error_setf(err, -ENOMEM, "cannot allocate TLS credentials: %s", gnutls_strerror(r));
        r = gnutls_certificate_set_x509_trust_file(c->x509, cfg->ca_file, GNUTLS_X509_FMT_PEM);
        if (r == 0)
                return error_setf(err, -EINVAL, "the CA file %s holds no certificate", cfg->ca_file);
        if (r < 0)
                return error_setf(err, r == GNUTLS_E_FILE_ERROR ? -ENOENT : -EINVAL, "cannot load the CA file %s: %s",
                                  cfg->ca_file, gnutls_strerror(r));
        if (cfg->crl_file) {
                r = gnutls_certificate_set_x509_crl_file(c->x509, cfg->crl_file, GNUTLS_X509_FMT_PEM);
                if (r < 0)
                        return error_setf(err, r == GNUTLS_E_FILE_ERROR ? -ENOENT : -EINVAL,
                                          "cannot load the certificate revocation list %s: %s", cfg->crl_file,
                                          gnutls_strerror(r));
        }
        r = gnutls_certificate_set_x509_key_file2(c->x509, cfg->cert_file, cfg->key_file, GNUTLS_X509_FMT_PEM, NULL, 0);
        if (r < 0)
                return error_setf(err, r == GNUTLS_E_FILE_ERROR ? -ENOENT : -EINVAL,
                                  "cannot load the certificate %s with the key %s: %s", cfg->cert_file, cfg->key_file,
                                  gnutls_strerror(r));
        gnutls_certificate_set_verify_function(c->x509, verify_certificate);

        /* Our own certificate: say in the log who we are, and warn while it is or goes stale
         * (peers will refuse it; better to learn that at start than at the first migration). */
        r = gnutls_certificate_get_x509_crt(c->x509, 0, &certs, &n_certs);
        if (r >= 0 && n_certs > 0) {
                time_t now = time(NULL), expires = gnutls_x509_crt_get_expiration_time(certs[0]),
                       starts = gnutls_x509_crt_get_activation_time(certs[0]);
                char when[64];

                if (gnutls_x509_crt_get_dn3(certs[0], &dn, 0) >= 0)
                        (void) snprintf(c->describe, sizeof c->describe, "x509, subject \"%s\"", (const char *) dn.data);
                if (expires != (time_t) -1 && expires < now) {
                        format_time(expires, when, sizeof when);
                        log_warning("tls: our certificate %s expired on %s: peers will refuse it", cfg->cert_file, when);
                } else if (starts != (time_t) -1 && starts > now) {
                        format_time(starts, when, sizeof when);
                        log_warning("tls: our certificate %s is not valid before %s: peers will refuse it", cfg->cert_file,
                                    when);
                }
                gnutls_free(dn.data);
                for (unsigned k = 0; k < n_certs; k++)
                        gnutls_x509_crt_deinit(certs[k]);
                gnutls_free(certs);
        }
        if (!c->describe[0])
                (void) snprintf(c->describe, sizeof c->describe, "x509, certificate %s", cfg->cert_file);
        return 0;
}

static int load_psk(StreamTlsContext *c, const StreamTlsConfig *cfg, ErrorMessage *err) {
        const PskEntry *mine = NULL;
        gnutls_datum_t key;
        int r;

        r = load_psk_file(cfg->psk_file, &c->psk, &c->n_psk, err);
        if (r < 0)
                return r;
        for (size_t k = 0; k < c->n_psk && !mine; k++)
                if (!cfg->psk_identity || streq(c->psk[k].identity, cfg->psk_identity))
                        mine = &c->psk[k];
        if (!mine)
                return error_setf(err, -ENOENT, "the PSK file %s has no key for the identity \"%s\"", cfg->psk_file,
                                  cfg->psk_identity);
        if (gnutls_psk_allocate_server_credentials(&c->psk_server) < 0 ||
            gnutls_psk_allocate_client_credentials(&c->psk_client) < 0)
                return error_setf(err, -ENOMEM, "cannot allocate PSK credentials");
        gnutls_psk_set_server_credentials_function(c->psk_server, psk_server_key);
        key = (gnutls_datum_t) { .data = (unsigned char *) mine->key, .size = (unsigned) mine->key_size };
        r = gnutls_psk_set_client_credentials(c->psk_client, mine->identity, &key, GNUTLS_PSK_KEY_RAW);
        if (r < 0)
                return error_setf(err, -EINVAL, "cannot use the PSK of \"%s\": %s", mine->identity, gnutls_strerror(r));
        (void) snprintf(c->describe, sizeof c->describe, "psk, identity \"%s\"", mine->identity);
        return 0;
}

int stream_tls_context_new(const StreamTlsConfig *cfg, StreamTlsContext **ret, ErrorMessage *err) {
        StreamTlsContext *c;
        const char *where = NULL;
        size_t n = 0;
        int r;

        if (!!cfg->psk_file == !!(cfg->ca_file || cfg->cert_file || cfg->key_file))
                return error_setf(err, -EINVAL, "TLS needs either x509 credentials or a PSK file (not both)");
        global_init();
        c = new0(StreamTlsContext, 1);
        if (!c)
                return -ENOMEM;
        atomic_store(&c->n_ref, 1);
        while (cfg->allowed_peers && cfg->allowed_peers[n])
                n++;
        if (n > 0) {
                c->allowed = new0(char *, n + 1);
                for (size_t k = 0; c->allowed && k < n; k++)
                        if (!(c->allowed[k] = strdup(cfg->allowed_peers[k]))) {
                                stream_tls_context_unref(c);
                                return -ENOMEM;
                        }
                if (!c->allowed) {
                        stream_tls_context_unref(c);
                        return -ENOMEM;
                }
        }
        r = cfg->psk_file ? load_psk(c, cfg, err) : load_x509(c, cfg, err);
        if (r >= 0) {
                r = gnutls_priority_init2(&c->priority, cfg->psk_file ? PRIORITY_PSK : PRIORITY_X509, &where, 0);
                if (r < 0)
                        r = error_setf(err, -EINVAL, "this GnuTLS does not take the priority string at \"%s\": %s",
                                       where ?: "?", gnutls_strerror(r));
        }
        if (r < 0) {
                stream_tls_context_unref(c);
                return r;
        }
        c->ktls = cfg->ktls && probe_ktls();
        *ret = c;
        return 0;
}

const char *stream_tls_context_describe(const StreamTlsContext *c) {
        return c->describe;
}

bool stream_tls_context_ktls(const StreamTlsContext *c) {
        return c->ktls;
}

/* ---- sessions ---- */

int stream_tls_session_new(StreamTlsContext *c, int fd, bool server, StreamTlsSession **ret, ErrorMessage *err) {
        StreamTlsSession *s;
        int r;

        s = new0(StreamTlsSession, 1);
        if (!s)
                return -ENOMEM;
        s->fd = fd;
        s->server = server;
        s->transport = STREAM_TRANSPORT_TLS_USER;
        r = gnutls_init(&s->session, (server ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NO_TICKETS | GNUTLS_NONBLOCK);
        if (r < 0) {
                free(s);
                return error_setf(err, -ENOMEM, "cannot start a TLS session: %s", gnutls_strerror(r));
        }
        s->ctx = stream_tls_context_ref(c);
        gnutls_session_set_ptr(s->session, s);
        r = gnutls_priority_set(s->session, c->priority);
        if (r >= 0) {
                if (c->x509) {
                        r = gnutls_credentials_set(s->session, GNUTLS_CRD_CERTIFICATE, c->x509);
                        if (server) {
                                gnutls_certificate_server_set_request(s->session, GNUTLS_CERT_REQUIRE);
                                gnutls_certificate_send_x509_rdn_sequence(s->session, 1);
                        }
                } else
                        r = gnutls_credentials_set(s->session, GNUTLS_CRD_PSK,
                                                   server ? (void *) c->psk_server : (void *) c->psk_client);
        }
        if (r < 0) {
                stream_tls_session_free(s);
                return error_setf(err, -EINVAL, "cannot set up a TLS session: %s", gnutls_strerror(r));
        }
        /* the deadlines are ours (stream_tls_handshake()) */
        gnutls_handshake_set_timeout(s->session, 0);
        gnutls_transport_set_ptr(s->session, s);
        gnutls_transport_set_vec_push_function(s->session, tls_push);
        gnutls_transport_set_pull_function(s->session, tls_pull);
        gnutls_transport_set_pull_timeout_function(s->session, tls_pull_timeout);
        *ret = s;
        return 0;
}

StreamTlsSession *stream_tls_session_free(StreamTlsSession *s) {
        if (!s)
                return NULL;
        if (s->session)
                gnutls_deinit(s->session);
        free(s->rbuf);
        free(s->wbuf);
        stream_tls_context_unref(s->ctx);
        free(s);
        return NULL;
}


/* The peer's fatal alert, as a sentence (kept in s->peer_error). */
const char *tls_alert_text_of(StreamTlsSession *s, gnutls_alert_description_t a) {
        const char *name = gnutls_alert_get_name(a) ?: "?";
        const char *hint;

        switch (a) {
        case GNUTLS_A_BAD_CERTIFICATE:
        case GNUTLS_A_UNSUPPORTED_CERTIFICATE:
        case GNUTLS_A_CERTIFICATE_REVOKED:
        case GNUTLS_A_CERTIFICATE_EXPIRED:
        case GNUTLS_A_CERTIFICATE_UNKNOWN:
        case GNUTLS_A_UNKNOWN_CA:
                hint = "the peer does not accept our certificate (see its log for why)";
                break;
        case GNUTLS_A_ACCESS_DENIED:
                hint = "the peer does not allow our identity";
                break;
        case GNUTLS_A_UNKNOWN_PSK_IDENTITY:
                hint = "the peer does not know our PSK identity";
                break;
        case GNUTLS_A_DECRYPT_ERROR:
        case GNUTLS_A_ILLEGAL_PARAMETER:
                hint = s->ctx->psk_client ? "the peer's pre-shared key differs from ours (PSK mismatch)"
                                          : "the peer could not verify our handshake";
                break;
        case GNUTLS_A_HANDSHAKE_FAILURE:
        case GNUTLS_A_INSUFFICIENT_SECURITY:
        case GNUTLS_A_PROTOCOL_VERSION:
                hint = "no common TLS parameters: the peer may not use TLS 1.3, or uses a PSK where we use certificates (or the reverse)";
                break;
        default:
                hint = "the peer refused the TLS handshake";
                break;
        }
        (void) snprintf(s->peer_error, sizeof s->peer_error, "%s (TLS alert \"%s\")", hint, name);
        return s->peer_error;
}

const char *tls_alert_text(StreamTlsSession *s) {
        return tls_alert_text_of(s, gnutls_alert_get(s->session));
}

static bool prefix_is_cleartext(const StreamTlsSession *s) {
        /* TLS records start with a content type of 20..24 and a 3.x version */
        return s->prefix_len >= 1 && !(s->prefix[0] >= 20 && s->prefix[0] <= 24 && (s->prefix_len < 2 || s->prefix[1] == 3));
}

/* Tells the peer why we end the handshake (best effort, never blocking): GnuTLS leaves the
 * alert to the caller, and without one the peer sees only a closed connection. */
static void send_alert(StreamTlsSession *s, int r) {
        atomic_store(&s->send_flags, MSG_DONTWAIT);
        if (s->verify_error[0])
                (void) gnutls_alert_send(s->session, GNUTLS_AL_FATAL,
                                         s->verify_alert ? (gnutls_alert_description_t) s->verify_alert
                                                         : GNUTLS_A_BAD_CERTIFICATE);
        else if (r != GNUTLS_E_FATAL_ALERT_RECEIVED && r != GNUTLS_E_PUSH_ERROR && r != GNUTLS_E_PULL_ERROR &&
                 r != GNUTLS_E_PREMATURE_TERMINATION && !prefix_is_cleartext(s))
                (void) gnutls_alert_send_appropriate(s->session, r);
}

static int handshake_error(StreamTlsSession *s, int r, ErrorMessage *err) {
        send_alert(s, r);
        if (s->verify_error[0])
                return error_setf(err, -EKEYREJECTED, "%s", s->verify_error);
        if (prefix_is_cleartext(s))
                return error_setf(err, -EPROTONOSUPPORT, "the peer does not speak TLS (it answered in cleartext)");
        switch (r) {
        case GNUTLS_E_FATAL_ALERT_RECEIVED:
                return error_setf(err, -EACCES, "%s", tls_alert_text(s));

        case GNUTLS_E_PREMATURE_TERMINATION:
        case GNUTLS_E_UNEXPECTED_PACKET_LENGTH:
                if (s->peer_closed)
                        return error_setf(err, -ECONNRESET, "the peer closed the connection during the TLS handshake");
                break;
        case GNUTLS_E_PUSH_ERROR:
        case GNUTLS_E_PULL_ERROR: {
                int e = (r == GNUTLS_E_PUSH_ERROR ? s->send_errno : s->recv_errno) ?: EIO;
                return error_setf(err, -e, "the connection failed during the TLS handshake: %s", strerror(e));
        }
        case GNUTLS_E_NO_CERTIFICATE_FOUND:
        case GNUTLS_E_CERTIFICATE_REQUIRED:
                return error_setf(err, -EKEYREJECTED, "the peer presented no certificate");
        case GNUTLS_E_DECRYPTION_FAILED:
        case GNUTLS_E_KEY_USAGE_VIOLATION:
        case GNUTLS_E_RECEIVED_ILLEGAL_PARAMETER:
                if (s->ctx->psk_server)
                        return error_setf(err, -EKEYREJECTED,
                                          "the peer's pre-shared key differs from ours (PSK mismatch for %s): %s",
                                          s->peer_name[0] ? s->peer_name : "?", gnutls_strerror(r));
                break;
        case GNUTLS_E_INSUFFICIENT_CREDENTIALS:
        case GNUTLS_E_NO_CIPHER_SUITES:
        case GNUTLS_E_UNSUPPORTED_VERSION_PACKET:
        case GNUTLS_E_NO_COMMON_KEY_SHARE:
        case GNUTLS_E_NO_PRIORITIES_WERE_SET:
                return error_setf(err, -EKEYREJECTED,
                                  "no common TLS parameters (%s): the peer may not use TLS 1.3, or uses a PSK where we use certificates (or the reverse)",
                                  gnutls_strerror(r));
        default:
                break;
        }
        return error_setf(err, -EKEYREJECTED, "the TLS handshake failed: %s", gnutls_strerror(r));
}

static void handshake_finished(StreamTlsSession *s) {
        char *desc;

        s->handshake_done = true;
        if (!s->peer_name[0]) {
                if (s->ctx->psk_client)
                        (void) snprintf(s->peer_name, sizeof s->peer_name, "psk server");
                else
                        (void) snprintf(s->peer_name, sizeof s->peer_name, "?");
        }
        desc = gnutls_session_get_desc(s->session);
        (void) snprintf(s->cipher, sizeof s->cipher, "%s", desc ?: "TLS1.3");
        gnutls_free(desc);
}

int stream_tls_handshake_step(StreamTlsSession *s, short *ret_events, ErrorMessage *err) {
        int r;

        if (s->handshake_done)
                return 1;
        atomic_store(&s->send_flags, MSG_DONTWAIT);
        atomic_store(&s->recv_flags, MSG_DONTWAIT);
        do {
                errno = 0;
                r = gnutls_handshake(s->session);
        } while (r == GNUTLS_E_INTERRUPTED);
        if (r == GNUTLS_E_AGAIN) {
                *ret_events = gnutls_record_get_direction(s->session) ? POLLOUT : POLLIN;
                return 0;
        }
        if (r < 0 && gnutls_error_is_fatal(r) == 0 && r != GNUTLS_E_WARNING_ALERT_RECEIVED) {
                *ret_events = POLLIN;
                return 0;
        }
        if (r < 0)
                return handshake_error(s, r, err);
        handshake_finished(s);
        return 1;
}

int stream_tls_handshake(StreamTlsSession *s, uint64_t deadline_usec, int wake_fd, ErrorMessage *err) {
        for (;;) {
                struct pollfd p[2];
                short events = 0;
                int timeout = -1, r;

                r = stream_tls_handshake_step(s, &events, err);
                if (r != 0)
                        return r < 0 ? r : 0;
                if (deadline_usec > 0) {
                        struct timespec ts;
                        uint64_t now;

                        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
                        now = (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
                        if (now >= deadline_usec)
                                return error_setf(err, -ETIMEDOUT, "the TLS handshake did not finish in time");
                        timeout = (int) MIN((deadline_usec - now + 999) / 1000, (uint64_t) INT32_MAX);
                }
                p[0] = (struct pollfd) { .fd = s->fd, .events = events };
                p[1] = (struct pollfd) { .fd = wake_fd, .events = POLLIN };
                r = poll(p, wake_fd >= 0 ? 2 : 1, timeout);
                if (r < 0 && errno != EINTR)
                        return error_setf(err, -errno, "poll: %m");
                if (wake_fd >= 0 && (p[1].revents & POLLIN))
                        return -ECANCELED;
        }
}

size_t stream_tls_peer_prefix(StreamTlsSession *s, const uint8_t **ret) {
        *ret = s->prefix;
        return s->prefix_len;
}

const char *stream_tls_peer_name(StreamTlsSession *s) {
        return s->peer_name;
}

const char *stream_tls_cipher_name(StreamTlsSession *s) {
        return s->cipher;
}

int stream_tls_channel_binding(StreamTlsSession *s, uint8_t out[STREAM_TLS_BINDING_SIZE]) {
        int r;

        if (!s->handshake_done)
                return -ENOTCONN;
        r = gnutls_prf_rfc5705(s->session, strlen(STREAM_TLS_BINDING_LABEL), STREAM_TLS_BINDING_LABEL, 0, NULL,
                               STREAM_TLS_BINDING_SIZE, (char *) out);
        return r < 0 ? -EIO : 0;
}

/* ---- kTLS ---- */

typedef union KtlsInfo {
        struct tls_crypto_info info;
        struct tls12_crypto_info_aes_gcm_128 gcm128;
        struct tls12_crypto_info_aes_gcm_256 gcm256;
        struct tls12_crypto_info_chacha20_poly1305 chacha;
} KtlsInfo;

static int ktls_info(StreamTlsSession *s, bool read, KtlsInfo *ret, size_t *ret_size) {
        gnutls_cipher_algorithm_t cipher = gnutls_cipher_get(s->session);
        gnutls_datum_t iv, key;
        unsigned char seq[8];
        int r;

        r = gnutls_record_get_state(s->session, read, NULL, &iv, &key, seq);
        if (r < 0)
                return -EIO;
        *ret = (KtlsInfo) {};
        ret->info.version = TLS_1_3_VERSION;
        switch (cipher) {
        case GNUTLS_CIPHER_AES_128_GCM:
                if (iv.size != 12 || key.size != 16)
                        return -EINVAL;
                ret->info.cipher_type = TLS_CIPHER_AES_GCM_128;
                memcpy(ret->gcm128.salt, iv.data, 4);
                memcpy(ret->gcm128.iv, iv.data + 4, 8);
                memcpy(ret->gcm128.key, key.data, 16);
                memcpy(ret->gcm128.rec_seq, seq, 8);
                *ret_size = sizeof ret->gcm128;
                return 0;
        case GNUTLS_CIPHER_AES_256_GCM:
                if (iv.size != 12 || key.size != 32)
                        return -EINVAL;
                ret->info.cipher_type = TLS_CIPHER_AES_GCM_256;
                memcpy(ret->gcm256.salt, iv.data, 4);
                memcpy(ret->gcm256.iv, iv.data + 4, 8);
                memcpy(ret->gcm256.key, key.data, 32);
                memcpy(ret->gcm256.rec_seq, seq, 8);
                *ret_size = sizeof ret->gcm256;
                return 0;
        case GNUTLS_CIPHER_CHACHA20_POLY1305:
                if (iv.size != 12 || key.size != 32)
                        return -EINVAL;
                ret->info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
                memcpy(ret->chacha.iv, iv.data, 12);
                memcpy(ret->chacha.key, key.data, 32);
                memcpy(ret->chacha.rec_seq, seq, 8);
                *ret_size = sizeof ret->chacha;
                return 0;
        default:
                return -EOPNOTSUPP;
        }
}

int stream_tls_start(StreamTlsSession *s, StreamTransport *ret, ErrorMessage *err) {
        KtlsInfo tx, rx;
        size_t tx_size = 0, rx_size = 0;
        int r;

        if (!s->handshake_done)
                return error_setf(err, -ENOTCONN, "the TLS handshake is not done");
        s->transport = STREAM_TRANSPORT_TLS_USER;
        if (!s->ctx->ktls || gnutls_record_check_pending(s->session) > 0)
                goto user;
        r = ktls_info(s, false, &tx, &tx_size);
        if (r >= 0)
                r = ktls_info(s, true, &rx, &rx_size);
        if (r < 0) {
                log_debug("tls: kernel TLS cannot take %s, using user-space TLS", s->cipher);
                goto user;
        }
        if (setsockopt(s->fd, SOL_TCP, TCP_ULP, "tls", sizeof "tls") < 0) {
                log_debug_errno(errno, "tls: TCP_ULP \"tls\" failed (%m), using user-space TLS");
                goto user;
        }
        /* With the ULP on, the socket still moves plain TCP until TLS_TX: a failure there can
         * still fall back. After TLS_TX, our records go through the kernel only. */
        if (setsockopt(s->fd, SOL_TLS, TLS_TX, &tx, (socklen_t) tx_size) < 0) {
                log_debug_errno(errno, "tls: TLS_TX failed (%m), using user-space TLS");
                goto user;
        }
        if (setsockopt(s->fd, SOL_TLS, TLS_RX, &rx, (socklen_t) rx_size) < 0) {
                r = -errno;
                explicit_bzero(&tx, sizeof tx);
                explicit_bzero(&rx, sizeof rx);
                return error_setf(err, r, "kernel TLS took the sending keys but not the receiving ones: %m");
        }
        explicit_bzero(&tx, sizeof tx);
        explicit_bzero(&rx, sizeof rx);
        s->transport = STREAM_TRANSPORT_TLS_KERNEL;
        *ret = s->transport;
        return 0;
user:
        explicit_bzero(&tx, sizeof tx);
        explicit_bzero(&rx, sizeof rx);
        /* Only now: what was read ahead could not go to the kernel. Without the buffer the
         * records are read as GnuTLS asks, which works too. */
        s->rbuf = malloc(TLS_RECV_BUFFER_SIZE);
        *ret = s->transport;
        return 0;
}

const char *stream_tls_error(StreamTlsSession *s) {
        return s->peer_error;
}

StreamTransport stream_tls_transport(StreamTlsSession *s) {
        return s ? s->transport : STREAM_TRANSPORT_CLEARTEXT;
}
