/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The stream engine against a raw baseline, over loopback, in one run. Not a test: it prints
 * figures and ratios and always exits 0 unless something breaks. See tests/bench/README.md.
 *
 *   raw     memfd → N×TCP → memfd: one reader thread, a blocking sender and receiver thread per
 *           channel, a writer thread, 1 MiB chunks behind a 16-byte header, 4N+4 chunk slots
 *           with the frontier rule (the prototype of perf-limits.md §4, "thr").
 *   memfd   the engine with a stand-in device whose data fd is a memfd: like for like with raw.
 *   sim     the engine with simulated devices (content generated and verified on the fly).
 *   tls     the memfd engine with TLS 1.3 on every channel (a PSK made here; the records cost
 *           the same as with certificates), against the cleartext engine of the same run: with
 *           kernel TLS where the kernel has it, else GnuTLS sealing and opening in user space
 *           with io_uring moving the ciphertext. `--only tls-cost` prints just these two, at 1
 *           and 4 channels, interleaved run by run, with the machine's load.
 *
 * Throughput is timed from the start of reading to the last byte written; CPU is getrusage()
 * of the whole process (every thread, io_uring workers included) around the transfer. Then a
 * 4 GiB sim stream with shuffled channel speeds measures the destination's peak RSS, in a
 * process of its own.
 */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "log.h"
#include "macro.h"
#include "sim-device.h"
#include "stream-engine.h"
#include "stream-testing.h"

#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)
#define CHUNK (1u << 20)

_Noreturn static void die(const char *what, int r) {
        fprintf(stderr, "bench-stream: %s: %s\n", what, strerror(r < 0 ? -r : r));
        exit(1);
}

static double now_sec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static double cpu_sec(void) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        return (double) ru.ru_utime.tv_sec + (double) ru.ru_utime.tv_usec / 1e6 + (double) ru.ru_stime.tv_sec +
               (double) ru.ru_stime.tv_usec / 1e6;
}

static uint64_t bench_budget; /* 0: the engine's default */

typedef struct Result {
        double seconds, cpu;
        uint64_t bytes;
        uint64_t buffered_peak;
} Result;

static double gibps(const Result *r) {
        return (double) r->bytes / GiB / r->seconds;
}

static double cpu_per_gib(const Result *r) {
        return r->cpu / ((double) r->bytes / GiB);
}

/* ---- per-thread CPU, from /proc ---- */

typedef struct ThreadCpu {
        char name[32];
        double sec;
} ThreadCpu;

