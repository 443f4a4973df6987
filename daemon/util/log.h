/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Logging in the systemd manner: log once where an error is decided, and let log_*_errno()
 * return the (negative) error so that "return log_error_errno(r, "...: %m");" both reports and
 * propagates. "%m" expands to the error passed in, not to whatever errno happens to hold.
 */

#include <stdarg.h>
#include <stdlib.h>
#include <syslog.h>

#include "macro.h"

typedef enum LogTarget {
        LOG_TARGET_AUTO,    /* journal when stderr is connected to it, else stderr */
        LOG_TARGET_STDERR,
        LOG_TARGET_JOURNAL,
        _LOG_TARGET_MAX,
        _LOG_TARGET_INVALID = -EINVAL,
} LogTarget;

void log_set_target(LogTarget target);
LogTarget log_get_target(void);
void log_set_max_level(int level);
int log_get_max_level(void);
int log_level_from_string(const char *s);
/* Reads $VFIOMIGD_LOG_LEVEL; call before parsing the command line, which may override it. */
void log_parse_environment(void);
/* Resolves LOG_TARGET_AUTO: the journal when stderr is connected to it, else stderr. */
void log_open(void);

/* Identifies the subject of the messages that follow on this thread (a device id, a job), or NULL.
 * Journal entries carry it as VFIO_DEVICE=, stderr lines as a prefix. */
void log_set_context_device(const char *device_id);

int log_internal(int level, int error, const char *file, int line, const char *func, const char *format, ...)
        _printf_(6, 7);

/* A made-up error that did not come from a failing call: %m still prints its text. */
#define SYNTHETIC_ERRNO(num) (num)

#define log_full_errno(level, error, ...)                                                      \
        ({                                                                                     \
                int _level = (level), _e = (error);                                            \
                _e = _e < 0 ? -_e : _e;                                                        \
                log_get_max_level() >= _level                                                  \
                        ? log_internal(_level, _e, __FILE__, __LINE__, __func__, __VA_ARGS__)  \
                        : -_e;                                                                 \
        })

#define log_full(level, ...) (void) log_full_errno(level, 0, __VA_ARGS__)

#define log_debug(...) log_full(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_full(LOG_INFO, __VA_ARGS__)
#define log_notice(...) log_full(LOG_NOTICE, __VA_ARGS__)
#define log_warning(...) log_full(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_full(LOG_ERR, __VA_ARGS__)

#define log_debug_errno(error, ...) log_full_errno(LOG_DEBUG, error, __VA_ARGS__)
#define log_info_errno(error, ...) log_full_errno(LOG_INFO, error, __VA_ARGS__)
#define log_notice_errno(error, ...) log_full_errno(LOG_NOTICE, error, __VA_ARGS__)
#define log_warning_errno(error, ...) log_full_errno(LOG_WARNING, error, __VA_ARGS__)
#define log_error_errno(error, ...) log_full_errno(LOG_ERR, error, __VA_ARGS__)

#define log_oom() log_error_errno(SYNTHETIC_ERRNO(ENOMEM), "Out of memory.")
