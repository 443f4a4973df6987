/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The stream engine end to end on 127.0.0.1: a StreamOut reading simulated source devices, a
 * StreamListener and StreamIn writing simulated destination devices, with this test playing
 * both jobs (state transitions, switchover, commit). The destination's sim verifies every byte
 * and commits RESUMING→STOP only on a complete stream; equal state digests prove the state
 * arrived. Then hostile peers, written by hand with the codec: each must end in a FAILED event
 * (or a refusal) naming the rule, with memory within the budget.
 */

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "macro.h"
#include "mig-state.h"
#include "sim-device.h"
#include "sim-stream.h"
#include "stream-auth.h"
#include "stream-engine.h"
#include "stream-testing.h"
#include "wire.h"

#define ALL_FLAGS (VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY)
#define MiB (UINT64_C(1) << 20)

static const uint32_t flag_sets[] = {
        VFIO_MIGRATION_STOP_COPY,
        VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P,
        VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY,
        ALL_FLAGS,
};

static uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

static VfioDev *sim_new(const char *name, uint64_t size, uint32_t flags, uint64_t precopy_size, uint64_t dirty_rate,
                        uint64_t seed, bool mtty) {
        SimConfig c;
        VfioDev *d = NULL;
        ErrorMessage err = {};

        sim_config_init(&c);
        c.state_size = size;
        c.migration_flags = flags;
        c.precopy_size = MIN(precopy_size, size);
        c.precopy_size_set = true;
        c.dirty_rate = dirty_rate;
        c.seed = seed;
        c.seed_set = true;
        c.mtty_quirks = mtty;
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

static void make_token(uint8_t token[STREAM_TOKEN_SIZE], unsigned salt) {
        for (unsigned k = 0; k < STREAM_TOKEN_SIZE; k++)
                token[k] = (uint8_t) (k * 7 + salt * 13 + (unsigned) getpid());
}

static StreamListener *listener_new_tls(StreamTlsContext *tls, struct sockaddr_storage *ret_addr, socklen_t *ret_len) {
        StreamListener *l = NULL;
        ErrorMessage err = {};
        char **addrs = NULL;
        struct sockaddr_in *in = (struct sockaddr_in *) ret_addr;
        char *colon;

        cr_assert_eq(stream_listener_new_secure(-1, "127.0.0.1:0", tls, false, &l, &err), 0, "listener: %s", err.text);
        cr_assert_eq(stream_listener_addresses(l, &addrs), 0);
        cr_assert_not_null(addrs[0]);
        colon = strrchr(addrs[0], ':');
        cr_assert_not_null(colon);
        *ret_addr = (struct sockaddr_storage) {};
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t) atoi(colon + 1));
        cr_assert_neq(in->sin_port, 0, "the listener reports port 0: %s", addrs[0]);
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        *ret_len = sizeof(struct sockaddr_in);
        strv_free(addrs);
        return l;
}

static StreamListener *listener_new(struct sockaddr_storage *ret_addr, socklen_t *ret_len) {
        return listener_new_tls(NULL, ret_addr, ret_len);
}

/* ---- a migration, with the test as both jobs ---- */

typedef struct Params {
        unsigned channels;
        unsigned rings;
        bool io_uring;
        bool precopy;
        unsigned devices;
        uint64_t sizes[4];
        uint32_t flags[4];
        bool mtty[4];
        size_t blob_sizes[4];
        bool blobs;
        uint64_t dirty_rate;
        uint64_t budget;
        uint32_t chunk;
        uint32_t max_payload;
        uint64_t throttle;       /* bytes/s on channel 0 */
        uint64_t precopy_usec;   /* how long pre-copy runs after INITIAL_LOADED */
        bool reconfigure;        /* REINIT every pre-copy device once its initial data is loaded */
        int dst_minor;           /* the destination's protocol minor; 0 (the default) is the current one, -1 is 2.0 */
        StreamTlsContext *tls;   /* both ends' credentials; NULL: cleartext */
} Params;

typedef struct Run {
        StreamStats out_stats, in_stats;
        uint64_t usec;
} Run;

