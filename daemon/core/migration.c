/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <arpa/inet.h>
#include <assert.h>
#include <stdarg.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "config.h" /* SYSCONFDIR, for DAEMON_CONFIG_PKI_DIR */
#include "daemon-config.h"
#include "hexdecoct.h"
#include "log.h"
#include "manager.h"
#include "migration.h"
#include "sim-device.h"
#include "vfiomig1.h"

static const char *const direction_names[] = VFIOMIG_DIRECTION_NAMES;
static const char *const phase_names[] = VFIOMIG_PHASE_NAMES;

_Static_assert(sizeof direction_names / sizeof direction_names[0] == _MIGRATION_DIRECTION_MAX, "direction names");
_Static_assert(sizeof phase_names / sizeof phase_names[0] == _MIGRATION_PHASE_MAX, "phase names");

const char *migration_direction_to_string(MigrationDirection d) {
        return d < _MIGRATION_DIRECTION_MAX ? direction_names[d] : NULL;
}

const char *migration_phase_to_string(MigrationPhase p) {
        return p < _MIGRATION_PHASE_MAX ? phase_names[p] : NULL;
}

bool migration_phase_is_final(MigrationPhase p) {
        return p == MIGRATION_COMPLETED || p == MIGRATION_FAILED || p == MIGRATION_CANCELLED;
}

void migration_options_init(MigrationOptions *o) {
        *o = (MigrationOptions) {
                .channels = MIGRATION_CHANNELS_DEFAULT,
                .precopy = -1,
                .downtime_limit_ms = MIGRATION_DOWNTIME_DEFAULT_MS,
                .setup_timeout_ms = MIGRATION_SETUP_TIMEOUT_DEFAULT_MS,
                .io_uring = true,
        };
}

static uint64_t now_usec(void) {
        struct timespec ts;
        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * UINT64_C(1000000) + (uint64_t) ts.tv_nsec / 1000;
}

Migration *manager_find_migration(Manager *m, unsigned id) {
        for (size_t i = 0; i < m->n_migrations; i++)
                if (m->migrations[i]->id == id)
                        return m->migrations[i];
        return NULL;
}

size_t manager_running_migrations(Manager *m) {
        size_t n = 0;
        for (size_t i = 0; i < m->n_migrations; i++)
                n += !migration_phase_is_final(m->migrations[i]->phase);
        return n;
}

static void notify_changed(Migration *j) {
        Manager *m = j->manager;
        if (m->hooks.migration_changed)
                m->hooks.migration_changed(m, j, m->hooks.userdata);
}

/* ---- checks and parsing ---- */

