/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

#include "stream-wire.h"

/*
 * Text to typed values for vfiomigctl's arguments. Nothing here talks to the bus or prints, so
 * the unit tests run exactly the conversions the command line goes through, and every caller
 * can word its own usage error from the negative errno it gets back.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

typedef enum JsonFormat {
        JSON_FORMAT_OFF,
        JSON_FORMAT_SHORT,
        JSON_FORMAT_PRETTY,
        _JSON_FORMAT_MAX,
        _JSON_FORMAT_INVALID = -EINVAL,
} JsonFormat;

/* "off", "short", "pretty"; _JSON_FORMAT_INVALID for anything else. */
JsonFormat json_format_from_string(const char *s);

/* N: an amount of bytes, in the one grammar of ctl_parse_bytes() (rate false); hex is for
 * addresses and lengths ("0x1000", "0x10K"). */
int ctl_parse_size(const char *s, uint64_t *ret);

/* true/false, yes/no, on/off, 1/0 in any case: 1 or 0, or -EINVAL. */
int ctl_parse_boolean(const char *s);

/* A comma-separated list; "" is the empty list. -EINVAL for an empty element ("a,,b", "a,"),
 * which is always a typo: no list vfiomigd takes has empty strings in it. */
int ctl_parse_strv(const char *s, char ***ret);

#define CTL_USEC_PER_MSEC UINT64_C(1000)
#define CTL_USEC_PER_SEC UINT64_C(1000000)

/* The one grammar of time spans, systemd's: one or more parts NUMBER UNIT, with or without blanks
 * between them ("1min 30s", "1min30s", "2.5s"), each number decimal with up to six decimals, each
 * unit one of us, ms, s, m/min, h, d (or usec, msec, sec, second(s), minute(s), hr, hour(s),
 * day(s)). A bare number alone ("300") counts in default_usec, the option's own unit. -EINVAL for
 * anything else, -ERANGE past UINT64_MAX µs. */
int ctl_parse_time_span(const char *s, uint64_t default_usec, uint64_t *ret_usec);

/* --timeout: a positive time span, bare numbers in seconds ("30", "2.5", "1min"), in µs. */
int ctl_parse_timeout(const char *s, uint64_t *ret_usec);

/* A --timeout= of ctl_parse_timeout() as the deadline SaveState and LoadState take: whole
 * milliseconds, rounded up, so a deadline is never shorter than asked. -ERANGE past a day
 * (86400000 ms), the daemon's limit. */
#define CTL_TRANSFER_TIMEOUT_MAX_MSEC UINT64_C(86400000)
int ctl_transfer_timeout_msec(uint64_t usec, uint64_t *ret_msec);

/* A bus state name → its index in VFIOMIG_STATE_NAMES (the kernel's enum value), or -EINVAL. */
int ctl_state_from_string(const char *s);
/* Whether a client may ask for s: every known state except "error", which is only reached. */
bool ctl_state_is_settable(const char *s);
/* "stop, running, …" for usage errors and --help; NULL on OOM. */
char *ctl_settable_states_list(void);

/* Whether DEV can name a device at all: a non-empty id or address, or a valid object path. Which
 * device it names, if any, only vfiomigd knows. */
bool ctl_device_name_is_valid(const char *dev);

/* Whether SPACE can name an address space: an id ("s0"), which is one object path element
 * ([A-Za-z0-9_], not empty), or an object path of the form VFIOMIG_SPACE_PATH_PREFIX/ID. */
bool ctl_space_name_is_valid(const char *space);
/* The object path SPACE names: an id goes under VFIOMIG_SPACE_PATH_PREFIX, a path is copied.
 * -EINVAL when !ctl_space_name_is_valid(space). Whether the space exists only vfiomigd knows. */
int ctl_space_path(const char *space, char **ret);
/* The last element of an object path ("s0" of "/org/vfiomig1/space/s0"): the id of a device or
 * address space. A pointer into path; path itself when it has no '/'. */
const char *ctl_object_path_last(const char *path);

/* Access bits of a DMA mapping, as the --access= strings "r", "w" and "rw" spell them. */
enum {
        CTL_ACCESS_READ = 1 << 0,
        CTL_ACCESS_WRITE = 1 << 1,
};
/* "rw", "r" or "w" → CTL_ACCESS_* bits, or -EINVAL for anything else (case matters). */
int ctl_access_from_string(const char *s);
/* The names Map takes for bits ("read", "write"), as a NULL-terminated list of static strings. */
const char *const *ctl_access_to_bus_names(int access);
/* How a file must be opened to be mapped with these bits: O_RDWR when the device may write (the
 * daemon refuses a read-only file for that), O_RDONLY otherwise. */
int ctl_access_open_mode(int access);
/* The bus names ListMappings reports ("read", "write") → "rw", "r" or "w"; names this client does
 * not know are kept, so "rw,exec" shows what a newer daemon said. "-" for the empty list. NULL
 * on OOM. */
char *ctl_access_format(char *const *names);

/* Values of CreateAddressSpace's options, as the contract names them. */
bool ctl_backend_is_valid(const char *s);
bool ctl_sim_mapping_is_valid(const char *s);

/* One entry of VFIOMIG_SIM_OPTIONS. */
typedef struct CtlSimOption {
        const char *key;
        const char *signature;
} CtlSimOption;