static unsigned thread_cpu(ThreadCpu *out, unsigned max) {
        DIR *dir = opendir("/proc/self/task");
        struct dirent *de;
        unsigned n = 0;
        long hz = sysconf(_SC_CLK_TCK);

        if (!dir)
                return 0;
        while ((de = readdir(dir)) && n < max) {
                char path[300], buf[1024], *p;
                FILE *f;
                unsigned long ut = 0, st = 0;

                if (de->d_name[0] == '.')
                        continue;
                snprintf(path, sizeof path, "/proc/self/task/%s/stat", de->d_name);
                f = fopen(path, "re");
                if (!f)
                        continue;
                if (!fgets(buf, sizeof buf, f)) {
                        fclose(f);
                        continue;
                }
                fclose(f);
                p = strchr(buf, '(');
                char *q = strrchr(buf, ')');
                if (!p || !q)
                        continue;
                snprintf(out[n].name, sizeof out[n].name, "%.*s", (int) (q - p - 1), p + 1);
                /* fields after ')': state(3) ... utime(14) stime(15) */
                if (sscanf(q + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
                        continue;
                out[n].sec = (double) (ut + st) / (double) hz;
                n++;
        }
        closedir(dir);
        return n;
}

static bool print_threads;

/* ---- memfd helpers ---- */

static int memfd_filled(uint64_t size) {
        int fd = memfd_create("bench-src", MFD_CLOEXEC);
        uint8_t *buf = malloc(CHUNK);

        if (fd < 0 || !buf)
                die("memfd", -errno);
        for (size_t k = 0; k < CHUNK; k++)
                buf[k] = (uint8_t) (k * 131 + 7);
        for (uint64_t off = 0; off < size; off += CHUNK) {
                size_t n = (size_t) MIN((uint64_t) CHUNK, size - off);
                buf[0] = (uint8_t) (off >> 20);
                if (pwrite(fd, buf, n, (off_t) off) != (ssize_t) n)
                        die("pwrite", -errno);
        }
        free(buf);
        return fd;
}

/* A destination memfd whose pages exist already (as perf-limits.md measured): a fresh memfd
 * would make every run measure tmpfs page allocation instead of copying (and fallocate() is
 * worse: the first write into a fallocated tmpfs page costs 2.7 CPU-s/GiB here). */
static int memfd_empty(uint64_t size) {
        int fd = memfd_create("bench-dst", MFD_CLOEXEC);
        uint8_t *zero = calloc(1, CHUNK);

        if (fd < 0 || !zero)
                die("memfd", -errno);
        for (uint64_t off = 0; off < size; off += CHUNK)
                if (pwrite(fd, zero, (size_t) MIN((uint64_t) CHUNK, size - off), (off_t) off) < 0)
                        die("pwrite", -errno);
        free(zero);
        return fd;
}

static void memfd_compare(int a, int b, uint64_t size) {
        uint8_t *x = malloc(CHUNK), *y = malloc(CHUNK);
        for (uint64_t off = 0; off < size; off += CHUNK) {
                size_t n = (size_t) MIN((uint64_t) CHUNK, size - off);
                if (pread(a, x, n, (off_t) off) != (ssize_t) n || pread(b, y, n, (off_t) off) != (ssize_t) n ||
                    memcmp(x, y, n) != 0) {
                        fprintf(stderr, "bench-stream: the copy differs at %llu\n", (unsigned long long) off);
                        exit(1);
                }
        }
        free(x);
        free(y);
}

/* ---- the raw baseline ---- */

typedef struct RawSlot {
        struct RawSlot *next;
        uint64_t seq;
        uint32_t len;
        uint8_t *buf;            /* 16-byte header, then payload */
} RawSlot;

typedef struct Raw {
        unsigned n;
        int src, dst;
        int out[64], in[64];
        pthread_mutex_t lock;
        pthread_cond_t cond;
        /* source */
        RawSlot *src_slots, *src_free;
        RawSlot *queue_head[64], *queue_tail[64];
        bool src_done[64];
        /* destination */
        RawSlot *dst_slots, *dst_free;
        unsigned dst_free_count;
        RawSlot *held;           /* received, not yet written */
        uint64_t next_write;
        unsigned receivers_done;
} Raw;

static void *raw_reader(void *arg) {
        Raw *r = arg;
        uint64_t seq = 0;

        for (;;) {
                RawSlot *s;
                ssize_t k;

                pthread_mutex_lock(&r->lock);
                while (!r->src_free)
                        pthread_cond_wait(&r->cond, &r->lock);
                s = r->src_free;
                r->src_free = s->next;
                pthread_mutex_unlock(&r->lock);
                k = read(r->src, s->buf + 16, CHUNK);
                if (k < 0)
                        die("read", -errno);
                s->len = (uint32_t) k;
                s->seq = seq;
                memcpy(s->buf, "RAWP", 4);
                memcpy(s->buf + 4, &s->len, 4);
                memcpy(s->buf + 8, &s->seq, 8);
                pthread_mutex_lock(&r->lock);
                if (k == 0) {
                        /* an end marker on every channel */
                        s->next = r->src_free;
                        r->src_free = s;
                        for (unsigned c = 0; c < r->n; c++)
                                r->src_done[c] = true;
                        pthread_cond_broadcast(&r->cond);
                        pthread_mutex_unlock(&r->lock);
                        return NULL;
                }
                s->next = NULL;
                unsigned c = (unsigned) (seq % r->n);
                if (r->queue_tail[c])
                        r->queue_tail[c]->next = s;
                else
                        r->queue_head[c] = s;
                r->queue_tail[c] = s;
                pthread_cond_broadcast(&r->cond);
                pthread_mutex_unlock(&r->lock);
                seq++;
        }
}

static void send_all(int fd, const uint8_t *p, size_t n) {
        while (n > 0) {
                ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        die("send", -errno);
                p += k;
                n -= (size_t) k;
        }
}

static void recv_all(int fd, uint8_t *p, size_t n) {
        while (n > 0) {
                ssize_t k = recv(fd, p, n, MSG_WAITALL);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        die("recv", k < 0 ? -errno : -ECONNRESET);
                p += k;
                n -= (size_t) k;
        }
}

typedef struct RawChannel {
        Raw *r;
        unsigned c;
} RawChannel;

static void *raw_sender(void *arg) {
        RawChannel *rc = arg;
        Raw *r = rc->r;
        unsigned c = rc->c;

        for (;;) {
                RawSlot *s;
                pthread_mutex_lock(&r->lock);
                while (!r->queue_head[c] && !r->src_done[c])
                        pthread_cond_wait(&r->cond, &r->lock);
                s = r->queue_head[c];
                if (!s) {
                        pthread_mutex_unlock(&r->lock);
                        uint8_t end[16] = "RAWP";
                        send_all(r->out[c], end, sizeof end);
                        return NULL;
                }
                r->queue_head[c] = s->next;
                if (!r->queue_head[c])
                        r->queue_tail[c] = NULL;
                pthread_mutex_unlock(&r->lock);
                send_all(r->out[c], s->buf, 16 + (size_t) s->len);
                pthread_mutex_lock(&r->lock);
                s->next = r->src_free;
                r->src_free = s;
                pthread_cond_broadcast(&r->cond);
                pthread_mutex_unlock(&r->lock);
        }
}

static void *raw_receiver(void *arg) {
        RawChannel *rc = arg;
        Raw *r = rc->r;
        int fd = r->in[rc->c];

        for (;;) {
                uint8_t head[16];
                uint32_t len;
                uint64_t seq;
                RawSlot *s;

                recv_all(fd, head, sizeof head);
                memcpy(&len, head + 4, 4);
                memcpy(&seq, head + 8, 8);
                if (len == 0) {
                        pthread_mutex_lock(&r->lock);
                        r->receivers_done++;
                        pthread_cond_broadcast(&r->cond);
                        pthread_mutex_unlock(&r->lock);
                        return NULL;
                }
                pthread_mutex_lock(&r->lock);
                /* the last free slot only for the next chunk to write: no deadlock */
                while (!(r->dst_free_count > 1 || (r->dst_free_count == 1 && seq == r->next_write)))
                        pthread_cond_wait(&r->cond, &r->lock);
                s = r->dst_free;
                r->dst_free = s->next;
                r->dst_free_count--;
                pthread_mutex_unlock(&r->lock);
                recv_all(fd, s->buf, len);
                s->len = len;
                s->seq = seq;
                pthread_mutex_lock(&r->lock);
                s->next = r->held;
                r->held = s;
                pthread_cond_broadcast(&r->cond);
                pthread_mutex_unlock(&r->lock);
        }
}

static void *raw_writer(void *arg) {
        Raw *r = arg;

        pthread_mutex_lock(&r->lock);
        for (;;) {
                RawSlot **pp, *s = NULL;
                for (pp = &r->held; *pp; pp = &(*pp)->next)
                        if ((*pp)->seq == r->next_write) {
                                s = *pp;
                                *pp = s->next;
                                break;
                        }
                if (!s) {
                        if (r->receivers_done == r->n && !r->held)
                                break;
                        pthread_cond_wait(&r->cond, &r->lock);
                        continue;
                }
                pthread_mutex_unlock(&r->lock);
                if (write(r->dst, s->buf, s->len) != (ssize_t) s->len)
                        die("write", -errno);
                pthread_mutex_lock(&r->lock);
                r->next_write++;
                s->next = r->dst_free;
                r->dst_free = s;
                r->dst_free_count++;
                pthread_cond_broadcast(&r->cond);
        }
        pthread_mutex_unlock(&r->lock);
        return NULL;
}

static void tcp_pair(int *a, int *b) {
        struct sockaddr_in addr = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t len = sizeof addr;
        int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (l < 0 || bind(l, (struct sockaddr *) &addr, sizeof addr) < 0 || listen(l, 1) < 0 ||
            getsockname(l, (struct sockaddr *) &addr, &len) < 0)
                die("listen", -errno);
        *a = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(*a, (struct sockaddr *) &addr, sizeof addr) < 0)
                die("connect", -errno);
        *b = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (*b < 0)
                die("accept", -errno);
        close(l);
}

static Result run_raw(unsigned n, uint64_t size, int src) {
        Raw r = { .n = n, .src = src, .dst = memfd_empty(size) };
        pthread_t reader, writer, senders[64], receivers[64];
        RawChannel rcs[64];
        unsigned slots = 4 * n + 4;
        double t0, c0;
        Result res = { .bytes = size };

        pthread_mutex_init(&r.lock, NULL);
        pthread_cond_init(&r.cond, NULL);
        r.src_slots = calloc(slots, sizeof(RawSlot));
        r.dst_slots = calloc(slots, sizeof(RawSlot));
        for (unsigned k = 0; k < slots; k++) {
                r.src_slots[k].buf = malloc(16 + CHUNK);
                r.src_slots[k].next = r.src_free;
                r.src_free = &r.src_slots[k];
                r.dst_slots[k].buf = malloc(CHUNK);
                r.dst_slots[k].next = r.dst_free;
                r.dst_free = &r.dst_slots[k];
        }
        r.dst_free_count = slots;
        for (unsigned c = 0; c < n; c++)
                tcp_pair(&r.out[c], &r.in[c]);
        lseek(src, 0, SEEK_SET);

        c0 = cpu_sec();
        t0 = now_sec();
        for (unsigned c = 0; c < n; c++) {
                rcs[c] = (RawChannel) { .r = &r, .c = c };
                pthread_create(&senders[c], NULL, raw_sender, &rcs[c]);
                pthread_create(&receivers[c], NULL, raw_receiver, &rcs[c]);
        }
        pthread_create(&writer, NULL, raw_writer, &r);
        pthread_create(&reader, NULL, raw_reader, &r);
        pthread_join(reader, NULL);
        pthread_join(writer, NULL);
        res.seconds = now_sec() - t0;
        res.cpu = cpu_sec() - c0;
        for (unsigned c = 0; c < n; c++) {
                pthread_join(senders[c], NULL);
                pthread_join(receivers[c], NULL);
                close(r.out[c]);
                close(r.in[c]);
        }
        memfd_compare(src, r.dst, size);
        for (unsigned k = 0; k < slots; k++) {
                free(r.src_slots[k].buf);
                free(r.dst_slots[k].buf);
        }
        free(r.src_slots);
        free(r.dst_slots);
        close(r.dst);
        return res;
}

/* ---- a stand-in device whose data fd is a memfd ---- */

static int mem_get_state(VfioDev *d, MigState *ret) {
        *ret = VFIO_DEVICE_STATE_STOP_COPY;
        return 0;
}
static int mem_set_state(VfioDev *d, MigState target, int *ret_fd) {
        return -EOPNOTSUPP;
}
static int mem_precopy_info(VfioDev *d, int fd, uint64_t *a, uint64_t *b, uint32_t *f) {
        return -EINVAL;
}
static int mem_stop_copy_size(VfioDev *d, uint64_t *ret) {
        return -EOPNOTSUPP;
}
static ssize_t mem_read(VfioDev *d, int fd, void *buf, size_t n) {
        ssize_t k = read(fd, buf, n);
        return k < 0 ? -errno : k;
}
static ssize_t mem_write(VfioDev *d, int fd, const void *buf, size_t n) {
        ssize_t k = write(fd, buf, n);
        return k < 0 ? -errno : k;
}
static int mem_reset(VfioDev *d) {
        return 0;
}
static void mem_destroy(VfioDev *d) {
        vfio_dev_done_common(d);
        free(d);
}
static const VfioDevOps mem_ops = {
        .get_state = mem_get_state,
        .set_state = mem_set_state,
        .precopy_info = mem_precopy_info,
        .stop_copy_size = mem_stop_copy_size,
        .data_read = mem_read,
        .data_write = mem_write,
        .reset = mem_reset,
        .destroy = mem_destroy,
};

static VfioDev *mem_dev_new(const char *name) {
        VfioDev *d = calloc(1, sizeof *d);
        if (!d || vfio_dev_init_common(d, &mem_ops, VFIO_BACKEND_SIM, name, name, "memfd", NULL) < 0)
                die("device", -ENOMEM);
        d->migratable = true;
        d->migration_flags = VFIO_MIGRATION_STOP_COPY;
        return d;
}

static StreamDeviceInfo info_of(VfioDev *d, uint32_t format, uint64_t size) {
        StreamDeviceInfo i = {
                .migration_flags = d->migration_flags,
                .stream_format = format,
                .vendor_id = 0xffff,
                .device_id = 0xffff,
                .state_size = format == STREAM_FORMAT_SIM ? size : 0,
        };
        snprintf(i.driver, sizeof i.driver, "%s", d->driver);
        return i;
}

static VfioDev *sim_dev(const char *name, uint64_t size) {
        SimConfig c;
        VfioDev *d = NULL;
        ErrorMessage err = {};
        int r;

        sim_config_init(&c);
        c.state_size = size;
        c.migration_flags = VFIO_MIGRATION_STOP_COPY;
        c.seed = 42;
        c.seed_set = true;
        r = sim_device_new(name, &c, &d, &err);
        if (r < 0) {
                fprintf(stderr, "%s\n", err.text);
                die("sim_device_new", r);
        }
        return d;
}

static void peer_of(const char *address, struct sockaddr_storage *ss, socklen_t *len) {
        struct sockaddr_in *in = (struct sockaddr_in *) ss;
        const char *colon = strrchr(address, ':');

        *ss = (struct sockaddr_storage) {};
        in->sin_family = AF_INET;
        in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        in->sin_port = htons((uint16_t) atoi(colon + 1));
        *len = sizeof *in;
}

typedef struct Shuffle {
        StreamOut *out;
        unsigned channels;
        atomic_bool stop;
        uint64_t slow_rate;
} Shuffle;

/* Every 100 ms another channel becomes slow: the frontier waits on it while the others run
 * ahead into the destination's budget. */
static void *shuffle_thread(void *arg) {
        Shuffle *s = arg;
        uint64_t x = 88172645463325252u;

        while (!atomic_load(&s->stop)) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                for (unsigned c = 0; c < s->channels; c++)
                        stream_out_test_set_channel_rate(s->out, c, c == x % s->channels ? s->slow_rate : 0);
                usleep(100000);
        }
        return NULL;
}

