/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "log.h"
#include "state-transfer.h"

int state_transfer_check(StateTransferKind kind, VfioDev *dev, int client_fd, ErrorMessage *err) {
        MigState s;
        int flags, r;

        if (!dev->migratable)
                return error_setf(err, -EOPNOTSUPP, "%s is not migratable: %s", dev->address,
                                  dev->migratable_reason ?: "no migration support");
        flags = fcntl(client_fd, F_GETFL);
        if (flags < 0)
                return error_setf(err, -EBADF, "the file descriptor is not usable: %m");
        if ((flags & O_PATH) == O_PATH)
                return error_setf(err, -EINVAL, "the file descriptor was opened with O_PATH");
        if (kind == STATE_TRANSFER_SAVE && (flags & O_ACCMODE) == O_RDONLY)
                return error_setf(err, -EINVAL, "the file descriptor is open read-only; saving writes to it");
        if (kind == STATE_TRANSFER_LOAD && (flags & O_ACCMODE) == O_WRONLY)
                return error_setf(err, -EINVAL, "the file descriptor is open write-only; loading reads from it");
        r = vfio_dev_get_state(dev, &s);
        if (r < 0)
                return error_setf(err, r, "Failed to read the migration state of %s: %m", dev->address);
        if (s != VFIO_DEVICE_STATE_STOP)
                return error_setf(err, -EBUSY, "%s is in %s; %s its state needs it stopped: move it to stop first",
                                  dev->address, mig_state_to_string(s),
                                  kind == STATE_TRANSFER_SAVE ? "saving" : "loading");
        return 0;
}

/* A client fd may be non-blocking (a socket, a pipe end): wait instead of failing. */
static int wait_fd(int fd, short events) {
        struct pollfd p = { .fd = fd, .events = events };
        int r;

        do
                r = poll(&p, 1, -1);
        while (r < 0 && errno == EINTR);
        return r < 0 ? -errno : 0;
}

