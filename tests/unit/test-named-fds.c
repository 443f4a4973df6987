/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * NamedFds and its index by name: adds, lookups and takes in random order against a plain list,
 * so that the hash's backward-shift deletion and the swap on take never lose or confuse a name;
 * and the refusals (duplicate, invalid name).
 */

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>

#include "macro.h"
#include "named-fds.h"

#define N 3000

Test(named_fds, refusals) {
        NamedFds s = {};

        cr_assert_eq(named_fds_add(&s, "a", 0, false), 0);
        cr_assert_eq(named_fds_add(&s, "a", 1, false), -EEXIST);
        cr_assert_eq(named_fds_add(&s, "a:b", 1, false), -EINVAL);
        cr_assert_eq(named_fds_add(&s, "", 1, false), -EINVAL);
        cr_assert_eq(named_fds_add(&s, "b", -1, false), -EINVAL);
        cr_assert_eq(named_fds_get(&s, "b"), -ENOENT);
        cr_assert_eq(named_fds_take(&s, "b"), -ENOENT);
        cr_assert_eq(named_fds_take(&s, "a"), 0);
        cr_assert_eq(named_fds_get(&s, "a"), -ENOENT);
        cr_assert_eq(s.n, 0);
        named_fds_done(&s);
        cr_assert_eq(named_fds_get(&s, "a"), -ENOENT, "an empty set answers without an index");
}

Test(named_fds, random_adds_and_takes_match_a_plain_list) {
        static bool present[N];
        NamedFds s = {};
        size_t n = 0;
        char name[32];

        srandom(42);
        for (unsigned round = 0; round < 20 * N; round++) {
                unsigned k = (unsigned) random() % N;
                (void) snprintf(name, sizeof name, "map-s%u-%u", k % 7, k);
                if (random() % 3 != 0) {
                        int r = named_fds_add(&s, name, (int) k, false);
                        cr_assert_eq(r, present[k] ? -EEXIST : 0, "%s", name);
                        if (!present[k])
                                n++;
                        present[k] = true;
                } else {
                        int fd = named_fds_take(&s, name);
                        cr_assert_eq(fd, present[k] ? (int) k : -ENOENT, "%s", name);
                        if (present[k])
                                n--;
                        present[k] = false;
                }
                cr_assert_eq(s.n, n);
                if (round % 997 == 0)
                        for (unsigned j = 0; j < N; j++) {
                                (void) snprintf(name, sizeof name, "map-s%u-%u", j % 7, j);
                                cr_assert_eq(named_fds_get(&s, name), present[j] ? (int) j : -ENOENT, "%s", name);
                        }
        }
        for (size_t i = 0; i < s.n; i++)
                cr_assert_eq(named_fds_get(&s, s.items[i].name), s.items[i].fd);
        named_fds_done(&s);
}
