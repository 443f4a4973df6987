/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * vfiomigd.conf(5): a JSON object with "allow-simulated", the caps "max-devices", "max-spaces",
 * "max-mappings", "max-pinned-bytes" and "max-reassembly-bytes", "stream-listen" (HOST:PORT
 * incoming migrations are taken on), "tls" (the stream's credentials), "allow-cleartext", and
 * "devices" (each
 * {"address": ..., "options": {sim options}}). Unknown keys and wrong types are errors that name
 * the offending member, so a typo never silently changes behaviour.
 */

#include "error-message.h"
#include "manager.h"

#define DAEMON_CONFIG_DEFAULT_PATH SYSCONFDIR "/vfiomigd/vfiomigd.conf"
/* libvirt's layout (/etc/pki/libvirt, /etc/pki/qemu): ca-cert.pem, server-cert.pem,
 * server-key.pem, and optionally ca-crl.pem */
#define DAEMON_CONFIG_PKI_DIR SYSCONFDIR "/pki/vfiomigd"
#define DAEMON_CONFIG_ALLOWED_PEERS_MAX 256u
#define DAEMON_CONFIG_SIZE_MAX (UINT64_C(1) << 20)

typedef struct ConfigDevice {
        char *address;
        AttachOptions options;
} ConfigDevice;

/* The stream's TLS credentials, resolved to file paths. Enabled when the "tls" object is given,
 * or when DAEMON_CONFIG_PKI_DIR holds a server-cert.pem. */
typedef struct ConfigTls {
        bool enabled;
        bool explicit;               /* the "tls" object was given */
        char *ca_file, *cert_file, *key_file, *crl_file;
        char *psk_file, *psk_identity;
        char **allowed_peers;
        bool kernel_tls;             /* default true */
} ConfigTls;

typedef struct DaemonConfig {
        bool allow_simulated;
        unsigned max_devices;        /* 0 = default */
        unsigned max_spaces;         /* 0 = default */
        unsigned max_mappings;       /* per space; 0 = default */
        uint64_t max_pinned_bytes;   /* 0 = the machine's memory */
        uint64_t max_reassembly_bytes; /* all incoming migrations together; 0 = a quarter of the memory */
        char *stream_listen;         /* NULL = [::]:7179 */
        ConfigTls tls;
        bool allow_cleartext;        /* without TLS: migrate to and from non-loopback addresses anyway */
        bool serial_transitions;     /* "parallel-transitions": false */
        bool vfio_legacy;            /* "vfio-backend": "legacy": groups and containers even where iommufd exists */
        ConfigDevice *devices;
        size_t n_devices;
} DaemonConfig;

/* Loads path. A missing file is an error only when required (the path was given explicitly);
 * otherwise it yields an empty config. */
int daemon_config_load(const char *path, bool required, DaemonConfig *ret, ErrorMessage *err);
/* Parses a JSON text (for tests, and for load). pki_dir: where credentials are looked for when
 * the file names none (NULL: DAEMON_CONFIG_PKI_DIR). */
int daemon_config_parse_full(const char *text, const char *pki_dir, DaemonConfig *ret, ErrorMessage *err);
int daemon_config_parse(const char *text, DaemonConfig *ret, ErrorMessage *err);
void daemon_config_done(DaemonConfig *c);