/* Drives a StreamOut to the end: start_stopcopy on CONNECTED, stop at COMPLETE (when in is
 * given: also plays the destination job). */
static void drive(StreamOut *out, StreamIn *in, unsigned devices, const int *src_fds, VfioDev **dst, double *t_start,
                  double *t_done) {
        unsigned done = 0;
        bool complete = false, committed = false;

        while (!complete) {
                struct pollfd fds[2] = {
                        { .fd = stream_out_event_fd(out), .events = POLLIN },
                        { .fd = in ? stream_in_event_fd(in) : -1, .events = POLLIN },
                };
                StreamEvent e;

                (void) poll(fds, 2, 1000);
                while (stream_out_next_event(out, &e) > 0) {
                        if (e.type == STREAM_EVENT_CONNECTED) {
                                *t_start = now_sec();
                                /* as a job does: the destination's COMPLETE counts only after it */
                                if (stream_out_switchover(out) < 0)
                                        die("switchover", -EIO);
                                for (unsigned d = 0; d < devices; d++)
                                        if (stream_out_start_stopcopy(out, d, src_fds[d]) < 0)
                                                die("start_stopcopy", -EINVAL);
                        } else if (e.type == STREAM_EVENT_COMPLETE)
                                complete = true;
                        else if (e.type == STREAM_EVENT_FAILED || e.type == STREAM_EVENT_PEER_ABORT) {
                                fprintf(stderr, "bench-stream: source: %s\n", e.text);
                                exit(1);
                        }
                }
                while (in && stream_in_next_event(in, &e) > 0) {
                        if (e.type == STREAM_EVENT_DEVICE_DONE)
                                done++;
                        else if (e.type == STREAM_EVENT_FAILED || e.type == STREAM_EVENT_PEER_ABORT) {
                                fprintf(stderr, "bench-stream: destination: %s\n", e.text);
                                exit(1);
                        }
                        free(e.blob);
                }
                if (in && !committed && done == devices) {
                        *t_done = now_sec();
                        for (unsigned d = 0; d < devices; d++) {
                                int fd = -1;
                                if (dst[d] && vfio_dev_is_sim(dst[d]) &&
                                    vfio_dev_set_state(dst[d], VFIO_DEVICE_STATE_STOP, &fd) < 0)
                                        die("the destination device refused its state", -EINVAL);
                        }
                        committed = true;
                        if (stream_in_complete(in) < 0)
                                die("stream_in_complete", -EIO);
                }
        }
}

