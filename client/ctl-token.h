/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The migration token off the command line. Anything in argv is readable by every local user in
 * /proc/PID/cmdline, and the token is all a peer needs to take over the job: 'migrate' reads it
 * from a file or standard input, and 'incoming' writes it to a file only its owner can read.
 */

#include "ctl-parse.h"

/* Reads and checks a token from fd (until end of file; from a terminal, one line). -EINVAL with
 * *ret_why when the content is no token (see ctl_token_parse()), another negative errno when
 * reading fails. */
int ctl_token_read_fd(int fd, char ret[static CTL_TOKEN_HEX_LEN + 1], const char **ret_why);
/* The same from a file; *ret_shared says whether a regular file is readable by group or others. */
int ctl_token_read_file(const char *path, char ret[static CTL_TOKEN_HEX_LEN + 1], bool *ret_shared,
                        const char **ret_why);

/* Creates path for a token, mode 0600, never following a symlink and never replacing a file
 * (O_CREAT|O_EXCL|O_NOFOLLOW): -EEXIST when something is there. Returns the fd. */
int ctl_token_file_create(const char *path);
/* Writes "TOKEN\n" and closes fd (also on failure). */
int ctl_token_file_write(int fd, const char *token);
