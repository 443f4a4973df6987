/* SPDX-License-Identifier: GPL-2.0-or-later */
/* vfiomigctl's command-line value parsing (client/ctl-parse.h), as the binary runs it. */

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl-parse.h"
#include "ctl-token.h"
#include "macro.h"

#define SENTINEL UINT64_C(0xdeadbeefdeadbeef)

static void assert_bytes(const char *s, bool rate, uint64_t expected);

static void assert_size(const char *s, uint64_t expected) {
        uint64_t v = SENTINEL;

        cr_assert_eq(ctl_parse_size(s, &v), 0, "'%s' should parse", s);
        cr_assert_eq(v, expected, "'%s' gave %" PRIu64 ", expected %" PRIu64, s, v, expected);
}

static void assert_size_fails(const char *s, int error) {
        uint64_t v = SENTINEL;

        cr_assert_eq(ctl_parse_size(s, &v), error, "'%s' should fail with %d", s, error);
        cr_assert_eq(v, SENTINEL, "'%s' wrote the result on failure", s);
}

Test(ctl_parse, size_plain_and_hex) {
        assert_size("0", 0);
        assert_size("4096", 4096);
        assert_size("010", 10); /* decimal, never octal */
        assert_size("0x1000", 4096);
        assert_size("0X1f", 31);
        assert_size("0xABCdef", 0xabcdef);
        assert_size("0x0", 0);
        assert_size("18446744073709551615", UINT64_MAX);
        assert_size("0xffffffffffffffff", UINT64_MAX);
}

Test(ctl_parse, sizes_and_lengths_share_one_grammar) {
        /* N (lengths, offsets, addresses) takes what SIZE takes, and hex besides. */
        assert_size("1.5M", UINT64_C(3) << 19);
        assert_size("4KB", 4096);
        assert_size("512B", 512);
        assert_size("0x10KiB", 16384);
        assert_bytes("0x10M", false, UINT64_C(16) << 20);
        assert_bytes("0x1000", true, 4096);
}

Test(ctl_parse, size_suffixes) {
        assert_size("4K", 4096);
        assert_size("4KiB", 4096);
        assert_size("1M", UINT64_C(1) << 20);
        assert_size("2MiB", UINT64_C(2) << 20);
        assert_size("3G", UINT64_C(3) << 30);
        assert_size("3GiB", UINT64_C(3) << 30);
        assert_size("1T", UINT64_C(1) << 40);
        assert_size("5TiB", UINT64_C(5) << 40);
        assert_size("0x10K", 16384);
        assert_size("0K", 0);
        assert_size("16777215T", UINT64_C(16777215) << 40);
}

Test(ctl_parse, size_rejects_malformed) {
        static const char *const bad[] = {
                "", "-1", "+1", " 1", "1 ", "1 K", "0x", "x10", "1e3", "0xG", "1Ki", "0x1.5K", "1.5",
                "1KIB", "1k", "K", "0x-1", "1,000", "99999999999999999999999xyz", "4K/s",
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                assert_size_fails(bad[i], -EINVAL);
        cr_assert_eq(ctl_parse_size(NULL, &(uint64_t) { 0 }), -EINVAL);
}

Test(ctl_parse, size_rejects_overflow) {
        assert_size_fails("18446744073709551616", -ERANGE);
        assert_size_fails("0x10000000000000000", -ERANGE);
        assert_size_fails("99999999999999999999999", -ERANGE);
        assert_size_fails("16777216T", -ERANGE);  /* exactly 2^64 */
        assert_size_fails("0xffffffffffffffffK", -ERANGE);
        assert_size_fails("17179869184G", -ERANGE);
}

Test(ctl_parse, boolean) {
        static const char *const yes[] = { "1", "yes", "true", "on", "YES", "True", "ON" };
        static const char *const no[] = { "0", "no", "false", "off", "NO", "False", "Off" };
        static const char *const bad[] = { "", "2", "y", "n", "t", "enable", "yes ", " no", "10" };

        for (size_t i = 0; i < ELEMENTSOF(yes); i++)
                cr_assert_eq(ctl_parse_boolean(yes[i]), 1, "'%s'", yes[i]);
        for (size_t i = 0; i < ELEMENTSOF(no); i++)
                cr_assert_eq(ctl_parse_boolean(no[i]), 0, "'%s'", no[i]);
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                cr_assert_eq(ctl_parse_boolean(bad[i]), -EINVAL, "'%s'", bad[i]);
        cr_assert_eq(ctl_parse_boolean(NULL), -EINVAL);
}

Test(ctl_parse, strv) {
        _cleanup_strv_free_ char **empty = NULL, **one = NULL, **three = NULL;
        char **untouched = (char **) &untouched;

        cr_assert_eq(ctl_parse_strv("", &empty), 0);
        cr_assert_not_null(empty, "the empty list is a list, not NULL");
        cr_assert_null(empty[0]);

        cr_assert_eq(ctl_parse_strv("p2p", &one), 0);
        cr_assert_str_eq(one[0], "p2p");
        cr_assert_null(one[1]);

        cr_assert_eq(ctl_parse_strv("stop-copy,p2p,running>stop", &three), 0);
        cr_assert_str_eq(three[0], "stop-copy");
        cr_assert_str_eq(three[1], "p2p");
        cr_assert_str_eq(three[2], "running>stop");
        cr_assert_null(three[3]);

        static const char *const bad[] = { ",", "a,", ",a", "a,,b", ",," };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                cr_assert_eq(ctl_parse_strv(bad[i], &untouched), -EINVAL, "'%s'", bad[i]);
                cr_assert_eq(untouched, (char **) &untouched, "'%s' wrote the result on failure", bad[i]);
        }
}

