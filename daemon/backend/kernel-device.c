/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <assert.h>
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "hexdecoct.h"
#include "kernel-internal.h"
#include "log.h"
#include "vfio-uapi.h"

/* "ffffffff:ff:1f.7" and an mdev UUID both fit. */
#define DEVICE_NAME_MAX 40
#define UUID_STRING_LEN 36

#define LIST_REMOVE_ONE(head, item)                                             \
        do {                                                                    \
                for (typeof(item) *_p = &(head); *_p; _p = &(*_p)->next)        \
                        if (*_p == (item)) {                                    \
                                *_p = (item)->next;                             \
                                break;                                          \
                        }                                                       \
        } while (0)

static const VfioDevOps kernel_device_ops;

static _printf_(1, 2) char *strprintf(const char *format, ...) {
        va_list ap;
        char *s;
        int r;

        va_start(ap, format);
        r = vasprintf(&s, format, ap);
        va_end(ap);
        return r < 0 ? NULL : s;
}

static int oom(ErrorMessage *err) {
        return error_setf(err, -ENOMEM, "Out of memory");
}

static int readlink_malloc(const char *path, char **ret) {
        for (size_t size = 256;; size *= 2) {
                _cleanup_free_ char *buf = malloc(size);
                ssize_t n;

                if (!buf)
                        return -ENOMEM;
                n = readlink(path, buf, size);
                if (n < 0)
                        return -errno;
                if ((size_t) n < size) {
                        buf[n] = 0;
                        *ret = TAKE_PTR(buf);
                        return 0;
                }
                if (size >= 65536)
                        return -ENAMETOOLONG;
        }
}

/* The last component of a symlink's target: sysfs names drivers and groups that way. */
static int readlink_basename(const char *path, char **ret) {
        _cleanup_free_ char *target = NULL;
        const char *base;
        char *s;
        int r;

        r = readlink_malloc(path, &target);
        if (r < 0)
                return r;
        base = strrchr(target, '/');
        base = base ? base + 1 : target;
        if (!*base)
                return -EINVAL;
        s = strdup(base);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}

static int readlink_basename_at(const char *dir, const char *name, char **ret) {
        _cleanup_free_ char *p = strprintf("%s/%s", dir, name);
        if (!p)
                return -ENOMEM;
        return readlink_basename(p, ret);
}

/* Between min and max hex digits at *p; advances *p past them. */
static bool parse_hex_field(const char **p, size_t min, size_t max, unsigned *ret) {
        unsigned v = 0;
        size_t n = 0;

        while (n < max && unhexchar((*p)[n]) >= 0) {
                v = v * 16 + (unsigned) unhexchar((*p)[n]);
                n++;
        }
        if (n < min)
                return false;
        *p += n;
        *ret = v;
        return true;
}

/* "DDDD:BB:DD.F" or "BB:DD.F" (domain 0), in the kernel's spelling: "%04x:%02x:%02x.%x". sscanf()
 * would also take signs, blanks and "0x", so the fields are parsed by hand. */
static bool pci_address_parse(const char *s, char ret[static DEVICE_NAME_MAX]) {
        unsigned domain = 0, bus, slot, function;
        const char *p = s;

        if (strchr(s, ':') != strrchr(s, ':')) {
                if (!parse_hex_field(&p, 1, 8, &domain) || *p++ != ':')
                        return false;
        }
        if (!parse_hex_field(&p, 2, 2, &bus) || *p++ != ':')
                return false;
        if (!parse_hex_field(&p, 2, 2, &slot) || *p++ != '.')
                return false;
        if (!parse_hex_field(&p, 1, 1, &function) || *p)
                return false;
        if (slot > 0x1f || function > 7)
                return false;
        (void) snprintf(ret, DEVICE_NAME_MAX, "%04x:%02x:%02x.%x", domain, bus, slot, function);
        return true;
}

/* 8-4-4-4-12 hex digits; the kernel names mdevs in lower case. */
static bool uuid_parse(const char *s, char ret[static DEVICE_NAME_MAX]) {
        if (strlen(s) != UUID_STRING_LEN)
                return false;
        for (size_t i = 0; i < UUID_STRING_LEN; i++) {
                if (i == 8 || i == 13 || i == 18 || i == 23) {
                        if (s[i] != '-')
                                return false;
                } else if (unhexchar(s[i]) < 0)
                        return false;
                ret[i] = (char) tolower((unsigned char) s[i]);
        }
        ret[UUID_STRING_LEN] = 0;
        return true;
}

/* realpath() reports a missing component as either. */
static bool errno_is_missing(int e) {
        return e == ENOENT || e == ENOTDIR;
}

static bool path_is_below(const char *path, const char *root) {
        size_t n = strlen(root);

        if (streq(root, "/"))
                return path[0] == '/' && path[1];
        return strncmp(path, root, n) == 0 && path[n] == '/' && path[n + 1];
}

static bool driver_name_is_vfio(const char *driver) {
        /* vfio-pci and its variant drivers (mlx5_vfio_pci, hisi_acc_vfio_pci, virtio_vfio_pci, ...),
         * vfio-platform, vfio_ap, vfio_ccw all carry "vfio" in their name. */
        return strstr(driver, "vfio");
}

static bool is_vfio_cdev_name(const char *s) {
        if (strncmp(s, "vfio", 4) != 0 || !s[4])
                return false;
        for (s += 4; *s; s++)
                if (*s < '0' || *s > '9')
                        return false;
        return true;
}

/* ---- KernelContext ---- */

static char *root_dup(const char *s) {
        char *d = strdup(s);
        size_t n;

        if (!d)
                return NULL;
        for (n = strlen(d); n > 1 && d[n - 1] == '/'; n--)
                d[n - 1] = 0;
        return d;
}

static int kernel_context_unpin_groups(KernelContext *c, char ***ret_released);

int kernel_context_new(const KernelContextOptions *opts, KernelContext **ret) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = NULL;

        assert(ret);

        c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        *c = (KernelContext) {
                .n_ref = 1,
                .iommufd = -EBADF,
                .prefer_legacy = opts && opts->prefer_legacy,
                .ioctl_fn = opts ? opts->ioctl : NULL,
                .ioctl_userdata = opts ? opts->ioctl_userdata : NULL,
                .next_container_id = 1,
                .map_file = -1,
                .change_process = -1,
        };
        c->sysfs_root = root_dup(opts && opts->sysfs_root ? opts->sysfs_root : "/sys");
        c->dev_root = root_dup(opts && opts->dev_root ? opts->dev_root : "/dev");
        if (!c->sysfs_root || !c->dev_root)
                return -ENOMEM;

        *ret = TAKE_PTR(c);
        return 0;
}

KernelContext *kernel_context_ref(KernelContext *c) {
        if (!c)
                return NULL;
        assert(c->n_ref > 0);
        c->n_ref++;
        return c;
}

KernelContext *kernel_context_unref(KernelContext *c) {
        if (!c)
                return NULL;
        assert(c->n_ref > 0);
        if (--c->n_ref > 0)
                return NULL;

        /* Devices and spaces hold references, so what is left are the restored groups nobody
         * claimed, and their containers. */
        (void) kernel_context_unpin_groups(c, NULL);
        assert(!c->groups && !c->containers);
        c->iommufd = safe_close(c->iommufd);
        free(c->sysfs_root);
        free(c->dev_root);
        free(c);
        return NULL;
}

void kernel_context_set_reopen_check(KernelContext *c, KernelReopenCheck check, void *userdata) {
        assert(c);
        c->reopen_check = check;
        c->reopen_userdata = userdata;
}

int kernel_ioctl(KernelContext *c, int fd, unsigned long request, void *arg) {
        int r;

        if (c->ioctl_fn)
                r = c->ioctl_fn(fd, request, arg, c->ioctl_userdata);
        else
                r = ioctl(fd, request, arg);
        return r < 0 ? negative_errno() : r;
}

const char *kernel_context_get_sysfs_root(const KernelContext *c) {
        return c->sysfs_root;
}

const char *kernel_context_get_dev_root(const KernelContext *c) {
        return c->dev_root;
}

int kernel_context_get_iommufd(KernelContext *c, ErrorMessage *err) {
        _cleanup_free_ char *path = NULL;
        int fd;

        assert(c);

        if (c->iommufd >= 0)
                return c->iommufd;

        path = strprintf("%s/iommu", c->dev_root);
        if (!path)
                return oom(err);
        fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0)
                return error_setf(err, -errno, "Cannot open %s: %m", path);

        log_debug("Opened iommufd %s.", path);
        c->iommufd = fd;
        return fd;
}

/* ---- Containers and groups ---- */

KernelContainer *kernel_container_ref(KernelContainer *k) {
        assert(k->n_ref > 0);
        k->n_ref++;
        return k;
}

KernelContainer *kernel_container_unref(KernelContainer *k) {
        if (!k)
                return NULL;
        assert(k->n_ref > 0);
        if (--k->n_ref > 0)
                return NULL;

        /* A space holds its container, so none can own it at this point. */
        assert(!k->space);
        LIST_REMOVE_ONE(k->context->containers, k);
        k->fd = safe_close(k->fd);
        free(k);
        return NULL;
}

/* Registers an open container descriptor with the context. */
static int kernel_container_add(KernelContext *c, int fd, unsigned id, KernelContainer **ret) {
        KernelContainer *k;

        k = new0(KernelContainer, 1);
        if (!k)
                return -ENOMEM;
        *k = (KernelContainer) {
                .n_ref = 1,
                .context = c,
                .next = c->containers,
                .id = id,
                .fd = fd,
        };
        c->containers = k;
        *ret = k;
        return 0;
}

