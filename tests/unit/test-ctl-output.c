/* SPDX-License-Identifier: GPL-2.0-or-later */
/* vfiomigctl's output helpers and error hints (client/ctl-output.h, client/ctl-bus.h). */

#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl-bus.h"
#include "ctl-output.h"
#include "vfiomig1.h"

/* Runs print into a memory stream and returns what it wrote. */
#define CAPTURE(call)                                                   \
        ({                                                              \
                char *_buf = NULL;                                      \
                size_t _size = 0;                                       \
                FILE *_f = open_memstream(&_buf, &_size);               \
                cr_assert_not_null(_f);                                 \
                cr_assert_eq(call(_f), 0);                              \
                cr_assert_eq(fclose(_f), 0);                            \
                _buf;                                                   \
        })

static void assert_bytes(uint64_t v, const char *expected) {
        char buf[FORMAT_BYTES_MAX];

        cr_assert_str_eq(format_bytes(buf, sizeof(buf), v), expected, "%" PRIu64, v);
}

Test(ctl_output, format_bytes) {
        assert_bytes(0, "0 B");
        assert_bytes(1023, "1023 B");
        assert_bytes(1024, "1.0 KiB");
        assert_bytes(1536, "1.5 KiB");
        assert_bytes(2047, "1.9 KiB"); /* rounded down, never overstated */
        assert_bytes(UINT64_C(1) << 20, "1.0 MiB");
        assert_bytes((UINT64_C(5) << 30) + (UINT64_C(1) << 29), "5.5 GiB");
        assert_bytes(UINT64_C(1) << 40, "1.0 TiB");
        assert_bytes(UINT64_C(1) << 50, "1.0 PiB");
        assert_bytes(UINT64_MAX, "15.9 EiB");
}

Test(ctl_output, strv_join_spaces) {
        char *a[] = { "iommufd", "vfio-cdev", "io_uring", NULL }, *none[] = { NULL };
        _cleanup_free_ char *s = NULL, *e = NULL, *n = NULL;

        s = strv_join_spaces(a);
        cr_assert_str_eq(s, "iommufd vfio-cdev io_uring");
        e = strv_join_spaces(none);
        cr_assert_str_eq(e, "");
        n = strv_join_spaces(NULL);
        cr_assert_str_eq(n, "");
}

static Table *table;

static int print_table(FILE *f) {
        return table_print(table, f);
}

Test(ctl_output, table_aligns_columns) {
        static const char *const headers[] = { "ID", "ADDRESS", "STATE" };
        _cleanup_free_ char *out = NULL;

        table = table_new(headers, ELEMENTSOF(headers));
        cr_assert_not_null(table);
        cr_assert_eq(table_n_rows(table), 0);
        cr_assert_eq(table_add_row(table, (const char *const[]) { "sim_gpu0", "sim:gpu0", "running" }), 0);
        cr_assert_eq(table_add_row(table, (const char *const[]) { "pci_0000_3b_00_1", "0000:3b:00.1", NULL }), 0);
        cr_assert_eq(table_n_rows(table), 2);

        out = CAPTURE(print_table);
        cr_assert_str_eq(out,
                         "ID                ADDRESS       STATE\n"
                         "sim_gpu0          sim:gpu0      running\n"
                         "pci_0000_3b_00_1  0000:3b:00.1  -\n");
        table = table_free(table);
        cr_assert_null(table);
}

Test(ctl_output, table_header_only) {
        static const char *const headers[] = { "ID", "STATE" };
        _cleanup_free_ char *out = NULL;

        table = table_new(headers, ELEMENTSOF(headers));
        out = CAPTURE(print_table);
        cr_assert_str_eq(out, "ID  STATE\n");
        table = table_free(table);
        cr_assert_null(table_new(headers, 0));
}

static json_object *doc;

static int print_short(FILE *f) {
        return json_print(doc, JSON_FORMAT_SHORT, f);
}

