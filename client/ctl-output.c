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