int kernel_container_new(KernelContext *c, KernelContainer **ret, ErrorMessage *err) {
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -EBADF;
        KernelContainer *k;
        int r;

        path = strprintf("%s/vfio/vfio", c->dev_root);
        if (!path)
                return oom(err);

        fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
                if (errno == ENOENT)
                        return error_setf(err, -ENOENT,
                                          "%s does not exist: this kernel offers no VFIO container "
                                          "(load the vfio module; kernels built without CONFIG_VFIO_CONTAINER "
                                          "need the iommufd path)", path);
                return error_setf(err, -errno, "Cannot open VFIO container %s: %m", path);
        }

        r = kernel_ioctl(c, fd, VFIO_GET_API_VERSION, NULL);
        if (r < 0)
                return error_setf(err, r, "VFIO_GET_API_VERSION on %s failed: %m", path);
        if (r != VFIO_API_VERSION)
                return error_setf(err, -EOPNOTSUPP, "%s speaks VFIO API version %d, expected %d",
                                  path, r, VFIO_API_VERSION);

        r = kernel_ioctl(c, fd, VFIO_CHECK_EXTENSION, (void *) (uintptr_t) VFIO_TYPE1v2_IOMMU);
        if (r < 0)
                return error_setf(err, r, "VFIO_CHECK_EXTENSION(VFIO_TYPE1v2_IOMMU) on %s failed: %m", path);
        if (r != 1)
                return error_setf(err, -EOPNOTSUPP,
                                  "The VFIO container %s does not offer the type1v2 IOMMU: "
                                  "is the vfio_iommu_type1 module loaded?", path);

        r = kernel_container_add(c, fd, c->next_container_id, &k);
        if (r < 0)
                return oom(err);
        TAKE_FD(fd);
        c->next_container_id++;
        log_debug("Opened VFIO container %u.", k->id);
        *ret = k;
        return 0;
}

int kernel_container_check_update_vaddr(KernelContainer *k) {
        int r;

        /* Answered only once an IOMMU is set, and 0 while an emulated (mdev) group is attached. */
        r = kernel_ioctl(k->context, k->fd, VFIO_CHECK_EXTENSION, (void *) (uintptr_t) VFIO_UPDATE_VADDR);
        if (r < 0)
                return log_debug_errno(r, "VFIO_CHECK_EXTENSION(VFIO_UPDATE_VADDR) on container %u failed: %m", k->id);
        k->update_vaddr = r == 1;
        return k->update_vaddr;
}

bool kernel_container_has_mdev(KernelContainer *k, unsigned *ret_group) {
        for (KernelGroup *g = k->context->groups; g; g = g->next)
                if (g->container == k && g->is_mdev) {
                        if (ret_group)
                                *ret_group = g->number;
                        return true;
                }
        return false;
}

KernelGroup *kernel_group_ref(KernelGroup *g) {
        assert(g->n_ref > 0);
        g->n_ref++;
        return g;
}

/* Bookkeeping for a group that left its container. The kernel drops the container's IOMMU, and
 * with it every mapping, when its last group leaves. */
static void kernel_group_forget_container(KernelGroup *g) {
        KernelContainer *k = g->container;

        if (!k)
                return;
        assert(k->n_groups > 0);
        if (--k->n_groups == 0) {
                k->iommu_set = false;
                k->update_vaddr = false;
                k->n_mappings = 0;
        }
        g->container = NULL;
        kernel_container_unref(k);
}

KernelGroup *kernel_group_unref(KernelGroup *g) {
        if (!g)
                return NULL;
        assert(g->n_ref > 0);
        if (--g->n_ref > 0)
                return NULL;

        /* Devices hold their group, so none can be left at this point. */
        assert(!g->devices);
        LIST_REMOVE_ONE(g->context->groups, g);
        /* Closing the group detaches it from the container (unless a copy of the descriptor lives
         * on, in the fd store for instance); only then may the container go. */
        g->fd = safe_close(g->fd);
        kernel_group_forget_container(g);
        free(g);
        return NULL;
}

/* Names a device that keeps the group from being viable, for the error message: one bound to a
 * host driver. Bridges (pcieport) and pci-stub do not count, as the kernel allows those. */
static char *group_find_blocker(KernelContext *c, unsigned number) {
        _cleanup_free_ char *path = NULL;
        DIR *d;
        char *found = NULL;

        path = strprintf("%s/kernel/iommu_groups/%u/devices", c->sysfs_root, number);
        if (!path)
                return NULL;
        d = opendir(path);
        if (!d)
                return NULL;
        for (struct dirent *de; !found && (de = readdir(d));) {
                _cleanup_free_ char *link = NULL, *driver = NULL;

                if (de->d_name[0] == '.')
                        continue;
                link = strprintf("%s/driver", de->d_name);
                if (!link || readlink_basename_at(path, link, &driver) < 0)
                        continue;
                if (driver_name_is_vfio(driver) || streq(driver, "pci-stub") || streq(driver, "pcieport"))
                        continue;
                found = strprintf("%s is bound to '%s'", de->d_name, driver);
        }
        (void) closedir(d);
        return found;
}

/* Attaches g, in no container, to k, and gives k its IOMMU when it has none yet. On failure g is
 * in no container again. */
static int kernel_group_attach(KernelGroup *g, KernelContainer *k, ErrorMessage *err) {
        KernelContext *c = g->context;
        int r;

        assert(!g->container);

        r = kernel_ioctl(c, g->fd, VFIO_GROUP_SET_CONTAINER, &k->fd);
        if (r < 0) {
                if (r == -EBUSY)
                        return error_setf(err, r, "Cannot attach IOMMU group %u to VFIO container %u: %m "
                                          "(the container's host addresses are invalidated for a handover, "
                                          "or the group is attached elsewhere)", g->number, k->id);
                return error_setf(err, r, "Cannot attach IOMMU group %u to VFIO container %u: %m", g->number, k->id);
        }
        g->container = kernel_container_ref(k);
        k->n_groups++;

        /* The IOMMU type can only be chosen once a group is attached, and only once. */
        if (!k->iommu_set) {
                r = kernel_ioctl(c, k->fd, VFIO_SET_IOMMU, (void *) (uintptr_t) VFIO_TYPE1v2_IOMMU);
                if (r == -EINVAL) {
                        /* Our bookkeeping may be behind the kernel: a copy of a group descriptor
                         * that lived on elsewhere kept the IOMMU. It is there if GET_INFO answers. */
                        struct vfio_iommu_type1_info info = { .argsz = sizeof info };
                        if (kernel_ioctl(c, k->fd, VFIO_IOMMU_GET_INFO, &info) >= 0)
                                r = 0;
                }
                if (r < 0) {
                        (void) error_setf(err, r, "VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU) failed for IOMMU group %u: %m",
                                          g->number);
                        if (kernel_ioctl(c, g->fd, VFIO_GROUP_UNSET_CONTAINER, NULL) < 0)
                                log_debug_errno(errno, "Cannot take IOMMU group %u out of container %u again: %m",
                                                g->number, k->id);
                        kernel_group_forget_container(g);
                        return r;
                }
                k->iommu_set = true;
        }

        /* Asked again after every attach: UPDATE_VADDR disappears once an mdev group joins. */
        (void) kernel_container_check_update_vaddr(k);
        log_debug("IOMMU group %u attached to type1v2 container %u (UPDATE_VADDR %s).", g->number, k->id,
                  k->update_vaddr ? "available" : "unavailable");
        return 0;
}

static KernelGroup *kernel_context_find_group(KernelContext *c, unsigned number) {
        for (KernelGroup *g = c->groups; g; g = g->next)
                if (g->number == number)
                        return g;
        return NULL;
}

static int kernel_context_acquire_group(KernelContext *c, const KernelDeviceLocation *l, KernelGroup **ret,
                                        ErrorMessage *err) {
        _cleanup_(kernel_group_unrefp) KernelGroup *g = NULL;
        _cleanup_(kernel_container_unrefp) KernelContainer *k = NULL;
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -EBADF;
        struct vfio_group_status status = { .argsz = sizeof status };
        unsigned number = (unsigned) l->iommu_group;
        KernelGroup *found;
        int r;

        found = kernel_context_find_group(c, number);
        if (found) {
                if (!found->container)
                        return error_setf(err, -ENXIO,
                                          "IOMMU group %u is in no VFIO container after a failed move; detach its "
                                          "devices from vfiomigd and attach them again", number);
                *ret = kernel_group_ref(found);
                return 0;
        }

        path = strprintf("%s/vfio/%u", c->dev_root, number);
        if (!path)
                return oom(err);

        fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
                if (errno == ENOENT)
                        return error_setf(err, -ENOENT,
                                          "%s does not exist: VFIO has not registered IOMMU group %u of %s "
                                          "(is /dev/vfio visible to vfiomigd, and the kernel built with "
                                          "CONFIG_VFIO_GROUP?)", path, number, l->name);
                if (errno == EBUSY)
                        return error_setf(err, -EBUSY,
                                          "IOMMU group %u (%s) is already open in another process "
                                          "(a VMM, or a second vfiomigd?)", number, path);
                return error_setf(err, -errno, "Cannot open %s: %m", path);
        }

        r = kernel_ioctl(c, fd, VFIO_GROUP_GET_STATUS, &status);
        if (r < 0)
                return error_setf(err, r, "VFIO_GROUP_GET_STATUS on %s failed: %m", path);
        if (!(status.flags & VFIO_GROUP_FLAGS_VIABLE)) {
                _cleanup_free_ char *blocker = group_find_blocker(c, number);
                return error_setf(err, -EBUSY,
                                  "IOMMU group %u is not viable: every device in %s/kernel/iommu_groups/%u/devices "
                                  "must be bound to a VFIO driver or unbound%s%s%s",
                                  number, c->sysfs_root, number,
                                  blocker ? " (" : "", blocker ?: "", blocker ? ")" : "");
        }
        /* We open every group we use exactly once; a group that is attached already belongs to a
         * container somebody else set up through an inherited descriptor. */
        if (status.flags & VFIO_GROUP_FLAGS_CONTAINER_SET)
                return error_setf(err, -EBUSY, "IOMMU group %u is already attached to a VFIO container vfiomigd does not own",
                                  number);

        g = new0(KernelGroup, 1);
        if (!g)
                return oom(err);
        *g = (KernelGroup) {
                .n_ref = 1,
                .context = c,
                .next = c->groups,
                .number = number,
                .fd = TAKE_FD(fd),
                .is_mdev = l->is_mdev,
        };
        c->groups = g;

        /* A container of its own; attaching to a legacy address space may move the group later. */
        r = kernel_container_new(c, &k, err);
        if (r < 0)
                return r;
        r = kernel_group_attach(g, k, err);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(g);
        return 0;
}

