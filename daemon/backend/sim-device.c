/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <inttypes.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "log.h"
#include "sim-device.h"
#include "sim-stream.h"

/* What the record being emitted counts as, for PRECOPY_INFO. */
typedef enum EmitKind {
        EMIT_NONE,
        EMIT_HEADER,
        EMIT_INITIAL,  /* a pre-copy block not sent before in this session */
        EMIT_DIRTY,    /* a block sent before and rewritten since */
        EMIT_STOPCOPY, /* anything emitted after the device stopped */
        EMIT_END,
} EmitKind;

typedef struct SimSave {
        bool active;
        bool stopped;             /* stop-copy: the device no longer changes, the end is permanent */
        uint32_t *sent_gen;       /* generation last emitted per block, SIM_GEN_NONE if never */
        uint64_t unsent_precopy_bytes;
        uint64_t unsent_other_bytes;
        uint64_t dirty_bytes;
        uint64_t data_records;
        uint64_t scan;            /* where the search for the next pending block resumes */
        bool end_started;
        bool end_done;
        uint64_t precopy_read;    /* bytes read before the device stopped */
        bool reinit_armed;        /* reconfigured; a v2 device reports it at the next precopy info */
        bool reinit_done;         /* the session's reconfiguration happened */
        bool reinit_report;       /* the next precopy info says VFIO_PRECOPY_INFO_REINIT */

        EmitKind kind;            /* the record in flight */
        uint64_t block;
        uint32_t gen;
        uint32_t record_size;
        uint32_t pos;
        uint8_t head[SIM_HEADER_SIZE];
} SimSave;

typedef struct SimSession {
        int peer_fd;              /* our end of the socket pair; -EBADF when no session */
        dev_t dev;
        ino_t ino;
} SimSession;

typedef struct SimDevice {
        VfioDev base;
        pthread_mutex_t lock;
        SimConfig config;
        uint64_t nblocks;
        uint64_t precopy_blocks;

        MigState state;
        uint64_t seed;
        uint32_t *gen;

        uint64_t last_tick_usec;
        unsigned __int128 dirty_credit; /* bytes of rewriting owed, times 10^6 */
        uint64_t dirty_events;

        SimSession session;
        SimSave save;
        SimLoader *load;
} SimDevice;

static const VfioDevOps sim_ops;

static SimDevice *to_sim(VfioDev *d) {
        return (SimDevice *) d;
}

static uint64_t monotonic_usec(void *userdata) {
        struct timespec ts;
        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

void sim_config_init(SimConfig *c) {
        *c = (SimConfig) {
                .state_size = UINT64_C(1) << 20,
                .precopy_size = UINT64_C(256) << 10,
                .migration_flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY,
        };
}

int sim_config_validate(const SimConfig *c, ErrorMessage *err) {
        if (c->state_size == 0 || c->state_size > SIM_STATE_SIZE_MAX)
                return error_setf(err, -EINVAL, "state-size must be between 1 byte and %llu bytes",
                                  (unsigned long long) SIM_STATE_SIZE_MAX);
        if (c->precopy_size_set && c->precopy_size > c->state_size)
                return error_setf(err, -EINVAL, "precopy-size (%llu) exceeds state-size (%llu)",
                                  (unsigned long long) c->precopy_size, (unsigned long long) c->state_size);
        if (c->dirty_rate > SIM_DIRTY_RATE_MAX)
                return error_setf(err, -EINVAL, "dirty-rate must be at most %llu bytes/s",
                                  (unsigned long long) SIM_DIRTY_RATE_MAX);
        if (!mig_flags_valid(c->migration_flags))
                return error_setf(err, -EINVAL,
                                  "flags must contain stop-copy, optionally with p2p and/or pre-copy");
        if (c->fail_to_error & c->fail_in_place)
                return error_setf(err, -EINVAL, "an arc cannot both fail in place and fail into error");
        if (c->arc_latency_usec > SIM_ARC_LATENCY_MAX_USEC)
                return error_setf(err, -EINVAL, "arc-latency-usec must be at most %llu (a minute)",
                                  (unsigned long long) SIM_ARC_LATENCY_MAX_USEC);
        if (c->latency_arcs && !c->arc_latency_usec)
                return error_setf(err, -EINVAL, "latency-arcs needs arc-latency-usec");
        return 0;
}

int sim_arc_from_string(const char *s, uint64_t *ret_bit) {
        _cleanup_free_ char *copy = NULL;
        char *sep;
        int from, to;

        if (!s)
                return -EINVAL;
        copy = strdup(s);
        if (!copy)
                return -ENOMEM;
        sep = strchr(copy, '>');
        if (!sep)
                return -EINVAL;
        *sep = '\0';
        from = mig_state_from_string(copy);
        to = mig_state_from_string(sep + 1);
        if (from < 0 || to < 0 || from == to)
                return -EINVAL;
        *ret_bit = SIM_ARC_BIT(from, to);
        return 0;
}

bool sim_name_valid(const char *name) {
        size_t n;

        if (!name)
                return false;
        n = strlen(name);
        if (n == 0 || n > SIM_NAME_MAX)
                return false;
        for (size_t i = 0; i < n; i++) {
                char ch = name[i];
                if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                      ch == '_'))
                        return false;
        }
        return true;
}

