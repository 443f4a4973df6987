/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "log.h"

static LogTarget log_target = LOG_TARGET_AUTO;
static int log_max_level = LOG_INFO;
static _Thread_local const char *log_context_device;

void log_set_target(LogTarget target) {
        log_target = target;
}

LogTarget log_get_target(void) {
        return log_target;
}

void log_set_max_level(int level) {
        log_max_level = level;
}

int log_get_max_level(void) {
        return log_max_level;
}

void log_set_context_device(const char *device_id) {
        log_context_device = device_id;
}

int log_level_from_string(const char *s) {
        static const char *const names[] = {
                [LOG_EMERG] = "emerg",    [LOG_ALERT] = "alert",   [LOG_CRIT] = "crit",
                [LOG_ERR] = "err",        [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice",
                [LOG_INFO] = "info",      [LOG_DEBUG] = "debug",
        };

        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (streq(s, names[i]))
                        return (int) i;
        return -EINVAL;
}

/* $JOURNAL_STREAM names the device:inode of the stream systemd connected to stderr; if stderr
 * still is that stream we were started by systemd and may talk to journald directly. */
static bool stderr_is_journal(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return false;
        if (fstat(STDERR_FILENO, &st) < 0)
                return false;
        return (unsigned long long) st.st_dev == dev && (unsigned long long) st.st_ino == ino;
}

void log_parse_environment(void) {
        const char *e = getenv("VFIOMIGD_LOG_LEVEL");
        if (e) {
                int level = log_level_from_string(e);
                if (level >= 0)
                        log_max_level = level;
        }
}

void log_open(void) {
        if (log_target == LOG_TARGET_AUTO)
                log_target = stderr_is_journal() ? LOG_TARGET_JOURNAL : LOG_TARGET_STDERR;
}

int log_internal(int level, int error, const char *file, int line, const char *func, const char *format, ...) {
        char buffer[2048];
        int saved_errno = errno;
        va_list ap;

        /* glibc expands %m from errno: point it at the error being reported. */
        errno = error;
        va_start(ap, format);
        (void) vsnprintf(buffer, sizeof buffer, format, ap);
        va_end(ap);

        if (log_target == LOG_TARGET_JOURNAL) {
                char message[sizeof buffer + 16], priority[32], code_file[256], code_line[32],
                        code_func[128], ident[128], errno_field[32], device[160];
                struct iovec iov[8];
                size_t n = 0;

#define ADD_FIELD(buf, ...)                                                       \
        do {                                                                      \
                (void) snprintf(buf, sizeof buf, __VA_ARGS__);                    \
                iov[n++] = (struct iovec) { .iov_base = buf, .iov_len = strlen(buf) }; \
        } while (0)
                ADD_FIELD(message, "MESSAGE=%s", buffer);
                ADD_FIELD(priority, "PRIORITY=%i", level);
                ADD_FIELD(code_file, "CODE_FILE=%s", file ?: "");
                ADD_FIELD(code_line, "CODE_LINE=%i", line);
                ADD_FIELD(code_func, "CODE_FUNC=%s", func ?: "");
                ADD_FIELD(ident, "SYSLOG_IDENTIFIER=%s", program_invocation_short_name);
                if (error)
                        ADD_FIELD(errno_field, "ERRNO=%i", error);
                if (log_context_device)
                        ADD_FIELD(device, "VFIO_DEVICE=%s", log_context_device);
#undef ADD_FIELD
                (void) sd_journal_sendv(iov, (int) n);
        } else {
                if (log_context_device)
                        fprintf(stderr, "%s: %s\n", log_context_device, buffer);
                else
                        fprintf(stderr, "%s\n", buffer);
        }

        errno = saved_errno;
        return -error;
}
