/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Migration jobs end to end inside one process: a source and a destination manager with
 * simulated devices, the real stream engine over loopback TCP, one event loop. What the bus adds
 * on top is tested in tests/integration/test_migration.py.
 */

#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <time.h>

#include "manager.h"
#include "migration.h"
#include "sim-device.h"
#include "stream-testing.h"

typedef struct Side {
        Manager *m;
        unsigned finished;
        Migration *last_finished;
} Side;

static sd_event *loop;
static Side src, dst;

static void on_finished(Manager *m, Migration *j, void *userdata) {
        Side *side = userdata;
        side->finished++;
        side->last_finished = j;
}

static void side_init(Side *side) {
        ManagerOptions o = { .allow_simulated = true, .stream_listen = "127.0.0.1:0" };
        ManagerHooks h = { .migration_finished = on_finished, .userdata = side };

        *side = (Side) {};
        o.kernel.dev_root = "/nonexistent";
        cr_assert_eq(manager_new(&o, &side->m), 0);
        manager_set_hooks(side->m, &h);
        manager_set_event(side->m, loop);
}

static void setup(void) {
        cr_assert_eq(sd_event_new(&loop), 0);
        side_init(&src);
        side_init(&dst);
}

static void teardown(void) {
        manager_free(src.m);
        manager_free(dst.m);
        sd_event_unref(loop);
}

static Device *attach(Side *side, const char *address, uint64_t size, uint32_t flags, uint64_t dirty_rate) {
        AttachOptions o;
        ErrorMessage err = {};
        Device *d = NULL;

        attach_options_init(&o);
        o.sim_options_given = true;
        o.sim.state_size = size;
        o.sim.migration_flags = flags;
        o.sim.dirty_rate = dirty_rate;
        o.sim.seed = 42;                    /* the same content on both sides would prove nothing: */
        o.sim.seed_set = side == &dst;      /* the destination gets its own seed */
        cr_assert_eq(manager_attach(side->m, address, &o, &d, &err), 0, "%s: %s", address, err.text);
        return d;
}

static uint64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

/* Runs the loop until cond holds, failing after timeout_ms. */
static void run_until(bool (*cond)(void *), void *userdata, uint64_t timeout_ms) {
        uint64_t deadline = now_ms() + timeout_ms;

        while (!cond(userdata)) {
                cr_assert_lt(now_ms(), deadline, "timed out waiting");
                cr_assert_geq(sd_event_run(loop, 100 * 1000), 0);
        }
}

static bool both_finished(void *userdata) {
        Migration **jobs = userdata;
        return migration_phase_is_final(jobs[0]->phase) && migration_phase_is_final(jobs[1]->phase);
}

static const char *first_address(Manager *m) {
        static char buf[128];
        char **l = NULL;
        cr_assert_eq(stream_listener_addresses(m->listener, &l), 0);
        cr_assert_not_null(l[0]);
        snprintf(buf, sizeof buf, "%s", l[0]);
        for (char **i = l; *i; i++)
                free(*i);
        free(l);
        return buf;
}

static void migrate(Device **sources, Device **dests, size_t n, const MigrationOptions *out_options,
                    const MigrationOptions *in_options, Migration **ret_out, Migration **ret_in) {
        Migration *in = NULL, *out = NULL;
        ErrorMessage err = {};

        cr_assert_eq(migration_prepare_incoming(dst.m, dests, n, in_options, &in, &err), 0, "%s", err.text);
        cr_assert_eq(in->phase, MIGRATION_SETUP);
        for (size_t i = 0; i < n; i++) {
                cr_assert_eq(dests[i]->state, VFIO_DEVICE_STATE_RESUMING);
                cr_assert_eq(dests[i]->migration, in);
        }
        cr_assert_eq(migration_start(src.m, sources, n, first_address(dst.m), in->token_hex, out_options, &out, &err),
                     0, "%s", err.text);
        for (size_t i = 0; i < n; i++)
                cr_assert_eq(sources[i]->migration, out);
        *ret_out = out;
        *ret_in = in;
}

TestSuite(migration, .init = setup, .fini = teardown, .timeout = 60);