static uint64_t now_usec(SimDevice *s) {
        return s->config.clock ? s->config.clock(s->config.clock_userdata) : monotonic_usec(NULL);
}

static uint32_t record_size_of(SimDevice *s, uint64_t block) {
        return SIM_RECORD_HEADER_SIZE + sim_block_length(s->config.state_size, block);
}

/* ---- device activity ---- */

static void rewrite_block(SimDevice *s, uint64_t b) {
        uint32_t old = s->gen[b];

        if (old >= SIM_GEN_NONE - 1)
                return; /* saturated; four billion rewrites of one block is far beyond any test */
        s->gen[b] = old + 1;
        if (s->save.active && s->save.sent_gen[b] == old)
                s->save.dirty_bytes += record_size_of(s, b);
}

static void rewrite_blocks(SimDevice *s, uint64_t n) {
        for (uint64_t i = 0; i < n; i++)
                rewrite_block(s, sim_mix64(s->seed ^ ~s->dirty_events++) % s->nblocks);
}

/* Brings the device's activity up to now: a running device rewrites dirty_rate bytes a second. */
static void tick(SimDevice *s) {
        uint64_t now = now_usec(s);
        uint64_t elapsed = now > s->last_tick_usec ? now - s->last_tick_usec : 0;
        const unsigned __int128 per_block = (unsigned __int128) SIM_BLOCK_SIZE * 1000000u;
        uint64_t blocks;

        s->last_tick_usec = now;
        if (!mig_state_is_running(s->state) || s->config.dirty_rate == 0)
                return;

        s->dirty_credit += (unsigned __int128) s->config.dirty_rate * elapsed;
        blocks = s->dirty_credit / per_block > 4 * s->nblocks ? 4 * s->nblocks
                                                                : (uint64_t) (s->dirty_credit / per_block);
        if (blocks == 4 * s->nblocks)
                s->dirty_credit = 0; /* the device rewrote everything several times: forget the rest */
        else
                s->dirty_credit -= (unsigned __int128) blocks * per_block;
        rewrite_blocks(s, blocks);
}

/* ---- sessions ---- */

static int session_open(SimDevice *s, int *ret_fd) {
        _cleanup_close_ int user_fd = -EBADF, peer_fd = -EBADF;
        int pair[2];
        struct stat st;

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, pair) < 0)
                return -errno;
        user_fd = pair[0];
        peer_fd = pair[1];
        if (fstat(user_fd, &st) < 0)
                return -errno;

        s->session = (SimSession) {
                .peer_fd = TAKE_FD(peer_fd),
                .dev = st.st_dev,
                .ino = st.st_ino,
        };
        *ret_fd = TAKE_FD(user_fd);
        return 0;
}

static bool session_matches(SimDevice *s, int fd) {
        struct stat st;

        if (s->session.peer_fd < 0 || fd < 0 || fstat(fd, &st) < 0)
                return false;
        return st.st_dev == s->session.dev && st.st_ino == s->session.ino;
}

static void save_end(SimDevice *s) {
        free(s->save.sent_gen);
        s->save = (SimSave) {};
}