/* The engine in one process: kind "memfd" or "sim". */
static Result run_engine(const char *kind, unsigned channels, uint64_t size, int src_memfd, bool uring,
                         StreamTlsContext *tls) {
        bool sim = streq(kind, "sim");
        VfioDev *src = sim ? sim_dev("bsrc", size) : mem_dev_new("bsrc");
        VfioDev *dst = sim ? sim_dev("bdst", size) : mem_dev_new("bdst");
        int sfd = -1, dfd = -1;
        StreamListener *l = NULL;
        StreamIn *in = NULL;
        StreamOut *out = NULL;
        StreamInConfig ic = { .device_count = 1, .devices = { dst }, .io_uring = uring, .budget = bench_budget };
        StreamOutConfig oc = { .channels = channels, .io_uring = uring, .device_count = 1, .devices = { src },
                               .tls = tls };
        ErrorMessage err = {};
        char **addrs = NULL;
        StreamStats st;
        double t0 = 0, t1 = 0, c0;
        Result res = { .bytes = size };
        int r;

        if (sim) {
                if (vfio_dev_set_state(src, VFIO_DEVICE_STATE_STOP_COPY, &sfd) < 0 ||
                    vfio_dev_set_state(dst, VFIO_DEVICE_STATE_RESUMING, &dfd) < 0)
                        die("sim states", -EINVAL);
        } else {
                sfd = dup(src_memfd);
                lseek(sfd, 0, SEEK_SET);
                dfd = memfd_empty(size);
        }
        for (unsigned k = 0; k < STREAM_TOKEN_SIZE; k++)
                ic.token[k] = oc.token[k] = (uint8_t) (k + 1);
        ic.data_fds[0] = dfd;
        ic.infos[0] = oc.infos[0] = info_of(src, sim ? STREAM_FORMAT_SIM : STREAM_FORMAT_DRIVER, size);
        r = stream_listener_new_secure(-1, "127.0.0.1:0", tls, false, &l, &err);
        if (r < 0)
                die(err.text, r);
        stream_listener_addresses(l, &addrs);
        peer_of(addrs[0], &oc.peer, &oc.peer_len);
        strv_free(addrs);

        c0 = cpu_sec();
        r = stream_in_new(&ic, &in, &err);
        if (r < 0)
                die(err.text, r);
        stream_listener_register(l, in);
        r = stream_out_new(&oc, &out, &err);
        if (r < 0)
                die(err.text, r);
        drive(out, in, 1, &sfd, &dst, &t0, &t1);
        res.seconds = t1 - t0;
        if (print_threads) {
                ThreadCpu tc[256];
                unsigned n = thread_cpu(tc, 256);
                printf("  per-thread CPU seconds (whole run):");
                for (unsigned k = 0; k < n; k++)
                        if (tc[k].sec >= 0.01)
                                printf(" %s=%.2f", tc[k].name, tc[k].sec);
                printf("\n");
        }
        stream_in_stats(in, &st);
        res.buffered_peak = st.buffered_peak;
        if (tls && st.transport == STREAM_TRANSPORT_CLEARTEXT)
                die("the TLS run ran in cleartext", -EPROTO);
        stream_out_free(out);
        stream_in_free(in);
        res.cpu = cpu_sec() - c0;
        stream_listener_free(l);
        if (sim) {
                if (sim_device_state_digest(src) != sim_device_state_digest(dst))
                        die("the sim state did not arrive", -EIO);
                res.bytes = st.bytes;
        } else
                memfd_compare(src_memfd, dfd, size);
        close(sfd);
        close(dfd);
        vfio_dev_free(src);
        vfio_dev_free(dst);
        return res;
}