Test(ctl_parse, timeout) {
        uint64_t usec = SENTINEL;

        cr_assert_eq(ctl_parse_timeout("1", &usec), 0);
        cr_assert_eq(usec, 1000000);
        cr_assert_eq(ctl_parse_timeout("2.5", &usec), 0);
        cr_assert_eq(usec, 2500000);
        cr_assert_eq(ctl_parse_timeout("0.000001", &usec), 0);
        cr_assert_eq(usec, 1);
        cr_assert_eq(ctl_parse_timeout("600", &usec), 0);
        cr_assert_eq(usec, 600000000);

        /* The one grammar of time spans: units, and parts together. */
        cr_assert_eq(ctl_parse_timeout("30s", &usec), 0);
        cr_assert_eq(usec, 30000000);
        cr_assert_eq(ctl_parse_timeout("1min", &usec), 0);
        cr_assert_eq(usec, 60000000);
        cr_assert_eq(ctl_parse_timeout("1min 30s", &usec), 0);
        cr_assert_eq(usec, 90000000);
        cr_assert_eq(ctl_parse_timeout("500ms", &usec), 0);
        cr_assert_eq(usec, 500000);

        usec = SENTINEL;
        cr_assert_eq(ctl_parse_timeout("0", &usec), -ERANGE);
        cr_assert_eq(ctl_parse_timeout("0.000", &usec), -ERANGE);
        cr_assert_eq(ctl_parse_timeout("0s", &usec), -ERANGE);
        cr_assert_eq(ctl_parse_timeout("18446744073709551615", &usec), -ERANGE);
        static const char *const bad[] = { "", ".5", "5.", "-1", "1 ", "0.0000001", "1e3", "0x10", "1x", "1 2",
                                           "1s 2", "s", "1S", "1sec5" };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                cr_assert_eq(ctl_parse_timeout(bad[i], &usec), -EINVAL, "'%s'", bad[i]);
        cr_assert_eq(usec, SENTINEL);
}

Test(ctl_parse, json_format) {
        cr_assert_eq(json_format_from_string("off"), JSON_FORMAT_OFF);
        cr_assert_eq(json_format_from_string("short"), JSON_FORMAT_SHORT);
        cr_assert_eq(json_format_from_string("pretty"), JSON_FORMAT_PRETTY);
        cr_assert_eq(json_format_from_string("Pretty"), _JSON_FORMAT_INVALID);
        cr_assert_eq(json_format_from_string(""), _JSON_FORMAT_INVALID);
        cr_assert_eq(json_format_from_string(NULL), _JSON_FORMAT_INVALID);
}

Test(ctl_parse, states_follow_the_bus_names) {
        /* Indexed by the kernel's enum vfio_device_mig_state. */
        static const char *const names[] = {
                "error", "stop", "running", "stop-copy", "resuming", "running-p2p", "pre-copy", "pre-copy-p2p",
        };
        _cleanup_free_ char *list = NULL;

        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                cr_assert_eq(ctl_state_from_string(names[i]), (int) i, "'%s'", names[i]);
                cr_assert_eq(ctl_state_is_settable(names[i]), i != 0, "'%s'", names[i]);
        }
        static const char *const bad[] = { "", "RUNNING", "stop_copy", "stopcopy", "p2p", " stop" };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                cr_assert_eq(ctl_state_from_string(bad[i]), -EINVAL, "'%s'", bad[i]);
                cr_assert_not(ctl_state_is_settable(bad[i]), "'%s'", bad[i]);
        }
        cr_assert_not(ctl_state_is_settable(NULL));

        list = ctl_settable_states_list();
        cr_assert_not_null(list);
        cr_assert_str_eq(list, "stop, running, stop-copy, resuming, running-p2p, pre-copy, pre-copy-p2p");
}

Test(ctl_parse, device_names) {
        cr_assert(ctl_device_name_is_valid("sim_gpu0"));
        cr_assert(ctl_device_name_is_valid("pci_0000_3b_00_1"));
        cr_assert(ctl_device_name_is_valid("sim:gpu0"));
        cr_assert(ctl_device_name_is_valid("0000:3b:00.1"));
        cr_assert(ctl_device_name_is_valid("/org/vfiomig1/device/sim_gpu0"));
        cr_assert(ctl_device_name_is_valid("/"));
        cr_assert_not(ctl_device_name_is_valid(""));
        cr_assert_not(ctl_device_name_is_valid(NULL));
        cr_assert_not(ctl_device_name_is_valid("/org//vfiomig1"));
        cr_assert_not(ctl_device_name_is_valid("/org/vfiomig1/"));
        cr_assert_not(ctl_device_name_is_valid("/org/vfio-mig1"));
}

Test(ctl_parse, sim_options_match_the_contract) {
        static const struct {
                const char *key, *signature;
        } expected[] = {
                { "state-size", "t" }, { "precopy-size", "t" }, { "dirty-rate", "t" }, { "flags", "as" },
                { "seed", "t" }, { "mtty-quirks", "b" }, { "fail-arcs", "as" }, { "error-arcs", "as" },
                { "arc-latency-usec", "t" }, { "latency-arcs", "as" }, { "reinit", "t" }, { "precopy-v2", "b" },
        };
        _cleanup_free_ char *keys = NULL;

        for (size_t i = 0; i < ELEMENTSOF(expected); i++) {
                const CtlSimOption *o = ctl_sim_option_find(expected[i].key);

                cr_assert_not_null(o, "'%s'", expected[i].key);
                cr_assert_str_eq(o->key, expected[i].key);
                cr_assert_str_eq(o->signature, expected[i].signature, "'%s'", expected[i].key);
        }
        cr_assert_null(ctl_sim_option_find("state_size"));
        cr_assert_null(ctl_sim_option_find("State-Size"));
        cr_assert_null(ctl_sim_option_find(""));
        cr_assert_null(ctl_sim_option_find(NULL));

        keys = ctl_sim_option_keys_list();
        cr_assert_not_null(keys);
        cr_assert_str_eq(keys, "state-size, precopy-size, dirty-rate, flags, seed, mtty-quirks, fail-arcs, error-arcs, "
                         "arc-latency-usec, latency-arcs, reinit, precopy-v2");
}