static void load_end(SimDevice *s) {
        s->load = sim_loader_free(s->load);
}

/* Ends whatever session is open: the user's fd sees HUP and every later operation on it ENODEV. */
static void session_close(SimDevice *s) {
        if (s->session.peer_fd >= 0)
                (void) shutdown(s->session.peer_fd, SHUT_RDWR);
        s->session.peer_fd = safe_close(s->session.peer_fd);
        s->session.dev = 0;
        s->session.ino = 0;
        save_end(s);
        load_end(s);
}

static int save_begin(SimDevice *s, bool stopped, int *ret_fd) {
        _cleanup_free_ uint32_t *sent = NULL;
        SimStreamHeader header = {
                .migration_flags = s->config.migration_flags,
                .seed = s->seed,
                .state_size = s->config.state_size,
                .block_size = SIM_BLOCK_SIZE,
        };
        uint64_t precopy_bytes = 0, other_bytes = 0;
        int r;

        sent = malloc(s->nblocks * sizeof sent[0]);
        if (!sent)
                return -ENOMEM;
        for (uint64_t b = 0; b < s->nblocks; b++) {
                sent[b] = SIM_GEN_NONE;
                if (b < s->precopy_blocks)
                        precopy_bytes += record_size_of(s, b);
                else
                        other_bytes += record_size_of(s, b);
        }

        r = session_open(s, ret_fd);
        if (r < 0)
                return r;

        s->save = (SimSave) {
                .active = true,
                .stopped = stopped,
                .sent_gen = TAKE_PTR(sent),
                .unsent_precopy_bytes = precopy_bytes,
                .unsent_other_bytes = other_bytes,
                .kind = EMIT_HEADER,
                .record_size = SIM_HEADER_SIZE,
        };
        sim_header_encode(&header, s->save.head);
        return 0;
}

static int load_begin(SimDevice *s, int *ret_fd) {
        SimLoader *l = NULL;
        int r;

        r = sim_loader_new(s->config.migration_flags, s->config.state_size, &l);
        if (r < 0)
                return r;
        r = session_open(s, ret_fd);
        if (r < 0) {
                sim_loader_free(l);
                return r;
        }
        s->load = l;
        return 0;
}

/* ---- the save stream ---- */

static bool block_pending(SimDevice *s, uint64_t b, bool want_unsent) {
        uint32_t sent = s->save.sent_gen[b];
        return want_unsent ? sent == SIM_GEN_NONE : sent != SIM_GEN_NONE && sent != s->gen[b];
}

/* The next block in [0, limit) that is unsent (want_unsent) or stale, starting at the scan
 * position and wrapping once; the counters guarantee one exists when this is called. */
static uint64_t find_block(SimDevice *s, uint64_t limit, bool want_unsent, bool want_stale) {
        for (uint64_t i = 0; i < limit; i++) {
                uint64_t b = (s->save.scan + i) % limit;
                if ((want_unsent && block_pending(s, b, true)) || (want_stale && block_pending(s, b, false))) {
                        s->save.scan = b + 1;
                        return b;
                }
        }
        return UINT64_MAX;
}

static void emit_block(SimDevice *s, uint64_t b, EmitKind kind) {
        uint32_t size = record_size_of(s, b);

        if (s->save.sent_gen[b] == SIM_GEN_NONE) {
                if (b < s->precopy_blocks)
                        s->save.unsent_precopy_bytes -= size;
                else
                        s->save.unsent_other_bytes -= size;
        } else
                s->save.dirty_bytes -= size;

        s->save.sent_gen[b] = s->gen[b];
        s->save.data_records++;
        s->save.kind = kind;
        s->save.block = b;
        s->save.gen = s->gen[b];
        s->save.record_size = size;
        s->save.pos = 0;
        sim_record_header_encode(SIM_RECORD_DATA, b, s->gen[b], sim_block_length(s->config.state_size, b),
                                 s->save.head);
}