/* ---- where the time goes: single-threaded costs per GiB ---- */

static void costs(uint64_t size) {
        uint8_t *buf = malloc(CHUNK);
        VfioDev *src = sim_dev("csrc", size), *dst = sim_dev("cdst", size);
        int sfd = -1, dfd = -1, m = memfd_filled(size), w = memfd_empty(size);
        double c0, gen, both, crc, rd, wr;
        uint32_t x = 0;
        ssize_t n;

        vfio_dev_set_state(src, VFIO_DEVICE_STATE_STOP_COPY, &sfd);
        c0 = cpu_sec();
        while ((n = vfio_dev_data_read(src, sfd, buf, CHUNK)) > 0)
                ;
        gen = cpu_sec() - c0;
        close(sfd);
        vfio_dev_free(src);

        src = sim_dev("csrc2", size);
        vfio_dev_set_state(src, VFIO_DEVICE_STATE_STOP_COPY, &sfd);
        vfio_dev_set_state(dst, VFIO_DEVICE_STATE_RESUMING, &dfd);
        c0 = cpu_sec();
        while ((n = vfio_dev_data_read(src, sfd, buf, CHUNK)) > 0)
                if (vfio_dev_data_write(dst, dfd, buf, (size_t) n) != n)
                        die("sim write", -EIO);
        both = cpu_sec() - c0;

        c0 = cpu_sec();
        for (uint64_t k = 0; k < size; k += CHUNK)
                x += crc32c(buf, CHUNK);
        crc = cpu_sec() - c0;

        c0 = cpu_sec();
        while (read(m, buf, CHUNK) > 0)
                ;
        rd = cpu_sec() - c0;
        c0 = cpu_sec();
        for (uint64_t k = 0; k < size; k += CHUNK)
                if (write(w, buf, CHUNK) != CHUNK)
                        die("write", -errno);
        wr = cpu_sec() - c0;

        double g = (double) size / GiB;
        printf("\nsingle-threaded cost, CPU-s per GiB (crc32c %s):\n", crc32c_hardware() ? "SSE4.2" : "table");
        printf("  sim source: generate the stream          %.3f\n", gen / g);
        printf("  sim destination: verify the stream       %.3f\n", (both - gen) / g);
        printf("  crc32c (once per side in the engine)     %.3f\n", crc / g);
        printf("  read() from a memfd                      %.3f\n", rd / g);
        printf("  write() into a memfd (pages exist)       %.3f\n", wr / g);
        (void) x;
        close(sfd);
        close(dfd);
        close(m);
        close(w);
        vfio_dev_free(src);
        vfio_dev_free(dst);
        free(buf);
}

/* ---- peak memory of a destination, in a process of its own ---- */

static uint64_t vm_kib(const char *field) {
        FILE *f = fopen("/proc/self/status", "re");
        char line[256];
        uint64_t v = 0;

        if (!f)
                return 0;
        while (fgets(line, sizeof line, f))
                if (strncmp(line, field, strlen(field)) == 0)
                        v = strtoull(line + strlen(field) + 1, NULL, 10);
        fclose(f);
        return v;
}