static int print_pretty(FILE *f) {
        return json_print(doc, JSON_FORMAT_PRETTY, f);
}

Test(ctl_output, json_members_and_formats) {
        char *flags[] = { "stop-copy", "p2p", NULL };
        _cleanup_free_ char *s = NULL, *p = NULL;

        doc = json_object_new_object();
        cr_assert_eq(json_add_string(doc, "object", "/org/vfiomig1/device/sim_gpu0"), 0);
        cr_assert_eq(json_add_string(doc, "reason", NULL), 0);
        cr_assert_eq(json_add_bool(doc, "migratable", true), 0);
        cr_assert_eq(json_add_uint64(doc, "stop_copy_size", UINT64_MAX), 0);
        cr_assert_eq(json_add_strv(doc, "migration_flags", flags), 0);
        cr_assert_eq(json_add_strv(doc, "none", NULL), 0);

        /* Object paths stay readable: no "\/" escapes. 2^64-1 stays exact, not a double. */
        s = CAPTURE(print_short);
        cr_assert_str_eq(s,
                         "{\"object\":\"/org/vfiomig1/device/sim_gpu0\",\"reason\":null,\"migratable\":true,"
                         "\"stop_copy_size\":18446744073709551615,\"migration_flags\":[\"stop-copy\",\"p2p\"],"
                         "\"none\":[]}\n");

        p = CAPTURE(print_pretty);
        cr_assert(strchr(p, '\n') < p + strlen(p) - 1, "pretty output spans lines: %s", p);
        cr_assert_not_null(strstr(p, "\"migratable\": true"), "%s", p);

        json_object_put(doc);
}

Test(ctl_output, every_named_error_has_a_hint) {
        static const char *const names[] = {
                VFIOMIG_ERROR_NO_SUCH_DEVICE, VFIOMIG_ERROR_NOT_MIGRATABLE, VFIOMIG_ERROR_INVALID_TRANSITION,
                VFIOMIG_ERROR_TRANSITION_FAILED, VFIOMIG_ERROR_DEVICE_IN_ERROR, VFIOMIG_ERROR_P2P_REQUIRED,
                VFIOMIG_ERROR_BUSY, VFIOMIG_ERROR_LIMIT_EXCEEDED, VFIOMIG_ERROR_NOT_SUPPORTED,
                VFIOMIG_ERROR_DEVICE_FAILED, VFIOMIG_ERROR_NO_PRECOPY_SESSION,
                VFIOMIG_ERROR_NO_SUCH_ADDRESS_SPACE, VFIOMIG_ERROR_MAPPING_CONFLICT, VFIOMIG_ERROR_NO_SUCH_MAPPING,
                VFIOMIG_ERROR_DMA_FAULT, VFIOMIG_ERROR_NO_SUCH_MIGRATION, VFIOMIG_ERROR_PEER_UNREACHABLE,
                VFIOMIG_ERROR_PEER_REJECTED, VFIOMIG_ERROR_PEER_VIOLATION, VFIOMIG_ERROR_PEER_ABORTED,
                VFIOMIG_ERROR_PEER_LOST, VFIOMIG_ERROR_CANCELLED,
                "org.freedesktop.DBus.Error.AccessDenied", "org.freedesktop.DBus.Error.ServiceUnknown",
                "org.freedesktop.DBus.Error.NameHasNoOwner", "org.freedesktop.DBus.Error.InvalidArgs",
        };

        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                const char *hint = ctl_bus_error_hint(names[i]);

                cr_assert_not_null(hint, "%s", names[i]);
                cr_assert_null(strchr(hint, '\n'), "%s: a hint is one line", names[i]);
        }

        cr_assert_str_eq(ctl_bus_error_hint("org.freedesktop.DBus.Error.AccessDenied"),
                         "not authorized: run as root or get the polkit action granted");
        cr_assert_str_eq(ctl_bus_error_hint("org.freedesktop.DBus.Error.ServiceUnknown"),
                         "vfiomigd is not running on this bus");
        cr_assert_str_eq(ctl_bus_error_hint("org.freedesktop.DBus.Error.NameHasNoOwner"),
                         "vfiomigd is not running on this bus");
        cr_assert_null(ctl_bus_error_hint("org.vfiomig1.Error.Unheard"));
        cr_assert_null(ctl_bus_error_hint(NULL));
}