bool migration_address_is_loopback(const struct sockaddr_storage *ss) {
        if (ss->ss_family == AF_INET)
                return (ntohl(((const struct sockaddr_in *) ss)->sin_addr.s_addr) >> 24) == 127;
        if (ss->ss_family == AF_INET6) {
                const struct in6_addr *a = &((const struct sockaddr_in6 *) ss)->sin6_addr;
                return IN6_IS_ADDR_LOOPBACK(a) || (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
        }
        return false;
}

/* Secure by default: the device state holds guest data, and the token gives the job away. */
static int check_cleartext(const char *what, const char *address, ErrorMessage *err) {
        return error_setf(err, -ENOKEY,
                          "cleartext migration %s %s refused: this daemon has no TLS credentials (see vfiomigd.conf(5): "
                          "put them in " DAEMON_CONFIG_PKI_DIR ", or set allow-cleartext, which is unsafe)",
                          what, address);
}

int migration_parse_peer(const char *peer, struct sockaddr_storage *ret, socklen_t *ret_len, ErrorMessage *err) {
        return migration_parse_address(peer, false, ret, ret_len, err);
}

int migration_parse_address(const char *peer, bool port_zero_ok, struct sockaddr_storage *ret, socklen_t *ret_len,
                            ErrorMessage *err) {
        char host[INET6_ADDRSTRLEN + 2];
        const char *colon, *port_text;
        unsigned long port;
        char *end;
        size_t host_len;

        if (!peer || !*peer)
                return error_setf(err, -EINVAL, "the peer address is empty; expected HOST:PORT");
        if (peer[0] == '[') {
                const char *close = strchr(peer, ']');
                if (!close || close[1] != ':')
                        return error_setf(err, -EINVAL, "'%s' is not [IPv6]:PORT", peer);
                host_len = (size_t) (close - peer - 1);
                if (host_len == 0 || host_len >= sizeof host)
                        return error_setf(err, -EINVAL, "'%s' is not [IPv6]:PORT", peer);
                memcpy(host, peer + 1, host_len);
                port_text = close + 2;
        } else {
                colon = strrchr(peer, ':');
                if (!colon || strchr(peer, ':') != colon)
                        return error_setf(err, -EINVAL, "'%s' is not HOST:PORT (write IPv6 addresses as [ADDRESS]:PORT)",
                                          peer);
                host_len = (size_t) (colon - peer);
                if (host_len == 0 || host_len >= sizeof host)
                        return error_setf(err, -EINVAL, "'%s' is not HOST:PORT", peer);
                memcpy(host, peer, host_len);
                port_text = colon + 1;
        }
        host[host_len] = 0;

        errno = 0;
        port = strtoul(port_text, &end, 10);
        if (errno != 0 || end == port_text || *end || (port == 0 && !port_zero_ok) || port > 65535 ||
            port_text[0] == '+' || port_text[0] == '-')
                return error_setf(err, -EINVAL, "'%s' has no valid port (%s-65535)", peer, port_zero_ok ? "0" : "1");

        struct sockaddr_storage ss = {};
        if (peer[0] == '[') {
                struct sockaddr_in6 *sa = (struct sockaddr_in6 *) &ss;
                if (inet_pton(AF_INET6, host, &sa->sin6_addr) != 1)
                        return error_setf(err, -EINVAL, "'%s' is not an IPv6 address", host);
                sa->sin6_family = AF_INET6;
                sa->sin6_port = htons((uint16_t) port);
                *ret_len = sizeof *sa;
        } else {
                struct sockaddr_in *sa = (struct sockaddr_in *) &ss;
                if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
                        return error_setf(err, -EINVAL, "'%s' is not a numeric IPv4 address (the daemon does not "
                                          "resolve names: pass an address PrepareIncoming returned)", host);
                sa->sin_family = AF_INET;
                sa->sin_port = htons((uint16_t) port);
                *ret_len = sizeof *sa;
        }
        *ret = ss;
        return 0;
}

int migration_parse_token(const char *hex, uint8_t ret[static STREAM_TOKEN_SIZE], ErrorMessage *err) {
        uint8_t token[STREAM_TOKEN_SIZE];

        if (!hex || strlen(hex) != 2 * STREAM_TOKEN_SIZE)
                return error_setf(err, -EINVAL, "a migration token is %u hexadecimal digits (as PrepareIncoming "
                                  "returned it)", 2 * STREAM_TOKEN_SIZE);
        for (size_t i = 0; i < STREAM_TOKEN_SIZE; i++) {
                int hi = unhexchar(hex[2 * i]), lo = unhexchar(hex[2 * i + 1]);
                if (hi < 0 || lo < 0)
                        return error_setf(err, -EINVAL, "the migration token has a character that is not a "
                                          "hexadecimal digit at position %zu", 2 * i + (hi < 0 ? 0 : 1));
                token[i] = (uint8_t) (hi << 4 | lo);
        }
        memcpy(ret, token, STREAM_TOKEN_SIZE);
        return 0;
}

static void format_token(const uint8_t token[static STREAM_TOKEN_SIZE], char out[static 2 * STREAM_TOKEN_SIZE + 1]) {
        static const char digits[] = "0123456789abcdef";
        for (size_t i = 0; i < STREAM_TOKEN_SIZE; i++) {
                out[2 * i] = digits[token[i] >> 4];
                out[2 * i + 1] = digits[token[i] & 15];
        }
        out[2 * STREAM_TOKEN_SIZE] = 0;
}

uint64_t migration_budget_max(void) {
        long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
        uint64_t cap = (uint64_t) MIGRATION_BUDGET_MAX_GIB << 30;

        if (pages > 0 && page_size > 0)
                cap = MIN(cap, (uint64_t) pages * (uint64_t) page_size / 4);
        return MAX(cap, 4 * (uint64_t) STREAM_PAYLOAD_MAX);
}

uint64_t migration_budget_total_max(void) {
        long pages = sysconf(_SC_PHYS_PAGES), page_size = sysconf(_SC_PAGESIZE);
        uint64_t cap = pages > 0 && page_size > 0 ? (uint64_t) pages * (uint64_t) page_size / 4 : UINT64_C(4) << 30;

        return MAX(cap, 4 * (uint64_t) STREAM_PAYLOAD_MAX);
}

static uint64_t job_budget(const MigrationOptions *o) {
        return o->budget ?: STREAM_BUDGET_DEFAULT;
}

/* The reassembly budget an incoming job gets: the one asked for, when all incoming jobs together
 * stay within the total cap; without one, the default, shrunk to what the cap leaves (a small
 * host takes a job with less memory rather than none), but never below four packets of the
 * largest size. */
static int incoming_budget(Manager *m, const MigrationOptions *o, uint64_t *ret, ErrorMessage *err) {
        uint64_t held = 0, cap = m->options.max_reassembly_bytes ?: migration_budget_total_max(), want;
        const uint64_t floor = 4 * (uint64_t) STREAM_PAYLOAD_MAX;

        for (size_t i = 0; i < m->n_migrations; i++) {
                Migration *other = m->migrations[i];
                if (other->direction == MIGRATION_INCOMING && !migration_phase_is_final(other->phase))
                        held += job_budget(&other->options);
        }
        want = o->budget ?: MIN((uint64_t) STREAM_BUDGET_DEFAULT, held < cap ? MAX(cap - held, floor) : floor);
        if (held + want > cap)
                return error_setf(err, -E2BIG, "the incoming jobs may hold %" PRIu64 " MiB of reassembly memory "
                                  "together (%s); %" PRIu64 " MiB are taken, this job asks for %" PRIu64 " MiB",
                                  cap >> 20, m->options.max_reassembly_bytes ? "max-reassembly-bytes" :
                                  "a quarter of the memory", held >> 20, want >> 20);
        *ret = want;
        return 0;
}

int migration_check(Manager *m, Device **devices, size_t n, MigrationDirection dir, const MigrationOptions *o,
                    ErrorMessage *err) {
        bool all_precopy = true, all_p2p = true;

        if (n == 0)
                return error_setf(err, -EINVAL, "a migration needs at least one device");
        if (n > STREAM_DEVICES_MAX)
                return error_setf(err, -EINVAL, "a migration moves at most %u devices, not %zu", STREAM_DEVICES_MAX, n);
        if (dir == MIGRATION_OUTGOING && (o->channels < 1 || o->channels > STREAM_CHANNELS_MAX))
                return error_setf(err, -EINVAL, "channels must be 1-%u, not %u", STREAM_CHANNELS_MAX, o->channels);
        if (dir == MIGRATION_OUTGOING && o->downtime_limit_ms == 0)
                return error_setf(err, -EINVAL, "the downtime limit must be at least 1 ms");
        if (dir == MIGRATION_INCOMING && o->budget != 0 && o->budget < 4 * (uint64_t) STREAM_PAYLOAD_MAX)
                return error_setf(err, -EINVAL, "the reassembly budget must be at least %u MiB (four packets of "
                                  "the largest size), not %" PRIu64 " bytes", 4 * (STREAM_PAYLOAD_MAX >> 20), o->budget);
        if (dir == MIGRATION_INCOMING && o->budget > migration_budget_max())
                return error_setf(err, -EINVAL, "the reassembly budget may be at most %" PRIu64 " MiB (a quarter of "
                                  "the memory, at most %u GiB), not %" PRIu64 " bytes", migration_budget_max() >> 20,
                                  MIGRATION_BUDGET_MAX_GIB, o->budget);
        if (o->stall_timeout_ms != 0 &&
            (o->stall_timeout_ms < MIGRATION_STALL_TIMEOUT_MIN_MS || o->stall_timeout_ms > MIGRATION_TIMEOUT_MAX_MS))
                return error_setf(err, -EINVAL, "the stall timeout must be between %u ms and a day, not %" PRIu64 " ms",
                                  MIGRATION_STALL_TIMEOUT_MIN_MS, o->stall_timeout_ms);
        /* A prepared job holds its devices in RESUMING and its reassembly budget: it cannot wait
         * forever. */
        if (dir == MIGRATION_INCOMING &&
            (o->setup_timeout_ms < MIGRATION_STALL_TIMEOUT_MIN_MS || o->setup_timeout_ms > MIGRATION_TIMEOUT_MAX_MS))
                return error_setf(err, -EINVAL, "the setup timeout must be between %u ms and a day (a prepared job "
                                  "cannot wait forever), not %" PRIu64 " ms", MIGRATION_STALL_TIMEOUT_MIN_MS,
                                  o->setup_timeout_ms);

        for (size_t i = 0; i < n; i++) {
                Device *d = devices[i];
                MigState s;
                int r;

                for (size_t k = 0; k < i; k++)
                        if (devices[k] == d)
                                return error_setf(err, -EINVAL, "%s is named twice", d->id);
                if (!d->dev->migratable)
                        return error_setf(err, -EOPNOTSUPP, "%s cannot migrate: %s", d->id,
                                          d->dev->migratable_reason ?: "no migration support");
                r = device_check_state_change(d, err);
                if (r < 0)
                        return r;
                r = device_refresh_state(d, &s);
                if (r < 0)
                        return error_setf(err, -EIO, "cannot read the state of %s: %s", d->id, strerror(-r));
                if (dir == MIGRATION_OUTGOING && s != VFIO_DEVICE_STATE_RUNNING)
                        return error_setf(err, -EINVAL, "%s is in %s; a migration starts from running", d->id,
                                          mig_state_to_string(s));
                if (dir == MIGRATION_INCOMING && s != VFIO_DEVICE_STATE_RUNNING && s != VFIO_DEVICE_STATE_STOP)
                        return error_setf(err, -EINVAL, "%s is in %s; a destination device must be running or "
                                          "stopped (Reset it first)", d->id, mig_state_to_string(s));
                all_precopy &= (d->dev->migration_flags & VFIO_MIGRATION_PRE_COPY) != 0;
                all_p2p &= (d->dev->migration_flags & VFIO_MIGRATION_P2P) != 0;
        }
        if (dir == MIGRATION_OUTGOING && o->precopy > 0 && !all_precopy) {
                for (size_t i = 0; i < n; i++)
                        if (!(devices[i]->dev->migration_flags & VFIO_MIGRATION_PRE_COPY))
                                return error_setf(err, -EOPNOTSUPP, "pre-copy was asked for, but %s does not "
                                                  "support it", devices[i]->id);
        }
        if (n > 1 && !all_p2p && !o->force_without_p2p)
                for (size_t i = 0; i < n; i++)
                        if (!(devices[i]->dev->migration_flags & VFIO_MIGRATION_P2P))
                                return error_setf(err, -EXDEV, "%s lacks P2P states, so stopping the group "
                                                  "cannot keep it from DMA into stopped devices; pass "
                                                  "force-without-p2p if none of them do peer-to-peer DMA",
                                                  devices[i]->id);
        if (manager_running_migrations(m) >= MIGRATIONS_RUNNING_MAX)
                return error_setf(err, -E2BIG, "%u migrations are running already, the most there can be",
                                  MIGRATIONS_RUNNING_MAX);
        if (dir == MIGRATION_INCOMING) {
                uint64_t budget;
                return incoming_budget(m, o, &budget, err);
        }
        return 0;
}

/* What the destination compares (proto/stream-protocol.md §1): flags, stream format, ids, driver,
 * and for simulated devices the state size. */
static int read_hex_id(const char *sysfs_path, const char *file, uint16_t *ret) {
        _cleanup_free_ char *path = NULL;
        _cleanup_fclose_ FILE *f = NULL;
        unsigned v;

        if (asprintf(&path, "%s/%s", sysfs_path, file) < 0)
                return -ENOMEM;
        f = fopen(path, "re");
        if (!f)
                return -errno;
        if (fscanf(f, "%x", &v) != 1 || v > 0xffff)
                return -EINVAL;
        *ret = (uint16_t) v;
        return 0;
}

static void device_stream_info(Device *d, StreamDeviceInfo *ret) {
        StreamDeviceInfo info = {
                .migration_flags = d->dev->migration_flags,
                .stream_format = vfio_dev_is_sim(d->dev) ? STREAM_FORMAT_SIM : STREAM_FORMAT_DRIVER,
                .vendor_id = 0xffff,
                .device_id = 0xffff,
        };
        uint64_t size;

        (void) snprintf(info.driver, sizeof info.driver, "%s", d->dev->driver);
        if (vfio_dev_is_sim(d->dev))
                info.state_size = sim_device_config(d->dev)->state_size;
        else if (d->dev->sysfs_path) {
                uint16_t vendor, device;
                /* An mdev has no ids of its own: both stay 0xffff. */
                if (read_hex_id(d->dev->sysfs_path, "vendor", &vendor) >= 0 &&
                    read_hex_id(d->dev->sysfs_path, "device", &device) >= 0) {
                        info.vendor_id = vendor;
                        info.device_id = device;
                }
        }
        if (vfio_dev_stop_copy_size(d->dev, &size) >= 0)
                info.stop_copy_size = size;
        *ret = info;
}

/* ---- the job's life ---- */

static int job_new(Manager *m, MigrationDirection dir, Device **devices, size_t n, const MigrationOptions *o,
                   Migration **ret) {
        _cleanup_(migration_freep) Migration *j = NULL;

        j = new0(Migration, 1);
        if (!j)
                return -ENOMEM;
        j->manager = m;
        j->direction = dir;
        j->phase = MIGRATION_SETUP;
        j->options = *o;
        j->n_devices = n;
        memcpy(j->devices, devices, n * sizeof *devices);
        for (size_t i = 0; i < n; i++) {
                j->device_ids[i] = strdup(devices[i]->id);
                if (!j->device_ids[i])
                        return -ENOMEM; /* the cleanup frees the ones before */
        }
        j->start_usec = j->last_tick_usec = now_usec();
        j->estimated_downtime_ms = MIGRATION_ESTIMATE_UNKNOWN;
        *ret = TAKE_PTR(j);
        return 0;
}

/* The finished jobs beyond MIGRATIONS_KEPT_MAX go, oldest first; never keep, which is being
 * finished right now (its callers still use it). */
static void prune_finished(Manager *m, Migration *keep) {
        size_t finished = 0;

        for (size_t i = 0; i < m->n_migrations; i++)
                finished += migration_phase_is_final(m->migrations[i]->phase);
        for (size_t i = 0; i < m->n_migrations && finished > MIGRATIONS_KEPT_MAX;) {
                Migration *j = m->migrations[i];
                if (!migration_phase_is_final(j->phase) || j == keep) {
                        i++;
                        continue;
                }
                if (m->hooks.migration_removed)
                        m->hooks.migration_removed(m, j, m->hooks.userdata);
                memmove(m->migrations + i, m->migrations + i + 1, (m->n_migrations - i - 1) * sizeof *m->migrations);
                m->n_migrations--;
                finished--;
                migration_free(j);
        }
}

static int job_register(Migration *j) {
        Manager *m = j->manager;
        Migration **l;

        l = reallocarray(m->migrations, m->n_migrations + 1, sizeof *l);
        if (!l)
                return -ENOMEM;
        m->migrations = l;
        j->id = m->next_migration_id++;
        m->migrations[m->n_migrations++] = j;
        for (size_t i = 0; i < j->n_devices; i++) {
                j->devices[i]->migration = j;
                manager_notify_device_changed(m, j->devices[i]);
        }
        if (m->hooks.migration_added)
                m->hooks.migration_added(m, j, m->hooks.userdata);
        return 0;
}

static void refresh_stats(Migration *j) {
        if (j->out)
                stream_out_stats(j->out, &j->stats);
        else if (j->in)
                stream_in_stats(j->in, &j->stats);
        /* what runs, once the channels are up (kernel TLS may have declined one) */
        if ((j->out || j->in) && j->stats.channels_up > 0)
                j->transport = j->stats.transport;
}

static void stop_engine(Migration *j) {
        refresh_stats(j);
        j->event_source = sd_event_source_disable_unref(j->event_source);
        j->timer = sd_event_source_disable_unref(j->timer);
        if (j->in) {
                StreamListener *l = j->manager->listener;
                if (l)
                        stream_listener_unregister(l, j->in);
        }
        /* Freeing stops the engine's threads: only then may the devices' data fds change hands. */
        j->out = stream_out_free(j->out);
        j->in = stream_in_free(j->in);
}

/* Source devices run again; destination devices are reset, so nothing half-loaded survives. */
static void give_devices_back(Migration *j) {
        Manager *m = j->manager;
        int results[STREAM_DEVICES_MAX];
        GroupOutcome outcome;
        ErrorMessage err = {};
        int r;

        if (j->direction == MIGRATION_OUTGOING) {
                r = manager_set_states_for(m, j, j->devices, j->n_devices, VFIO_DEVICE_STATE_RUNNING, true, results,
                                           &outcome, &err);
                if (r < 0)
                        log_error_errno(r, "Migration %u: failed to return the devices to running: %s", j->id,
                                        err.text[0] ? err.text : strerror(-r));
                else
                        log_info("Migration %u: the devices are running again.", j->id);
                return;
        }
        for (size_t i = 0; i < j->n_devices; i++) {
                Device *d = j->devices[i];
                err = (ErrorMessage) {};
                r = device_reset_for(d, j, &err);
                if (r < 0) {
                        log_error_errno(r, "Migration %u: failed to reset %s: %s", j->id, d->id, err.text);
                        /* Whatever it holds must not commit: refuse state changes until a reset. */
                        device_note_refused_load(d, false, VFIO_DEVICE_STATE_RESUMING);
                }
        }
}

static void release_devices(Migration *j) {
        for (size_t i = 0; i < j->n_devices; i++) {
                if (!j->devices[i] || j->devices[i]->migration != j)
                        continue;
                j->devices[i]->migration = NULL;
                manager_notify_device_changed(j->manager, j->devices[i]);
        }
}

static void finish(Migration *j, MigrationPhase phase) {
        Manager *m = j->manager;

        assert(migration_phase_is_final(phase));
        j->phase = phase;
        j->end_usec = now_usec();
        release_devices(j);
        if (phase == MIGRATION_COMPLETED)
                log_info("Migration %u (%s, %zu device%s) completed: %" PRIu64 " bytes in %.1f s, downtime %" PRIu64
                         " ms.", j->id, migration_direction_to_string(j->direction), j->n_devices,
                         j->n_devices == 1 ? "" : "s", j->stats.bytes, (double) (j->end_usec - j->start_usec) / 1e6,
                         j->downtime_ms);
        else
                log_error("Migration %u (%s) %s: %s", j->id, migration_direction_to_string(j->direction),
                          phase == MIGRATION_FAILED ? "failed" : "was cancelled", j->error ?: "no reason given");
        notify_changed(j);
        if (m->hooks.migration_finished)
                m->hooks.migration_finished(m, j, m->hooks.userdata);
        prune_finished(m, j);
}

static void set_error(Migration *j, const char *name, const char *format, ...) _printf_(3, 4);
static void set_error(Migration *j, const char *name, const char *format, ...) {
        va_list ap;
        char *text = NULL;

        if (j->error)
                return; /* the first reason is the one that counts */
        va_start(ap, format);
        if (vasprintf(&text, format, ap) < 0)
                text = NULL;
        va_end(ap);
        j->error = text ?: strdup("out of memory describing the failure");
        j->error_name = name;
}

/* The source handed its last byte to the kernel and has neither a valid COMPLETE nor an ABORT
 * from the destination (which sends ABORT only before it commits): the destination may or may
 * not have committed. A violation is no answer either way, but the specification (§3.2) has the
 * source run again then: a destination that breaks the protocol must not run what it got. */
static bool outcome_unknown(Migration *j, const char *error_name) {
        return j->direction == MIGRATION_OUTGOING && j->out && stream_out_handed_all(j->out) &&
               !streq_ptr(error_name, VFIOMIG_ERROR_PEER_ABORTED) && !streq_ptr(error_name, VFIOMIG_ERROR_PEER_VIOLATION);
}

/* The devices stay stopped (stop-copy), owned by the job, until migration_resolve(). */
static void become_indeterminate(Migration *j) {
        Manager *m = j->manager;

        j->phase = MIGRATION_INDETERMINATE;
        j->end_usec = now_usec();
        log_error("Migration %u (outgoing) is indeterminate: %s. Every byte went out, but the destination neither "
                  "confirmed nor refused the commit: the devices stay stopped. Ask the destination job whether it "
                  "committed (Committed) and call Resolve().", j->id, j->error ?: "no reason given");
        notify_changed(j);
        if (m->hooks.migration_finished)
                m->hooks.migration_finished(m, j, m->hooks.userdata);
}

static void outgoing_completed(Migration *j);

/* Every failure ends here: stop the data path, give the devices back, say why. */
static void fail(Migration *j, MigrationPhase phase, uint32_t abort_reason, const char *error_name,
                 const char *format, ...) _printf_(5, 6);
static void fail(Migration *j, MigrationPhase phase, uint32_t abort_reason, const char *error_name,
                 const char *format, ...) {
        va_list ap;
        char *text = NULL;
        bool unknown;

        if (migration_phase_is_final(j->phase) || j->phase == MIGRATION_INDETERMINATE)
                return;
        if (j->direction == MIGRATION_OUTGOING && j->out && stream_out_completed(j->out)) {
                /* A valid COMPLETE arrived and waits in the event queue: the destination has
                 * committed, which no cancel or later failure can undo. */
                log_notice("Migration %u: the destination had already proved its commit; the job completes.", j->id);
                return outgoing_completed(j);
        }
        va_start(ap, format);
        if (vasprintf(&text, format, ap) < 0)
                text = NULL;
        va_end(ap);
        set_error(j, error_name, "%s", text ?: "unknown failure");

        if (abort_reason != 0) {
                if (j->out)
                        stream_out_abort(j->out, abort_reason, text ?: "");
                if (j->in)
                        stream_in_abort(j->in, abort_reason, text ?: "");
        }
        free(text);
        unknown = outcome_unknown(j, error_name);
        stop_engine(j);
        if (unknown)
                return become_indeterminate(j);
        give_devices_back(j);
        finish(j, phase);
}

/* Which named error an engine failure is (the engine says -EBADMSG for a protocol violation,
 * -EPROTO for a refused handshake; the rest are the sockets' and the devices' own errnos). */
static const char *engine_error_name(const Migration *j, const StreamEvent *e) {
        if (e->device < 0 && (e->error == -EKEYREJECTED || e->error == -EACCES))
                return VFIOMIG_ERROR_AUTHENTICATION_FAILED;
        if (e->device < 0 && e->error == -EPROTONOSUPPORT)
                return VFIOMIG_ERROR_INSECURE_TRANSPORT;
        switch (-e->error) {
        case EBADMSG:
                return VFIOMIG_ERROR_PEER_VIOLATION;
        case EPROTO:
                return VFIOMIG_ERROR_PEER_REJECTED;
        case ECONNREFUSED:
        case EHOSTUNREACH:
        case ENETUNREACH:
        case EADDRNOTAVAIL:
        case ETIMEDOUT:
                /* PeerUnreachable means the source could not connect (org.vfiomig1(5)). A channel
                 * that was up and then died of a lost route reports EHOSTUNREACH or ETIMEDOUT,
                 * whichever soft error the kernel kept: both are a lost peer. */
                return j->phase == MIGRATION_SETUP && j->direction == MIGRATION_OUTGOING ? VFIOMIG_ERROR_PEER_UNREACHABLE
                                                                                           : VFIOMIG_ERROR_PEER_LOST;
        case ECONNRESET:
        case EPIPE:
        case ECONNABORTED:
                return VFIOMIG_ERROR_PEER_LOST;
        default:
                return e->device >= 0 ? VFIOMIG_ERROR_DEVICE_FAILED : VFIOMIG_ERROR_TRANSFER_FAILED;
        }
}

static const char *device_name(Migration *j, int index) {
        return index >= 0 && (size_t) index < j->n_devices ? j->devices[index]->id : "the job";
}

/* What both directions do with the events that end the engine's part, and the rest. */
static void engine_event_common(Migration *j, const StreamEvent *e) {
        switch (e->type) {
        case STREAM_EVENT_PEER_ABORT:
                return fail(j, MIGRATION_FAILED, 0, VFIOMIG_ERROR_PEER_ABORTED, "the %s aborted: %s",
                            j->direction == MIGRATION_OUTGOING ? "destination" : "source",
                            e->text[0] ? e->text : "no reason given");
        case STREAM_EVENT_FAILED:
                return fail(j, MIGRATION_FAILED, 0, engine_error_name(j, e), "%s",
                            e->text[0] ? e->text : strerror(-e->error));
        default:
                log_debug("Migration %u: ignoring engine event %d.", j->id, e->type);
                return;
        }
}

/* ---- outgoing ---- */

static bool all_initial_loaded(Migration *j) {
        for (size_t i = 0; i < j->n_devices; i++)
                if (!j->initial_loaded[i])
                        return false;
        return true;
}

static int move_group(Migration *j, MigState target, ErrorMessage *err) {
        int results[STREAM_DEVICES_MAX];
        GroupOutcome outcome;

        return manager_set_states_for(j->manager, j, j->devices, j->n_devices, target, j->options.force_without_p2p,
                                      results, &outcome, err);
}

static void do_switchover(Migration *j) {
        ErrorMessage err = {};
        int r;

        log_info("Migration %u: switching over (stopping %zu device%s).", j->id, j->n_devices,
                 j->n_devices == 1 ? "" : "s");
        r = stream_out_switchover(j->out);
        if (r < 0)
                return fail(j, MIGRATION_FAILED, STREAM_ABORT_INTERNAL, VFIOMIG_ERROR_TRANSFER_FAILED,
                            "cannot send the switchover: %s", strerror(-r));
        if (j->precopy)
                for (size_t i = 0; i < j->n_devices; i++) {
                        r = stream_out_pause(j->out, (unsigned) i);
                        if (r < 0)
                                return fail(j, MIGRATION_FAILED, STREAM_ABORT_INTERNAL, VFIOMIG_ERROR_TRANSFER_FAILED,
                                            "cannot pause the pre-copy of %s: %s", j->devices[i]->id, strerror(-r));
                }

        j->switchover_usec = now_usec();
        r = move_group(j, VFIO_DEVICE_STATE_STOP_COPY, &err);
        if (r < 0)
                return fail(j, MIGRATION_FAILED, STREAM_ABORT_DEVICE, VFIOMIG_ERROR_TRANSITION_FAILED,
                            "cannot move the devices to stop-copy: %s", err.text[0] ? err.text : strerror(-r));
        j->phase = MIGRATION_STOP_COPY;
        for (size_t i = 0; i < j->n_devices; i++) {
                r = stream_out_start_stopcopy(j->out, (unsigned) i, j->devices[i]->session_fd);
                if (r < 0)
                        return fail(j, MIGRATION_FAILED, STREAM_ABORT_INTERNAL, VFIOMIG_ERROR_TRANSFER_FAILED,
                                    "cannot start the stop-copy of %s: %s", j->devices[i]->id, strerror(-r));
        }
        notify_changed(j);
}

static uint64_t precopy_pending(Migration *j) {
        uint64_t total = 0;

        for (size_t i = 0; i < j->n_devices; i++) {
                Device *d = j->devices[i];
                uint64_t initial, dirty;
                if (d->session_fd >= 0 && vfio_dev_precopy_info(d->dev, d->session_fd, &initial, &dirty) >= 0)
                        total += initial + dirty;
        }
        return total;
}

static void start_precopy(Migration *j) {
        ErrorMessage err = {};
        int r;

        r = move_group(j, VFIO_DEVICE_STATE_PRE_COPY, &err);
        if (r < 0)
                return fail(j, MIGRATION_FAILED, STREAM_ABORT_DEVICE, VFIOMIG_ERROR_TRANSITION_FAILED,
                            "cannot move the devices to pre-copy: %s", err.text[0] ? err.text : strerror(-r));
        j->phase = MIGRATION_PRECOPY;
        /* What waits now is the first tick's measure of the link (on_tick()). */
        refresh_stats(j);
        j->precopy_pending = precopy_pending(j);
        j->precopy_pending_low = UINT64_MAX;
        j->last_tick_usec = now_usec();
        j->last_tick_bytes = j->stats.bytes;
        j->last_tick_backlog = j->stats.buffered;
        for (size_t i = 0; i < j->n_devices; i++) {
                r = stream_out_start_precopy(j->out, (unsigned) i, j->devices[i]->session_fd);
                if (r < 0)
                        return fail(j, MIGRATION_FAILED, STREAM_ABORT_INTERNAL, VFIOMIG_ERROR_TRANSFER_FAILED,
                                    "cannot start the pre-copy of %s: %s", j->devices[i]->id, strerror(-r));
        }
        log_info("Migration %u: pre-copy started.", j->id);
        notify_changed(j);
}

/* What stop-copy would still have to move, by the drivers' own estimates. */
static uint64_t remaining_stop_copy(Migration *j) {
        uint64_t total = 0, size;

        for (size_t i = 0; i < j->n_devices; i++)
                if (vfio_dev_stop_copy_size(j->devices[i]->dev, &size) >= 0)
                        total += size;
        return total;
}


/*
 * Automatic switchover, once the destination has loaded the initial data: when what stop-copy
 * still has to move fits the downtime limit at the link rate measured so far. The rate counts
 * only ticks during which pre-copy had data waiting from start to end (a busy link); a device
 * that pre-copies everything in less than a tick leaves no such measurement, and then, once
 * pre-copy has converged, waiting cannot improve the estimate and the job switches over. With a
 * measured rate and an estimate over the limit the job keeps pre-copying and says so once: the
 * operator raises the limit or calls Switchover(). Manual: when asked.
 */
static void consider_switchover(Migration *j, uint64_t remaining) {
        uint64_t estimate_ms = MIGRATION_ESTIMATE_UNKNOWN;

        if (j->phase != MIGRATION_PRECOPY || !all_initial_loaded(j))
                return;
        if (j->switchover_requested)
                return do_switchover(j);

        if (remaining == 0)
                estimate_ms = 0;
        else if (j->rate_measured > 0)
                estimate_ms = remaining * 1000 / j->rate_measured;
        j->estimated_downtime_ms = estimate_ms;
        if (j->options.switchover_manual)
                return; /* the estimate is for the operator, who decides */
        if (estimate_ms <= j->options.downtime_limit_ms) {
                log_info("Migration %u: %" PRIu64 " bytes left for stop-copy, about %" PRIu64 " ms at %" PRIu64
                         " bytes/s: within the %" PRIu64 " ms limit; switching over.", j->id, remaining, estimate_ms,
                         j->rate_measured, j->options.downtime_limit_ms);
                j->switchover_requested = true;
                return do_switchover(j);
        }
        if (j->stalled_ticks < MIGRATION_STALL_TICKS)
                return;
        if (estimate_ms == MIGRATION_ESTIMATE_UNKNOWN) {
                log_notice("Migration %u: pre-copy has converged and the link rate could not be measured (everything "
                           "went in less than %" PRIu64 " ms); switching over with %" PRIu64 " bytes left.", j->id,
                           MIGRATION_TICK_USEC / 1000, remaining);
                j->switchover_requested = true;
                return do_switchover(j);
        }
        if (!j->told_over_limit) {
                j->told_over_limit = true;
                log_notice("Migration %u: pre-copy has converged, but stop-copy would take about %" PRIu64 " ms for "
                           "%" PRIu64 " bytes at %" PRIu64 " bytes/s, over the %" PRIu64 " ms limit: waiting. Call "
                           "Switchover() to accept the longer downtime, or cancel and migrate again with a higher "
                           "downtime-limit.", j->id, estimate_ms, remaining,
                           j->rate_measured, j->options.downtime_limit_ms);
        }
}

static int on_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        Migration *j = userdata;
        uint64_t now = now_usec(), bytes, elapsed, remaining = 0, pending = 0;
        bool outgoing_precopy = j->direction == MIGRATION_OUTGOING && j->phase == MIGRATION_PRECOPY;

        refresh_stats(j);
        bytes = j->stats.bytes;
        elapsed = now - j->last_tick_usec;
        if (outgoing_precopy)
                pending = precopy_pending(j);
        if (elapsed > 0) {
                uint64_t instant = bytes > j->last_tick_bytes ? (bytes - j->last_tick_bytes) * UINT64_C(1000000) / elapsed
                                                              : 0;
                /* Smoothed over about two seconds of ticks; seeded by the first measurement. */
                j->rate = j->rate == 0 ? instant : (j->rate * 3 + instant) / 4;
                /* More was waiting at the start of the tick (on the devices and read but unsent)
                 * than went out during it: the link (or the bandwidth limit) held it back, so the
                 * tick measured what the link carries. A dirtying device that the link keeps up
                 * with never has that much waiting, and its trickle measures nothing. */
                uint64_t moved = bytes - MIN(bytes, j->last_tick_bytes);
                uint64_t waiting = j->precopy_pending + j->last_tick_backlog;
                /* A few bytes a driver reports and never hands over (mtty says 96 in pre-copy for
                 * good) would "wait" every tick and make a trickle look like the link's rate: 41
                 * bytes/s once, and a job that then waited for ever. Only a tick that had at
                 * least MIGRATION_RATE_MIN_WAITING waiting measures the link. */
                if (outgoing_precopy && moved > 0 && waiting > moved && waiting >= MIGRATION_RATE_MIN_WAITING)
                        j->rate_measured = j->rate_measured == 0 ? instant : (j->rate_measured * 3 + instant) / 4;
        }
        j->last_tick_usec = now;
        j->last_tick_bytes = bytes;
        j->last_tick_backlog = j->stats.buffered;

        if (j->direction == MIGRATION_OUTGOING && (j->phase == MIGRATION_PRECOPY || j->phase == MIGRATION_STOP_COPY)) {
                remaining = remaining_stop_copy(j);
                j->bytes_expected = bytes + remaining;
        }
        if (outgoing_precopy) {
                /* Converging means reaching new lows; a dirtying device's pending bytes wander
                 * around a floor, and wandering is not progress. */
                if (pending < j->precopy_pending_low) {
                        j->precopy_pending_low = pending;
                        j->stalled_ticks = pending == 0 ? 1 : 0;
                } else
                        j->stalled_ticks++;
                j->precopy_pending = pending;
        }
        notify_changed(j);
        if (j->direction == MIGRATION_OUTGOING)
                consider_switchover(j, remaining);
        else if (j->phase == MIGRATION_SETUP && now - j->start_usec >= j->options.setup_timeout_ms * 1000) {
                fail(j, MIGRATION_FAILED, STREAM_ABORT_TIMEOUT, VFIOMIG_ERROR_TIMEOUT,
                     "no source joined within %" PRIu64 " s (setup-timeout): the prepared job expired",
                     (j->options.setup_timeout_ms + 999) / 1000);
                return 0;
        }

        /* A timer source is one-shot: arm it again for the next tick. */
        if (j->timer && sd_event_source_set_time_relative(j->timer, MIGRATION_TICK_USEC) >= 0)
                (void) sd_event_source_set_enabled(j->timer, SD_EVENT_ONESHOT);
        (void) s;
        (void) usec;
        return 0;
}