/* The child: a destination for one sim device; prints its figures on fd 1. */
static int dest_child(uint64_t size, uint64_t budget, int report_fd) {
        VfioDev *dst = sim_dev("rdst", size);
        StreamListener *l = NULL;
        StreamIn *in = NULL;
        StreamInConfig ic = { .device_count = 1, .devices = { dst }, .io_uring = true, .budget = budget };
        ErrorMessage err = {};
        char **addrs = NULL;
        uint64_t rss_before;
        int dfd = -1, r;
        bool done = false;
        StreamStats st;

        vfio_dev_set_state(dst, VFIO_DEVICE_STATE_RESUMING, &dfd);
        for (unsigned k = 0; k < STREAM_TOKEN_SIZE; k++)
                ic.token[k] = (uint8_t) (k + 1);
        ic.data_fds[0] = dfd;
        ic.infos[0] = info_of(dst, STREAM_FORMAT_SIM, size);
        r = stream_listener_new(-1, "127.0.0.1:0", &l, &err);
        if (r < 0)
                die(err.text, r);
        r = stream_in_new(&ic, &in, &err);
        if (r < 0)
                die(err.text, r);
        stream_listener_register(l, in);
        stream_listener_addresses(l, &addrs);
        rss_before = vm_kib("VmRSS:");
        dprintf(report_fd, "%s\n", addrs[0]);
        strv_free(addrs);
        while (!done) {
                struct pollfd pfd = { .fd = stream_in_event_fd(in), .events = POLLIN };
                StreamEvent e;
                (void) poll(&pfd, 1, 1000);
                while (stream_in_next_event(in, &e) > 0) {
                        if (e.type == STREAM_EVENT_DEVICE_DONE) {
                                int fd = -1;
                                if (vfio_dev_set_state(dst, VFIO_DEVICE_STATE_STOP, &fd) < 0)
                                        die("commit", -EIO);
                                stream_in_complete(in);
                                done = true;
                        } else if (e.type == STREAM_EVENT_FAILED || e.type == STREAM_EVENT_PEER_ABORT)
                                die(e.text, -EIO);
                }
        }
        stream_in_stats(in, &st);
        usleep(100000);
        stream_in_free(in);
        stream_listener_free(l);
        dprintf(report_fd, "%llu %llu %llu %llu\n", (unsigned long long) rss_before, (unsigned long long) vm_kib("VmHWM:"),
                (unsigned long long) st.buffered_peak, (unsigned long long) st.bytes);
        close(dfd);
        vfio_dev_free(dst);
        return 0;
}

static void rss_run(const char *self, uint64_t size, unsigned channels, uint64_t budget) {
        int pipefd[2];
        pid_t pid;
        FILE *f;
        char address[128], fdtext[16], sizetext[32], budgettext[32];
        unsigned long long rss_before = 0, hwm = 0, peak = 0, bytes = 0;
        VfioDev *src = sim_dev("rsrc", size);
        StreamOut *out = NULL;
        StreamOutConfig oc = { .channels = channels, .io_uring = true, .device_count = 1, .devices = { src } };
        ErrorMessage err = {};
        Shuffle sh = { .channels = channels };
        pthread_t shuffler;
        double t0 = 0, t1 = 0, start;
        int sfd = -1, status, r;

        if (pipe2(pipefd, O_CLOEXEC) < 0)
                die("pipe", -errno);
        snprintf(fdtext, sizeof fdtext, "%d", pipefd[1]);
        snprintf(sizetext, sizeof sizetext, "%llu", (unsigned long long) size);
        snprintf(budgettext, sizeof budgettext, "%llu", (unsigned long long) budget);
        pid = fork();
        if (pid < 0)
                die("fork", -errno);
        if (pid == 0) {
                /* a fresh process image: its RSS is the destination's alone */
                dup2(pipefd[1], 3);
                (void) fcntl(3, F_SETFD, 0);
                execl("/proc/self/exe", self, "--dest-child", sizetext, budgettext, (char *) NULL);
                _exit(127);
        }
        close(pipefd[1]);
        f = fdopen(pipefd[0], "r");
        if (!f || !fgets(address, sizeof address, f))
                die("the destination process did not start", -EIO);

        vfio_dev_set_state(src, VFIO_DEVICE_STATE_STOP_COPY, &sfd);
        for (unsigned k = 0; k < STREAM_TOKEN_SIZE; k++)
                oc.token[k] = (uint8_t) (k + 1);
        oc.infos[0] = info_of(src, STREAM_FORMAT_SIM, size);
        address[strcspn(address, "\n")] = 0;
        peer_of(address, &oc.peer, &oc.peer_len);
        start = now_sec();
        r = stream_out_new(&oc, &out, &err);
        if (r < 0)
                die(err.text, r);
        sh.out = out;
        sh.slow_rate = 10 * MiB;
        pthread_create(&shuffler, NULL, shuffle_thread, &sh);
        drive(out, NULL, 1, &sfd, NULL, &t0, &t1);
        t1 = now_sec();
        atomic_store(&sh.stop, true);
        pthread_join(shuffler, NULL);
        stream_out_free(out);
        if (fscanf(f, "%llu %llu %llu %llu", &rss_before, &hwm, &peak, &bytes) != 4)
                die("no report from the destination", -EIO);
        waitpid(pid, &status, 0);
        fclose(f);
        printf("  %u channels, %.1f GiB, budget %llu MiB: %.2f GiB/s; destination RSS %llu MiB before the stream, "
               "peak %llu MiB; buffered_peak %.1f MiB (%.0f%% of the budget); peak RSS ≤ budget + 32 MiB: %s\n",
               channels, (double) size / GiB, (unsigned long long) (budget >> 20), (double) bytes / GiB / (t1 - start),
               rss_before >> 10, hwm >> 10, (double) peak / MiB, 100.0 * (double) peak / (double) budget,
               peak <= budget && (hwm << 10) <= budget + 32 * MiB ? "yes" : "NO");
        close(sfd);
        vfio_dev_free(src);
}

/* A PSK context: a fresh random key in a file of our own (psktool's format). */
static StreamTlsContext *bench_tls(void) {
        char dir[] = "/tmp/bench-stream-tls.XXXXXX", path[64];
        StreamTlsConfig c = { .psk_file = path, .ktls = true };
        StreamTlsContext *tls = NULL;
        ErrorMessage err = {};
        uint8_t key[32];
        FILE *f;
        int r;

        if (!mkdtemp(dir))
                die("mkdtemp", -errno);
        (void) snprintf(path, sizeof path, "%s/psk.txt", dir);
        f = fopen(path, "we");
        if (!f || getentropy(key, sizeof key) < 0)
                die("psk file", -errno);
        fputs("bench:", f);
        for (size_t k = 0; k < sizeof key; k++)
                fprintf(f, "%02x", key[k]);
        fputs("\n", f);
        fclose(f);
        r = stream_tls_context_new(&c, &tls, &err);
        (void) unlink(path);
        (void) rmdir(dir);
        if (r < 0)
                die(err.text, r);
        return tls;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return x < y ? -1 : x > y;
}

