/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The kernel backend against a fake sysfs and /dev built in a temporary directory: address
 * resolution in all its spellings, the operator-facing errors, and the open paths up to the
 * first ioctl. The ioctls themselves need real VFIO devices (tests/vm); the few that run here hit
 * regular files, where every VFIO request number fails harmlessly with ENOTTY.
 */

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "kernel-device.h"

#define MDEV_UUID "11111111-2222-3333-4444-00000000000a"

/* Short, so that every path built under it fits PATH_MAX. */
static char root[256];

static _printf_(1, 2) char *at(const char *format, ...) {
        static char buf[4][PATH_MAX];
        static unsigned slot;
        char rel[1024];
        char *p = buf[slot++ % 4];
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(rel, sizeof rel, format, ap);
        va_end(ap);
        (void) snprintf(p, PATH_MAX, "%s/%s", root, rel);
        return p;
}

static void mkdir_p(const char *rel) {
        char path[PATH_MAX];

        (void) snprintf(path, sizeof path, "%s/%s", root, rel);
        for (char *s = path + strlen(root) + 1; *s; s++)
                if (*s == '/') {
                        *s = 0;
                        cr_assert(mkdir(path, 0755) >= 0 || errno == EEXIST, "mkdir %s: %m", path);
                        *s = '/';
                }
        cr_assert(mkdir(path, 0755) >= 0 || errno == EEXIST, "mkdir %s: %m", path);
}

static void link_rel(const char *target, const char *rel) {
        cr_assert(symlink(target, at("%s", rel)) >= 0, "symlink %s: %m", rel);
}