Test(migration, carries_every_byte_over_several_channels) {
        static const unsigned channels[] = { 1, 2, 4, 8 };

        for (size_t c = 0; c < sizeof channels / sizeof channels[0]; c++) {
                char name[32];
                snprintf(name, sizeof name, "sim:a%zu", c);
                Device *a = attach(&src, name, 3 * 1024 * 1024 + 12345, VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P |
                                   VFIO_MIGRATION_PRE_COPY, 0);
                snprintf(name, sizeof name, "sim:b%zu", c);
                Device *b = attach(&dst, name, 3 * 1024 * 1024 + 12345, VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P |
                                   VFIO_MIGRATION_PRE_COPY, 0);
                MigrationOptions oo, io;
                Migration *jobs[2];

                migration_options_init(&oo);
                migration_options_init(&io);
                oo.channels = channels[c];
                cr_assert_neq(sim_device_state_digest(a->dev), sim_device_state_digest(b->dev));
                migrate(&a, &b, 1, &oo, &io, &jobs[0], &jobs[1]);
                run_until(both_finished, jobs, 30000);
                cr_assert_eq(jobs[0]->phase, MIGRATION_COMPLETED, "%u channels: source %s", channels[c],
                             jobs[0]->error ?: "");
                cr_assert_eq(jobs[1]->phase, MIGRATION_COMPLETED, "%u channels: destination %s", channels[c],
                             jobs[1]->error ?: "");
                cr_assert_eq(sim_device_state_digest(a->dev), sim_device_state_digest(b->dev),
                             "%u channels: the destination holds exactly the source's state", channels[c]);
                cr_assert_eq(a->state, VFIO_DEVICE_STATE_STOP);
                cr_assert_eq(b->state, VFIO_DEVICE_STATE_STOP, "not asked to run");
                cr_assert_null(a->migration);
                cr_assert_null(b->migration);
                cr_assert_gt(jobs[0]->stats.bytes, 3 * 1024 * 1024);
                cr_assert_eq(jobs[0]->stats.bytes, jobs[1]->stats.bytes);
        }
}

Test(migration, a_group_with_blobs_and_run) {
        const uint32_t flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P;
        Device *s[3] = { attach(&src, "sim:x", 1 << 20, flags, 0), attach(&src, "sim:y", 5000, flags, 0),
                         attach(&src, "sim:z", 1, flags, 0) };
        Device *d[3] = { attach(&dst, "sim:x", 1 << 20, flags, 0), attach(&dst, "sim:y", 5000, flags, 0),
                         attach(&dst, "sim:z", 1, flags, 0) };
        MigrationOptions oo, io;
        ErrorMessage err = {};
        Migration *jobs[2];

        cr_assert_eq(device_set_blob(s[0], "config space", 12, &err), 0, "%s", err.text);
        cr_assert_eq(device_set_blob(s[2], "z", 1, &err), 0, "%s", err.text);
        cr_assert_eq(device_set_blob(d[1], "stale", 5, &err), 0, "%s", err.text);
        migration_options_init(&oo);
        migration_options_init(&io);
        io.run = true;
        migrate(s, d, 3, &oo, &io, &jobs[0], &jobs[1]);
        cr_assert(!jobs[0]->precopy, "no pre-copy without the flag");
        cr_assert_eq(d[1]->blob_size, 0, "a destination starts without a blob");
        run_until(both_finished, jobs, 30000);
        cr_assert_eq(jobs[1]->phase, MIGRATION_COMPLETED, "%s", jobs[1]->error ?: "");
        for (int i = 0; i < 3; i++) {
                cr_assert_eq(sim_device_state_digest(s[i]->dev), sim_device_state_digest(d[i]->dev), "device %d", i);
                cr_assert_eq(d[i]->state, VFIO_DEVICE_STATE_RUNNING, "run was asked for");
        }
        cr_assert_eq(d[0]->blob_size, 12);
        cr_assert_eq(memcmp(d[0]->blob, "config space", 12), 0);
        cr_assert_eq(d[1]->blob_size, 0);
        cr_assert_eq(d[2]->blob_size, 1);
        cr_assert_eq(d[2]->blob[0], 'z');
}

