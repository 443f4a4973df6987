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

        if (cached < 0) {
                pid_t pid = getpid();
                cached = syscall(SYS_kcmp, pid, pid, KCMP_FILE_TYPE, fd, fd) == 0;
                if (!cached)
                        log_info("kcmp() is unavailable (%m): the service manager folds every two descriptors of "
                                 "one file into one fd store entry, and so does vfiomigd.");
        }
        return cached;
}

/* Exactly the same open file description: 1, 0, or negative when neither call works. */
static int same_description(int a, int b) {
        pid_t pid = getpid();
        int r;

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

static int key_get(int fd, size_t index, Key *ret) {
        struct stat st;
        int flags;

        if (fstat(fd, &st) < 0)
                return -errno;
        flags = fcntl(fd, F_GETFL);
        if (flags < 0)
                return -errno;
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

static int key_compare(const void *x, const void *y) {
        const Key *a = x, *b = y;

        if (a->dev != b->dev)
                return a->dev < b->dev ? -1 : 1;
        if (a->ino != b->ino)
                return a->ino < b->ino ? -1 : 1;
        return a->index < b->index ? -1 : a->index > b->index;
}

typedef struct UserRef {
        const char *name;
        size_t entry;
} UserRef;

static int user_compare(const void *x, const void *y) {
        return strcmp(((const UserRef *) x)->name, ((const UserRef *) y)->name);
}

static ssize_t users_find(const UserRef *refs, size_t n, const char *name) {
        UserRef key = { .name = name };
        const UserRef *hit = bsearch(&key, refs, n, sizeof *refs, user_compare);
        return hit ? (ssize_t) hit->entry : -1;
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

int fd_table_plan(FdTable *old, const NamedFds *desired, FdTable *ret, bool **ret_kept) {
        _cleanup_(fd_table_done) FdTable new = { .next_id = old->next_id };
        _cleanup_free_ Key *keys = NULL;
        _cleanup_free_ UserRef *refs = NULL;
        _cleanup_free_ size_t *group_of = NULL, *group_rep = NULL;
        _cleanup_free_ ssize_t *group_old = NULL;
        _cleanup_free_ bool *kept = NULL;
        size_t n = desired->n, n_refs = 0, n_groups = 0;
        int r;

        keys = new0(Key, MAX(n, 1u));
        group_of = new0(size_t, MAX(n, 1u));
        group_rep = new0(size_t, MAX(n, 1u));
        group_old = new0(ssize_t, MAX(n, 1u));
        kept = new0(bool, MAX(old->n, 1u));
        if (!keys || !group_of || !group_rep || !group_old || !kept)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                r = key_get(desired->items[i].fd, i, &keys[i]);
                if (r < 0)
                        return log_error_errno(r, "Cannot examine the descriptor of %s: %m", desired->items[i].name);
        }

        /* Group: only descriptors of one inode can be one description, so each run of equal
         * (dev, ino) is compared against the representatives of the groups found in it. Many
         * mappings of one memfd match the first representative at once. */
        qsort(keys, n, sizeof *keys, key_compare);
        for (size_t i = 0, run = 0; i < n; i++) {
                const Key *k = &keys[i];
                size_t g;

                if (i > 0 && (k->dev != keys[i - 1].dev || k->ino != keys[i - 1].ino))
                        run = n_groups;
                for (g = run; g < n_groups; g++) {
                        const Key *rep = &keys[group_rep[g]];
                        r = same_entry(desired->items[rep->index].fd, rep, desired->items[k->index].fd, k);
                        if (r < 0)
                                return r;
                        if (r > 0)
                                break;
                }
                if (g == n_groups) {
                        group_rep[n_groups] = i;
                        group_old[n_groups] = -1;
                        n_groups++;
                }
                group_of[k->index] = g;
        }

        /* A group takes over the old entry of one of its users, if that entry is of the same file. */
        for (size_t e = 0; e < old->n; e++)
                n_refs += strv_length(old->entries[e].users);
        refs = new0(UserRef, MAX(n_refs, 1u));
        if (!refs)
                return -ENOMEM;
        n_refs = 0;
        for (size_t e = 0; e < old->n; e++)
                for (char **u = old->entries[e].users; u && *u; u++)
                        refs[n_refs++] = (UserRef) { .name = *u, .entry = e };
        qsort(refs, n_refs, sizeof *refs, user_compare);
        for (size_t i = 0; i < n; i++) {
                size_t g = group_of[i];
                const Key *rep = &keys[group_rep[g]];
                ssize_t e;

                if (group_old[g] >= 0)
                        continue;
                e = users_find(refs, n_refs, desired->items[i].name);
                if (e < 0 || kept[e])
                        continue;
                if (old->entries[e].dev != rep->dev || old->entries[e].ino != rep->ino ||
                    old->entries[e].flags != rep->flags)
                        continue;
                kept[e] = true;
                group_old[g] = e;
        }

        for (size_t g = 0; g < n_groups; g++) {
                const Key *rep = &keys[group_rep[g]];
                FdEntry e = {
                        .dev = rep->dev,
                        .ino = rep->ino,
                        .flags = rep->flags,
                        .fd = desired->items[rep->index].fd,
                };

                if (group_old[g] >= 0) {
                        e.name = strdup(old->entries[group_old[g]].name);
                        e.stored = old->entries[group_old[g]].stored;
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
        /* Users in desired order: the order of the objects in the state. */
        for (size_t i = 0; i < n; i++) {
                r = strv_extend(&new.entries[group_of[i]].users, desired->items[i].name);
                if (r < 0)
                        return r;
        }

        *ret = new;
        new = (FdTable) {};
        *ret_kept = TAKE_PTR(kept);
        return 0;
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
        FdEntry e = { .stored = stored, .fd = -EBADF };
        struct stat st;
        int r;

        if (fstat(fd, &st) < 0)
                return -errno;
        e.dev = st.st_dev;
        e.ino = st.st_ino;
        e.flags = fcntl(fd, F_GETFL);
        if (e.flags < 0)
                return -errno;
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
