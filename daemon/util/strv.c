/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "strv.h"

size_t strv_length(char *const *l) {
        size_t n = 0;
        while (l && l[n])
                n++;
        return n;
}

char *strv_join(char *const *l, const char *sep) {
        size_t len = 1, seplen = strlen(sep);
        char *out, *p;

        for (size_t i = 0; l && l[i]; i++)
                len += strlen(l[i]) + (i > 0 ? seplen : 0);
        out = malloc(len);
        if (!out)
                return NULL;
        p = out;
        for (size_t i = 0; l && l[i]; i++) {
                if (i > 0)
                        p = stpcpy(p, sep);
                p = stpcpy(p, l[i]);
        }
        *p = '\0';
        return out;
}

bool strv_contains(char *const *l, const char *s) {
        for (size_t i = 0; l && l[i]; i++)
                if (strcmp(l[i], s) == 0)
                        return true;
        return false;
}

int strv_extend(char ***l, const char *value) {
        size_t n = strv_length(*l);
        char *copy, **grown;

        copy = strdup(value);
        if (!copy)
                return -ENOMEM;
        grown = reallocarray(*l, n + 2, sizeof *grown);
        if (!grown) {
                free(copy);
                return -ENOMEM;
        }
        grown[n] = copy;
        grown[n + 1] = NULL;
        *l = grown;
        return 0;
}

void strv_remove(char **l, const char *s) {
        char **w = l;

        for (char **r = l; r && *r; r++) {
                if (strcmp(*r, s) == 0)
                        free(*r);
                else
                        *w++ = *r;
        }
        if (w)
                *w = NULL;
}
