/* SPDX-License-Identifier: GPL-2.0-or-later */
/* Address spaces: validation of Map/Unmap, caps, device attachment; and a restart in one
 * process (export what the fd store would hold, free everything, restore from it). */

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "fd-table.h"
#include "manager.h"
#include "persist.h"
#include "sim-iommu.h"

#define MiB (UINT64_C(1) << 20)

static Manager *new_manager(unsigned max_mappings, uint64_t max_pinned) {
        ManagerOptions o = { .allow_simulated = true, .max_mappings = max_mappings, .max_pinned_bytes = max_pinned };
        Manager *m = NULL;

        o.kernel.dev_root = "/nonexistent";
        cr_assert_eq(manager_new(&o, &m), 0);
        return m;
}

static AddressSpace *new_space(Manager *m, SimMappingStyle style) {
        SpaceOptions o;
        AddressSpace *s = NULL;
        ErrorMessage err = {};

        space_options_init(&o);
        o.backend = IOMMU_BACKEND_SIM;
        o.sim_style = style;
        o.sim_style_given = true;
        cr_assert_eq(manager_create_space(m, &o, &s, &err), 0, "%s", err.text);
        return s;
}

static int memfd(uint64_t size) {
        int fd = memfd_create("test-address-space", MFD_CLOEXEC);
        cr_assert_geq(fd, 0);
        cr_assert_eq(ftruncate(fd, (off_t) size), 0);
        return fd;
}

static Device *attach_sim(Manager *m, const char *address) {
        Device *d = NULL;
        ErrorMessage err = {};
        cr_assert_eq(manager_attach(m, address, NULL, &d, &err), 0, "%s", err.text);
        return d;
}

static int map(AddressSpace *s, int fd, uint64_t offset, uint64_t length, uint64_t iova, ErrorMessage *err) {
        MapRequest req = { .fd = fd, .offset = offset, .length = length, .iova = iova,
                           .access = IOMMU_READ | IOMMU_WRITE };
        *err = (ErrorMessage) {};
        return address_space_map(s, &req, NULL, err);
}

Test(address_space, map_validation_names_every_problem_and_changes_nothing) {
        Manager *m = new_manager(0, 0);
        AddressSpace *s = new_space(m, SIM_MAP_BY_FILE);
        int fd = memfd(MiB), sv[2], pipefd[2];
        ErrorMessage err;

        cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        cr_assert_eq(pipe2(pipefd, O_CLOEXEC), 0);
        int ro = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
        cr_assert_geq(ro, 0);

        cr_assert_eq(map(s, sv[0], 0, 4096, 0, &err), -EINVAL);
        cr_assert(strstr(err.text, "socket"), "%s", err.text);
        cr_assert_eq(map(s, pipefd[0], 0, 4096, 0, &err), -EINVAL);
        cr_assert(strstr(err.text, "pipe"), "%s", err.text);
        cr_assert_eq(map(s, ro, 0, 4096, 0, &err), -EINVAL);
        cr_assert(strstr(err.text, "read-only"), "%s", err.text);
        cr_assert_eq(map(s, fd, 0, 0, 0, &err), -EINVAL);
        cr_assert_eq(map(s, fd, 1, 4096, 0, &err), -EINVAL);
        cr_assert(strstr(err.text, "multiples of 4096"), "%s", err.text);
        cr_assert_eq(map(s, fd, 0, 4097, 0, &err), -EINVAL);
        cr_assert_eq(map(s, fd, 0, 4096, 0x800, &err), -EINVAL);
        cr_assert_eq(map(s, fd, MiB - 4096, 8192, 0, &err), -EINVAL);
        cr_assert(strstr(err.text, "beyond the file"), "%s", err.text);
        cr_assert_eq(map(s, fd, 0, 8192, UINT64_MAX - 4095, &err), -EINVAL);
        cr_assert(strstr(err.text, "wraps"), "%s", err.text);
        MapRequest noaccess = { .fd = fd, .length = 4096 };
        cr_assert_eq(address_space_map(s, &noaccess, NULL, NULL), -EINVAL);
        cr_assert_eq(s->n_mappings, 0);
        cr_assert_eq(s->pinned_bytes, 0);

        cr_assert_eq(map(s, fd, 0, 0x10000, 0x100000, &err), 0, "%s", err.text);
        cr_assert_eq(map(s, fd, 0, 0x1000, 0x10f000, &err), -EEXIST);
        cr_assert(strstr(err.text, "overlaps"), "%s", err.text);
        /* the very last page of the IOVA space is a page like any other, as in the kernel */
        cr_assert_eq(map(s, fd, MiB - 4096, 4096, UINT64_MAX - 4095, &err), 0, "%s", err.text);
        cr_assert_eq(address_space_unmap(s, UINT64_MAX - 4095, 4096, &err), 0, "%s", err.text);
        cr_assert_eq(s->n_mappings, 1);
        cr_assert_eq(s->pinned_bytes, 0x10000);
        cr_assert_eq(manager_pinned_bytes(m), 0x10000);

        close(sv[0]);
        close(sv[1]);
        close(pipefd[0]);
        close(pipefd[1]);
        close(ro);
        close(fd);
        manager_free(m);
}

