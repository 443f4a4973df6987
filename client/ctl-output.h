/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Everything vfiomigctl writes. Diagnostics go to stderr, prefixed with the program name; results
 * go to stdout, as an aligned table or "Key: value" lines for people and as JSON for programs.
 * Callers build a result completely before printing it, so a command that fails half-way never
 * leaves half an answer on stdout for a script to misread.
 */

#include <json-c/json.h>

#include "ctl-parse.h"
#include "macro.h"

#define PROGRAM_NAME "vfiomigctl"

/* "vfiomigctl: MESSAGE" on stderr; "%m" expands to error. Returns -|error| for one-line
 * "return log_error_errno(r, ...)". */
int log_error_errno(int error, const char *format, ...) _printf_(2, 3);
void log_error(const char *format, ...) _printf_(1, 2);
/* "Hint: MESSAGE" on stderr, the line after an error that says what to do about it. */
void log_hint(const char *format, ...) _printf_(1, 2);

DEFINE_TRIVIAL_CLEANUP_FUNC(json_object *, json_object_put);

/* Add one member; a NULL string becomes JSON null. -ENOMEM on failure. */
int json_add_string(json_object *o, const char *key, const char *value);
int json_add_uint64(json_object *o, const char *key, uint64_t value);
int json_add_bool(json_object *o, const char *key, bool value);
int json_add_strv(json_object *o, const char *key, char *const *l);
/* Takes ownership of value, also on failure. */
int json_add(json_object *o, const char *key, json_object *value);
int json_append(json_object *array, json_object *value);

/* One document and a newline. Slashes stay unescaped: object paths are most of what we print. */
int json_print(json_object *j, JsonFormat format, FILE *f);

/* "512 B", "1.0 KiB", "1.5 GiB": one decimal, rounded down, so it never overstates a size. */
#define FORMAT_BYTES_MAX 16
char *format_bytes(char *buf, size_t size, uint64_t bytes);

/* "a b c" for lists in "Key: value" lines; "" for an empty list. NULL on OOM. */
char *strv_join_spaces(char *const *l);

/* Bytes as "hexdump -C" shows them, 16 per line, each line starting with its address (base plus
 * the offset, at least 8 hex digits), then the bytes in hex in two groups of 8, then the printable
 * ASCII characters between bars, '.' for the others. Nothing for size 0. */
int hexdump(FILE *f, uint64_t base, const void *data, size_t size);

/* Standard base64 (RFC 4648, with '=' padding, no line breaks); NULL on OOM. */
char *base64_encode(const void *data, size_t size);

/* An aligned text table with an upper-case header line, as systemd's tools print. */
typedef struct Table Table;

Table *table_new(const char *const *headers, size_t n_columns);
Table *table_free(Table *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(Table *, table_free);

/* Copies n_columns strings; NULL prints as "-". */
int table_add_row(Table *t, const char *const *cells);
size_t table_n_rows(const Table *t);
/* Columns are separated by two spaces; the last one is not padded. */
int table_print(const Table *t, FILE *f);

/* ---- migrations ---- */

/* "0ms", "850ms", "12.3s" (below a minute, one decimal, rounded down), "2m05s", "1h02m". */
#define FORMAT_DURATION_MAX 32
char *format_duration(char *buf, size_t size, uint64_t usec);

/* format_bytes() per second: "512.0 MiB/s". */
#define FORMAT_RATE_MAX (FORMAT_BYTES_MAX + 2)
char *format_rate(char *buf, size_t size, uint64_t bytes_per_second);

/* The time left to move expected bytes at rate, in µs. -ENODATA when it cannot be known: nothing expected (0 means unknown), no rate, or
 * already past what was expected (pre-copy data was sent again). Saturates at UINT64_MAX. */
int migration_eta_usec(uint64_t transferred, uint64_t expected, uint64_t rate, uint64_t *ret);

/* transferred as a percentage of expected, rounded down and at most 100; -ENODATA when expected
 * is 0 (unknown). */
int migration_percent(uint64_t transferred, uint64_t expected);

typedef struct MigrationProgress {
        const char *phase;
        uint64_t transferred;
        uint64_t expected;              /* 0: unknown */
        uint64_t rate;                  /* bytes per second */
        bool ready_for_switchover;      /* manual switchover, initial data loaded, still in pre-copy */
        uint32_t id;                    /* for the switchover command shown when ready */
} MigrationProgress;

/* The one-line progress display, as "precopy: 1.2 GiB of 4.0 GiB (30%), 512.0 MiB/s, ETA 6s".
 * Without a known expected size, only what was moved and the rate; no ETA unless
 * migration_eta_usec() knows it, and none while the job waits for a manual switchover (the rest
 * does not move until then), which the line says instead. NULL on OOM. */
char *format_migration_progress(const MigrationProgress *p);

typedef struct MigrationSummary {
        uint32_t id;
        const char *direction;          /* "outgoing", "incoming" */
        const char *result;             /* "completed", "failed", "cancelled" */
        uint64_t bytes;
        uint64_t duration_usec;         /* 0: not known (the job was not watched from its start) */
        uint64_t downtime_ms;           /* 0: unknown */
} MigrationSummary;

/* "Migration 3 (outgoing) completed: 4.0 GiB in 12.3s (333.3 MiB/s), downtime 120ms". The
 * downtime is told only for a completed job (a failed one never stopped the guest for good), as
 * "downtime unknown" when the daemon did not measure it. NULL on OOM. */
char *format_migration_summary(const MigrationSummary *s);

/* s as one shell word: as it is when it holds only characters no shell treats specially
 * ([A-Za-z0-9_@%+=:,./-], not empty), else in single quotes (a quote becoming '\''). NULL on OOM. */
char *shell_quote(const char *s);