static void run_migration(const Params *p, Run *ret) {
        VfioDev *src[4] = {}, *dst[4] = {};
        int src_fd[4], dst_fd[4];
        uint8_t *blobs[4] = {};
        StreamListener *l;
        StreamIn *in = NULL;
        StreamOut *out = NULL;
        StreamInConfig ic = { .device_count = p->devices, .budget = p->budget, .max_payload = p->max_payload,
                              .io_uring = p->io_uring, .rings = p->rings };
        StreamOutConfig oc = { .channels = p->channels, .rings = p->rings, .io_uring = p->io_uring,
                               .precopy = p->precopy, .chunk = p->chunk, .device_count = p->devices };
        ErrorMessage err = {};
        unsigned initial_loaded = 0, sent = 0, done = 0, blobs_seen = 0, blobs_expected = 0;
        unsigned out_reinits = 0, out_unacked = 0, in_reinits = 0, in_loaded = 0, reconfigured = 0, precopy_devices = 0;
        bool loaded[4] = {}, reinit_seen[4] = {};
        bool in_connected = false, out_connected = false, switched = false, committed = false, complete = false;
        bool in_switchover = false, blob_seen[4] = {};
        uint64_t start = now_usec(), deadline = start + 90 * 1000000u, precopy_until = 0;

        stream_test_set_minors(-1, p->dst_minor < 0 ? 0 : -1);
        make_token(ic.token, p->channels * 31 + p->devices);
        memcpy(oc.token, ic.token, sizeof oc.token);
        l = listener_new_tls(p->tls, &oc.peer, &oc.peer_len);
        oc.tls = p->tls;

        for (unsigned d = 0; d < p->devices; d++) {
                char name[32];
                uint32_t flags = p->flags[d] ?: VFIO_MIGRATION_STOP_COPY | (p->precopy ? VFIO_MIGRATION_PRE_COPY : 0);
                MigState target = p->precopy ? VFIO_DEVICE_STATE_PRE_COPY : VFIO_DEVICE_STATE_STOP_COPY;

                snprintf(name, sizeof name, "src%u", d);
                src[d] = sim_new(name, p->sizes[d], flags, p->sizes[d] / 2 + 1, p->dirty_rate, 1000 + d, p->mtty[d]);
                snprintf(name, sizeof name, "dst%u", d);
                dst[d] = sim_new(name, p->sizes[d], flags, p->sizes[d] / 2 + 1, 0, 77, p->mtty[d]);
                if (p->precopy)
                        cr_assert_eq(sim_device_dirty_blocks(src[d], 3), 0);
                src_fd[d] = dst_fd[d] = -1;
                cr_assert_eq(vfio_dev_set_state(src[d], target, &src_fd[d]), 0);
                cr_assert_geq(src_fd[d], 0);
                cr_assert_eq(vfio_dev_set_state(dst[d], VFIO_DEVICE_STATE_RESUMING, &dst_fd[d]), 0);
                cr_assert_geq(dst_fd[d], 0);
                ic.devices[d] = dst[d];
                ic.infos[d] = sim_info(dst[d], p->sizes[d]);
                ic.data_fds[d] = dst_fd[d];
                oc.devices[d] = src[d];
                oc.infos[d] = sim_info(src[d], p->sizes[d]);
                if (p->blobs) {
                        blobs[d] = malloc(p->blob_sizes[d] + 1);
                        for (size_t k = 0; k < p->blob_sizes[d]; k++)
                                blobs[d][k] = (uint8_t) (k * 3 + d);
                        oc.blobs[d] = blobs[d];
                        oc.blob_sizes[d] = p->blob_sizes[d];
                        blobs_expected += p->blob_sizes[d] > 0; /* an empty blob is no event */
                }
        }

        cr_assert_eq(stream_in_new(&ic, &in, &err), 0, "stream_in_new: %s", err.text);
        cr_assert_eq(stream_listener_register(l, in), 0);
        cr_assert_eq(stream_out_new(&oc, &out, &err), 0, "stream_out_new: %s", err.text);
        /* the blobs were copied */
        for (unsigned d = 0; d < p->devices; d++)
                if (blobs[d])
                        memset(blobs[d], 0xee, p->blob_sizes[d]);
        if (p->throttle)
                stream_out_test_set_channel_rate(out, 0, p->throttle);

        while (!complete) {
                struct pollfd fds[2] = {
                        { .fd = stream_out_event_fd(out), .events = POLLIN },
                        { .fd = stream_in_event_fd(in), .events = POLLIN },
                };
                StreamEvent e;
                uint64_t now = now_usec();

                cr_assert_lt(now, deadline, "migration timed out: %u/%u initial loaded, %u sent, %u done",
                             initial_loaded, p->devices, sent, done);
                (void) poll(fds, 2, 20);

                while (stream_out_next_event(out, &e) > 0) {
                        switch (e.type) {
                        case STREAM_EVENT_CONNECTED:
                                out_connected = true;
                                if (!p->precopy) /* as a job does: SWITCHOVER before stop-copy */
                                        cr_assert_eq(stream_out_switchover(out), 0);
                                for (unsigned d = 0; d < p->devices; d++) {
                                        if (p->precopy)
                                                cr_assert_eq(stream_out_start_precopy(out, d, src_fd[d]), 0);
                                        else
                                                cr_assert_eq(stream_out_start_stopcopy(out, d, src_fd[d]), 0);
                                }
                                break;
                        case STREAM_EVENT_INITIAL_LOADED:
                                cr_assert(p->precopy);
                                cr_assert(!loaded[e.device], "device %d: loaded twice without a REINIT", e.device);
                                loaded[e.device] = true;
                                initial_loaded++;
                                break;
                        case STREAM_EVENT_INITIAL_REINIT:
                                cr_assert(p->reconfigure, "%s", e.text);
                                cr_assert(!reinit_seen[e.device], "the sim reconfigures once per session");
                                reinit_seen[e.device] = true;
                                if (e.reason) {
                                        cr_assert_geq(p->dst_minor, 0, "a 2.0 destination cannot acknowledge again");
                                        loaded[e.device] = false; /* wait for the new round's INITIAL_LOADED */
                                        out_reinits++;
                                } else {
                                        cr_assert_lt(p->dst_minor, 0, "%s", e.text);
                                        cr_assert(strstr(e.text, "speaks protocol 2.0"), "%s", e.text);
                                        out_unacked++;
                                }
                                break;
                        case STREAM_EVENT_DEVICE_SENT:
                                sent++;
                                break;
                        case STREAM_EVENT_COMPLETE:
                                cr_assert(committed);
                                complete = true;
                                break;
                        default:
                                cr_assert_fail("source event %d (device %d, error %d): %s", e.type, e.device, e.error, e.text);
                        }
                }
                while (stream_in_next_event(in, &e) > 0) {
                        switch (e.type) {
                        case STREAM_EVENT_CONNECTED:
                                in_connected = true;
                                break;
                        case STREAM_EVENT_INITIAL_LOADED:
                                in_loaded++;
                                break;
                        case STREAM_EVENT_INITIAL_REINIT:
                                cr_assert_geq(p->dst_minor, 0);
                                in_reinits++;
                                break;
                        case STREAM_EVENT_SWITCHOVER:
                                in_switchover = true;
                                break;
                        case STREAM_EVENT_DEVICE_DONE:
                                /* the device's blob came first: a job may commit now */
                                cr_assert(!p->blobs || p->blob_sizes[e.device] == 0 || blob_seen[e.device]);
                                done++;
                                break;
                        case STREAM_EVENT_BLOB:
                                cr_assert(p->blobs);
                                cr_assert_lt(e.device, (int) p->devices);
                                cr_assert(!blob_seen[e.device], "one BLOB per device, before its DEVICE_DONE");
                                cr_assert_eq(e.blob_size, p->blob_sizes[e.device]);
                                for (size_t k = 0; k < e.blob_size; k++)
                                        cr_assert_eq(e.blob[k], (uint8_t) (k * 3 + (unsigned) e.device));
                                free(e.blob);
                                blob_seen[e.device] = true;
                                blobs_seen++;
                                break;
                        default:
                                cr_assert_fail("destination event %d (device %d, error %d): %s", e.type, e.device, e.error, e.text);
                        }
                }

                if (p->precopy && !switched && precopy_until == 0) {
                        bool all = true;
                        for (unsigned d = 0; d < p->devices; d++)
                                all = all && loaded[d];
                        if (all && p->reconfigure && reconfigured == 0) {
                                /* a reconfiguration after the first acknowledgement of every device */
                                for (unsigned d = 0; d < p->devices; d++)
                                        if (sim_device_reconfigure(src[d]) == 0)
                                                reconfigured++;
                                cr_assert_eq(reconfigured, p->devices);
                                all = false;
                        }
                        if (all && p->reconfigure && out_reinits + out_unacked < reconfigured)
                                all = false; /* the source has not seen every REINIT yet */
                        if (all)
                                precopy_until = now_usec() + p->precopy_usec;
                }
                if (p->precopy && !switched && precopy_until != 0 && now_usec() >= precopy_until) {
                        /* the source job's switchover */
                        switched = true;
                        cr_assert_eq(stream_out_switchover(out), 0);
                        for (unsigned d = 0; d < p->devices; d++)
                                cr_assert_eq(stream_out_pause(out, d), 0);
                        for (unsigned d = 0; d < p->devices; d++) {
                                int fd = -1;
                                cr_assert_eq(vfio_dev_set_state(src[d], VFIO_DEVICE_STATE_STOP_COPY, &fd), 0);
                                cr_assert_lt(fd, 0, "PRE_COPY→STOP_COPY continues on the same fd");
                                cr_assert_eq(stream_out_start_stopcopy(out, d, src_fd[d]), 0);
                        }
                }
                if (!committed && done == p->devices && blobs_seen == blobs_expected) {
                        /* the destination job commits */
                        for (unsigned d = 0; d < p->devices; d++) {
                                int fd = -1;
                                cr_assert_eq(vfio_dev_set_state(dst[d], VFIO_DEVICE_STATE_STOP, &fd), 0,
                                             "device %u refuses RESUMING→STOP: its stream is incomplete", d);
                        }
                        committed = true;
                        cr_assert_eq(stream_in_complete(in), 0);
                }
        }
        cr_assert(in_connected && out_connected);
        cr_assert_eq(sent, p->devices);
        cr_assert(in_switchover);
        for (unsigned d = 0; d < p->devices; d++)
                precopy_devices += p->precopy;
        if (p->reconfigure && p->dst_minor >= 0) {
                /* every device: a second round, acknowledged by the destination and awaited by the source */
                cr_assert_eq(out_reinits, precopy_devices);
                cr_assert_eq(in_reinits, precopy_devices);
                cr_assert_eq(in_loaded, 2 * precopy_devices, "the destination acknowledges each round");
                cr_assert_geq(initial_loaded, precopy_devices);
                cr_assert_leq(initial_loaded, 2 * precopy_devices, "a stale acknowledgement raises no event");
        } else if (p->reconfigure) {
                cr_assert_eq(out_unacked, precopy_devices);
                cr_assert_eq(in_reinits, 0);
                cr_assert_eq(in_loaded, precopy_devices, "2.0: one round");
        } else if (p->precopy)
                cr_assert_eq(in_loaded, precopy_devices);
        stream_test_set_minors(-1, -1);

        for (unsigned d = 0; d < p->devices; d++) {
                int fd = -1;
                cr_assert_eq(vfio_dev_set_state(src[d], VFIO_DEVICE_STATE_STOP, &fd), 0);
                cr_assert_eq(sim_device_state_digest(src[d]), sim_device_state_digest(dst[d]),
                             "device %u: the state did not arrive", d);
        }
        ret->usec = now_usec() - start;
        stream_out_stats(out, &ret->out_stats);
        stream_in_stats(in, &ret->in_stats);
        cr_assert_eq(ret->out_stats.bytes, ret->in_stats.bytes);
        cr_assert_eq(ret->out_stats.packets, ret->in_stats.packets);
        for (unsigned d = 0; d < p->devices; d++)
                cr_assert_eq(ret->out_stats.device_bytes[d], ret->in_stats.device_bytes[d]);
        cr_assert_eq(ret->in_stats.channels_up, p->channels);
        {
                /* user-space TLS keeps io_uring too: GnuTLS seals and opens in memory */
                bool ring = p->io_uring && stream_io_uring_available();
                StreamTransport t = !p->tls ? STREAM_TRANSPORT_CLEARTEXT
                                    : stream_tls_context_ktls(p->tls) ? STREAM_TRANSPORT_TLS_KERNEL : STREAM_TRANSPORT_TLS_USER;
                cr_assert_eq(ret->out_stats.io_uring, ring);
                cr_assert_eq(ret->in_stats.io_uring, ring);
                cr_assert_eq(ret->out_stats.transport, t, "%s", stream_transport_to_string(ret->out_stats.transport));
                cr_assert_eq(ret->in_stats.transport, t, "%s", stream_transport_to_string(ret->in_stats.transport));
        }
        cr_assert_leq(ret->in_stats.buffered_peak, p->budget ?: STREAM_BUDGET_DEFAULT);
        /* each channel's binding: equal on both ends, different from every other channel's */
        for (unsigned c = 0; c < p->channels; c++) {
                uint8_t a[STREAM_TLS_BINDING_SIZE], b[STREAM_TLS_BINDING_SIZE], z[STREAM_TLS_BINDING_SIZE] = {};
                int ra = stream_out_test_channel_binding(out, c, a), rb = stream_in_test_channel_binding(in, c, b);
                cr_assert_eq(ra, p->tls ? 0 : -ENOPROTOOPT);
                cr_assert_eq(rb, p->tls ? 0 : -ENOPROTOOPT);
                if (!p->tls)
                        continue;
                cr_assert_arr_eq(a, b, sizeof a, "channel %u: the two ends bind to different values", c);
                cr_assert_arr_neq(a, z, sizeof a);
                for (unsigned d = 0; d < c; d++) {
                        uint8_t e[STREAM_TLS_BINDING_SIZE];
                        cr_assert_eq(stream_out_test_channel_binding(out, d, e), 0);
                        cr_assert_arr_neq(a, e, sizeof a, "channels %u and %u share a binding", d, c);
                }
        }

        stream_out_free(out);
        stream_in_free(in);
        stream_listener_free(l);
        for (unsigned d = 0; d < p->devices; d++) {
                close(src_fd[d]);
                close(dst_fd[d]);
                vfio_dev_free(src[d]);
                vfio_dev_free(dst[d]);
                free(blobs[d]);
        }
}

TestSuite(stream_engine, .timeout = 120);

Test(stream_engine, stop_copy_every_channel_count_both_io_paths) {
        static const unsigned channel_counts[] = { 1, 2, 4, 8 };

        for (size_t k = 0; k < ELEMENTSOF(channel_counts); k++)
                for (int uring = 0; uring < 2; uring++) {
                        Params p = {
                                .channels = channel_counts[k],
                                .io_uring = uring,
                                .devices = 3,
                                .sizes = { 1, 3 * MiB + 7, 9 * MiB + 65536 },
                                .flags = { flag_sets[k % 4], flag_sets[(k + 1) % 4], flag_sets[(k + 2) % 4] },
                        };
                        Run r;
                        run_migration(&p, &r);
                        cr_assert_gt(r.in_stats.packets, 3);
                }
}

/* TLS on every channel (tools/make-test-pki.sh makes the credentials): the same state arrives. */
Test(stream_engine, tls_every_channel) {
        const char *script = getenv("MAKE_TEST_PKI");
        char dir[] = "/tmp/test-stream-engine-tls.XXXXXX", cmd[512], ca[128], cert[128], key[128];
        StreamTlsConfig c = { .ca_file = ca, .cert_file = cert, .key_file = key, .ktls = true };
        StreamTlsContext *tls = NULL;
        ErrorMessage err = {};

        cr_assert(script, "MAKE_TEST_PKI is not set (run through meson test)");
        cr_assert(mkdtemp(dir));
        (void) snprintf(cmd, sizeof cmd, "%s %s h", script, dir);
        cr_assert_eq(system(cmd), 0);
        (void) snprintf(ca, sizeof ca, "%s/h/ca-cert.pem", dir);
        (void) snprintf(cert, sizeof cert, "%s/h/server-cert.pem", dir);
        (void) snprintf(key, sizeof key, "%s/h/server-key.pem", dir);
        cr_assert_eq(stream_tls_context_new(&c, &tls, &err), 0, "%s", err.text);
        for (unsigned channels = 1; channels <= 4; channels += 3) {
                Params p = { .channels = channels, .io_uring = true, .devices = 2, .sizes = { 9 * MiB + 5, 3 * MiB },
                             .precopy = true, .dirty_rate = 4 * MiB, .precopy_usec = 200000, .tls = tls };
                Run r;
                run_migration(&p, &r);
        }
        {
                /* without io_uring the blocking threads carry the records (stream_tls_send/recv) */
                Params p = { .channels = 2, .io_uring = false, .devices = 1, .sizes = { 5 * MiB + 3 }, .tls = tls };
                Run r;
                run_migration(&p, &r);
        }
        stream_tls_context_unref(tls);
        (void) snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        (void) !system(cmd);
}

Test(stream_engine, one_large_device) {
        Params p = { .channels = 4, .io_uring = true, .devices = 1, .sizes = { 40 * MiB + 3 } };
        Run r;

        run_migration(&p, &r);
        cr_assert_geq(r.in_stats.bytes, 40 * MiB);
}