/* The destination proved its commit (a COMPLETE that passed the engine's checks). */
static void outgoing_completed(Migration *j) {
        ErrorMessage err = {};
        int r;

        j->downtime_ms = (now_usec() - j->switchover_usec + 999) / 1000; /* rounded up: 0 means unknown */
        refresh_stats(j);
        stop_engine(j);
        r = move_group(j, VFIO_DEVICE_STATE_STOP, &err);
        if (r < 0)
                /* The destination has the state; the source devices stay in stop-copy. */
                log_warning("Migration %u: the destination committed, but the source devices could not "
                            "leave stop-copy: %s", j->id, err.text);
        j->bytes_expected = j->stats.bytes;
        j->committed = true;
        finish(j, MIGRATION_COMPLETED);
}

static void outgoing_event(Migration *j, const StreamEvent *e) {
        switch (e->type) {
        case STREAM_EVENT_CONNECTED:
                log_info("Migration %u: %u channel%s to %s up.", j->id, j->options.channels,
                         j->options.channels == 1 ? "" : "s", j->peer);
                if (j->precopy)
                        return start_precopy(j);
                j->phase = MIGRATION_PRECOPY; /* for do_switchover's bookkeeping; no pre-copy data flows */
                return do_switchover(j);
        case STREAM_EVENT_INITIAL_LOADED:
                if (e->device >= 0 && (size_t) e->device < j->n_devices && !j->initial_loaded[e->device]) {
                        j->initial_loaded[e->device] = true;
                        log_info("Migration %u: the destination loaded the initial data of %s.", j->id,
                                 device_name(j, e->device));
                        notify_changed(j);
                        consider_switchover(j, remaining_stop_copy(j));
                }
                return;
        case STREAM_EVENT_INITIAL_REINIT:
                if (e->device < 0 || (size_t) e->device >= j->n_devices)
                        return;
                if (e->reason == 0) {
                        /* Nothing to wait for: the bytes travel as dirty pre-copy data, ahead of
                         * stop-copy, so the state stays complete; only the downtime may grow. */
                        log_warning("Migration %u: %s reported new initial data (REINIT): %s; the switchover does not "
                                    "wait for it.", j->id, device_name(j, e->device), e->text);
                        return;
                }
                j->initial_reinits++;
                if (j->phase != MIGRATION_PRECOPY) {
                        /* The devices are stopping already (a switchover is not taken back):
                         * the new initial data travels in stop-copy. A Switchover() that still
                         * waits for the initial data waits for this round too. */
                        log_notice("Migration %u: %s reported new initial data (REINIT) after the switchover was "
                                   "decided: %s; it travels with stop-copy.", j->id, device_name(j, e->device), e->text);
                        notify_changed(j);
                        return;
                }
                j->initial_loaded[e->device] = false;
                log_info("Migration %u: %s reported new initial data (REINIT): %s; the switchover waits until the "
                         "destination has loaded it.", j->id, device_name(j, e->device), e->text);
                notify_changed(j);
                return;
        case STREAM_EVENT_DEVICE_SENT:
                if (e->device >= 0 && (size_t) e->device < j->n_devices)
                        j->device_done[e->device] = true;
                return;
        case STREAM_EVENT_COMPLETE:
                return outgoing_completed(j);
        default:
                return engine_event_common(j, e);
        }
}

