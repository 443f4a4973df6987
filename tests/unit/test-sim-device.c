/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The simulated device behaves as the uAPI and the mtty driver do (vfio-uapi.md, mtty-harness.md). */

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mig-state.h"
#include "sim-device.h"
#include "sim-stream.h"

#define ERR VFIO_DEVICE_STATE_ERROR
#define STOP VFIO_DEVICE_STATE_STOP
#define RUN VFIO_DEVICE_STATE_RUNNING
#define SC VFIO_DEVICE_STATE_STOP_COPY
#define RES VFIO_DEVICE_STATE_RESUMING
#define RP2P VFIO_DEVICE_STATE_RUNNING_P2P
#define PC VFIO_DEVICE_STATE_PRE_COPY
#define PCP2P VFIO_DEVICE_STATE_PRE_COPY_P2P

#define ALL_FLAGS (VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY)

static const uint32_t flag_sets[] = {
        VFIO_MIGRATION_STOP_COPY,
        VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P,
        VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY,
        ALL_FLAGS,
};

/* A clock the test moves by hand, so dirtying is exact. */
static uint64_t fake_now;
static uint64_t fake_clock(void *userdata) {
        return fake_now;
}

static SimConfig config(uint32_t flags, uint64_t state_size, uint64_t precopy_size) {
        SimConfig c;
        sim_config_init(&c);
        c.migration_flags = flags;
        c.state_size = state_size;
        c.precopy_size = precopy_size;
        c.precopy_size_set = true;
        c.clock = fake_clock;
        return c;
}

static VfioDev *new_dev(const char *name, const SimConfig *c) {
        VfioDev *d = NULL;
        ErrorMessage err = {};
        int r = sim_device_new(name, c, &d, &err);
        cr_assert_eq(r, 0, "sim_device_new: %s", err.text);
        return d;
}

static MigState state_of(VfioDev *d) {
        MigState s;
        cr_assert_eq(vfio_dev_get_state(d, &s), 0);
        return s;
}

/* Reads until the device says "nothing now" or "end"; returns the bytes, sets *ret_last. */
static uint8_t *read_all(VfioDev *d, int fd, size_t *ret_size, ssize_t *ret_last, size_t chunk) {
        uint8_t *buf = NULL;
        size_t size = 0;
        ssize_t n;

        for (;;) {
                buf = realloc(buf, size + chunk);
                cr_assert_not_null(buf);
                n = vfio_dev_data_read(d, fd, buf + size, chunk);
                if (n <= 0)
                        break;
                size += (size_t) n;
        }
        *ret_size = size;
        *ret_last = n;
        return buf;
}

static void write_all(VfioDev *d, int fd, const uint8_t *buf, size_t size, size_t chunk) {
        for (size_t off = 0; off < size; off += chunk) {
                size_t k = size - off < chunk ? size - off : chunk;
                cr_assert_eq(vfio_dev_data_write(d, fd, buf + off, k), (ssize_t) k);
        }
}

/* A complete stop-copy stream of a fresh source configured like c. */
static uint8_t *source_stream(const SimConfig *c, size_t *ret_size) {
        VfioDev *src = new_dev("source", c);
        int fd = -1;
        ssize_t last;
        uint8_t *buf;

        cr_assert_eq(vfio_dev_set_state(src, SC, &fd), 0);
        cr_assert_geq(fd, 0);
        buf = read_all(src, fd, ret_size, &last, 100000);
        cr_assert_eq(last, 0);
        close(fd);
        vfio_dev_free(src);
        return buf;
}

/* Puts d into state s from RUNNING (RESUMING is entered with an empty stream). */
static int enter(VfioDev *d, MigState s, int *fd) {
        cr_assert_eq(vfio_dev_reset(d), 0);
        cr_assert_eq(state_of(d), RUN);
        *fd = -1;
        return vfio_dev_set_state(d, s, fd);
}

