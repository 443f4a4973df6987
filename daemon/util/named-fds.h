/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * A set of file descriptors under names: what the daemon keeps in the service manager's file
 * descriptor store (FDNAME=) and what it gets back on restart (LISTEN_FDNAMES). Names are what
 * systemd accepts: 1 to 255 printable ASCII characters other than ':'.
 */

#include <stdbool.h>
#include <stddef.h>

typedef struct NamedFd {
        char *name;
        int fd;
        bool owned;   /* closed by the set when freed */
} NamedFd;

typedef struct NamedFds {
        NamedFd *items;
        size_t n;
        /* An index by name (open addressing; item position + 1, 0 empty), so that a save of
         * thousands of descriptors is not quadratic in name comparisons. */
        size_t *slots;
        size_t n_slots;   /* a power of two, at least twice n; 0 before the first add */
} NamedFds;

bool named_fd_name_valid(const char *name);

/* Adds fd under name, borrowed (the set never closes it) or owned. -EEXIST for a name already
 * present, -EINVAL for an invalid name. */
int named_fds_add(NamedFds *s, const char *name, int fd, bool owned);
/* The fd under name (still in the set), or -ENOENT. */
int named_fds_get(const NamedFds *s, const char *name);
/* Removes name from the set and returns its fd, now the caller's; -ENOENT if absent. The last
 * item takes the place of the one removed. */
int named_fds_take(NamedFds *s, const char *name);
/* Closes the owned fds and frees everything. */
void named_fds_done(NamedFds *s);