/* ---- incoming ---- */

static void commit(Migration *j) {
        ErrorMessage err = {};
        int r;

        j->phase = MIGRATION_RESUMING;
        notify_changed(j);
        r = move_group(j, VFIO_DEVICE_STATE_STOP, &err);
        if (r < 0)
                return fail(j, MIGRATION_FAILED, STREAM_ABORT_DEVICE, VFIOMIG_ERROR_STREAM_REJECTED,
                            "the devices did not accept the state as complete: %s",
                            err.text[0] ? err.text : strerror(-r));
        /* Committed: from here on this side never sends ABORT (the source may already have
         * stopped for good), whatever fails next. */
        j->committed = true;
        notify_changed(j);
        if (j->switchover_usec != 0)
                j->downtime_ms = (now_usec() - j->switchover_usec + 999) / 1000; /* rounded up: 0 means unknown */

        /* The source learns of the commit before anything runs here. Should that fail, the
         * source (which handed out every byte) is indeterminate and waits for Resolve(): these
         * devices keep the state stopped, and the orchestrator, seeing Committed, decides. */
        r = stream_in_complete(j->in);
        refresh_stats(j);
        j->bytes_expected = j->stats.bytes;
        stop_engine(j);
        if (r < 0) {
                set_error(j, VFIOMIG_ERROR_PEER_LOST, "the devices committed the state, but telling the source failed "
                          "(%s): they keep it, stopped; the source job is indeterminate until it is resolved as "
                          "committed", strerror(-r));
                return finish(j, MIGRATION_FAILED);
        }
        if (j->options.run) {
                r = move_group(j, VFIO_DEVICE_STATE_RUNNING, &err);
                if (r < 0) {
                        /* The state is loaded and valid: keep it (stopped) rather than reset it. */
                        set_error(j, VFIOMIG_ERROR_TRANSITION_FAILED, "the state was loaded, but the devices could "
                                  "not be started: %s", err.text[0] ? err.text : strerror(-r));
                        return finish(j, MIGRATION_FAILED);
                }
        }
        finish(j, MIGRATION_COMPLETED);
}