Test(stream_engine, small_payloads_many_packets) {
        Params p = { .channels = 3, .io_uring = true, .devices = 2, .sizes = { 1 * MiB + 1, 700000 }, .chunk = 4093 };
        Run r;

        run_migration(&p, &r);
        cr_assert_gt(r.in_stats.packets, 400);
}

Test(stream_engine, two_rings_five_channels) {
        Params p = { .channels = 5, .rings = 2, .io_uring = true, .devices = 2, .sizes = { 6 * MiB, 5 * MiB + 1 } };
        Run r;

        run_migration(&p, &r);
}

Test(stream_engine, precopy_with_dirtying) {
        static const unsigned channel_counts[] = { 1, 3, 8 };

        for (size_t k = 0; k < ELEMENTSOF(channel_counts); k++)
                for (int uring = 0; uring < 2; uring++) {
                        Params p = {
                                .channels = channel_counts[k],
                                .io_uring = uring,
                                .precopy = true,
                                .devices = 3,
                                .sizes = { 4 * MiB, 1, 2 * MiB + 5 },
                                .flags = { ALL_FLAGS, VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY, ALL_FLAGS },
                                .mtty = { false, false, true },
                                .dirty_rate = 16 * MiB,
                                .precopy_usec = 150000,
                        };
                        Run r;
                        run_migration(&p, &r);
                }
}

/* PRECOPY_INFOv2 REINIT after the destination loaded the first round: protocol 2.1 re-opens the
 * initial data, the destination loads and acknowledges it again, the state arrives (digests). A
 * 2.0 destination gets the new bytes as dirty data and the source says so. */
Test(stream_engine, precopy_reinit_second_round) {
        for (int old = 0; old < 2; old++)
                for (int uring = 0; uring < 2; uring++) {
                        Params p = {
                                .channels = 3,
                                .io_uring = uring,
                                .precopy = true,
                                .devices = 3,
                                .sizes = { 4 * MiB, 1, 2 * MiB + 5 },
                                .flags = { ALL_FLAGS, VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY, ALL_FLAGS },
                                .mtty = { false, false, true },
                                .precopy_usec = 50000,
                                .reconfigure = true,
                                .dst_minor = old ? -1 : 0,
                        };
                        Run r;
                        run_migration(&p, &r);
                }
}

Test(stream_engine, small_budget_and_a_slow_channel) {
        for (int uring = 0; uring < 2; uring++) {
                Params p = {
                        .channels = 4,
                        .io_uring = uring,
                        .devices = 2,
                        .sizes = { 12 * MiB, 9 * MiB + 3 },
                        .budget = 2 * MiB,
                        .throttle = 40 * MiB,
                };
                Run r;
                run_migration(&p, &r);
                /* the budget holds two 512 KiB packets at least, so the payload shrank to fit */
                cr_assert_leq(r.in_stats.buffered_peak, 2 * MiB);
                cr_assert_gt(r.in_stats.buffered_peak, 0);
        }
}

Test(stream_engine, precopy_small_budget_slow_channel) {
        Params p = {
                .channels = 3,
                .io_uring = true,
                .precopy = true,
                .devices = 2,
                .sizes = { 6 * MiB, 3 * MiB },
                .flags = { ALL_FLAGS, ALL_FLAGS },
                .dirty_rate = 8 * MiB,
                .budget = 2 * MiB,
                .throttle = 30 * MiB,
                .precopy_usec = 100000,
        };
        Run r;

        run_migration(&p, &r);
        cr_assert_leq(r.in_stats.buffered_peak, 2 * MiB);
}

Test(stream_engine, blobs_travel_after_end) {
        for (int uring = 0; uring < 2; uring++) {
                Params p = {
                        .channels = 2,
                        .io_uring = uring,
                        .devices = 3,
                        .sizes = { 100000, 2 * MiB, 1 },
                        .blobs = true,
                        .blob_sizes = { 0, 4000, STREAM_BLOB_MAX },
                };
                Run r;
                run_migration(&p, &r);
        }
}

/* ---- the source's view of failures ---- */

static StreamEvent wait_out_event(StreamOut *out, uint64_t timeout_usec) {
        uint64_t deadline = now_usec() + timeout_usec;
        StreamEvent e;

        for (;;) {
                struct pollfd pfd = { .fd = stream_out_event_fd(out), .events = POLLIN };
                if (stream_out_next_event(out, &e) > 0)
                        return e;
                cr_assert_lt(now_usec(), deadline, "no source event in time");
                (void) poll(&pfd, 1, 50);
        }
}

static StreamEvent wait_in_event(StreamIn *in, uint64_t timeout_usec) {
        uint64_t deadline = now_usec() + timeout_usec;
        StreamEvent e;

        for (;;) {
                struct pollfd pfd = { .fd = stream_in_event_fd(in), .events = POLLIN };
                if (stream_in_next_event(in, &e) > 0)
                        return e;
                cr_assert_lt(now_usec(), deadline, "no destination event in time");
                (void) poll(&pfd, 1, 50);
        }
}

static StreamEvent wait_in_failed(StreamIn *in, uint64_t timeout_usec) {
        for (;;) {
                StreamEvent e = wait_in_event(in, timeout_usec);
                if (e.type == STREAM_EVENT_FAILED || e.type == STREAM_EVENT_PEER_ABORT)
                        return e;
                free(e.blob);
        }
}

Test(stream_engine, source_refused_for_a_wrong_token) {
        VfioDev *src = sim_new("s", 4096, VFIO_MIGRATION_STOP_COPY, 0, 0, 1, false);
        VfioDev *dst = sim_new("d", 4096, VFIO_MIGRATION_STOP_COPY, 0, 0, 1, false);
        int sfd = -1, dfd = -1;
        StreamInConfig ic = { .device_count = 1, .devices = { dst }, .io_uring = true };
        StreamOutConfig oc = { .channels = 2, .io_uring = true, .device_count = 1, .devices = { src } };
        StreamListener *l = listener_new(&oc.peer, &oc.peer_len);
        StreamIn *in = NULL;
        StreamOut *out = NULL;
        ErrorMessage err = {};
        StreamEvent e;

        cr_assert_eq(vfio_dev_set_state(dst, VFIO_DEVICE_STATE_RESUMING, &dfd), 0);
        cr_assert_eq(vfio_dev_set_state(src, VFIO_DEVICE_STATE_STOP_COPY, &sfd), 0);
        ic.data_fds[0] = dfd;
        ic.infos[0] = sim_info(dst, 4096);
        oc.infos[0] = sim_info(src, 4096);
        make_token(ic.token, 1);
        make_token(oc.token, 2);
        cr_assert_eq(stream_in_new(&ic, &in, &err), 0);
        cr_assert_eq(stream_listener_register(l, in), 0);
        cr_assert_eq(stream_out_new(&oc, &out, &err), 0);
        e = wait_out_event(out, 10000000);
        cr_assert_eq(e.type, STREAM_EVENT_FAILED, "event %d: %s", e.type, e.text);
        cr_assert_eq(e.error, -EPROTO, "a refusal is -EPROTO: %d", e.error);
        cr_assert(strstr(e.text, "refused channel 0: token: no prepared job has this token"), "%s", e.text);

        /* the right token, but an incompatible device */
        stream_out_free(out);
        memcpy(oc.token, ic.token, sizeof oc.token);
        oc.infos[0].state_size = 8192;
        cr_assert_eq(stream_out_new(&oc, &out, &err), 0);
        e = wait_out_event(out, 10000000);
        cr_assert_eq(e.type, STREAM_EVENT_FAILED);
        cr_assert_eq(e.error, -EPROTO);
        cr_assert(strstr(e.text, "incompatible: device 0: state size differ"), "%s", e.text);
        stream_out_free(out);

        /* nobody listening */
        stream_listener_free(l);
        l = NULL;
        cr_assert_eq(stream_out_new(&oc, &out, &err), 0);
        e = wait_out_event(out, 10000000);
        cr_assert_eq(e.type, STREAM_EVENT_FAILED);
        cr_assert_eq(e.error, -ECONNREFUSED, "%d %s", e.error, e.text);
        cr_assert(strstr(e.text, "cannot connect channel"), "%s", e.text);
        stream_out_free(out);

        stream_in_free(in);
        close(sfd);
        close(dfd);
        vfio_dev_free(src);
        vfio_dev_free(dst);
}

Test(stream_engine, source_abort_reaches_the_destination) {
        for (int uring = 0; uring < 2; uring++) {
                VfioDev *src = sim_new("s", 64 * MiB, VFIO_MIGRATION_STOP_COPY, 0, 0, 1, false);
                VfioDev *dst = sim_new("d", 64 * MiB, VFIO_MIGRATION_STOP_COPY, 0, 0, 1, false);
                int sfd = -1, dfd = -1;
                StreamInConfig ic = { .device_count = 1, .devices = { dst }, .io_uring = uring, .budget = 4 * MiB };
                StreamOutConfig oc = { .channels = 2, .io_uring = uring, .device_count = 1, .devices = { src } };
                StreamListener *l = listener_new(&oc.peer, &oc.peer_len);
                StreamIn *in = NULL;
                StreamOut *out = NULL;
                ErrorMessage err = {};
                StreamEvent e;

                cr_assert_eq(vfio_dev_set_state(dst, VFIO_DEVICE_STATE_RESUMING, &dfd), 0);
                cr_assert_eq(vfio_dev_set_state(src, VFIO_DEVICE_STATE_STOP_COPY, &sfd), 0);
                ic.data_fds[0] = dfd;
                ic.infos[0] = sim_info(dst, 64 * MiB);
                oc.infos[0] = sim_info(src, 64 * MiB);
                make_token(ic.token, 3);
                memcpy(oc.token, ic.token, sizeof oc.token);
                cr_assert_eq(stream_in_new(&ic, &in, &err), 0);
                cr_assert_eq(stream_listener_register(l, in), 0);
                cr_assert_eq(stream_out_new(&oc, &out, &err), 0);
                e = wait_out_event(out, 10000000);
                cr_assert_eq(e.type, STREAM_EVENT_CONNECTED, "%s", e.text);
                /* slow the stream so it is still running when we abort */
                stream_out_test_set_channel_rate(out, 0, 20 * MiB);
                stream_out_test_set_channel_rate(out, 1, 20 * MiB);
                cr_assert_eq(stream_out_start_stopcopy(out, 0, sfd), 0);
                usleep(100000);
                stream_out_abort(out, STREAM_ABORT_CANCELLED, "the operator cancelled");
                e = wait_in_failed(in, 10000000);
                cr_assert_eq(e.type, STREAM_EVENT_PEER_ABORT, "%d %s", e.type, e.text);
                cr_assert_eq(e.reason, STREAM_ABORT_CANCELLED);
                cr_assert_str_eq(e.text, "the operator cancelled");
                cr_assert_eq(stream_out_next_event(out, &e), 0, "no events after an abort");
                stream_out_free(out);
                stream_in_free(in);
                stream_listener_free(l);
                close(sfd);
                close(dfd);
                vfio_dev_free(src);
                vfio_dev_free(dst);
        }
}

