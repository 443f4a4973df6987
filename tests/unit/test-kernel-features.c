/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The feature probe on the machine running the tests (whatever it has, the probe must succeed)
 * and against an empty /dev, /sys and /proc, where every device feature must come out false.
 */

#include <criterion/criterion.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <sys/utsname.h>

#include "kernel-features.h"
#include "macro.h"
#include "strv.h"
#include "vfiomig1.h"

static void expect_strv_matches(const KernelFeatures *f) {
        _cleanup_strv_free_ char **l = NULL;
        const struct {
                bool present;
                const char *name;
        } expected[] = {
                { f->iommufd, VFIOMIG_FEATURE_IOMMUFD },
                { f->vfio_cdev, VFIOMIG_FEATURE_VFIO_CDEV },
                { f->vfio_container, VFIOMIG_FEATURE_VFIO_CONTAINER },
                { f->ioas_map_file, VFIOMIG_FEATURE_IOAS_MAP_FILE },
                { f->ioas_change_process, VFIOMIG_FEATURE_IOAS_CHANGE_PROCESS },
                { f->type1_update_vaddr, VFIOMIG_FEATURE_TYPE1_UPDATE_VADDR },
                { f->io_uring, VFIOMIG_FEATURE_IO_URING },
        };
        size_t n = 0;

        cr_assert_eq(kernel_features_to_strv(f, &l), 0);
        cr_assert_not_null(l);
        for (size_t i = 0; i < ELEMENTSOF(expected); i++) {
                cr_expect_eq(strv_contains(l, expected[i].name), expected[i].present, "%s", expected[i].name);
                n += expected[i].present;
        }
        cr_expect_eq(strv_length(l), n);
}

Test(kernel_features, probe_this_machine) {
        KernelFeatures f;
        struct utsname u;

        cr_assert_eq(kernel_features_probe(NULL, NULL, NULL, &f), 0);
        cr_assert_eq(uname(&u), 0);
        cr_expect_str_eq(f.release, u.release);
        cr_expect_gt(strlen(f.release), 0);
        /* The iommufd ioctls can only be found on an iommufd. */
        cr_expect(f.iommufd || (!f.ioas_map_file && !f.ioas_change_process));
        cr_expect(f.vfio_container || !f.type1_update_vaddr);
        cr_log_info("kernel %s: iommufd=%d vfio_cdev=%d vfio_container=%d ioas_map_file=%d "
                    "ioas_change_process=%d type1_update_vaddr=%d io_uring=%d", f.release, f.iommufd, f.vfio_cdev,
                    f.vfio_container, f.ioas_map_file, f.ioas_change_process, f.type1_update_vaddr, f.io_uring);
        expect_strv_matches(&f);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static void write_file(const char *path, const char *text) {
        FILE *f = fopen(path, "we");
        cr_assert_not_null(f, "%s: %m", path);
        cr_assert_geq(fputs(text, f), 0);
        cr_assert_eq(fclose(f), 0);
}

Test(kernel_features, empty_roots_have_no_devices) {
        char root[PATH_MAX], dev[PATH_MAX + 8], sys[PATH_MAX + 8], proc[PATH_MAX + 8], path[PATH_MAX + 32];
        KernelFeatures f;

        (void) snprintf(root, sizeof root, "%s/test-kernel-features.XXXXXX", getenv("TMPDIR") ?: "/tmp");
        cr_assert_not_null(mkdtemp(root));
        (void) snprintf(dev, sizeof dev, "%s/dev", root);
        (void) snprintf(sys, sizeof sys, "%s/sys", root);
        (void) snprintf(proc, sizeof proc, "%s/proc", root);
        cr_assert_eq(mkdir(dev, 0755), 0);
        cr_assert_eq(mkdir(sys, 0755), 0);
        cr_assert_eq(mkdir(proc, 0755), 0);

        memset(&f, 0xff, sizeof f);
        cr_assert_eq(kernel_features_probe(dev, sys, proc, &f), 0);
        cr_expect(!f.iommufd);
        cr_expect(!f.vfio_cdev);
        cr_expect(!f.vfio_container);
        cr_expect(!f.ioas_map_file);
        cr_expect(!f.ioas_change_process);
        cr_expect(!f.type1_update_vaddr);
        cr_expect_gt(strlen(f.release), 0);
        expect_strv_matches(&f);

        /* The vfio-dev class exists with or without CONFIG_VFIO_DEVICE_CDEV (seen on Debian's 6.12,
         * which lacks it): it is no evidence. Nor is a block device of that name. */
        (void) snprintf(path, sizeof path, "%s/class", sys);
        cr_assert_eq(mkdir(path, 0755), 0);
        (void) snprintf(path, sizeof path, "%s/class/vfio-dev", sys);
        cr_assert_eq(mkdir(path, 0755), 0);
        (void) snprintf(path, sizeof path, "%s/devices", proc);
        write_file(path, "Character devices:\n  1 mem\n 10 misc\n242 vfio\n\n"
                         "Block devices:\n  8 sd\n259 vfio-dev\n");
        cr_assert_eq(kernel_features_probe(dev, sys, proc, &f), 0);
        cr_expect(!f.vfio_cdev);

        /* The char major the cdev-capable core reserves at load time, before any device is bound. */
        write_file(path, "Character devices:\n  1 mem\n242 vfio\n511 vfio-dev\n\nBlock devices:\n  8 sd\n");
        cr_assert_eq(kernel_features_probe(dev, sys, proc, &f), 0);
        cr_expect(f.vfio_cdev);
        cr_expect(!f.iommufd);

        /* And the device nodes themselves. */
        write_file(path, "Character devices:\n  1 mem\n");
        (void) snprintf(path, sizeof path, "%s/vfio", dev);
        cr_assert_eq(mkdir(path, 0755), 0);
        (void) snprintf(path, sizeof path, "%s/vfio/devices", dev);
        cr_assert_eq(mkdir(path, 0755), 0);
        cr_assert_eq(kernel_features_probe(dev, sys, proc, &f), 0);
        cr_expect(f.vfio_cdev);

        (void) nftw(root, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

Test(kernel_features, strv_lists_exactly_the_flags) {
        KernelFeatures all = {
                .iommufd = true, .vfio_cdev = true, .vfio_container = true, .ioas_map_file = true,
                .ioas_change_process = true, .type1_update_vaddr = true, .io_uring = true,
        };
        KernelFeatures none = {};
        KernelFeatures some = { .vfio_container = true, .type1_update_vaddr = true };
        _cleanup_strv_free_ char **l = NULL;

        expect_strv_matches(&all);
        expect_strv_matches(&none);
        expect_strv_matches(&some);

        cr_assert_eq(kernel_features_to_strv(&all, &l), 0);
        cr_assert_eq(strv_length(l), 7);
        cr_expect_str_eq(l[0], "iommufd");
        cr_expect_str_eq(l[6], "io_uring");
}