static void incoming_event(Migration *j, StreamEvent *e) {
        switch (e->type) {
        case STREAM_EVENT_CONNECTED:
                if (e->text[0] && !j->peer)
                        j->peer = strdup(e->text);
                log_info("Migration %u: the source%s%s connected.", j->id, j->peer ? " " : "", j->peer ?: "");
                j->phase = MIGRATION_PRECOPY;
                notify_changed(j);
                return;
        case STREAM_EVENT_INITIAL_LOADED:
                if (e->device >= 0 && (size_t) e->device < j->n_devices) {
                        j->initial_loaded[e->device] = true;
                        notify_changed(j);
                }
                return;
        case STREAM_EVENT_INITIAL_REINIT:
                if (e->device >= 0 && (size_t) e->device < j->n_devices) {
                        j->initial_loaded[e->device] = false;
                        j->initial_reinits++;
                        log_info("Migration %u: the source re-opened the initial data of %s (%s).", j->id,
                                 device_name(j, e->device), e->text);
                        notify_changed(j);
                }
                return;
        case STREAM_EVENT_SWITCHOVER:
                if (j->phase == MIGRATION_SETUP || j->phase == MIGRATION_PRECOPY) {
                        j->switchover_usec = now_usec();
                        j->phase = MIGRATION_STOP_COPY;
                        notify_changed(j);
                }
                return;
        case STREAM_EVENT_BLOB:
                if (e->device >= 0 && (size_t) e->device < j->n_devices) {
                        device_adopt_blob(j->devices[e->device], e->blob, e->blob_size);
                        e->blob = NULL;
                }
                return;
        case STREAM_EVENT_DEVICE_DONE:
                if (e->device < 0 || (size_t) e->device >= j->n_devices)
                        return;
                j->device_done[e->device] = true;
                for (size_t i = 0; i < j->n_devices; i++)
                        if (!j->device_done[i])
                                return;
                return commit(j);
        default:
                return engine_event_common(j, e);
        }
}