Test(address_space, unmap_covers_whole_mappings_only) {
        Manager *m = new_manager(0, 0);
        AddressSpace *s = new_space(m, SIM_MAP_BY_ADDRESS);
        int fd = memfd(MiB);
        ErrorMessage err;

        cr_assert_eq(map(s, fd, 0, 0x2000, 0x100000, &err), 0);
        cr_assert_eq(map(s, fd, 0x2000, 0x2000, 0x102000, &err), 0);
        cr_assert_eq(map(s, fd, 0x4000, 0x1000, 0x200000, &err), 0);
        close(fd); /* the space keeps its own reference */

        err = (ErrorMessage) {};
        cr_assert_eq(address_space_unmap(s, 0x100000, 0x1000, &err), -EEXIST);
        cr_assert(strstr(err.text, "split"), "%s", err.text);
        cr_assert_eq(address_space_unmap(s, 0x300000, 0x1000, NULL), -ENOENT);
        cr_assert_eq(address_space_unmap(s, 0x100000, 0, NULL), -EINVAL);
        cr_assert_eq(s->n_mappings, 3);
        /* one request may cover several whole mappings */
        cr_assert_eq(address_space_unmap(s, 0x100000, 0x4000, NULL), 0);
        cr_assert_eq(s->n_mappings, 1);
        cr_assert_eq(s->pinned_bytes, 0x1000);
        cr_assert_eq(address_space_unmap(s, 0x0, 0x400000, NULL), 0);
        cr_assert_eq(s->n_mappings, 0);
        manager_free(m);
}

Test(address_space, caps) {
        Manager *m = new_manager(2, 0x3000);
        AddressSpace *s = new_space(m, SIM_MAP_BY_FILE), *t = new_space(m, SIM_MAP_BY_FILE);
        int fd = memfd(MiB);
        ErrorMessage err;

        cr_assert_eq(map(s, fd, 0, 0x1000, 0x0, &err), 0);
        cr_assert_eq(map(s, fd, 0, 0x1000, 0x1000, &err), 0);
        cr_assert_eq(map(s, fd, 0, 0x1000, 0x2000, &err), -E2BIG);
        cr_assert(strstr(err.text, "max-mappings"), "%s", err.text);
        cr_assert_eq(map(t, fd, 0, 0x2000, 0x0, &err), -E2BIG, "the pinned-bytes cap spans all spaces");
        cr_assert(strstr(err.text, "max-pinned-bytes"), "%s", err.text);
        cr_assert_eq(map(t, fd, 0, 0x1000, 0x0, &err), 0);
        close(fd);
        manager_free(m);
}

Test(address_space, devices_and_destroy) {
        Manager *m = new_manager(0, 0);
        AddressSpace *s = new_space(m, SIM_MAP_BY_FILE), *t = new_space(m, SIM_MAP_BY_FILE);
        Device *d = attach_sim(m, "sim:a");
        ErrorMessage err = {};
        int fd = memfd(MiB), dfd = -1;
        char buf[6] = {};

        cr_assert_str_eq(s->id, "s0");
        cr_assert_str_eq(t->id, "s1");
        cr_assert_eq(manager_find_space(m, "s1"), t);
        cr_assert_eq(device_attach_space(d, s, &err), 0, "%s", err.text);
        cr_assert_eq(device_attach_space(d, s, NULL), 0, "attaching again to the same space is harmless");
        cr_assert_eq(device_attach_space(d, t, &err), -EBUSY);
        cr_assert_eq(address_space_device_count(s), 1);

        cr_assert_eq(map(s, fd, 0, 0x1000, 0x5000, &err), 0);
        cr_assert_eq(sim_iommu_dma(s->iommu, 0x5010, "hello", 5, true, NULL), 0);
        cr_assert_eq(pread(fd, buf, 5, 0x10), 5);
        cr_assert_str_eq(buf, "hello");

        err = (ErrorMessage) {};
        cr_assert_eq(manager_destroy_space(m, s, &err), -EBUSY);
        cr_assert(strstr(err.text, "sim_a is attached to s0"), "%s", err.text);
        cr_assert_eq(manager_destroy_space(m, t, NULL), 0);
        cr_assert_null(manager_find_space(m, "s1"));

        /* the device fd hand-out */
        cr_assert_eq(device_open_fd(d, ":1.7", &dfd, NULL), 0);
        cr_assert_geq(dfd, 0);
        close(dfd);
        cr_assert_eq(device_client_count(d), 1);
        cr_assert_eq(device_open_fd(d, ":1.7", &dfd, NULL), 0);
        close(dfd);
        cr_assert_eq(device_client_count(d), 1, "one client, however many copies");
        device_forget_client(d, ":1.7");
        cr_assert_eq(device_client_count(d), 0);
        cr_assert_eq(device_open_fd(d, ":1.8", &dfd, NULL), 0);
        close(dfd);
        cr_assert_eq(device_revoke_clients(d, NULL), 0);
        cr_assert_eq(device_client_count(d), 0);
        close(fd);
        manager_free(m);
}