Test(sim_device, every_pair_under_every_flag_set) {
        unsigned pairs = 0;

        for (size_t i = 0; i < sizeof flag_sets / sizeof flag_sets[0]; i++) {
                uint32_t f = flag_sets[i];
                SimConfig c = config(f, 3 * SIM_BLOCK_SIZE, SIM_BLOCK_SIZE);
                size_t stream_size;
                uint8_t *stream = source_stream(&c, &stream_size);
                VfioDev *d = new_dev("dut", &c);

                for (int cur = 1; cur < 8; cur++) {
                        if (!mig_state_supported(f, cur))
                                continue;
                        for (int target = 0; target < 8; target++) {
                                MigState path[MIG_PATH_MAX];
                                int setup_fd = -1, fd = -1;
                                bool valid = mig_path(f, cur, target, path) >= 0;
                                int n = valid ? mig_path(f, cur, target, path) : 0;

                                pairs++;
                                cr_assert_eq(enter(d, cur, &setup_fd), 0);
                                if (cur == RES && target != RES)
                                        write_all(d, setup_fd, stream, stream_size, 65536);

                                int r = vfio_dev_set_state(d, target, &fd);
                                if (!valid) {
                                        cr_assert_eq(r, -EINVAL, "flags %u %s→%s: %d", f, mig_state_to_string(cur),
                                                     mig_state_to_string(target), r);
                                        cr_assert_eq((int) state_of(d), cur, "a refused SET must not move the device");
                                        cr_assert_eq(fd, -1, "output written on failure");
                                } else {
                                        cr_assert_eq(r, 0, "flags %u %s→%s: %d", f, mig_state_to_string(cur),
                                                     mig_state_to_string(target), r);
                                        cr_assert_eq((int) state_of(d), target);
                                        bool opens = n > 0 && mig_arc_opens_session(n > 1 ? path[n - 2] : (MigState) cur, path[n - 1]);
                                        cr_assert_eq(fd >= 0, opens, "flags %u %s→%s: data fd %d", f,
                                                     mig_state_to_string(cur), mig_state_to_string(target), fd);
                                }
                                if (fd >= 0)
                                        close(fd);
                                if (setup_fd >= 0)
                                        close(setup_fd);
                        }
                }
                vfio_dev_free(d);
                free(stream);
        }
        cr_assert_gt(pairs, 100);
}

Test(sim_device, precopy_then_stop_copy_on_the_same_fd) {
        SimConfig c = config(ALL_FLAGS, 4 * SIM_BLOCK_SIZE, 2 * SIM_BLOCK_SIZE);
        VfioDev *d = new_dev("a", &c);
        uint64_t initial, dirty, stop_copy;
        int fd = -1, fd2 = 12345;
        uint8_t buf[1000];
        ssize_t n;

        cr_assert_eq(vfio_dev_set_state(d, PC, &fd), 0);
        cr_assert_geq(fd, 0);
        cr_assert_eq(vfio_dev_precopy_info(d, fd, &initial, &dirty), 0);
        cr_assert_eq(initial, SIM_HEADER_SIZE + 2 * (SIM_RECORD_HEADER_SIZE + SIM_BLOCK_SIZE));
        cr_assert_eq(dirty, 0);

        /* initial_bytes shrinks exactly as it is read */
        n = vfio_dev_data_read(d, fd, buf, sizeof buf);
        cr_assert_eq(n, (ssize_t) sizeof buf);
        uint64_t initial2;
        cr_assert_eq(vfio_dev_precopy_info(d, fd, &initial2, &dirty), 0);
        cr_assert_eq(initial2, initial - sizeof buf);

        /* MIG_DATA_SIZE in PRE_COPY is exactly what stop-copy will still produce (the clock stands still). */
        cr_assert_eq(vfio_dev_stop_copy_size(d, &stop_copy), 0);

        cr_assert_eq(vfio_dev_set_state(d, SC, &fd2), 0);
        cr_assert_eq(fd2, -EBADF, "PRE_COPY→STOP_COPY continues on the same fd");
        cr_assert_eq(vfio_dev_precopy_info(d, fd, &initial, &dirty), -EINVAL, "precopy info only in PRE_COPY");

        size_t rest;
        ssize_t last;
        uint8_t *tail = read_all(d, fd, &rest, &last, 7777);
        cr_assert_eq(last, 0);
        cr_assert_eq(rest, stop_copy);
        cr_assert_eq(vfio_dev_data_read(d, fd, buf, sizeof buf), 0, "the end of stop-copy is permanent");
        free(tail);

        cr_assert_eq(vfio_dev_set_state(d, STOP, &fd2), 0);
        cr_assert_eq(vfio_dev_data_read(d, fd, buf, sizeof buf), -ENODEV, "leaving STOP_COPY ends the session");
        struct pollfd p = { .fd = fd, .events = POLLIN };
        cr_assert_eq(poll(&p, 1, 0), 1);
        cr_assert(p.revents & POLLHUP, "the old fd reports the end of its session");
        close(fd);
        vfio_dev_free(d);
}

