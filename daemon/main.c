/* SPDX-License-Identifier: GPL-2.0-or-later */

/* vfiomigd: owns VFIO devices and drives their migration state on request over D-Bus. */

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "bus-device.h"
#include "bus-move.h"
#include "bus-service.h"
#include "config.h"
#include "daemon-config.h"
#include "log.h"
#include "manager.h"
#include "migration.h"
#include "stream-engine.h"
#include "named-fds.h"
#include "persist.h"
#include "strv.h"

static bool arg_allow_simulated;
static const char *arg_config_path = DAEMON_CONFIG_DEFAULT_PATH;
static bool arg_config_required;
static const char *arg_stream_listen;

static void help(void) {
        printf("%s [OPTIONS...]\n\n"
               "Owns VFIO devices and drives their migration state on request over D-Bus (org.vfiomig1).\n\n"
               "  -h --help                 Show this help\n"
               "     --version              Show the version\n"
               "     --allow-simulated      Allow simulated devices (sim:NAME)\n"
               "     --config=PATH          Configuration file (default: %s)\n"
               "     --stream-listen=HOST:PORT\n"
               "                            Where incoming migrations connect (default: [::]:7179)\n"
               "     --log-level=LEVEL      err, warning, notice, info or debug (default: info)\n"
               "     --log-target=TARGET    auto, stderr or journal (default: auto)\n"
               "\nSee vfiomigd(8).\n",
               program_invocation_short_name, DAEMON_CONFIG_DEFAULT_PATH);
}

/* Returns 1 to run, 0 to exit successfully (help, version), negative on a usage error. */
static int parse_argv(int argc, char *argv[]) {
        enum {
                ARG_VERSION = 0x100,
                ARG_ALLOW_SIMULATED,
                ARG_CONFIG,
                ARG_LOG_LEVEL,
                ARG_LOG_TARGET,
                ARG_STREAM_LISTEN,
        };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "allow-simulated", no_argument, NULL, ARG_ALLOW_SIMULATED },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "log-level", required_argument, NULL, ARG_LOG_LEVEL },
                { "log-target", required_argument, NULL, ARG_LOG_TARGET },
                { "stream-listen", required_argument, NULL, ARG_STREAM_LISTEN },
                {},
        };
        int c, level;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("vfiomigd %s\n", PACKAGE_VERSION);
                        return 0;
                case ARG_ALLOW_SIMULATED:
                        arg_allow_simulated = true;
                        break;
                case ARG_CONFIG:
                        arg_config_path = optarg;
                        arg_config_required = true;
                        break;
                case ARG_LOG_LEVEL:
                        level = log_level_from_string(optarg);
                        if (level < 0)
                                return log_error_errno(SYNTHETIC_ERRNO(EINVAL), "Unknown log level '%s'.", optarg);
                        log_set_max_level(level);
                        break;
                case ARG_LOG_TARGET:
                        if (streq(optarg, "auto"))
                                log_set_target(LOG_TARGET_AUTO); /* resolved by log_open() */
                        else if (streq(optarg, "stderr"))
                                log_set_target(LOG_TARGET_STDERR);
                        else if (streq(optarg, "journal"))
                                log_set_target(LOG_TARGET_JOURNAL);
                        else
                                return log_error_errno(SYNTHETIC_ERRNO(EINVAL), "Unknown log target '%s'.", optarg);
                        break;
                case ARG_STREAM_LISTEN: {
                        struct sockaddr_storage sa;
                        ErrorMessage err = {};
                        socklen_t len;
                        if (migration_parse_address(optarg, true, &sa, &len, &err) < 0)
                                return log_error_errno(SYNTHETIC_ERRNO(EINVAL), "--stream-listen: %s", err.text);
                        arg_stream_listen = optarg;
                        break;
                }
                case '?':
                        return -EINVAL;
                default:
                        return -EINVAL;
                }
        if (optind < argc)
                return log_error_errno(SYNTHETIC_ERRNO(EINVAL), "%s takes no arguments.", program_invocation_short_name);
        return 1;
}

/* Devices named in the configuration are attached before the bus name is taken, so they exist
 * when READY=1 goes out. One that cannot be attached is reported and skipped: the others still
 * need managing. */
static void attach_configured_devices(Manager *m, const DaemonConfig *config) {
        for (size_t i = 0; i < config->n_devices; i++) {
                const ConfigDevice *c = &config->devices[i];
                ErrorMessage err = {};
                int r = manager_attach(m, c->address, &c->options, NULL, &err);
                if (r == -EEXIST)
                        continue; /* restored after a restart */
                if (r < 0)
                        log_error_errno(r, "Failed to attach %s from %s, skipping: %s", c->address, arg_config_path,
                                        err.text[0] ? err.text : strerror(-r));
        }
}

/* Adopts what the service manager kept for us across a restart, and the stream socket of
 * vfiomigd-stream.socket (FileDescriptorName=stream), which is not ours to store. */