static bool in_precopy_and_loaded(void *userdata) {
        Migration *j = userdata;
        return (j->phase == MIGRATION_PRECOPY && migration_initial_data_loaded(j)) ||
               migration_phase_is_final(j->phase);
}

/* A device dirtying faster than nothing: pre-copy keeps finding data, so manual switchover
 * waits for the operator; the source keeps running meanwhile. */
Test(migration, precopy_with_a_dirtying_device_and_manual_switchover) {
        const uint32_t flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
        Device *a = attach(&src, "sim:a", 8 << 20, flags, 4 << 20), *b = attach(&dst, "sim:a", 8 << 20, flags, 4 << 20);
        MigrationOptions oo, io;
        ErrorMessage err = {};
        Migration *jobs[2];
        uint64_t before;

        migration_options_init(&oo);
        migration_options_init(&io);
        oo.switchover_manual = true;
        migrate(&a, &b, 1, &oo, &io, &jobs[0], &jobs[1]);
        run_until(in_precopy_and_loaded, jobs[0], 20000);
        cr_assert_eq(jobs[0]->phase, MIGRATION_PRECOPY, "%s", jobs[0]->error ?: "");
        cr_assert_eq(a->state, VFIO_DEVICE_STATE_PRE_COPY, "the guest keeps running during pre-copy");
        before = migration_bytes_transferred(jobs[0]);
        /* Let it run a while: manual means no switchover, however long it takes. */
        for (uint64_t until = now_ms() + 1500; now_ms() < until;)
                cr_assert_geq(sd_event_run(loop, 100 * 1000), 0);
        cr_assert_eq(jobs[0]->phase, MIGRATION_PRECOPY);
        cr_assert_gt(migration_bytes_transferred(jobs[0]), before, "dirty data keeps flowing");

        cr_assert_eq(migration_switchover(jobs[1], &err), -EINVAL, "the destination cannot switch over");
        err = (ErrorMessage) {};
        cr_assert_eq(migration_switchover(jobs[0], &err), 0, "%s", err.text);
        run_until(both_finished, jobs, 30000);
        cr_assert_eq(jobs[0]->phase, MIGRATION_COMPLETED, "%s", jobs[0]->error ?: "");
        cr_assert_eq(jobs[1]->phase, MIGRATION_COMPLETED, "%s", jobs[1]->error ?: "");
        cr_assert_eq(sim_device_state_digest(a->dev), sim_device_state_digest(b->dev));
        cr_assert_gt(jobs[0]->downtime_ms, 0);
        err = (ErrorMessage) {};
        cr_assert_eq(migration_switchover(jobs[0], &err), -EBUSY, "over already");
        cr_assert_eq(migration_cancel(jobs[0], &err), -EBUSY);
}

/* Automatic switchover: a device that stops dirtying lets pre-copy converge. */
Test(migration, automatic_switchover_once_precopy_converges) {
        const uint32_t flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
        Device *a = attach(&src, "sim:a", 4 << 20, flags, 0), *b = attach(&dst, "sim:a", 4 << 20, flags, 0);
        MigrationOptions oo, io;
        Migration *jobs[2];

        migration_options_init(&oo);
        migration_options_init(&io);
        migrate(&a, &b, 1, &oo, &io, &jobs[0], &jobs[1]);
        run_until(both_finished, jobs, 30000);
        cr_assert_eq(jobs[0]->phase, MIGRATION_COMPLETED, "%s", jobs[0]->error ?: "");
        cr_assert(jobs[0]->switchover_requested, "decided by the job itself");
        cr_assert_eq(sim_device_state_digest(a->dev), sim_device_state_digest(b->dev));
}

static bool source_saw_reinit(void *userdata) {
        Migration *j = userdata;
        return j->initial_reinits > 0 || migration_phase_is_final(j->phase);
}

/* PRECOPY_INFOv2 REINIT after the destination loaded the initial data: the source job stops
 * calling the initial data loaded, a Switchover() waits for the destination's second
 * acknowledgement, and the state arrives. A bandwidth limit makes each round take about half a
 * second, which is the margin for seeing the job wait. With a destination that speaks 2.0 the
 * new bytes go as dirty data and nothing waits for them. */