Test(ctl_parse, split_assignment) {
        _cleanup_free_ char *k1 = NULL, *k2 = NULL, *k3 = NULL;
        const char *v;

        cr_assert_eq(ctl_split_assignment("seed=7", &k1, &v), 0);
        cr_assert_str_eq(k1, "seed");
        cr_assert_str_eq(v, "7");

        cr_assert_eq(ctl_split_assignment("flags=", &k2, &v), 0);
        cr_assert_str_eq(k2, "flags");
        cr_assert_str_eq(v, "");

        /* Only the first '=' splits: values may contain more. */
        cr_assert_eq(ctl_split_assignment("fail-arcs=a=b", &k3, &v), 0);
        cr_assert_str_eq(k3, "fail-arcs");
        cr_assert_str_eq(v, "a=b");

        char *k = NULL;
        cr_assert_eq(ctl_split_assignment("seed", &k, &v), -EINVAL);
        cr_assert_eq(ctl_split_assignment("=7", &k, &v), -EINVAL);
        cr_assert_eq(ctl_split_assignment("", &k, &v), -EINVAL);
        cr_assert_null(k);
}

Test(ctl_parse, option_values_by_signature) {
        const CtlSimOption t = { "x", "t" }, u = { "x", "u" }, b = { "x", "b" }, s = { "x", "s" },
                           as = { "x", "as" }, ay = { "x", "ay" };
        CtlOptionValue v = {};

        cr_assert_eq(ctl_option_value_parse(&t, "64M", &v), 0);
        cr_assert_eq(v.option, &t);
        cr_assert_eq(v.u64, UINT64_C(64) << 20);
        ctl_option_value_done(&v);

        cr_assert_eq(ctl_option_value_parse(&u, "0xffffffff", &v), 0);
        cr_assert_eq(v.u64, UINT32_MAX);
        cr_assert_eq(ctl_option_value_parse(&u, "4G", &v), -ERANGE);

        cr_assert_eq(ctl_option_value_parse(&b, "on", &v), 0);
        cr_assert(v.boolean);
        cr_assert_eq(ctl_option_value_parse(&b, "off", &v), 0);
        cr_assert_not(v.boolean);

        cr_assert_eq(ctl_option_value_parse(&s, "", &v), 0);
        cr_assert_str_eq(v.str, "");
        ctl_option_value_done(&v);
        cr_assert_null(v.str);

        cr_assert_eq(ctl_option_value_parse(&as, "stop-copy,pre-copy", &v), 0);
        cr_assert_str_eq(v.strv[0], "stop-copy");
        cr_assert_str_eq(v.strv[1], "pre-copy");
        cr_assert_null(v.strv[2]);
        ctl_option_value_done(&v);
        cr_assert_null(v.strv);

        cr_assert_eq(ctl_option_value_parse(&t, "-1", &v), -EINVAL);
        cr_assert_eq(ctl_option_value_parse(&t, "1P", &v), -EINVAL);
        cr_assert_eq(ctl_option_value_parse(&t, "16777216T", &v), -ERANGE);
        cr_assert_eq(ctl_option_value_parse(&b, "maybe", &v), -EINVAL);
        cr_assert_eq(ctl_option_value_parse(&as, "a,", &v), -EINVAL);
        cr_assert_eq(ctl_option_value_parse(&ay, "x", &v), -EOPNOTSUPP);

}

Test(ctl_parse, every_contract_option_can_be_given_as_text) {
        /* A signature added to VFIOMIG_SIM_OPTIONS that the client cannot build fails here first. */
        static const char *const keys[] = {
                "state-size", "precopy-size", "dirty-rate", "flags", "seed", "mtty-quirks", "fail-arcs", "error-arcs",
                "arc-latency-usec", "latency-arcs", "reinit", "precopy-v2",
        };

        for (size_t i = 0; i < ELEMENTSOF(keys); i++) {
                const CtlSimOption *o = ctl_sim_option_find(keys[i]);
                const char *sample = streq(o->signature, "b") ? "yes" : "1";
                CtlOptionValue v = {};

                cr_assert_eq(ctl_option_value_parse(o, sample, &v), 0, "'%s'", keys[i]);
                cr_assert_not(strstr(ctl_signature_describe(o->signature), "cannot"), "'%s'", keys[i]);
                ctl_option_value_done(&v);
        }
}

Test(ctl_parse, space_names) {
        static const char *const good[] = {
                "s0", "s17", "S_1", "anything_0", "/org/vfiomig1/space/s0", "/org/vfiomig1/space/s123",
        };
        static const char *const bad[] = {
                "", "s-0", "s 0", "s0/", "s.0", "/", "/org/vfiomig1/space", "/org/vfiomig1/space/",
                "/org/vfiomig1/space/s0/x", "/org/vfiomig1/space/s-0", "/org/vfiomig1/device/sim_a",
                "/org/vfiomig1/spaces/s0", "/org/vfiomig1/space//s0", "org/vfiomig1/space/s0",
        };

        for (size_t i = 0; i < ELEMENTSOF(good); i++)
                cr_assert(ctl_space_name_is_valid(good[i]), "'%s'", good[i]);
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                cr_assert_not(ctl_space_name_is_valid(bad[i]), "'%s'", bad[i]);
        cr_assert_not(ctl_space_name_is_valid(NULL));
}

Test(ctl_parse, space_paths) {
        char *p = (char *) "untouched";

        cr_assert_eq(ctl_space_path("s0", &p), 0);
        cr_assert_str_eq(p, "/org/vfiomig1/space/s0");
        free(p);
        cr_assert_eq(ctl_space_path("/org/vfiomig1/space/s12", &p), 0);
        cr_assert_str_eq(p, "/org/vfiomig1/space/s12");
        free(p);

        p = (char *) "untouched";
        cr_assert_eq(ctl_space_path("s 0", &p), -EINVAL);
        cr_assert_eq(ctl_space_path("/org/vfiomig1/device/sim_a", &p), -EINVAL);
        cr_assert_eq(ctl_space_path(NULL, &p), -EINVAL);
        cr_assert_str_eq(p, "untouched");
        cr_assert_eq(ctl_space_path("s0", NULL), -EINVAL);
}

