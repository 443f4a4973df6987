/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <assert.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/utsname.h>

#include "iommufd-uapi.h"
#include "kernel-features.h"
#include "log.h"
#include "vfiomig1.h"

static int open_node(const char *root, const char *suffix, int *ret_fd) {
        _cleanup_free_ char *path = NULL;
        int fd;

        if (asprintf(&path, "%s/%s", root, suffix) < 0)
                return -ENOMEM;
        fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0)
                return log_debug_errno(errno, "Cannot open %s: %m", path);
        *ret_fd = fd;
        return 0;
}

static int path_exists(const char *root, const char *suffix, bool want_dir) {
        _cleanup_free_ char *path = NULL;
        struct stat st;

        if (asprintf(&path, "%s/%s", root, suffix) < 0)
                return -ENOMEM;
        if (stat(path, &st) < 0)
                return false;
        return !want_dir || S_ISDIR(st.st_mode);
}

/* Whether /proc/devices lists a character device major under this name. The class directory
 * /sys/class/vfio-dev is no evidence: the VFIO core creates it whether or not it was built with
 * CONFIG_VFIO_DEVICE_CDEV, but only a cdev-capable core reserves the "vfio-dev" major, and it
 * does so at load time, before any device is bound. */
static int has_char_major(const char *proc_root, const char *name) {
        _cleanup_free_ char *path = NULL;
        _cleanup_fclose_ FILE *f = NULL;
        char line[128];
        bool in_char = false;

        if (asprintf(&path, "%s/devices", proc_root) < 0)
                return -ENOMEM;
        f = fopen(path, "re");
        if (!f) {
                log_debug_errno(errno, "Cannot read %s: %m", path);
                return false;
        }
        while (fgets(line, sizeof line, f)) {
                unsigned major;
                char found[64];

                if (strncmp(line, "Character devices:", 18) == 0)
                        in_char = true;
                else if (strncmp(line, "Block devices:", 14) == 0)
                        in_char = false;
                else if (in_char && sscanf(line, "%u %63s", &major, found) == 2 && streq(found, name))
                        return true;
        }
        return false;
}

static void probe_iommufd(int fd, KernelFeatures *f) {
        struct iommu_ioas_change_process change = { .size = sizeof change };
        struct iommu_ioas_map_file map = {
                .size = sizeof map,
                .flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
                .ioas_id = 0,
                .fd = -1,
                .start = 0,
                .length = 4096,
                .iova = 0,
        };

        /* On a context with no mappings this changes nothing: it succeeds as a no-op when the
         * accounting already belongs to us (QEMU uses it the same way as a capability check). */
        if (ioctl(fd, IOMMU_IOAS_CHANGE_PROCESS, &change) >= 0)
                f->ioas_change_process = true;
        else
                log_debug_errno(errno, "IOMMU_IOAS_CHANGE_PROCESS: %m, treating as unsupported.");

        /* Object ids start at 1, so IOAS 0 never exists: a kernel that has the ioctl validates the
         * fields and then fails the IOAS lookup with ENOENT, one without it answers ENOTTY. Probing
         * with a real IOAS and fd -1 is not safe: in the kernels we read (6.13 on), the fd lookup
         * fails after the IOAS was looked up and returns without dropping that reference, so
         * destroying the IOAS afterwards would wait for a minute and fail. */
        if (ioctl(fd, IOMMU_IOAS_MAP_FILE, &map) >= 0)
                f->ioas_map_file = true; /* cannot happen; nothing was mapped without an IOAS */
        else if (errno == ENOENT || errno == EBADF || errno == EINVAL)
                f->ioas_map_file = true;
        else
                log_debug_errno(errno, "IOMMU_IOAS_MAP_FILE: %m, treating as unsupported.");
}