Test(migration, reinit_waits_for_the_second_acknowledgement) {
        const uint32_t flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;

        for (int old = 0; old < 2; old++) {
                char name[16];
                Device *a, *b;
                MigrationOptions oo, io;
                Migration *jobs[2];
                ErrorMessage err = {};
                AttachOptions o;

                snprintf(name, sizeof name, "sim:r%d", old);
                attach_options_init(&o);
                o.sim_options_given = true;
                o.sim.migration_flags = flags;
                o.sim.state_size = 8 << 20;
                o.sim.precopy_size = 4 << 20;
                o.sim.precopy_size_set = true;
                cr_assert_eq(manager_attach(src.m, name, &o, &a, &err), 0, "%s", err.text);
                o.sim.seed = 7;
                o.sim.seed_set = true;
                cr_assert_eq(manager_attach(dst.m, name, &o, &b, &err), 0, "%s", err.text);
                cr_assert_eq(a->dev->precopy_info_version, VFIO_PRECOPY_INFO_V2);

                stream_test_set_minors(-1, old ? 0 : -1);
                migration_options_init(&oo);
                migration_options_init(&io);
                oo.switchover_manual = true;
                oo.bandwidth_limit = 8 << 20;
                migrate(&a, &b, 1, &oo, &io, &jobs[0], &jobs[1]);
                run_until(in_precopy_and_loaded, jobs[0], 20000);
                cr_assert_eq(jobs[0]->phase, MIGRATION_PRECOPY, "%s", jobs[0]->error ?: "");
                cr_assert_eq(jobs[0]->initial_reinits, 0);

                cr_assert_eq(sim_device_reconfigure(a->dev), 0);
                if (!old) {
                        run_until(source_saw_reinit, jobs[0], 20000);
                        cr_assert_eq(jobs[0]->phase, MIGRATION_PRECOPY, "%s", jobs[0]->error ?: "");
                        cr_assert(!migration_initial_data_loaded(jobs[0]), "4 MiB of new initial data at 8 MiB/s");
                        cr_assert_eq(migration_switchover(jobs[0], &err), 0, "%s", err.text);
                        cr_assert_eq(jobs[0]->phase, MIGRATION_PRECOPY, "the switchover waits for the second round");
                } else {
                        /* the source notices within its reader's back-off; then the operator switches */
                        for (uint64_t until = now_ms() + 600; now_ms() < until;)
                                cr_assert_geq(sd_event_run(loop, 100 * 1000), 0);
                        cr_assert(migration_initial_data_loaded(jobs[0]), "2.0: nothing to wait for");
                        cr_assert_eq(migration_switchover(jobs[0], &err), 0, "%s", err.text);
                }
                run_until(both_finished, jobs, 30000);
                cr_assert_eq(jobs[0]->phase, MIGRATION_COMPLETED, "%s", jobs[0]->error ?: "");
                cr_assert_eq(jobs[1]->phase, MIGRATION_COMPLETED, "%s", jobs[1]->error ?: "");
                cr_assert_eq(jobs[0]->initial_reinits, old ? 0 : 1);
                cr_assert_eq(jobs[1]->initial_reinits, old ? 0 : 1, "the destination re-opened the round");
                cr_assert_eq(sim_device_state_digest(a->dev), sim_device_state_digest(b->dev));
                cr_assert_gt(jobs[0]->stats.bytes, (8 << 20) + (4 << 20), "the pre-copy blocks travelled twice");
                stream_test_set_minors(-1, -1);
        }
}

static bool phase_reached(void *userdata) {
        void **args = userdata;
        Migration *j = args[0];
        MigrationPhase *p = args[1];
        return j->phase == *p || migration_phase_is_final(j->phase);
}

/* Cancel on either side in each phase: the source runs again, the destination is reset, both
 * jobs say why. */