Test(sim_device, temporary_end_of_precopy_enomsg_or_mtty_zero) {
        for (int quirks = 0; quirks < 2; quirks++) {
                SimConfig c = config(ALL_FLAGS, 2 * SIM_BLOCK_SIZE, SIM_BLOCK_SIZE);
                c.mtty_quirks = quirks;
                VfioDev *d = new_dev("q", &c);
                uint64_t initial, dirty;
                size_t size;
                ssize_t last;
                int fd = -1;

                cr_assert_eq(vfio_dev_set_state(d, PCP2P, &fd), 0);
                free(read_all(d, fd, &size, &last, 4096));
                cr_assert_eq(size, SIM_HEADER_SIZE + SIM_RECORD_HEADER_SIZE + SIM_BLOCK_SIZE);
                cr_assert_eq(last, quirks ? 0 : -ENOMSG);
                cr_assert_eq(vfio_dev_precopy_info(d, fd, &initial, &dirty), 0);
                cr_assert_eq(initial, 0);
                cr_assert_eq(dirty, 0);
                close(fd);
                vfio_dev_free(d);
        }
}

Test(sim_device, dirty_bytes_grow_while_running_and_drain_when_read) {
        SimConfig c = config(ALL_FLAGS, 16 * SIM_BLOCK_SIZE, 16 * SIM_BLOCK_SIZE);
        c.dirty_rate = SIM_BLOCK_SIZE * 1000; /* one block per millisecond */
        fake_now = 1000000;
        VfioDev *d = new_dev("dirty", &c);
        uint64_t initial, dirty;
        size_t size;
        ssize_t last;
        int fd = -1;

        cr_assert_eq(vfio_dev_set_state(d, PC, &fd), 0);
        free(read_all(d, fd, &size, &last, 1 << 20));
        cr_assert_eq(last, -ENOMSG);
        cr_assert_eq(vfio_dev_precopy_info(d, fd, &initial, &dirty), 0);
        cr_assert_eq(initial, 0);
        cr_assert_eq(dirty, 0);

        fake_now += 3000; /* three rewrites; distinct blocks or not, at least one is dirty */
        cr_assert_eq(vfio_dev_precopy_info(d, fd, &initial, &dirty), 0);
        cr_assert_eq(initial, 0);
        cr_assert_gt(dirty, 0);
        cr_assert_leq(dirty, 3 * (SIM_RECORD_HEADER_SIZE + SIM_BLOCK_SIZE));
        cr_assert_eq(dirty % (SIM_RECORD_HEADER_SIZE + SIM_BLOCK_SIZE), 0);

        free(read_all(d, fd, &size, &last, 1 << 20));
        cr_assert_eq(size, dirty);
        cr_assert_eq(vfio_dev_precopy_info(d, fd, &initial, &dirty), 0);
        cr_assert_eq(dirty, 0);

        /* A stopped device no longer dirties anything. */
        int fd2;
        cr_assert_eq(vfio_dev_set_state(d, SC, &fd2), 0);
        fake_now += 1000000;
        uint64_t before, after;
        cr_assert_eq(vfio_dev_stop_copy_size(d, &before), 0);
        fake_now += 1000000;
        cr_assert_eq(vfio_dev_stop_copy_size(d, &after), 0);
        cr_assert_eq(before, after);
        cr_assert_eq(before, SIM_END_RECORD_SIZE, "everything was sent in pre-copy; only the end remains");
        close(fd);
        vfio_dev_free(d);
}