static void kernel_device_opt_in_precopy_v2(KernelDevice *k);

static int kernel_device_reopen(KernelDevice *k, ErrorMessage *err) {
        KernelGroup *g = k->group;
        int fd;

        /* Device fds from the group come with O_CLOEXEC set; we keep it so. */
        fd = kernel_ioctl(k->context, g->fd, VFIO_GROUP_GET_DEVICE_FD, k->dev.name);
        if (fd < 0)
                return error_setf(err, fd, "Cannot get a device fd for %s from IOMMU group %u: %m", k->dev.name,
                                  g->number);
        k->dev.device_fd = fd;
        return 0;
}

/* Reopens every device of g that has no descriptor; the first failure is reported. */
static int kernel_group_reopen_devices(KernelGroup *g, ErrorMessage *err) {
        int ret = 0;

        for (KernelDevice *k = g->devices; k; k = k->group_next) {
                int r;

                if (k->dev.device_fd >= 0)
                        continue;
                r = kernel_device_reopen(k, ret < 0 ? NULL : err);
                if (r < 0 && ret == 0)
                        ret = r;
                if (r >= 0 && k->dev.migratable)
                        kernel_device_opt_in_precopy_v2(k); /* a new open forgot it */
        }
        return ret;
}

int kernel_group_move(KernelGroup *g, KernelContainer *target, ErrorMessage *err) {
        KernelContext *c = g->context;
        _cleanup_(kernel_container_unrefp) KernelContainer *old = NULL;
        int r;

        assert(target);

        if (g->container == target)
                return 0;

        /* Closing a device fd ends its migration session and, for the last descriptor of a
         * vfio-pci device, resets the device: the owner of the device decides. */
        for (KernelDevice *k = g->devices; k; k = k->group_next)
                if (c->reopen_check) {
                        r = c->reopen_check(&k->dev, c->reopen_userdata, err);
                        if (r < 0)
                                return error_setf(err, r, "%s, in IOMMU group %u, cannot be closed and reopened now",
                                                  k->dev.name, g->number);
                }

        for (KernelDevice *k = g->devices; k; k = k->group_next)
                k->dev.device_fd = safe_close(k->dev.device_fd);

        if (g->container) {
                old = kernel_container_ref(g->container);
                r = kernel_ioctl(c, g->fd, VFIO_GROUP_UNSET_CONTAINER, NULL);
                if (r < 0) {
                        ErrorMessage ignored = {};

                        (void) kernel_group_reopen_devices(g, &ignored);
                        if (r == -EBUSY)
                                return error_setf(err, r,
                                                  "IOMMU group %u cannot leave VFIO container %u: a device of the group "
                                                  "is still open elsewhere (a VMM holding a duplicate of its fd, or a "
                                                  "copy in the service manager's fd store)", g->number, old->id);
                        return error_setf(err, r, "VFIO_GROUP_UNSET_CONTAINER on IOMMU group %u failed: %m", g->number);
                }
                kernel_group_forget_container(g);
        }

        r = kernel_group_attach(g, target, err);
        if (r < 0) {
                /* Back where it was, if the kernel lets us: the devices stay usable. */
                if (old && kernel_group_attach(g, old, NULL) >= 0) {
                        ErrorMessage ignored = {};
                        (void) kernel_group_reopen_devices(g, &ignored);
                } else
                        log_debug("IOMMU group %u is in no container now; its devices are closed.", g->number);
                return r;
        }

        r = kernel_group_reopen_devices(g, err);
        if (r < 0)
                return r;
        log_debug("IOMMU group %u moved from container %u to container %u.", g->number, old ? old->id : 0, target->id);
        return 0;
}

/* Drops the references the context holds on restored groups. */
static int kernel_context_unpin_groups(KernelContext *c, char ***ret_released) {
        _cleanup_strv_free_ char **released = NULL;
        size_t n = 0;

        for (;;) {
                KernelGroup *g = NULL;
                KernelContainer *k;
                unsigned number, container_id = 0;
                bool group_goes, container_goes = false;

                for (KernelGroup *i = c->groups; i; i = i->next)
                        if (i->pinned) {
                                g = i;
                                break;
                        }
                if (!g)
                        break;

                g->pinned = false;
                number = g->number;
                group_goes = g->n_ref == 1;
                k = g->container;
                if (group_goes && k) {
                        container_id = k->id;
                        container_goes = k->n_ref == 1;
                }
                kernel_group_unref(g);

                if (!ret_released)
                        continue;
                if (group_goes) {
                        char **l = reallocarray(released, n + 3, sizeof *released);
                        if (!l)
                                return -ENOMEM;
                        released = l;
                        released[n] = strprintf("k-group-%u", number);
                        released[n + 1] = NULL;
                        if (!released[n])
                                return -ENOMEM;
                        n++;
                        if (container_goes) {
                                released[n] = strprintf("k-container-%u", container_id);
                                released[n + 1] = NULL;
                                if (!released[n])
                                        return -ENOMEM;
                                n++;
                        }
                }
        }

        if (ret_released) {
                if (!released) {
                        released = new0(char *, 1);
                        if (!released)
                                return -ENOMEM;
                }
                *ret_released = TAKE_PTR(released);
        }
        return 0;
}

int kernel_context_restore_finish(KernelContext *c, char ***ret_released) {
        assert(c);
        return kernel_context_unpin_groups(c, ret_released);
}

/* ---- Locating devices ---- */

void kernel_device_location_done(KernelDeviceLocation *l) {
        if (!l)
                return;
        free(l->name);
        free(l->sysfs_path);
        free(l->driver);
        free(l->cdev_name);
        *l = (KernelDeviceLocation) { .iommu_group = -1 };
}

bool kernel_device_location_is_vfio(const KernelDeviceLocation *l) {
        if (!l->driver)
                return false;
        /* The mdev bus exists for VFIO: every mdev driver registers its devices with it. A cdev
         * under vfio-dev/ is proof on kernels that have them. */
        if (l->is_mdev || l->cdev_name)
                return true;
        return driver_name_is_vfio(l->driver);
}

static int find_cdev(const char *sysfs_path, char **ret, ErrorMessage *err) {
        _cleanup_free_ char *path = NULL;
        char *found = NULL;
        DIR *d;

        path = strprintf("%s/vfio-dev", sysfs_path);
        if (!path)
                return oom(err);
        d = opendir(path);
        if (!d) {
                if (errno == ENOENT) {
                        *ret = NULL;
                        return 0;
                }
                return error_setf(err, -errno, "Cannot read %s: %m", path);
        }
        for (struct dirent *de; (de = readdir(d));)
                if (is_vfio_cdev_name(de->d_name)) {
                        found = strdup(de->d_name);
                        if (!found) {
                                (void) closedir(d);
                                return oom(err);
                        }
                        break;
                }
        (void) closedir(d);

        *ret = found;
        return 0;
}

/* An absolute path given by the caller: it must resolve inside <sysfs>/devices and name a PCI
 * function or an mdev. */
static int resolve_sysfs_path(const char *address, const char *devices_root, char **ret_resolved,
                              char ret_name[static DEVICE_NAME_MAX], bool *ret_is_mdev, ErrorMessage *err) {
        _cleanup_free_ char *resolved = NULL;
        char name[DEVICE_NAME_MAX];
        const char *base;
        bool is_mdev = false;

        resolved = realpath(address, NULL);
        if (!resolved) {
                if (errno_is_missing(errno))
                        return error_setf(err, -ENODEV, "No device at %s: the path does not exist", address);
                return error_setf(err, -errno, "Cannot resolve %s: %m", address);
        }
        if (!path_is_below(resolved, devices_root))
                return error_setf(err, -EINVAL, "%s is not a device path: it does not resolve inside %s",
                                  address, devices_root);

        base = strrchr(resolved, '/') + 1;
        if (pci_address_parse(base, name) && streq(name, base))
                is_mdev = false;
        else if (uuid_parse(base, name) && streq(name, base))
                is_mdev = true;
        else
                return error_setf(err, -EINVAL, "%s is neither a PCI device nor an mdev", address);

        *ret_resolved = TAKE_PTR(resolved);
        memcpy(ret_name, name, sizeof name);
        *ret_is_mdev = is_mdev;
        return 0;
}

