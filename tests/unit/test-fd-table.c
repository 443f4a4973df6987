/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * fd_table_plan(): one entry per open file description, carried over from one save to the next
 * (the same names, nothing sent again), a new descriptor of a stored description joining its
 * entry, an entry kept while one user remains and dropped with the last, and a mapping's
 * unchanged descriptor taken without examining it again.
 */

#include <criterion/criterion.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fd-table.h"
#include "macro.h"
#include "strv.h"

static int memfd(void) {
        int fd = memfd_create("vfm-test", MFD_CLOEXEC);
        cr_assert_geq(fd, 0);
        return fd;
}

static bool have_kcmp(int fd) {
        return syscall(SYS_kcmp, getpid(), getpid(), 0, fd, fd) == 0;
}

/* Plans desired against *t, checks what the plan keeps, and makes it the new *t. */
static void plan(FdTable *t, const NamedFds *desired, size_t n_kept_expected) {
        FdTable next = {};
        _cleanup_free_ bool *kept = NULL;
        size_t n_kept = 0, n_old = t->n;

        cr_assert_eq(fd_table_plan(t, desired, &next, &kept), 0);
        for (size_t i = 0; i < n_old; i++)
                n_kept += kept[i];
        cr_assert_eq(n_kept, n_kept_expected, "%zu of %zu old entries kept", n_kept, n_old);
        for (size_t i = 0; i < next.n; i++)
                next.entries[i].stored = true; /* as persist.c's store_sync() */
        fd_table_done(t);
        *t = next;
}

static const FdEntry *entry_of_user(const FdTable *t, const char *user) {
        ssize_t i = fd_table_find_user(t, user);
        cr_assert_geq(i, 0, "%s is in no entry", user);
        return &t->entries[i];
}

Test(fd_table, entries_follow_their_users) {
        FdTable t = { .next_id = 1 };
        NamedFds d = {};
        int guest = memfd(), other = memfd(), dup1 = dup(guest), dup2 = dup(guest), dup3 = dup(guest);
        char path[64];
        int reopened;

        (void) snprintf(path, sizeof path, "/proc/self/fd/%d", guest);
        reopened = open(path, O_RDWR | O_CLOEXEC);
        cr_assert_geq(reopened, 0);

        /* three mappings of one description, one of another file, a device */
        cr_assert_eq(named_fds_add(&d, "map-s0-0", dup1, false), 0);
        cr_assert_eq(named_fds_add(&d, "map-s0-1", dup2, false), 0);
        cr_assert_eq(named_fds_add(&d, "map-s1-0", dup3, false), 0);
        cr_assert_eq(named_fds_add(&d, "map-s1-1", other, false), 0);
        cr_assert_eq(named_fds_add(&d, "sim-device-a", guest, false), 0);
        plan(&t, &d, 0);
        cr_assert_eq(t.n, 2, "one entry per open file description: %zu", t.n);
        cr_assert_eq(strv_length(entry_of_user(&t, "map-s0-0")->users), 4);
        cr_assert_eq(entry_of_user(&t, "map-s0-0"), entry_of_user(&t, "sim-device-a"));
        cr_assert_neq(entry_of_user(&t, "map-s0-0"), entry_of_user(&t, "map-s1-1"));
        cr_assert_str_eq(t.entries[0].name, "fd-1");
        cr_assert_str_eq(t.entries[1].name, "fd-2");

        /* the same again: both entries kept under their names, nothing new */
        plan(&t, &d, 2);
        cr_assert_eq(t.n, 2);
        cr_assert_eq(t.next_id, 3);
        cr_assert(t.entries[0].stored && t.entries[1].stored);

        /* a second open: its own entry where kcmp tells them apart, else systemd's fold */
        cr_assert_eq(named_fds_add(&d, "map-s0-2", reopened, false), 0);
        plan(&t, &d, 2);
        cr_assert_eq(t.n, have_kcmp(guest) ? 3 : 2);
        if (have_kcmp(guest))
                cr_assert_str_eq(entry_of_user(&t, "map-s0-2")->name, "fd-3");
        else
                cr_assert_eq(entry_of_user(&t, "map-s0-2"), entry_of_user(&t, "map-s0-0"));

        /* all but one user of the guest's description go: the entry stays */
        cr_assert_eq(named_fds_take(&d, "map-s0-0"), dup1);
        cr_assert_eq(named_fds_take(&d, "map-s0-1"), dup2);
        cr_assert_eq(named_fds_take(&d, "sim-device-a"), guest);
        plan(&t, &d, t.n);
        cr_assert_str_eq(entry_of_user(&t, "map-s1-0")->name, "fd-1");
        /* the last one goes (without kcmp the second open was folded into it and remains) */
        cr_assert_eq(named_fds_take(&d, "map-s1-0"), dup3);
        plan(&t, &d, 2);
        if (have_kcmp(guest))
                cr_assert_lt(fd_table_find(&t, "fd-1"), 0, "fd-1 went with its last user");
        else
                cr_assert_str_eq(entry_of_user(&t, "map-s0-2")->name, "fd-1");
        cr_assert_geq(fd_table_find(&t, "fd-2"), 0);

        fd_table_done(&t);
        named_fds_done(&d);
        close(guest);
        close(other);
        close(dup1);
        close(dup2);
        close(dup3);
        close(reopened);
}