Test(ctl_output, hints_for_address_spaces_name_the_commands) {
        cr_assert_not_null(strstr(ctl_bus_error_hint(VFIOMIG_ERROR_NO_SUCH_ADDRESS_SPACE), "space list"));
        cr_assert_not_null(strstr(ctl_bus_error_hint(VFIOMIG_ERROR_MAPPING_CONFLICT), "space show"));
        cr_assert_not_null(strstr(ctl_bus_error_hint(VFIOMIG_ERROR_NO_SUCH_MAPPING), "space show"));
        cr_assert_not_null(strstr(ctl_bus_error_hint(VFIOMIG_ERROR_DMA_FAULT), "AddressSpace"));
        cr_assert_not_null(strstr(ctl_bus_error_hint(VFIOMIG_ERROR_LIMIT_EXCEEDED), "MaxMappings"));
}

static const void *dump_data;
static size_t dump_size;
static uint64_t dump_base;

static int print_dump(FILE *f) {
        return hexdump(f, dump_base, dump_data, dump_size);
}

Test(ctl_output, hexdump_like_hexdump_c) {
        static const char text[] = "Hello, DMA world\x01\x7f\x80 end";
        _cleanup_free_ char *out = NULL, *empty = NULL, *wide = NULL;

        dump_data = text;
        dump_size = sizeof(text) - 1;
        dump_base = 0x100000;
        out = CAPTURE(print_dump);
        cr_assert_str_eq(out,
                         "00100000  48 65 6c 6c 6f 2c 20 44  4d 41 20 77 6f 72 6c 64  |Hello, DMA world|\n"
                         "00100010  01 7f 80 20 65 6e 64                              |... end|\n");

        dump_size = 0;
        empty = CAPTURE(print_dump);
        cr_assert_str_eq(empty, "");

        /* IOVAs past 32 bits widen the address column rather than cut it. */
        dump_size = 8;
        dump_base = UINT64_C(0x123456789a);
        wide = CAPTURE(print_dump);
        cr_assert_str_eq(wide, "123456789a  48 65 6c 6c 6f 2c 20 44                           |Hello, D|\n");
}

static void assert_base64(const char *in, size_t n, const char *expected) {
        _cleanup_free_ char *s = base64_encode(in, n);

        cr_assert_not_null(s);
        cr_assert_str_eq(s, expected, "%zu bytes", n);
}

Test(ctl_output, base64_rfc4648_vectors) {
        assert_base64("", 0, "");
        assert_base64("f", 1, "Zg==");
        assert_base64("fo", 2, "Zm8=");
        assert_base64("foo", 3, "Zm9v");
        assert_base64("foob", 4, "Zm9vYg==");
        assert_base64("fooba", 5, "Zm9vYmE=");
        assert_base64("foobar", 6, "Zm9vYmFy");
        assert_base64("\xff\xfe\x00", 3, "//4A");
        assert_base64("Hello, DMA world", 16, "SGVsbG8sIERNQSB3b3JsZA==");
}

