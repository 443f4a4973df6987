/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Stop-copy downtime of whole migration jobs (core/migration.c over the real stream engine, one
 * process, loopback): the time the source devices are stopped, from SWITCHOVER until the
 * destination has committed. Baseline, measured in the same run: the same device migrated
 * without pre-copy, where everything moves while the device is stopped. Then (--slow-arc-ms)
 * the switchover of several devices whose every arc takes that long, against one such device,
 * with the group moves parallel (the default) and serial. Not a test.
 */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "manager.h"
#include "migration.h"
#include "sim-device.h"

#define MiB (UINT64_C(1) << 20)

static sd_event *loop;
static unsigned arg_runs = 3;
static uint64_t arg_size_mib = 1024, arg_dirty_mib = 64;
static unsigned arg_channels = 4;
static uint64_t arg_slow_arc_ms = 200;
static unsigned arg_slow_devices = 4;

static uint64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static Manager *manager(bool serial) {
        ManagerOptions o = { .allow_simulated = true, .stream_listen = "127.0.0.1:0", .serial_transitions = serial };
        Manager *m = NULL;

        o.kernel.dev_root = "/nonexistent";
        if (manager_new(&o, &m) < 0) {
                fprintf(stderr, "cannot make a manager\n");
                exit(1);
        }
        manager_set_event(m, loop);
        return m;
}

typedef struct Setup {
        bool precopy;
        unsigned n_devices;
        uint64_t size_mib;
        uint64_t arc_latency_usec;
        bool serial;
} Setup;

static Device *attach(Manager *m, const Setup *setup, unsigned index, uint64_t seed) {
        bool precopy = setup->precopy;
        AttachOptions o;
        ErrorMessage err = {};
        Device *d = NULL;
        char address[32];

        attach_options_init(&o);
        o.sim_options_given = true;
        o.sim.state_size = setup->size_mib * MiB;
        o.sim.arc_latency_usec = setup->arc_latency_usec;
        o.sim.migration_flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | (precopy ? VFIO_MIGRATION_PRE_COPY : 0);
        /* Everything is offered in pre-copy; while running the device rewrites dirty_mib a second. */
        o.sim.precopy_size = o.sim.state_size;
        o.sim.precopy_size_set = true;
        o.sim.dirty_rate = arg_dirty_mib * MiB;
        o.sim.seed = seed;
        o.sim.seed_set = true;
        (void) snprintf(address, sizeof address, "sim:bench%u", index);
        if (manager_attach(m, address, &o, &d, &err) < 0) {
                fprintf(stderr, "cannot attach: %s\n", err.text);
                exit(1);
        }
        return d;
}

typedef struct Result {
        uint64_t downtime_ms, total_ms, bytes;
} Result;

#define SLOW_DEVICES_MAX 16

static Result run_one(const Setup *setup) {
        Manager *src = manager(setup->serial), *dst = manager(setup->serial);
        Device *a[SLOW_DEVICES_MAX], *b[SLOW_DEVICES_MAX];
        MigrationOptions oo, io;
        Migration *in = NULL, *out = NULL;
        ErrorMessage err = {};
        char **addresses = NULL;
        uint64_t start;
        Result res;

        for (unsigned i = 0; i < setup->n_devices; i++) {
                a[i] = attach(src, setup, i, 1 + 2 * i);
                b[i] = attach(dst, setup, i, 2 + 2 * i);
        }
        migration_options_init(&oo);
        migration_options_init(&io);
        oo.channels = arg_channels;
        oo.precopy = setup->precopy;
        oo.downtime_limit_ms = 50;
        if (migration_prepare_incoming(dst, b, setup->n_devices, &io, &in, &err) < 0 ||
            stream_listener_addresses(dst->listener, &addresses) < 0 || !addresses[0]) {
                fprintf(stderr, "cannot prepare: %s\n", err.text);
                exit(1);
        }
        start = now_ms();
        if (migration_start(src, a, setup->n_devices, addresses[0], in->token_hex, &oo, &out, &err) < 0) {
                fprintf(stderr, "cannot start: %s\n", err.text);
                exit(1);
        }
        while (!migration_phase_is_final(out->phase) || !migration_phase_is_final(in->phase))
                if (sd_event_run(loop, 100 * 1000) < 0)
                        exit(1);
        if (out->phase != MIGRATION_COMPLETED || in->phase != MIGRATION_COMPLETED) {
                fprintf(stderr, "the migration failed: %s / %s\n", out->error ?: "", in->error ?: "");
                exit(1);
        }
        for (unsigned i = 0; i < setup->n_devices; i++)
                if (sim_device_state_digest(a[i]->dev) != sim_device_state_digest(b[i]->dev)) {
                        fprintf(stderr, "device %u arrived with another state\n", i);
                        exit(1);
                }
        res = (Result) { .downtime_ms = out->downtime_ms, .total_ms = now_ms() - start, .bytes = out->stats.bytes };
        for (char **i = addresses; *i; i++)
                free(*i);
        free(addresses);
        manager_free(src);
        manager_free(dst);
        return res;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *v, unsigned n) {
        qsort(v, n, sizeof *v, cmp_u64);
        return v[n / 2];
}