static int on_engine_event(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Migration *j = userdata;

        /* Handling an event may end the job and free the engine: stop at that point. */
        while (!migration_phase_is_final(j->phase) && (j->out || j->in)) {
                StreamEvent e = {};
                int r = j->out ? stream_out_next_event(j->out, &e) : stream_in_next_event(j->in, &e);
                if (r <= 0)
                        break;
                if (j->direction == MIGRATION_OUTGOING)
                        outgoing_event(j, &e);
                else
                        incoming_event(j, &e);
                free(e.blob);
        }
        (void) s;
        (void) fd;
        (void) revents;
        return 0;
}

static int watch_engine(Migration *j, int event_fd) {
        Manager *m = j->manager;
        int r;

        if (!m->event)
                return -ENXIO;
        r = sd_event_add_io(m->event, &j->event_source, event_fd, EPOLLIN, on_engine_event, j);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(j->event_source, "migration-engine");
        r = sd_event_add_time_relative(m->event, &j->timer, CLOCK_MONOTONIC, MIGRATION_TICK_USEC, 0, on_tick, j);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(j->timer, "migration-tick");
        return 0;
}

int migration_start(Manager *m, Device **devices, size_t n, const char *peer, const char *token_hex,
                    const MigrationOptions *o, Migration **ret, ErrorMessage *err) {
        _cleanup_(migration_freep) Migration *j = NULL;
        StreamOutConfig c = {};
        bool all_precopy = true;
        int r;

        r = migration_check(m, devices, n, MIGRATION_OUTGOING, o, err);
        if (r < 0)
                return r;
        r = migration_parse_peer(peer, &c.peer, &c.peer_len, err);
        if (r < 0)
                return r;
        if (!m->options.tls && !m->options.allow_cleartext && !migration_address_is_loopback(&c.peer))
                return check_cleartext("to the non-loopback address", peer, err);
        r = migration_parse_token(token_hex, c.token, err);
        if (r < 0)
                return r;

        r = job_new(m, MIGRATION_OUTGOING, devices, n, o, &j);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++)
                all_precopy &= (devices[i]->dev->migration_flags & VFIO_MIGRATION_PRE_COPY) != 0;
        j->precopy = o->precopy < 0 ? all_precopy : o->precopy > 0;
        j->peer = strdup(peer);
        if (!j->peer)
                return -ENOMEM;
        memcpy(j->token, c.token, sizeof c.token);
        format_token(j->token, j->token_hex);

        c.channels = o->channels;
        c.io_uring = o->io_uring;
        c.tls = m->options.tls;
        j->transport = !c.tls ? STREAM_TRANSPORT_CLEARTEXT
                       : stream_tls_context_ktls(c.tls) ? STREAM_TRANSPORT_TLS_KERNEL : STREAM_TRANSPORT_TLS_USER;
        c.precopy = j->precopy;
        c.bandwidth_limit = o->bandwidth_limit;
        c.stall_timeout_usec = o->stall_timeout_ms * 1000;
        c.device_count = (unsigned) n;
        for (size_t i = 0; i < n; i++) {
                c.devices[i] = devices[i]->dev;
                device_stream_info(devices[i], &c.infos[i]);
                c.blobs[i] = devices[i]->blob;
                c.blob_sizes[i] = devices[i]->blob_size;
        }
        r = stream_out_new(&c, &j->out, err);
        if (r < 0)
                return r;
        r = watch_engine(j, stream_out_event_fd(j->out));
        if (r < 0)
                return error_setf(err, r, "cannot watch the migration's progress: %m");
        r = job_register(j);
        if (r < 0)
                return r;
        log_info("Migration %u: sending %zu device%s to %s over %u channel%s%s.", j->id, n, n == 1 ? "" : "s", peer,
                 o->channels, o->channels == 1 ? "" : "s", j->precopy ? " with pre-copy" : "");
        *ret = TAKE_PTR(j);
        return 0;
}