static int restore_state(Persist *persist, Manager *manager) {
        _cleanup_(named_fds_done) NamedFds received = {};
        _cleanup_strv_free_ char **names = NULL;
        ErrorMessage err = {};
        int n, r;

        if (!getenv("NOTIFY_SOCKET"))
                log_warning("Not running under a service manager: a restart of vfiomigd will lose every device, "
                            "address space and mapping it holds.");

        n = sd_listen_fds_with_names(true, &names);
        if (n < 0)
                return log_error_errno(n, "Failed to receive descriptors from the service manager: %m");
        for (int i = 0; i < n; i++) {
                r = named_fds_add(&received, names && names[i] ? names[i] : "unknown", SD_LISTEN_FDS_START + i, true);
                if (r < 0) {
                        log_warning_errno(r, "Ignoring descriptor %d (%s): %m", SD_LISTEN_FDS_START + i,
                                          names && names[i] ? names[i] : "unnamed");
                        safe_close(SD_LISTEN_FDS_START + i);
                }
        }
        r = named_fds_take(&received, "stream");
        if (r >= 0)
                manager_adopt_stream_socket(manager, r);
        if (received.n == 0) {
                if (getenv("NOTIFY_SOCKET"))
                        log_info("The service manager handed back no descriptors: starting with no devices, address "
                                 "spaces or mappings (a first start, or a start after a stop released them).");
                return 0;
        }

        log_info("The service manager handed back %zu descriptor%s; restoring.", received.n,
                 received.n == 1 ? "" : "s");
        r = persist_restore(persist, &received, &err);
        if (r < 0)
                return log_error_errno(r, "Failed to restore the saved state: %s", err.text);
        log_info("Restored %d object%s.", r, r == 1 ? "" : "s");
        return 0;
}

/* SIGTERM may be a restart: let every address space ready its mappings for the successor
 * (DMA continues), save, then exit. If no successor comes, the store is released and the
 * kernel tears everything down as it would have anyway. */
typedef struct Daemon {
        Manager *manager;
        Persist *persist;
        BusService *service;
} Daemon;

