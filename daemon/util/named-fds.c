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

int named_fds_add(NamedFds *s, const char *name, int fd, bool owned) {
        NamedFd *items;
        char *copy;

        if (!named_fd_name_valid(name) || fd < 0)
                return -EINVAL;
        if (named_fds_get(s, name) >= 0)
                return -EEXIST;
        copy = strdup(name);
        if (!copy)
                return -ENOMEM;
        items = reallocarray(s->items, s->n + 1, sizeof *items);
        if (!items) {
                free(copy);
                return -ENOMEM;
        }
        s->items = items;
        s->items[s->n++] = (NamedFd) { .name = copy, .fd = fd, .owned = owned };
        return 0;
}

int named_fds_get(const NamedFds *s, const char *name) {
        for (size_t i = 0; i < s->n; i++)
                if (streq(s->items[i].name, name))
                        return s->items[i].fd;
        return -ENOENT;
}

int named_fds_take(NamedFds *s, const char *name) {
        for (size_t i = 0; i < s->n; i++)
                if (streq(s->items[i].name, name)) {
                        int fd = s->items[i].fd;
                        free(s->items[i].name);
                        memmove(s->items + i, s->items + i + 1, (s->n - i - 1) * sizeof *s->items);
                        s->n--;
                        return fd;
                }
        return -ENOENT;
}

void named_fds_done(NamedFds *s) {
        for (size_t i = 0; i < s->n; i++) {
                if (s->items[i].owned)
                        safe_close(s->items[i].fd);
                free(s->items[i].name);
        }
        free(s->items);
        *s = (NamedFds) {};
}
