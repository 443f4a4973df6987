/* SPDX-License-Identifier: GPL-2.0-or-later */
/* vfiomigd.conf(5) parsing and the sim options shared with the bus. */

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon-config.h"
#include "manager.h"
#include "device-options.h"

static int parse(const char *text, DaemonConfig *c, ErrorMessage *err) {
        *err = (ErrorMessage) {};
        return daemon_config_parse(text, c, err);
}

Test(daemon_config, full_example) {
        DaemonConfig c;
        ErrorMessage err;

        cr_assert_eq(parse("{ \"allow-simulated\": true, \"max-devices\": 8, \"devices\": ["
                           "  { \"address\": \"0000:3b:00.1\" },"
                           "  { \"address\": \"sim:gpu0\", \"options\": { \"state-size\": 1048576,"
                           "    \"precopy-size\": 65536, \"dirty-rate\": 4096, \"flags\": [\"stop-copy\", \"p2p\"],"
                           "    \"seed\": 7, \"mtty-quirks\": true, \"fail-arcs\": [\"stop>stop-copy\"] } } ] }",
                           &c, &err), 0, "%s", err.text);
        cr_assert(c.allow_simulated);
        cr_assert_eq(c.max_devices, 8);
        cr_assert_eq(c.n_devices, 2);
        cr_assert_str_eq(c.devices[0].address, "0000:3b:00.1");
        cr_assert(!c.devices[0].options.sim_options_given);
        const SimConfig *s = &c.devices[1].options.sim;
        cr_assert(c.devices[1].options.sim_options_given);
        cr_assert_eq(s->state_size, 1048576);
        cr_assert_eq(s->precopy_size, 65536);
        cr_assert_eq(s->dirty_rate, 4096);
        cr_assert_eq(s->migration_flags, VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P);
        cr_assert(s->seed_set && s->seed == 7);
        cr_assert(s->mtty_quirks);
        cr_assert_eq(s->fail_in_place, SIM_ARC_BIT(VFIO_DEVICE_STATE_STOP, VFIO_DEVICE_STATE_STOP_COPY));
        daemon_config_done(&c);

        cr_assert_eq(parse("{ \"max-reassembly-bytes\": 1073741824 }", &c, &err), 0, "%s", err.text);
        cr_assert_eq(c.max_reassembly_bytes, UINT64_C(1) << 30);
        daemon_config_done(&c);

        cr_assert_eq(parse("{}", &c, &err), 0);
        cr_assert(!c.allow_simulated && c.max_devices == 0 && c.n_devices == 0);
        cr_assert_null(c.stream_listen);
        daemon_config_done(&c);

        static const char *const listen[] = { "0.0.0.0:0", "[::]:7179", "192.0.2.10:7179", "[::1]:65535" };
        for (size_t i = 0; i < sizeof listen / sizeof listen[0]; i++) {
                char text[128];
                snprintf(text, sizeof text, "{ \"stream-listen\": \"%s\" }", listen[i]);
                cr_assert_eq(parse(text, &c, &err), 0, "%s: %s", listen[i], err.text);
                cr_assert_str_eq(c.stream_listen, listen[i]);
                daemon_config_done(&c);
                cr_assert_null(c.stream_listen);
        }
}

