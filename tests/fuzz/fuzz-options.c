/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * libFuzzer target for the D-Bus option parsers: every method of the Manager and Device
 * interfaces that takes an a{sv} (AttachDevice, SetStates, CreateAddressSpace, PrepareIncoming,
 * StartMigration, SetState, SaveState, LoadState, and whatever is added to the vtables later) is
 * called through its real handler with a message whose arguments the input generates: option
 * keys from the documented ones (and unknown ones), values of the right, wrong and nested types,
 * strings, object paths and fds. So the tables, bus_read_options(), bus_read_option_value(),
 * the sim option parsers (device-options.c), and the peer, token, state and backend parsers all
 * see hostile input, as the daemon's handlers run them.
 *
 *     CC=clang meson setup build-fuzz -Dfuzz=true && ninja -C build-fuzz tests/fuzz/fuzz-options
 *     mkdir -p /tmp/corpus && build-fuzz/tests/fuzz/fuzz-options -max_total_time=600 -print_final_stats=1 \
 *             /tmp/corpus tests/fuzz/corpus/fuzz-options
 *
 * No call may get past validation: the caller of these messages cannot be identified (their bus
 * is a pipe, so there are no peer credentials), so bus_verify_polkit_async() refuses it, which
 * the target checks once at start. Validation must not change anything: after every call the
 * target checks that the manager holds the same devices, spaces and jobs, that its devices are
 * still idle in the same states, and that no descriptor was kept. The handlers' own refusals are
 * expected.
 *
 * Input: byte 0 chooses the method (modulo the number found); the rest drives a generator that
 * writes the method's arguments in the order of its signature. See gen_*() for how each type is
 * drawn; fuzz-seeds.c writes seeds with valid option sets for each method, which get as far as
 * polkit (FUZZ_OPTIONS_VERBOSE=1 fuzz-options FILE... says who refused each input, and why).
 */

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bus-polkit.h"
#include "bus-service.h"
#include "log.h"
#include "manager.h"
#include "vfiomig1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Two simulated devices: one running, one stopped (so that SaveState and LoadState get past
 * their state check). */
#define DEVICE_NAME "fuzz0"
#define STOPPED_DEVICE_NAME "fuzz1"
#define FUZZ_STRING_MAX 96
#define FUZZ_ARRAY_MAX 6
#define FUZZ_DEPTH_MAX 4

typedef struct Input {
        const uint8_t *p;
        size_t n;
} Input;

static uint8_t take8(Input *in) {
        uint8_t v;
        if (in->n == 0)
                return 0;
        v = *in->p++;
        in->n--;
        return v;
}

static uint64_t take_bytes(Input *in, size_t k) {
        uint64_t v = 0;
        for (size_t i = 0; i < k; i++)
                v |= (uint64_t) take8(in) << (8 * i);
        return v;
}

/* Numbers: mostly edges and small values, else raw bytes. */
static uint64_t take_number(Input *in, unsigned bits) {
        static const uint64_t edges[] = { 0, 1, 2, 63, 64, 65, 300, 1000, 4096, 65536, 1u << 20, 1u << 24,
                                          UINT64_C(86400000), UINT64_C(86400001), UINT32_MAX, UINT64_MAX };
        uint8_t how = take8(in);
        uint64_t v;

        if (how < 0x80)
                v = edges[how % ELEMENTSOF(edges)];
        else
                v = take_bytes(in, bits / 8);
        return bits == 64 ? v : v & ((UINT64_C(1) << bits) - 1);
}