static double median(double *v, unsigned n) {
        qsort(v, n, sizeof *v, cmp_double);
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* The rows: the memfd engine in cleartext and with user-space (or kernel) TLS, at 1 and 4
 * channels, interleaved run by run; medians with the spread, and the ratio to cleartext. */
static int tls_cost(uint64_t size, unsigned runs, const unsigned *channel_list, size_t n_channel_list, int src, bool uring,
                    StreamTlsContext *tls) {
        char load[128] = "?";
        FILE *f = fopen("/proc/loadavg", "re");

        if (f) {
                if (!fgets(load, sizeof load, f))
                        strcpy(load, "?");
                load[strcspn(load, "\n")] = '\0';
                fclose(f);
        }
        printf("load average at the start: %s (%ld CPUs online)\n", load, sysconf(_SC_NPROCESSORS_ONLN));
        printf("\n%-10s %-28s %8s %10s %10s %12s\n", "channels", "configuration", "GiB/s", "(min-max)", "CPU-s/GiB",
               "(min-max)");
        for (size_t k = 0; k < n_channel_list; k++) {
                unsigned n = channel_list[k];
                double ct[32], cc[32], tt[32], tc[32], s[4][32];

                for (unsigned i = 0; i < runs; i++) {
                        Result a = run_engine("memfd", n, size, src, uring, NULL);
                        Result b = run_engine("memfd", n, size, src, uring, tls);
                        ct[i] = gibps(&a);
                        cc[i] = cpu_per_gib(&a);
                        tt[i] = gibps(&b);
                        tc[i] = cpu_per_gib(&b);
                }
                memcpy(s[0], ct, sizeof ct);
                memcpy(s[1], cc, sizeof cc);
                memcpy(s[2], tt, sizeof tt);
                memcpy(s[3], tc, sizeof tc);
                {
                        double mct = median(s[0], runs), mcc = median(s[1], runs), mtt = median(s[2], runs),
                               mtc = median(s[3], runs);
                        /* median() sorted s[*]: the spread is its ends */
                        printf("%-10u %-28s %8.2f %4.2f-%-5.2f %10.3f %5.3f-%-6.3f\n", n, "cleartext", mct, s[0][0],
                               s[0][runs - 1], mcc, s[1][0], s[1][runs - 1]);
                        printf("%-10u %-28s %8.2f %4.2f-%-5.2f %10.3f %5.3f-%-6.3f\n", n,
                               stream_tls_context_ktls(tls) ? "TLS (kernel)" : "TLS (user-space crypto)", mtt, s[2][0],
                               s[2][runs - 1], mtc, s[3][0], s[3][runs - 1]);
                        printf("%-10u %-28s %7.2f× %10s %9.2f×   %s\n", n, "TLS vs cleartext", mtt / mct, "", mtc / mcc,
                               mtt >= 0.7 * mct ? "[meets 0.7× throughput]" : "[misses 0.7× throughput]");
                }
                fflush(stdout);
        }
        close(src);
        stream_tls_context_unref(tls);
        return 0;
}

int main(int argc, char *argv[]) {
        uint64_t size = GiB, rss_size = 4 * GiB;
        unsigned runs = 3;
        unsigned channel_list[] = { 1, 4 };
        size_t n_channel_list = ELEMENTSOF(channel_list);
        bool uring = true;
        int src;
        static const struct option options[] = {
                { "size-mib", required_argument, NULL, 's' },
                { "rss-size-mib", required_argument, NULL, 'R' },
                { "runs", required_argument, NULL, 'n' },
                { "blocking", no_argument, NULL, 'b' },
                { "sndbuf", required_argument, NULL, 'S' },
                { "rcvbuf", required_argument, NULL, 'V' },
                { "channels", required_argument, NULL, 'c' },
                { "only", required_argument, NULL, 'o' },
                { "budget-mib", required_argument, NULL, 'B' },
                {}
        };
        const char *only = NULL;
        StreamTlsContext *tls = NULL;
        int c, sndbuf = 0, rcvbuf = 0;

        log_set_max_level(LOG_WARNING);
        if (argc == 4 && streq(argv[1], "--dest-child"))
                return dest_child(strtoull(argv[2], NULL, 10), strtoull(argv[3], NULL, 10), 3);

        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 's':
                        size = strtoull(optarg, NULL, 10) * MiB;
                        break;
                case 'R':
                        rss_size = strtoull(optarg, NULL, 10) * MiB;
                        break;
                case 'n':
                        runs = (unsigned) atoi(optarg);
                        break;
                case 'b':
                        uring = false;
                        break;
                case 'S':
                        sndbuf = atoi(optarg);
                        break;
                case 'V':
                        rcvbuf = atoi(optarg);
                        break;
                case 'c':
                        channel_list[0] = channel_list[1] = (unsigned) atoi(optarg);
                        n_channel_list = 1;
                        break;
                case 'o':
                        only = optarg;
                        break;
                case 'B':
                        bench_budget = strtoull(optarg, NULL, 10) * MiB;
                        break;
                default:
                        return 2;
                }
        if (runs < 1 || runs > 32)
                runs = 3;
        signal(SIGPIPE, SIG_IGN);
        if (only && !streq(only, "raw") && !streq(only, "memfd") && !streq(only, "sim") && !streq(only, "rss") &&
            !streq(only, "tls") && !streq(only, "tls-cost")) {
                fprintf(stderr, "--only takes raw, memfd, sim, tls, tls-cost or rss\n");
                return 2;
        }
        if (!only || strncmp(only, "tls", 3) == 0) {
                tls = bench_tls();
                /* in-process: both ends are ours, so this is a loopback run of the record layer */
                printf("bench-stream: TLS 1.3 with a PSK, %s\n",
                       stream_tls_context_ktls(tls) ? "kernel TLS available (kTLS, plain bytes on io_uring)"
                       : uring ? "no kernel TLS here: GnuTLS in user space, ciphertext on io_uring"
                               : "no kernel TLS here: GnuTLS in user space, on blocking I/O");
        }
        log_set_max_level(LOG_WARNING);
        stream_test_set_socket_buffers(sndbuf, rcvbuf);

        printf("bench-stream: %.2f GiB per run, %u runs each (median; configs interleaved), 1 MiB chunks, engine on %s\n",
               (double) size / GiB, runs, uring ? (stream_io_uring_available() ? "io_uring" : "blocking I/O (no io_uring)")
                                              : "blocking I/O");
        src = only && (streq(only, "sim") || streq(only, "rss")) ? -EBADF : memfd_filled(size);

        if (only && streq(only, "tls-cost"))
                return tls_cost(size, runs, channel_list, n_channel_list, src, uring, tls);
        if (only && streq(only, "rss")) {
                printf("\ndestination memory, sim device, one slow channel at a time (10 MiB/s, moving every 100 ms):\n");
                rss_run(argv[0], rss_size, 4, bench_budget ?: STREAM_BUDGET_DEFAULT);
                return 0;
        }
        if (only) {
                print_threads = true;
                /* one configuration, for profiling: raw, memfd or sim */
                for (unsigned i = 0; i < runs; i++) {
                        Result a = streq(only, "raw") ? run_raw(channel_list[0], size, src)
                                                      : run_engine(streq(only, "tls") ? "memfd" : only, channel_list[0], size,
                                                                   src, uring, streq(only, "tls") ? tls : NULL);
                        printf("%s ×%u: %.2f GiB/s, %.3f CPU-s/GiB, peak held %.1f MiB\n", only, channel_list[0], gibps(&a),
                               cpu_per_gib(&a), (double) a.buffered_peak / MiB);
                }
                return 0;
        }
        for (size_t k = 0; k < n_channel_list; k++) {
                unsigned n = channel_list[k];
                double raw_t[32], raw_c[32], mem_t[32], mem_c[32], sim_t[32], sim_c[32], blk_t[32], blk_c[32], tls_t[32],
                        tls_c[32];
                uint64_t peak = 0;

                for (unsigned i = 0; i < runs; i++) {
                        Result a = run_raw(n, size, src);
                        Result b = run_engine("memfd", n, size, src, uring, NULL);
                        Result s = run_engine("sim", n, size, src, uring, NULL);
                        Result bb = run_engine("memfd", n, size, src, false, NULL);
                        Result t = run_engine("memfd", n, size, src, uring, tls);
                        blk_t[i] = gibps(&bb);
                        blk_c[i] = cpu_per_gib(&bb);
                        tls_t[i] = gibps(&t);
                        tls_c[i] = cpu_per_gib(&t);
                        raw_t[i] = gibps(&a);
                        raw_c[i] = cpu_per_gib(&a);
                        mem_t[i] = gibps(&b);
                        mem_c[i] = cpu_per_gib(&b);
                        sim_t[i] = gibps(&s);
                        sim_c[i] = cpu_per_gib(&s);
                        peak = MAX(peak, MAX(b.buffered_peak, s.buffered_peak));
                }
                double rt = median(raw_t, runs), rc = median(raw_c, runs);
                double mt = median(mem_t, runs), mc = median(mem_c, runs);
                double st = median(sim_t, runs), sc = median(sim_c, runs);
                printf("\n%u channel%s                     GiB/s   CPU-s/GiB   vs raw: throughput  CPU/GiB\n", n,
                       n == 1 ? " " : "s");
                printf("  raw  memfd→TCP→memfd        %6.2f   %6.3f\n", rt, rc);
                printf("  engine, memfd stand-in      %6.2f   %6.3f              %5.2f×   %5.2f×  %s\n", mt, mc,
                       mt / rt, mc / rc, mt >= 0.9 * rt && mc <= 1.2 * rc ? "[meets 0.9×/1.2×]" : "[misses 0.9×/1.2×]");
                printf("  engine, sim devices         %6.2f   %6.3f              %5.2f×   %5.2f×\n", st, sc, st / rt,
                       sc / rc);
                {
                        double bt = median(blk_t, runs), bc = median(blk_c, runs);
                        double tt = median(tls_t, runs), tc = median(tls_c, runs);
                        printf("  engine, memfd, blocking I/O %6.2f   %6.3f              %5.2f×   %5.2f×\n", bt, bc, bt / rt,
                               bc / rc);
                        printf("  engine, memfd, TLS (%s) %6.2f   %6.3f   vs cleartext: %5.2f×   %5.2f×  %s\n",
                               stream_tls_context_ktls(tls) ? "kernel" : "user  ", tt, tc, tt / mt, tc / mc,
                               tt >= 0.7 * mt ? "[meets 0.7×]" : "[misses 0.7×]");
                }
                printf("  (reassembly peak held: %.1f MiB)\n", (double) peak / MiB);
                fflush(stdout);
        }
        close(src);
        stream_tls_context_unref(tls);

        costs(size);

        printf("\ndestination memory, sim device, one slow channel at a time (10 MiB/s, moving every 100 ms):\n");
        fflush(stdout);
        rss_run(argv[0], rss_size, 4, STREAM_BUDGET_DEFAULT);
        rss_run(argv[0], rss_size, 4, 16 * MiB);
        return 0;
}