static void probe_container(int fd, const char *sysfs_root, KernelFeatures *f) {
        int r;

        r = ioctl(fd, VFIO_GET_API_VERSION);
        if (r != VFIO_API_VERSION) {
                log_debug("VFIO container answers API version %d, expected %d.", r, VFIO_API_VERSION);
                return;
        }
        f->vfio_container = true;

        /* VFIO_UPDATE_VADDR itself is only answered after VFIO_SET_IOMMU, which needs an IOMMU group
         * attached. VFIO_UNMAP_ALL shipped in the same release (5.12) and is answered by the bare
         * container, so it stands in for it. iommufd's VFIO compatibility container also answers
         * UNMAP_ALL but never implements UPDATE_VADDR; the real type1 backend is recognised by its
         * module, which has parameters and so appears in sysfs even when built in. */
        r = ioctl(fd, VFIO_CHECK_EXTENSION, (unsigned long) VFIO_UNMAP_ALL);
        if (r != 1) {
                log_debug("VFIO container does not offer VFIO_UNMAP_ALL.");
                return;
        }
        r = path_exists(sysfs_root, "module/vfio_iommu_type1", true);
        if (r <= 0) {
                log_debug("vfio_iommu_type1 is not loaded: /dev/vfio/vfio is iommufd's compatibility container.");
                return;
        }
        f->type1_update_vaddr = true;
}

int kernel_features_probe(const char *dev_root, const char *sysfs_root, const char *proc_root, KernelFeatures *ret) {
        KernelFeatures f = {};
        struct utsname u;
        struct io_uring ring;
        int fd, r;

        assert(ret);

        dev_root = dev_root ?: "/dev";
        sysfs_root = sysfs_root ?: "/sys";
        proc_root = proc_root ?: "/proc";

        if (uname(&u) < 0)
                return -errno;
        (void) snprintf(f.release, sizeof f.release, "%s", u.release);

        if (open_node(dev_root, "iommu", &fd) >= 0) {
                f.iommufd = true;
                probe_iommufd(fd, &f);
                fd = safe_close(fd);
        }

        r = path_exists(dev_root, "vfio/devices", true);
        if (r == 0)
                r = has_char_major(proc_root, "vfio-dev");
        if (r < 0)
                return r;
        f.vfio_cdev = r;

        if (open_node(dev_root, "vfio/vfio", &fd) >= 0) {
                probe_container(fd, sysfs_root, &f);
                fd = safe_close(fd);
        }

        /* A real ring, rather than a version check: io_uring may be compiled in yet disabled by
         * the kernel.io_uring_disabled sysctl or blocked by a seccomp filter. */
        r = io_uring_queue_init(2, &ring, 0);
        if (r >= 0) {
                io_uring_queue_exit(&ring);
                f.io_uring = true;
        } else
                log_debug_errno(r, "io_uring_queue_init() failed: %m, io_uring unavailable.");

        log_debug("Kernel %s: iommufd=%s vfio-cdev=%s vfio-container=%s ioas-map-file=%s "
                  "ioas-change-process=%s type1-update-vaddr=%s io_uring=%s",
                  f.release, f.iommufd ? "yes" : "no", f.vfio_cdev ? "yes" : "no", f.vfio_container ? "yes" : "no",
                  f.ioas_map_file ? "yes" : "no", f.ioas_change_process ? "yes" : "no",
                  f.type1_update_vaddr ? "yes" : "no", f.io_uring ? "yes" : "no");
        *ret = f;
        return 0;
}

int kernel_features_to_strv(const KernelFeatures *f, char ***ret) {
        const struct {
                bool present;
                const char *name;
        } table[] = {
                { f->iommufd, VFIOMIG_FEATURE_IOMMUFD },
                { f->vfio_cdev, VFIOMIG_FEATURE_VFIO_CDEV },
                { f->vfio_container, VFIOMIG_FEATURE_VFIO_CONTAINER },
                { f->ioas_map_file, VFIOMIG_FEATURE_IOAS_MAP_FILE },
                { f->ioas_change_process, VFIOMIG_FEATURE_IOAS_CHANGE_PROCESS },
                { f->type1_update_vaddr, VFIOMIG_FEATURE_TYPE1_UPDATE_VADDR },
                { f->io_uring, VFIOMIG_FEATURE_IO_URING },
        };
        _cleanup_strv_free_ char **l = NULL;
        size_t n = 0;

        assert(f);
        assert(ret);

        l = calloc(ELEMENTSOF(table) + 1, sizeof *l);
        if (!l)
                return -ENOMEM;
        for (size_t i = 0; i < ELEMENTSOF(table); i++) {
                if (!table[i].present)
                        continue;
                l[n] = strdup(table[i].name);
                if (!l[n])
                        return -ENOMEM;
                n++;
        }

        *ret = TAKE_PTR(l);
        return 0;
}