Test(stream_engine, destination_abort_and_device_refusal) {
        for (int uring = 0; uring < 2; uring++) {
                /* the destination's device has another state size than announced: the stream's
                 * header is refused by the device on its first write */
                VfioDev *src = sim_new("s", 8 * MiB, VFIO_MIGRATION_STOP_COPY, 0, 0, 1, false);
                VfioDev *dst = sim_new("d", 4 * MiB, VFIO_MIGRATION_STOP_COPY, 0, 0, 1, false);
                int sfd = -1, dfd = -1;
                StreamInConfig ic = { .device_count = 1, .devices = { dst }, .io_uring = uring };
                StreamOutConfig oc = { .channels = 3, .io_uring = uring, .device_count = 1, .devices = { src } };
                StreamListener *l = listener_new(&oc.peer, &oc.peer_len);
                StreamIn *in = NULL;
                StreamOut *out = NULL;
                ErrorMessage err = {};
                StreamEvent e;

                cr_assert_eq(vfio_dev_set_state(dst, VFIO_DEVICE_STATE_RESUMING, &dfd), 0);
                cr_assert_eq(vfio_dev_set_state(src, VFIO_DEVICE_STATE_STOP_COPY, &sfd), 0);
                ic.data_fds[0] = dfd;
                ic.infos[0] = sim_info(src, 8 * MiB); /* the job announces what the source has */
                oc.infos[0] = sim_info(src, 8 * MiB);
                make_token(ic.token, 4);
                memcpy(oc.token, ic.token, sizeof oc.token);
                cr_assert_eq(stream_in_new(&ic, &in, &err), 0);
                cr_assert_eq(stream_listener_register(l, in), 0);
                cr_assert_eq(stream_out_new(&oc, &out, &err), 0);
                e = wait_out_event(out, 10000000);
                cr_assert_eq(e.type, STREAM_EVENT_CONNECTED, "%s", e.text);
                cr_assert_eq(stream_out_start_stopcopy(out, 0, sfd), 0);

                e = wait_in_failed(in, 10000000);
                cr_assert_eq(e.type, STREAM_EVENT_FAILED);
                cr_assert(strstr(e.text, "device 0 (d) refused the migration data at byte 0"), "%s", e.text);
                /* the destination told the source why */
                do
                        e = wait_out_event(out, 10000000);
                while (e.type == STREAM_EVENT_DEVICE_SENT);
                cr_assert_eq(e.type, STREAM_EVENT_PEER_ABORT, "%d: %s", e.type, e.text);
                cr_assert_eq(e.reason, STREAM_ABORT_DEVICE);
                cr_assert(strstr(e.text, "refused the migration data"), "%s", e.text);

                stream_out_free(out);
                stream_in_free(in);
                stream_listener_free(l);
                close(sfd);
                close(dfd);
                vfio_dev_free(src);
                vfio_dev_free(dst);
        }
}

/* ---- hostile sources ---- */

typedef struct Hostile {
        StreamListener *l;
        StreamIn *in;
        VfioDev *dst[2];
        int dfd[2];
        struct sockaddr_storage addr;
        socklen_t addr_len;
        uint8_t token[STREAM_TOKEN_SIZE];
        uint8_t *stream;         /* a valid sim stream for device 0 */
        size_t stream_size;
        uint32_t max_payload;
        unsigned devices;
        uint64_t state_size;
        uint64_t budget;
} Hostile;

static unsigned hostile_salt = 9;   /* a second job needs another token */
static bool raw_wrong_proof;         /* raw_hello() sends a PROOF that does not verify */

static void hostile_setup(Hostile *h, bool uring, uint64_t budget, uint64_t stall_usec) {
        VfioDev *src;
        StreamInConfig ic = { .io_uring = uring, .budget = budget, .stall_timeout_usec = stall_usec };
        ErrorMessage err = {};
        int fd = -1;
        ssize_t n;

        *h = (Hostile) { .devices = 2, .state_size = 3 * MiB, .budget = budget ?: STREAM_BUDGET_DEFAULT };
        h->l = listener_new(&h->addr, &h->addr_len);
        make_token(h->token, hostile_salt);
        ic.device_count = h->devices;
        memcpy(ic.token, h->token, sizeof ic.token);
        for (unsigned d = 0; d < h->devices; d++) {
                h->dst[d] = sim_new(d == 0 ? "d0" : "d1", h->state_size, VFIO_MIGRATION_STOP_COPY, 0, 0, 5, false);
                h->dfd[d] = -1;
                cr_assert_eq(vfio_dev_set_state(h->dst[d], VFIO_DEVICE_STATE_RESUMING, &h->dfd[d]), 0);
                ic.devices[d] = h->dst[d];
                ic.infos[d] = sim_info(h->dst[d], h->state_size);
                ic.data_fds[d] = h->dfd[d];
        }
        cr_assert_eq(stream_in_new(&ic, &h->in, &err), 0, "%s", err.text);
        cr_assert_eq(stream_listener_register(h->l, h->in), 0);

        /* a valid stream for device 0, to send as DATA */
        src = sim_new("hs", h->state_size, VFIO_MIGRATION_STOP_COPY, 0, 0, 5, false);
        cr_assert_eq(vfio_dev_set_state(src, VFIO_DEVICE_STATE_STOP_COPY, &fd), 0);
        h->stream = malloc(h->state_size + MiB);
        while ((n = vfio_dev_data_read(src, fd, h->stream + h->stream_size, 65536)) > 0)
                h->stream_size += (size_t) n;
        cr_assert_eq(n, 0);
        close(fd);
        vfio_dev_free(src);
}

static void hostile_done(Hostile *h) {
        stream_in_free(h->in);
        stream_listener_free(h->l);
        for (unsigned d = 0; d < h->devices; d++) {
                close(h->dfd[d]);
                vfio_dev_free(h->dst[d]);
        }
        free(h->stream);
}

static int raw_connect(Hostile *h) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert_geq(fd, 0);
        cr_assert_eq(connect(fd, (struct sockaddr *) &h->addr, h->addr_len), 0, "connect: %m");
        return fd;
}

static void send_bytes(int fd, const void *buf, size_t n) {
        const uint8_t *p = buf;
        while (n > 0) {
                ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return; /* the destination may hang up on us: that is what we test */
                p += k;
                n -= (size_t) k;
        }
}

static bool recv_bytes(int fd, void *buf, size_t n) {
        uint8_t *p = buf;
        while (n > 0) {
                ssize_t k = recv(fd, p, n, MSG_WAITALL);
                if (k <= 0)
                        return false;
                p += k;
                n -= (size_t) k;
        }
        return true;
}

/* A v2 handshake by hand: HELLO, WELCOME (its proof checked), PROOF. */
static uint16_t raw_minor;          /* the minor raw_hello() offers: 0 speaks 2.0 */
static StreamWelcome raw_hello(Hostile *h, int fd, unsigned index, unsigned count, const uint8_t *token) {
        StreamHello hello = {
                .major = STREAM_PROTOCOL_MAJOR,
                .minor = raw_minor,
                .channel_index = (uint16_t) index,
                .channel_count = (uint16_t) count,
                .device_count = h->devices,
                .max_payload = 1u << 20,
        };
        uint8_t buf[4096], in[STREAM_WELCOME_SIZE + STREAM_WELCOME_PROOF_SIZE], out[STREAM_PROOF_SIZE];
        uint8_t binding[STREAM_BINDING_SIZE] = {};
        const uint8_t *key = token ?: h->token;
        StreamWelcome w;
        StreamProof proof;
        const char *why = NULL;
        int n;

        cr_assert_eq(stream_job_id(key, hello.job_id), 0);
        cr_assert_eq(stream_random(hello.nonce, sizeof hello.nonce), 0);
        for (unsigned d = 0; d < h->devices; d++)
                hello.devices[d] = sim_info(h->dst[d], h->state_size);
        n = stream_hello_encode(&hello, buf, sizeof buf);
        cr_assert_gt(n, 0);
        send_bytes(fd, buf, (size_t) n);
        cr_assert(recv_bytes(fd, in, STREAM_WELCOME_SIZE), "no WELCOME");
        cr_assert_eq(stream_welcome_decode(in, &w, &why), 0, "%s", why);
        if (w.status == STREAM_ACCEPTED) {
                StreamTranscript t = {
                        .hello = buf,
                        .hello_size = (size_t) n,
                        .welcome = in,
                        .nonce_src = hello.nonce,
                        .channel_index = (uint16_t) index,
                        .channel_count = (uint16_t) count,
                        .binding = binding,
                };
                cr_assert(recv_bytes(fd, in + STREAM_WELCOME_SIZE, STREAM_WELCOME_PROOF_SIZE), "no proof in the WELCOME");
                stream_welcome_decode_proof(in + STREAM_WELCOME_SIZE, &w);
                t.nonce_dst = w.nonce;
                cr_assert(stream_proof_verify(key, STREAM_PROOF_DST, &t, w.mac), "the destination's proof is wrong");
                cr_assert_eq(stream_proof_mac(key, STREAM_PROOF_SRC, &t, proof.mac), 0);
                if (raw_wrong_proof)
                        proof.mac[31] ^= 1;
                stream_proof_encode(&proof, out);
                send_bytes(fd, out, sizeof out);
                h->max_payload = w.max_payload;
        }
        return w;
}

static void raw_packet(int fd, uint8_t type, uint8_t flags, uint16_t device, uint64_t sseq, uint64_t dseq,
                       const void *payload, uint32_t length) {
        StreamHeader hd = { .type = type, .flags = flags, .device = device, .stream_seq = sseq, .device_seq = dseq };
        uint8_t head[STREAM_HEADER_SIZE];

        stream_header_seal(&hd, payload, length);
        stream_header_encode(&hd, head);
        send_bytes(fd, head, sizeof head);
        if (length > 0)
                send_bytes(fd, payload, length);
}

/* Connects count channels and returns their fds. */
static void raw_channels(Hostile *h, int *fds, unsigned count) {
        for (unsigned c = 0; c < count; c++) {
                StreamWelcome w;
                fds[c] = raw_connect(h);
                w = raw_hello(h, fds[c], c, count, NULL);
                cr_assert_eq(w.status, STREAM_ACCEPTED, "%s: %s", stream_refusal_to_string(w.status), w.reason);
        }
}

