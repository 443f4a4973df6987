/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <inttypes.h>
#include <stdarg.h>

#include "ctl-output.h"

_printf_(3, 0) static void log_va(const char *prefix, int error, const char *format, va_list ap) {
        int saved_errno = errno;

        fputs(prefix, stderr);
        /* glibc expands %m from errno, so point it at the error being reported. */
        errno = error;
        vfprintf(stderr, format, ap);
        fputc('\n', stderr);
        errno = saved_errno;
}

int log_error_errno(int error, const char *format, ...) {
        va_list ap;

        error = error < 0 ? -error : error;
        va_start(ap, format);
        log_va(PROGRAM_NAME ": ", error, format, ap);
        va_end(ap);
        return -error;
}

void log_error(const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        log_va(PROGRAM_NAME ": ", 0, format, ap);
        va_end(ap);
}

void log_hint(const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        log_va("Hint: ", 0, format, ap);
        va_end(ap);
}

int json_add(json_object *o, const char *key, json_object *value) {
        if (!value)
                return -ENOMEM;
        if (json_object_object_add(o, key, value) < 0) {
                json_object_put(value);
                return -ENOMEM;
        }
        return 0;
}

int json_append(json_object *array, json_object *value) {
        if (!value)
                return -ENOMEM;
        if (json_object_array_add(array, value) < 0) {
                json_object_put(value);
                return -ENOMEM;
        }
        return 0;
}

int json_add_string(json_object *o, const char *key, const char *value) {
        if (!value)
                return json_object_object_add(o, key, NULL) < 0 ? -ENOMEM : 0;
        return json_add(o, key, json_object_new_string(value));
}

int json_add_uint64(json_object *o, const char *key, uint64_t value) {
        return json_add(o, key, json_object_new_uint64(value));
}

int json_add_bool(json_object *o, const char *key, bool value) {
        return json_add(o, key, json_object_new_boolean(value));
}

int json_add_strv(json_object *o, const char *key, char *const *l) {
        _cleanup_(json_object_putp) json_object *array = NULL;
        int r;

        array = json_object_new_array();
        if (!array)
                return -ENOMEM;
        for (char *const *i = l; i && *i; i++) {
                r = json_append(array, json_object_new_string(*i));
                if (r < 0)
                        return r;
        }
        return json_add(o, key, TAKE_PTR(array));
}

int json_print(json_object *j, JsonFormat format, FILE *f) {
        int flags = JSON_C_TO_STRING_NOSLASHESCAPE;
        const char *s;

        flags |= format == JSON_FORMAT_PRETTY ? JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED
                                              : JSON_C_TO_STRING_PLAIN;
        s = json_object_to_json_string_ext(j, flags);
        if (!s)
                return -ENOMEM;
        fputs(s, f);
        fputc('\n', f);
        return 0;
}

char *format_bytes(char *buf, size_t size, uint64_t bytes) {
        static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
        unsigned shift = 0;
        size_t unit = 0;

        if (bytes < 1024) {
                (void) snprintf(buf, size, "%" PRIu64 " B", bytes);
                return buf;
        }

        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                if (bytes >> (10 * (i + 1))) {
                        unit = i;
                        shift = 10 * (unsigned) (i + 1);
                }

        /* The remainder is below 2^shift ≤ 2^60, so ten times it still fits in 64 bits. */
        (void) snprintf(buf, size, "%" PRIu64 ".%" PRIu64 " %s", bytes >> shift,
                        ((bytes & ((UINT64_C(1) << shift) - 1)) * 10) >> shift, units[unit]);
        return buf;
}

char *strv_join_spaces(char *const *l) {
        size_t len = 1;
        char *s, *p;

        for (char *const *i = l; i && *i; i++)
                len += strlen(*i) + 1;
        s = p = malloc(len);
        if (!s)
                return NULL;
        *p = 0;
        for (char *const *i = l; i && *i; i++)
                p = stpcpy(stpcpy(p, i == l ? "" : " "), *i);
        return s;
}

int hexdump(FILE *f, uint64_t base, const void *data, size_t size) {
        const uint8_t *p = data;

        if (!f || (!data && size > 0))
                return -EINVAL;

        for (size_t line = 0; line < size; line += 16) {
                size_t n = MIN(size - line, (size_t) 16);

                fprintf(f, "%08" PRIx64 " ", base + line);
                for (size_t i = 0; i < 16; i++) {
                        if (i == 8)
                                fputc(' ', f);
                        if (i < n)
                                fprintf(f, " %02x", p[line + i]);
                        else
                                fputs("   ", f);
                }
                fputs("  |", f);
                for (size_t i = 0; i < n; i++) {
                        uint8_t c = p[line + i];

                        fputc(c >= 0x20 && c < 0x7f ? (char) c : '.', f);
                }
                fputs("|\n", f);
        }
        return 0;
}