/* Picks the next record when none is in flight; false when nothing is available now. */
static bool save_next_record(SimDevice *s) {
        SimSave *v = &s->save;
        uint64_t b;

        if (!v->stopped) {
                if (v->unsent_precopy_bytes > 0) {
                        b = find_block(s, s->precopy_blocks, true, false);
                        if (b != UINT64_MAX) {
                                emit_block(s, b, EMIT_INITIAL);
                                return true;
                        }
                }
                if (v->dirty_bytes > 0) {
                        b = find_block(s, s->precopy_blocks, false, true);
                        if (b != UINT64_MAX) {
                                emit_block(s, b, EMIT_DIRTY);
                                return true;
                        }
                }
                return false;
        }

        if (v->unsent_precopy_bytes + v->unsent_other_bytes + v->dirty_bytes > 0) {
                b = find_block(s, s->nblocks, true, true);
                if (b != UINT64_MAX) {
                        emit_block(s, b, EMIT_STOPCOPY);
                        return true;
                }
        }
        if (!v->end_started) {
                v->end_started = true;
                v->kind = EMIT_END;
                v->record_size = SIM_END_RECORD_SIZE;
                v->pos = 0;
                sim_record_header_encode(SIM_RECORD_END, s->nblocks, 0, SIM_END_PAYLOAD_SIZE, v->head);
                sim_end_payload_encode(v->data_records, sim_state_digest(s->seed, s->gen, s->nblocks),
                                       v->head + SIM_RECORD_HEADER_SIZE);
                return true;
        }
        return false;
}

/* Copies up to n bytes of the record in flight. */
static size_t save_copy(SimDevice *s, uint8_t *out, size_t n) {
        SimSave *v = &s->save;
        size_t k = MIN(n, (size_t) (v->record_size - v->pos));
        size_t done = 0;

        if (v->kind == EMIT_HEADER || v->kind == EMIT_END) {
                memcpy(out, v->head + v->pos, k);
                done = k;
        } else {
                if (v->pos < SIM_RECORD_HEADER_SIZE) {
                        size_t h = MIN(k, (size_t) (SIM_RECORD_HEADER_SIZE - v->pos));
                        memcpy(out, v->head + v->pos, h);
                        done = h;
                }
                if (done < k)
                        sim_block_content(s->seed, v->block, v->gen,
                                          v->pos + (uint32_t) done - SIM_RECORD_HEADER_SIZE, out + done,
                                          k - done);
                done = k;
        }

        v->pos += (uint32_t) done;
        if (v->pos == v->record_size) {
                if (v->kind == EMIT_END)
                        v->end_done = true;
                v->kind = EMIT_NONE;
        }
        return done;
}

static uint64_t in_flight_remaining(const SimSave *v) {
        return v->kind == EMIT_NONE ? 0 : v->record_size - v->pos;
}

static uint64_t full_stream_size(SimDevice *s) {
        uint64_t total = SIM_HEADER_SIZE + SIM_END_RECORD_SIZE;
        for (uint64_t b = 0; b < s->nblocks; b++)
                total += record_size_of(s, b);
        return total;
}

/* ---- operations ---- */

static int sim_get_state(VfioDev *d, MigState *ret_state) {
        SimDevice *s = to_sim(d);

        pthread_mutex_lock(&s->lock);
        tick(s);
        *ret_state = s->state;
        pthread_mutex_unlock(&s->lock);
        return 0;
}

static bool arc_fails(SimDevice *s, MigState from, MigState to, bool *ret_to_error) {
        uint64_t bit = SIM_ARC_BIT(from, to);

        *ret_to_error = s->config.fail_to_error & bit;
        return (s->config.fail_to_error | s->config.fail_in_place) & bit;
}

/* A slow driver's arc: the time passes whatever happens (signals restart the sleep). */
static void arc_delay(SimDevice *s, MigState from, MigState to) {
        struct timespec left;

        if (s->config.arc_latency_usec == 0 ||
            (s->config.latency_arcs && !(s->config.latency_arcs & SIM_ARC_BIT(from, to))))
                return;
        left = (struct timespec) {
                .tv_sec = (time_t) (s->config.arc_latency_usec / 1000000),
                .tv_nsec = (long) (s->config.arc_latency_usec % 1000000) * 1000,
        };
        while (nanosleep(&left, &left) < 0 && errno == EINTR)
                ;
}