static void close_all(int *fds, unsigned count) {
        for (unsigned c = 0; c < count; c++)
                close(fds[c]);
}

static void expect_failure(Hostile *h, int error, const char *text) {
        StreamEvent e;
        StreamStats st;

        for (;;) {
                e = wait_in_event(h->in, 15000000);
                free(e.blob);
                if (e.type == STREAM_EVENT_CONNECTED || e.type == STREAM_EVENT_DEVICE_DONE ||
                    e.type == STREAM_EVENT_INITIAL_LOADED || e.type == STREAM_EVENT_INITIAL_REINIT ||
                    e.type == STREAM_EVENT_BLOB || e.type == STREAM_EVENT_SWITCHOVER)
                        continue;
                break;
        }
        cr_assert_eq(e.type, STREAM_EVENT_FAILED, "event %d: %s", e.type, e.text);
        cr_assert_eq(e.error, error, "error %d, not %d: %s", e.error, error, e.text);
        cr_assert(strstr(e.text, text), "\"%s\" does not say \"%s\"", e.text, text);
        stream_in_stats(h->in, &st);
        cr_assert_leq(st.buffered_peak, h->budget);
}

#define HOSTILE_BUDGET (2 * MiB)

/* Reads the destination's next control packet on channel 0. */
static StreamHeader raw_control(int fd) {
        uint8_t head[STREAM_HEADER_SIZE], payload[4 + STREAM_ABORT_TEXT_MAX];
        const char *why = NULL;
        StreamHeader hd;

        cr_assert(recv_bytes(fd, head, sizeof head), "the destination closed channel 0");
        cr_assert_eq(stream_header_decode(head, sizeof payload, 1, &hd, &why), 0, "%s", why);
        if (hd.length > 0)
                cr_assert(recv_bytes(fd, payload, hd.length));
        return hd;
}

/* Protocol 2.1 (§2.6): initial data re-opened after INITIAL_DONE is a new round the destination
 * loads and acknowledges again; an INITIAL_DONE that re-opens nothing, a ninth round, and a
 * channel offering another minor than the first are refused. */
Test(stream_engine, hostile_reinit_rounds) {
        for (int uring = 0; uring < 2; uring++) {
                Hostile h;
                int fds[2];
                uint64_t sseq = 0, dseq = 0;
                size_t off = 0;
                StreamEvent e;
                StreamWelcome w;

                raw_minor = STREAM_MINOR_REINIT;

                /* two rounds: two acknowledgements, and the destination's job hears of the re-open */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 1);
                raw_packet(fds[0], STREAM_PACKET_DATA, STREAM_DATA_FLAG_PRECOPY | STREAM_DATA_FLAG_INITIAL, 0, sseq++,
                           dseq++, h.stream + off, 1000);
                off += 1000;
                raw_packet(fds[0], STREAM_PACKET_INITIAL_DONE, 0, 0, sseq++, dseq++, NULL, 0);
                cr_assert_eq(raw_control(fds[0]).type, STREAM_PACKET_INITIAL_LOADED);
                raw_packet(fds[0], STREAM_PACKET_DATA, STREAM_DATA_FLAG_PRECOPY | STREAM_DATA_FLAG_INITIAL, 0, sseq++,
                           dseq++, h.stream + off, 1000);
                off += 1000;
                raw_packet(fds[0], STREAM_PACKET_INITIAL_DONE, 0, 0, sseq++, dseq++, NULL, 0);
                cr_assert_eq(raw_control(fds[0]).type, STREAM_PACKET_INITIAL_LOADED, "the second round is acknowledged");
                {
                        unsigned loaded = 0, reinit = 0;
                        while (loaded < 2) {
                                e = wait_in_event(h.in, 10000000);
                                if (e.type == STREAM_EVENT_INITIAL_LOADED)
                                        loaded++;
                                else if (e.type == STREAM_EVENT_INITIAL_REINIT) {
                                        cr_assert_eq(loaded, 1, "re-opened after the first round was loaded");
                                        cr_assert_str_eq(e.text, "round 2");
                                        reinit++;
                                } else
                                        cr_assert_eq(e.type, STREAM_EVENT_CONNECTED, "event %d: %s", e.type, e.text);
                        }
                        cr_assert_eq(reinit, 1);
                }
                /* an INITIAL_DONE with nothing re-opened */
                raw_packet(fds[0], STREAM_PACKET_INITIAL_DONE, 0, 0, sseq++, dseq++, NULL, 0);
                expect_failure(&h, -EBADMSG, "INITIAL_DONE repeated");
                close_all(fds, 1);
                hostile_done(&h);

                /* the ninth round */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 1);
                sseq = dseq = 0;
                off = 0;
                raw_packet(fds[0], STREAM_PACKET_INITIAL_DONE, 0, 0, sseq++, dseq++, NULL, 0);
                for (unsigned round = 2; round <= STREAM_INITIAL_ROUNDS_MAX + 1; round++) {
                        raw_packet(fds[0], STREAM_PACKET_DATA, STREAM_DATA_FLAG_PRECOPY | STREAM_DATA_FLAG_INITIAL, 0,
                                   sseq++, dseq++, h.stream + off, 100);
                        off += 100;
                        raw_packet(fds[0], STREAM_PACKET_INITIAL_DONE, 0, 0, sseq++, dseq++, NULL, 0);
                }
                expect_failure(&h, -EBADMSG, "initial data re-opened more often than 8 times");
                close_all(fds, 1);
                hostile_done(&h);

                /* channel 1 offers 2.0 where channel 0 offered 2.1 */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                fds[0] = raw_connect(&h);
                w = raw_hello(&h, fds[0], 0, 2, NULL);
                cr_assert_eq(w.status, STREAM_ACCEPTED, "%s", w.reason);
                cr_assert_eq(w.minor, STREAM_MINOR_REINIT, "the destination answers the minor both speak");
                raw_minor = 0;
                fds[1] = raw_connect(&h);
                w = raw_hello(&h, fds[1], 1, 2, NULL);
                cr_assert_eq(w.status, STREAM_REFUSE_BAD_HELLO, "%s", w.reason);
                cr_assert_str_eq(w.reason, "the HELLO differs from the first channel's");
                close_all(fds, 2);
                hostile_done(&h);
        }
        raw_minor = 0;
}

Test(stream_engine, hostile_duplicate_sequence_numbers) {
        for (int uring = 0; uring < 2; uring++) {
                Hostile h;
                int fds[2];

                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 2);
                raw_packet(fds[0], STREAM_PACKET_DATA, 0, 0, 0, 0, h.stream, 1000);
                raw_packet(fds[1], STREAM_PACKET_DATA, 0, 0, 0, 1, h.stream + 1000, 1000);
                expect_failure(&h, -EBADMSG, "stream sequence number already received");
                close_all(fds, 2);
                hostile_done(&h);

                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 1);
                raw_packet(fds[0], STREAM_PACKET_DATA, 0, 0, 5, 0, h.stream, 1000);
                raw_packet(fds[0], STREAM_PACKET_DATA, 0, 0, 5, 1, h.stream + 1000, 1000);
                expect_failure(&h, -EBADMSG, "does not increase along its channel");
                close_all(fds, 1);
                hostile_done(&h);

                /* the same device sequence number twice */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 1);
                raw_packet(fds[0], STREAM_PACKET_DATA, 0, 0, 0, 0, h.stream, 1000);
                raw_packet(fds[0], STREAM_PACKET_DATA, 0, 0, 1, 2, h.stream + 1000, 1000);
                raw_packet(fds[0], STREAM_PACKET_DATA, 0, 0, 2, 2, h.stream + 1000, 1000);
                raw_packet(fds[0], STREAM_PACKET_DATA, 0, 0, 3, 1, h.stream + 1000, 1000);
                expect_failure(&h, -EBADMSG, "device sequence number");
                close_all(fds, 1);
                hostile_done(&h);
        }
}

Test(stream_engine, hostile_oversize_and_bad_crc) {
        for (int uring = 0; uring < 2; uring++) {
                Hostile h;
                int fds[1];
                StreamHeader hd = { .type = STREAM_PACKET_DATA, .length = 0 };
                uint8_t head[STREAM_HEADER_SIZE];

                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 1);
                /* the budget of 2 MiB holds two packets of 512 KiB: that is what was announced */
                cr_assert_eq(h.max_payload, 512u << 10);
                hd.length = h.max_payload + 1;
                stream_header_encode(&hd, head);
                send_bytes(fds[0], head, sizeof head);
                expect_failure(&h, -EBADMSG, "payload longer than announced");
                close_all(fds, 1);
                hostile_done(&h);

                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 1);
                hd = (StreamHeader) { .type = STREAM_PACKET_DATA };
                stream_header_seal(&hd, h.stream, 5000);
                hd.payload_crc ^= 1;
                stream_header_encode(&hd, head);
                send_bytes(fds[0], head, sizeof head);
                send_bytes(fds[0], h.stream, 5000);
                expect_failure(&h, -EBADMSG, "payload CRC mismatch (DATA, stream sequence number 0");
                close_all(fds, 1);
                hostile_done(&h);

                /* a corrupt header */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 1);
                hd = (StreamHeader) { .type = STREAM_PACKET_DATA };
                stream_header_seal(&hd, h.stream, 10);
                stream_header_encode(&hd, head);
                head[9] ^= 0x40;
                send_bytes(fds[0], head, sizeof head);
                expect_failure(&h, -EBADMSG, "packet header checksum mismatch");
                close_all(fds, 1);
                hostile_done(&h);
        }
}

