/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <fcntl.h>
#include <linux/magic.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>

#include "log.h"
#include "state-transfer.h"

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

uint64_t state_transfer_deadline(uint64_t timeout_msec) {
        return now_usec() + timeout_msec * 1000;
}

void state_transfer_cancel(StateTransfer *t, StateTransferCancel why) {
        int expected = STATE_TRANSFER_RUN;

        (void) atomic_compare_exchange_strong(&t->cancel, &expected, (int) why);
}

/* Only what the worker can wait on with a timeout, or what never waits for a peer. A character
 * device (a terminal, say) may block a write forever and cannot be made non-blocking for us alone;
 * a file on FUSE is served by whoever mounted it, who may never answer. */
static int check_file_type(int fd, ErrorMessage *err) {
        struct statfs sfs;
        struct stat st;

        if (fstat(fd, &st) < 0)
                return error_setf(err, -EBADF, "the file descriptor is not usable: %m");
        if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) || S_ISBLK(st.st_mode))
                return 0;
        if (!S_ISREG(st.st_mode))
                return error_setf(err, -EINVAL, "the file descriptor is not a regular file, block device, pipe or "
                                  "socket (a state transfer cannot bound its time on anything else)");
        if (fstatfs(fd, &sfs) < 0)
                return error_setf(err, -EBADF, "the file descriptor's file system cannot be examined: %m");
        if (sfs.f_type == FUSE_SUPER_MAGIC)
                return error_setf(err, -EINVAL, "the file is on FUSE, whose server may never answer: use a pipe "
                                  "or a file on a local file system");
        return 0;
}

int state_transfer_open_client(StateTransfer *t, int client_fd, ErrorMessage *err) {
        struct stat st;
        int fd;

        t->client_fd = -EBADF;
        t->relay[0] = t->relay[1] = -EBADF;
        t->relay_pending = 0;
        if (fstat(client_fd, &st) < 0)
                return error_setf(err, -EBADF, "the file descriptor is not usable: %m");
        fd = fcntl(client_fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return error_setf(err, -errno, "cannot duplicate the file descriptor: %m");
        if (S_ISFIFO(st.st_mode)) {
                if (pipe2(t->relay, O_CLOEXEC | O_NONBLOCK) < 0) {
                        int r = -errno;
                        t->relay[0] = t->relay[1] = -EBADF;
                        safe_close(fd);
                        return error_setf(err, r, "cannot make a relay pipe: %m");
                }
                t->client_io = STATE_TRANSFER_IO_PIPE;
        } else
                t->client_io = S_ISSOCK(st.st_mode) ? STATE_TRANSFER_IO_SOCKET : STATE_TRANSFER_IO_FILE;
        t->client_fd = fd;
        return 0;
}

void state_transfer_close(StateTransfer *t) {
        t->client_fd = safe_close(t->client_fd);
        if (t->client_io == STATE_TRANSFER_IO_PIPE) {
                t->relay[0] = safe_close(t->relay[0]);
                t->relay[1] = safe_close(t->relay[1]);
        }
}

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
        r = check_file_type(client_fd, err);
        if (r < 0)
                return r;
        r = vfio_dev_get_state(dev, &s);
        if (r < 0)
                return error_setf(err, r, "Failed to read the migration state of %s: %m", dev->address);
        if (s != VFIO_DEVICE_STATE_STOP)
                return error_setf(err, -EBUSY, "%s is in %s; %s its state needs it stopped: move it to stop first",
                                  dev->address, mig_state_to_string(s),
                                  kind == STATE_TRANSFER_SAVE ? "saving" : "loading");
        return 0;
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
        if (t->failure != STATE_TRANSFER_OK)
                return t->error; /* the first failure is the one to report */
        if (!t->message.text[0])
                memcpy(t->message.text, text, sizeof text);
        t->failure = failure;
        t->error = error < 0 ? error : -error;
        return t->error;
}

/* 0 to go on, or why not (recorded as the transfer's failure). */
static int check_stop(StateTransfer *t) {
        int why = atomic_load(&t->cancel);

        if (why == STATE_TRANSFER_CANCEL_REQUESTED)
                return fail(t, STATE_TRANSFER_CANCELLED, -ECANCELED, "cancelled by CancelTransfer after %llu bytes",
                            (unsigned long long) t->bytes);
        if (why != STATE_TRANSFER_RUN)
                return fail(t, STATE_TRANSFER_CANCELLED, -ECANCELED, "cancelled after %llu bytes: the daemon is stopping",
                            (unsigned long long) t->bytes);
        if (t->deadline > 0 && now_usec() >= t->deadline)
                return fail(t, STATE_TRANSFER_TIMED_OUT, -ETIMEDOUT,
                            "timed out after %llu ms with %llu bytes moved: the other end of the file descriptor %s",
                            (unsigned long long) t->timeout_msec, (unsigned long long) t->bytes,
                            t->kind == STATE_TRANSFER_SAVE ? "did not take the state in time"
                                                           : "did not supply the state in time");
        return 0;
}