int migration_prepare_incoming(Manager *m, Device **devices, size_t n, const MigrationOptions *o,
                               Migration **ret, ErrorMessage *err) {
        _cleanup_(migration_freep) Migration *j = NULL;
        StreamListener *listener;
        StreamInConfig c = {};
        uint64_t budget;
        int r;

        r = migration_check(m, devices, n, MIGRATION_INCOMING, o, err);
        if (r < 0)
                return r;
        r = manager_get_stream_listener(m, &listener, err);
        if (r < 0)
                return r;
        if (!m->options.tls && !m->options.allow_cleartext) {
                _cleanup_strv_free_ char **addresses = NULL;
                r = stream_listener_addresses(listener, &addresses);
                if (r < 0)
                        return r;
                for (char **a = addresses; *a; a++) {
                        struct sockaddr_storage ss;
                        socklen_t len;
                        if (migration_parse_address(*a, true, &ss, &len, NULL) >= 0 && !migration_address_is_loopback(&ss))
                                return check_cleartext("from the non-loopback address", *a, err);
                }
        }
        r = incoming_budget(m, o, &budget, err);
        if (r < 0)
                return r;
        r = job_new(m, MIGRATION_INCOMING, devices, n, o, &j);
        if (r < 0)
                return r;
        j->options.budget = budget; /* what the job holds, for the total cap */
        if (getrandom(j->token, sizeof j->token, 0) != (ssize_t) sizeof j->token)
                return error_setf(err, -EIO, "cannot make a migration token: %m");
        format_token(j->token, j->token_hex);

        /* Owned from here: the devices are the job's while they change state. */
        r = job_register(j);
        if (r < 0)
                return r;
        r = move_group(j, VFIO_DEVICE_STATE_RESUMING, err);
        if (r < 0) {
                fail(j, MIGRATION_FAILED, 0, VFIOMIG_ERROR_TRANSITION_FAILED, "%s", err->text);
                TAKE_PTR(j); /* the manager keeps the failed job */
                return r;
        }

        memcpy(c.token, j->token, sizeof c.token);
        j->transport = !m->options.tls ? STREAM_TRANSPORT_CLEARTEXT
                       : stream_tls_context_ktls(m->options.tls) ? STREAM_TRANSPORT_TLS_KERNEL : STREAM_TRANSPORT_TLS_USER;
        c.device_count = (unsigned) n;
        c.budget = budget;
        c.stall_timeout_usec = o->stall_timeout_ms * 1000;
        c.io_uring = o->io_uring;
        for (size_t i = 0; i < n; i++) {
                c.devices[i] = devices[i]->dev;
                device_stream_info(devices[i], &c.infos[i]);
                c.data_fds[i] = devices[i]->session_fd;
                device_adopt_blob(devices[i], NULL, 0); /* only what this migration brings */
        }
        r = stream_in_new(&c, &j->in, err);
        if (r >= 0)
                r = watch_engine(j, stream_in_event_fd(j->in));
        if (r >= 0)
                r = stream_listener_register(listener, j->in);
        if (r < 0) {
                fail(j, MIGRATION_FAILED, 0, VFIOMIG_ERROR_TRANSFER_FAILED, "cannot set up the receiving side: %s",
                     err->text[0] ? err->text : strerror(-r));
                TAKE_PTR(j);
                return r;
        }
        log_info("Migration %u: waiting for %zu device%s.", j->id, n, n == 1 ? "" : "s");
        *ret = TAKE_PTR(j);
        return 0;
}

