/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Saving a stopped device's state into a file descriptor and loading it back. */

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
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

static uint64_t mono_msec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

/* How the daemon starts a transfer: its own descriptor, and a deadline. */
static void start_like_the_daemon(StateTransfer *t, StateTransferKind kind, VfioDev *d, int fd, uint64_t timeout_msec) {
        ErrorMessage err = {};

        *t = (StateTransfer) { .kind = kind, .dev = d, .timeout_msec = timeout_msec,
                               .deadline = state_transfer_deadline(timeout_msec) };
        cr_assert_eq(state_transfer_check(kind, d, fd, &err), 0, "%s", err.text);
        cr_assert_eq(state_transfer_open_client(t, fd, &err), 0, "%s", err.text);
}

Test(state_transfer, a_pipe_nobody_reads_meets_the_deadline) {
        VfioDev *a = sim("a", 64 * SIM_BLOCK_SIZE); /* 4 MiB: far more than the pipe holds */
        StateTransfer t;
        uint64_t start;
        int p[2];

        cr_assert_eq(pipe2(p, O_CLOEXEC), 0); /* blocking, as a caller's pipe usually is */
        start_like_the_daemon(&t, STATE_TRANSFER_SAVE, a, p[1], 300);
        cr_assert_eq(t.client_io, STATE_TRANSFER_IO_PIPE);
        cr_assert_eq(fcntl(p[1], F_GETFL) & O_NONBLOCK, 0, "the caller's own file stays blocking");
        start = mono_msec();
        cr_assert_eq(state_transfer_run(&t), -ETIMEDOUT);
        cr_assert_geq(mono_msec() - start, 290);
        cr_assert_lt(mono_msec() - start, 3000);
        cr_assert_eq(t.failure, STATE_TRANSFER_TIMED_OUT);
        cr_assert(strstr(t.message.text, "timed out after 300 ms"), "%s", t.message.text);
        cr_assert_gt(t.bytes, 0, "what the pipe took is counted");
        cr_assert_eq(t.client_fd, -EBADF, "the transfer closed its descriptor");
        cr_assert_eq(state_of(a), VFIO_DEVICE_STATE_STOP);
        close(p[0]);
        close(p[1]);
        vfio_dev_free(a);
}

typedef struct Canceller {
        StateTransfer *t;
        StateTransferCancel why;
} Canceller;

static void *cancel_soon(void *p) {
        Canceller *c = p;
        usleep(150 * 1000);
        state_transfer_cancel(c->t, c->why);
        state_transfer_cancel(c->t, STATE_TRANSFER_CANCEL_STOPPING); /* the first reason sticks */
        return NULL;
}

Test(state_transfer, cancelled_from_another_thread) {
        VfioDev *a = sim("a", 64 * SIM_BLOCK_SIZE), *b = sim("b", 64 * SIM_BLOCK_SIZE);
        uint64_t size;
        int saved = saved_state(a, &size);
        StateTransfer t;
        pthread_t thread;
        int p[2], s[2];

        /* a save into a socket nobody reads */
        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, s), 0);
        start_like_the_daemon(&t, STATE_TRANSFER_SAVE, a, s[1], 60000);
        cr_assert_eq(t.client_io, STATE_TRANSFER_IO_SOCKET);
        Canceller c = { &t, STATE_TRANSFER_CANCEL_REQUESTED };
        cr_assert_eq(pthread_create(&thread, NULL, cancel_soon, &c), 0);
        cr_assert_eq(state_transfer_run(&t), -ECANCELED);
        cr_assert_eq(pthread_join(thread, NULL), 0);
        cr_assert_eq(t.failure, STATE_TRANSFER_CANCELLED);
        cr_assert(strstr(t.message.text, "cancelled by CancelTransfer"), "%s", t.message.text);
        cr_assert_eq(state_of(a), VFIO_DEVICE_STATE_STOP);

        /* a load from a pipe that gives a true beginning and then nothing: reset, never committed */
        cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
        uint8_t head[4096];
        cr_assert_eq(pread(saved, head, sizeof head, 0), (ssize_t) sizeof head);
        cr_assert_eq(write(p[1], head, sizeof head), (ssize_t) sizeof head);
        start_like_the_daemon(&t, STATE_TRANSFER_LOAD, b, p[0], 60000);
        c = (Canceller) { &t, STATE_TRANSFER_CANCEL_STOPPING };
        cr_assert_eq(pthread_create(&thread, NULL, cancel_soon, &c), 0);
        cr_assert_eq(state_transfer_run(&t), -ECANCELED);
        cr_assert_eq(pthread_join(thread, NULL), 0);
        cr_assert(strstr(t.message.text, "the daemon is stopping"), "%s", t.message.text);
        cr_assert(t.reset);
        cr_assert_eq(state_of(b), VFIO_DEVICE_STATE_RUNNING);
        close(p[0]);
        close(p[1]);
        close(s[0]);
        close(s[1]);
        close(saved);
        vfio_dev_free(a);
        vfio_dev_free(b);
}

Test(state_transfer, unboundable_descriptors_refused) {
        VfioDev *a = sim("a", SIM_BLOCK_SIZE);
        ErrorMessage err = {};
        int null = open("/dev/null", O_WRONLY | O_CLOEXEC), dir = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

        cr_assert_eq(state_transfer_check(STATE_TRANSFER_SAVE, a, null, &err), -EINVAL);
        cr_assert(strstr(err.text, "not a regular file, block device, pipe or socket"), "%s", err.text);
        cr_assert_eq(state_transfer_check(STATE_TRANSFER_LOAD, a, dir, NULL), -EINVAL);
        close(null);
        close(dir);
        vfio_dev_free(a);
}