Test(migration, cancel_in_each_phase) {
        const uint32_t flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
        static const MigrationPhase phases[] = { MIGRATION_SETUP, MIGRATION_PRECOPY };

        for (int side = 0; side < 2; side++)
                for (size_t p = 0; p < sizeof phases / sizeof phases[0]; p++) {
                        char name[32];
                        snprintf(name, sizeof name, "sim:c%d_%zu", side, p);
                        Device *a = attach(&src, name, 4 << 20, flags, 8 << 20);
                        /* No dirtying on the destination: a running device rewrites its state, so
                         * its digest would depend on how long it ran before and after the job. */
                        Device *b = attach(&dst, name, 4 << 20, flags, 0);
                        uint64_t digest_b = sim_device_state_digest(b->dev);
                        MigrationOptions oo, io;
                        ErrorMessage err = {};
                        Migration *jobs[2];
                        MigrationPhase want = phases[p];
                        void *args[2] = { NULL, &want };

                        migration_options_init(&oo);
                        migration_options_init(&io);
                        oo.switchover_manual = true;
                        migrate(&a, &b, 1, &oo, &io, &jobs[0], &jobs[1]);
                        args[0] = jobs[side];
                        run_until(phase_reached, args, 20000);
                        cr_assert_eq(jobs[side]->phase, want, "side %d: %s", side, jobs[side]->error ?: "");
                        cr_assert_eq(migration_cancel(jobs[side], &err), 0, "%s", err.text);
                        cr_assert_eq(jobs[side]->phase, MIGRATION_CANCELLED);
                        cr_assert_str_eq(jobs[side]->error_name, "org.vfiomig1.Error.Cancelled");
                        if (side == 0 && want == MIGRATION_SETUP) {
                                /* Cancelled while its channels were coming up: if none reached the
                                 * destination, it keeps waiting until told; if some did, their
                                 * closing fails it. */
                                for (uint64_t until = now_ms() + 1000;
                                     now_ms() < until && jobs[1]->phase == MIGRATION_SETUP;)
                                        cr_assert_geq(sd_event_run(loop, 50 * 1000), 0);
                                if (jobs[1]->phase == MIGRATION_SETUP) {
                                        cr_assert_eq(migration_cancel(jobs[1], &err), 0, "%s", err.text);
                                        cr_assert_eq(jobs[1]->phase, MIGRATION_CANCELLED);
                                } else
                                        run_until(both_finished, jobs, 20000);
                        } else {
                                run_until(both_finished, jobs, 20000);
                                cr_assert_eq(jobs[!side]->phase, MIGRATION_FAILED, "side %d phase %zu: the peer fails",
                                             side, p);
                        }
                        cr_assert_not_null(jobs[!side]->error);
                        cr_assert_eq(a->state, VFIO_DEVICE_STATE_RUNNING, "the source runs again");
                        cr_assert_eq(b->state, VFIO_DEVICE_STATE_RUNNING, "the destination was reset");
                        cr_assert_eq(sim_device_state_digest(b->dev), digest_b, "nothing of the stream loaded");
                        cr_assert_null(a->migration);
                        cr_assert_null(b->migration);
                }
}