Test(daemon_config, errors_name_the_offending_member) {
        static const struct {
                const char *text, *message;
        } cases[] = {
                { "", "not valid JSON" },
                { "{ \"allow-simulated\": tru }", "not valid JSON" },
                { "[]", "top level must be a JSON object" },
                { "{ \"allow_simulated\": true }", "unknown key 'allow_simulated'" },
                { "{ \"allow-simulated\": 1 }", "allow-simulated must be true or false" },
                { "{ \"max-devices\": 0 }", "max-devices must be an integer from 1 to 4096" },
                { "{ \"max-devices\": 5000 }", "max-devices must be" },
                { "{ \"max-devices\": \"8\" }", "max-devices must be" },
                { "{ \"devices\": {} }", "devices must be an array" },
                { "{ \"devices\": [ 3 ] }", "devices[0] must be an object" },
                { "{ \"devices\": [ {} ] }", "devices[0] has no \"address\"" },
                { "{ \"devices\": [ { \"address\": \"sim:a\", \"colour\": 1 } ] }", "devices[0]: unknown key 'colour'" },
                { "{ \"devices\": [ { \"address\": \"sim:a\" }, { \"address\": \"sim:b\", \"options\": { \"size\": 1 } } ] }",
                  "devices[1]: unknown option 'size'" },
                { "{ \"devices\": [ { \"address\": \"sim:a\", \"options\": { \"state-size\": -1 } } ] }",
                  "'state-size' must be a non-negative integer" },
                { "{ \"devices\": [ { \"address\": \"sim:a\", \"options\": { \"state-size\": \"1M\" } } ] }",
                  "'state-size' must be a non-negative integer" },
                { "{ \"devices\": [ { \"address\": \"sim:a\", \"options\": { \"flags\": [\"turbo\"] } } ] }",
                  "unknown migration flag 'turbo'" },
                { "{ \"devices\": [ { \"address\": \"sim:a\", \"options\": { \"flags\": \"p2p\" } } ] }",
                  "'flags' must be an array of strings" },
                { "{ \"devices\": [ { \"address\": \"sim:a\", \"options\": { \"error-arcs\": [\"stop\"] } } ] }",
                  "error-arcs: 'stop' is not an arc" },
                { "{ \"devices\": [ { \"address\": \"sim:a\", \"options\": { \"mtty-quirks\": 1 } } ] }",
                  "'mtty-quirks' must be true or false" },
                { "{ \"max-reassembly-bytes\": 1048576 }", "max-reassembly-bytes must be an integer of at least" },
                { "{ \"max-reassembly-bytes\": \"1G\" }", "max-reassembly-bytes must be an integer" },
                { "{ \"stream-listen\": 7179 }", "stream-listen must be a string" },
                { "{ \"stream-listen\": \"7179\" }", "stream-listen: '7179' is not HOST:PORT" },
                { "{ \"stream-listen\": \"[::]:7179:1\" }", "stream-listen: '[::]:7179:1' has no valid port" },
                { "{ \"stream-listen\": \"::1:7179\" }", "write IPv6 addresses as [ADDRESS]:PORT" },
                { "{ \"stream-listen\": \"0.0.0.0:65536\" }", "has no valid port (0-65535)" },
                { "{ \"stream-listen\": \"migration.example:7179\" }", "does not resolve names" },
                { "{ \"stream-listen\": \"[fe80::1%eth0]:7179\" }", "is not an IPv6 address" },
        };

        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
                DaemonConfig c = {};
                ErrorMessage err;
                cr_assert_eq(parse(cases[i].text, &c, &err), -EINVAL, "accepted: %s", cases[i].text);
                cr_assert(strstr(err.text, cases[i].message), "for %s: got \"%s\", expected \"%s\"", cases[i].text,
                          err.text, cases[i].message);
                cr_assert_eq(c.n_devices, 0, "nothing is returned on failure");
        }
}