/* Executes one direct arc, as a driver's step function does. */
static int run_arc(SimDevice *s, MigState from, MigState to, int *data_fd) {
        bool to_error;
        int r;

        arc_delay(s, from, to);

        if (arc_fails(s, from, to, &to_error)) {
                log_debug("sim %s: injected failure on arc %s→%s%s", s->base.name, mig_state_to_string(from),
                          mig_state_to_string(to), to_error ? ", entering error" : "");
                if (to_error) {
                        session_close(s);
                        s->state = VFIO_DEVICE_STATE_ERROR;
                }
                return -EIO;
        }

        if (mig_arc_opens_session(from, to)) {
                if (to == VFIO_DEVICE_STATE_RESUMING)
                        r = load_begin(s, data_fd);
                else
                        r = save_begin(s, /* stopped= */ to == VFIO_DEVICE_STATE_STOP_COPY, data_fd);
                if (r < 0)
                        return r;
        } else if (from == VFIO_DEVICE_STATE_RESUMING && to == VFIO_DEVICE_STATE_STOP) {
                /* The commit point: the stream must be complete and valid, else the device stays
                 * in RESUMING with its session open, as mtty does. */
                if (!s->load || !sim_loader_complete(s->load)) {
                        log_debug("sim %s: refusing RESUMING→STOP: %s", s->base.name,
                                  s->load ? sim_loader_error(s->load) : "no load session");
                        return -EINVAL;
                }
                s->seed = sim_loader_seed(s->load);
                memcpy(s->gen, sim_loader_gens(s->load), s->nblocks * sizeof s->gen[0]);
                session_close(s);
        } else if ((from == VFIO_DEVICE_STATE_PRE_COPY || from == VFIO_DEVICE_STATE_PRE_COPY_P2P) &&
                   to == VFIO_DEVICE_STATE_STOP_COPY) {
                s->save.stopped = true; /* same session, same fd: the stream continues */
        } else if (mig_state_is_saving(from) && !mig_state_is_saving(to))
                session_close(s); /* PRE_COPY→RUNNING, PRE_COPY_P2P→RUNNING_P2P, STOP_COPY→STOP */

        s->state = to;
        return 0;
}

static int sim_set_state(VfioDev *d, MigState target, int *ret_data_fd) {
        SimDevice *s = to_sim(d);
        _cleanup_close_ int data_fd = -EBADF;
        int r = 0;

        pthread_mutex_lock(&s->lock);
        tick(s);

        while (s->state != target) {
                MigState next;

                r = mig_next_state(s->config.migration_flags, s->state, target, &next);
                if (r < 0)
                        break;
                if (data_fd >= 0) {
                        /* Only the final arc may open a session; the table guarantees it. */
                        r = -EINVAL;
                        break;
                }
                r = run_arc(s, s->state, next, &data_fd);
                if (r < 0)
                        break;
        }

        pthread_mutex_unlock(&s->lock);
        if (r < 0)
                return r;
        *ret_data_fd = TAKE_FD(data_fd);
        return 0;
}

/* The device reconfigures itself in pre-copy: every pre-copy block gets new content that the
 * destination must have as initial data again. Like mlx5, which learns of it from its firmware
 * when asked for precopy info, a v2 device makes it initial data (and reports REINIT) at the
 * next precopy info; reads until then go on with what was there. v1 has no way to say it: the
 * blocks are dirty at once. */
static void save_reinit(SimDevice *s) {
        SimSave *v = &s->save;
        bool v2 = s->base.precopy_info_version == VFIO_PRECOPY_INFO_V2;

        v->reinit_armed = false;
        v->reinit_done = true;
        for (uint64_t b = 0; b < s->precopy_blocks; b++) {
                if (!v2) {
                        rewrite_block(s, b); /* v1 cannot say "initial again": it is dirty data */
                        continue;
                }
                if (v->sent_gen[b] != SIM_GEN_NONE) {
                        v->unsent_precopy_bytes += record_size_of(s, b);
                        v->sent_gen[b] = SIM_GEN_NONE;
                }
                if (s->gen[b] < SIM_GEN_NONE - 1)
                        s->gen[b]++;
        }
        if (!v2)
                return;
        /* As mlx5 does: what is buffered already counts as initial, dirty starts from zero. */
        v->dirty_bytes = 0;
        if (v->kind == EMIT_DIRTY)
                v->kind = EMIT_INITIAL;
        v->scan = 0;
        v->reinit_report = true;
        log_debug("sim %s: REINIT after %" PRIu64 " bytes of pre-copy: %" PRIu64 " initial bytes again.", s->base.name,
                  v->precopy_read, v->unsent_precopy_bytes);
}