int kernel_device_locate(KernelContext *c, const char *address, KernelDeviceLocation *ret, ErrorMessage *err) {
        _cleanup_(kernel_device_location_done) KernelDeviceLocation l = { .iommu_group = -1 };
        _cleanup_free_ char *devices_dir = NULL, *devices_root = NULL, *from_path = NULL, *bus_path = NULL,
                *resolved = NULL, *group = NULL;
        char name[DEVICE_NAME_MAX];
        const char *kind;
        bool is_mdev = false;
        unsigned long n;
        char *end;
        int r;

        assert(c);
        assert(address);
        assert(ret);

        devices_dir = strprintf("%s/devices", c->sysfs_root);
        if (!devices_dir)
                return oom(err);
        devices_root = realpath(devices_dir, NULL);
        if (!devices_root)
                return error_setf(err, -errno, "Cannot resolve %s: %m", devices_dir);

        if (address[0] == '/') {
                r = resolve_sysfs_path(address, devices_root, &from_path, name, &is_mdev, err);
                if (r < 0)
                        return r;
        } else if (pci_address_parse(address, name))
                is_mdev = false;
        else if (uuid_parse(address, name))
                is_mdev = true;
        else
                return error_setf(err, -EINVAL,
                                  "Invalid device address '%s': expected a PCI address such as 0000:3b:00.1, "
                                  "an mdev UUID, or a sysfs device path", address);
        kind = is_mdev ? "mdev" : "PCI device";

        /* The bus directory is the authority on what the device's name means; a path given by the
         * caller must be that same device, not some other directory that happens to be named so. */
        bus_path = strprintf("%s/bus/%s/devices/%s", c->sysfs_root, is_mdev ? "mdev" : "pci", name);
        if (!bus_path)
                return oom(err);
        resolved = realpath(bus_path, NULL);
        if (!resolved) {
                if (errno_is_missing(errno))
                        return error_setf(err, -ENODEV, "No %s %s on this host (%s does not exist)", kind, name, bus_path);
                return error_setf(err, -errno, "Cannot resolve %s: %m", bus_path);
        }
        if (!path_is_below(resolved, devices_root))
                return error_setf(err, -EINVAL, "%s does not resolve inside %s", bus_path, devices_root);
        if (from_path && !streq(from_path, resolved))
                return error_setf(err, -EINVAL, "%s is not the %s %s registered at %s", address, kind, name, bus_path);

        r = readlink_basename_at(resolved, "driver", &l.driver);
        if (r < 0 && r != -ENOENT)
                return error_setf(err, r, "Cannot read the driver of %s: %m", name);

        r = readlink_basename_at(resolved, "iommu_group", &group);
        if (r == -ENOENT) {
                /* Without an IOMMU a PCI function cannot be bound to vfio-pci at all, so say that
                 * first; an mdev gets its (emulated) group from its driver. */
                if (!is_mdev)
                        return error_setf(err, -ENXIO,
                                          "No IOMMU group for %s: is the IOMMU enabled (intel_iommu=on / amd_iommu=on)?",
                                          name);
                if (l.driver)
                        return error_setf(err, -ENXIO, "No IOMMU group for mdev %s: driver '%s' has not registered it with VFIO",
                                          name, l.driver);
        } else if (r < 0)
                return error_setf(err, r, "Cannot read the IOMMU group of %s: %m", name);

        if (!l.driver)
                return error_setf(err, -ENXIO, "%s %s is not bound to any driver%s", kind, name,
                                  is_mdev ? "" : ": bind it to vfio-pci first");

        errno = 0;
        n = strtoul(group, &end, 10);
        if (errno != 0 || end == group || *end || !isdigit((unsigned char) group[0]) || n > INT32_MAX)
                return error_setf(err, -EINVAL, "%s has an unexpected IOMMU group name '%s'", name, group);
        l.iommu_group = (int) n;

        r = find_cdev(resolved, &l.cdev_name, err);
        if (r < 0)
                return r;

        l.name = strdup(name);
        if (!l.name)
                return oom(err);
        l.sysfs_path = TAKE_PTR(resolved);
        l.is_mdev = is_mdev;

        *ret = l;
        l = (KernelDeviceLocation) { .iommu_group = -1 };
        return 0;
}

/* ---- Opening ---- */

static KernelDevice *kernel_device(VfioDev *d) {
        return (KernelDevice *) d;
}

KernelDevice *kernel_device_from_dev(VfioDev *d) {
        return kernel_device_owns(d) ? kernel_device(d) : NULL;
}

/* VFIO_DEVICE_FEATURE with a payload of at most 16 bytes, copied back only on success. */
static int device_feature(KernelDevice *k, uint32_t flags, void *payload, size_t size) {
        union {
                struct vfio_device_feature header;
                uint64_t align;
                uint8_t raw[sizeof(struct vfio_device_feature) + 16];
        } buf = {};
        int r;

        assert(size <= sizeof buf.raw - sizeof buf.header);

        buf.header.argsz = (uint32_t) (sizeof buf.header + size);
        buf.header.flags = flags;
        if (size > 0)
                memcpy(buf.raw + sizeof buf.header, payload, size);
        r = kernel_ioctl(k->context, k->dev.device_fd, VFIO_DEVICE_FEATURE, &buf);
        if (r < 0)
                return r;
        if (size > 0)
                memcpy(payload, buf.raw + sizeof buf.header, size);
        return 0;
}

/* The core answers ENOTTY for a migration feature a driver lacks; callers want "not supported". */
static int feature_errno(int r) {
        return r == -ENOTTY ? -EOPNOTSUPP : r;
}

static int kernel_device_open_iommufd(KernelDevice *k, const KernelDeviceLocation *l, ErrorMessage *err) {
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -EBADF;
        struct vfio_device_bind_iommufd bind = { .argsz = sizeof bind };
        int iommufd, r;

        path = strprintf("%s/vfio/devices/%s", k->context->dev_root, l->cdev_name);
        if (!path)
                return oom(err);

        iommufd = kernel_context_get_iommufd(k->context, err);
        if (iommufd < 0)
                return iommufd;

        fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
                if (errno == ENOENT)
                        return error_setf(err, -ENOENT,
                                          "%s does not exist although sysfs lists VFIO cdev %s for %s "
                                          "(is /dev/vfio/devices visible to vfiomigd?)", path, l->cdev_name, l->name);
                if (errno == EBUSY)
                        return error_setf(err, -EBUSY,
                                          "%s (%s) is already in use: its IOMMU group is open through the legacy "
                                          "API, or another process holds the device", l->name, path);
                return error_setf(err, -errno, "Cannot open %s: %m", path);
        }

        bind.iommufd = iommufd;
        r = kernel_ioctl(k->context, fd, VFIO_DEVICE_BIND_IOMMUFD, &bind);
        /* Opening a cdev always succeeds; the kernel refuses the second bind of a device with
         * EINVAL (vfio_df_open(): a cdev-opened device is open once), and our request is well
         * formed, so EINVAL here means someone else holds the device. */
        if (r == -EINVAL)
                return error_setf(err, -EBUSY,
                                  "%s (%s) is in use: another open of its VFIO cdev is bound to an iommufd (another "
                                  "vfiomigd or a VMM holds the device), and the kernel binds a device once "
                                  "(VFIO_DEVICE_BIND_IOMMUFD: EINVAL)", l->name, path);
        if (r < 0)
                return error_setf(err, r, "Cannot bind %s (%s) to iommufd: %m", l->name, path);

        log_debug("%s: opened %s and bound it to iommufd as device %u.", l->name, path, bind.out_devid);
        k->devid = bind.out_devid;
        k->dev.device_fd = TAKE_FD(fd);
        return 0;
}

static void kernel_device_join_group(KernelDevice *k, KernelGroup *g) {
        k->group = g;
        k->group_next = g->devices;
        g->devices = k;
}

static void kernel_device_leave_group(KernelDevice *k) {
        if (!k->group)
                return;
        for (KernelDevice **p = &k->group->devices; *p; p = &(*p)->group_next)
                if (*p == k) {
                        *p = k->group_next;
                        break;
                }
        k->group_next = NULL;
        k->group = kernel_group_unref(k->group);
}

static int kernel_device_open_legacy(KernelDevice *k, const KernelDeviceLocation *l, ErrorMessage *err) {
        KernelGroup *g = NULL;
        int r;

        r = kernel_context_acquire_group(k->context, l, &g, err);
        if (r < 0)
                return r;
        kernel_device_join_group(k, g);

        r = kernel_device_reopen(k, err);
        if (r < 0)
                return r;

        log_debug("%s: opened through IOMMU group %u (container %u).", l->name, g->number, g->container->id);
        return 0;
}

/* Opts a PRE_COPY device in to PRECOPY_INFOv2 (Linux 7.2). The kernel forgets the opt-in when
 * the device's last fd closes, so this runs after every open. A refusal is not an error: the
 * device keeps v1 semantics, said once per open in the journal and in the Device's PrecopyInfo
 * property. */