/* The restart path end to end, without systemd: what the store would hold, handed to a new
 * manager. Planned (prepare_stop first) and crash (no preparation), both mapping styles. */
Test(address_space, restart_keeps_devices_spaces_mappings_and_their_memory) {
        for (int planned = 0; planned < 2; planned++)
                for (SimMappingStyle style = 0; style < _SIM_MAP_STYLE_MAX; style++) {
                        Manager *m = new_manager(0, 0), *m2 = new_manager(0, 0);
                        Persist *p = NULL, *p2 = NULL;
                        NamedFds stored = {};
                        ErrorMessage err = {};
                        int fd = memfd(MiB), dfd = -1;
                        char buf[8] = {};
                        TransitionReport rep;

                        cr_assert_eq(persist_new(m, &p), 0);
                        AddressSpace *s = new_space(m, style);
                        Device *d = attach_sim(m, "sim:gpu");
                        cr_assert_eq(device_attach_space(d, s, NULL), 0);
                        cr_assert_eq(map(s, fd, 0x10000, 0x4000, 0x200000, &err), 0, "%s", err.text);
                        cr_assert_eq(sim_iommu_dma(s->iommu, 0x200000, "before", 6, true, NULL), 0);
                        cr_assert_eq(device_set_state(d, VFIO_DEVICE_STATE_STOP, TRANSITION_NO_RECOVER, &rep, NULL), 0);
                        cr_assert_eq(device_open_fd(d, ":1.42", &dfd, NULL), 0);
                        uint64_t digest = sim_device_state_digest(d->dev);

                        if (planned)
                                cr_assert_eq(persist_prepare_stop(p), 0);
                        cr_assert_eq(persist_export(p, &stored), 0);
                        size_t n_stored = stored.n;
                        persist_free(p);
                        manager_free(m); /* the old daemon is gone */

                        cr_assert_eq(persist_new(m2, &p2), 0);
                        int restored = persist_restore(p2, &stored, &err);
                        cr_assert_eq(restored, 2, "style %d planned %d: %d (%s)", style, planned, restored, err.text);
                        cr_assert_eq(n_stored, 3, "the device, the memfd and the state: %zu entries", n_stored);

                        AddressSpace *s2 = manager_find_space(m2, "s0");
                        Device *d2 = manager_find_device(m2, "sim_gpu");
                        cr_assert_not_null(s2);
                        cr_assert_not_null(d2);
                        cr_assert_eq(d2->space, s2);
                        cr_assert_eq(s2->n_mappings, 1);
                        cr_assert_eq(s2->pinned_bytes, 0x4000);
                        cr_assert_eq(s2->mappings[0]->m.iova, 0x200000);
                        cr_assert_eq(s2->mappings[0]->m.offset, 0x10000);
                        cr_assert_null(s2->handover_problem, "%s", s2->handover_problem);
                        cr_assert_eq(d2->state, VFIO_DEVICE_STATE_STOP);
                        cr_assert_eq(sim_device_state_digest(d2->dev), digest, "same device content");
                        cr_assert_eq(device_client_count(d2), 1);
                        cr_assert(device_has_client(d2, ":1.42"));

                        /* the same memory before and after */
                        cr_assert_eq(sim_iommu_dma(s2->iommu, 0x200000, buf, 6, false, NULL), 0);
                        cr_assert_eq(memcmp(buf, "before", 6), 0);
                        cr_assert_eq(sim_iommu_dma(s2->iommu, 0x203ff8, "after", 5, true, NULL), 0);
                        cr_assert_eq(pread(fd, buf, 5, 0x13ff8), 5);
                        cr_assert_eq(memcmp(buf, "after", 5), 0);
                        /* the client's old copy of the device fd is the restored device's fd */
                        struct stat a, b;
                        cr_assert_eq(fstat(dfd, &a), 0);
                        cr_assert_eq(fstat(d2->dev->device_fd, &b), 0);
                        cr_assert(a.st_ino == b.st_ino && a.st_dev == b.st_dev);

                        close(dfd);
                        close(fd);
                        named_fds_done(&stored);
                        persist_free(p2);
                        manager_free(m2);
                }
}

