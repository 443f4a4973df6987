/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fd-table.h"
#include "log.h"
#include "macro.h"
#include "strv.h"

#ifndef F_DUPFD_QUERY
#define F_DUPFD_QUERY (1024 + 3) /* Linux 6.10 */
#endif
#define KCMP_FILE_TYPE 0

static void entry_done(FdEntry *e) {
        free(e->name);
        strv_free(e->users);
        free(e->fds);
        *e = (FdEntry) { .fd = -EBADF };
}

void fd_table_done(FdTable *t) {
        for (size_t i = 0; i < t->n; i++)
                entry_done(&t->entries[i]);
        free(t->entries);
        *t = (FdTable) {};
}

/* 1 when kcmp(KCMP_FILE) answers in this process, 0 when the kernel or a seccomp filter refuses
 * it: then systemd, lacking it too (it is the same kernel), folds by its fallback. A seccomp
 * filter of ours alone cannot be told apart; folding more than needed is the safe side. */
static int kcmp_works(int fd) {
        static int cached = -1;
        pid_t pid;

        if (cached >= 0)
                return cached;
        pid = getpid();
        if (syscall(SYS_kcmp, pid, pid, KCMP_FILE_TYPE, fd, fd) == 0)
                return (cached = 1);
        /* Only the answers systemd's same_fd() takes for "no kcmp" are remembered; anything else
         * (a bad descriptor) says nothing about the kernel. */
        if (errno != ENOSYS && errno != EPERM && errno != EACCES)
                return 0;
        log_info_errno(errno, "kcmp() is unavailable (%m): the service manager folds every two descriptors of one "
                       "file that is no device node into one fd store entry, and so does vfiomigd.");
        return (cached = 0);
}

/* Exactly the same open file description: 1, 0, or negative when neither call works. */
static int same_description(int a, int b) {
        static pid_t pid = 0;
        int r;

        if (pid == 0)
                pid = getpid(); /* the daemon never forks */

        r = fcntl(a, F_DUPFD_QUERY, b);
        if (r >= 0)
                return r > 0;
        r = (int) syscall(SYS_kcmp, pid, pid, KCMP_FILE_TYPE, a, b);
        if (r >= 0)
                return r == 0;
        return -errno;
}

typedef struct Key {
        dev_t dev;
        ino_t ino;
        mode_t mode;
        int flags;
        size_t index; /* into desired */
} Key;

/* The F_GETFL flags, which only systemd's fallback without kcmp compares: with kcmp, one open
 * file description has one set of flags anyway, and the call is saved (0). */
static int fallback_flags(int fd) {
        int flags;

        if (kcmp_works(fd))
                return 0;
        flags = fcntl(fd, F_GETFL);
        return flags < 0 ? -errno : flags;
}

static int key_get(int fd, size_t index, Key *ret) {
        struct stat st;
        int flags;

        if (fstat(fd, &st) < 0)
                return -errno;
        flags = fallback_flags(fd);
        if (flags < 0)
                return flags;
        *ret = (Key) { .dev = st.st_dev, .ino = st.st_ino, .mode = st.st_mode, .flags = flags, .index = index };
        return 0;
}

/* systemd's same_fd() without kcmp: one inode, no device node, equal F_GETFL flags. */
static bool fallback_same(const Key *a, const Key *b) {
        return a->dev == b->dev && a->ino == b->ino && !S_ISCHR(a->mode) && !S_ISBLK(a->mode) &&
               a->flags == b->flags;
}

static int same_entry(int a, const Key *ka, int b, const Key *kb) {
        int r;

        if (ka->dev != kb->dev || ka->ino != kb->ino)
                return 0;
        if (a == b)
                return 1;
        r = same_description(a, b);
        if (r > 0)
                return 1;
        if (kcmp_works(a))
                return 0;
        if (!fallback_same(ka, kb))
                return 0;
        if (!S_ISREG(ka->mode))
                /* Two anonymous-inode objects (eventfds, legacy VFIO device fds) look alike
                 * without kcmp: the service manager would keep only one of them. */
                log_warning("Without kcmp() the service manager cannot keep two descriptors of one anonymous "
                            "inode apart: only one will survive a restart.");
        return 1;
}