/* Waits until the client's fd is ready, in slices, so that a cancel or the deadline ends the wait. */
static int wait_client(StateTransfer *t, short events) {
        for (;;) {
                struct pollfd p = { .fd = t->client_fd, .events = events };
                uint64_t slice = STATE_TRANSFER_POLL_USEC;
                int r;

                r = check_stop(t);
                if (r < 0)
                        return r;
                if (t->deadline > 0) {
                        uint64_t now = now_usec();
                        if (t->deadline > now && t->deadline - now < slice)
                                slice = t->deadline - now;
                }
                r = poll(&p, 1, (int) ((slice + 999) / 1000));
                if (r < 0 && errno != EINTR)
                        return -errno;
                if (r > 0)
                        return 0; /* ready, or an error or hang-up the next read or write reports */
        }
}

static ssize_t client_write(StateTransfer *t, const uint8_t *buf, size_t n) {
        if (t->client_io == STATE_TRANSFER_IO_SOCKET)
                return send(t->client_fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        return write(t->client_fd, buf, n);
}

static ssize_t client_read(StateTransfer *t, uint8_t *buf, size_t n) {
        if (t->client_io == STATE_TRANSFER_IO_SOCKET)
                return recv(t->client_fd, buf, n, MSG_DONTWAIT);
        return read(t->client_fd, buf, n);
}

/* Into the relay, then spliced to the client's pipe without blocking on it, until all of buf is
 * with the client. */
static int pipe_write_all(StateTransfer *t, const uint8_t *buf, size_t n) {
        while (n > 0 || t->relay_pending > 0) {
                ssize_t k;
                int r;

                r = check_stop(t);
                if (r < 0)
                        return r;
                if (n > 0) {
                        k = write(t->relay[1], buf, n);
                        if (k > 0) {
                                buf += k;
                                n -= (size_t) k;
                                t->relay_pending += (size_t) k;
                        } else if (k < 0 && errno != EAGAIN && errno != EINTR)
                                return -errno;
                }
                k = splice(t->relay[0], NULL, t->client_fd, NULL, t->relay_pending, SPLICE_F_NONBLOCK);
                if (k > 0) {
                        t->relay_pending -= (size_t) k;
                        t->bytes += (uint64_t) k;
                        continue;
                }
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0 && errno == EAGAIN) {
                        r = wait_client(t, POLLOUT);
                        if (r < 0)
                                return r;
                        continue;
                }
                return k < 0 ? -errno : -EIO;
        }
        return 0;
}

static int write_all(StateTransfer *t, const uint8_t *buf, size_t n) {
        if (t->client_io == STATE_TRANSFER_IO_PIPE)
                return pipe_write_all(t, buf, n);
        while (n > 0) {
                ssize_t k;
                int r;

                /* A reader that drains a byte at a time still meets the deadline. */
                r = check_stop(t);
                if (r < 0)
                        return r;
                k = client_write(t, buf, n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0 && errno == EAGAIN) {
                        r = wait_client(t, POLLOUT);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (k < 0)
                        return -errno;
                buf += k;
                n -= (size_t) k;
                t->bytes += (uint64_t) k; /* what the client has, even of a chunk cut short */
        }
        return 0;
}

/* What the client's pipe holds, spliced into the (empty) relay without blocking, then read. */
static ssize_t pipe_read_some(StateTransfer *t, uint8_t *buf, size_t n) {
        ssize_t k = splice(t->client_fd, NULL, t->relay[1], NULL, n, SPLICE_F_NONBLOCK);
        size_t got = 0;

        if (k <= 0)
                return k;
        while (got < (size_t) k) {
                ssize_t m = read(t->relay[0], buf + got, (size_t) k - got);
                if (m < 0 && errno == EINTR)
                        continue;
                if (m <= 0)
                        return m < 0 ? -1 : (errno = EIO, -1);
                got += (size_t) m;
        }
        return k;
}

static ssize_t read_some(StateTransfer *t, uint8_t *buf, size_t n) {
        for (;;) {
                ssize_t k;
                int r;

                r = check_stop(t);
                if (r < 0)
                        return r;
                k = t->client_io == STATE_TRANSFER_IO_PIPE ? pipe_read_some(t, buf, n) : client_read(t, buf, n);
                if (k >= 0)
                        return k;
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN)
                        return -errno;
                r = wait_client(t, POLLIN);
                if (r < 0)
                        return r;
        }
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

                r = check_stop(t);
                if (r < 0)
                        break;
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
                r = write_all(t, buf, (size_t) n);
                if (r < 0) {
                        fail(t, STATE_TRANSFER_CLIENT_IO, r, "writing to the file descriptor failed after %llu bytes: %m",
                             (unsigned long long) t->bytes);
                        break;
                }
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

                r = check_stop(t);
                if (r < 0)
                        break;
                n = read_some(t, buf, STATE_TRANSFER_CHUNK);
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
        if (!buf) {
                state_transfer_close(t);
                return fail(t, STATE_TRANSFER_CLIENT_IO, -ENOMEM, "out of memory");
        }
        r = t->kind == STATE_TRANSFER_SAVE ? run_save(t, buf) : run_load(t, buf);
        state_transfer_close(t);
        return r;
}
