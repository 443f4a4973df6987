/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <string.h>

#include "macro.h"
#include "named-fds.h"

bool named_fd_name_valid(const char *name) {
        size_t n;

        if (!name)
                return false;
        n = strlen(name);
        if (n == 0 || n > 255)
                return false;
        for (size_t i = 0; i < n; i++)
                if (name[i] <= ' ' || name[i] >= 127 || name[i] == ':')
                        return false;
        return true;
}

/* FNV-1a */
static size_t name_hash(const char *name) {
        uint64_t h = UINT64_C(14695981039346656037);

        for (const unsigned char *c = (const unsigned char *) name; *c; c++)
                h = (h ^ *c) * UINT64_C(1099511628211);
        return (size_t) h;
}

/* The slot holding name, or the empty slot where it would go. */
static size_t slot_of(const NamedFds *s, const char *name) {
        size_t mask = s->n_slots - 1, i = name_hash(name) & mask;

        while (s->slots[i] != 0 && !streq(s->items[s->slots[i] - 1].name, name))
                i = (i + 1) & mask;
        return i;
}

static int reindex(NamedFds *s, size_t n_slots) {
        size_t *slots = new0(size_t, n_slots);

        if (!slots)
                return -ENOMEM;
        free(s->slots);
        s->slots = slots;
        s->n_slots = n_slots;
        for (size_t k = 0; k < s->n; k++)
                s->slots[slot_of(s, s->items[k].name)] = k + 1;
        return 0;
}

int named_fds_add(NamedFds *s, const char *name, int fd, bool owned) {
        NamedFd *items;
        char *copy;
        int r;

        if (!named_fd_name_valid(name) || fd < 0)
                return -EINVAL;
        if (named_fds_get(s, name) >= 0)
                return -EEXIST;
        if (2 * (s->n + 1) > s->n_slots) {
                r = reindex(s, MAX(s->n_slots * 2, (size_t) 16));
                if (r < 0)
                        return r;
        }
        copy = strdup(name);
        if (!copy)
                return -ENOMEM;
        items = reallocarray(s->items, s->n + 1, sizeof *items);
        if (!items) {
                free(copy);
                return -ENOMEM;
        }
        s->items = items;
        s->items[s->n] = (NamedFd) { .name = copy, .fd = fd, .owned = owned };
        s->slots[slot_of(s, copy)] = s->n + 1;
        s->n++;
        return 0;
}

int named_fds_get(const NamedFds *s, const char *name) {
        size_t i;

        if (s->n == 0)
                return -ENOENT;
        i = slot_of(s, name);
        return s->slots[i] != 0 ? s->items[s->slots[i] - 1].fd : -ENOENT;
}

/* Empties slot i, moving later entries of its probe run back (deletion without tombstones). */
static void slot_clear(NamedFds *s, size_t i) {
        size_t mask = s->n_slots - 1;

        for (size_t j = (i + 1) & mask; s->slots[j] != 0; j = (j + 1) & mask) {
                size_t home = name_hash(s->items[s->slots[j] - 1].name) & mask;
                /* The entry at j may move to i if its home is not in (i, j] (cyclically). */
                if (i <= j ? (home <= i || home > j) : (home <= i && home > j)) {
                        s->slots[i] = s->slots[j];
                        i = j;
                }
        }
        s->slots[i] = 0;
}

int named_fds_take(NamedFds *s, const char *name) {
        size_t i, k, last;
        int fd;

        if (s->n == 0)
                return -ENOENT;
        i = slot_of(s, name);
        if (s->slots[i] == 0)
                return -ENOENT;
        k = s->slots[i] - 1;
        fd = s->items[k].fd;
        slot_clear(s, i);
        free(s->items[k].name);
        last = s->n - 1;
        if (k != last) {
                s->items[k] = s->items[last];
                s->slots[slot_of(s, s->items[k].name)] = k + 1;
        }
        s->n--;
        return fd;
}

void named_fds_done(NamedFds *s) {
        for (size_t i = 0; i < s->n; i++) {
                if (s->items[i].owned)
                        safe_close(s->items[i].fd);
                free(s->items[i].name);
        }
        free(s->items);
        free(s->slots);
        *s = (NamedFds) {};
}
