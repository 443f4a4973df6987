/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Saving a stopped device's state into a file descriptor and loading it back. */

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sim-device.h"
#include "sim-stream.h"
#include "state-transfer.h"

static VfioDev *sim(const char *name, uint64_t size) {
        SimConfig c;
        VfioDev *d = NULL;
        int fd;

        sim_config_init(&c);
        c.state_size = size;
        cr_assert_eq(sim_device_new(name, &c, &d, NULL), 0);
        cr_assert_eq(vfio_dev_set_state(d, VFIO_DEVICE_STATE_STOP, &fd), 0);
        return d;
}

static MigState state_of(VfioDev *d) {
        MigState s;
        cr_assert_eq(vfio_dev_get_state(d, &s), 0);
        return s;
}

static int transfer(StateTransferKind kind, VfioDev *d, int fd, StateTransfer *t) {
        *t = (StateTransfer) { .kind = kind, .dev = d, .client_fd = fcntl(fd, F_DUPFD_CLOEXEC, 3) };
        return state_transfer_run(t);
}

static int saved_state(VfioDev *src, uint64_t *ret_size) {
        int fd = memfd_create("state", MFD_CLOEXEC);
        StateTransfer t;

        cr_assert_eq(transfer(STATE_TRANSFER_SAVE, src, fd, &t), 0, "%s", t.message.text);
        cr_assert_eq(t.final_state, VFIO_DEVICE_STATE_STOP);
        cr_assert_eq(lseek(fd, 0, SEEK_SET), 0);
        *ret_size = t.bytes;
        return fd;
}

Test(state_transfer, save_then_load_carries_the_state) {
        VfioDev *a = sim("a", 3 * SIM_BLOCK_SIZE + 77), *b = sim("b", 3 * SIM_BLOCK_SIZE + 77);
        uint64_t size, expected;
        StateTransfer t;
        int fd;

        cr_assert_eq(vfio_dev_set_state(a, VFIO_DEVICE_STATE_RUNNING, &fd), 0);
        cr_assert_eq(sim_device_dirty_blocks(a, 5), 0);
        cr_assert_eq(vfio_dev_set_state(a, VFIO_DEVICE_STATE_STOP, &fd), 0);
        cr_assert_eq(vfio_dev_stop_copy_size(a, &expected), 0);
        fd = saved_state(a, &size);
        cr_assert_eq(size, expected, "exactly MIG_DATA_SIZE bytes");
        cr_assert_eq(state_of(a), VFIO_DEVICE_STATE_STOP, "the source is stopped again, its session closed");

        cr_assert_neq(sim_device_state_digest(a), sim_device_state_digest(b));
        cr_assert_eq(transfer(STATE_TRANSFER_LOAD, b, fd, &t), 0, "%s", t.message.text);
        cr_assert_eq(t.bytes, size);
        cr_assert_eq(t.final_state, VFIO_DEVICE_STATE_STOP);
        cr_assert(!t.reset);
        cr_assert_eq(sim_device_state_digest(a), sim_device_state_digest(b));
        close(fd);
        vfio_dev_free(a);
        vfio_dev_free(b);
}

Test(state_transfer, refused_or_incomplete_loads_end_in_a_reset) {
        VfioDev *a = sim("a", 2 * SIM_BLOCK_SIZE), *b = sim("b", 2 * SIM_BLOCK_SIZE);
        uint64_t size, digest_b = sim_device_state_digest(b);
        StateTransfer t;
        int fd = saved_state(a, &size), bad = memfd_create("bad", MFD_CLOEXEC);
        uint8_t *buf = malloc(size);

        cr_assert_eq(pread(fd, buf, size, 0), (ssize_t) size);
        buf[size / 2] ^= 0x20;
        cr_assert_eq(pwrite(bad, buf, size, 0), (ssize_t) size);
        cr_assert_eq(transfer(STATE_TRANSFER_LOAD, b, bad, &t), -EINVAL);
        cr_assert_eq(t.failure, STATE_TRANSFER_STREAM_REJECTED);
        cr_assert(strstr(t.message.text, "refused the data written at bytes"), "%s", t.message.text);
        cr_assert(t.reset);
        cr_assert_eq(state_of(b), VFIO_DEVICE_STATE_RUNNING, "reset: nothing refused can load");
        cr_assert_eq(sim_device_state_digest(b), digest_b, "the device kept its own state");

        /* truncated: every write is accepted, the commit is not */
        int fdv;
        cr_assert_eq(vfio_dev_set_state(b, VFIO_DEVICE_STATE_STOP, &fdv), 0);
        cr_assert_eq(ftruncate(bad, (off_t) (size - 100)), 0);
        buf[size / 2] ^= 0x20;
        cr_assert_eq(pwrite(bad, buf, size - 100, 0), (ssize_t) (size - 100));
        cr_assert_eq(lseek(bad, 0, SEEK_SET), 0);
        cr_assert_eq(transfer(STATE_TRANSFER_LOAD, b, bad, &t), -EINVAL);
        cr_assert_eq(t.failure, STATE_TRANSFER_STREAM_REJECTED);
        cr_assert(strstr(t.message.text, "complete state"), "%s", t.message.text);
        cr_assert(t.reset);
        cr_assert_eq(state_of(b), VFIO_DEVICE_STATE_RUNNING);
        free(buf);
        close(fd);
        close(bad);
        vfio_dev_free(a);
        vfio_dev_free(b);
}

