/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <stdarg.h>
#include <stdio.h>

#include "error-message.h"

_printf_(3, 0) static int error_vformat(ErrorMessage *e, int error, const char *format, va_list ap) {
        int saved_errno = errno;

        if (error > 0)
                error = -error;
        errno = -error;
        (void) vsnprintf(e->text, sizeof e->text, format, ap);
        errno = saved_errno;
        return error;
}

int error_setf(ErrorMessage *e, int error, const char *format, ...) {
        va_list ap;

        if (!e || e->text[0])
                return error > 0 ? -error : error;
        va_start(ap, format);
        error = error_vformat(e, error, format, ap);
        va_end(ap);
        return error;
}

int error_resetf(ErrorMessage *e, int error, const char *format, ...) {
        va_list ap;

        if (!e)
                return error > 0 ? -error : error;
        va_start(ap, format);
        error = error_vformat(e, error, format, ap);
        va_end(ap);
        return error;
}