Test(sim_device, stop_copy_size_is_exact_without_session) {
        SimConfig c = config(VFIO_MIGRATION_STOP_COPY, 5 * SIM_BLOCK_SIZE + 12345, 0);
        VfioDev *d = new_dev("s", &c);
        uint64_t expected;
        size_t size;
        ssize_t last;
        int fd;

        cr_assert_eq(vfio_dev_stop_copy_size(d, &expected), 0);
        cr_assert_eq(vfio_dev_set_state(d, SC, &fd), 0);
        free(read_all(d, fd, &size, &last, 3000));
        cr_assert_eq(size, expected);
        cr_assert_eq(size, SIM_HEADER_SIZE + 6 * SIM_RECORD_HEADER_SIZE + 5 * SIM_BLOCK_SIZE + 12345 +
                                   SIM_END_RECORD_SIZE);
        close(fd);
        vfio_dev_free(d);
}

Test(sim_device, content_is_deterministic_from_the_seed) {
        SimConfig c = config(ALL_FLAGS, 3 * SIM_BLOCK_SIZE, 0);
        size_t n1, n2, n3;
        c.seed = 99;
        c.seed_set = true;
        uint8_t *a = source_stream(&c, &n1);
        uint8_t *b = source_stream(&c, &n2);
        c.seed = 100;
        uint8_t *other = source_stream(&c, &n3);

        cr_assert_eq(n1, n2);
        cr_assert_arr_eq(a, b, n1);
        cr_assert_eq(n1, n3);
        cr_assert(memcmp(a, other, n1) != 0);
        free(a);
        free(b);
        free(other);
}

Test(sim_device, migration_with_precopy_and_dirtying_carries_the_state) {
        SimConfig c = config(ALL_FLAGS, 8 * SIM_BLOCK_SIZE + 100, 4 * SIM_BLOCK_SIZE);
        c.dirty_rate = SIM_BLOCK_SIZE * 1000;
        fake_now = 5000000;
        VfioDev *src = new_dev("src", &c), *dst = new_dev("dst", &c);
        int sfd = -1, dfd = -1, none;
        uint8_t buf[10000];
        ssize_t n;

        cr_assert_neq(sim_device_state_digest(src), sim_device_state_digest(dst), "names give different seeds");
        cr_assert_eq(vfio_dev_set_state(dst, RES, &dfd), 0);
        cr_assert_eq(vfio_dev_set_state(src, PC, &sfd), 0);

        /* pre-copy rounds while the device keeps rewriting blocks */
        for (int round = 0; round < 20; round++) {
                while ((n = vfio_dev_data_read(src, sfd, buf, sizeof buf)) > 0)
                        cr_assert_eq(vfio_dev_data_write(dst, dfd, buf, (size_t) n), n);
                cr_assert_eq(n, -ENOMSG);
                fake_now += 2000;
        }
        cr_assert_eq(vfio_dev_set_state(src, SC, &none), 0);
        while ((n = vfio_dev_data_read(src, sfd, buf, sizeof buf)) > 0)
                cr_assert_eq(vfio_dev_data_write(dst, dfd, buf, (size_t) n), n);
        cr_assert_eq(n, 0);

        cr_assert_eq(vfio_dev_set_state(dst, RUN, &none), 0, "RESUMING→STOP→RUNNING_P2P→RUNNING commits");
        cr_assert_eq(sim_device_state_digest(dst), sim_device_state_digest(src));
        cr_assert_eq(vfio_dev_data_write(dst, dfd, buf, 1), -ENODEV, "the load session ended at RESUMING→STOP");
        close(sfd);
        close(dfd);
        vfio_dev_free(src);
        vfio_dev_free(dst);
}

/* PRECOPY_INFOv2: after reinit bytes of pre-copy the device reconfigures; the next precopy info
 * says VFIO_PRECOPY_INFO_REINIT once, initial bytes start over (every pre-copy block again),
 * dirty bytes are reset, and the destination still ends with the source's state. */