/* Does this process see kcmp()? Then only one open file description is one fd store entry; without
 * it systemd (and fd-table.c) folds every open of one memfd with the same flags. */
static bool have_kcmp(int fd) {
        return syscall(SYS_kcmp, getpid(), getpid(), 0, fd, fd) == 0;
}

/* The store entry (in stored) of the open file description fd. */
static const char *entry_of(const NamedFds *stored, int fd) {
        for (size_t i = 0; i < stored->n; i++)
                if (strncmp(stored->items[i].name, "state-", 6) != 0 && fd_same_entry(stored->items[i].fd, fd) > 0)
                        return stored->items[i].name;
        return NULL;
}

/* The normal VMM layout: many ranges of one guest-RAM memfd, in one space and across spaces, and
 * a second open of the same memfd. systemd keeps one entry per open file description and drops
 * the rest silently, so each description is stored once and every mapping refers to it. */
Test(address_space, mappings_sharing_a_memfd_survive_a_restart) {
        for (int planned = 0; planned < 2; planned++) {
                Manager *m = new_manager(0, 0), *m2 = new_manager(0, 0);
                Persist *p = NULL, *p2 = NULL;
                NamedFds stored = {};
                ErrorMessage err = {};
                int fd = memfd(MiB), reopened;
                char path[64], buf[8] = {};
                size_t expected;

                (void) snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
                reopened = open(path, O_RDWR | O_CLOEXEC);
                cr_assert_geq(reopened, 0);
                cr_assert_eq(persist_new(m, &p), 0);
                AddressSpace *s = new_space(m, SIM_MAP_BY_FILE), *t = new_space(m, SIM_MAP_BY_ADDRESS);
                for (unsigned i = 0; i < 3; i++)
                        cr_assert_eq(map(s, fd, i * 0x10000, 0x1000, 0x100000 + i * 0x10000, &err), 0, "%s", err.text);
                cr_assert_eq(map(t, fd, 0x40000, 0x2000, 0x100000, &err), 0, "%s", err.text);
                cr_assert_eq(map(s, reopened, 0x80000, 0x1000, 0x900000, &err), 0, "%s", err.text);
                cr_assert_eq(sim_iommu_dma(s->iommu, 0x120000, "third", 5, true, NULL), 0);
                cr_assert_eq(sim_iommu_dma(t->iommu, 0x100000, "other", 5, true, NULL), 0);

                if (planned)
                        cr_assert_eq(persist_prepare_stop(p), 0);
                cr_assert_eq(persist_export(p, &stored), 0);
                /* one entry for the memfd (two with kcmp: the second open is its own description)
                 * and the state: never one per mapping */
                expected = have_kcmp(fd) ? 3 : 2;
                cr_assert_eq(stored.n, expected, "%zu entries, expected %zu", stored.n, expected);
                cr_assert_not_null(entry_of(&stored, fd));
                persist_free(p);
                manager_free(m);

                cr_assert_eq(persist_new(m2, &p2), 0);
                cr_assert_eq(persist_restore(p2, &stored, &err), 2, "%s", err.text);
                AddressSpace *s2 = manager_find_space(m2, "s0"), *t2 = manager_find_space(m2, "s1");
                cr_assert_not_null(s2);
                cr_assert_not_null(t2);
                cr_assert_eq(s2->n_mappings, 4);
                cr_assert_eq(t2->n_mappings, 1);
                cr_assert_eq(s2->pinned_bytes, 0x4000);
                cr_assert_eq(t2->pinned_bytes, 0x2000);
                cr_assert_null(s2->handover_problem, "%s", s2->handover_problem);
                cr_assert_eq(sim_iommu_dma(s2->iommu, 0x120000, buf, 5, false, NULL), 0);
                cr_assert_eq(memcmp(buf, "third", 5), 0);
                cr_assert_eq(sim_iommu_dma(t2->iommu, 0x100000, buf, 5, false, NULL), 0);
                cr_assert_eq(memcmp(buf, "other", 5), 0);
                cr_assert_eq(sim_iommu_dma(s2->iommu, 0x900000, "open2", 5, true, NULL), 0);
                cr_assert_eq(pread(fd, buf, 5, 0x80000), 5);
                cr_assert_eq(memcmp(buf, "open2", 5), 0);
                /* the mappings of one description share one descriptor's file */
                for (size_t i = 0; i < s2->n_mappings; i++) {
                        struct stat a, b;
                        cr_assert_eq(fstat(s2->mappings[i]->m.fd, &a), 0);
                        cr_assert_eq(fstat(fd, &b), 0);
                        cr_assert(a.st_ino == b.st_ino);
                }

                /* unmapping all but one user keeps the entry; a restart from there still works */
                cr_assert_eq(address_space_unmap(s2, 0x100000, 0x30000, &err), 0, "%s", err.text);
                named_fds_done(&stored);
                cr_assert_eq(persist_export(p2, &stored), 0);
                cr_assert_eq(stored.n, expected);

                named_fds_done(&stored);
                close(reopened);
                close(fd);
                persist_free(p2);
                manager_free(m2);
        }
}