int fd_same_entry(int a, int b) {
        Key ka, kb;
        int r;

        r = key_get(a, 0, &ka);
        if (r >= 0)
                r = key_get(b, 1, &kb);
        return r < 0 ? r : same_entry(a, &ka, b, &kb);
}

typedef struct UserRef {
        const char *name;
        size_t entry;
        int fd; /* the user's descriptor at the last plan, or -EBADF */
} UserRef;

static int user_compare(const void *x, const void *y) {
        return strcmp(((const UserRef *) x)->name, ((const UserRef *) y)->name);
}

static const UserRef *users_find(const UserRef *refs, size_t n, const char *name) {
        UserRef key = { .name = name };
        return bsearch(&key, refs, n, sizeof *refs, user_compare);
}

void fd_table_note_name(FdTable *t, const char *name) {
        unsigned long long n;
        char tail;

        if (strncmp(name, FD_ENTRY_PREFIX, strlen(FD_ENTRY_PREFIX)) == 0 &&
            sscanf(name + strlen(FD_ENTRY_PREFIX), "%llu%c", &n, &tail) == 1 && n >= t->next_id &&
            n < UINT64_MAX)
                t->next_id = n + 1;
}

static int entry_append(FdTable *t, FdEntry *e) {
        FdEntry *entries = reallocarray(t->entries, t->n + 1, sizeof *entries);

        if (!entries)
                return -ENOMEM;
        t->entries = entries;
        t->entries[t->n++] = *e;
        *e = (FdEntry) { .fd = -EBADF };
        return 0;
}

/* A mapping never changes its file, and its name (map-SPACE-SERIAL) is never reused: a mapping
 * user with the very descriptor it had at the last plan is in the same entry, with no system
 * call. Other objects may replace their descriptor under the same name (a legacy device or group
 * reopened), so they are always examined. */
static bool user_is_mapping(const char *name) {
        return strncmp(name, "map-", 4) == 0;
}

typedef struct Group {
        Key key;
        int rep;      /* a user's descriptor */
        ssize_t old;  /* the entry of old it continues, or -1 */
} Group;

