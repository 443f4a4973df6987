/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * A human sentence explaining why an operation failed, filled in where the failure is decided
 * (a backend knows "IOMMU group 12 is not viable"; the bus layer only sees -EBUSY). Lower layers
 * take an optional ErrorMessage* and never depend on sd-bus; the bus layer turns it into the
 * D-Bus error text. Filling it is not logging: the caller decides whether to log.
 */

#include "macro.h"

typedef struct ErrorMessage {
        char text[512];
} ErrorMessage;

/* Writes the message when e is non-NULL and returns -|error|, so "return error_setf(e, -EBUSY, ...)"
 * reports and propagates. "%m" expands to the given error. Keeps an earlier, more specific
 * message: the first layer to explain a failure wins. */
int error_setf(ErrorMessage *e, int error, const char *format, ...) _printf_(3, 4);

/* Like error_setf(), but replaces whatever was there. */
int error_resetf(ErrorMessage *e, int error, const char *format, ...) _printf_(3, 4);

static inline bool error_is_set(const ErrorMessage *e) {
        return e && e->text[0];
}