/* Devices whose every arc takes arg_slow_arc_ms, 16 MiB each, no pre-copy: the downtime is
 * mostly arcs (RUNNING→RUNNING_P2P→STOP→STOP_COPY on the source, RESUMING→STOP on the
 * destination). One device, then arg_slow_devices with parallel and with serial group moves. */
static void slow_switchover(void) {
        static const char *const names[] = { "1 device", "N devices, parallel", "N devices, serial" };
        uint64_t down[3][16];

        for (unsigned r = 0; r < arg_runs; r++)
                for (int k = 0; k < 3; k++) {
                        Setup setup = {
                                .n_devices = k == 0 ? 1 : arg_slow_devices,
                                .size_mib = 16,
                                .arc_latency_usec = arg_slow_arc_ms * 1000,
                                .serial = k == 2,
                        };
                        down[k][r] = run_one(&setup).downtime_ms;
                }
        printf("switchover of slow devices: every arc %" PRIu64 " ms, 16 MiB each, no pre-copy, N = %u, "
               "%u runs each (interleaved), medians\n", arg_slow_arc_ms, arg_slow_devices, arg_runs);
        uint64_t one = median(down[0], arg_runs);
        for (int k = 0; k < 3; k++) {
                uint64_t d = median(down[k], arg_runs);
                printf("  %-36s downtime %6" PRIu64 " ms   %.2f× one device\n", names[k], d,
                       one > 0 ? (double) d / (double) one : 0.0);
        }
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "runs", required_argument, NULL, 'r' },
                { "size-mib", required_argument, NULL, 's' },
                { "dirty-mib", required_argument, NULL, 'd' },
                { "channels", required_argument, NULL, 'c' },
                { "slow-arc-ms", required_argument, NULL, 'l' },
                { "slow-devices", required_argument, NULL, 'n' },
                {},
        };
        uint64_t down[2][16], total[2][16], bytes[2] = {};
        int c;

        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'r': arg_runs = (unsigned) strtoul(optarg, NULL, 10); break;
                case 's': arg_size_mib = strtoull(optarg, NULL, 10); break;
                case 'd': arg_dirty_mib = strtoull(optarg, NULL, 10); break;
                case 'c': arg_channels = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'l': arg_slow_arc_ms = strtoull(optarg, NULL, 10); break;
                case 'n': arg_slow_devices = (unsigned) strtoul(optarg, NULL, 10); break;
                default:
                        fprintf(stderr, "usage: %s [--runs N] [--size-mib N] [--dirty-mib N] [--channels N] "
                                "[--slow-arc-ms N (0: skip)] [--slow-devices N]\n", argv[0]);
                        return 2;
                }
        if (arg_runs < 1 || arg_runs > 16 || arg_size_mib < 1 || arg_channels < 1 || arg_channels > 64 ||
            arg_slow_arc_ms > 10000 || arg_slow_devices < 2 || arg_slow_devices > SLOW_DEVICES_MAX) {
                fprintf(stderr, "runs 1-16, size-mib ≥ 1, channels 1-64, slow-arc-ms ≤ 10000, slow-devices 2-%d\n",
                        SLOW_DEVICES_MAX);
                return 2;
        }
        log_set_max_level(LOG_WARNING);
        if (sd_event_new(&loop) < 0)
                return 1;

        printf("bench-migration: one %" PRIu64 " MiB simulated device dirtying %" PRIu64 " MiB/s, %u channels, "
               "loopback, %u runs each (interleaved), medians\n", arg_size_mib, arg_dirty_mib, arg_channels, arg_runs);
        for (unsigned r = 0; r < arg_runs; r++)
                for (int p = 0; p < 2; p++) {
                        Setup setup = { .precopy = p == 1, .n_devices = 1, .size_mib = arg_size_mib };
                        Result res = run_one(&setup);
                        down[p][r] = res.downtime_ms;
                        total[p][r] = res.total_ms;
                        bytes[p] = res.bytes;
                }
        uint64_t d0 = median(down[0], arg_runs), d1 = median(down[1], arg_runs);
        printf("  %-36s downtime %6" PRIu64 " ms   total %6" PRIu64 " ms   %" PRIu64 " MiB sent\n",
               "without pre-copy (baseline):", d0, median(total[0], arg_runs), bytes[0] / MiB);
        printf("  %-36s downtime %6" PRIu64 " ms   total %6" PRIu64 " ms   %" PRIu64 " MiB sent\n",
               "with pre-copy, auto switchover:", d1, median(total[1], arg_runs), bytes[1] / MiB);
        printf("  downtime with pre-copy / without: %.3f\n", d0 > 0 ? (double) d1 / (double) d0 : 0.0);
        if (arg_slow_arc_ms > 0)
                slow_switchover();
        sd_event_unref(loop);
        return 0;
}