/* The entry for key, or NULL when vfiomigd does not know the key. */
const CtlSimOption *ctl_sim_option_find(const char *key);
/* "state-size, precopy-size, …"; NULL on OOM. */
char *ctl_sim_option_keys_list(void);
/* What a value of this D-Bus signature must look like on the command line, for usage errors. */
const char *ctl_signature_describe(const char *signature);

/* A --option KEY=VALUE converted by the signature of its key. Owns strv and str. */
typedef struct CtlOptionValue {
        const CtlSimOption *option;
        uint64_t u64;           /* "t", "u" */
        bool boolean;           /* "b" */
        char *str;              /* "s" */
        char **strv;            /* "as" */
} CtlOptionValue;

void ctl_option_value_done(CtlOptionValue *v);

/* Splits "KEY=VALUE" at the first '='. -EINVAL without '=' or with an empty key. */
int ctl_split_assignment(const char *assignment, char **ret_key, const char **ret_value);

/* Converts value by option->signature. -EINVAL/-ERANGE from the parsers above, -EOPNOTSUPP for a
 * signature this client cannot build from text. ret is untouched on failure. */
int ctl_option_value_parse(const CtlSimOption *option, const char *value, CtlOptionValue *ret);

/* ---- migrations ---- */

/* SIZE and RATE of the migration commands: a decimal number and an optional unit K, M, G or T
 * (powers of 1024), each optionally followed by "B" or "iB" ("4G", "4GB", "4GiB"); "B" alone is
 * bytes. Up to six decimals are allowed before a unit ("1.5G"), and the result is rounded down to
 * whole bytes; a 0x hex number is whole ("0x1000", "0x10K"). With rate, an optional "/s" may end
 * the text ("100MiB/s"). Upper case as written. The one grammar of sizes: every size and rate the
 * client takes. -EINVAL for anything else (signs, spaces, "1.5" without a unit), -ERANGE past
 * UINT64_MAX. */
int ctl_parse_bytes(const char *s, bool rate, uint64_t *ret);

/* A time span (ctl_parse_time_span()) whose bare numbers are milliseconds ("300", "300ms", "30s",
 * "2min"), in whole milliseconds, rounded up. */
int ctl_parse_msec(const char *s, uint64_t *ret);

/* A decimal number in [min, max] (no sign, no hex, no suffix): -EINVAL for bad syntax, -ERANGE
 * outside the range. */
int ctl_parse_unsigned(const char *s, unsigned min, unsigned max, unsigned *ret);

/* A stream peer as the user types it: HOST, HOST:PORT, [IPV6] or [IPV6]:PORT, or a bare IPv6
 * address (which cannot carry a port: "fe80::1"). HOST is an IPv4 address or a host name (letters,
 * digits, '-', '.', '_'). A missing port is default_port. -EINVAL for bad syntax (an empty host or
 * port, an unbracketed IPv6 address with something that looks like a port, junk after ']'),
 * -ERANGE for a port outside 1..65535. ret_host is the host without brackets. */
int ctl_parse_host_port(const char *s, uint16_t default_port, char **ret_host, uint16_t *ret_port);
/* "host:port", with the host in brackets when it is an IPv6 address: the peer string
 * StartMigration takes. NULL on OOM. */
char *ctl_peer_format(const char *host, uint16_t port);

#define CTL_TOKEN_HEX_LEN (2 * STREAM_TOKEN_SIZE)
/* A token as read from a file or standard input (size bytes, no terminator needed): the hex
 * digits, optionally followed by whitespace (the newline 'incoming --token-file' writes). Written
 * lower-case into ret. -EINVAL with *ret_why ("is empty", "is shorter than 64 hex digits", ...) for
 * anything else; the reason never repeats the content, which may be a secret. */
int ctl_token_parse(const char *text, size_t size, char ret[static CTL_TOKEN_HEX_LEN + 1], const char **ret_why);

/* JOB names a migration job: its id N ("3"), the last element of its object path ("_3"), or the
 * object path (VFIOMIG_MIGRATION_PATH_PREFIX "/_3"). N is decimal and fits in 32 bits (the Id
 * property is "u"). Returns the normalized object path; -EINVAL for anything else, -ERANGE past
 * UINT32_MAX. Whether the job exists only vfiomigd knows. */
int ctl_migration_path(const char *job, char **ret);
/* The N of a job's object path, or -EINVAL. */
int ctl_migration_id_from_path(const char *path, uint32_t *ret);

/* Whether a Phase value is one of VFIOMIG_PHASE_NAMES, and whether it is one a job ends in
 * ("completed", "failed", "cancelled", which are also the results of Completed). */
bool ctl_phase_is_known(const char *phase);
bool ctl_phase_is_final(const char *phase);
/* Whether a wait for the job is over: a final phase, or "indeterminate", which only Resolve (an
 * operator's decision after asking the destination) can move on, so waiting longer is pointless. */
bool ctl_phase_ends_wait(const char *phase);

/* Resolve's outcome: "committed" or "not-committed". */
bool ctl_outcome_is_valid(const char *s);

/* "auto" or "manual". */
bool ctl_switchover_mode_is_valid(const char *s);

/* The address of PrepareIncoming's list a source should be told to connect to: the first that is
 * neither loopback nor unspecified (0.0.0.0, [::]), else the first. NULL for an empty list. */
const char *ctl_pick_peer_address(char *const *addresses);