Test(ctl_output, system_bus_address_follows_the_environment) {
        cr_assert_eq(unsetenv("DBUS_SYSTEM_BUS_ADDRESS"), 0);
        cr_assert_str_eq(ctl_system_bus_address(), "unix:path=/run/dbus/system_bus_socket");
        cr_assert_eq(setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/tmp/x", 1), 0);
        cr_assert_str_eq(ctl_system_bus_address(), "unix:path=/tmp/x");
        cr_assert_eq(setenv("DBUS_SYSTEM_BUS_ADDRESS", "", 1), 0);
        cr_assert_str_eq(ctl_system_bus_address(), "unix:path=/run/dbus/system_bus_socket");
}

/* ---- migrations ---- */

static void assert_duration(uint64_t usec, const char *expected) {
        char buf[FORMAT_DURATION_MAX];

        cr_assert_str_eq(format_duration(buf, sizeof(buf), usec), expected, "%" PRIu64 " µs", usec);
}

Test(ctl_output, format_duration) {
        assert_duration(0, "0ms");
        assert_duration(999, "0ms");
        assert_duration(120 * 1000, "120ms");
        assert_duration(999999, "999ms");
        assert_duration(1000000, "1.0s");
        assert_duration(12345678, "12.3s");
        assert_duration(59999999, "59.9s");   /* rounded down: never "60.0s" */
        assert_duration(60000000, "1m00s");
        assert_duration(125 * UINT64_C(1000000), "2m05s");
        assert_duration(3599 * UINT64_C(1000000), "59m59s");
        assert_duration(3600 * UINT64_C(1000000), "1h00m");
        assert_duration((3600 + 125) * UINT64_C(1000000), "1h02m");
        assert_duration(UINT64_MAX, "5124095576h01m");
}

Test(ctl_output, format_rate) {
        char buf[FORMAT_RATE_MAX];

        cr_assert_str_eq(format_rate(buf, sizeof(buf), 0), "0 B/s");
        cr_assert_str_eq(format_rate(buf, sizeof(buf), 1000), "1000 B/s");
        cr_assert_str_eq(format_rate(buf, sizeof(buf), UINT64_C(512) << 20), "512.0 MiB/s");
        cr_assert_str_eq(format_rate(buf, sizeof(buf), UINT64_MAX), "15.9 EiB/s");
}

Test(ctl_output, eta) {
        uint64_t eta = 1234;

        /* 3 GiB left at 1 GiB/s. */
        cr_assert_eq(migration_eta_usec(UINT64_C(1) << 30, UINT64_C(4) << 30, UINT64_C(1) << 30, &eta), 0);
        cr_assert_eq(eta, 3 * UINT64_C(1000000));
        cr_assert_eq(migration_eta_usec(0, 2500, 1000, &eta), 0);
        cr_assert_eq(eta, 2500000);
        /* Below a second, milliseconds. */
        cr_assert_eq(migration_eta_usec(0, 250, 1000, &eta), 0);
        cr_assert_eq(eta, 250000);
        cr_assert_eq(migration_eta_usec(999, 1000, 1000, &eta), 0);
        cr_assert_eq(eta, 1000);
        /* Absurdly slow: saturates rather than wraps. */
        cr_assert_eq(migration_eta_usec(0, UINT64_MAX, 1, &eta), 0);
        cr_assert_eq(eta, UINT64_MAX);
        /* Absurdly fast: no overflow on the way. */
        cr_assert_eq(migration_eta_usec(0, UINT64_MAX - 1, UINT64_MAX, &eta), 0);
        cr_assert_leq(eta, UINT64_C(1000000));
        cr_assert_geq(eta, UINT64_C(999999));

        eta = 1234;
        cr_assert_eq(migration_eta_usec(100, 0, 1000, &eta), -ENODATA, "expected unknown");
        cr_assert_eq(migration_eta_usec(100, 1000, 0, &eta), -ENODATA, "no rate");
        cr_assert_eq(migration_eta_usec(1000, 1000, 10, &eta), -ENODATA, "all sent");
        cr_assert_eq(migration_eta_usec(2000, 1000, 10, &eta), -ENODATA, "more sent than expected");
        cr_assert_eq(eta, 1234, "a failure wrote the result");
        cr_assert_eq(migration_eta_usec(0, 1000, 10, NULL), -EINVAL);
}

Test(ctl_output, percent) {
        cr_assert_eq(migration_percent(0, 1000), 0);
        cr_assert_eq(migration_percent(299, 1000), 29);
        cr_assert_eq(migration_percent(999, 1000), 99);
        cr_assert_eq(migration_percent(1000, 1000), 100);
        cr_assert_eq(migration_percent(5000, 1000), 100);
        cr_assert_eq(migration_percent(UINT64_MAX - 1, UINT64_MAX), 99);
        cr_assert_eq(migration_percent(UINT64_MAX / 2, UINT64_MAX), 50);
        cr_assert_eq(migration_percent(5, 0), -ENODATA);
}

static void assert_progress(const MigrationProgress *p, const char *expected) {
        _cleanup_free_ char *s = format_migration_progress(p);

        cr_assert_not_null(s);
        cr_assert_str_eq(s, expected);
}

Test(ctl_output, progress_line) {
        assert_progress(&(MigrationProgress) {
                .phase = "precopy",
                .transferred = (UINT64_C(12) << 30) / 10,
                .expected = UINT64_C(4) << 30,
                .rate = UINT64_C(512) << 20,
        }, "precopy: 1.1 GiB of 4.0 GiB (29%), 512.0 MiB/s, ETA 5.6s");

        /* Nothing known about the total: no percentage, no ETA. */
        assert_progress(&(MigrationProgress) {
                .phase = "stop-copy",
                .transferred = UINT64_C(3) << 20,
                .expected = 0,
                .rate = UINT64_C(100) << 20,
        }, "stop-copy: 3.0 MiB, 100.0 MiB/s");

        /* No rate yet: the percentage, but no ETA. */
        assert_progress(&(MigrationProgress) {
                .phase = "setup",
                .transferred = 0,
                .expected = UINT64_C(1) << 30,
                .rate = 0,
        }, "setup: 0 B of 1.0 GiB (0%), 0 B/s");

        /* Pre-copy sent more than was expected (dirty data again): 100%, and no ETA of 0. */
        assert_progress(&(MigrationProgress) {
                .phase = "precopy",
                .transferred = UINT64_C(5) << 30,
                .expected = UINT64_C(4) << 30,
                .rate = UINT64_C(1) << 30,
        }, "precopy: 5.0 GiB of 4.0 GiB (100%), 1.0 GiB/s");

        /* Manual switchover, ready for it: say so, with the command, and no ETA (nothing moves
         * until the switchover). */
        assert_progress(&(MigrationProgress) {
                .phase = "precopy",
                .transferred = 2048,
                .expected = 4096,
                .rate = 1024,
                .ready_for_switchover = true,
                .id = 7,
        }, "precopy: 2.0 KiB of 4.0 KiB (50%), 1.0 KiB/s, ready: vfiomigctl switchover 7");

        /* Below a second, the ETA is in milliseconds. */
        assert_progress(&(MigrationProgress) {
                .phase = "stop-copy",
                .transferred = 900,
                .expected = 1000,
                .rate = 1000,
        }, "stop-copy: 900 B of 1000 B (90%), 1000 B/s, ETA 100ms");

        /* A daemon that has not said the phase yet. */
        assert_progress(&(MigrationProgress) { .phase = NULL }, "unknown: 0 B, 0 B/s");
        assert_progress(&(MigrationProgress) { .phase = "" }, "unknown: 0 B, 0 B/s");
        cr_assert_null(format_migration_progress(NULL));
}

static void assert_summary(const MigrationSummary *m, const char *expected) {
        _cleanup_free_ char *s = format_migration_summary(m);

        cr_assert_not_null(s);
        cr_assert_str_eq(s, expected);
}

Test(ctl_output, summary_line) {
        assert_summary(&(MigrationSummary) {
                .id = 3,
                .direction = "outgoing",
                .result = "completed",
                .bytes = UINT64_C(4) << 30,
                .duration_usec = 8 * UINT64_C(1000000),
                .downtime_ms = 120,
        }, "Migration 3 (outgoing) completed: 4.0 GiB in 8.0s (512.0 MiB/s), downtime 120ms");

        /* Duration not known (wait on a job already running); downtime not measured. */
        assert_summary(&(MigrationSummary) {
                .id = 4,
                .direction = "incoming",
                .result = "completed",
                .bytes = 1536,
        }, "Migration 4 (incoming) completed: 1.5 KiB, downtime unknown");

        /* A job that did not complete never had its downtime. */
        assert_summary(&(MigrationSummary) {
                .id = 5,
                .direction = "outgoing",
                .result = "failed",
                .bytes = UINT64_C(1) << 20,
                .duration_usec = 500000,
                .downtime_ms = 40,
        }, "Migration 5 (outgoing) failed: 1.0 MiB in 500ms (2.0 MiB/s)");

        assert_summary(&(MigrationSummary) {
                .id = 6,
                .result = "cancelled",
                .duration_usec = 61 * UINT64_C(1000000),
        }, "Migration 6 cancelled: 0 B in 1m01s (0 B/s)");

        /* Downtimes of seconds read as seconds; a huge rate does not overflow. */
        assert_summary(&(MigrationSummary) {
                .id = 7,
                .direction = "outgoing",
                .result = "completed",
                .bytes = UINT64_MAX,
                .duration_usec = 1,
                .downtime_ms = 2500,
        }, "Migration 7 (outgoing) completed: 15.9 EiB in 0ms (15.9 EiB/s), downtime 2.5s");

        /* The outcome is unknown: no downtime claimed (the source's devices are still stopped and
         * may never run there), the phase shown as the daemon names it. */
        assert_summary(&(MigrationSummary) {
                .id = 8,
                .direction = "outgoing",
                .result = "indeterminate",
                .bytes = UINT64_C(2) << 20,
                .duration_usec = 1000000,
                .downtime_ms = 300,
        }, "Migration 8 (outgoing) indeterminate: 2.0 MiB in 1.0s (2.0 MiB/s)");

        cr_assert_null(format_migration_summary(NULL));
}

static void assert_quoted(const char *s, const char *expected) {
        _cleanup_free_ char *q = shell_quote(s);

        cr_assert_not_null(q);
        cr_assert_str_eq(q, expected, "'%s'", s);
}

Test(ctl_output, shell_quote) {
        assert_quoted("sim:gpu0", "sim:gpu0");
        assert_quoted("0000:3b:00.1", "0000:3b:00.1");
        assert_quoted("/org/vfiomig1/device/sim_a", "/org/vfiomig1/device/sim_a");
        assert_quoted("192.0.2.7:7179", "192.0.2.7:7179");
        /* Brackets are globs to a shell. */
        assert_quoted("[2001:db8::1]:7179", "'[2001:db8::1]:7179'");
        assert_quoted("a b", "'a b'");
        assert_quoted("it's", "'it'\\''s'");
        assert_quoted("$HOME", "'$HOME'");
        assert_quoted("", "''");
        cr_assert_null(shell_quote(NULL));
}

Test(ctl_output, migration_hints) {
        cr_assert_not_null(strstr(ctl_bus_error_hint(VFIOMIG_ERROR_PEER_UNREACHABLE), "7179"));
        cr_assert_not_null(strstr(ctl_bus_error_hint(VFIOMIG_ERROR_PEER_UNREACHABLE), "vfiomigctl incoming"));
        cr_assert_not_null(strstr(ctl_bus_error_hint(VFIOMIG_ERROR_NO_SUCH_MIGRATION), "vfiomigctl jobs"));
        cr_assert_not_null(strstr(ctl_bus_error_hint(VFIOMIG_ERROR_CANCELLED), "keep running"));
}