static void touch(const char *rel) {
        int fd = open(at("%s", rel), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        cr_assert(fd >= 0, "create %s: %m", rel);
        close(fd);
}

/* A PCI function under sys/devices/pci0000:00, listed on the PCI bus and in its IOMMU group. */
static void add_pci(const char *name, const char *driver, int group, const char *cdev) {
        char rel[1024], target[1024];

        (void) snprintf(rel, sizeof rel, "sys/devices/pci0000:00/%s", name);
        mkdir_p(rel);
        (void) snprintf(target, sizeof target, "../../../devices/pci0000:00/%s", name);
        (void) snprintf(rel, sizeof rel, "sys/bus/pci/devices/%s", name);
        link_rel(target, rel);

        if (driver) {
                (void) snprintf(rel, sizeof rel, "sys/bus/pci/drivers/%s", driver);
                mkdir_p(rel);
                (void) snprintf(target, sizeof target, "../../../bus/pci/drivers/%s", driver);
                (void) snprintf(rel, sizeof rel, "sys/devices/pci0000:00/%s/driver", name);
                link_rel(target, rel);
        }
        if (group >= 0) {
                (void) snprintf(rel, sizeof rel, "sys/kernel/iommu_groups/%d/devices", group);
                mkdir_p(rel);
                (void) snprintf(target, sizeof target, "../../../kernel/iommu_groups/%d", group);
                (void) snprintf(rel, sizeof rel, "sys/devices/pci0000:00/%s/iommu_group", name);
                link_rel(target, rel);
                (void) snprintf(target, sizeof target, "../../../../devices/pci0000:00/%s", name);
                (void) snprintf(rel, sizeof rel, "sys/kernel/iommu_groups/%d/devices/%s", group, name);
                link_rel(target, rel);
        }
        if (cdev) {
                (void) snprintf(rel, sizeof rel, "sys/devices/pci0000:00/%s/vfio-dev/%s", name, cdev);
                mkdir_p(rel);
        }
}

static void setup(void) {
        const char *tmp = getenv("TMPDIR") ?: "/tmp";

        (void) snprintf(root, sizeof root, "%s/test-kernel-device.XXXXXX", tmp);
        cr_assert_not_null(mkdtemp(root), "mkdtemp: %m");

        mkdir_p("sys/bus/pci/devices");
        mkdir_p("sys/bus/mdev/devices");
        mkdir_p("dev");
        mkdir_p("outside");

        add_pci("0000:3b:00.1", "vfio-pci", 12, "vfio3");   /* VFIO, cdev and group */
        add_pci("0000:3b:00.0", "nvme", 12, NULL);          /* same group, host driver */
        add_pci("0000:3c:00.0", NULL, 13, NULL);            /* unbound */
        add_pci("0000:3d:00.0", "vfio-pci", -1, NULL);      /* no IOMMU group */
        add_pci("0000:3e:00.0", NULL, -1, NULL);            /* IOMMU off: unbound, no group */
        add_pci("0000:3f:00.0", "mlx5_vfio_pci", 14, NULL); /* variant driver, no cdev */

        mkdir_p("sys/devices/virtual/mtty/mtty/" MDEV_UUID);
        mkdir_p("sys/bus/mdev/drivers/mtty");
        mkdir_p("sys/kernel/iommu_groups/5/devices");
        link_rel("../../../../../bus/mdev/drivers/mtty", "sys/devices/virtual/mtty/mtty/" MDEV_UUID "/driver");
        link_rel("../../../../../kernel/iommu_groups/5", "sys/devices/virtual/mtty/mtty/" MDEV_UUID "/iommu_group");
        link_rel("../../../devices/virtual/mtty/mtty/" MDEV_UUID, "sys/bus/mdev/devices/" MDEV_UUID);

        mkdir_p("sys/devices/virtual/misc/foo");
        /* Named like a registered device, but not the one on the bus. */
        mkdir_p("sys/devices/virtual/bogus/0000:3b:00.1");
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static void teardown(void) {
        if (root[0])
                (void) nftw(root, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

static KernelContext *context(bool prefer_legacy) {
        KernelContext *c = NULL;
        char sys[PATH_MAX], dev[PATH_MAX];

        (void) snprintf(sys, sizeof sys, "%s/sys", root);
        (void) snprintf(dev, sizeof dev, "%s/dev", root);
        cr_assert_eq(kernel_context_new(&(KernelContextOptions) { .sysfs_root = sys, .dev_root = dev,
                                                                  .prefer_legacy = prefer_legacy }, &c), 0);
        return c;
}

static unsigned count_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        unsigned n = 0;

        cr_assert_not_null(d);
        while (readdir(d))
                n++;
        closedir(d);
        return n;
}

static void expect_location(KernelContext *c, const char *address, const char *name, const char *driver, int group,
                            bool is_mdev, const char *cdev, const char *sysfs_rel) {
        KernelDeviceLocation l = {};
        ErrorMessage err = {};
        char expected_path[PATH_MAX];

        cr_assert_eq(kernel_device_locate(c, address, &l, &err), 0, "%s: %s", address, err.text);
        cr_expect_str_eq(l.name, name, "%s", address);
        cr_expect_str_eq(l.driver, driver, "%s", address);
        cr_expect_eq(l.iommu_group, group, "%s", address);
        cr_expect_eq(l.is_mdev, is_mdev, "%s", address);
        if (cdev)
                cr_expect_str_eq(l.cdev_name, cdev, "%s", address);
        else
                cr_expect_null(l.cdev_name, "%s", address);
        cr_assert_not_null(realpath(at("%s", sysfs_rel), expected_path));
        cr_expect_str_eq(l.sysfs_path, expected_path, "%s", address);
        cr_expect(!error_is_set(&err));
        kernel_device_location_done(&l);
        cr_expect_null(l.name);
}

static void expect_locate_error(KernelContext *c, const char *address, int error, const char *message) {
        KernelDeviceLocation l = { .name = (char *) "untouched", .iommu_group = 77 };
        ErrorMessage err = {};
        int r = kernel_device_locate(c, address, &l, &err);

        cr_expect_eq(r, error, "'%s': expected %d, got %d (%s)", address, error, r, err.text);
        cr_expect(strstr(err.text, message), "'%s': message \"%s\" lacks \"%s\"", address, err.text, message);
        cr_expect_str_eq(l.name, "untouched", "output written on failure");
        cr_expect_eq(l.iommu_group, 77);
}

static void expect_open_error(KernelContext *c, const char *address, int error, const char *message) {
        VfioDev *sentinel = (VfioDev *) &root, *d = sentinel;
        ErrorMessage err = {};
        int r = kernel_device_open(c, address, &d, &err);

        cr_expect_eq(r, error, "'%s': expected %d, got %d (%s)", address, error, r, err.text);
        cr_expect(strstr(err.text, message), "'%s': message \"%s\" lacks \"%s\"", address, err.text, message);
        cr_expect_eq(d, sentinel, "output written on failure");
}

Test(kernel_device, pci_spellings_resolve_to_one_device, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context(false);
        const char *rel = "sys/devices/pci0000:00/0000:3b:00.1";
        const char *paths[] = {
                "sys/bus/pci/devices/0000:3b:00.1",
                "sys/devices/pci0000:00/0000:3b:00.1",
                "sys/devices/pci0000:00/0000:3b:00.1/",
                "sys/bus/pci/../pci/devices/0000:3b:00.1",
                "sys/devices/pci0000:00/0000:3b:00.1/vfio-dev/..",
        };
        const char *forms[] = { "0000:3b:00.1", "3b:00.1", "0000:3B:00.1", "3B:00.1", "0:3b:00.1" };
        char path[PATH_MAX];

        for (size_t i = 0; i < ELEMENTSOF(forms); i++)
                expect_location(c, forms[i], "0000:3b:00.1", "vfio-pci", 12, false, "vfio3", rel);
        for (size_t i = 0; i < ELEMENTSOF(paths); i++) {
                (void) snprintf(path, sizeof path, "%s/%s", root, paths[i]);
                expect_location(c, path, "0000:3b:00.1", "vfio-pci", 12, false, "vfio3", rel);
        }

        expect_location(c, "0000:3f:00.0", "0000:3f:00.0", "mlx5_vfio_pci", 14, false, NULL,
                        "sys/devices/pci0000:00/0000:3f:00.0");
}

Test(kernel_device, mdev_by_uuid_and_path, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context(false);
        const char *rel = "sys/devices/virtual/mtty/mtty/" MDEV_UUID;

        expect_location(c, MDEV_UUID, MDEV_UUID, "mtty", 5, true, NULL, rel);
        expect_location(c, "11111111-2222-3333-4444-00000000000A", MDEV_UUID, "mtty", 5, true, NULL, rel);
        expect_location(c, at("sys/bus/mdev/devices/" MDEV_UUID), MDEV_UUID, "mtty", 5, true, NULL, rel);
        expect_location(c, at("%s", rel), MDEV_UUID, "mtty", 5, true, NULL, rel);
}

Test(kernel_device, host_driver_is_located_and_reported, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context(false);
        KernelDeviceLocation l = {};

        cr_assert_eq(kernel_device_locate(c, "0000:3b:00.0", &l, NULL), 0);
        cr_expect_str_eq(l.driver, "nvme");
        cr_expect(!kernel_device_location_is_vfio(&l));
        kernel_device_location_done(&l);

        cr_assert_eq(kernel_device_locate(c, "0000:3f:00.0", &l, NULL), 0);
        cr_expect(kernel_device_location_is_vfio(&l), "variant drivers are VFIO drivers");
        kernel_device_location_done(&l);

        cr_assert_eq(kernel_device_locate(c, MDEV_UUID, &l, NULL), 0);
        cr_expect(kernel_device_location_is_vfio(&l), "mdev drivers are VFIO drivers");
        kernel_device_location_done(&l);
}

Test(kernel_device, malformed_addresses, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context(false);
        const char *bad[] = {
                "", "0000:3b:00", "zz:00.1", "../etc", "0000:3b:00.8", "0000:3b:20.1", " 3b:00.1",
                "3b:00.1 ", "0x3b:00.1", "+3b:00.1", "0000:3b:0.1", "0000:3b:00.1.2", "000000000:3b:00.1",
                "3b-00.1", "11111111-2222-3333-4444-00000000000", "11111111-2222-3333-4444-00000000000g",
                "111111112222-3333-4444-00000000000a-", "sys/bus/pci/devices/0000:3b:00.1", "pci:0000:3b:00.1",
        };

        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                expect_locate_error(c, bad[i], -EINVAL, "Invalid device address");
}

Test(kernel_device, path_errors, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context(false);

        expect_locate_error(c, at("outside"), -EINVAL, "does not resolve inside");
        expect_locate_error(c, "/etc", -EINVAL, "does not resolve inside");
        expect_locate_error(c, at("sys/devices"), -EINVAL, "does not resolve inside");
        expect_locate_error(c, at("sys/devices/virtual/misc/foo"), -EINVAL, "neither a PCI device nor an mdev");
        expect_locate_error(c, at("sys/devices/nope"), -ENODEV, "the path does not exist");
        expect_locate_error(c, at("sys/devices/pci0000:00/0000:3b:00.1/driver/nope"), -ENODEV, "the path does not exist");
        expect_locate_error(c, at("sys/devices/virtual/bogus/0000:3b:00.1"), -EINVAL,
                            "is not the PCI device 0000:3b:00.1 registered at");
}

Test(kernel_device, unusable_devices, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context(false);

        expect_locate_error(c, "0000:99:00.0", -ENODEV, "No PCI device 0000:99:00.0 on this host");
        expect_locate_error(c, "99:00.0", -ENODEV, "No PCI device 0000:99:00.0 on this host");
        expect_locate_error(c, "aaaaaaaa-2222-3333-4444-00000000000a", -ENODEV,
                            "No mdev aaaaaaaa-2222-3333-4444-00000000000a on this host");
        expect_locate_error(c, "0000:3c:00.0", -ENXIO, "PCI device 0000:3c:00.0 is not bound to any driver: bind it to vfio-pci first");
        expect_locate_error(c, "0000:3d:00.0", -ENXIO,
                            "No IOMMU group for 0000:3d:00.0: is the IOMMU enabled (intel_iommu=on / amd_iommu=on)?");
        /* Unbound and without a group: the missing IOMMU is the problem to report. */
        expect_locate_error(c, "0000:3e:00.0", -ENXIO, "No IOMMU group for 0000:3e:00.0: is the IOMMU enabled");
}

Test(kernel_device, open_refuses_host_driver, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context(false);

        expect_open_error(c, "0000:3b:00.0", -ENXIO, "0000:3b:00.0 is bound to driver 'nvme', not to a VFIO driver");
        expect_open_error(c, "0000:3c:00.0", -ENXIO, "is not bound to any driver");
        expect_open_error(c, "", -EINVAL, "Invalid device address");
}

Test(kernel_device, open_legacy_without_group_node, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context(false);
        _cleanup_(kernel_context_unrefp) KernelContext *legacy = context(true);
        char message[PATH_MAX + 64];

        /* No vfio-dev cdev: the group path, which fails before any ioctl. */
        (void) snprintf(message, sizeof message, "%s/dev/vfio/14 does not exist", root);
        expect_open_error(c, "0000:3f:00.0", -ENOENT, message);

        /* A cdev but no /dev/iommu: the group path as well. */
        (void) snprintf(message, sizeof message, "%s/dev/vfio/12 does not exist", root);
        expect_open_error(c, "0000:3b:00.1", -ENOENT, message);

        touch("dev/iommu");
        expect_open_error(legacy, "0000:3b:00.1", -ENOENT, message);
}

Test(kernel_device, open_iommufd_path, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context(false);
        char message[PATH_MAX + 64];

        touch("dev/iommu");
        (void) snprintf(message, sizeof message, "%s/dev/vfio/devices/vfio3 does not exist", root);
        expect_open_error(c, "0000:3b:00.1", -ENOENT, message);

        mkdir_p("dev/vfio/devices");
        touch("dev/vfio/devices/vfio3");
        expect_open_error(c, "0000:3b:00.1", -ENOTTY, "Cannot bind 0000:3b:00.1");
        cr_expect_geq(kernel_context_get_iommufd(c, NULL), 0);
}

/* The kernel's answer to a second VFIO_DEVICE_BIND_IOMMUFD of a device: vfio_df_open() allows a
 * cdev-opened device to be open once, so a bind while another process holds it gets EINVAL. */
static int bind_refused(int fd, unsigned long request, void *arg, void *userdata) {
        if (request == VFIO_DEVICE_BIND_IOMMUFD) {
                errno = EINVAL;
                return -1;
        }
        return ioctl(fd, request, arg);
}

Test(kernel_device, bind_of_a_held_device_is_busy, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = NULL;
        char sys[PATH_MAX], dev[PATH_MAX];

        (void) snprintf(sys, sizeof sys, "%s/sys", root);
        (void) snprintf(dev, sizeof dev, "%s/dev", root);
        cr_assert_eq(kernel_context_new(&(KernelContextOptions) { .sysfs_root = sys, .dev_root = dev,
                                                                  .ioctl = bind_refused }, &c), 0);
        touch("dev/iommu");
        mkdir_p("dev/vfio/devices");
        touch("dev/vfio/devices/vfio3");
        /* Not "an argument was rejected": the device is in use, and the message says by whom. */
        expect_open_error(c, "0000:3b:00.1", -EBUSY, "0000:3b:00.1 (");
        expect_open_error(c, "0000:3b:00.1", -EBUSY, "is in use: another open of its VFIO cdev is bound to an "
                          "iommufd (another vfiomigd or a VMM holds the device)");
}

Test(kernel_device, open_legacy_first_ioctl, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context(true);
        char message[PATH_MAX + 64];

        mkdir_p("dev/vfio");
        touch("dev/vfio/12");
        (void) snprintf(message, sizeof message, "VFIO_GROUP_GET_STATUS on %s/dev/vfio/12 failed", root);
        expect_open_error(c, "0000:3b:00.1", -ENOTTY, message);
}

Test(kernel_device, failed_opens_leak_nothing, .init = setup, .fini = teardown) {
        unsigned before = count_fds();

        {
                _cleanup_(kernel_context_unrefp) KernelContext *c = context(false);
                _cleanup_(kernel_context_unrefp) KernelContext *legacy = context(true);
                VfioDev *d = NULL;

                mkdir_p("dev/vfio/devices");
                touch("dev/iommu");
                touch("dev/vfio/12");
                touch("dev/vfio/devices/vfio3");
                for (int i = 0; i < 3; i++) {
                        cr_expect_lt(kernel_device_open(c, "0000:3b:00.1", &d, NULL), 0);
                        cr_expect_lt(kernel_device_open(legacy, "0000:3b:00.1", &d, NULL), 0);
                        cr_expect_lt(kernel_device_open(c, "0000:3f:00.0", &d, NULL), 0);
                }
                cr_expect_null(d);
        }
        cr_expect_eq(count_fds(), before);
}

static void dummy_destroy(VfioDev *d) {
        vfio_dev_done_common(d);
        free(d);
}

static const VfioDevOps dummy_ops = { .destroy = dummy_destroy };

Test(kernel_device, getters_refuse_other_devices) {
        _cleanup_(vfio_dev_freep) VfioDev *d = calloc(1, sizeof *d);
        uint32_t v = 42;

        cr_assert_not_null(d);
        cr_assert_eq(vfio_dev_init_common(d, &dummy_ops, VFIO_BACKEND_SIM, "x", "sim:x", "sim", NULL), 0);
        cr_expect(!kernel_device_owns(d));
        cr_expect(!kernel_device_owns(NULL));
        cr_expect_eq(kernel_device_get_iommufd_devid(d, &v), -EOPNOTSUPP);
        cr_expect_eq(kernel_device_get_container_fd(d), -EOPNOTSUPP);
        cr_expect_eq(kernel_device_get_type1_update_vaddr(d), -EOPNOTSUPP);
        cr_expect_eq(kernel_device_get_iommu_group(d), -EOPNOTSUPP);
        cr_expect_eq(kernel_device_get_info_flags(d, &v), -EOPNOTSUPP);
        cr_expect_eq(v, 42);
}

Test(kernel_device, context_defaults) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = NULL, *d = NULL;

        cr_assert_eq(kernel_context_new(NULL, &c), 0);
        cr_expect_str_eq(kernel_context_get_sysfs_root(c), "/sys");
        cr_expect_str_eq(kernel_context_get_dev_root(c), "/dev");

        cr_assert_eq(kernel_context_new(&(KernelContextOptions) { .sysfs_root = "/tmp/x//", .dev_root = "/" }, &d), 0);
        cr_expect_str_eq(kernel_context_get_sysfs_root(d), "/tmp/x");
        cr_expect_str_eq(kernel_context_get_dev_root(d), "/");

        cr_expect_eq(kernel_context_ref(c), c);
        kernel_context_unref(c);
}