int migration_switchover(Migration *j, ErrorMessage *err) {
        if (j->direction != MIGRATION_OUTGOING)
                return error_setf(err, -EINVAL, "migration %u is incoming: the source decides when to switch over",
                                  j->id);
        if (j->phase != MIGRATION_SETUP && j->phase != MIGRATION_PRECOPY)
                return error_setf(err, -EBUSY, "migration %u is in %s: switchover happens in pre-copy", j->id,
                                  migration_phase_to_string(j->phase));
        if (!j->switchover_requested) {
                j->switchover_requested = true;
                log_info("Migration %u: switchover requested%s.", j->id,
                         all_initial_loaded(j) ? "" : "; it happens once the destination has loaded the initial data");
                notify_changed(j);
        }
        consider_switchover(j, 0);
        return 0;
}

int migration_cancel(Migration *j, ErrorMessage *err) {
        if (migration_phase_is_final(j->phase))
                return error_setf(err, -EBUSY, "migration %u has %s already", j->id,
                                  j->phase == MIGRATION_COMPLETED ? "completed" : "ended");
        if (j->phase == MIGRATION_INDETERMINATE)
                return error_setf(err, -EBUSY, "migration %u is indeterminate: ask the destination job whether it "
                                  "committed and call Resolve()", j->id);
        fail(j, MIGRATION_CANCELLED, STREAM_ABORT_CANCELLED, VFIOMIG_ERROR_CANCELLED, "cancelled by request in %s",
             migration_phase_to_string(j->phase));
        return 0;
}

int migration_resolve(Migration *j, const char *outcome, ErrorMessage *err) {
        bool committed;
        int r;

        if (streq_ptr(outcome, VFIOMIG_OUTCOME_COMMITTED))
                committed = true;
        else if (streq_ptr(outcome, VFIOMIG_OUTCOME_NOT_COMMITTED))
                committed = false;
        else
                return error_setf(err, -EINVAL, "the outcome is \"%s\" or \"%s\", not \"%s\"", VFIOMIG_OUTCOME_COMMITTED,
                                  VFIOMIG_OUTCOME_NOT_COMMITTED, outcome ?: "");
        if (j->direction != MIGRATION_OUTGOING || j->phase != MIGRATION_INDETERMINATE)
                return error_setf(err, -EBUSY, "migration %u is %s %s: only an indeterminate outgoing job is resolved",
                                  j->id, migration_direction_to_string(j->direction), migration_phase_to_string(j->phase));

        log_info("Migration %u: resolved as %s by request.", j->id, outcome);
        j->phase = MIGRATION_STOP_COPY; /* finish() wants a job that has not ended */
        if (committed) {
                r = move_group(j, VFIO_DEVICE_STATE_STOP, err);
                if (r < 0)
                        /* The destination has the state; the source devices stay in stop-copy. */
                        log_warning("Migration %u: the destination committed, but the source devices could not "
                                    "leave stop-copy: %s", j->id, err->text);
                *err = (ErrorMessage) {};
                j->committed = true;
                j->error = mfree(j->error);
                j->error_name = NULL;
                finish(j, MIGRATION_COMPLETED);
                return 0;
        }
        give_devices_back(j);
        finish(j, MIGRATION_FAILED);
        return 0;
}

void manager_forget_migrated_device(Manager *m, Device *d) {
        for (size_t i = 0; i < m->n_migrations; i++) {
                Migration *j = m->migrations[i];
                for (size_t k = 0; k < j->n_devices; k++)
                        if (j->devices[k] == d) {
                                assert(migration_phase_is_final(j->phase));
                                j->devices[k] = NULL;
                        }
        }
}

void manager_stop_migrations(Manager *m, const char *why) {
        /* Backwards: finishing a job may prune older finished ones, never newer ones. */
        for (size_t i = m->n_migrations; i > 0; i--) {
                Migration *j = m->migrations[i - 1];
                if (!migration_phase_is_final(j->phase) && j->phase != MIGRATION_INDETERMINATE)
                        fail(j, MIGRATION_CANCELLED, STREAM_ABORT_CANCELLED, VFIOMIG_ERROR_CANCELLED, "%s", why);
        }
}

Migration *migration_free(Migration *j) {
        if (!j)
                return NULL;
        if (j->phase == MIGRATION_INDETERMINATE)
                /* The daemon stops: nobody can resolve the job any more, and running the devices
                 * could run a guest twice. They stay stopped, for an operator to decide. */
                log_warning("Migration %u is still indeterminate as the daemon stops: its devices stay stopped.", j->id);
        else if (!migration_phase_is_final(j->phase) && j->id != 0) {
                ManagerHooks saved = j->manager->hooks;

                /* The daemon stops: the job ends as a cancel would, but nobody is left to hear it. */
                j->manager->hooks = (ManagerHooks) {};
                set_error(j, VFIOMIG_ERROR_CANCELLED, "the daemon stopped");
                if (j->out)
                        stream_out_abort(j->out, STREAM_ABORT_CANCELLED, "the daemon stopped");
                if (j->in)
                        stream_in_abort(j->in, STREAM_ABORT_CANCELLED, "the daemon stopped");
                stop_engine(j);
                give_devices_back(j);
                release_devices(j);
                j->phase = MIGRATION_CANCELLED;
                j->manager->hooks = saved;
        }
        stop_engine(j);
        release_devices(j);
        for (size_t i = 0; i < j->n_devices; i++)
                free(j->device_ids[i]);
        free(j->peer);
        free(j->error);
        free(j);
        return NULL;
}

uint64_t migration_bytes_transferred(Migration *j) {
        if (!migration_phase_is_final(j->phase))
                refresh_stats(j);
        return j->stats.bytes;
}

uint64_t migration_duration_ms(Migration *j) {
        return ((migration_phase_is_final(j->phase) ? j->end_usec : now_usec()) - j->start_usec) / 1000;
}

bool migration_initial_data_loaded(Migration *j) {
        return all_initial_loaded(j);
}

unsigned migration_initial_data_reinits(Migration *j) {
        return j->initial_reinits;
}
