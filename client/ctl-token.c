/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl-token.h"

/* Room for the token, a CR LF and some trailing blanks; anything longer is no token. */
#define TOKEN_INPUT_MAX 256

int ctl_token_read_fd(int fd, char ret[static CTL_TOKEN_HEX_LEN + 1], const char **ret_why) {
        char buf[TOKEN_INPUT_MAX + 1];
        bool line = isatty(fd);
        size_t n = 0;

        /* One byte at a time from a terminal, so that Enter ends the token. */
        while (n < sizeof buf) {
                ssize_t k = read(fd, buf + n, line ? 1 : sizeof buf - n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                if (k == 0)
                        break;
                n += (size_t) k;
                if (line && buf[n - 1] == '\n')
                        break;
        }
        if (n > TOKEN_INPUT_MAX) {
                *ret_why = "is longer than 64 hex digits";
                return -EINVAL;
        }
        if (memchr(buf, 0, n)) {
                *ret_why = "contains a character that is no hex digit";
                return -EINVAL;
        }
        return ctl_token_parse(buf, n, ret, ret_why);
}

int ctl_token_read_file(const char *path, char ret[static CTL_TOKEN_HEX_LEN + 1], bool *ret_shared,
                        const char **ret_why) {
        struct stat st;
        int fd, r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return -errno;
        if (fstat(fd, &st) < 0) {
                r = -errno;
                close(fd);
                return r;
        }
        if (S_ISDIR(st.st_mode)) {
                close(fd);
                return -EISDIR;
        }
        r = ctl_token_read_fd(fd, ret, ret_why);
        close(fd);
        if (r >= 0)
                *ret_shared = S_ISREG(st.st_mode) && (st.st_mode & (S_IRGRP | S_IROTH));
        return r;
}

int ctl_token_file_create(const char *path) {
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
        if (fd < 0)
                return -errno;
        /* The umask can only take bits away; nobody but the owner may read it, whatever it is. */
        if (fchmod(fd, 0600) < 0) {
                int r = -errno;
                close(fd);
                (void) unlink(path);
                return r;
        }
        return fd;
}

int ctl_token_file_write(int fd, const char *token) {
        char line[CTL_TOKEN_HEX_LEN + 2];
        size_t len = (size_t) snprintf(line, sizeof line, "%s\n", token), done = 0;
        int r = 0;

        while (done < len) {
                ssize_t k = write(fd, line + done, len - done);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0) {
                        r = -errno;
                        break;
                }
                done += (size_t) k;
        }
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        return r;
}