static void kernel_device_opt_in_precopy_v2(KernelDevice *k) {
        const char *name;
        int r;

        if (!(k->dev.migration_flags & VFIO_MIGRATION_PRE_COPY)) {
                k->dev.precopy_info_version = VFIO_PRECOPY_INFO_NONE;
                return;
        }
        r = device_feature(k, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2, NULL, 0);
        if (r >= 0) {
                k->dev.precopy_info_version = VFIO_PRECOPY_INFO_V2;
                log_debug("%s: PRECOPY_INFOv2 enabled.", k->dev.name);
                return;
        }
        k->dev.precopy_info_version = VFIO_PRECOPY_INFO_V1;
        name = strerrorname_np(-r);
        log_info("%s: PRECOPY_INFOv2 refused by the driver (%s: %s): using PRECOPY_INFO.", k->dev.name,
                 name ?: "unknown errno", strerror(-r));
}

static int kernel_device_probe_migration(KernelDevice *k) {
        struct vfio_device_feature_migration mig = {};
        char *reason;
        int r;

        r = device_feature(k, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION, &mig, sizeof mig);
        if (r == -ENOTTY)
                reason = strprintf("driver '%s' does not implement VFIO migration "
                                   "(VFIO_DEVICE_FEATURE_MIGRATION: ENOTTY)", k->dev.driver);
        else if (r < 0) {
                errno = -r;
                reason = strprintf("VFIO_DEVICE_FEATURE_MIGRATION failed on driver '%s': %m", k->dev.driver);
        } else if (mig.flags > UINT32_MAX || !mig_flags_valid((uint32_t) mig.flags))
                reason = strprintf("driver '%s' reports migration flags 0x%llx, which is not a combination "
                                   "the VFIO uAPI defines", k->dev.driver, (unsigned long long) mig.flags);
        else {
                k->dev.migratable = true;
                k->dev.migration_flags = (uint32_t) mig.flags;
                free(k->dev.migratable_reason);
                k->dev.migratable_reason = NULL;
                log_debug("%s: migration flags 0x%x.", k->dev.name, k->dev.migration_flags);
                kernel_device_opt_in_precopy_v2(k);
                return 0;
        }
        if (!reason)
                return -ENOMEM;

        log_debug("%s: not migratable: %s", k->dev.name, reason);
        k->dev.migratable = false;
        k->dev.migration_flags = 0;
        k->dev.precopy_info_version = VFIO_PRECOPY_INFO_NONE;
        free(k->dev.migratable_reason);
        k->dev.migratable_reason = reason;
        return 0;
}

static int kernel_context_use_iommufd(KernelContext *c, const KernelDeviceLocation *l) {
        _cleanup_free_ char *path = NULL;

        if (c->prefer_legacy || !l->cdev_name)
                return false;
        if (c->iommufd >= 0)
                return true;
        path = strprintf("%s/iommu", c->dev_root);
        if (!path)
                return -ENOMEM;
        return access(path, F_OK) >= 0;
}

/* A KernelDevice with its common fields; no descriptor yet. */
static int kernel_device_new(KernelContext *c, VfioBackend backend, const char *name, const char *address,
                             const char *driver, const char *sysfs_path, int iommu_group, bool is_mdev,
                             KernelDevice **ret) {
        KernelDevice *k;
        int r;

        k = new0(KernelDevice, 1);
        if (!k)
                return -ENOMEM;
        r = vfio_dev_init_common(&k->dev, &kernel_device_ops, backend, name, address, driver, sysfs_path);
        if (r < 0) {
                free(k);
                return r;
        }
        k->context = kernel_context_ref(c);
        k->iommu_group = iommu_group;
        k->is_mdev = is_mdev;
        *ret = k;
        return 0;
}

int kernel_device_open(KernelContext *c, const char *address, VfioDev **ret, ErrorMessage *err) {
        _cleanup_(kernel_device_location_done) KernelDeviceLocation l = { .iommu_group = -1 };
        _cleanup_(vfio_dev_freep) VfioDev *d = NULL;
        struct vfio_device_info info = { .argsz = sizeof info };
        KernelDevice *k;
        int r, use_iommufd;

        assert(c);
        assert(address);
        assert(ret);

        r = kernel_device_locate(c, address, &l, err);
        if (r < 0)
                return r;
        if (!kernel_device_location_is_vfio(&l))
                return error_setf(err, -ENXIO, "%s is bound to driver '%s', not to a VFIO driver%s", l.name, l.driver,
                                  l.is_mdev ? "" : ": rebind it to vfio-pci (driver_override) first");

        use_iommufd = kernel_context_use_iommufd(c, &l);
        if (use_iommufd < 0)
                return oom(err);

        r = kernel_device_new(c, use_iommufd ? VFIO_BACKEND_IOMMUFD : VFIO_BACKEND_LEGACY, l.name, l.name, l.driver,
                              l.sysfs_path, l.iommu_group, l.is_mdev, &k);
        if (r < 0)
                return oom(err);
        d = &k->dev;

        if (use_iommufd)
                r = kernel_device_open_iommufd(k, &l, err);
        else
                r = kernel_device_open_legacy(k, &l, err);
        if (r < 0)
                return r;

        r = kernel_ioctl(c, d->device_fd, VFIO_DEVICE_GET_INFO, &info);
        if (r < 0)
                return error_setf(err, r, "VFIO_DEVICE_GET_INFO on %s failed: %m", l.name);
        k->info_flags = info.flags;

        r = kernel_device_probe_migration(k);
        if (r < 0)
                return oom(err);

        log_debug("%s: opened (%s backend, driver %s, %s).", l.name, vfio_backend_to_string(d->backend), l.driver,
                  d->migratable ? "migratable" : "not migratable");
        *ret = TAKE_PTR(d);
        return 0;
}

/* ---- Getters ---- */

bool kernel_device_owns(const VfioDev *d) {
        return d && d->ops == &kernel_device_ops;
}

int kernel_device_get_iommufd_devid(VfioDev *d, uint32_t *ret_devid) {
        if (!kernel_device_owns(d) || d->backend != VFIO_BACKEND_IOMMUFD)
                return -EOPNOTSUPP;
        if (ret_devid)
                *ret_devid = kernel_device(d)->devid;
        return 0;
}

int kernel_device_get_container_fd(VfioDev *d) {
        if (!kernel_device_owns(d) || d->backend != VFIO_BACKEND_LEGACY)
                return -EOPNOTSUPP;
        if (!kernel_device(d)->group->container)
                return -ENXIO;
        return kernel_device(d)->group->container->fd;
}

int kernel_device_get_type1_update_vaddr(VfioDev *d) {
        if (!kernel_device_owns(d) || d->backend != VFIO_BACKEND_LEGACY)
                return -EOPNOTSUPP;
        if (!kernel_device(d)->group->container)
                return -ENXIO;
        return kernel_device(d)->group->container->update_vaddr;
}

int kernel_device_get_iommu_group(VfioDev *d) {
        if (!kernel_device_owns(d))
                return -EOPNOTSUPP;
        return kernel_device(d)->iommu_group;
}

int kernel_device_get_info_flags(VfioDev *d, uint32_t *ret_flags) {
        if (!kernel_device_owns(d))
                return -EOPNOTSUPP;
        if (ret_flags)
                *ret_flags = kernel_device(d)->info_flags;
        return 0;
}

int kernel_device_fd_name(const VfioDev *d, char **ret) {
        char *s;

        if (!kernel_device_owns(d))
                return -EOPNOTSUPP;
        s = strprintf("k-device-%s", d->name);
        if (!s)
                return -ENOMEM;
        for (char *p = s; *p; p++)
                if (*p == ':' || *p == '.')
                        *p = '_';
        *ret = s;
        return 0;
}

/* ---- Operations ---- */

static int kernel_device_get_state(VfioDev *d, MigState *ret_state) {
        struct vfio_device_feature_mig_state s = { .data_fd = -1 };
        int r;

        r = device_feature(kernel_device(d), VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &s,
                           sizeof s);
        if (r < 0)
                return log_debug_errno(feature_errno(r), "%s: reading the migration state failed: %m", d->name);
        if (s.device_state >= VFIO_DEVICE_STATE_NR)
                return log_debug_errno(SYNTHETIC_ERRNO(EPROTO), "%s: driver reports unknown migration state %u.",
                                       d->name, s.device_state);

        *ret_state = (MigState) s.device_state;
        return 0;
}

static int kernel_device_set_state(VfioDev *d, MigState target, int *ret_data_fd) {
        struct vfio_device_feature_mig_state s = { .device_state = (uint32_t) target, .data_fd = -1 };
        int r, fd;

        r = device_feature(kernel_device(d), VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &s,
                           sizeof s);
        if (r < 0)
                return log_debug_errno(feature_errno(r), "%s: setting migration state %s failed: %m", d->name,
                                       mig_state_to_string(target) ?: "(invalid)");

        /* The kernel installs a new data fd with O_CLOEXEC, or writes back -1. */
        fd = s.data_fd >= 0 ? s.data_fd : -EBADF;
        log_debug("%s: migration state %s reached%s.", d->name, mig_state_to_string(target) ?: "(invalid)",
                  fd >= 0 ? ", new data fd" : "");
        if (ret_data_fd)
                *ret_data_fd = fd;
        else
                (void) safe_close(fd);
        return 0;
}

static int kernel_device_precopy_info(VfioDev *d, int data_fd, uint64_t *ret_initial, uint64_t *ret_dirty,
                                      uint32_t *ret_flags) {
        struct vfio_precopy_info info = { .argsz = sizeof info };
        int r;

        r = kernel_ioctl(kernel_device(d)->context, data_fd, VFIO_MIG_GET_PRECOPY_INFO, &info);
        if (r < 0)
                return log_debug_errno(feature_errno(r), "%s: VFIO_MIG_GET_PRECOPY_INFO failed: %m", d->name);

        if (ret_initial)
                *ret_initial = info.initial_bytes;
        if (ret_dirty)
                *ret_dirty = info.dirty_bytes;
        if (ret_flags)
                /* v1 drivers copy back the flags they were given: they mean nothing */
                *ret_flags = d->precopy_info_version == VFIO_PRECOPY_INFO_V2 ? info.flags & VFIO_PRECOPY_INFO_REINIT : 0;
        return 0;
}