Test(stream_engine, hostile_refusals) {
        Hostile h;
        uint8_t wrong[STREAM_TOKEN_SIZE] = { 1, 2, 3 };
        uint8_t junk[200], in[STREAM_WELCOME_SIZE];
        StreamWelcome w;
        const char *why = NULL;
        int fd, fds[2];

        hostile_setup(&h, true, HOSTILE_BUDGET, 0);

        fd = raw_connect(&h);
        w = raw_hello(&h, fd, 0, 1, wrong);
        cr_assert_eq(w.status, STREAM_REFUSE_TOKEN);
        cr_assert_str_eq(w.reason, "no prepared job has this token");
        cr_assert(!recv_bytes(fd, in, 1), "the destination closes a refused channel");
        close(fd);

        fd = raw_connect(&h);
        for (size_t k = 0; k < sizeof junk; k++)
                junk[k] = (uint8_t) (k * 37 + 1);
        send_bytes(fd, junk, sizeof junk);
        cr_assert(recv_bytes(fd, in, sizeof in), "no WELCOME for garbage");
        cr_assert_eq(stream_welcome_decode(in, &w, &why), 0);
        cr_assert_eq(w.status, STREAM_REFUSE_BAD_HELLO);
        cr_assert_str_eq(w.reason, "not a HELLO (bad magic)");
        close(fd);

        /* a second channel that disagrees about the channel count, then a repeated index */
        fds[0] = raw_connect(&h);
        w = raw_hello(&h, fds[0], 0, 2, NULL);
        cr_assert_eq(w.status, STREAM_ACCEPTED);
        fd = raw_connect(&h);
        w = raw_hello(&h, fd, 1, 3, NULL);
        cr_assert_eq(w.status, STREAM_REFUSE_CHANNELS);
        close(fd);
        fd = raw_connect(&h);
        w = raw_hello(&h, fd, 0, 2, NULL);
        cr_assert_eq(w.status, STREAM_REFUSE_CHANNELS);
        cr_assert_str_eq(w.reason, "channel 0 is already connected");
        close(fd);
        fds[1] = raw_connect(&h);
        w = raw_hello(&h, fds[1], 1, 2, NULL);
        cr_assert_eq(w.status, STREAM_ACCEPTED);
        /* all channels are here: no more */
        fd = raw_connect(&h);
        w = raw_hello(&h, fd, 1, 2, NULL);
        cr_assert_eq(w.status, STREAM_REFUSE_BUSY);
        close(fd);
        close_all(fds, 2);
        expect_failure(&h, -ECONNRESET, "the source closed channel");
        hostile_done(&h);
}

Test(stream_engine, hostile_window_flood_and_gaps) {
        for (int uring = 0; uring < 2; uring++) {
                Hostile h;
                int fds[2];
                StreamStats st;

                /* far beyond the window, on every channel */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 2);
                for (unsigned k = 0; k < 50; k++)
                        raw_packet(fds[k % 2], STREAM_PACKET_DATA, 0, 0, 100000 + k, k, h.stream, 1000);
                expect_failure(&h, -EBADMSG, "no channel carries stream sequence number 0");
                close_all(fds, 2);
                hostile_done(&h);

                /* within the window, but never the frontier: the budget fills, then nothing moves */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 2);
                for (unsigned k = 1; k < 200; k++)
                        raw_packet(fds[k % 2], STREAM_PACKET_DATA, 0, 0, k, k, h.stream, 65536);
                expect_failure(&h, -EBADMSG, "no channel carries stream sequence number 0");
                stream_in_stats(h.in, &st);
                cr_assert_leq(st.buffered_peak, HOSTILE_BUDGET);
                cr_assert_gt(st.buffered_peak, HOSTILE_BUDGET / 2, "the flood filled the budget (%llu)",
                             (unsigned long long) st.buffered_peak);
                close_all(fds, 2);
                hostile_done(&h);

                /* a device sequence gap: stream order is fine, device 0 never gets packet 0 */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 1);
                for (unsigned k = 0; k < 200; k++)
                        raw_packet(fds[0], STREAM_PACKET_DATA, 0, 0, k, k + 1, h.stream, 65536);
                expect_failure(&h, -EBADMSG, "a device sequence number is missing");
                close_all(fds, 1);
                hostile_done(&h);
        }
}

Test(stream_engine, hostile_device_order) {
        for (int uring = 0; uring < 2; uring++) {
                Hostile h;
                int fds[2];
                uint8_t end[16];
                uint64_t v;

                /* DATA after END */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 1);
                raw_packet(fds[0], STREAM_PACKET_DATA, 0, 1, 0, 0, h.stream, 1000);
                v = htole64(1000);
                memcpy(end, &v, 8);
                v = htole64(1);
                memcpy(end + 8, &v, 8);
                raw_packet(fds[0], STREAM_PACKET_END, 0, 1, 1, 1, end, 16);
                usleep(100000);
                raw_packet(fds[0], STREAM_PACKET_DATA, 0, 1, 2, 2, h.stream + 1000, 1000);
                expect_failure(&h, -EBADMSG, "a packet for a device after its end");
                close_all(fds, 1);
                hostile_done(&h);

                /* wrong END totals */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 1);
                raw_packet(fds[0], STREAM_PACKET_DATA, 0, 0, 0, 0, h.stream, 1000);
                v = htole64(999);
                memcpy(end, &v, 8);
                raw_packet(fds[0], STREAM_PACKET_END, 0, 0, 1, 1, end, 16);
                expect_failure(&h, -EBADMSG, "END announces 999 bytes in 1 DATA packets, 1000 bytes in 1 packets arrived");
                close_all(fds, 1);
                hostile_done(&h);

                /* initial data after INITIAL_DONE */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 1);
                raw_packet(fds[0], STREAM_PACKET_INITIAL_DONE, 0, 0, 0, 0, NULL, 0);
                raw_packet(fds[0], STREAM_PACKET_DATA, STREAM_DATA_FLAG_PRECOPY | STREAM_DATA_FLAG_INITIAL, 0, 1, 1,
                           h.stream, 1000);
                expect_failure(&h, -EBADMSG, "initial pre-copy data after INITIAL_DONE");
                close_all(fds, 1);
                hostile_done(&h);

                /* a BLOB before END */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 1);
                raw_packet(fds[0], STREAM_PACKET_BLOB, 0, 0, 0, 0, "x", 1);
                expect_failure(&h, -EBADMSG, "a BLOB before its device's END");
                close_all(fds, 1);
                hostile_done(&h);

                /* a packet only a destination sends */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 1);
                {
                        uint8_t records[STREAM_DEVICES_MAX * STREAM_COMPLETE_RECORD_SIZE] = {};
                        raw_packet(fds[0], STREAM_PACKET_COMPLETE, 0, STREAM_JOB_DEVICE, 0, 0, records,
                                   h.devices * STREAM_COMPLETE_RECORD_SIZE);
                }
                expect_failure(&h, -EBADMSG, "a packet that only a destination sends (COMPLETE)");
                close_all(fds, 1);
                hostile_done(&h);

                /* control packets travel on channel 0 only */
                for (int type = 0; type < 2; type++) {
                        uint8_t abort_payload[8] = { STREAM_ABORT_CANCELLED, 0, 0, 0, 'n', 'o' };
                        hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                        raw_channels(&h, fds, 2);
                        if (type == 0)
                                raw_packet(fds[1], STREAM_PACKET_SWITCHOVER, 0, STREAM_JOB_DEVICE, 0, 0, NULL, 0);
                        else
                                raw_packet(fds[1], STREAM_PACKET_ABORT, 0, STREAM_JOB_DEVICE, 0, 0, abort_payload, 6);
                        expect_failure(&h, -EBADMSG, "a control packet on a channel other than 0");
                        close_all(fds, 2);
                        hostile_done(&h);
                }
        }
}

Test(stream_engine, hostile_disconnect_stall_and_abort) {
        for (int uring = 0; uring < 2; uring++) {
                Hostile h;
                int fds[2];
                StreamEvent e;
                uint8_t abort_payload[8] = { 2, 0, 0, 0, 'b', 'o', 'o', 'm' };
                uint8_t head[STREAM_HEADER_SIZE];
                StreamHeader hd = { .type = STREAM_PACKET_DATA };

                /* half a packet, then gone */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 2);
                stream_header_seal(&hd, h.stream, 5000);
                stream_header_encode(&hd, head);
                send_bytes(fds[1], head, sizeof head);
                send_bytes(fds[1], h.stream, 100);
                close(fds[1]);
                expect_failure(&h, -ECONNRESET, "the source closed channel 1 before the migration completed");
                close(fds[0]);
                hostile_done(&h);

                /* silence during pre-copy is a source with nothing to send (or waiting for its
                 * operator): not a stall, however long it lasts */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 300000);
                raw_channels(&h, fds, 1);
                raw_packet(fds[0], STREAM_PACKET_DATA, STREAM_DATA_FLAG_PRECOPY, 0, 0, 0, h.stream, 1000);
                for (uint64_t until = now_usec() + 1200000; now_usec() < until;) {
                        StreamEvent quiet;
                        if (stream_in_next_event(h.in, &quiet) > 0) {
                                free(quiet.blob);
                                cr_assert(quiet.type != STREAM_EVENT_FAILED && quiet.type != STREAM_EVENT_PEER_ABORT,
                                          "an idle pre-copy failed: %s", quiet.text);
                        }
                        usleep(20000);
                }
                /* silence after SWITCHOVER is one */
                raw_packet(fds[0], STREAM_PACKET_SWITCHOVER, 0, STREAM_JOB_DEVICE, 0, 0, NULL, 0);
                expect_failure(&h, -ETIMEDOUT, "stalled: no packet applied for 1 s");
                close(fds[0]);
                hostile_done(&h);

                /* only some channels ever come */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 300000);
                fds[0] = raw_connect(&h);
                cr_assert_eq(raw_hello(&h, fds[0], 0, 2, NULL).status, STREAM_ACCEPTED);
                fds[1] = raw_connect(&h);
                cr_assert_eq(raw_hello(&h, fds[1], 1, 3, NULL).status, STREAM_REFUSE_CHANNELS);
                expect_failure(&h, -ETIMEDOUT, "1 of 2 channels connected");
                close_all(fds, 2);
                hostile_done(&h);

                /* an ABORT */
                hostile_setup(&h, uring, HOSTILE_BUDGET, 0);
                raw_channels(&h, fds, 1);
                raw_packet(fds[0], STREAM_PACKET_ABORT, 0, STREAM_JOB_DEVICE, 0, 0, abort_payload, sizeof abort_payload);
                do
                        e = wait_in_event(h.in, 10000000);
                while (e.type == STREAM_EVENT_CONNECTED);
                cr_assert_eq(e.type, STREAM_EVENT_PEER_ABORT, "%d %s", e.type, e.text);
                cr_assert_eq(e.reason, STREAM_ABORT_DEVICE);
                cr_assert_str_eq(e.text, "boom");
                /* and the destination hangs up */
                cr_assert(!recv_bytes(fds[0], head, 1));
                close(fds[0]);
                hostile_done(&h);
        }
}