Test(migration, refusals_change_nothing) {
        const uint32_t flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
        Device *a = attach(&src, "sim:a", 1 << 20, flags, 0), *b = attach(&dst, "sim:a", 1 << 20, flags, 0);
        Device *nop2p = attach(&src, "sim:n", 1 << 20, VFIO_MIGRATION_STOP_COPY, 0);
        Device *twice[2] = { a, a }, *group[2] = { a, nop2p };
        MigrationOptions o;
        ErrorMessage err = {};
        Migration *j = NULL;
        static const char token[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

        migration_options_init(&o);
        cr_assert_eq(migration_start(src.m, twice, 2, "127.0.0.1:1", token, &o, &j, &err), -EINVAL);
        cr_assert(strstr(err.text, "named twice"), "%s", err.text);
        err = (ErrorMessage) {};
        cr_assert_eq(migration_start(src.m, group, 2, "127.0.0.1:1", token, &o, &j, &err), -EXDEV);
        cr_assert(strstr(err.text, "force-without-p2p"), "%s", err.text);
        err = (ErrorMessage) {};
        cr_assert_eq(migration_start(src.m, &a, 1, "localhost:7179", token, &o, &j, &err), -EINVAL);
        cr_assert(strstr(err.text, "does not resolve names"), "%s", err.text);
        err = (ErrorMessage) {};
        cr_assert_eq(migration_start(src.m, &a, 1, "127.0.0.1:7179", "abc", &o, &j, &err), -EINVAL);
        err = (ErrorMessage) {};
        o.precopy = 1;
        cr_assert_eq(migration_start(src.m, &nop2p, 1, "127.0.0.1:7179", token, &o, &j, &err), -EOPNOTSUPP);
        cr_assert(strstr(err.text, "pre-copy"), "%s", err.text);
        o.precopy = -1;
        o.channels = 65;
        err = (ErrorMessage) {};
        cr_assert_eq(migration_start(src.m, &a, 1, "127.0.0.1:7179", token, &o, &j, &err), -EINVAL);
        o.channels = 2;

        /* A destination device is busy while its job holds it. */
        MigrationOptions io;
        migration_options_init(&io);
        err = (ErrorMessage) {};
        cr_assert_eq(migration_prepare_incoming(dst.m, &b, 1, &io, &j, &err), 0, "%s", err.text);
        TransitionReport rep;
        err = (ErrorMessage) {};
        cr_assert_eq(device_set_state(b, VFIO_DEVICE_STATE_RUNNING, -1, &rep, &err), -EBUSY);
        cr_assert(strstr(err.text, "being migrated"), "%s", err.text);
        cr_assert_eq(device_set_blob(b, "x", 1, &err), -EBUSY);
        cr_assert_eq(manager_check_detach(dst.m, b, &err), -EBUSY);
        err = (ErrorMessage) {};
        cr_assert_eq(migration_prepare_incoming(dst.m, &b, 1, &io, &j, &err), -EBUSY);

        cr_assert_eq(a->state, VFIO_DEVICE_STATE_RUNNING, "refusals moved nothing");
        cr_assert_null(a->migration);
        cr_assert_eq(src.m->n_migrations, 0);
}

Test(migration, an_unreachable_peer_fails_the_job_and_the_source_runs_on) {
        const uint32_t flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
        Device *a = attach(&src, "sim:a", 1 << 20, flags, 0);
        static const char token[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        MigrationOptions o;
        ErrorMessage err = {};
        Migration *j = NULL;
        Migration *jobs[2];

        migration_options_init(&o);
        /* Port 1 on loopback: nobody listens, the connection is refused at once. */
        cr_assert_eq(migration_start(src.m, &a, 1, "127.0.0.1:1", token, &o, &j, &err), 0, "%s", err.text);
        jobs[0] = jobs[1] = j;
        run_until(both_finished, jobs, 20000);
        cr_assert_eq(j->phase, MIGRATION_FAILED);
        cr_assert_str_eq(j->error_name, "org.vfiomig1.Error.PeerUnreachable", "%s: %s", j->error_name, j->error);
        cr_assert_eq(a->state, VFIO_DEVICE_STATE_RUNNING);
        cr_assert_null(a->migration);
        cr_assert_eq(src.finished, 1);
}

Test(migration, a_wrong_token_is_rejected) {
        const uint32_t flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P;
        Device *a = attach(&src, "sim:a", 1 << 20, flags, 0), *b = attach(&dst, "sim:a", 1 << 20, flags, 0);
        MigrationOptions o;
        ErrorMessage err = {};
        Migration *in = NULL, *out = NULL;
        Migration *jobs[2];
        char token[2 * STREAM_TOKEN_SIZE + 1];

        migration_options_init(&o);
        cr_assert_eq(migration_prepare_incoming(dst.m, &b, 1, &o, &in, &err), 0, "%s", err.text);
        memcpy(token, in->token_hex, sizeof token);
        token[0] = token[0] == '0' ? '1' : '0';
        cr_assert_eq(migration_start(src.m, &a, 1, first_address(dst.m), token, &o, &out, &err), 0, "%s", err.text);
        jobs[0] = jobs[1] = out;
        run_until(both_finished, jobs, 20000);
        cr_assert_eq(out->phase, MIGRATION_FAILED);
        cr_assert_str_eq(out->error_name, "org.vfiomig1.Error.PeerRejected", "%s: %s", out->error_name, out->error);
        cr_assert_eq(in->phase, MIGRATION_SETUP, "the prepared job is untouched by a stranger");
        cr_assert_eq(a->state, VFIO_DEVICE_STATE_RUNNING);
}

Test(migration, incompatible_devices_are_rejected) {
        const uint32_t flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P;
        Device *a = attach(&src, "sim:a", 1 << 20, flags, 0), *b = attach(&dst, "sim:a", 2 << 20, flags, 0);
        MigrationOptions o;
        ErrorMessage err = {};
        Migration *in = NULL, *out = NULL;
        Migration *jobs[2];

        migration_options_init(&o);
        cr_assert_eq(migration_prepare_incoming(dst.m, &b, 1, &o, &in, &err), 0, "%s", err.text);
        cr_assert_eq(migration_start(src.m, &a, 1, first_address(dst.m), in->token_hex, &o, &out, &err), 0, "%s",
                     err.text);
        jobs[0] = jobs[1] = out;
        run_until(both_finished, jobs, 20000);
        cr_assert_eq(out->phase, MIGRATION_FAILED);
        cr_assert_str_eq(out->error_name, "org.vfiomig1.Error.PeerRejected", "%s: %s", out->error_name, out->error);
        cr_assert(strstr(out->error, "incompatible") || strstr(out->error, "state size"), "%s", out->error);
}

/* A finished job outlives its devices: detaching one must leave the job readable. */
Test(migration, finished_jobs_survive_their_devices) {
        const uint32_t flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P;
        Device *a = attach(&src, "sim:a", 70000, flags, 0), *b = attach(&dst, "sim:a", 70000, flags, 0);
        MigrationOptions oo, io;
        ErrorMessage err = {};
        Migration *jobs[2];

        migration_options_init(&oo);
        migration_options_init(&io);
        migrate(&a, &b, 1, &oo, &io, &jobs[0], &jobs[1]);
        run_until(both_finished, jobs, 30000);
        cr_assert_eq(jobs[1]->phase, MIGRATION_COMPLETED, "%s", jobs[1]->error ?: "");
        cr_assert_eq(device_reset(a, &err), 0, "%s", err.text);
        cr_assert_eq(device_reset(b, &err), 0, "%s", err.text);
        cr_assert_eq(manager_detach(dst.m, b, &err), 0, "%s", err.text);
        cr_assert_null(jobs[1]->devices[0]);
        cr_assert_str_eq(jobs[1]->device_ids[0], "sim_a");
        cr_assert_eq(manager_detach(src.m, a, &err), 0, "%s", err.text);
        cr_assert_null(jobs[0]->devices[0]);
        cr_assert_eq(migration_bytes_transferred(jobs[0]), jobs[1]->stats.bytes);
}

/* A dirtying device behind a bandwidth limit: the link rate must be measured while data waits
 * for the link (the initial pass), not from the trickle of dirty data once it has converged, or
 * the estimate never fits and the job never switches over. */
Test(migration, automatic_switchover_under_a_bandwidth_limit) {
        const uint32_t flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
        Device *s[2], *d[2];
        MigrationOptions oo, io;
        Migration *jobs[2];
        ErrorMessage err = {};
        AttachOptions o;

        for (int i = 0; i < 2; i++) {
                attach_options_init(&o);
                o.sim_options_given = true;
                o.sim.migration_flags = flags;
                o.sim.state_size = i == 0 ? 32 << 20 : 8 << 20;
                o.sim.precopy_size = i == 0 ? 24 << 20 : 8 << 20;
                o.sim.precopy_size_set = true;
                o.sim.dirty_rate = i == 0 ? 2 << 20 : 0;
                cr_assert_eq(manager_attach(src.m, i == 0 ? "sim:gpu" : "sim:nic", &o, &s[i], &err), 0, "%s", err.text);
                o.sim.seed = 7;
                o.sim.seed_set = true;
                cr_assert_eq(manager_attach(dst.m, i == 0 ? "sim:gpu" : "sim:nic", &o, &d[i], &err), 0, "%s", err.text);
        }
        migration_options_init(&oo);
        migration_options_init(&io);
        oo.bandwidth_limit = 32 << 20;
        migrate(s, d, 2, &oo, &io, &jobs[0], &jobs[1]);
        run_until(both_finished, jobs, 20000);
        cr_assert_eq(jobs[0]->phase, MIGRATION_COMPLETED, "%s", jobs[0]->error ?: "");
        cr_assert_gt(jobs[0]->rate_measured, 16 << 20, "measured %" PRIu64 " bytes/s behind a 32 MiB/s limit",
                     jobs[0]->rate_measured);
        cr_assert_leq(jobs[0]->rate_measured, 40 << 20);
        for (int i = 0; i < 2; i++)
                cr_assert_eq(sim_device_state_digest(s[i]->dev), sim_device_state_digest(d[i]->dev));
}

/* Both jobs say the destination holds the state; Resolve is only for an indeterminate job; the
 * timeouts have ranges (a prepared job cannot wait forever). */
Test(migration, committed_resolve_and_timeout_ranges) {
        const uint32_t flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P;
        Device *a = attach(&src, "sim:c", 1 << 20, flags, 0), *b = attach(&dst, "sim:c", 1 << 20, flags, 0);
        MigrationOptions oo, io;
        Migration *jobs[2], *j = NULL;
        ErrorMessage err = {};
        static const char token[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

        migration_options_init(&oo);
        migration_options_init(&io);
        cr_assert_eq(io.setup_timeout_ms, 600000, "ten minutes by default");

        oo.stall_timeout_ms = 999;
        cr_assert_eq(migration_start(src.m, &a, 1, "127.0.0.1:7179", token, &oo, &j, &err), -EINVAL);
        cr_assert(strstr(err.text, "stall timeout"), "%s", err.text);
        oo.stall_timeout_ms = 0;
        io.setup_timeout_ms = 0;
        err = (ErrorMessage) {};
        cr_assert_eq(migration_prepare_incoming(dst.m, &b, 1, &io, &j, &err), -EINVAL);
        cr_assert(strstr(err.text, "cannot wait forever"), "%s", err.text);
        io.setup_timeout_ms = UINT64_C(25) * 3600 * 1000;
        err = (ErrorMessage) {};
        cr_assert_eq(migration_prepare_incoming(dst.m, &b, 1, &io, &j, &err), -EINVAL);
        io.setup_timeout_ms = 600000;
        io.budget = migration_budget_total_max() + 1;
        err = (ErrorMessage) {};
        cr_assert_lt(migration_prepare_incoming(dst.m, &b, 1, &io, &j, &err), 0, "more than a quarter of the memory");
        io.budget = 0;
        cr_assert_eq(a->state, VFIO_DEVICE_STATE_RUNNING);
        cr_assert_eq(b->state, VFIO_DEVICE_STATE_RUNNING);

        oo.stall_timeout_ms = 5000;
        migrate(&a, &b, 1, &oo, &io, &jobs[0], &jobs[1]);
        cr_assert(!jobs[0]->committed && !jobs[1]->committed);
        run_until(both_finished, jobs, 30000);
        cr_assert_eq(jobs[0]->phase, MIGRATION_COMPLETED, "%s", jobs[0]->error ?: "");
        cr_assert(jobs[0]->committed, "the source saw a COMPLETE that proved the commit");
        cr_assert(jobs[1]->committed);

        err = (ErrorMessage) {};
        cr_assert_eq(migration_resolve(jobs[0], "maybe", &err), -EINVAL);
        err = (ErrorMessage) {};
        cr_assert_eq(migration_resolve(jobs[0], "not-committed", &err), -EBUSY, "a completed job is not resolved");
        cr_assert(strstr(err.text, "only an indeterminate outgoing job"), "%s", err.text);
        cr_assert_eq(migration_resolve(jobs[1], "committed", &err), -EBUSY);
        cr_assert_eq(jobs[0]->phase, MIGRATION_COMPLETED);
        cr_assert_eq(a->state, VFIO_DEVICE_STATE_STOP);
}