static int kernel_device_stop_copy_size(VfioDev *d, uint64_t *ret_size) {
        struct vfio_device_feature_mig_data_size size = {};
        int r;

        /* MIG_DATA_SIZE arrived in 6.2; older kernels answer ENOTTY. */
        r = device_feature(kernel_device(d), VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, &size,
                           sizeof size);
        if (r < 0)
                return log_debug_errno(feature_errno(r), "%s: VFIO_DEVICE_FEATURE_MIG_DATA_SIZE failed: %m", d->name);

        *ret_size = size.stop_copy_length;
        return 0;
}

static ssize_t kernel_device_data_read(VfioDev *d, int data_fd, void *buf, size_t n) {
        for (;;) {
                ssize_t l = read(data_fd, buf, n);
                if (l >= 0)
                        return l;
                if (errno != EINTR)
                        return -errno;
        }
}

static ssize_t kernel_device_data_write(VfioDev *d, int data_fd, const void *buf, size_t n) {
        for (;;) {
                ssize_t l = write(data_fd, buf, n);
                if (l >= 0)
                        return l;
                if (errno != EINTR)
                        return -errno;
        }
}

static int kernel_device_reset(VfioDev *d) {
        bool advertised = kernel_device(d)->info_flags & VFIO_DEVICE_FLAGS_RESET;
        int r;

        /* The flag is advice, not a contract: some drivers (the mtty sample among them) implement
         * VFIO_DEVICE_RESET without setting it. A driver that lacks the ioctl answers ENOTTY, and
         * vfio-pci without a reset method answers EINVAL, so trying is safe either way. */
        r = kernel_ioctl(kernel_device(d)->context, d->device_fd, VFIO_DEVICE_RESET, NULL);
        if (r < 0 && !advertised && (r == -ENOTTY || r == -EINVAL))
                return log_debug_errno(SYNTHETIC_ERRNO(EOPNOTSUPP),
                                       "%s: driver '%s' does not offer VFIO_DEVICE_RESET for this device.",
                                       d->name, d->driver);
        if (r < 0)
                return log_debug_errno(r, "%s: VFIO_DEVICE_RESET failed: %m", d->name);

        log_debug("%s: reset%s.", d->name, advertised ? "" : " (not advertised by the driver, but accepted)");
        return 0;
}

static void kernel_device_destroy(VfioDev *d) {
        KernelDevice *k = kernel_device(d);

        if (k->space)
                kernel_space_forget_device(k->space, d);
        /* The device fd goes first: closing it unbinds the device from iommufd or releases it from
         * its group, and the group may be closed only after its last device. */
        d->device_fd = safe_close(d->device_fd);
        kernel_device_leave_group(k);
        kernel_context_unref(k->context);
        vfio_dev_done_common(d);
        free(k);
}

static const VfioDevOps kernel_device_ops = {
        .get_state = kernel_device_get_state,
        .set_state = kernel_device_set_state,
        .precopy_info = kernel_device_precopy_info,
        .stop_copy_size = kernel_device_stop_copy_size,
        .data_read = kernel_device_data_read,
        .data_write = kernel_device_data_write,
        .reset = kernel_device_reset,
        .destroy = kernel_device_destroy,
};

/* ---- JSON helpers ---- */

static void json_putp(json_object **o) {
        if (*o)
                json_object_put(*o);
}

static int kjson_add(json_object *o, const char *key, json_object *v) {
        if (!v)
                return -ENOMEM;
        if (json_object_object_add(o, key, v) < 0) {
                json_object_put(v);
                return -ENOMEM;
        }
        return 0;
}

int kjson_add_u64(json_object *o, const char *key, uint64_t v) {
        return kjson_add(o, key, json_object_new_uint64(v));
}

int kjson_add_string(json_object *o, const char *key, const char *v) {
        return kjson_add(o, key, json_object_new_string(v));
}

int kjson_add_bool(json_object *o, const char *key, bool v) {
        return kjson_add(o, key, json_object_new_boolean(v));
}

int kjson_add_null(json_object *o, const char *key) {
        /* json-c represents null as a NULL object. */
        return json_object_object_add(o, key, NULL) < 0 ? -ENOMEM : 0;
}

/* 1 and the value if key is present and not null, 0 if absent or null. */
static int kjson_lookup(json_object *o, const char *key, json_object **ret) {
        json_object *v = NULL;

        if (!json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, key, &v) || !v)
                return 0;
        *ret = v;
        return 1;
}

static int kjson_missing(const char *key, const char *what, ErrorMessage *err) {
        return error_setf(err, -ENOENT, "the saved state of %s lacks \"%s\"", what, key);
}

static int kjson_wrong(const char *key, const char *what, const char *expected, ErrorMessage *err) {
        return error_setf(err, -EINVAL, "the saved state of %s is malformed: \"%s\" must be %s", what, key, expected);
}

int kjson_get_u32_opt(json_object *o, const char *key, const char *what, uint32_t *ret, ErrorMessage *err) {
        json_object *v;
        int64_t i;

        if (kjson_lookup(o, key, &v) == 0)
                return 0;
        if (!json_object_is_type(v, json_type_int))
                return kjson_wrong(key, what, "an integer", err);
        errno = 0;
        i = json_object_get_int64(v);
        if (errno != 0 || i < 0 || i > UINT32_MAX)
                return kjson_wrong(key, what, "an integer between 0 and 4294967295", err);
        *ret = (uint32_t) i;
        return 1;
}

int kjson_get_u32(json_object *o, const char *key, const char *what, uint32_t *ret, ErrorMessage *err) {
        int r = kjson_get_u32_opt(o, key, what, ret, err);
        return r == 0 ? kjson_missing(key, what, err) : r;
}

int kjson_get_bool(json_object *o, const char *key, const char *what, bool *ret, ErrorMessage *err) {
        json_object *v;

        if (kjson_lookup(o, key, &v) == 0)
                return kjson_missing(key, what, err);
        if (!json_object_is_type(v, json_type_boolean))
                return kjson_wrong(key, what, "true or false", err);
        *ret = json_object_get_boolean(v);
        return 1;
}

int kjson_get_string_opt(json_object *o, const char *key, const char *what, const char **ret, ErrorMessage *err) {
        json_object *v;

        if (kjson_lookup(o, key, &v) == 0)
                return 0;
        if (!json_object_is_type(v, json_type_string) || json_object_get_string_len(v) == 0)
                return kjson_wrong(key, what, "a non-empty string", err);
        *ret = json_object_get_string(v);
        return 1;
}

int kjson_get_string(json_object *o, const char *key, const char *what, const char **ret, ErrorMessage *err) {
        int r = kjson_get_string_opt(o, key, what, ret, err);
        return r == 0 ? kjson_missing(key, what, err) : r;
}

int kjson_get_array(json_object *o, const char *key, const char *what, json_object **ret, ErrorMessage *err) {
        json_object *v;

        if (kjson_lookup(o, key, &v) == 0)
                return kjson_missing(key, what, err);
        if (!json_object_is_type(v, json_type_array))
                return kjson_wrong(key, what, "an array", err);
        *ret = v;
        return 1;
}

/* The descriptor saved under name must be in fds: peeked at, not taken. */
static int kjson_get_fd(json_object *o, const char *what, NamedFds *fds, const char **ret_name, int *ret_fd,
                        ErrorMessage *err) {
        const char *name;
        int r, fd;

        r = kjson_get_string(o, "fd", what, &name, err);
        if (r < 0)
                return r;
        if (!named_fd_name_valid(name))
                return kjson_wrong("fd", what, "a descriptor name", err);
        fd = named_fds_get(fds, name);
        if (fd < 0)
                return error_setf(err, -ENOENT, "the descriptor \"%s\" of %s is missing from the fd store", name, what);
        *ret_name = name;
        if (ret_fd)
                *ret_fd = fd;
        return 0;
}

/* Takes a descriptor the restore validated before, now ours, with O_CLOEXEC. */
static int take_fd(NamedFds *fds, const char *name) {
        int fd, flags;

        fd = named_fds_take(fds, name);
        assert(fd >= 0);
        flags = fcntl(fd, F_GETFD);
        if (flags >= 0 && !(flags & FD_CLOEXEC))
                (void) fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
        return fd;
}

/* ---- Saving and restoring the context ---- */

static int add_fd(NamedFds *fds, const char *name, int fd) {
        int r = named_fds_add(fds, name, fd, /* owned= */ false);
        if (r == -EEXIST)
                return log_debug_errno(r, "The descriptor name %s is in the set twice.", name);
        return r;
}

static int save_group(KernelGroup *g, json_object *groups, NamedFds *fds) {
        _cleanup_(json_putp) json_object *o = json_object_new_object();
        _cleanup_free_ char *name = strprintf("k-group-%u", g->number);
        int r;

        if (!o || !name)
                return -ENOMEM;
        r = kjson_add_u64(o, "number", g->number);
        if (r >= 0)
                r = kjson_add_string(o, "fd", name);
        if (r >= 0)
                r = kjson_add_bool(o, "mdev", g->is_mdev);
        if (r < 0)
                return r;
        r = add_fd(fds, name, g->fd);
        if (r < 0)
                return r;
        if (json_object_array_add(groups, o) < 0)
                return -ENOMEM;
        TAKE_PTR(o);
        return 0;
}