char *base64_encode(const void *data, size_t size) {
        static const char table[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const uint8_t *p = data;
        char *s, *o;

        if (size > (SIZE_MAX - 1) / 4 * 3)
                return NULL;
        s = o = malloc((size + 2) / 3 * 4 + 1);
        if (!s)
                return NULL;
        for (size_t i = 0; i < size; i += 3) {
                uint32_t v = (uint32_t) p[i] << 16;

                if (i + 1 < size)
                        v |= (uint32_t) p[i + 1] << 8;
                if (i + 2 < size)
                        v |= p[i + 2];
                *o++ = table[(v >> 18) & 63];
                *o++ = table[(v >> 12) & 63];
                *o++ = i + 1 < size ? table[(v >> 6) & 63] : '=';
                *o++ = i + 2 < size ? table[v & 63] : '=';
        }
        *o = 0;
        return s;
}

struct Table {
        size_t n_columns;
        size_t n_cells;  /* including the header row */
        char **cells;
};

Table *table_new(const char *const *headers, size_t n_columns) {
        Table *t;

        if (!headers || n_columns == 0)
                return NULL;

        t = new0(Table, 1);
        if (!t)
                return NULL;
        t->n_columns = n_columns;
        if (table_add_row(t, headers) < 0)
                return table_free(t);
        return t;
}

Table *table_free(Table *t) {
        if (!t)
                return NULL;
        for (size_t i = 0; i < t->n_cells; i++)
                free(t->cells[i]);
        free(t->cells);
        free(t);
        return NULL;
}

int table_add_row(Table *t, const char *const *cells) {
        char **grown;

        if (!t || !cells)
                return -EINVAL;

        grown = reallocarray(t->cells, t->n_cells + t->n_columns, sizeof(char *));
        if (!grown)
                return -ENOMEM;
        t->cells = grown;

        for (size_t i = 0; i < t->n_columns; i++) {
                char *c = strdup(cells[i] ?: "-");

                if (!c) {
                        /* Drop the half-added row so the table stays rectangular. */
                        while (i > 0)
                                free(t->cells[t->n_cells + --i]);
                        return -ENOMEM;
                }
                t->cells[t->n_cells + i] = c;
        }
        t->n_cells += t->n_columns;
        return 0;
}

size_t table_n_rows(const Table *t) {
        /* Without the header. */
        return t ? t->n_cells / t->n_columns - 1 : 0;
}

int table_print(const Table *t, FILE *f) {
        _cleanup_free_ size_t *width = NULL;

        if (!t || !f)
                return -EINVAL;

        width = new0(size_t, t->n_columns);
        if (!width)
                return -ENOMEM;
        for (size_t i = 0; i < t->n_cells; i++)
                width[i % t->n_columns] = MAX(width[i % t->n_columns], strlen(t->cells[i]));

        for (size_t i = 0; i < t->n_cells; i++) {
                size_t column = i % t->n_columns;

                if (column + 1 < t->n_columns)
                        fprintf(f, "%-*s  ", (int) width[column], t->cells[i]);
                else
                        fprintf(f, "%s\n", t->cells[i]);
        }
        return 0;
}

/* ---- migrations ---- */

#define USEC_PER_MSEC UINT64_C(1000)
#define USEC_PER_SEC UINT64_C(1000000)

char *format_duration(char *buf, size_t size, uint64_t usec) {
        uint64_t sec = usec / USEC_PER_SEC;

        if (usec < USEC_PER_SEC)
                (void) snprintf(buf, size, "%" PRIu64 "ms", usec / USEC_PER_MSEC);
        else if (sec < 60)
                (void) snprintf(buf, size, "%" PRIu64 ".%" PRIu64 "s", sec, usec % USEC_PER_SEC / 100000);
        else if (sec < 3600)
                (void) snprintf(buf, size, "%" PRIu64 "m%02" PRIu64 "s", sec / 60, sec % 60);
        else
                (void) snprintf(buf, size, "%" PRIu64 "h%02" PRIu64 "m", sec / 3600, sec % 3600 / 60);
        return buf;
}

char *format_rate(char *buf, size_t size, uint64_t bytes_per_second) {
        char b[FORMAT_BYTES_MAX];

        (void) snprintf(buf, size, "%s/s", format_bytes(b, sizeof(b), bytes_per_second));
        return buf;
}

int migration_eta_usec(uint64_t transferred, uint64_t expected, uint64_t rate, uint64_t *ret) {
        double eta;

        if (!ret)
                return -EINVAL;
        if (expected == 0 || rate == 0 || transferred >= expected)
                return -ENODATA;

        /* In floating point: (expected - transferred) * 10^6 need not fit in 64 bits, and an
         * estimate needs no more than its first digits anyway. */
        eta = (double) (expected - transferred) * (double) USEC_PER_SEC / (double) rate;
        *ret = eta >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t) eta;
        return 0;
}

