/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * What the service manager's fd store holds for us: one entry per open file description.
 *
 * systemd keeps one entry per open file description and silently drops a second FDSTORE=1 of
 * the same one, name and all (service_add_fd_store() and same_fd()). Many objects share one
 * description: every mapping of ranges of one guest-RAM memfd is the normal VMM layout. So the
 * daemon's objects are not stored under their own names: each object has a logical name (the
 * "user", e.g. map-s0-3, k-device-edu) and the descriptions they use are grouped into entries
 * ("fd-N"), each stored once and listed with its users in the saved state. An entry stays in the
 * store while one user remains; it is removed (FDSTOREREMOVE) with its last user.
 *
 * Our grouping is at least as coarse as systemd's, so that we never send two entries it would
 * fold: where kcmp() works, systemd folds exactly the same open file description, and so do we
 * (F_DUPFD_QUERY or kcmp). Without kcmp (no CONFIG_KCMP, or a seccomp filter), systemd 252 falls
 * back to folding any two descriptors of one inode that is no device node and that have equal
 * F_GETFL flags; we then fold those too. For regular files (memfds, hugetlbfs, tmpfs) that is
 * harmless: a mapping needs the file, not one particular open of it.
 */

#include <json.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "named-fds.h"

#define FD_ENTRY_PREFIX "fd-"

typedef struct FdEntry {
        char *name;     /* in the fd store: "fd-N" (a version 1 state: the user's own name) */
        char **users;   /* the logical names of the objects using it (strv) */
        int *fds;       /* each user's descriptor at the last plan (borrowed; NULL after a restore) */
        dev_t dev;      /* the file, to recognise the entry's users at the next save */
        ino_t ino;
        mode_t mode;
        int flags;      /* F_GETFL where kcmp() is unavailable, else 0 */
        bool stored;    /* FDSTORE=1 was sent (successfully) */
        int fd;         /* during a save: a user's descriptor (borrowed), to send; else -EBADF */
} FdEntry;

typedef struct FdTable {
        FdEntry *entries;
        size_t n;
        uint64_t next_id; /* the N of the next "fd-N" */
} FdTable;

void fd_table_done(FdTable *t);

/* Groups the descriptors in desired (logical name → descriptor) by open file description into
 * ret. A group whose users include a user of an entry of old on the same file takes that
 * entry over (name, stored); every other group is a new entry "fd-N" with stored false.
 * ret_kept[i] says whether old->entries[i] lives on (the caller removes the others from the
 * store); it has old->n elements. Entries' fd fields borrow from desired. */
int fd_table_plan(FdTable *old, const NamedFds *desired, FdTable *ret, bool **ret_kept);

/* The same entries, in the same order, with the same users in the same order. */
bool fd_table_same(const FdTable *a, const FdTable *b);
/* The entry a user belongs to, or -1. */
ssize_t fd_table_find_user(const FdTable *t, const char *user);
/* The entry of that name, or -1. */
ssize_t fd_table_find(const FdTable *t, const char *name);
/* Removes entry i. */
void fd_table_remove(FdTable *t, size_t i);
/* Appends an entry (copies name and users); file identity from fd. */
int fd_table_add(FdTable *t, const char *name, char *const *users, int fd, bool stored);
/* Raises next_id past an "fd-N" name. */
void fd_table_note_name(FdTable *t, const char *name);

/* [{"name": "fd-1", "users": ["map-s0-0", "map-s0-1"]}, ...] */
int fd_table_to_json(const FdTable *t, json_object **ret);

/* Whether two descriptors are one entry for the fd store (see above). Exported for tests. */
int fd_same_entry(int a, int b);