static void save_arm_reinit(SimDevice *s) {
        if (s->save.reinit_done || s->save.reinit_armed)
                return;
        if (s->base.precopy_info_version == VFIO_PRECOPY_INFO_V2)
                s->save.reinit_armed = true;
        else
                save_reinit(s);
}

static int sim_precopy_info(VfioDev *d, int data_fd, uint64_t *ret_initial, uint64_t *ret_dirty, uint32_t *ret_flags) {
        SimDevice *s = to_sim(d);
        uint64_t initial, dirty, flight;
        uint32_t flags = 0;
        int r = 0;

        pthread_mutex_lock(&s->lock);
        tick(s);
        if (!session_matches(s, data_fd))
                r = -ENODEV;
        else if (!s->save.active ||
                 (s->state != VFIO_DEVICE_STATE_PRE_COPY && s->state != VFIO_DEVICE_STATE_PRE_COPY_P2P))
                r = -EINVAL;
        else {
                if (s->save.reinit_armed)
                        save_reinit(s);
                flight = in_flight_remaining(&s->save);
                initial = s->save.unsent_precopy_bytes +
                          (s->save.kind == EMIT_HEADER || s->save.kind == EMIT_INITIAL ? flight : 0);
                dirty = s->save.dirty_bytes + (s->save.kind == EMIT_DIRTY ? flight : 0);
                if (s->save.reinit_report) {
                        flags = VFIO_PRECOPY_INFO_REINIT; /* reported once, as a driver does */
                        s->save.reinit_report = false;
                }
        }
        pthread_mutex_unlock(&s->lock);

        if (r < 0)
                return r;
        if (ret_initial)
                *ret_initial = initial;
        if (ret_dirty)
                *ret_dirty = dirty;
        if (ret_flags)
                *ret_flags = flags;
        return 0;
}

static int sim_stop_copy_size(VfioDev *d, uint64_t *ret_size) {
        SimDevice *s = to_sim(d);
        uint64_t size;

        pthread_mutex_lock(&s->lock);
        tick(s);
        if (s->save.active)
                size = in_flight_remaining(&s->save) + s->save.unsent_precopy_bytes +
                       s->save.unsent_other_bytes + s->save.dirty_bytes +
                       (s->save.end_started ? 0 : SIM_END_RECORD_SIZE);
        else
                size = full_stream_size(s);
        pthread_mutex_unlock(&s->lock);

        *ret_size = size;
        return 0;
}

static ssize_t sim_data_read(VfioDev *d, int data_fd, void *buf, size_t n) {
        SimDevice *s = to_sim(d);
        uint8_t *out = buf;
        size_t copied = 0;
        ssize_t r;

        pthread_mutex_lock(&s->lock);
        tick(s);
        if (!session_matches(s, data_fd)) {
                r = -ENODEV;
                goto out;
        }
        if (!s->save.active) {
                r = -EBADF; /* a resume fd is write-only */
                goto out;
        }

        while (copied < n) {
                if (s->save.kind == EMIT_NONE && !save_next_record(s))
                        break;
                copied += save_copy(s, out + copied, n - copied);
        }
        if (!s->save.stopped) {
                s->save.precopy_read += copied;
                if (s->config.reinit_after > 0 && !s->save.reinit_done && s->save.precopy_read >= s->config.reinit_after)
                        save_arm_reinit(s);
        }

        if (copied > 0 || n == 0)
                r = (ssize_t) copied;
        else if (s->save.stopped)
                r = 0;                                   /* the permanent end of stop-copy */
        else
                r = s->config.mtty_quirks ? 0 : -ENOMSG; /* the temporary end of pre-copy */
out:
        pthread_mutex_unlock(&s->lock);
        return r;
}