Test(daemon_config, load_from_files) {
        char dir[] = "/tmp/test-daemon-config-XXXXXX", path[64];
        DaemonConfig c;
        ErrorMessage err = {};
        FILE *f;

        cr_assert_not_null(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/vfiomigd.conf", dir);
        cr_assert_eq(daemon_config_load(path, false, &c, &err), 0, "a missing default file is an empty config");
        cr_assert_eq(c.n_devices, 0);
        cr_assert_eq(daemon_config_load(path, true, &c, &err), -ENOENT);
        cr_assert(strstr(err.text, path));

        f = fopen(path, "we");
        cr_assert_not_null(f);
        fputs("{ \"max-devices\": 3, \"bogus\": 1 }", f);
        fclose(f);
        err = (ErrorMessage) {};
        cr_assert_eq(daemon_config_load(path, false, &c, &err), -EINVAL);
        cr_assert(strstr(err.text, path) && strstr(err.text, "unknown key 'bogus'"), "%s", err.text);
        err = (ErrorMessage) {};
        cr_assert_eq(daemon_config_load(dir, true, &c, &err), -EINVAL);
        cr_assert(strstr(err.text, "not a regular file"), "%s", err.text);
        unlink(path);
        rmdir(dir);
}

Test(device_options, types_and_application) {
        SimConfig c;
        ErrorMessage err = {};
        char *flags[] = { "stop-copy", "pre-copy", NULL };
        OptionValue u = { .type = OPTION_U64, .u64 = 4096 }, b = { .type = OPTION_BOOL, .b = true },
                    l = { .type = OPTION_STRV, .strv = flags };

        sim_config_init(&c);
        cr_assert_eq(sim_option_type("state-size"), OPTION_U64);
        cr_assert_eq(sim_option_type("mtty-quirks"), OPTION_BOOL);
        cr_assert_eq(sim_option_type("flags"), OPTION_STRV);
        cr_assert_eq(sim_option_type("nope"), _OPTION_TYPE_INVALID);
        cr_assert_eq(sim_config_apply(&c, "dirty-rate", &u, &err), 0);
        cr_assert_eq(c.dirty_rate, 4096);
        cr_assert_eq(sim_config_apply(&c, "flags", &l, &err), 0);
        cr_assert_eq(c.migration_flags, VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_PRE_COPY);
        cr_assert_eq(sim_config_apply(&c, "mtty-quirks", &b, &err), 0);
        cr_assert(c.mtty_quirks);
        cr_assert_eq(sim_config_apply(&c, "state-size", &b, &err), -EINVAL);
        cr_assert_str_eq(err.text, "option 'state-size' takes a value of type t, not b");
}

Test(daemon_config, tls) {
        char dir[] = "/tmp/test-daemon-config.XXXXXX", path[128];
        DaemonConfig c;
        ErrorMessage err = {};
        FILE *f;

        cr_assert(mkdtemp(dir));

        /* nothing in the PKI directory, no "tls": cleartext, and loopback only by default */
        cr_assert_eq(daemon_config_parse_full("{}", dir, &c, &err), 0, "%s", err.text);
        cr_assert(!c.tls.enabled && !c.allow_cleartext);
        cr_assert(!c.serial_transitions, "group moves are parallel by default");
        daemon_config_done(&c);
        cr_assert_eq(daemon_config_parse_full("{ \"parallel-transitions\": false }", dir, &c, &err), 0, "%s", err.text);
        cr_assert(c.serial_transitions);
        daemon_config_done(&c);

        /* a certificate in the PKI directory switches TLS on, with the libvirt file names */
        (void) snprintf(path, sizeof path, "%s/server-cert.pem", dir);
        f = fopen(path, "we");
        cr_assert(f);
        fclose(f);
        cr_assert_eq(daemon_config_parse_full("{ \"allow-cleartext\": true }", dir, &c, &err), 0, "%s", err.text);
        cr_assert(c.tls.enabled && !c.tls.explicit && c.tls.kernel_tls && c.allow_cleartext);
        cr_assert(!c.vfio_legacy, "vfio-backend defaults to auto");
        daemon_config_done(&c);
        cr_assert_eq(daemon_config_parse_full("{ \"vfio-backend\": \"legacy\" }", dir, &c, &err), 0, "%s", err.text);
        cr_assert(c.vfio_legacy);
        daemon_config_done(&c);
        cr_assert_eq(daemon_config_parse_full("{ \"vfio-backend\": \"auto\" }", dir, &c, &err), 0, "%s", err.text);
        cr_assert(!c.vfio_legacy);
        cr_assert(strstr(c.tls.ca_file, "/ca-cert.pem"));
        cr_assert(strstr(c.tls.cert_file, "/server-cert.pem"));
        cr_assert(strstr(c.tls.key_file, "/server-key.pem"));
        cr_assert_null(c.tls.crl_file);
        daemon_config_done(&c);
        (void) unlink(path);

        /* explicit: a directory, one file overridden, an allow-list */
        cr_assert_eq(daemon_config_parse_full("{ \"tls\": { \"x509-dir\": \"/srv/pki\", \"key\": \"/secret/k.pem\","
                                              " \"allowed-peers\": [\"CN=host-b,*\", \"192.0.2.11\"], \"kernel-tls\": false } }",
                                              dir, &c, &err), 0, "%s", err.text);
        cr_assert(c.tls.enabled && c.tls.explicit && !c.tls.kernel_tls);
        cr_assert_str_eq(c.tls.ca_file, "/srv/pki/ca-cert.pem");
        cr_assert_str_eq(c.tls.cert_file, "/srv/pki/server-cert.pem");
        cr_assert_str_eq(c.tls.key_file, "/secret/k.pem");
        cr_assert_str_eq(c.tls.allowed_peers[0], "CN=host-b,*");
        cr_assert_str_eq(c.tls.allowed_peers[1], "192.0.2.11");
        cr_assert_null(c.tls.allowed_peers[2]);
        daemon_config_done(&c);

        /* PSK */
        cr_assert_eq(daemon_config_parse_full("{ \"tls\": { \"psk-file\": \"/etc/pki/vfiomigd/psk.txt\", \"psk-identity\": \"a\" } }",
                                              dir, &c, &err), 0, "%s", err.text);
        cr_assert(c.tls.enabled);
        cr_assert_str_eq(c.tls.psk_file, "/etc/pki/vfiomigd/psk.txt");
        cr_assert_str_eq(c.tls.psk_identity, "a");
        cr_assert_null(c.tls.cert_file);
        daemon_config_done(&c);

        static const struct {
                const char *text, *message;
        } bad[] = {
                { "{ \"tls\": true }", "tls must be an object" },
                { "{ \"tls\": { \"cert-file\": \"/x\" } }", "tls: unknown key 'cert-file'" },
                { "{ \"tls\": { \"cert\": \"relative.pem\" } }", "tls.cert must be an absolute path" },
                { "{ \"tls\": { \"cert\": \"\" } }", "tls.cert must not be empty" },
                { "{ \"tls\": { \"psk-file\": \"/p\", \"ca-cert\": \"/c\" } }", "psk-file excludes the x509 keys" },
                { "{ \"tls\": { \"psk-identity\": \"a\" } }", "psk-identity needs psk-file" },
                { "{ \"tls\": { \"allowed-peers\": \"CN=a\" } }", "tls.allowed-peers must be an array" },
                { "{ \"tls\": { \"allowed-peers\": [ 1 ] } }", "tls.allowed-peers[0] must be a non-empty string" },
                { "{ \"tls\": { \"kernel-tls\": 1 } }", "tls.kernel-tls must be true or false" },
                { "{ \"allow-cleartext\": \"yes\" }", "allow-cleartext must be true or false" },
                { "{ \"parallel-transitions\": 0 }", "parallel-transitions must be true or false" },
                { "{ \"vfio-backend\": \"iommufd\" }", "vfio-backend must be \"auto\" or \"legacy\"" },
                { "{ \"vfio-backend\": true }", "vfio-backend must be \"auto\" or \"legacy\"" },
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                err = (ErrorMessage) {};
                cr_assert_eq(daemon_config_parse_full(bad[i].text, dir, &c, &err), -EINVAL, "%s", bad[i].text);
                cr_assert(strstr(err.text, bad[i].message), "%s: got \"%s\"", bad[i].text, err.text);
        }
        (void) rmdir(dir);
}

Test(daemon_config, the_installed_example_is_valid_and_changes_nothing) {
        const char *path = getenv("EXAMPLE_CONFIG");
        DaemonConfig example = {}, none = {};
        ErrorMessage err = {};

        cr_assert_not_null(path, "meson passes EXAMPLE_CONFIG");
        cr_assert_eq(daemon_config_load(path, true, &example, &err), 0, "%s: %s", path, err.text);
        cr_assert_eq(daemon_config_parse("{}", &none, &err), 0, "%s", err.text);
        cr_assert_eq(example.allow_simulated, none.allow_simulated);
        cr_assert_eq(example.max_devices == 0 ? MANAGER_MAX_DEVICES_DEFAULT : example.max_devices,
                     MANAGER_MAX_DEVICES_DEFAULT);
        cr_assert_eq(example.max_spaces == 0 ? MANAGER_MAX_SPACES_DEFAULT : example.max_spaces,
                     MANAGER_MAX_SPACES_DEFAULT);
        cr_assert_eq(example.max_mappings == 0 ? MANAGER_MAX_MAPPINGS_DEFAULT : example.max_mappings,
                     MANAGER_MAX_MAPPINGS_DEFAULT);
        cr_assert_eq(example.allow_cleartext, none.allow_cleartext);
        cr_assert_eq(example.serial_transitions, none.serial_transitions);
        cr_assert_eq(example.tls.enabled, none.tls.enabled);
        cr_assert_eq(example.n_devices, 0);
        daemon_config_done(&example);
        daemon_config_done(&none);
}