Test(sim_device, reinit_reopens_initial_data_with_precopy_info_v2) {
        const uint64_t record = SIM_RECORD_HEADER_SIZE + SIM_BLOCK_SIZE;
        SimConfig c = config(ALL_FLAGS, 8 * SIM_BLOCK_SIZE, 4 * SIM_BLOCK_SIZE);
        c.reinit_after = SIM_HEADER_SIZE + 4 * record; /* once the first round is read */
        fake_now = 7000000;
        VfioDev *src = new_dev("src", &c), *dst = new_dev("dst", &c);
        uint64_t initial, dirty, digest_before;
        uint32_t flags = 12345;
        int sfd = -1, dfd = -1, none;
        uint8_t buf[10000];
        size_t total = 0;
        ssize_t n;

        cr_assert_eq(src->precopy_info_version, VFIO_PRECOPY_INFO_V2, "the sim accepts the v2 opt-in by default");
        cr_assert_eq(sim_device_reconfigure(src), -EBUSY, "only in a pre-copy session");
        cr_assert_eq(vfio_dev_set_state(dst, RES, &dfd), 0);
        cr_assert_eq(vfio_dev_set_state(src, PC, &sfd), 0);
        cr_assert_eq(vfio_dev_precopy_info_flags(src, sfd, &initial, &dirty, &flags), 0);
        cr_assert_eq(flags, 0);
        cr_assert_eq(initial, SIM_HEADER_SIZE + 4 * record);

        digest_before = sim_device_state_digest(src);
        while ((n = vfio_dev_data_read(src, sfd, buf, sizeof buf)) > 0) {
                cr_assert_eq(vfio_dev_data_write(dst, dfd, buf, (size_t) n), n);
                total += (size_t) n;
                if (total >= c.reinit_after)
                        break;
        }
        cr_assert_eq(total, c.reinit_after, "the reads stop at the end of the initial data");
        cr_assert_eq(vfio_dev_data_read(src, sfd, buf, sizeof buf), -ENOMSG,
                     "until the driver asks for precopy info, reads go on with what was there");
        cr_assert_eq(sim_device_state_digest(src), digest_before);
        cr_assert_eq(sim_device_reconfigure(src), -EBUSY, "already reconfigured");

        cr_assert_eq(vfio_dev_precopy_info_flags(src, sfd, &initial, &dirty, &flags), 0);
        cr_assert_neq(sim_device_state_digest(src), digest_before, "the reconfiguration rewrote the pre-copy blocks");
        cr_assert_eq(flags, VFIO_PRECOPY_INFO_REINIT);
        cr_assert_eq(initial, 4 * record, "every pre-copy block is initial data again");
        cr_assert_eq(dirty, 0, "dirty bytes start over");
        cr_assert_eq(vfio_dev_precopy_info_flags(src, sfd, &initial, &dirty, &flags), 0);
        cr_assert_eq(flags, 0, "REINIT is reported once");
        cr_assert_eq(initial, 4 * record);

        while ((n = vfio_dev_data_read(src, sfd, buf, sizeof buf)) > 0) {
                cr_assert_eq(vfio_dev_data_write(dst, dfd, buf, (size_t) n), n);
                total += (size_t) n;
        }
        cr_assert_eq(n, -ENOMSG);
        cr_assert_eq(total, c.reinit_after + 4 * record, "the second round is exactly the new initial data");
        cr_assert_eq(vfio_dev_precopy_info_flags(src, sfd, &initial, &dirty, &flags), 0);
        cr_assert_eq(initial, 0);
        cr_assert_eq(flags, 0, "once per session");
        cr_assert_eq(sim_device_reconfigure(src), -EBUSY, "once per session");

        cr_assert_eq(vfio_dev_set_state(src, SC, &none), 0);
        while ((n = vfio_dev_data_read(src, sfd, buf, sizeof buf)) > 0)
                cr_assert_eq(vfio_dev_data_write(dst, dfd, buf, (size_t) n), n);
        cr_assert_eq(n, 0);
        cr_assert_eq(vfio_dev_set_state(dst, RUN, &none), 0);
        cr_assert_eq(sim_device_state_digest(dst), sim_device_state_digest(src));
        close(sfd);
        close(dfd);
        vfio_dev_free(src);
        vfio_dev_free(dst);
}

/* A driver that refuses PRECOPY_INFOv2 (precopy-v2=no, like mtty before 7.2) keeps v1: flags are
 * never reported, the reconfigured blocks are dirty data and initial bytes never grow again. */