Test(address_space, restore_reports_missing_and_unknown_descriptors) {
        Manager *m = new_manager(0, 0), *m2 = new_manager(0, 0);
        Persist *p = NULL, *p2 = NULL;
        NamedFds stored = {};
        ErrorMessage err = {};
        int fd = memfd(MiB), other = memfd(MiB);
        const char *lost;

        cr_assert_eq(persist_new(m, &p), 0);
        AddressSpace *s = new_space(m, SIM_MAP_BY_FILE);
        cr_assert_eq(map(s, fd, 0, 0x1000, 0x1000, &err), 0);
        cr_assert_eq(map(s, other, 0, 0x1000, 0x2000, &err), 0);
        cr_assert_eq(map(s, other, 0x1000, 0x1000, 0x3000, &err), 0);
        cr_assert_eq(persist_export(p, &stored), 0);
        cr_assert_eq(stored.n, 3, "two memfds and the state");
        /* one file lost (two mappings use it), one stranger added */
        lost = entry_of(&stored, other);
        cr_assert_not_null(lost);
        safe_close(named_fds_take(&stored, lost));
        cr_assert_eq(named_fds_add(&stored, "left-by-an-old-version", memfd(4096), true), 0);

        cr_assert_eq(persist_new(m2, &p2), 0);
        cr_assert_eq(persist_restore(p2, &stored, &err), 1, "%s", err.text);
        AddressSpace *s2 = manager_find_space(m2, "s0");
        cr_assert_eq(s2->n_mappings, 1, "the mappings whose file is missing are not invented");
        cr_assert_eq(s2->pinned_bytes, 0x1000);
        cr_assert_eq(s2->mappings[0]->m.iova, 0x1000);
        /* nothing translates the lost ranges: a new Map may take them */
        cr_assert_eq(sim_iommu_dma(s2->iommu, 0x2000, "x", 1, true, NULL), -EFAULT);
        cr_assert_eq(map(s2, fd, 0x1000, 0x2000, 0x2000, &err), 0, "%s", err.text);
        /* and LiveUpdate says what happened */
        cr_assert_not_null(s2->handover_problem);
        cr_assert(strstr(s2->handover_problem, "the last restart lost 2 mappings"), "%s", s2->handover_problem);
        cr_assert(strstr(address_space_live_update(s2), "the last restart lost 2 mappings") || !m2->fd_store);
        cr_assert_geq(named_fds_get(&stored, "left-by-an-old-version"), 0, "strangers are not adopted");

        /* a corrupt state is refused */
        NamedFds bad = {};
        int junk = memfd(4096);
        cr_assert_eq(named_fds_add(&bad, "state-9", junk, true), 0);
        Manager *m3 = new_manager(0, 0);
        Persist *p3 = NULL;
        cr_assert_eq(persist_new(m3, &p3), 0);
        cr_assert_eq(persist_restore(p3, &bad, &err), 0, "an unreadable state restores nothing");
        cr_assert_eq(m3->n_spaces, 0);

        named_fds_done(&bad);
        named_fds_done(&stored);
        close(fd);
        close(other);
        persist_free(p);
        persist_free(p2);
        persist_free(p3);
        manager_free(m);
        manager_free(m2);
        manager_free(m3);
}