/* Every string the parsers give a meaning to, and some near misses. */
static const char *const words[] = {
        /* option keys */
        VFIOMIG_OPTION_BACKEND, VFIOMIG_OPTION_SIM_MAPPING, VFIOMIG_OPTION_RECOVER_STATE,
        VFIOMIG_OPTION_FORCE_WITHOUT_P2P, VFIOMIG_OPTION_CHANNELS, VFIOMIG_OPTION_PRECOPY,
        VFIOMIG_OPTION_BANDWIDTH_LIMIT, VFIOMIG_OPTION_SWITCHOVER, VFIOMIG_OPTION_DOWNTIME_LIMIT,
        VFIOMIG_OPTION_IO_URING, VFIOMIG_OPTION_RUN, VFIOMIG_OPTION_REASSEMBLY_BUDGET,
        VFIOMIG_OPTION_STALL_TIMEOUT,
        "state-size", "precopy-size", "dirty-rate", "flags", "seed", "mtty-quirks", "fail-arcs", "error-arcs",
        "arc-latency-usec", "latency-arcs", "reinit", "precopy-v2",
        /* values */
        "auto", "manual", "iommufd", "legacy", "sim", "by-file", "by-address", "stop-copy", "p2p", "pre-copy",
        "running", "stop", "resuming", "running-p2p", "pre-copy-p2p", "error", "running>stop", "stop>stop-copy",
        "stop>stop", ("sim:" DEVICE_NAME), "sim:other", "sim:", "0000:3b:00.1", "/sys/bus/pci/devices/x",
        "127.0.0.1:7179", "[::1]:7179", "localhost:1", "::1", "1.2.3.4", "[::1]", "host:0", "host:65536",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdeg", "",
};

static const char *gen_word_or_string(Input *in, char *buf) {
        uint8_t how = take8(in);
        size_t n = 0, len;

        if (how < 0xa0)
                return words[how % ELEMENTSOF(words)];
        /* raw: sd-bus refuses strings that are not UTF-8 on receipt, so keep to 7-bit bytes */
        len = take8(in) % (FUZZ_STRING_MAX + 1);
        for (size_t i = 0; i < len && in->n > 0; i++) {
                uint8_t c = take8(in) & 0x7f;
                if (c)
                        buf[n++] = (char) c;
        }
        buf[n] = '\0';
        return buf;
}

static const char *gen_path(Input *in, char *buf, size_t size) {
        static const char *const paths[] = {
                VFIOMIG_DEVICE_PATH_PREFIX "/sim_" DEVICE_NAME,
                VFIOMIG_DEVICE_PATH_PREFIX "/sim_" STOPPED_DEVICE_NAME,
                VFIOMIG_DEVICE_PATH_PREFIX "/sim_other",
                VFIOMIG_DEVICE_PATH_PREFIX,
                VFIOMIG_DEVICE_PATH_PREFIX "/sim_" DEVICE_NAME "/x",
                "/org/vfiomig1",
                "/",
        };
        uint8_t how = take8(in);
        size_t n;

        if (how < 0xc0)
                return paths[how % ELEMENTSOF(paths)];
        /* a device path with an id made of the characters an object path allows */
        n = (size_t) snprintf(buf, size, "%s/", VFIOMIG_DEVICE_PATH_PREFIX);
        for (size_t len = take8(in) % 24, i = 0; i < len && n + 1 < size; i++) {
                static const char alphabet[] = "abcdefghijklmnopqrstuvwxyz_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
                buf[n++] = alphabet[take8(in) % (sizeof alphabet - 1)];
        }
        if (buf[n - 1] == '/')
                buf[n++] = 'x';
        buf[n] = '\0';
        return buf;
}

/* The fds a caller could pass: a memfd, both ends of a pipe, a read-only /dev/null, a socket. */
static int fds[5] = { -EBADF, -EBADF, -EBADF, -EBADF, -EBADF };

static int gen_value(sd_bus_message *m, const char *type, size_t type_len, Input *in, unsigned depth);

/* The length of the single complete type at the start of sig, or 0 when it is malformed. */
static size_t single_type_len(const char *sig) {
        switch (sig[0]) {
        case 'a': {
                size_t k = single_type_len(sig + 1);
                return k ? k + 1 : 0;
        }
        case '(':
        case '{': {
                char close = sig[0] == '(' ? ')' : '}';
                size_t i = 1;
                while (sig[i] && sig[i] != close) {
                        size_t k = single_type_len(sig + i);
                        if (!k)
                                return 0;
                        i += k;
                }
                return sig[i] == close ? i + 1 : 0;
        }
        case '\0':
        case ')':
        case '}':
                return 0;
        default:
                return 1;
        }
}

/* A variant: the type an option should have, another basic type, a string list, or a nested
 * variant or dict, as a confused or hostile caller would send. */
