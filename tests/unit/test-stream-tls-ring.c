/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * User-space TLS on the engine's io_uring path, against a network that misbehaves: a proxy
 * between a real StreamOut and a real StreamListener/StreamIn (both with TLS, no kernel TLS on
 * a machine without CONFIG_TLS; where the kernel has it, the test says so and checks the same
 * outcomes on kTLS) reads the TLS record headers of what the source sends, and either stops
 * forwarding in the middle of a record (the destination's stall timer must still fire: a
 * partial record in GnuTLS's buffer is no progress) or flips a bit in a record's body (the
 * destination must name the record that does not authenticate).
 */

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "macro.h"
#include "mig-state.h"
#include "sim-device.h"
#include "stream-engine.h"
#include "stream-testing.h"

#define MiB (UINT64_C(1) << 20)

static uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

static VfioDev *sim_new(const char *name, uint64_t size, uint64_t seed) {
        SimConfig c;
        VfioDev *d = NULL;
        ErrorMessage err = {};

        sim_config_init(&c);
        c.state_size = size;
        c.migration_flags = VFIO_MIGRATION_STOP_COPY;
        c.seed = seed;
        c.seed_set = true;
        cr_assert_eq(sim_device_new(name, &c, &d, &err), 0, "sim_device_new: %s", err.text);
        return d;
}

static StreamDeviceInfo sim_info(VfioDev *d, uint64_t size) {
        StreamDeviceInfo i = {
                .migration_flags = d->migration_flags,
                .stream_format = STREAM_FORMAT_SIM,
                .vendor_id = 0xffff,
                .device_id = 0xffff,
                .state_size = size,
        };
        strcpy(i.driver, "sim");
        return i;
}

static struct sockaddr_in loopback_of(int fd) {
        struct sockaddr_in a = {};
        socklen_t len = sizeof a;

        cr_assert_eq(getsockname(fd, (struct sockaddr *) &a, &len), 0);
        return a;
}

/* ---- the proxy ---- */

typedef enum ProxyMode {
        PROXY_STALL,      /* forward half of the first data record past `after`, then nothing */
        PROXY_CORRUPT,    /* flip a bit in the middle of the first data record past `after` */
} ProxyMode;

typedef struct Proxy {
        ProxyMode mode;
        uint64_t after;
        int lfd;
        struct sockaddr_in upstream;
        pthread_t thread;
        atomic_bool stop;
        atomic_bool acted;        /* stalled or corrupted */
        /* the source → destination record parser */
        uint64_t pos;
        uint8_t hdr[5];
        unsigned hdr_got;
        size_t body_left, body_len;
        bool target;              /* the current record is the one to act on */
} Proxy;

static void send_all(int fd, const uint8_t *p, size_t n) {
        while (n > 0) {
                ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
                if (k <= 0)
                        return; /* the other end went away: the test's assertions say the rest */
                p += k;
                n -= (size_t) k;
        }
}

/* Walks n bytes the source sent: returns how many of them go on (n, or fewer at the stall). */
static size_t proxy_filter(Proxy *x, uint8_t *buf, size_t n) {
        for (size_t i = 0; i < n; i++, x->pos++) {
                if (x->body_left == 0) {
                        x->hdr[x->hdr_got++] = buf[i];
                        if (x->hdr_got < 5)
                                continue;
                        x->hdr_got = 0;
                        x->body_len = x->body_left = (size_t) x->hdr[3] << 8 | x->hdr[4];
                        /* application data (every record after the handshake) well into the stream */
                        x->target = !atomic_load(&x->acted) && x->hdr[0] == 23 && x->pos >= x->after &&
                                    x->body_len > 1000;
                        continue;
                }
                x->body_left--;
                if (x->target && x->body_left == x->body_len / 2) {
                        x->target = false;
                        atomic_store(&x->acted, true);
                        if (x->mode == PROXY_STALL)
                                return i + 1; /* half a record: the rest never comes */
                        buf[i] ^= 0x10;
                }
        }
        return n;
}

static void *proxy_thread(void *arg) {
        Proxy *x = arg;
        static uint8_t buf[256 * 1024];
        int src, dst;

        src = accept4(x->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (src < 0)
                return NULL;
        dst = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (dst < 0 || connect(dst, (struct sockaddr *) &x->upstream, sizeof x->upstream) < 0) {
                close(src);
                return NULL;
        }
        while (!atomic_load(&x->stop)) {
                bool frozen = x->mode == PROXY_STALL && atomic_load(&x->acted);
                struct pollfd p[2] = {
                        { .fd = frozen ? -1 : src, .events = POLLIN },
                        { .fd = dst, .events = POLLIN },
                };
                ssize_t k;

                if (poll(p, 2, 100) <= 0)
                        continue;
                if (p[0].revents) {
                        k = recv(src, buf, sizeof buf, 0);
                        if (k <= 0)
                                break;
                        send_all(dst, buf, proxy_filter(x, buf, (size_t) k));
                }
                if (p[1].revents) {
                        k = recv(dst, buf, sizeof buf, 0);
                        if (k <= 0)
                                break;
                        send_all(src, buf, (size_t) k);
                }
        }
        /* held open until the test is done: a stalled peer does not close */
        while (!atomic_load(&x->stop))
                (void) poll(NULL, 0, 50);
        close(src);
        close(dst);
        return NULL;
}

static void proxy_start(Proxy *x, const struct sockaddr_storage *upstream, struct sockaddr_storage *ret, socklen_t *ret_len) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

        memcpy(&x->upstream, upstream, sizeof x->upstream);
        x->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_geq(x->lfd, 0);
        cr_assert_eq(bind(x->lfd, (struct sockaddr *) &a, sizeof a), 0);
        cr_assert_eq(listen(x->lfd, 4), 0);
        a = loopback_of(x->lfd);
        *ret = (struct sockaddr_storage) {};
        memcpy(ret, &a, sizeof a);
        *ret_len = sizeof a;
        cr_assert_eq(pthread_create(&x->thread, NULL, proxy_thread, x), 0);
}

static void proxy_stop(Proxy *x) {
        atomic_store(&x->stop, true);
        (void) shutdown(x->lfd, SHUT_RDWR);
        cr_assert_eq(pthread_join(x->thread, NULL), 0);
        close(x->lfd);
}

/* ---- the migration ---- */

static char pki[256];

static void make_pki(void) {
        const char *script = getenv("MAKE_TEST_PKI");
        char cmd[1024];

        cr_assert(script, "MAKE_TEST_PKI is not set (run through meson test)");
        (void) snprintf(pki, sizeof pki, "/tmp/test-stream-tls-ring.XXXXXX");
        cr_assert(mkdtemp(pki));
        (void) snprintf(cmd, sizeof cmd, "%s --psk host-a %s a", script, pki);
        cr_assert_eq(system(cmd), 0, "%s", cmd);
}

static void remove_pki(void) {
        char cmd[512];

        (void) snprintf(cmd, sizeof cmd, "rm -rf '%s'", pki);
        (void) !system(cmd);
}

TestSuite(stream_tls_ring, .init = make_pki, .fini = remove_pki, .timeout = 60);

static StreamEvent wait_in_failed(StreamIn *in, uint64_t timeout_usec) {
        uint64_t deadline = now_usec() + timeout_usec;
        StreamEvent e;

        for (;;) {
                struct pollfd pfd = { .fd = stream_in_event_fd(in), .events = POLLIN };
                if (stream_in_next_event(in, &e) > 0) {
                        if (e.type == STREAM_EVENT_FAILED || e.type == STREAM_EVENT_PEER_ABORT)
                                return e;
                        free(e.blob);
                        continue;
                }
                cr_assert_lt(now_usec(), deadline, "the destination did not fail in time");
                (void) poll(&pfd, 1, 50);
        }
}

/* One channel through the proxy; returns the destination's failure and how long after the
 * proxy acted it came. */
static StreamEvent run_through_proxy(ProxyMode mode, uint64_t *ret_usec) {
        StreamTlsConfig tc = { .ktls = true };
        StreamTlsContext *tls = NULL;
        char psk[300];
        VfioDev *src = sim_new("s", 256 * MiB, 1), *dst = sim_new("d", 256 * MiB, 1);
        int sfd = -1, dfd = -1;
        StreamInConfig ic = { .device_count = 1, .devices = { dst }, .io_uring = true,
                              .stall_timeout_usec = 1000000 };
        StreamOutConfig oc = { .channels = 1, .io_uring = true, .device_count = 1, .devices = { src } };
        StreamListener *l = NULL;
        struct sockaddr_storage la = {};
        char **addrs = NULL;
        StreamIn *in = NULL;
        StreamOut *out = NULL;
        ErrorMessage err = {};
        Proxy x = { .mode = mode, .after = 4 * MiB };
        StreamStats st;
        StreamEvent e;
        uint64_t acted = 0;

        (void) snprintf(psk, sizeof psk, "%s/a/psk.txt", pki);
        tc.psk_file = psk;
        cr_assert_eq(stream_tls_context_new(&tc, &tls, &err), 0, "%s", err.text);
        cr_assert_eq(stream_listener_new_secure(-1, "127.0.0.1:0", tls, false, &l, &err), 0, "%s", err.text);
        cr_assert_eq(stream_listener_addresses(l, &addrs), 0);
        {
                struct sockaddr_in *a = (struct sockaddr_in *) &la;
                a->sin_family = AF_INET;
                a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
                a->sin_port = htons((uint16_t) atoi(strrchr(addrs[0], ':') + 1));
        }
        strv_free(addrs);
        proxy_start(&x, &la, &oc.peer, &oc.peer_len);
        oc.tls = tls;

        cr_assert_eq(vfio_dev_set_state(dst, VFIO_DEVICE_STATE_RESUMING, &dfd), 0);
        cr_assert_eq(vfio_dev_set_state(src, VFIO_DEVICE_STATE_STOP_COPY, &sfd), 0);
        ic.data_fds[0] = dfd;
        ic.infos[0] = sim_info(dst, 256 * MiB);
        oc.infos[0] = sim_info(src, 256 * MiB);
        for (unsigned k = 0; k < STREAM_TOKEN_SIZE; k++)
                ic.token[k] = oc.token[k] = (uint8_t) (k * 7 + 3);
        cr_assert_eq(stream_in_new(&ic, &in, &err), 0, "%s", err.text);
        cr_assert_eq(stream_listener_register(l, in), 0);
        cr_assert_eq(stream_out_new(&oc, &out, &err), 0, "%s", err.text);
        /* as a job does: on CONNECTED, SWITCHOVER, then stop-copy */
        for (uint64_t deadline = now_usec() + 10000000;;) {
                struct pollfd pfd = { .fd = stream_out_event_fd(out), .events = POLLIN };
                if (stream_out_next_event(out, &e) > 0) {
                        cr_assert_eq(e.type, STREAM_EVENT_CONNECTED, "event %d: %s", e.type, e.text);
                        break;
                }
                cr_assert_lt(now_usec(), deadline, "the source did not connect");
                (void) poll(&pfd, 1, 50);
        }
        cr_assert_eq(stream_out_switchover(out), 0);
        cr_assert_eq(stream_out_start_stopcopy(out, 0, sfd), 0);
        /* the source keeps sending (it learns nothing until the destination gives up) */
        for (uint64_t deadline = now_usec() + 30000000; !atomic_load(&x.acted);) {
                cr_assert_lt(now_usec(), deadline, "the proxy never reached a data record past %llu bytes",
                             (unsigned long long) x.after);
                (void) poll(NULL, 0, 5);
        }
        acted = now_usec();
        e = wait_in_failed(in, 20000000);
        *ret_usec = now_usec() - acted;

        stream_in_stats(in, &st);
        cr_assert(st.io_uring, "the destination did not receive on io_uring");
        cr_assert_eq(st.transport, stream_tls_context_ktls(tls) ? STREAM_TRANSPORT_TLS_KERNEL : STREAM_TRANSPORT_TLS_USER,
                     "%s", stream_transport_to_string(st.transport));
        stream_out_stats(out, &st);
        cr_assert(st.io_uring, "the source did not send on io_uring");

        stream_out_free(out);
        proxy_stop(&x);
        stream_in_free(in);
        stream_listener_free(l);
        stream_tls_context_unref(tls);
        close(sfd);
        close(dfd);
        vfio_dev_free(src);
        vfio_dev_free(dst);
        return e;
}

Test(stream_tls_ring, a_peer_stalling_mid_record_trips_the_stall_timer) {
        uint64_t usec;
        StreamEvent e = run_through_proxy(PROXY_STALL, &usec);

        cr_assert_eq(e.type, STREAM_EVENT_FAILED, "event %d: %s", e.type, e.text);
        cr_assert_eq(e.error, -ETIMEDOUT, "%d: %s", e.error, e.text);
        cr_assert(strstr(e.text, "stalled"), "%s", e.text);
        /* the 1 s stall timeout, checked every so often: well under 10 s */
        cr_assert_lt(usec, 10000000u, "the stall was noticed after %llu µs", (unsigned long long) usec);
}

Test(stream_tls_ring, an_altered_record_is_named) {
        uint64_t usec;
        StreamEvent e = run_through_proxy(PROXY_CORRUPT, &usec);

        cr_assert_eq(e.type, STREAM_EVENT_FAILED, "event %d: %s", e.type, e.text);
        cr_assert_eq(e.error, -EBADMSG, "%d: %s", e.error, e.text);
        cr_assert(strstr(e.text, "a TLS record on channel 0 does not authenticate"), "%s", e.text);
        cr_assert_lt(usec, 5000000u);
}