Test(sim_device, reinit_without_v2_is_dirty_data) {
        const uint64_t record = SIM_RECORD_HEADER_SIZE + SIM_BLOCK_SIZE;
        SimConfig c = config(ALL_FLAGS, 4 * SIM_BLOCK_SIZE, 2 * SIM_BLOCK_SIZE);
        c.reinit_after = SIM_HEADER_SIZE + 2 * record;
        c.refuse_precopy_v2 = true;
        fake_now = 7000000;
        VfioDev *src = new_dev("src", &c), *dst = new_dev("dst", &c);
        uint64_t initial, dirty;
        uint32_t flags = 0;
        int sfd = -1, dfd = -1, none;
        uint8_t buf[10000];
        ssize_t n;

        cr_assert_eq(src->precopy_info_version, VFIO_PRECOPY_INFO_V1);
        cr_assert_eq(vfio_dev_set_state(dst, RES, &dfd), 0);
        cr_assert_eq(vfio_dev_set_state(src, PC, &sfd), 0);
        for (size_t total = 0; total < c.reinit_after; total += (size_t) n) {
                n = vfio_dev_data_read(src, sfd, buf, MIN(sizeof buf, c.reinit_after - total));
                cr_assert_gt(n, 0);
                cr_assert_eq(vfio_dev_data_write(dst, dfd, buf, (size_t) n), n);
        }
        cr_assert_eq(vfio_dev_precopy_info_flags(src, sfd, &initial, &dirty, &flags), 0);
        cr_assert_eq(flags, 0);
        cr_assert_eq(initial, 0, "v1: initial bytes only shrink");
        cr_assert_eq(dirty, 2 * record, "v1: the reconfigured blocks are dirty");
        while ((n = vfio_dev_data_read(src, sfd, buf, sizeof buf)) > 0)
                cr_assert_eq(vfio_dev_data_write(dst, dfd, buf, (size_t) n), n);
        cr_assert_eq(n, -ENOMSG);
        cr_assert_eq(vfio_dev_set_state(src, SC, &none), 0);
        while ((n = vfio_dev_data_read(src, sfd, buf, sizeof buf)) > 0)
                cr_assert_eq(vfio_dev_data_write(dst, dfd, buf, (size_t) n), n);
        cr_assert_eq(vfio_dev_set_state(dst, RUN, &none), 0);
        cr_assert_eq(sim_device_state_digest(dst), sim_device_state_digest(src));
        close(sfd);
        close(dfd);
        vfio_dev_free(src);
        vfio_dev_free(dst);

        /* without PRE_COPY there is no precopy info at all */
        SimConfig c2 = config(VFIO_MIGRATION_STOP_COPY, SIM_BLOCK_SIZE, 0);
        VfioDev *plain = new_dev("plain", &c2);
        cr_assert_eq(plain->precopy_info_version, VFIO_PRECOPY_INFO_NONE);
        vfio_dev_free(plain);
}

Test(sim_device, truncated_stream_keeps_resuming_until_completed) {
        SimConfig c = config(ALL_FLAGS, 2 * SIM_BLOCK_SIZE, 0);
        size_t size;
        uint8_t *stream = source_stream(&c, &size);
        VfioDev *dst = new_dev("dst", &c);
        int fd = -1, none = -1;

        cr_assert_eq(vfio_dev_set_state(dst, RES, &fd), 0);
        write_all(dst, fd, stream, size - 10, 4096);
        cr_assert_eq(vfio_dev_set_state(dst, STOP, &none), -EINVAL);
        cr_assert_eq(state_of(dst), RES, "mtty stays in RESUMING, not ERROR");
        cr_assert_eq(vfio_dev_set_state(dst, RUN, &none), -EINVAL);
        cr_assert_eq(state_of(dst), RES);
        write_all(dst, fd, stream + size - 10, 10, 10);
        cr_assert_eq(vfio_dev_set_state(dst, STOP, &none), 0, "the rest arrives and the commit succeeds");
        close(fd);
        free(stream);
        vfio_dev_free(dst);
}