Test(fd_table, a_mapping_replaced_under_its_name_is_examined) {
        FdTable t = { .next_id = 1 };
        NamedFds d = {};
        int a = memfd(), b = memfd();

        /* Not something the daemon does (serials are never reused), but a device may get a new
         * descriptor under its old name: only the very same descriptor is taken unexamined. */
        cr_assert_eq(named_fds_add(&d, "k-device-x", a, false), 0);
        plan(&t, &d, 0);
        cr_assert_eq(named_fds_take(&d, "k-device-x"), a);
        cr_assert_eq(named_fds_add(&d, "k-device-x", b, false), 0);
        plan(&t, &d, 0);
        cr_assert_eq(t.n, 1);
        cr_assert_str_eq(t.entries[0].name, "fd-2", "another file: a new entry, the old one dropped");
        fd_table_done(&t);
        named_fds_done(&d);
        close(a);
        close(b);
}

/* kcmp() refused with EPERM, as a seccomp filter or a kernel without CONFIG_KCMP would (criterion
 * runs each test in a process of its own, so this one decides kcmp_works() afresh). */
static void refuse_kcmp(void) {
        struct sock_filter filter[] = {
                BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
                BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_kcmp, 0, 1),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
                BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = { .len = ELEMENTSOF(filter), .filter = filter };

        cr_assert_eq(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        cr_assert_eq(prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog), 0);
}

/* Without kcmp systemd folds any two descriptors of one file that is no device node and whose
 * F_GETFL flags are equal; fd-table.c folds at least as much, and no more for device nodes. */
Test(fd_table, without_kcmp_folds_as_systemd_does) {
        FdTable t = { .next_id = 1 };
        NamedFds d = {};
        int guest = memfd(), other = memfd(), same, readonly, null1, null2;
        char path[64];

        refuse_kcmp();
        cr_assert(!have_kcmp(guest));
        (void) snprintf(path, sizeof path, "/proc/self/fd/%d", guest);
        same = open(path, O_RDWR | O_CLOEXEC);
        readonly = open(path, O_RDONLY | O_CLOEXEC);
        null1 = open("/dev/null", O_RDWR | O_CLOEXEC);
        null2 = open("/dev/null", O_RDWR | O_CLOEXEC);
        cr_assert(same >= 0 && readonly >= 0 && null1 >= 0 && null2 >= 0);

        cr_assert_eq(named_fds_add(&d, "map-s0-0", guest, false), 0);
        cr_assert_eq(named_fds_add(&d, "map-s0-1", same, false), 0);     /* another open, same flags */
        cr_assert_eq(named_fds_add(&d, "map-s0-2", readonly, false), 0); /* other flags */
        cr_assert_eq(named_fds_add(&d, "map-s0-3", other, false), 0);
        cr_assert_eq(named_fds_add(&d, "k-group-1", null1, false), 0);   /* device nodes: never folded */
        cr_assert_eq(named_fds_add(&d, "k-group-2", null2, false), 0);
        plan(&t, &d, 0);
        cr_assert_eq(t.n, 5, "%zu entries", t.n);
        cr_assert_eq(entry_of_user(&t, "map-s0-0"), entry_of_user(&t, "map-s0-1"));
        cr_assert_neq(entry_of_user(&t, "map-s0-0"), entry_of_user(&t, "map-s0-2"));
        cr_assert_neq(entry_of_user(&t, "k-group-1"), entry_of_user(&t, "k-group-2"));
        /* and a second plan keeps them all */
        plan(&t, &d, 5);

        fd_table_done(&t);
        named_fds_done(&d);
        close(guest);
        close(other);
        close(same);
        close(readonly);
        close(null1);
        close(null2);
}