Test(ctl_parse, object_path_last_element) {
        cr_assert_str_eq(ctl_object_path_last("/org/vfiomig1/space/s0"), "s0");
        cr_assert_str_eq(ctl_object_path_last("/org/vfiomig1/device/sim_a"), "sim_a");
        cr_assert_str_eq(ctl_object_path_last("s0"), "s0");
        cr_assert_str_eq(ctl_object_path_last("/"), "");
        cr_assert_null(ctl_object_path_last(NULL));
}

Test(ctl_parse, device_and_space_names_differ) {
        /* DEV takes addresses ("sim:a", "0000:3b:00.1") that are no path element; SPACE does not. */
        cr_assert(ctl_device_name_is_valid("sim:a"));
        cr_assert_not(ctl_space_name_is_valid("sim:a"));
        cr_assert(ctl_device_name_is_valid("0000:3b:00.1"));
        cr_assert_not(ctl_space_name_is_valid("0000:3b:00.1"));
        /* Any valid object path may name a device; only a space path may name a space. */
        cr_assert(ctl_device_name_is_valid("/org/vfiomig1/space/s0"));
        cr_assert(ctl_space_name_is_valid("/org/vfiomig1/space/s0"));
        cr_assert_not(ctl_space_name_is_valid("/org/vfiomig1/device/sim_a"));
}

static void assert_bus_names(int access, const char *const *expected) {
        const char *const *names = ctl_access_to_bus_names(access);
        size_t i = 0;

        for (; expected[i]; i++) {
                cr_assert_not_null(names[i], "access %d: too few names", access);
                cr_assert_str_eq(names[i], expected[i], "access %d", access);
        }
        cr_assert_null(names[i], "access %d: too many names", access);
}

Test(ctl_parse, access_strings) {
        static const char *const bad[] = { "", "R", "RW", "wr", "rwx", "x", "read", "write", "r,w", " r", "rw " };

        cr_assert_eq(ctl_access_from_string("rw"), CTL_ACCESS_READ | CTL_ACCESS_WRITE);
        cr_assert_eq(ctl_access_from_string("r"), CTL_ACCESS_READ);
        cr_assert_eq(ctl_access_from_string("w"), CTL_ACCESS_WRITE);
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                cr_assert_eq(ctl_access_from_string(bad[i]), -EINVAL, "'%s'", bad[i]);
        cr_assert_eq(ctl_access_from_string(NULL), -EINVAL);

        /* What Map gets: the names address-space.c knows. */
        assert_bus_names(CTL_ACCESS_READ | CTL_ACCESS_WRITE, (const char *const[]) { "read", "write", NULL });
        assert_bus_names(CTL_ACCESS_READ, (const char *const[]) { "read", NULL });
        assert_bus_names(CTL_ACCESS_WRITE, (const char *const[]) { "write", NULL });
        assert_bus_names(0, (const char *const[]) { NULL });
}

Test(ctl_parse, access_open_modes) {
        /* The daemon refuses write access to a file not open read-write, and any mapping of a
         * write-only file: so "w" opens read-write too. */
        cr_assert_eq(ctl_access_open_mode(CTL_ACCESS_READ | CTL_ACCESS_WRITE), O_RDWR);
        cr_assert_eq(ctl_access_open_mode(CTL_ACCESS_WRITE), O_RDWR);
        cr_assert_eq(ctl_access_open_mode(CTL_ACCESS_READ), O_RDONLY);
}

static void assert_access_format(char **names, const char *expected) {
        _cleanup_free_ char *s = ctl_access_format(names);

        cr_assert_not_null(s);
        cr_assert_str_eq(s, expected);
}

Test(ctl_parse, access_format) {
        assert_access_format((char *[]) { "read", "write", NULL }, "rw");
        assert_access_format((char *[]) { "write", "read", NULL }, "rw");
        assert_access_format((char *[]) { "read", NULL }, "r");
        assert_access_format((char *[]) { "write", NULL }, "w");
        assert_access_format((char *[]) { NULL }, "-");
        assert_access_format(NULL, "-");
        /* A newer daemon's names are shown, not dropped. */
        assert_access_format((char *[]) { "read", "exec", NULL }, "r,exec");
        assert_access_format((char *[]) { "exec", NULL }, "exec");
        assert_access_format((char *[]) { "exec", "write", "atomic", NULL }, "w,exec,atomic");

        /* Round trip: what --access= takes is what the table shows. */
        for (const char *const *s = (const char *const[]) { "rw", "r", "w", NULL }; *s; s++) {
                _cleanup_free_ char *back =
                        ctl_access_format((char **) ctl_access_to_bus_names(ctl_access_from_string(*s)));
                cr_assert_str_eq(back, *s);
        }
}

Test(ctl_parse, create_space_options) {
        cr_assert(ctl_backend_is_valid("iommufd"));
        cr_assert(ctl_backend_is_valid("legacy"));
        cr_assert(ctl_backend_is_valid("sim"));
        cr_assert_not(ctl_backend_is_valid("Sim"));
        cr_assert_not(ctl_backend_is_valid(""));
        cr_assert_not(ctl_backend_is_valid("kernel"));
        cr_assert_not(ctl_backend_is_valid(NULL));

        cr_assert(ctl_sim_mapping_is_valid("by-file"));
        cr_assert(ctl_sim_mapping_is_valid("by-address"));
        cr_assert_not(ctl_sim_mapping_is_valid("by_file"));
        cr_assert_not(ctl_sim_mapping_is_valid("file"));
        cr_assert_not(ctl_sim_mapping_is_valid(""));
        cr_assert_not(ctl_sim_mapping_is_valid(NULL));
}

/* ---- migrations ---- */

static void assert_bytes(const char *s, bool rate, uint64_t expected) {
        uint64_t v = SENTINEL;

        cr_assert_eq(ctl_parse_bytes(s, rate, &v), 0, "'%s' (rate=%d) should parse", s, rate);
        cr_assert_eq(v, expected, "'%s' gave %" PRIu64 ", expected %" PRIu64, s, v, expected);
}

