/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* NULL-terminated string lists; strv_free() and _cleanup_strv_free_ are in macro.h. */
size_t strv_length(char *const *l);
/* The elements joined by sep; "" for an empty list; NULL on allocation failure. */
char *strv_join(char *const *l, const char *sep);
bool strv_contains(char *const *l, const char *s);
/* Appends a copy of value; -ENOMEM leaves the list as it was. */
int strv_extend(char ***l, const char *value);
/* Removes (and frees) every element equal to s. */
void strv_remove(char **l, const char *s);