static int save_container(KernelContainer *k, json_object *containers, NamedFds *fds) {
        _cleanup_(json_putp) json_object *o = json_object_new_object(), *groups = json_object_new_array();
        _cleanup_free_ char *name = strprintf("k-container-%u", k->id);
        unsigned last = 0;
        bool first = true;
        int r;

        if (!o || !groups || !name)
                return -ENOMEM;
        r = kjson_add_u64(o, "id", k->id);
        if (r >= 0)
                r = kjson_add_string(o, "fd", name);
        if (r >= 0)
                r = kjson_add_bool(o, "iommu-set", k->iommu_set);
        if (r >= 0)
                r = kjson_add_bool(o, "update-vaddr", k->update_vaddr);
        if (r < 0)
                return r;

        /* In group-number order, so that the same objects always give the same text. */
        for (;;) {
                KernelGroup *next = NULL;

                for (KernelGroup *g = k->context->groups; g; g = g->next)
                        if (g->container == k && (first || g->number > last) && (!next || g->number < next->number))
                                next = g;
                if (!next)
                        break;
                r = save_group(next, groups, fds);
                if (r < 0)
                        return r;
                last = next->number;
                first = false;
        }

        r = add_fd(fds, name, k->fd);
        if (r < 0)
                return r;
        if (json_object_object_add(o, "groups", TAKE_PTR(groups)) < 0)
                return -ENOMEM;
        if (json_object_array_add(containers, o) < 0)
                return -ENOMEM;
        TAKE_PTR(o);
        return 0;
}

int kernel_context_save(KernelContext *c, json_object **ret, NamedFds *fds) {
        _cleanup_(json_putp) json_object *o = json_object_new_object(), *containers = json_object_new_array();
        unsigned last = 0;
        int r;

        assert(c);
        assert(ret);
        assert(fds);

        if (!o || !containers)
                return -ENOMEM;

        if (c->iommufd >= 0) {
                r = kjson_add_string(o, "iommufd", "k-iommufd");
                if (r < 0)
                        return r;
                r = add_fd(fds, "k-iommufd", c->iommufd);
                if (r < 0)
                        return r;
        }
        r = kjson_add_u64(o, "next-container-id", c->next_container_id);
        if (r < 0)
                return r;

        /* A container none of our groups is in has no IOMMU and no mappings left: nothing to keep. */
        for (;;) {
                KernelContainer *next = NULL;

                for (KernelContainer *k = c->containers; k; k = k->next)
                        if (k->n_groups > 0 && k->id > last && (!next || k->id < next->id))
                                next = k;
                if (!next)
                        break;
                r = save_container(next, containers, fds);
                if (r < 0)
                        return r;
                last = next->id;
        }
        for (KernelGroup *g = c->groups; g; g = g->next)
                if (!g->container)
                        log_debug("IOMMU group %u is in no container and is not saved.", g->number);

        if (json_object_object_add(o, "containers", TAKE_PTR(containers)) < 0)
                return -ENOMEM;
        *ret = TAKE_PTR(o);
        return 0;
}

typedef struct SavedGroup {
        unsigned number;
        const char *name;
        int fd;
        bool is_mdev;
} SavedGroup;

typedef struct SavedContainer {
        unsigned id;
        const char *name;
        bool iommu_set;
        bool update_vaddr;
        SavedGroup *groups;
        size_t n_groups;
} SavedContainer;

static void saved_containers_free(SavedContainer *l, size_t n) {
        for (size_t i = 0; i < n; i++)
                free(l[i].groups);
        free(l);
}

/* Checks one container record and that its descriptors are all in fds; takes nothing. */
static int parse_container(KernelContext *c, json_object *o, NamedFds *fds, SavedContainer *ret, ErrorMessage *err) {
        _cleanup_free_ SavedGroup *groups = NULL;
        _cleanup_free_ char *what = NULL;
        json_object *array;
        uint32_t id;
        size_t n;
        int r;

        if (!json_object_is_type(o, json_type_object))
                return error_setf(err, -EINVAL, "the saved state of the kernel objects is malformed: "
                                  "a container record is not an object");
        r = kjson_get_u32(o, "id", "a VFIO container", &id, err);
        if (r < 0)
                return r;
        if (id == 0)
                return kjson_wrong("id", "a VFIO container", "a positive integer", err);
        what = strprintf("VFIO container %u", id);
        if (!what)
                return -ENOMEM;

        *ret = (SavedContainer) { .id = id };
        r = kjson_get_fd(o, what, fds, &ret->name, NULL, err);
        if (r < 0)
                return r;
        r = kjson_get_bool(o, "iommu-set", what, &ret->iommu_set, err);
        if (r >= 0)
                r = kjson_get_bool(o, "update-vaddr", what, &ret->update_vaddr, err);
        if (r >= 0)
                r = kjson_get_array(o, "groups", what, &array, err);
        if (r < 0)
                return r;

        n = json_object_array_length(array);
        groups = new0(SavedGroup, MAX(n, 1u));
        if (!groups)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                json_object *g = json_object_array_get_idx(array, i);
                _cleanup_free_ char *gwhat = NULL;
                struct vfio_group_status status = { .argsz = sizeof status };
                uint32_t number;

                if (!json_object_is_type(g, json_type_object))
                        return error_setf(err, -EINVAL, "the saved state of %s is malformed: a group record is "
                                          "not an object", what);
                r = kjson_get_u32(g, "number", what, &number, err);
                if (r < 0)
                        return r;
                gwhat = strprintf("IOMMU group %u", number);
                if (!gwhat)
                        return -ENOMEM;
                groups[i].number = number;
                r = kjson_get_fd(g, gwhat, fds, &groups[i].name, &groups[i].fd, err);
                if (r >= 0)
                        r = kjson_get_bool(g, "mdev", gwhat, &groups[i].is_mdev, err);
                if (r < 0)
                        return r;

                /* Our predecessor attached it, so CONTAINER_SET is expected; a group the kernel
                 * says is in no container lost its mappings. A descriptor that cannot answer is
                 * adopted as it is and fails where it is used. */
                r = kernel_ioctl(c, groups[i].fd, VFIO_GROUP_GET_STATUS, &status);
                if (r < 0)
                        log_debug_errno(r, "VFIO_GROUP_GET_STATUS on the adopted %s failed, adopting it anyway: %m",
                                        gwhat);
                else if (!(status.flags & VFIO_GROUP_FLAGS_CONTAINER_SET))
                        return error_setf(err, -ENXIO, "%s (descriptor \"%s\") is in no VFIO container any more, "
                                          "although it was saved in %s: its mappings are gone", gwhat,
                                          groups[i].name, what);
        }

        ret->groups = TAKE_PTR(groups);
        ret->n_groups = n;
        return 0;
}

int kernel_context_restore(KernelContext *c, json_object *saved, NamedFds *fds, ErrorMessage *err) {
        SavedContainer *containers = NULL;
        size_t n_containers = 0;
        json_object *array;
        const char *iommufd_name = NULL;
        uint32_t next_id = 1;
        int r;

        assert(c);
        assert(fds);

        if (c->iommufd >= 0 || c->groups || c->containers)
                return error_setf(err, -EBUSY, "the kernel objects must be restored before any device or address "
                                  "space exists");
        if (!json_object_is_type(saved, json_type_object))
                return error_setf(err, -EINVAL, "the saved state of the kernel objects is malformed: not an object");

        /* First check everything, so that a failure takes nothing out of fds. */
        r = kjson_get_string_opt(saved, "iommufd", "the kernel objects", &iommufd_name, err);
        if (r < 0)
                return r;
        if (iommufd_name && named_fds_get(fds, iommufd_name) < 0)
                return error_setf(err, -ENOENT, "the descriptor \"%s\" of the daemon's iommufd is missing from the "
                                  "fd store", iommufd_name);
        r = kjson_get_u32(saved, "next-container-id", "the kernel objects", &next_id, err);
        if (r < 0)
                return r;
        r = kjson_get_array(saved, "containers", "the kernel objects", &array, err);
        if (r < 0)
                return r;

        n_containers = json_object_array_length(array);
        containers = new0(SavedContainer, MAX(n_containers, 1u));
        if (!containers)
                return -ENOMEM;
        for (size_t i = 0; i < n_containers; i++) {
                r = parse_container(c, json_object_array_get_idx(array, i), fds, &containers[i], err);
                if (r < 0)
                        goto finish;
                for (size_t j = 0; j < i; j++) {
                        if (containers[j].id == containers[i].id) {
                                r = error_setf(err, -EINVAL, "the saved state of the kernel objects is malformed: "
                                               "VFIO container %u is listed twice", containers[i].id);
                                goto finish;
                        }
                        for (size_t a = 0; a < containers[j].n_groups; a++)
                                for (size_t b = 0; b < containers[i].n_groups; b++)
                                        if (containers[j].groups[a].number == containers[i].groups[b].number) {
                                                r = error_setf(err, -EINVAL, "the saved state of the kernel objects "
                                                               "is malformed: IOMMU group %u is listed twice",
                                                               containers[i].groups[b].number);
                                                goto finish;
                                        }
                }
                for (size_t a = 0; a < containers[i].n_groups; a++)
                        for (size_t b = a + 1; b < containers[i].n_groups; b++)
                                if (containers[i].groups[a].number == containers[i].groups[b].number) {
                                        r = error_setf(err, -EINVAL, "the saved state of the kernel objects is "
                                                       "malformed: IOMMU group %u is listed twice",
                                                       containers[i].groups[a].number);
                                        goto finish;
                                }
        }

        /* Now adopt. Only memory can fail from here on. */
        if (iommufd_name) {
                c->iommufd = take_fd(fds, iommufd_name);
                log_debug("Adopted the iommufd (%s).", iommufd_name);
        }
        c->restored = true;
        c->change_process_done = false;
        c->next_container_id = MAX(next_id, 1u);

        for (size_t i = 0; i < n_containers; i++) {
                SavedContainer *s = &containers[i];
                _cleanup_(kernel_container_unrefp) KernelContainer *k = NULL;
                int fd = take_fd(fds, s->name);

                r = kernel_container_add(c, fd, s->id, &k);
                if (r < 0) {
                        safe_close(fd);
                        r = oom(err);
                        goto finish;
                }
                c->next_container_id = MAX(c->next_container_id, s->id + 1);
                k->iommu_set = s->iommu_set;
                k->update_vaddr = s->update_vaddr;
                if (k->iommu_set && kernel_container_check_update_vaddr(k) < 0)
                        k->update_vaddr = s->update_vaddr; /* cannot answer: keep what was saved */

                for (size_t j = 0; j < s->n_groups; j++) {
                        KernelGroup *g = new0(KernelGroup, 1);

                        fd = take_fd(fds, s->groups[j].name);
                        if (!g) {
                                safe_close(fd);
                                r = oom(err);
                                goto finish;
                        }
                        /* The context holds it until a device or space claims it. */
                        *g = (KernelGroup) {
                                .n_ref = 1,
                                .context = c,
                                .next = c->groups,
                                .number = s->groups[j].number,
                                .fd = fd,
                                .is_mdev = s->groups[j].is_mdev,
                                .pinned = true,
                                .container = kernel_container_ref(k),
                        };
                        c->groups = g;
                        k->n_groups++;
                }
                if (k->n_groups == 0)
                        log_debug("VFIO container %u was saved without groups: it has nothing left, closing it.", s->id);
                log_debug("Adopted VFIO container %u with %u IOMMU group%s.", s->id, k->n_groups,
                          k->n_groups == 1 ? "" : "s");
        }
        r = 0;

finish:
        saved_containers_free(containers, n_containers);
        return r;
}

