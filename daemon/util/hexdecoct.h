/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

#include <errno.h>

/* The value of a hexadecimal digit (either case), or -EINVAL. */
static inline int unhexchar(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -EINVAL;
}