Test(state_transfer, checks_before_starting) {
        VfioDev *a = sim("a", SIM_BLOCK_SIZE);
        ErrorMessage err = {};
        int p[2], fd;

        cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
        cr_assert_eq(state_transfer_check(STATE_TRANSFER_SAVE, a, p[0], &err), -EINVAL, "read end to save into");
        cr_assert_eq(state_transfer_check(STATE_TRANSFER_LOAD, a, p[1], NULL), -EINVAL, "write end to load from");
        cr_assert_eq(state_transfer_check(STATE_TRANSFER_SAVE, a, p[1], NULL), 0);
        cr_assert_eq(vfio_dev_set_state(a, VFIO_DEVICE_STATE_RUNNING, &fd), 0);
        err = (ErrorMessage) {};
        cr_assert_eq(state_transfer_check(STATE_TRANSFER_SAVE, a, p[1], &err), -EBUSY);
        cr_assert(strstr(err.text, "needs it stopped"), "%s", err.text);
        a->migratable = false;
        cr_assert_eq(state_transfer_check(STATE_TRANSFER_SAVE, a, p[1], NULL), -EOPNOTSUPP);
        close(p[0]);
        close(p[1]);
        vfio_dev_free(a);
}

Test(state_transfer, through_a_pipe_and_a_closed_reader) {
        VfioDev *a = sim("a", 4 * SIM_BLOCK_SIZE);
        StateTransfer t;
        int p[2];

        /* the reader went away: the device goes back to stop all the same */
        cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
        close(p[0]);
        signal(SIGPIPE, SIG_IGN);
        cr_assert_eq(transfer(STATE_TRANSFER_SAVE, a, p[1], &t), -EPIPE);
        cr_assert_eq(t.failure, STATE_TRANSFER_CLIENT_IO);
        cr_assert_eq(state_of(a), VFIO_DEVICE_STATE_STOP);
        close(p[1]);
        vfio_dev_free(a);
}

static int reset_unsupported(VfioDev *d) {
        return -EOPNOTSUPP;
}

/* When the reset fails, the transfer must not claim one: the caller decides what the device may
 * do next (core/device.c refuses every state change until a reset). */
Test(state_transfer, a_failed_reset_is_not_reported_as_done) {
        VfioDev *a = sim("a", 2 * SIM_BLOCK_SIZE), *b = sim("b", 2 * SIM_BLOCK_SIZE);
        VfioDevOps no_reset = *b->ops;
        const VfioDevOps *orig = b->ops;
        uint64_t size;
        StateTransfer t;
        int fd = saved_state(a, &size), bad = memfd_create("bad", MFD_CLOEXEC);

        cr_assert_eq(ftruncate(bad, 0), 0);
        cr_assert_eq(copy_file_range(fd, NULL, bad, NULL, size - 100, 0), (ssize_t) (size - 100));
        cr_assert_eq(lseek(bad, 0, SEEK_SET), 0);
        no_reset.reset = reset_unsupported;
        b->ops = &no_reset;
        cr_assert_eq(transfer(STATE_TRANSFER_LOAD, b, bad, &t), -EINVAL);
        cr_assert(!t.reset);
        cr_assert_eq(t.final_state, VFIO_DEVICE_STATE_RESUMING);
        cr_assert_eq(state_of(b), VFIO_DEVICE_STATE_RESUMING, "still holding what it refused");
        b->ops = orig;
        close(fd);
        close(bad);
        vfio_dev_free(a);
        vfio_dev_free(b);
}