/* ---- Saving and restoring devices ---- */

int kernel_device_save(VfioDev *d, json_object **ret, NamedFds *fds) {
        _cleanup_(json_putp) json_object *o = json_object_new_object();
        _cleanup_free_ char *name = NULL;
        KernelDevice *k = kernel_device_from_dev(d);
        int r;

        assert(ret);
        assert(fds);

        if (!k)
                return -EOPNOTSUPP;
        if (!o)
                return -ENOMEM;
        r = kernel_device_fd_name(d, &name);
        if (r < 0)
                return r;

        r = kjson_add_string(o, "name", d->name);
        if (r >= 0)
                r = kjson_add_string(o, "address", d->address);
        if (r >= 0)
                r = kjson_add_string(o, "driver", d->driver);
        if (r >= 0)
                r = d->sysfs_path ? kjson_add_string(o, "sysfs-path", d->sysfs_path) : kjson_add_null(o, "sysfs-path");
        /* After a failed move the device may have no descriptor: its record says so, and a
         * restore reports it instead of the whole save failing. */
        if (r >= 0)
                r = d->device_fd >= 0 ? kjson_add_string(o, "fd", name) : kjson_add_null(o, "fd");
        if (r >= 0)
                r = kjson_add_string(o, "path", vfio_backend_to_string(d->backend));
        if (r >= 0)
                r = kjson_add_u64(o, "iommu-group", (uint64_t) k->iommu_group);
        if (r >= 0)
                r = kjson_add_bool(o, "mdev", k->is_mdev);
        if (r >= 0 && d->backend == VFIO_BACKEND_IOMMUFD) {
                r = kjson_add_u64(o, "devid", k->devid);
                if (r >= 0)
                        r = k->attached_pt ? kjson_add_u64(o, "ioas-id", k->attached_pt) : kjson_add_null(o, "ioas-id");
                if (r >= 0)
                        r = k->attached_pt ? kjson_add_u64(o, "hwpt-id", k->hwpt_id) : kjson_add_null(o, "hwpt-id");
        }
        if (r < 0)
                return r;

        if (d->device_fd >= 0) {
                r = add_fd(fds, name, d->device_fd);
                if (r < 0)
                        return r;
        } else
                log_debug("%s has no open descriptor to save.", d->name);

        *ret = TAKE_PTR(o);
        return 0;
}

int kernel_device_restore(KernelContext *c, json_object *saved, NamedFds *fds, VfioDev **ret, ErrorMessage *err) {
        _cleanup_(vfio_dev_freep) VfioDev *d = NULL;
        _cleanup_free_ char *what = NULL, *expected_fd = NULL;
        struct vfio_device_info info = { .argsz = sizeof info };
        const char *name, *address, *driver, *sysfs_path = NULL, *path, *fd_name = NULL;
        uint32_t group_number, devid = 0, ioas = 0, hwpt = 0;
        VfioBackend backend;
        KernelGroup *g = NULL;
        KernelDevice *k;
        bool is_mdev;
        int r, fd;

        assert(c);
        assert(fds);
        assert(ret);

        if (!json_object_is_type(saved, json_type_object))
                return error_setf(err, -EINVAL, "the saved state of a kernel device is malformed: not an object");
        r = kjson_get_string(saved, "name", "a kernel device", &name, err);
        if (r < 0)
                return r;
        what = strprintf("device %s", name);
        if (!what)
                return oom(err);
        r = kjson_get_string(saved, "address", what, &address, err);
        if (r >= 0)
                r = kjson_get_string(saved, "driver", what, &driver, err);
        if (r >= 0)
                r = kjson_get_string_opt(saved, "sysfs-path", what, &sysfs_path, err);
        if (r >= 0)
                r = kjson_get_string(saved, "path", what, &path, err);
        if (r >= 0)
                r = kjson_get_u32(saved, "iommu-group", what, &group_number, err);
        if (r >= 0)
                r = kjson_get_bool(saved, "mdev", what, &is_mdev, err);
        if (r < 0)
                return r;
        if (group_number > INT32_MAX)
                return kjson_wrong("iommu-group", what, "an IOMMU group number", err);

        if (streq(path, vfio_backend_to_string(VFIO_BACKEND_IOMMUFD))) {
                backend = VFIO_BACKEND_IOMMUFD;
                r = kjson_get_u32(saved, "devid", what, &devid, err);
                if (r >= 0)
                        r = kjson_get_u32_opt(saved, "ioas-id", what, &ioas, err);
                if (r >= 0)
                        r = kjson_get_u32_opt(saved, "hwpt-id", what, &hwpt, err);
                if (r < 0)
                        return r;
                if (c->iommufd < 0)
                        return error_setf(err, -ENXIO, "%s is bound to the daemon's iommufd, which was not restored",
                                          what);
        } else if (streq(path, vfio_backend_to_string(VFIO_BACKEND_LEGACY))) {
                backend = VFIO_BACKEND_LEGACY;
                g = kernel_context_find_group(c, group_number);
                if (!g || !g->container)
                        return error_setf(err, -ENXIO, "IOMMU group %u of %s was not restored with the kernel objects",
                                          group_number, what);
        } else
                return kjson_wrong("path", what, "\"iommufd\" or \"legacy\"", err);

        r = kjson_get_string_opt(saved, "fd", what, &fd_name, err);
        if (r < 0)
                return r;
        if (!fd_name)
                return error_setf(err, -ENOENT, "%s had no open descriptor when its state was saved", what);
        fd = named_fds_get(fds, fd_name);
        if (fd < 0)
                return error_setf(err, -ENOENT, "the descriptor \"%s\" of %s is missing from the fd store", fd_name,
                                  what);

        r = kernel_device_new(c, backend, name, address, driver, sysfs_path, (int) group_number, is_mdev, &k);
        if (r < 0)
                return oom(err);
        d = &k->dev;
        k->devid = devid;
        k->attached_pt = ioas;
        k->hwpt_id = hwpt;

        /* Borrowed until everything checked out: on failure the descriptor stays in fds. */
        d->device_fd = fd;
        r = kernel_ioctl(c, fd, VFIO_DEVICE_GET_INFO, &info);
        if (r < 0) {
                d->device_fd = -EBADF;
                return error_setf(err, r, "VFIO_DEVICE_GET_INFO on the adopted descriptor \"%s\" of %s failed: %m",
                                  fd_name, what);
        }
        k->info_flags = info.flags;
        r = kernel_device_probe_migration(k);
        if (r < 0) {
                d->device_fd = -EBADF;
                return oom(err);
        }

        r = kernel_device_fd_name(d, &expected_fd);
        if (r < 0) {
                d->device_fd = -EBADF;
                return oom(err);
        }
        if (!streq(expected_fd, fd_name))
                log_debug("%s was saved under the descriptor name %s, expected %s.", what, fd_name, expected_fd);

        d->device_fd = take_fd(fds, fd_name);
        if (g)
                kernel_device_join_group(k, kernel_group_ref(g));

        log_debug("%s: adopted (%s backend, driver %s, %s).", name, vfio_backend_to_string(backend), driver,
                  d->migratable ? "migratable" : "not migratable");
        *ret = TAKE_PTR(d);
        return 0;
}