static void assert_bytes_fail(const char *s, bool rate, int error) {
        uint64_t v = SENTINEL;

        cr_assert_eq(ctl_parse_bytes(s, rate, &v), error, "'%s' (rate=%d) should fail with %d", s, rate, error);
        cr_assert_eq(v, SENTINEL, "'%s' wrote the result on failure", s);
}

Test(ctl_parse, bytes_units) {
        assert_bytes("0", false, 0);
        assert_bytes("512", false, 512);
        assert_bytes("512B", false, 512);
        assert_bytes("4K", false, 4096);
        assert_bytes("4KB", false, 4096);
        assert_bytes("4KiB", false, 4096);
        assert_bytes("256M", false, UINT64_C(256) << 20);
        assert_bytes("256MB", false, UINT64_C(256) << 20);
        assert_bytes("3GiB", false, UINT64_C(3) << 30);
        assert_bytes("2T", false, UINT64_C(2) << 40);
        assert_bytes("2TB", false, UINT64_C(2) << 40);
        assert_bytes("007M", false, UINT64_C(7) << 20);
        assert_bytes("18446744073709551615", false, UINT64_MAX);
        assert_bytes("16777215T", false, UINT64_C(16777215) << 40);
        /* The largest fraction below 2^64 still fits: the fraction is always less than one unit. */
        assert_bytes("16777215.999999T", false, (UINT64_C(16777215) << 40) + (UINT64_C(999999) << 40) / 1000000);
}

Test(ctl_parse, bytes_decimals_round_down) {
        assert_bytes("1.5G", false, UINT64_C(3) << 29);
        assert_bytes("1.5GiB", false, UINT64_C(3) << 29);
        assert_bytes("0.5K", false, 512);
        assert_bytes("0.25M", false, UINT64_C(1) << 18);
        assert_bytes("1.0M", false, UINT64_C(1) << 20);
        /* 0.001 KiB is 1.024 bytes: whole bytes, rounded down. */
        assert_bytes("0.001K", false, 1);
        assert_bytes("0.0001K", false, 0);
        /* Six decimals at most; every one of them counts. */
        assert_bytes("1.000001T", false, (UINT64_C(1) << 40) + UINT64_C(1099511));
        assert_bytes_fail("1.0000001T", false, -EINVAL);
}

Test(ctl_parse, bytes_rates) {
        assert_bytes("100M/s", true, UINT64_C(100) << 20);
        assert_bytes("100MB/s", true, UINT64_C(100) << 20);
        assert_bytes("100MiB/s", true, UINT64_C(100) << 20);
        assert_bytes("1.5G/s", true, UINT64_C(3) << 29);
        assert_bytes("4096B/s", true, 4096);
        assert_bytes("4096/s", true, 4096);
        assert_bytes("0", true, 0);
        assert_bytes("10G", true, UINT64_C(10) << 30);
        /* A rate suffix on a size is a mistake, not a size. */
        assert_bytes_fail("100M/s", false, -EINVAL);
}