static int on_stop_signal(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Daemon *daemon = userdata;
        Persist *persist = daemon->persist;

        log_info("Stopping on %s.", si->ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        /* State transfers first: they give up within a poll slice, their devices go back to stop
         * (a load is reset), their callers hear Cancelled, and the state saved below records
         * where the devices really are. */
        if (daemon->service) {
                bus_device_stop_transfers(daemon->service);
                /* A driver's arc cannot be interrupted: wait for state changes to end, so that
                 * their callers hear the outcome and the state saved below is where they ended. */
                bus_moves_join(daemon->service);
        }
        /* Migration data sessions do not survive a restart: end the jobs while their clients can
         * still hear it, and before the state is saved, so it records where the devices are. */
        manager_stop_migrations(daemon->manager, "the daemon is stopping");
        (void) sd_notify(false, "STOPPING=1\nSTATUS=Preparing the mappings for a successor.");
        (void) persist_prepare_stop(persist);
        return sd_event_exit(sd_event_source_get_event(s), 0);
}

/* The stream's TLS context from the configuration, or NULL without credentials. A credential
 * that does not load stops the daemon: silently falling back to cleartext would be worse. */
static int setup_tls(const DaemonConfig *config, StreamTlsContext **ret) {
        const ConfigTls *t = &config->tls;
        StreamTlsConfig c = {
                .ca_file = t->ca_file,
                .cert_file = t->cert_file,
                .key_file = t->key_file,
                .crl_file = t->crl_file,
                .psk_file = t->psk_file,
                .psk_identity = t->psk_identity,
                .allowed_peers = t->allowed_peers,
                .ktls = t->kernel_tls,
        };
        ErrorMessage err = {};
        int r;

        *ret = NULL;
        if (!t->enabled) {
                if (config->allow_cleartext)
                        log_warning("No TLS credentials, and allow-cleartext is set: migrations cross the network in "
                                    "cleartext, readable and alterable on the way.");
                else
                        log_info("No TLS credentials (%s): migrations only to and from loopback addresses.",
                                 DAEMON_CONFIG_PKI_DIR);
                return 0;
        }
        r = stream_tls_context_new(&c, ret, &err);
        if (r < 0)
                return log_error_errno(r, "Failed to load the TLS credentials: %s", err.text);
        log_info("Migration channels run TLS 1.3: %s%s; %s.", stream_tls_context_describe(*ret),
                 t->allowed_peers ? ", with an allow-list of peers" : "",
                 stream_tls_context_ktls(*ret) ? "kernel TLS is available"
                 : !t->kernel_tls            ? "kernel TLS is turned off (kernel-tls: false), records are sealed in user space"
                                             : "no kernel TLS here, records are sealed in user space");
        return 0;
}

static int run(int argc, char *argv[]) {
        /* Torn down in reverse: the bus service (it watches the manager), then the persistence
         * (it reads the manager), then the manager, then the event loop. */
        _cleanup_(sd_event_unrefp) sd_event *event = NULL;
        _cleanup_(manager_freep) Manager *manager = NULL;
        _cleanup_(persist_freep) Persist *persist = NULL;
        _cleanup_(bus_service_freep) BusService *service = NULL;
        _cleanup_(daemon_config_done) DaemonConfig config = {};
        _cleanup_(stream_tls_context_unrefp) StreamTlsContext *tls = NULL;
        Daemon daemon = {};
        ManagerOptions options = {};
        ErrorMessage err = {};
        sigset_t mask;
        int r;

        log_parse_environment();
        log_open();
        r = parse_argv(argc, argv);
        if (r <= 0)
                return r;
        log_open(); /* --log-target may have asked for auto again */
        umask(0077);
        /* A client that closes its end of a state transfer must fail that transfer, not kill us. */
        (void) signal(SIGPIPE, SIG_IGN);

        r = daemon_config_load(arg_config_path, arg_config_required, &config, &err);
        if (r < 0)
                return log_error_errno(r, "Failed to load the configuration: %s", err.text);

        options.allow_simulated = arg_allow_simulated || config.allow_simulated;
        options.max_devices = config.max_devices;
        options.max_spaces = config.max_spaces;
        options.max_mappings = config.max_mappings;
        options.max_pinned_bytes = config.max_pinned_bytes;
        options.max_reassembly_bytes = config.max_reassembly_bytes;
        options.stream_listen = arg_stream_listen ?: config.stream_listen;
        r = setup_tls(&config, &tls);
        if (r < 0)
                return r;
        options.tls = tls;
        options.allow_cleartext = config.allow_cleartext;
        options.serial_transitions = config.serial_transitions;
        if (config.serial_transitions)
                log_info("parallel-transitions is off: group moves change one device's state at a time.");
        options.kernel.prefer_legacy = config.vfio_legacy;
        r = manager_new(&options, &manager);
        if (r < 0)
                return log_error_errno(r, "Failed to set up: %m");
        {
                _cleanup_strv_free_ char **features = NULL;
                _cleanup_free_ char *joined = NULL;

                if (kernel_features_to_strv(&manager->features, &features) >= 0)
                        joined = strv_join(features, " ");
                log_info("vfiomigd %s on Linux %s; the kernel offers: %s", PACKAGE_VERSION, manager->features.release,
                         joined && *joined ? joined : "no VFIO interface");
        }
        if (options.allow_simulated)
                log_notice("Simulated devices are allowed.");

        r = persist_new(manager, &persist);
        if (r < 0)
                return log_oom();
        r = restore_state(persist, manager);
        if (r < 0)
                return r;

        attach_configured_devices(manager, &config);

        r = sd_event_default(&event);
        if (r < 0)
                return log_error_errno(r, "Failed to allocate the event loop: %m");
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
                return log_error_errno(errno, "Failed to block signals: %m");

        /* A socket systemd passed may have a connection waiting (it may even be why we were
         * started): answer it now, with a refusal if no job is prepared, not at the first
         * PrepareIncoming. Without one, the port is bound only when a migration needs it. Only
         * now that the signals are blocked: the listener's thread inherits the mask, and SIGTERM
         * must reach the event loop rather than end the process in another thread. */
        if (manager->stream_socket_fd >= 0) {
                StreamListener *listener;
                r = manager_get_stream_listener(manager, &listener, &err);
                if (r < 0)
                        log_error_errno(r, "Failed to take incoming migrations on the socket the service manager "
                                        "passed, ignoring: %s", err.text);
        }

        daemon.manager = manager;
        daemon.persist = persist;
        r = sd_event_add_signal(event, NULL, SIGTERM, on_stop_signal, &daemon);
        if (r >= 0)
                r = sd_event_add_signal(event, NULL, SIGINT, on_stop_signal, &daemon);
        if (r < 0)
                return log_error_errno(r, "Failed to watch signals: %m");
        r = sd_event_set_watchdog(event, true);
        if (r < 0)
                log_warning_errno(r, "Failed to enable the watchdog, ignoring: %m");

        r = bus_service_new(event, manager, persist, &service);
        if (r < 0)
                return r;
        daemon.service = service;

        r = sd_event_loop(event);
        /* However the loop ended, no worker may outlive what it uses: the cleanups below free
         * the service, the persistence and the manager. */
        bus_device_stop_transfers(service);
        bus_moves_join(service);
        (void) sd_notify(false, "STOPPING=1\nSTATUS=Shutting down.");
        if (r < 0)
                return r; /* whoever ended the loop with an error logged why */
        log_info("Exiting.");
        return 0;
}

int main(int argc, char *argv[]) {
        int r = run(argc, argv);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