static int gen_variant(sd_bus_message *m, Input *in, unsigned depth) {
        static const char *const types[] = { "s", "t", "u", "b", "as", "i", "y", "ay", "o", "v", "a{sv}", "(st)" };
        const char *t = types[take8(in) % (depth < FUZZ_DEPTH_MAX ? ELEMENTSOF(types) : 8)];
        int r;

        r = sd_bus_message_open_container(m, 'v', t);
        if (r < 0)
                return r;
        r = gen_value(m, t, strlen(t), in, depth + 1);
        if (r < 0)
                return r;
        return sd_bus_message_close_container(m);
}

/* An option dict: keys from the documented ones (or unknown), repeated keys allowed. */
static int gen_options(sd_bus_message *m, Input *in, unsigned depth) {
        unsigned n = take8(in) % (FUZZ_ARRAY_MAX + 1);
        int r;

        r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        for (unsigned i = 0; i < n && in->n > 0; i++) {
                char buf[FUZZ_STRING_MAX + 1];

                r = sd_bus_message_open_container(m, 'e', "sv");
                if (r < 0)
                        return r;
                r = sd_bus_message_append_basic(m, 's', gen_word_or_string(in, buf));
                if (r < 0)
                        return r;
                r = gen_variant(m, in, depth);
                if (r < 0)
                        return r;
                r = sd_bus_message_close_container(m);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(m);
}

static int gen_value(sd_bus_message *m, const char *type, size_t type_len, Input *in, unsigned depth) {
        char buf[FUZZ_STRING_MAX + 1], path[128], contents[64];
        int r;

        switch (type[0]) {
        case 's':
                return sd_bus_message_append_basic(m, 's', gen_word_or_string(in, buf));
        case 'o':
                return sd_bus_message_append_basic(m, 'o', gen_path(in, path, sizeof path));
        case 'h':
                return sd_bus_message_append_basic(m, 'h', &fds[take8(in) % ELEMENTSOF(fds)]);
        case 'b': {
                int b = take8(in) & 1;
                return sd_bus_message_append_basic(m, 'b', &b);
        }
        case 'y': {
                uint8_t y = take8(in);
                return sd_bus_message_append_basic(m, 'y', &y);
        }
        case 'n':
        case 'q': {
                uint16_t q = (uint16_t) take_number(in, 16);
                return sd_bus_message_append_basic(m, type[0], &q);
        }
        case 'u':
        case 'i': {
                uint32_t u = (uint32_t) take_number(in, 32);
                return sd_bus_message_append_basic(m, type[0], &u);
        }
        case 'd': {
                uint64_t bits = take_number(in, 64);
                double d;
                memcpy(&d, &bits, sizeof d);
                return sd_bus_message_append_basic(m, 'd', &d);
        }
        case 'g': {
                static const char *const signatures[] = { "", "s", "a{sv}", "ao", "(st)" };
                return sd_bus_message_append_basic(m, 'g', signatures[take8(in) % ELEMENTSOF(signatures)]);
        }
        case 't':
        case 'x': {
                uint64_t t = take_number(in, 64);
                return sd_bus_message_append_basic(m, type[0], &t);
        }
        case 'v':
                return gen_variant(m, in, depth);
        case 'a': {
                unsigned n;

                if (type_len == 5 && strncmp(type, "a{sv}", 5) == 0)
                        return gen_options(m, in, depth);
                if (type_len - 1 >= sizeof contents)
                        return -EINVAL;
                memcpy(contents, type + 1, type_len - 1);
                contents[type_len - 1] = '\0';
                r = sd_bus_message_open_container(m, 'a', contents);
                if (r < 0)
                        return r;
                n = take8(in) % (FUZZ_ARRAY_MAX + 1);
                for (unsigned i = 0; i < n && in->n > 0; i++) {
                        r = gen_value(m, contents, type_len - 1, in, depth + 1);
                        if (r < 0)
                                return r;
                }
                return sd_bus_message_close_container(m);
        }
        case '(':
        case '{': {
                if (type_len - 2 >= sizeof contents)
                        return -EINVAL;
                memcpy(contents, type + 1, type_len - 2);
                contents[type_len - 2] = '\0';
                r = sd_bus_message_open_container(m, type[0] == '(' ? 'r' : 'e', contents);
                if (r < 0)
                        return r;
                for (const char *t = contents; *t;) {
                        size_t k = single_type_len(t);
                        if (!k)
                                return -EINVAL;
                        r = gen_value(m, t, k, in, depth + 1);
                        if (r < 0)
                                return r;
                        t += k;
                }
                return sd_bus_message_close_container(m);
        }
        default:
                /* D-Bus has no other type: a signature the vtable should not have */
                fprintf(stderr, "fuzz-options: no generator for type '%c'\n", type[0]);
                abort();
        }
}

typedef struct Target {
        const char *interface;
        const char *path;
        const sd_bus_vtable *method;
        void *userdata;
} Target;

static struct {
        sd_bus *bus;
        Manager *manager;
        BusService service;
        Device *devices[2];
        Target targets[64];
        size_t n_targets;
        bool verbose;
} f;

static void add_targets(const char *interface, const char *path, const sd_bus_vtable *vtable, void *userdata) {
        for (const sd_bus_vtable *v = vtable; v->type != _SD_BUS_VTABLE_END; v++) {
                if (v->type != _SD_BUS_VTABLE_METHOD || !strstr(v->x.method.signature ?: "", "a{sv}"))
                        continue;
                if (f.n_targets >= ELEMENTSOF(f.targets))
                        abort();
                f.targets[f.n_targets++] = (Target) { interface, path, v, userdata };
        }
}

static int build_call(const Target *t, Input *in, sd_bus_message **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        static uint64_t cookie;
        int r;

        r = sd_bus_message_new_method_call(f.bus, &m, VFIOMIG_BUS_NAME, t->path, t->interface,
                                           t->method->x.method.member);
        if (r < 0)
                return r;
        for (const char *sig = t->method->x.method.signature; *sig;) {
                size_t k = single_type_len(sig);
                if (!k)
                        abort();
                r = gen_value(m, sig, k, in, 0);
                if (r < 0)
                        return r;
                sig += k;
        }
        r = sd_bus_message_seal(m, ++cookie, 0);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(m);
        return 0;
}

typedef struct Snapshot {
        int lowest_free_fd;   /* a descriptor kept by a refused call takes the lowest free one */
        size_t n_devices, n_spaces, n_migrations;
        MigState state[2];
        bool idle[2];
} Snapshot;

static int lowest_free_fd(void) {
        int fd = fcntl(fds[3], F_DUPFD_CLOEXEC, 0);
        if (fd < 0)
                abort();
        close(fd);
        return fd;
}

static Snapshot snapshot(void) {
        Snapshot s = {
                .lowest_free_fd = lowest_free_fd(),
                .n_devices = f.manager->n_devices,
                .n_spaces = f.manager->n_spaces,
                .n_migrations = f.manager->n_migrations,
        };
        for (size_t i = 0; i < ELEMENTSOF(f.devices); i++) {
                s.state[i] = f.devices[i]->state;
                s.idle[i] = !f.devices[i]->busy && !f.devices[i]->migration && f.devices[i]->session_fd < 0;
        }
        return s;
}

static bool snapshot_equal(const Snapshot *a, const Snapshot *b) {
        if (a->lowest_free_fd != b->lowest_free_fd || a->n_devices != b->n_devices || a->n_spaces != b->n_spaces ||
            a->n_migrations != b->n_migrations)
                return false;
        for (size_t i = 0; i < ELEMENTSOF(f.devices); i++)
                if (a->state[i] != b->state[i] || a->idle[i] != b->idle[i])
                        return false;
        return true;
}

static int setup(void) {
        ManagerOptions mo = { .allow_simulated = true, .max_devices = 3 };
        TransitionReport report;
        ManagerHooks hooks = { .userdata = &f.service };
        AttachOptions ao;
        ErrorMessage err = {};
        int r, pipe_fds[2];

        log_set_max_level(LOG_CRIT);

        /* A bus object to make messages on. Over a pipe, so that nothing can tell who sent them. */
        if (pipe2(pipe_fds, O_CLOEXEC) < 0)
                return -errno;
        r = sd_bus_new(&f.bus);
        if (r >= 0)
                r = sd_bus_set_fd(f.bus, pipe_fds[0], pipe_fds[1]);
        if (r >= 0)
                r = sd_bus_start(f.bus);
        if (r < 0)
                return r;

        r = manager_new(&mo, &f.manager);
        if (r < 0)
                return r;
        manager_set_hooks(f.manager, &hooks);
        attach_options_init(&ao);
        r = manager_attach(f.manager, "sim:" DEVICE_NAME, &ao, &f.devices[0], &err);
        if (r >= 0)
                r = manager_attach(f.manager, "sim:" STOPPED_DEVICE_NAME, &ao, &f.devices[1], &err);
        if (r >= 0)
                r = device_set_state(f.devices[1], VFIO_DEVICE_STATE_STOP, TRANSITION_NO_RECOVER, &report, &err);
        if (r < 0) {
                fprintf(stderr, "fuzz-options: cannot set up the simulated devices: %s\n", err.text);
                return r;
        }
        f.service.manager = f.manager;

        fds[0] = memfd_create("fuzz-options", MFD_CLOEXEC);
        if (fds[0] >= 0 && ftruncate(fds[0], 4096) < 0)
                return -errno;
        if (pipe2(pipe_fds, O_CLOEXEC) < 0)
                return -errno;
        fds[1] = pipe_fds[0];
        fds[2] = pipe_fds[1];
        fds[3] = open("/dev/null", O_RDONLY | O_CLOEXEC);
        fds[4] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        for (size_t i = 0; i < ELEMENTSOF(fds); i++)
                if (fds[i] < 0)
                        return -errno;

        add_targets(VFIOMIG_MANAGER_INTERFACE, VFIOMIG_MANAGER_PATH, bus_manager_vtable, &f.service);
        add_targets(VFIOMIG_DEVICE_INTERFACE, VFIOMIG_DEVICE_PATH_PREFIX "/sim_" DEVICE_NAME, bus_device_vtable,
                    f.devices[0]);
        add_targets(VFIOMIG_DEVICE_INTERFACE, VFIOMIG_DEVICE_PATH_PREFIX "/sim_" STOPPED_DEVICE_NAME,
                    bus_device_vtable, f.devices[1]);
        if (f.n_targets == 0)
                return -ENOENT;

        /* The guard everything above relies on: polkit refuses these callers. */
        {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                Input none = {};

                r = build_call(&f.targets[0], &none, &m);
                if (r < 0)
                        return r;
                r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MIGRATE, NULL, &f.service.polkit, &error);
                if (r >= 0) {
                        fprintf(stderr, "fuzz-options: polkit would let these calls through (%d): not running\n",
                                r);
                        abort();
                }
        }
        return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        int r = setup();
        if (r < 0) {
                fprintf(stderr, "fuzz-options: setup failed: %s\n", strerror(-r));
                abort();
        }
        /* Says who refused each input and why: FUZZ_OPTIONS_VERBOSE=1 fuzz-options SEED... */
        f.verbose = getenv("FUZZ_OPTIONS_VERBOSE");
        for (size_t i = 0; i < f.n_targets; i++)
                fprintf(stderr, "fuzz-options: target %zu: %s %s.%s(%s)\n", i, f.targets[i].path,
                        f.targets[i].interface, f.targets[i].method->x.method.member,
                        f.targets[i].method->x.method.signature);
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        Input in = { data, size };
        const Target *t;
        Snapshot before, after;
        int r;

        if (size == 0)
                return 0;
        t = &f.targets[take8(&in) % f.n_targets];
        if (build_call(t, &in, &m) < 0)
                return 0;

        before = snapshot();
        r = t->method->x.method.handler(m, t->userdata, &error);
        after = snapshot();
        if (f.verbose)
                fprintf(stderr, "fuzz-options: %s: r=%d %s: %s\n", t->method->x.method.member, r, error.name ?: "-",
                        error.message ?: strerror(r < 0 ? -r : r));
        if (!snapshot_equal(&before, &after)) {
                fprintf(stderr, "fuzz-options: %s changed the daemon's state or kept an fd though polkit refused the "
                        "caller (r=%d, %s)\n", t->method->x.method.member, r, error.name ?: "no error");
                abort();
        }
        if (r >= 0) {
                fprintf(stderr, "fuzz-options: %s was not refused (r=%d)\n", t->method->x.method.member, r);
                abort();
        }
        return 0;
}