static ssize_t sim_data_write(VfioDev *d, int data_fd, const void *buf, size_t n) {
        SimDevice *s = to_sim(d);
        ssize_t r;

        pthread_mutex_lock(&s->lock);
        if (!session_matches(s, data_fd))
                r = -ENODEV;
        else if (!s->load)
                r = -EBADF; /* a save fd is read-only */
        else {
                r = sim_loader_feed(s->load, buf, n);
                if (r < 0)
                        log_debug("sim %s: refusing migration data: %s", s->base.name, sim_loader_error(s->load));
                else
                        r = (ssize_t) n;
        }
        pthread_mutex_unlock(&s->lock);
        return r;
}

static int sim_reset(VfioDev *d) {
        SimDevice *s = to_sim(d);

        pthread_mutex_lock(&s->lock);
        tick(s);
        session_close(s);
        s->state = VFIO_DEVICE_STATE_RUNNING;
        pthread_mutex_unlock(&s->lock);
        return 0;
}

static void sim_destroy(VfioDev *d) {
        SimDevice *s = to_sim(d);

        session_close(s);
        free(s->gen);
        pthread_mutex_destroy(&s->lock);
        vfio_dev_done_common(&s->base);
        free(s);
}

static const VfioDevOps sim_ops = {
        .get_state = sim_get_state,
        .set_state = sim_set_state,
        .precopy_info = sim_precopy_info,
        .stop_copy_size = sim_stop_copy_size,
        .data_read = sim_data_read,
        .data_write = sim_data_write,
        .reset = sim_reset,
        .destroy = sim_destroy,
};

bool vfio_dev_is_sim(const VfioDev *d) {
        return d && d->ops == &sim_ops;
}

/* The simulated device's descriptor, which clients get a copy of: a small memfd that says
 * what it is (there are no regions or interrupts to drive). */
static int sim_device_fd_new(const char *name) {
        _cleanup_close_ int fd = -EBADF;
        char text[128];
        int n;

        fd = memfd_create("vfiomig-sim-device", MFD_CLOEXEC);
        if (fd < 0)
                return -errno;
        n = snprintf(text, sizeof text, "vfiomigd simulated device %s\n", name);
        if (write(fd, text, (size_t) n) != n)
                return -EIO;
        return TAKE_FD(fd);
}

static int sim_device_make(const char *name, const SimConfig *c, int device_fd, SimDevice **ret, ErrorMessage *err);

int sim_device_new(const char *name, const SimConfig *c, VfioDev **ret, ErrorMessage *err) {
        SimDevice *s = NULL;
        int r;

        r = sim_device_make(name, c, -EBADF, &s, err);
        if (r < 0)
                return r;
        *ret = &s->base;
        return 0;
}

static int sim_device_make(const char *name, const SimConfig *c, int device_fd, SimDevice **ret, ErrorMessage *err) {
        _cleanup_close_ int fd = device_fd;
        _cleanup_free_ char *address = NULL;
        SimDevice *s;
        int r;

        if (!sim_name_valid(name))
                return error_setf(err, -EINVAL,
                                  "invalid simulated device name '%s': use 1 to %d of A-Z a-z 0-9 _", name ?: "",
                                  SIM_NAME_MAX);
        r = sim_config_validate(c, err);
        if (r < 0)
                return r;
        if (asprintf(&address, "sim:%s", name) < 0)
                return -ENOMEM;

        s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        r = vfio_dev_init_common(&s->base, &sim_ops, VFIO_BACKEND_SIM, name, address, "sim", NULL);
        if (r < 0) {
                free(s);
                return r;
        }
        (void) pthread_mutex_init(&s->lock, NULL);
        s->session.peer_fd = -EBADF;
        s->config = *c;
        if (!c->precopy_size_set)
                s->config.precopy_size = MIN(c->precopy_size, c->state_size);
        s->nblocks = sim_block_count(c->state_size);
        s->precopy_blocks = sim_block_count(s->config.precopy_size);
        s->seed = c->seed_set ? c->seed : sim_mix64(crc32c(name, strlen(name)));
        s->state = VFIO_DEVICE_STATE_RUNNING;
        s->base.migratable = true;
        s->base.migration_flags = c->migration_flags;
        /* The opt-in a kernel device makes at open, with the same outcome and the same line. */
        if (!(c->migration_flags & VFIO_MIGRATION_PRE_COPY))
                s->base.precopy_info_version = VFIO_PRECOPY_INFO_NONE;
        else if (c->refuse_precopy_v2) {
                s->base.precopy_info_version = VFIO_PRECOPY_INFO_V1;
                log_info("%s: PRECOPY_INFOv2 refused by the driver (EINVAL: %s): using PRECOPY_INFO.", name,
                         strerror(EINVAL));
        } else
                s->base.precopy_info_version = VFIO_PRECOPY_INFO_V2;
        s->gen = calloc(s->nblocks, sizeof s->gen[0]);
        if (!s->gen) {
                sim_destroy(&s->base);
                return -ENOMEM;
        }
        s->last_tick_usec = now_usec(s);
        if (fd < 0) {
                fd = sim_device_fd_new(name);
                if (fd < 0) {
                        sim_destroy(&s->base);
                        return error_setf(err, fd, "cannot create the simulated device's descriptor: %m");
                }
        }
        s->base.device_fd = TAKE_FD(fd);

        *ret = s;
        return 0;
}

