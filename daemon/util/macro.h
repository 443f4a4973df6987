/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Ownership helpers in the systemd style: every owning local carries a cleanup attribute, and
 * ownership leaves a scope only through TAKE_PTR()/TAKE_FD(), so an early return can never leak.
 */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _pure_ __attribute__((pure))
#define _const_ __attribute__((const))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _warn_unused_result_ __attribute__((warn_unused_result))
#define _likely_(x) (__builtin_expect(!!(x), 1))
#define _unlikely_(x) (__builtin_expect(!!(x), 0))

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))

#define new_array(type, n) ((type *) reallocarray(NULL, (n), sizeof(type)))
#define new0(type, n) ((type *) calloc((n), sizeof(type)))

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

#define TAKE_GENERIC(var, type, nullvalue)                \
        ({                                                \
                type *_pvar_ = &(var);                    \
                type _var_ = *_pvar_;                     \
                type _nullvalue_ = nullvalue;             \
                *_pvar_ = _nullvalue_;                    \
                _var_;                                    \
        })
#define TAKE_PTR_TYPE(ptr, type) TAKE_GENERIC(ptr, type, NULL)
#define TAKE_PTR(ptr) TAKE_PTR_TYPE(ptr, typeof(ptr))
#define TAKE_FD(fd) TAKE_GENERIC(fd, int, -EBADF)

/* Defines name##p() for use with _cleanup_, calling func(*p) when *p is not the null value. */
#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func)           \
        static inline void func##p(type *p) {             \
                if (*p)                                   \
                        func(*p);                         \
        }

static inline void *mfree(void *p) {
        free(p);
        return NULL;
}

static inline void *memdup(const void *p, size_t n) {
        void *q = malloc(n ?: 1);
        if (q && n > 0)
                memcpy(q, p, n);
        return q;
}

static inline void freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(freep)

/* Closes fd when valid and always returns -EBADF, so "fd = safe_close(fd);" leaves no stale number. */
static inline int safe_close(int fd) {
        if (fd >= 0) {
                int saved_errno = errno;
                (void) close(fd);
                errno = saved_errno;
        }
        return -EBADF;
}

static inline void closep(int *fd) {
        (void) safe_close(*fd);
}
#define _cleanup_close_ _cleanup_(closep)

static inline void fclosep(FILE **f) {
        if (*f)
                (void) fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)

static inline void strv_free(char **l) {
        if (!l)
                return;
        for (char **i = l; *i; i++)
                free(*i);
        free(l);
}
static inline void strv_freep(char ***l) {
        strv_free(*l);
}
#define _cleanup_strv_free_ _cleanup_(strv_freep)

/* Positive errno → negative, with a floor so a stray 0 from a misbehaving call cannot read as success. */
static inline int negative_errno(void) {
        return errno > 0 ? -errno : -EIO;
}

static inline bool streq_ptr(const char *a, const char *b) {
        if (!a || !b)
                return a == b;
        return strcmp(a, b) == 0;
}

#define streq(a, b) (strcmp((a), (b)) == 0)

static inline bool is_power_of_2_u64(uint64_t v) {
        return v != 0 && (v & (v - 1)) == 0;
}