Test(stream_engine, hostile_idle_connections) {
        Hostile h;
        int idle[40], fds[1];
        uint64_t start;
        uint8_t byte;

        hostile_setup(&h, true, HOSTILE_BUDGET, 0);
        stream_listener_test_set_limits(h.l, 400000, 16);
        for (unsigned k = 0; k < ELEMENTSOF(idle); k++)
                idle[k] = raw_connect(&h);
        /* a truncated HELLO too */
        send_bytes(idle[39], "VFMHELLO", 8);
        start = now_usec();
        while (stream_listener_test_pending(h.l) < 16 && now_usec() - start < 2000000)
                usleep(10000);
        cr_assert_leq(stream_listener_test_pending(h.l), 16);
        /* the oldest were dropped for the newer ones */
        cr_assert(!recv_bytes(idle[0], &byte, 1));
        /* an honest channel still gets in */
        raw_channels(&h, fds, 1);
        /* and the idle ones are gone after the HELLO timeout */
        for (unsigned k = 0; k < ELEMENTSOF(idle); k++) {
                struct timeval tv = { .tv_sec = 5 };
                setsockopt(idle[k], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
                cr_assert(!recv_bytes(idle[k], &byte, 1));
                close(idle[k]);
        }
        cr_assert_lt(now_usec() - start, 4000000);
        cr_assert_eq(stream_listener_test_pending(h.l), 0);
        close(fds[0]);
        expect_failure(&h, -ECONNRESET, "closed channel 0");
        hostile_done(&h);
}

/* ---- hostile destinations: the source's receive path on channel 0 ---- */

typedef struct FakeDest {
        int listen_fd;
        int fds[4];
        unsigned channels;
} FakeDest;

static void fake_dest_listen(FakeDest *f, StreamOutConfig *oc) {
        struct sockaddr_in *in = (struct sockaddr_in *) &oc->peer;
        socklen_t len = sizeof(struct sockaddr_in);

        *f = (FakeDest) { .listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0) };
        *in = (struct sockaddr_in) { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        cr_assert_eq(bind(f->listen_fd, (struct sockaddr *) in, sizeof *in), 0);
        cr_assert_eq(listen(f->listen_fd, 8), 0);
        cr_assert_eq(getsockname(f->listen_fd, (struct sockaddr *) in, &len), 0);
        oc->peer_len = sizeof *in;
}

/* Accepts the source's channels and welcomes them all, proving the token (unless proof is
 * PROOF_NONE or PROOF_WRONG), and reads the source's PROOF, which must verify. */
enum { PROOF_RIGHT, PROOF_NONE, PROOF_WRONG };
static uint16_t fake_dest_minor; /* what the fake destination's WELCOME answers */
static void fake_dest_accept_proof(FakeDest *f, const uint8_t *token, unsigned channels, unsigned device_count, int proof) {
        f->channels = channels;
        for (unsigned c = 0; c < channels; c++) {
                uint8_t hello[4096], out[STREAM_WELCOME_SIZE + STREAM_WELCOME_PROOF_SIZE], pbuf[STREAM_PROOF_SIZE];
                uint8_t binding[STREAM_BINDING_SIZE] = {};
                size_t size = stream_hello_size(device_count), n;
                StreamHello h;
                StreamProof sp;
                const char *why = NULL;
                StreamWelcome w = { .major = STREAM_PROTOCOL_MAJOR, .minor = fake_dest_minor, .max_payload = 1u << 20 };
                StreamTranscript t;
                int fd = accept4(f->listen_fd, NULL, NULL, SOCK_CLOEXEC);

                cr_assert_geq(fd, 0);
                cr_assert(recv_bytes(fd, hello, size));
                cr_assert_eq(stream_hello_decode(hello, size, &h, &why), 0, "%s", why);
                w.channel_index = h.channel_index;
                cr_assert_eq(stream_random(w.nonce, sizeof w.nonce), 0);
                stream_welcome_encode(&w, out);
                t = (StreamTranscript) { .hello = hello, .hello_size = size, .welcome = out, .nonce_src = h.nonce,
                                         .nonce_dst = w.nonce, .channel_index = h.channel_index,
                                         .channel_count = h.channel_count, .binding = binding };
                cr_assert_eq(stream_proof_mac(token, STREAM_PROOF_DST, &t, w.mac), 0);
                if (proof == PROOF_WRONG)
                        w.mac[7] ^= 1;
                n = stream_welcome_encode_full(&w, out);
                send_bytes(fd, out, proof == PROOF_NONE ? STREAM_WELCOME_SIZE : n);
                f->fds[h.channel_index] = fd;
                if (proof != PROOF_RIGHT)
                        continue;
                cr_assert(recv_bytes(fd, pbuf, sizeof pbuf), "no PROOF from the source");
                cr_assert_eq(stream_proof_decode(pbuf, &sp, &why), 0, "%s", why);
                cr_assert(stream_proof_verify(token, STREAM_PROOF_SRC, &t, sp.mac), "the source's proof is wrong");
        }
}

static void fake_dest_accept(FakeDest *f, const uint8_t *token, unsigned channels, unsigned device_count) {
        fake_dest_accept_proof(f, token, channels, device_count, PROOF_RIGHT);
}

static void fake_dest_close(FakeDest *f) {
        for (unsigned c = 0; c < f->channels; c++)
                close(f->fds[c]);
        close(f->listen_fd);
}

Test(stream_engine, hostile_destinations) {
        enum { SENDS_DATA, LOADED_TOO_EARLY, HANGS_UP, BAD_HEADER, COMPLETE_EARLY, CONTROL_ON_CHANNEL_1, _CASES };
        static const char *const expect[_CASES] = {
                [SENDS_DATA] = "the destination sent DATA on channel 0, which only a source sends",
                [LOADED_TOO_EARLY] = "INITIAL_LOADED for device 0 before its INITIAL_DONE",
                [HANGS_UP] = "the destination closed channel 0 before the migration completed",
                [BAD_HEADER] = "the destination sent a bad packet header on channel 0: bad packet magic",
                [COMPLETE_EARLY] = "COMPLETE that proves nothing: it came before SWITCHOVER was sent",
                [CONTROL_ON_CHANNEL_1] = "the destination sent data on channel 1; it sends only on channel 0",
        };
        uint8_t complete[STREAM_COMPLETE_RECORD_SIZE] = {};

        for (int uring = 0; uring < 2; uring++)
                for (int k = 0; k < _CASES; k++) {
                        VfioDev *src = sim_new("s", 2 * MiB, ALL_FLAGS, MiB, 0, 1, false);
                        int sfd = -1;
                        StreamOutConfig oc = { .channels = 2, .io_uring = uring, .precopy = true, .device_count = 1,
                                               .devices = { src } };
                        StreamOut *out = NULL;
                        ErrorMessage err = {};
                        FakeDest f;
                        StreamEvent e;
                        uint8_t junk[STREAM_HEADER_SIZE] = "not a packet header at all, no";

                        cr_assert_eq(vfio_dev_set_state(src, VFIO_DEVICE_STATE_PRE_COPY, &sfd), 0);
                        oc.infos[0] = sim_info(src, 2 * MiB);
                        fake_dest_listen(&f, &oc);
                        cr_assert_eq(stream_out_new(&oc, &out, &err), 0, "%s", err.text);
                        fake_dest_accept(&f, oc.token, 2, 1);
                        e = wait_out_event(out, 10000000);
                        cr_assert_eq(e.type, STREAM_EVENT_CONNECTED, "%s", e.text);
                        switch (k) {
                        case SENDS_DATA:
                                raw_packet(f.fds[0], STREAM_PACKET_DATA, 0, 0, 0, 0, "x", 1);
                                break;
                        case LOADED_TOO_EARLY:
                                raw_packet(f.fds[0], STREAM_PACKET_INITIAL_LOADED, 0, 0, 0, 0, NULL, 0);
                                break;
                        case HANGS_UP:
                                close(f.fds[0]);
                                f.fds[0] = -1;
                                break;
                        case BAD_HEADER:
                                send_bytes(f.fds[0], junk, sizeof junk);
                                break;
                        case COMPLETE_EARLY:
                                raw_packet(f.fds[0], STREAM_PACKET_COMPLETE, 0, STREAM_JOB_DEVICE, 0, 0, complete,
                                           sizeof complete);
                                break;
                        case CONTROL_ON_CHANNEL_1:
                                raw_packet(f.fds[1], STREAM_PACKET_COMPLETE, 0, STREAM_JOB_DEVICE, 0, 0, complete,
                                           sizeof complete);
                                break;
                        }
                        e = wait_out_event(out, 10000000);
                        cr_assert_eq(e.type, STREAM_EVENT_FAILED, "case %d: event %d %s", k, e.type, e.text);
                        cr_assert_eq(e.error, k == HANGS_UP ? -ECONNRESET : -EBADMSG, "case %d: %d %s", k, e.error, e.text);
                        cr_assert(strstr(e.text, expect[k]), "case %d: \"%s\"", k, e.text);
                        stream_out_free(out);
                        fake_dest_close(&f);
                        close(sfd);
                        vfio_dev_free(src);
                }
}

/* Reads the next packet the source sent on fd; its payload is dropped. */
static StreamHeader fake_dest_read_packet(int fd) {
        static uint8_t payload[2u << 20];
        uint8_t head[STREAM_HEADER_SIZE];
        const char *why = NULL;
        StreamHeader h;

        cr_assert(recv_bytes(fd, head, sizeof head), "the source closed the channel");
        cr_assert_eq(stream_header_decode(head, sizeof payload, 1, &h, &why), 0, "%s", why);
        if (h.length > 0)
                cr_assert(recv_bytes(fd, payload, h.length));
        return h;
}

/* Reads until the next INITIAL_DONE; returns the bytes of DATA flagged initial on the way. */
static uint64_t fake_dest_read_round(int fd, unsigned *ret_dirty_packets) {
        uint64_t initial = 0;
        unsigned dirty = 0;

        for (;;) {
                StreamHeader h = fake_dest_read_packet(fd);
                if (h.type == STREAM_PACKET_INITIAL_DONE)
                        break;
                cr_assert_eq(h.type, STREAM_PACKET_DATA, "%s", stream_packet_type_to_string(h.type));
                cr_assert(h.flags & STREAM_DATA_FLAG_PRECOPY);
                if (h.flags & STREAM_DATA_FLAG_INITIAL)
                        initial += h.length;
                else
                        dirty++;
        }
        if (ret_dirty_packets)
                *ret_dirty_packets = dirty;
        return initial;
}

/* The source's side of a second round, against a destination that acknowledges when the test says
 * so: an acknowledgement of the first round that arrives after the REINIT is stale (no event),
 * the second one counts, a third is a violation. Deterministic, unlike a race with a real
 * destination. */
Test(stream_engine, reinit_acknowledgements_are_counted) {
        for (int uring = 0; uring < 2; uring++) {
                VfioDev *src = sim_new("s", 2 * MiB, ALL_FLAGS, 256 << 10, 0, 1, false);
                int sfd = -1;
                StreamOutConfig oc = { .channels = 1, .io_uring = uring, .precopy = true, .device_count = 1,
                                       .devices = { src } };
                StreamOut *out = NULL;
                ErrorMessage err = {};
                FakeDest f;
                StreamEvent e;
                uint64_t first, second;
                unsigned dirty = 0;

                cr_assert_eq(vfio_dev_set_state(src, VFIO_DEVICE_STATE_PRE_COPY, &sfd), 0);
                oc.infos[0] = sim_info(src, 2 * MiB);
                fake_dest_listen(&f, &oc);
                cr_assert_eq(stream_out_new(&oc, &out, &err), 0, "%s", err.text);
                fake_dest_minor = STREAM_MINOR_REINIT;
                fake_dest_accept(&f, oc.token, 1, 1);
                fake_dest_minor = 0;
                e = wait_out_event(out, 10000000);
                cr_assert_eq(e.type, STREAM_EVENT_CONNECTED, "%s", e.text);
                cr_assert_eq(stream_out_start_precopy(out, 0, sfd), 0);

                first = fake_dest_read_round(f.fds[0], NULL);
                cr_assert_gt(first, 256 << 10, "the header and every pre-copy block");
                cr_assert_eq(sim_device_reconfigure(src), 0);
                e = wait_out_event(out, 10000000);
                cr_assert_eq(e.type, STREAM_EVENT_INITIAL_REINIT, "%d: %s", e.type, e.text);
                cr_assert_eq(e.reason, 1, "a 2.1 destination acknowledges again");
                cr_assert(strstr(e.text, "bytes of new initial data (round 2)"), "%s", e.text);

                raw_packet(f.fds[0], STREAM_PACKET_INITIAL_LOADED, 0, 0, 0, 0, NULL, 0); /* round 1's: stale */
                second = fake_dest_read_round(f.fds[0], &dirty);
                cr_assert_eq(second, 4 * (SIM_RECORD_HEADER_SIZE + SIM_BLOCK_SIZE), "every pre-copy block again");
                cr_assert_eq(dirty, 0);
                usleep(200000);
                cr_assert_eq(stream_out_next_event(out, &e), 0, "no event for a stale acknowledgement (%d)", e.type);

                raw_packet(f.fds[0], STREAM_PACKET_INITIAL_LOADED, 0, 0, 0, 0, NULL, 0); /* round 2's */
                e = wait_out_event(out, 10000000);
                cr_assert_eq(e.type, STREAM_EVENT_INITIAL_LOADED, "%d: %s", e.type, e.text);

                raw_packet(f.fds[0], STREAM_PACKET_INITIAL_LOADED, 0, 0, 0, 0, NULL, 0); /* one too many */
                e = wait_out_event(out, 10000000);
                cr_assert_eq(e.type, STREAM_EVENT_FAILED, "%d: %s", e.type, e.text);
                cr_assert_eq(e.error, -EBADMSG);
                cr_assert(strstr(e.text, "INITIAL_LOADED for device 0 3 times, for 2 INITIAL_DONE"), "%s", e.text);
                stream_out_free(out);
                fake_dest_close(&f);
                close(sfd);
                vfio_dev_free(src);
        }
}

/* A 2.0 destination cannot acknowledge new initial data: the source sends it as dirty pre-copy
 * data (an initial flag after INITIAL_DONE would be a violation there) and says why, once. */
Test(stream_engine, reinit_with_a_2_0_destination_is_dirty_data) {
        VfioDev *src = sim_new("s", 2 * MiB, ALL_FLAGS, 256 << 10, 0, 1, false);
        int sfd = -1;
        StreamOutConfig oc = { .channels = 1, .precopy = true, .device_count = 1, .devices = { src } };
        StreamOut *out = NULL;
        ErrorMessage err = {};
        FakeDest f;
        StreamEvent e;
        uint64_t got = 0;

        cr_assert_eq(vfio_dev_set_state(src, VFIO_DEVICE_STATE_PRE_COPY, &sfd), 0);
        oc.infos[0] = sim_info(src, 2 * MiB);
        fake_dest_listen(&f, &oc);
        cr_assert_eq(stream_out_new(&oc, &out, &err), 0, "%s", err.text);
        fake_dest_accept(&f, oc.token, 1, 1); /* answers 2.0 */
        e = wait_out_event(out, 10000000);
        cr_assert_eq(e.type, STREAM_EVENT_CONNECTED, "%s", e.text);
        cr_assert_eq(stream_out_start_precopy(out, 0, sfd), 0);
        cr_assert_gt(fake_dest_read_round(f.fds[0], NULL), 0);
        cr_assert_eq(sim_device_reconfigure(src), 0);
        e = wait_out_event(out, 10000000);
        cr_assert_eq(e.type, STREAM_EVENT_INITIAL_REINIT, "%d: %s", e.type, e.text);
        cr_assert_eq(e.reason, 0);
        cr_assert(strstr(e.text, "sent as dirty data: the destination speaks protocol 2.0"), "%s", e.text);
        while (got < 4 * (SIM_RECORD_HEADER_SIZE + SIM_BLOCK_SIZE)) {
                StreamHeader h = fake_dest_read_packet(f.fds[0]);
                cr_assert_eq(h.type, STREAM_PACKET_DATA, "no second INITIAL_DONE for a 2.0 destination");
                cr_assert_eq(h.flags, STREAM_DATA_FLAG_PRECOPY, "never flagged initial after INITIAL_DONE");
                got += h.length;
        }
        cr_assert_eq(got, 4 * (SIM_RECORD_HEADER_SIZE + SIM_BLOCK_SIZE));
        usleep(100000);
        cr_assert_eq(stream_out_next_event(out, &e), 0, "said once");
        stream_out_free(out);
        fake_dest_close(&f);
        close(sfd);
        vfio_dev_free(src);
}

/* A WELCOME without the destination's proof, or with a wrong one: the source fails before any
 * device state moves (no CONNECTED, nothing but HELLO and no PROOF on the wire). */
Test(stream_engine, destination_must_prove_the_token) {
        for (int uring = 0; uring < 2; uring++)
                for (int proof = PROOF_NONE; proof <= PROOF_WRONG; proof++) {
                        VfioDev *src = sim_new("s", 2 * MiB, ALL_FLAGS, MiB, 0, 1, false);
                        int sfd = -1;
                        StreamOutConfig oc = { .channels = 2, .io_uring = uring, .precopy = true, .device_count = 1,
                                               .devices = { src } };
                        StreamOut *out = NULL;
                        ErrorMessage err = {};
                        FakeDest f;
                        StreamEvent e;
                        uint8_t scratch[64];
                        ssize_t k;

                        cr_assert_eq(vfio_dev_set_state(src, VFIO_DEVICE_STATE_PRE_COPY, &sfd), 0);
                        oc.infos[0] = sim_info(src, 2 * MiB);
                        make_token(oc.token, 5);
                        fake_dest_listen(&f, &oc);
                        cr_assert_eq(stream_out_new(&oc, &out, &err), 0, "%s", err.text);
                        fake_dest_accept_proof(&f, oc.token, 2, 1, proof);
                        if (proof == PROOF_NONE)
                                shutdown(f.fds[0], SHUT_WR); /* the WELCOME ends where its proof should be */
                        e = wait_out_event(out, 15000000);
                        cr_assert_eq(e.type, STREAM_EVENT_FAILED, "proof %d: event %d %s", proof, e.type, e.text);
                        cr_assert_eq(e.error, -EBADMSG, "%d %s", e.error, e.text);
                        cr_assert(strstr(e.text, proof == PROOF_NONE ? "without proving it knows the job's token"
                                                                     : "proof on channel 0 is wrong"),
                                  "\"%s\"", e.text);
                        stream_out_free(out);
                        /* the source sent its HELLO and nothing after it */
                        k = recv(f.fds[0], scratch, sizeof scratch, MSG_DONTWAIT);
                        cr_assert_leq(k, 0, "the source sent %zd bytes after the HELLO", k);
                        fake_dest_close(&f);
                        close(sfd);
                        vfio_dev_free(src);
                }
}

/* The listener finds a job by the job identifier its HELLO names (never by a token on the
 * wire), proves that job's token, and hands a channel over only once the source proved it. */
Test(stream_engine, listener_finds_the_job_by_its_id) {
        Hostile a, b;
        StreamWelcome w;
        StreamEvent e;
        uint8_t buf[STREAM_HEADER_SIZE + 4 + STREAM_ABORT_TEXT_MAX + 1];
        StreamHeader hd;
        const char *why = NULL;
        int fd;

        hostile_setup(&a, true, HOSTILE_BUDGET, 0);
        hostile_salt = 10;
        hostile_setup(&b, true, HOSTILE_BUDGET, 0);
        hostile_salt = 9;
        stream_listener_unregister(b.l, b.in);
        cr_assert_eq(stream_listener_register(a.l, b.in), 0, "two jobs on one listener");
        b.addr = a.addr;
        b.addr_len = a.addr_len;

        /* b's source on the shared listener: raw_hello() checks MAC_dst with b's token, so the
         * WELCOME can only verify if the listener found job b */
        fd = raw_connect(&b);
        w = raw_hello(&b, fd, 0, 1, NULL);
        cr_assert_eq(w.status, STREAM_ACCEPTED, "%s", w.reason);
        e = wait_in_event(b.in, 5000000);
        cr_assert_eq(e.type, STREAM_EVENT_CONNECTED, "event %d: %s", e.type, e.text);
        cr_assert_eq(stream_in_next_event(a.in, &e), 0, "job a heard of job b's channel");
        close(fd);

        /* a's job identifier with a wrong PROOF: an ABORT says why, the channel closes, and job a
         * never hears of it */
        raw_wrong_proof = true;
        fd = raw_connect(&a);
        w = raw_hello(&a, fd, 0, 1, NULL);
        raw_wrong_proof = false;
        cr_assert_eq(w.status, STREAM_ACCEPTED);
        cr_assert(recv_bytes(fd, buf, STREAM_HEADER_SIZE), "no ABORT");
        cr_assert_eq(stream_header_decode(buf, 4 + STREAM_ABORT_TEXT_MAX, 2, &hd, &why), 0, "%s", why);
        cr_assert_eq(hd.type, STREAM_PACKET_ABORT);
        cr_assert(recv_bytes(fd, buf + STREAM_HEADER_SIZE, hd.length));
        buf[STREAM_HEADER_SIZE + hd.length] = 0;
        cr_assert(strstr((char *) buf + STREAM_HEADER_SIZE + 4, "proof on channel 0 is wrong"), "%s",
                  (char *) buf + STREAM_HEADER_SIZE + 4);
        cr_assert(!recv_bytes(fd, buf, 1), "the listener closes the connection");
        close(fd);
        usleep(200000);
        cr_assert_eq(stream_in_next_event(a.in, &e), 0, "job a heard of a channel that did not prove the token");

        /* and the right proof still opens job a */
        fd = raw_connect(&a);
        w = raw_hello(&a, fd, 0, 1, NULL);
        cr_assert_eq(w.status, STREAM_ACCEPTED);
        e = wait_in_event(a.in, 5000000);
        cr_assert_eq(e.type, STREAM_EVENT_CONNECTED, "event %d: %s", e.type, e.text);
        close(fd);

        hostile_done(&b);
        hostile_done(&a);
}