int sim_device_snapshot(VfioDev *d, SimSnapshot *ret) {
        SimDevice *s = to_sim(d);
        uint32_t *gens;

        gens = new_array(uint32_t, s->nblocks);
        if (!gens)
                return -ENOMEM;
        pthread_mutex_lock(&s->lock);
        tick(s);
        memcpy(gens, s->gen, s->nblocks * sizeof *gens);
        *ret = (SimSnapshot) {
                .config = s->config,
                .state = s->state,
                .seed = s->seed,
                .nblocks = s->nblocks,
                .gens = gens,
        };
        pthread_mutex_unlock(&s->lock);
        ret->config.clock = NULL;
        ret->config.clock_userdata = NULL;
        return 0;
}

void sim_snapshot_done(SimSnapshot *s) {
        free(s->gens);
        s->gens = NULL;
}

int sim_device_restore(const char *name, const SimSnapshot *snap, int device_fd, VfioDev **ret, ErrorMessage *err) {
        SimDevice *s = NULL;
        int r;

        if (snap->nblocks != sim_block_count(snap->config.state_size))
                return error_setf(err, -EINVAL, "the saved state of sim:%s has %llu blocks, its size needs %llu", name,
                                  (unsigned long long) snap->nblocks,
                                  (unsigned long long) sim_block_count(snap->config.state_size));
        if (snap->state < 0 || snap->state >= MIG_STATE_MAX ||
            (snap->state != VFIO_DEVICE_STATE_ERROR && !mig_state_supported(snap->config.migration_flags, snap->state)))
                return error_setf(err, -EINVAL, "the saved state of sim:%s names an impossible migration state", name);
        r = sim_device_make(name, &snap->config, device_fd, &s, err);
        if (r < 0)
                return r;
        s->config.seed = snap->seed;
        s->config.seed_set = true;
        s->seed = snap->seed;
        s->state = snap->state;
        memcpy(s->gen, snap->gens, s->nblocks * sizeof *s->gen);
        *ret = &s->base;
        return 0;
}

uint64_t sim_device_state_digest(VfioDev *d) {
        SimDevice *s = to_sim(d);
        uint64_t digest;

        pthread_mutex_lock(&s->lock);
        tick(s);
        digest = sim_state_digest(s->seed, s->gen, s->nblocks);
        pthread_mutex_unlock(&s->lock);
        return digest;
}

const SimConfig *sim_device_config(VfioDev *d) {
        return &to_sim(d)->config;
}

int sim_device_reconfigure(VfioDev *d) {
        SimDevice *s = to_sim(d);
        int r = 0;

        pthread_mutex_lock(&s->lock);
        if (!s->save.active || s->save.stopped || s->save.reinit_done || s->save.reinit_armed)
                r = -EBUSY;
        else
                save_arm_reinit(s);
        pthread_mutex_unlock(&s->lock);
        return r;
}

int sim_device_dirty_blocks(VfioDev *d, uint64_t n) {
        SimDevice *s = to_sim(d);
        int r = 0;

        pthread_mutex_lock(&s->lock);
        tick(s);
        if (mig_state_is_running(s->state))
                rewrite_blocks(s, n);
        else
                r = -EBUSY;
        pthread_mutex_unlock(&s->lock);
        return r;
}