int migration_percent(uint64_t transferred, uint64_t expected) {
        if (expected == 0)
                return -ENODATA;
        if (transferred >= expected)
                return 100;
        /* transferred < expected, so never 100 yet. Past 2^64/100 bytes, dividing expected first
         * keeps this in 64 bits; it may then round up, hence the cap. */
        if (transferred <= UINT64_MAX / 100)
                return (int) (transferred * 100 / expected);
        return (int) MIN(transferred / (expected / 100), (uint64_t) 99);
}

char *format_migration_progress(const MigrationProgress *p) {
        char done[FORMAT_BYTES_MAX], total[FORMAT_BYTES_MAX], rate[FORMAT_RATE_MAX], eta[FORMAT_DURATION_MAX];
        char of[FORMAT_BYTES_MAX + 16] = "", eta_text[FORMAT_DURATION_MAX + 8] = "", ready[48] = "";
        uint64_t eta_usec;
        char *s;
        int pct;

        if (!p)
                return NULL;

        pct = migration_percent(p->transferred, p->expected);
        if (pct >= 0)
                (void) snprintf(of, sizeof(of), " of %s (%d%%)", format_bytes(total, sizeof(total), p->expected),
                                pct);
        /* Waiting for a manual switchover, the rest moves only once it is asked for: no ETA. */
        if (!p->ready_for_switchover && migration_eta_usec(p->transferred, p->expected, p->rate, &eta_usec) >= 0)
                (void) snprintf(eta_text, sizeof(eta_text), ", ETA %s",
                                eta_usec == UINT64_MAX ? "never" : format_duration(eta, sizeof(eta), eta_usec));
        if (p->ready_for_switchover)
                (void) snprintf(ready, sizeof(ready), ", ready: vfiomigctl switchover %" PRIu32, p->id);

        if (asprintf(&s, "%s: %s%s, %s%s%s", p->phase && *p->phase ? p->phase : "unknown",
                     format_bytes(done, sizeof(done), p->transferred), of,
                     format_rate(rate, sizeof(rate), p->rate), eta_text, ready) < 0)
                return NULL;
        return s;
}

char *format_migration_summary(const MigrationSummary *m) {
        char bytes[FORMAT_BYTES_MAX], duration[FORMAT_DURATION_MAX], rate[FORMAT_RATE_MAX],
                downtime[FORMAT_DURATION_MAX];
        char in[FORMAT_DURATION_MAX + FORMAT_RATE_MAX + 8] = "", down[FORMAT_DURATION_MAX + 16] = "";
        char *s;

        if (!m)
                return NULL;

        if (m->duration_usec > 0) {
                /* The average over the whole job, in floating point: bytes times 10^6 would not
                 * fit in 64 bits, and the display needs no more than three digits. */
                double avg = (double) m->bytes * (double) USEC_PER_SEC / (double) m->duration_usec;

                (void) snprintf(in, sizeof(in), " in %s (%s)", format_duration(duration, sizeof(duration),
                                                                                m->duration_usec),
                                format_rate(rate, sizeof(rate), avg >= 18446744073709551615.0 ? UINT64_MAX
                                                                                              : (uint64_t) avg));
        }
        if (streq_ptr(m->result, "completed")) {
                if (m->downtime_ms > 0)
                        (void) snprintf(down, sizeof(down), ", downtime %s",
                                        format_duration(downtime, sizeof(downtime),
                                                        m->downtime_ms > UINT64_MAX / USEC_PER_MSEC
                                                                ? UINT64_MAX
                                                                : m->downtime_ms * USEC_PER_MSEC));
                else
                        (void) snprintf(down, sizeof(down), ", downtime unknown");
        }

        if (asprintf(&s, "Migration %" PRIu32 "%s%s%s %s: %s%s%s", m->id, m->direction ? " (" : "",
                     m->direction ?: "", m->direction ? ")" : "", m->result ?: "unknown",
                     format_bytes(bytes, sizeof(bytes), m->bytes), in, down) < 0)
                return NULL;
        return s;
}

char *shell_quote(const char *s) {
        static const char safe[] =
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_@%+=:,./-";
        size_t len = 3;
        char *q, *p;

        if (!s)
                return NULL;
        if (*s && strspn(s, safe) == strlen(s))
                return strdup(s);

        for (const char *i = s; *i; i++)
                len += *i == '\'' ? 4 : 1;
        q = p = malloc(len);
        if (!q)
                return NULL;
        *p++ = '\'';
        for (const char *i = s; *i; i++)
                if (*i == '\'')
                        p = stpcpy(p, "'\\''");
                else
                        *p++ = *i;
        *p++ = '\'';
        *p = 0;
        return q;
}