Test(sim_device, corrupted_stream_is_refused_and_reset_ends_the_session) {
        SimConfig c = config(ALL_FLAGS, 2 * SIM_BLOCK_SIZE, 0);
        size_t size;
        uint8_t *stream = source_stream(&c, &size);
        VfioDev *dst = new_dev("dst", &c);
        int fd = -1, none = -1;

        stream[size / 2] ^= 0x10;
        cr_assert_eq(vfio_dev_set_state(dst, RES, &fd), 0);
        cr_assert_eq(vfio_dev_data_write(dst, fd, stream, size), -EINVAL);
        cr_assert_eq(vfio_dev_data_write(dst, fd, stream, 1), -EINVAL, "a refused stream stays refused");
        cr_assert_eq(vfio_dev_set_state(dst, STOP, &none), -EINVAL, "never loads what it refused (unlike mtty)");
        cr_assert_eq(state_of(dst), RES);
        cr_assert_eq(vfio_dev_reset(dst), 0);
        cr_assert_eq(state_of(dst), RUN);
        cr_assert_eq(vfio_dev_data_write(dst, fd, stream, 1), -ENODEV, "reset ends the session");
        close(fd);
        free(stream);
        vfio_dev_free(dst);
}

Test(sim_device, fds_are_one_way_and_stale_fds_fail) {
        SimConfig c = config(ALL_FLAGS, SIM_BLOCK_SIZE, 0);
        VfioDev *d = new_dev("d", &c);
        int fd = -1, none;
        uint8_t b[8] = {};

        cr_assert_eq(vfio_dev_set_state(d, SC, &fd), 0);
        cr_assert_eq(vfio_dev_data_write(d, fd, b, sizeof b), -EBADF);
        cr_assert_eq(vfio_dev_data_read(d, STDIN_FILENO, b, sizeof b), -ENODEV);
        cr_assert_eq(vfio_dev_set_state(d, STOP, &none), 0);
        close(fd);
        cr_assert_eq(vfio_dev_set_state(d, RES, &fd), 0);
        cr_assert_eq(vfio_dev_data_read(d, fd, b, sizeof b), -EBADF);
        cr_assert_eq(vfio_dev_reset(d), 0);
        cr_assert_eq(vfio_dev_data_read(d, fd, b, sizeof b), -ENODEV);
        close(fd);
        vfio_dev_free(d);
}

Test(sim_device, error_is_left_only_by_reset) {
        SimConfig c = config(ALL_FLAGS, SIM_BLOCK_SIZE, 0);
        c.fail_to_error = SIM_ARC_BIT(STOP, SC);
        VfioDev *d = new_dev("e", &c);
        int fd = -1;

        cr_assert_eq(vfio_dev_set_state(d, SC, &fd), -EIO);
        cr_assert_eq(fd, -1);
        cr_assert_eq(state_of(d), ERR);
        /* Drivers loop "while (state != target)", so SET(ERROR) in ERROR is a no-op success. */
        for (int t = 1; t < 8; t++)
                cr_assert_eq(vfio_dev_set_state(d, t, &fd), -EINVAL);
        cr_assert_eq(state_of(d), ERR);
        cr_assert_eq(vfio_dev_reset(d), 0);
        cr_assert_eq(state_of(d), RUN);
        vfio_dev_free(d);
}

Test(sim_device, failure_in_place_stops_mid_path) {
        SimConfig c = config(ALL_FLAGS, SIM_BLOCK_SIZE, 0);
        c.fail_in_place = SIM_ARC_BIT(STOP, SC);
        VfioDev *d = new_dev("p", &c);
        int fd = -1;

        cr_assert_eq(vfio_dev_set_state(d, SC, &fd), -EIO);
        cr_assert_eq(state_of(d), STOP, "RUNNING→RUNNING_P2P→STOP ran, STOP→STOP_COPY failed");
        vfio_dev_free(d);
}

static uint64_t now_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

Test(sim_device, arcs_take_their_latency) {
        SimConfig c = config(ALL_FLAGS, SIM_BLOCK_SIZE, 0);
        c.arc_latency_usec = 50000;
        c.latency_arcs = SIM_ARC_BIT(RP2P, STOP);
        VfioDev *d = new_dev("slow", &c);
        uint64_t start;
        int fd = -1;

        /* RUNNING→RUNNING_P2P→STOP: only the second arc is slow, and it is at least that slow. */
        start = now_usec();
        cr_assert_eq(vfio_dev_set_state(d, STOP, &fd), 0);
        cr_assert_geq(now_usec() - start, c.arc_latency_usec);
        cr_assert_eq(state_of(d), STOP);
        vfio_dev_free(d);

        /* Without a list every arc is: RUNNING→RUNNING_P2P→STOP→STOP_COPY takes three. */
        c.latency_arcs = 0;
        d = new_dev("slower", &c);
        start = now_usec();
        cr_assert_eq(vfio_dev_set_state(d, SC, &fd), 0);
        cr_assert_geq(now_usec() - start, 3 * c.arc_latency_usec);
        cr_assert_geq(fd, 0);
        close(fd);
        vfio_dev_free(d);
}