Test(ctl_parse, bytes_rejects_garbage) {
        static const char *const bad[] = {
                "", " 1M", "1M ", "1 M", "-1M", "+1M", "M", "KB", ".5G", "1.G", "1.5", "1.5B", "0x1.5M",
                "1m", "1k", "1KIB", "1Ki", "1iB", "1MBB", "1MiBs", "1E", "1P", "1e3", "1,5G", "1M/", "1M/h",
                "1M/s/s", "1/ s", "99999999999999999999999xyz",
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                assert_bytes_fail(bad[i], true, -EINVAL);
        assert_bytes_fail(NULL, false, -EINVAL);
}

Test(ctl_parse, bytes_rejects_overflow) {
        assert_bytes_fail("18446744073709551616", false, -ERANGE);
        assert_bytes_fail("99999999999999999999999", false, -ERANGE);
        assert_bytes_fail("16777216T", false, -ERANGE);     /* exactly 2^64 */
        assert_bytes_fail("17179869184G/s", true, -ERANGE);
        assert_bytes_fail("99999999999999999999999M", false, -ERANGE);
}

static void assert_msec(const char *s, uint64_t expected) {
        uint64_t v = SENTINEL;

        cr_assert_eq(ctl_parse_msec(s, &v), 0, "'%s' should parse", s);
        cr_assert_eq(v, expected, "'%s' gave %" PRIu64 ", expected %" PRIu64, s, v, expected);
}

Test(ctl_parse, msec) {
        uint64_t v = SENTINEL;

        assert_msec("0", 0);
        assert_msec("300", 300);
        assert_msec("300ms", 300);
        assert_msec("30s", 30000);
        /* The one grammar of time spans (systemd's), bare numbers in milliseconds. */
        assert_msec("1.5s", 1500);
        assert_msec("1m", 60000);
        assert_msec("1min", 60000);
        assert_msec("2min 30s", 150000);
        assert_msec("2min30s", 150000);
        assert_msec("1h", 3600000);
        assert_msec("1d", 86400000);
        assert_msec("1sec", 1000);
        assert_msec("1500us", 2); /* rounded up: a limit is never tighter than asked */
        assert_msec("18446744073709551us", UINT64_C(18446744073710));

        static const char *const bad[] = { "", "s", "ms", "-1", " 1", "1 ms2", "1S", "0x10", "1ms 2", "1.s",
                                           "1 ", "1mss", "1y", "2M" };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                cr_assert_eq(ctl_parse_msec(bad[i], &v), -EINVAL, "'%s'", bad[i]);
        cr_assert_eq(ctl_parse_msec("18446744073709551616", &v), -ERANGE);
        cr_assert_eq(ctl_parse_msec("18446744073709552s", &v), -ERANGE);
        cr_assert_eq(ctl_parse_msec("18446744073709551615", &v), -ERANGE); /* past 2^64 µs */
        cr_assert_eq(v, SENTINEL, "a failure wrote the result");
}

Test(ctl_parse, unsigned_in_range) {
        unsigned v = 12345;

        cr_assert_eq(ctl_parse_unsigned("1", 1, 64, &v), 0);
        cr_assert_eq(v, 1);
        cr_assert_eq(ctl_parse_unsigned("64", 1, 64, &v), 0);
        cr_assert_eq(v, 64);
        cr_assert_eq(ctl_parse_unsigned("08", 1, 64, &v), 0);
        cr_assert_eq(v, 8);

        v = 12345;
        cr_assert_eq(ctl_parse_unsigned("0", 1, 64, &v), -ERANGE);
        cr_assert_eq(ctl_parse_unsigned("65", 1, 64, &v), -ERANGE);
        cr_assert_eq(ctl_parse_unsigned("4294967296", 0, UINT32_MAX, &v), -ERANGE);
        cr_assert_eq(ctl_parse_unsigned("", 1, 64, &v), -EINVAL);
        cr_assert_eq(ctl_parse_unsigned("-1", 1, 64, &v), -EINVAL);
        cr_assert_eq(ctl_parse_unsigned("2K", 1, 64, &v), -EINVAL);
        cr_assert_eq(ctl_parse_unsigned("0x2", 1, 64, &v), -EINVAL);
        cr_assert_eq(ctl_parse_unsigned("99999999999999999999x", 1, 64, &v), -EINVAL);
        cr_assert_eq(v, 12345, "a failure wrote the result");
}

static void assert_peer(const char *s, const char *host, uint16_t port, const char *formatted) {
        _cleanup_free_ char *h = NULL, *f = NULL;
        uint16_t p = 0;

        cr_assert_eq(ctl_parse_host_port(s, 7179, &h, &p), 0, "'%s' should parse", s);
        cr_assert_str_eq(h, host, "'%s'", s);
        cr_assert_eq(p, port, "'%s' gave port %u", s, p);
        f = ctl_peer_format(h, p);
        cr_assert_str_eq(f, formatted, "'%s'", s);
}

static void assert_peer_fails(const char *s, int error) {
        char *h = (char *) &h;
        uint16_t p = 4242;

        cr_assert_eq(ctl_parse_host_port(s, 7179, &h, &p), error, "'%s' should fail with %d", s, error);
        cr_assert_eq(h, (char *) &h, "'%s' wrote the host on failure", s);
        cr_assert_eq(p, 4242, "'%s' wrote the port on failure", s);
}

Test(ctl_parse, host_port) {
        assert_peer("dst.example.com", "dst.example.com", 7179, "dst.example.com:7179");
        assert_peer("dst.example.com:9000", "dst.example.com", 9000, "dst.example.com:9000");
        assert_peer("192.0.2.7", "192.0.2.7", 7179, "192.0.2.7:7179");
        assert_peer("192.0.2.7:1", "192.0.2.7", 1, "192.0.2.7:1");
        assert_peer("192.0.2.7:65535", "192.0.2.7", 65535, "192.0.2.7:65535");
        assert_peer("host_1", "host_1", 7179, "host_1:7179");
        /* IPv6: brackets for a port, and the peer string always has them. */
        assert_peer("[2001:db8::1]:7200", "2001:db8::1", 7200, "[2001:db8::1]:7200");
        assert_peer("[2001:db8::1]", "2001:db8::1", 7179, "[2001:db8::1]:7179");
        assert_peer("[::1]:80", "::1", 80, "[::1]:80");
        assert_peer("[fe80::1%eth0]:7179", "fe80::1%eth0", 7179, "[fe80::1%eth0]:7179");
        assert_peer("[::ffff:192.0.2.7]", "::ffff:192.0.2.7", 7179, "[::ffff:192.0.2.7]:7179");
        /* Unbracketed, an IPv6 address is all address: the last group is not a port. */
        assert_peer("2001:db8::1", "2001:db8::1", 7179, "[2001:db8::1]:7179");
        assert_peer("::1:7200", "::1:7200", 7179, "[::1:7200]:7179");
}

Test(ctl_parse, host_port_rejects) {
        static const char *const bad[] = {
                "", ":7179", "host:", "host:port", "host:+80", "host:-1", "host: 80", "host:80 ", " host",
                "ho st", "host/x", "user@host", "host:80:90", "[::1", "[::1]x", "[::1]:", "[::1]:x", "[]",
                "[]:80", "[host]:80", "[192.0.2.7]:80", "[fe80::1%]:80", "[fe80::1%e th]:80", "2001:db8::1:7179x",
                "2001:db8:::1", "[::1]]:80", "host:0x50",
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                assert_peer_fails(bad[i], -EINVAL);
        assert_peer_fails(NULL, -EINVAL);

        assert_peer_fails("host:0", -ERANGE);
        assert_peer_fails("host:65536", -ERANGE);
        assert_peer_fails("[::1]:0", -ERANGE);
        assert_peer_fails("[::1]:65536", -ERANGE);
        assert_peer_fails("host:99999999999999999999999", -ERANGE);
}

Test(ctl_parse, host_port_default_port_zero_is_no_port) {
        char *h = NULL;
        uint16_t p = 0;

        /* A caller without a default cannot get port 0 past us. */
        cr_assert_eq(ctl_parse_host_port("host", 0, &h, &p), -ERANGE);
        cr_assert_null(h);
        cr_assert_eq(ctl_parse_host_port("host:1", 0, &h, &p), 0);
        cr_assert_eq(p, 1);
        free(h);
}

#define T64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

static int token_parse(const char *s, char ret[static CTL_TOKEN_HEX_LEN + 1], const char **why) {
        return ctl_token_parse(s, strlen(s), ret, why);
}

Test(ctl_parse, token) {
        char t[CTL_TOKEN_HEX_LEN + 1];
        const char *why = NULL;

        cr_assert_eq(token_parse(T64, t, &why), 0);
        cr_assert_str_eq(t, T64);
        cr_assert_eq(token_parse("0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789ABCDEF", t, &why), 0);
        cr_assert_str_eq(t, T64, "lower-cased");
        /* the newline 'incoming --token-file' writes, and what editors add */
        cr_assert_eq(token_parse(T64 "\n", t, &why), 0);
        cr_assert_eq(token_parse(T64 " \r\n\t", t, &why), 0);
        cr_assert_str_eq(t, T64);

        cr_assert_eq(token_parse("", t, &why), -EINVAL);
        cr_assert_str_eq(why, "is empty");
        cr_assert_eq(token_parse(" \n", t, &why), -EINVAL);
        cr_assert_str_eq(why, "is empty");
        cr_assert_eq(token_parse("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde", t, &why), -EINVAL);
        cr_assert_str_eq(why, "is shorter than 64 hex digits");
        cr_assert_eq(token_parse(T64 "0", t, &why), -EINVAL);
        cr_assert_str_eq(why, "is longer than 64 hex digits");
        cr_assert_eq(token_parse(T64 T64 T64, t, &why), -EINVAL);
        cr_assert_str_eq(why, "is longer than 64 hex digits");
        cr_assert_eq(token_parse("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdeg", t, &why), -EINVAL);
        cr_assert_str_eq(why, "contains a character that is no hex digit");
        cr_assert_eq(token_parse(" 123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", t, &why), -EINVAL);
        cr_assert_eq(token_parse(T64 "\nab", t, &why), -EINVAL, "a second line");
        cr_assert_eq(ctl_token_parse(T64 "\0", 65, t, &why), -EINVAL, "a NUL");
        /* not terminated: only size bytes are read */
        cr_assert_eq(ctl_token_parse(T64 "zz", 64, t, &why), 0);
        cr_assert_str_eq(t, T64);
}

static int pipe_with(const char *content) {
        int p[2];

        cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
        cr_assert_eq(write(p[1], content, strlen(content)), (ssize_t) strlen(content));
        close(p[1]);
        return p[0];
}

Test(ctl_token, read_fd) {
        char t[CTL_TOKEN_HEX_LEN + 1];
        const char *why = NULL;
        char big[600];
        int fd;

        fd = pipe_with(T64 "\n");
        cr_assert_eq(ctl_token_read_fd(fd, t, &why), 0);
        cr_assert_str_eq(t, T64);
        close(fd);
        memset(big, 'a', sizeof big - 1);
        big[sizeof big - 1] = 0;
        fd = pipe_with(big);
        cr_assert_eq(ctl_token_read_fd(fd, t, &why), -EINVAL);
        cr_assert_str_eq(why, "is longer than 64 hex digits");
        close(fd);
        fd = pipe_with("");
        cr_assert_eq(ctl_token_read_fd(fd, t, &why), -EINVAL);
        cr_assert_str_eq(why, "is empty");
        close(fd);
}

Test(ctl_token, file_create_and_read) {
        char dir[] = "/tmp/vfm-ctl-token-XXXXXX", path[64], link_path[64], t[CTL_TOKEN_HEX_LEN + 1];
        const char *why = NULL;
        bool shared = true;
        struct stat st;
        mode_t old;
        int fd;

        cr_assert_not_null(mkdtemp(dir));
        (void) snprintf(path, sizeof path, "%s/token", dir);
        (void) snprintf(link_path, sizeof link_path, "%s/link", dir);

        old = umask(0);  /* whatever the umask, the file is the owner's alone */
        fd = ctl_token_file_create(path);
        umask(old);
        cr_assert_geq(fd, 0);
        cr_assert_eq(ctl_token_file_write(fd, T64), 0);
        cr_assert_eq(stat(path, &st), 0);
        cr_assert_eq(st.st_mode & 07777, 0600);
        cr_assert_eq(ctl_token_read_file(path, t, &shared, &why), 0);
        cr_assert_str_eq(t, T64);
        cr_assert_not(shared);
        cr_assert_eq(chmod(path, 0644), 0);
        cr_assert_eq(ctl_token_read_file(path, t, &shared, &why), 0);
        cr_assert(shared);

        cr_assert_eq(ctl_token_file_create(path), -EEXIST, "never replaces a file");
        cr_assert_eq(symlink("/tmp/vfm-ctl-token-nonexistent-target", link_path), 0);
        cr_assert_eq(ctl_token_file_create(link_path), -EEXIST, "never follows a symlink");
        cr_assert_eq(access("/tmp/vfm-ctl-token-nonexistent-target", F_OK), -1);
        cr_assert_eq(ctl_token_read_file(dir, t, &shared, &why), -EISDIR);
        cr_assert_eq(ctl_token_read_file("/nonexistent/token", t, &shared, &why), -ENOENT);

        cr_assert_eq(unlink(link_path), 0);
        cr_assert_eq(unlink(path), 0);
        cr_assert_eq(rmdir(dir), 0);
}

static void assert_job(const char *job, const char *path) {
        _cleanup_free_ char *p = NULL;

        cr_assert_eq(ctl_migration_path(job, &p), 0, "'%s' should name a job", job);
        cr_assert_str_eq(p, path, "'%s'", job);
}

Test(ctl_parse, migration_names) {
        char *p = (char *) &p;
        uint32_t id = 77;

        assert_job("3", "/org/vfiomig1/migration/_3");
        assert_job("_3", "/org/vfiomig1/migration/_3");
        assert_job("/org/vfiomig1/migration/_3", "/org/vfiomig1/migration/_3");
        assert_job("0", "/org/vfiomig1/migration/_0");
        assert_job("007", "/org/vfiomig1/migration/_7");
        assert_job("_4294967295", "/org/vfiomig1/migration/_4294967295");

        static const char *const bad[] = {
                "", "_", "-3", "+3", "3a", "x", "__3", "_3_", " 3", "0x3", "/org/vfiomig1/migration/3",
                "/org/vfiomig1/migration/_", "/org/vfiomig1/migration/_3/x", "/org/vfiomig1/migration",
                "/org/vfiomig1/migrationx/_3", "/org/vfiomig1/space/_3", "/_3", "migration/_3",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                cr_assert_eq(ctl_migration_path(bad[i], &p), -EINVAL, "'%s'", bad[i]);
        cr_assert_eq(ctl_migration_path("4294967296", &p), -ERANGE);
        cr_assert_eq(ctl_migration_path("/org/vfiomig1/migration/_99999999999", &p), -ERANGE);
        cr_assert_eq(p, (char *) &p, "a failure wrote the result");

        cr_assert_eq(ctl_migration_id_from_path("/org/vfiomig1/migration/_12", &id), 0);
        cr_assert_eq(id, 12);
        cr_assert_eq(ctl_migration_id_from_path("12", &id), -EINVAL);
        cr_assert_eq(ctl_migration_id_from_path("/org/vfiomig1/migration/12", &id), -EINVAL);
        cr_assert_eq(ctl_migration_id_from_path(NULL, &id), -EINVAL);
        cr_assert_eq(id, 12);
}

Test(ctl_parse, phases) {
        static const char *const all[] = { "setup", "precopy", "stop-copy", "resuming", "completed", "failed",
                                           "cancelled", "indeterminate" };

        for (size_t i = 0; i < ELEMENTSOF(all); i++)
                cr_assert(ctl_phase_is_known(all[i]), "%s", all[i]);
        cr_assert_not(ctl_phase_is_known("pre-copy"));
        cr_assert_not(ctl_phase_is_known("canceled"));
        cr_assert_not(ctl_phase_is_known(""));
        cr_assert_not(ctl_phase_is_known(NULL));

        cr_assert(ctl_phase_is_final("completed"));
        cr_assert(ctl_phase_is_final("failed"));
        cr_assert(ctl_phase_is_final("cancelled"));
        cr_assert_not(ctl_phase_is_final("setup"));
        cr_assert_not(ctl_phase_is_final("precopy"));
        cr_assert_not(ctl_phase_is_final("stop-copy"));
        cr_assert_not(ctl_phase_is_final("resuming"));
        cr_assert_not(ctl_phase_is_final(NULL));
        /* Resolve can still end it: not final, but nothing more happens without an operator. */
        cr_assert_not(ctl_phase_is_final("indeterminate"));

        for (size_t i = 0; i < ELEMENTSOF(all); i++)
                cr_assert_eq(ctl_phase_ends_wait(all[i]),
                             ctl_phase_is_final(all[i]) || streq(all[i], "indeterminate"), "%s", all[i]);
        cr_assert(ctl_phase_ends_wait("indeterminate"));
        cr_assert_not(ctl_phase_ends_wait("stop-copy"));
        cr_assert_not(ctl_phase_ends_wait("Indeterminate"));
        cr_assert_not(ctl_phase_ends_wait(NULL));

        cr_assert(ctl_outcome_is_valid("committed"));
        cr_assert(ctl_outcome_is_valid("not-committed"));
        cr_assert_not(ctl_outcome_is_valid("Committed"));
        cr_assert_not(ctl_outcome_is_valid("not_committed"));
        cr_assert_not(ctl_outcome_is_valid("uncommitted"));
        cr_assert_not(ctl_outcome_is_valid("yes"));
        cr_assert_not(ctl_outcome_is_valid(""));
        cr_assert_not(ctl_outcome_is_valid(NULL));

        cr_assert(ctl_switchover_mode_is_valid("auto"));
        cr_assert(ctl_switchover_mode_is_valid("manual"));
        cr_assert_not(ctl_switchover_mode_is_valid("Auto"));
        cr_assert_not(ctl_switchover_mode_is_valid(""));
        cr_assert_not(ctl_switchover_mode_is_valid(NULL));
}

Test(ctl_parse, pick_peer_address) {
        char *remote_last[] = { "127.0.0.1:7179", "[::1]:7179", "192.0.2.7:7179", "[2001:db8::7]:7179", NULL };
        char *only_local[] = { "[::1]:7179", "127.0.0.1:7179", NULL };
        char *any_first[] = { "0.0.0.0:7179", "[::]:7179", "[2001:db8::7]:7179", NULL };
        char *junk_first[] = { "not an address", "10.1.2.3:7179", NULL };
        char *empty[] = { NULL };

        cr_assert_str_eq(ctl_pick_peer_address(remote_last), "192.0.2.7:7179");
        cr_assert_str_eq(ctl_pick_peer_address(only_local), "[::1]:7179");
        cr_assert_str_eq(ctl_pick_peer_address(any_first), "[2001:db8::7]:7179");
        cr_assert_str_eq(ctl_pick_peer_address(junk_first), "10.1.2.3:7179");
        cr_assert_null(ctl_pick_peer_address(empty));
        cr_assert_null(ctl_pick_peer_address(NULL));
}

Test(ctl_parse, transfer_timeout_msec) {
        uint64_t v = SENTINEL;

        cr_assert_eq(ctl_transfer_timeout_msec(1000, &v), 0);
        cr_assert_eq(v, 1);
        /* Rounded up: a deadline is never shorter than asked, and 1 µs is not 0 (the default). */
        cr_assert_eq(ctl_transfer_timeout_msec(1, &v), 0);
        cr_assert_eq(v, 1);
        cr_assert_eq(ctl_transfer_timeout_msec(1500, &v), 0);
        cr_assert_eq(v, 2);
        cr_assert_eq(ctl_transfer_timeout_msec(UINT64_C(30) * 1000000, &v), 0);
        cr_assert_eq(v, 30000);
        cr_assert_eq(ctl_transfer_timeout_msec(UINT64_C(86400) * 1000000, &v), 0);
        cr_assert_eq(v, CTL_TRANSFER_TIMEOUT_MAX_MSEC);

        v = SENTINEL;
        cr_assert_eq(ctl_transfer_timeout_msec(UINT64_C(86400) * 1000000 + 1, &v), -ERANGE);
        cr_assert_eq(ctl_transfer_timeout_msec(UINT64_MAX, &v), -ERANGE);
        cr_assert_eq(ctl_transfer_timeout_msec(0, &v), -EINVAL);
        cr_assert_eq(v, SENTINEL, "a failure wrote the result");
}