static int write_all(int fd, const uint8_t *buf, size_t n) {
        while (n > 0) {
                ssize_t k = write(fd, buf, n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0 && errno == EAGAIN) {
                        int r = wait_fd(fd, POLLOUT);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (k < 0)
                        return -errno;
                buf += k;
                n -= (size_t) k;
        }
        return 0;
}

static ssize_t read_some(int fd, uint8_t *buf, size_t n) {
        for (;;) {
                ssize_t k = read(fd, buf, n);
                if (k >= 0)
                        return k;
                if (errno == EINTR)
                        continue;
                if (errno == EAGAIN) {
                        int r = wait_fd(fd, POLLIN);
                        if (r < 0)
                                return r;
                        continue;
                }
                return -errno;
        }
}

static int fail(StateTransfer *t, StateTransferFailure failure, int error, const char *format, ...)
        _printf_(4, 5);
static int fail(StateTransfer *t, StateTransferFailure failure, int error, const char *format, ...) {
        char text[sizeof t->message.text];
        int saved = errno;
        va_list ap;

        errno = error < 0 ? -error : error;
        va_start(ap, format);
        (void) vsnprintf(text, sizeof text, format, ap);
        va_end(ap);
        errno = saved;
        if (!t->message.text[0])
                memcpy(t->message.text, text, sizeof text);
        t->failure = failure;
        t->error = error < 0 ? error : -error;
        return t->error;
}

static void reset_after_refusal(StateTransfer *t) {
        MigState s;
        int r = vfio_dev_reset(t->dev);

        t->reset = r >= 0;
        if (r < 0)
                log_error_errno(r, "Failed to reset %s after it refused migration data: %m", t->dev->address);
        t->final_state = vfio_dev_get_state(t->dev, &s) < 0 ? -1 : (int) s;
}

static int run_save(StateTransfer *t, uint8_t *buf) {
        TransitionReport rep;
        int data_fd = -EBADF, r;

        r = transition_run(t->dev, VFIO_DEVICE_STATE_STOP_COPY, VFIO_DEVICE_STATE_STOP, &rep, &data_fd,
                           &t->message);
        t->final_state = rep.final;
        if (r < 0)
                return fail(t, STATE_TRANSFER_TRANSITION, r, "cannot enter stop-copy: %m");
        if (data_fd < 0)
                return fail(t, STATE_TRANSFER_TRANSITION, -EIO, "stop-copy opened no data session");

        for (;;) {
                ssize_t n;

                if (t->cancel && *t->cancel) {
                        r = fail(t, STATE_TRANSFER_CANCELLED, -ECANCELED, "cancelled after %llu bytes",
                                 (unsigned long long) t->bytes);
                        break;
                }
                n = vfio_dev_data_read(t->dev, data_fd, buf, STATE_TRANSFER_CHUNK);
                if (n == 0) {
                        r = 0;
                        break;
                }
                if (n < 0) {
                        /* ENOMSG is pre-copy's temporary end; stop-copy's end is permanent (0). */
                        r = fail(t, STATE_TRANSFER_DEVICE_IO, (int) n, "reading the device's state failed after %llu "
                                 "bytes: %m", (unsigned long long) t->bytes);
                        break;
                }
                r = write_all(t->client_fd, buf, (size_t) n);
                if (r < 0) {
                        fail(t, STATE_TRANSFER_CLIENT_IO, r, "writing to the file descriptor failed after %llu bytes: %m",
                             (unsigned long long) t->bytes);
                        break;
                }
                t->bytes += (uint64_t) n;
        }
        safe_close(data_fd);

        /* Back to stop in any case: the save session must not stay open. */
        {
                int unused = -EBADF, k;
                k = transition_run(t->dev, VFIO_DEVICE_STATE_STOP, TRANSITION_NO_RECOVER, &rep, &unused,
                                   r < 0 ? NULL : &t->message);
                safe_close(unused);
                t->final_state = rep.final;
                t->reset |= rep.reset;
                if (k < 0 && r >= 0)
                        return fail(t, STATE_TRANSFER_TRANSITION, k, "cannot leave stop-copy: %m");
        }
        return r;
}

static int run_load(StateTransfer *t, uint8_t *buf) {
        TransitionReport rep;
        int data_fd = -EBADF, r = 0;

        r = transition_run(t->dev, VFIO_DEVICE_STATE_RESUMING, VFIO_DEVICE_STATE_STOP, &rep, &data_fd,
                           &t->message);
        t->final_state = rep.final;
        if (r < 0)
                return fail(t, STATE_TRANSFER_TRANSITION, r, "cannot enter resuming: %m");
        if (data_fd < 0)
                return fail(t, STATE_TRANSFER_TRANSITION, -EIO, "resuming opened no data session");

        for (;;) {
                ssize_t n;

                if (t->cancel && *t->cancel) {
                        r = fail(t, STATE_TRANSFER_CANCELLED, -ECANCELED, "cancelled after %llu bytes",
                                 (unsigned long long) t->bytes);
                        break;
                }
                n = read_some(t->client_fd, buf, STATE_TRANSFER_CHUNK);
                if (n == 0)
                        break;
                if (n < 0) {
                        r = fail(t, STATE_TRANSFER_CLIENT_IO, (int) n,
                                 "reading the file descriptor failed after %llu bytes: %m",
                                 (unsigned long long) t->bytes);
                        break;
                }
                /* Write segmentation need not match anything: loop over partial writes. */
                for (ssize_t off = 0; off < n;) {
                        ssize_t k = vfio_dev_data_write(t->dev, data_fd, buf + off, (size_t) (n - off));
                        if (k <= 0) {
                                r = fail(t, STATE_TRANSFER_STREAM_REJECTED, k < 0 ? (int) k : -EIO,
                                         "the device refused the data written at bytes %llu-%llu: %m",
                                         (unsigned long long) (t->bytes + (uint64_t) off),
                                         (unsigned long long) (t->bytes + (uint64_t) n - 1));
                                break;
                        }
                        off += k;
                }
                if (r < 0)
                        break;
                t->bytes += (uint64_t) n;
        }
        safe_close(data_fd);

        if (r >= 0) {
                int unused = -EBADF;
                r = transition_run(t->dev, VFIO_DEVICE_STATE_STOP, TRANSITION_NO_RECOVER, &rep, &unused, NULL);
                safe_close(unused);
                t->final_state = rep.final;
                if (r < 0)
                        fail(t, STATE_TRANSFER_STREAM_REJECTED, r,
                             "the device did not accept the %llu bytes as a complete state (%m)",
                             (unsigned long long) t->bytes);
        }
        /* Whatever the device holds now is not a state anyone asked for: never let it commit. */
        if (r < 0)
                reset_after_refusal(t);
        return r;
}

int state_transfer_run(StateTransfer *t) {
        _cleanup_free_ uint8_t *buf = NULL;
        int r;

        t->bytes = 0;
        t->error = 0;
        t->failure = STATE_TRANSFER_OK;
        t->final_state = -1;
        t->reset = false;
        t->message = (ErrorMessage) {};

        buf = malloc(STATE_TRANSFER_CHUNK);
        if (!buf)
                return fail(t, STATE_TRANSFER_CLIENT_IO, -ENOMEM, "out of memory");
        r = t->kind == STATE_TRANSFER_SAVE ? run_save(t, buf) : run_load(t, buf);
        t->client_fd = safe_close(t->client_fd);
        return r;
}