int fd_table_plan(FdTable *old, const NamedFds *desired, FdTable *ret, bool **ret_kept) {
        _cleanup_(fd_table_done) FdTable new = { .next_id = old->next_id };
        _cleanup_free_ UserRef *refs = NULL;
        _cleanup_free_ Group *groups = NULL;
        _cleanup_free_ size_t *group_of = NULL, *pending = NULL;
        _cleanup_free_ ssize_t *old_group = NULL;
        _cleanup_free_ bool *kept = NULL;
        size_t n = desired->n, n_refs = 0, n_groups = 0, n_pending = 0;
        int r;

        groups = new0(Group, MAX(n, 1u));
        group_of = new0(size_t, MAX(n, 1u));
        pending = new0(size_t, MAX(n, 1u));
        old_group = new0(ssize_t, MAX(old->n, 1u));
        kept = new0(bool, MAX(old->n, 1u));
        if (!groups || !group_of || !pending || !old_group || !kept)
                return -ENOMEM;
        for (size_t e = 0; e < old->n; e++)
                old_group[e] = -1;

        /* The old entries' users, by name, with the descriptor each had. */
        for (size_t e = 0; e < old->n; e++)
                n_refs += strv_length(old->entries[e].users);
        refs = new0(UserRef, MAX(n_refs, 1u));
        if (!refs)
                return -ENOMEM;
        n_refs = 0;
        for (size_t e = 0; e < old->n; e++)
                for (size_t u = 0; old->entries[e].users && old->entries[e].users[u]; u++)
                        refs[n_refs++] = (UserRef) {
                                .name = old->entries[e].users[u],
                                .entry = e,
                                .fd = old->entries[e].fds ? old->entries[e].fds[u] : -EBADF,
                        };
        qsort(refs, n_refs, sizeof *refs, user_compare);

        /* Unchanged mappings join their entry's group at once. */
        for (size_t i = 0; i < n; i++) {
                const NamedFd *d = &desired->items[i];
                const UserRef *ref = user_is_mapping(d->name) ? users_find(refs, n_refs, d->name) : NULL;
                const FdEntry *e;

                if (!ref || ref->fd != d->fd) {
                        pending[n_pending++] = i;
                        continue;
                }
                e = &old->entries[ref->entry];
                if (old_group[ref->entry] < 0) {
                        groups[n_groups] = (Group) {
                                .key = { .dev = e->dev, .ino = e->ino, .mode = e->mode, .flags = e->flags, .index = i },
                                .rep = d->fd,
                                .old = (ssize_t) ref->entry,
                        };
                        kept[ref->entry] = true;
                        old_group[ref->entry] = (ssize_t) n_groups++;
                }
                group_of[i] = (size_t) old_group[ref->entry];
        }

        /* The others: examined, and compared with every group of the same inode (only those can be
         * one description; many new mappings of one memfd match the first group at once). */
        for (size_t p = 0; p < n_pending; p++) {
                size_t i = pending[p], g;
                Key k;

                r = key_get(desired->items[i].fd, i, &k);
                if (r < 0)
                        return log_error_errno(r, "Cannot examine the descriptor of %s: %m", desired->items[i].name);
                for (g = 0; g < n_groups; g++) {
                        if (groups[g].key.dev != k.dev || groups[g].key.ino != k.ino)
                                continue;
                        r = same_entry(groups[g].rep, &groups[g].key, desired->items[i].fd, &k);
                        if (r < 0)
                                return r;
                        if (r > 0)
                                break;
                }
                if (g == n_groups)
                        groups[n_groups++] = (Group) { .key = k, .rep = desired->items[i].fd, .old = -1 };
                group_of[i] = g;
        }

        /* A new group takes over the old entry of one of its users, if that entry is of the same
         * file (the objects it kept across a restart, or a device whose descriptor changed). */
        for (size_t p = 0; p < n_pending; p++) {
                size_t i = pending[p];
                Group *grp = &groups[group_of[i]];
                const UserRef *ref;
                const FdEntry *e;

                if (grp->old >= 0)
                        continue;
                ref = users_find(refs, n_refs, desired->items[i].name);
                if (!ref || kept[ref->entry])
                        continue;
                e = &old->entries[ref->entry];
                if (e->dev != grp->key.dev || e->ino != grp->key.ino || e->flags != grp->key.flags)
                        continue;
                kept[ref->entry] = true;
                grp->old = (ssize_t) ref->entry;
        }

        for (size_t g = 0; g < n_groups; g++) {
                FdEntry e = {
                        .dev = groups[g].key.dev,
                        .ino = groups[g].key.ino,
                        .mode = groups[g].key.mode,
                        .flags = groups[g].key.flags,
                        .fd = groups[g].rep,
                };

                if (groups[g].old >= 0) {
                        e.name = strdup(old->entries[groups[g].old].name);
                        e.stored = old->entries[groups[g].old].stored;
                } else if (asprintf(&e.name, FD_ENTRY_PREFIX "%llu", (unsigned long long) new.next_id++) < 0)
                        e.name = NULL;
                if (!e.name)
                        return -ENOMEM;
                r = entry_append(&new, &e);
                if (r < 0) {
                        entry_done(&e);
                        return r;
                }
        }
        /* Users in desired order (the order of the objects in the state), with their descriptors. */
        {
                _cleanup_free_ size_t *count = new0(size_t, MAX(n_groups, 1u));

                if (!count)
                        return -ENOMEM;
                for (size_t i = 0; i < n; i++)
                        count[group_of[i]]++;
                for (size_t g = 0; g < n_groups; g++) {
                        new.entries[g].users = new0(char *, count[g] + 1);
                        new.entries[g].fds = new0(int, count[g]);
                        if (!new.entries[g].users || !new.entries[g].fds)
                                return -ENOMEM;
                        count[g] = 0;
                }
                for (size_t i = 0; i < n; i++) {
                        FdEntry *e = &new.entries[group_of[i]];
                        size_t k = count[group_of[i]]++;

                        e->users[k] = strdup(desired->items[i].name);
                        if (!e->users[k])
                                return -ENOMEM;
                        e->fds[k] = desired->items[i].fd;
                }
        }

        *ret = new;
        new = (FdTable) {};
        *ret_kept = TAKE_PTR(kept);
        return 0;
}