Test(sim_device, config_and_names_are_validated) {
        SimConfig c;
        ErrorMessage err = {};
        VfioDev *d = NULL;
        uint64_t bit;

        sim_config_init(&c);
        cr_assert_eq(sim_config_validate(&c, NULL), 0);
        c.state_size = 4096;
        cr_assert_eq(sim_config_validate(&c, NULL), 0, "the default pre-copy size shrinks to a small state");
        c.precopy_size = c.state_size + 1;
        c.precopy_size_set = true;
        cr_assert_eq(sim_config_validate(&c, &err), -EINVAL);
        cr_assert(strstr(err.text, "precopy-size"));
        sim_config_init(&c);
        c.state_size = 0;
        cr_assert_eq(sim_config_validate(&c, NULL), -EINVAL);
        sim_config_init(&c);
        c.migration_flags = VFIO_MIGRATION_P2P;
        cr_assert_eq(sim_config_validate(&c, NULL), -EINVAL);
        sim_config_init(&c);
        c.fail_to_error = c.fail_in_place = SIM_ARC_BIT(RUN, STOP);
        cr_assert_eq(sim_config_validate(&c, NULL), -EINVAL);
        sim_config_init(&c);
        c.arc_latency_usec = SIM_ARC_LATENCY_MAX_USEC + 1;
        ErrorMessage too_slow = {};
        cr_assert_eq(sim_config_validate(&c, &too_slow), -EINVAL);
        cr_assert(strstr(too_slow.text, "arc-latency-usec"), "%s", too_slow.text);
        sim_config_init(&c);
        c.latency_arcs = SIM_ARC_BIT(RUN, STOP);
        ErrorMessage no_latency = {};
        cr_assert_eq(sim_config_validate(&c, &no_latency), -EINVAL);
        cr_assert(strstr(no_latency.text, "latency-arcs needs arc-latency-usec"), "%s", no_latency.text);

        sim_config_init(&c);
        cr_assert_eq(sim_device_new("bad name", &c, &d, NULL), -EINVAL);
        cr_assert_eq(sim_device_new("", &c, &d, NULL), -EINVAL);
        cr_assert_null(d);
        cr_assert(sim_name_valid("gpu0_A"));
        cr_assert(!sim_name_valid("a/b"));
        cr_assert(!sim_name_valid("gpu-0"));

        cr_assert_eq(sim_arc_from_string("stop>stop-copy", &bit), 0);
        cr_assert_eq(bit, SIM_ARC_BIT(STOP, SC));
        cr_assert_eq(sim_arc_from_string("stop-stop-copy", &bit), -EINVAL);
        cr_assert_eq(sim_arc_from_string("stop>stop", &bit), -EINVAL);
        cr_assert_eq(sim_arc_from_string("stop>bogus", &bit), -EINVAL);
}

Test(sim_device, attributes) {
        SimConfig c = config(VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P, SIM_BLOCK_SIZE, 0);
        VfioDev *d = new_dev("nic0", &c);

        cr_assert(vfio_dev_is_sim(d));
        cr_assert_eq(d->backend, VFIO_BACKEND_SIM);
        cr_assert_str_eq(d->address, "sim:nic0");
        cr_assert_str_eq(d->name, "nic0");
        cr_assert_str_eq(d->driver, "sim");
        cr_assert(d->migratable);
        cr_assert_eq(d->migration_flags, VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P);
        cr_assert_eq(state_of(d), RUN);
        cr_assert_eq(sim_device_dirty_blocks(d, 2), 0);
        int fd;
        cr_assert_eq(vfio_dev_set_state(d, STOP, &fd), 0);
        cr_assert_eq(sim_device_dirty_blocks(d, 2), -EBUSY, "a stopped device changes nothing");
        vfio_dev_free(d);
}