bool fd_table_same(const FdTable *a, const FdTable *b) {
        if (a->n != b->n)
                return false;
        for (size_t i = 0; i < a->n; i++) {
                char **x = a->entries[i].users, **y = b->entries[i].users;

                if (!streq(a->entries[i].name, b->entries[i].name))
                        return false;
                for (; x && *x && y && *y; x++, y++)
                        if (!streq(*x, *y))
                                return false;
                if ((x && *x) || (y && *y))
                        return false;
        }
        return true;
}

ssize_t fd_table_find_user(const FdTable *t, const char *user) {
        for (size_t i = 0; i < t->n; i++)
                if (strv_contains(t->entries[i].users, user))
                        return (ssize_t) i;
        return -1;
}

ssize_t fd_table_find(const FdTable *t, const char *name) {
        for (size_t i = 0; i < t->n; i++)
                if (streq(t->entries[i].name, name))
                        return (ssize_t) i;
        return -1;
}

void fd_table_remove(FdTable *t, size_t i) {
        entry_done(&t->entries[i]);
        memmove(t->entries + i, t->entries + i + 1, (t->n - i - 1) * sizeof *t->entries);
        t->n--;
}

int fd_table_add(FdTable *t, const char *name, char *const *users, int fd, bool stored) {
        FdEntry e = { .stored = stored, .fd = -EBADF }; /* no fds: nothing is known to be unchanged */
        struct stat st;
        int r;

        if (fstat(fd, &st) < 0)
                return -errno;
        e.dev = st.st_dev;
        e.ino = st.st_ino;
        e.mode = st.st_mode;
        e.flags = fallback_flags(fd);
        if (e.flags < 0)
                return e.flags;
        e.name = strdup(name);
        if (!e.name)
                return -ENOMEM;
        for (char *const *u = users; u && *u; u++) {
                r = strv_extend(&e.users, *u);
                if (r < 0) {
                        entry_done(&e);
                        return r;
                }
        }
        fd_table_note_name(t, name);
        r = entry_append(t, &e);
        if (r < 0)
                entry_done(&e);
        return r;
}

static int add_string(json_object *o, const char *key, const char *v) {
        json_object *j = json_object_new_string(v);

        if (!j || json_object_object_add(o, key, j) < 0) {
                json_object_put(j);
                return -ENOMEM;
        }
        return 0;
}

int fd_table_to_json(const FdTable *t, json_object **ret) {
        json_object *a = json_object_new_array();

        if (!a)
                return -ENOMEM;
        for (size_t i = 0; i < t->n; i++) {
                json_object *o = json_object_new_object(), *users = json_object_new_array();

                if (!o || !users || json_object_object_add(o, "users", users) < 0) {
                        json_object_put(users);
                        json_object_put(o);
                        json_object_put(a);
                        return -ENOMEM;
                }
                if (json_object_array_add(a, o) < 0) {
                        json_object_put(o);
                        json_object_put(a);
                        return -ENOMEM;
                }
                if (add_string(o, "name", t->entries[i].name) < 0) {
                        json_object_put(a);
                        return -ENOMEM;
                }
                for (char **u = t->entries[i].users; u && *u; u++) {
                        json_object *j = json_object_new_string(*u);
                        if (!j || json_object_array_add(users, j) < 0) {
                                json_object_put(j);
                                json_object_put(a);
                                return -ENOMEM;
                        }
                }
        }
        *ret = a;
        return 0;
}
