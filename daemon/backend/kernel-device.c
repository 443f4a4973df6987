/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <assert.h>
#include <ctype.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "kernel-device.h"
#include "log.h"
#include "vfio-uapi.h"

/* "ffffffff:ff:1f.7" and an mdev UUID both fit. */
#define DEVICE_NAME_MAX 40
#define UUID_STRING_LEN 36

typedef struct KernelContainer KernelContainer;
typedef struct KernelGroup KernelGroup;

/* A type1 container (/dev/vfio/vfio). Groups hold it; Step 3's address spaces will too. */
struct KernelContainer {
        unsigned n_ref;
        KernelContext *context;
        KernelContainer *next;
        int fd;
        bool iommu_set;
        bool update_vaddr;
};

/* An open VFIO group (/dev/vfio/<number>), shared by every device of the group we open. */
struct KernelGroup {
        unsigned n_ref;
        KernelContext *context;
        KernelGroup *next;
        unsigned number;
        int fd;
        KernelContainer *container;
};

struct KernelContext {
        unsigned n_ref;
        char *sysfs_root;
        char *dev_root;
        bool prefer_legacy;
        int iommufd;
        /* Weak lists: members hold a reference on the context, never the other way round. */
        KernelGroup *groups;
        KernelContainer *containers;
};

typedef struct KernelDevice {
        VfioDev dev; /* first, so that the operations can get from VfioDev back to KernelDevice */
        KernelContext *context;
        KernelGroup *group; /* legacy path only */
        int iommu_group;
        uint32_t devid;     /* iommufd path only */
        uint32_t info_flags;
} KernelDevice;

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

static int hex_value(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -EINVAL;
}

/* Between min and max hex digits at *p; advances *p past them. */
static bool parse_hex_field(const char **p, size_t min, size_t max, unsigned *ret) {
        unsigned v = 0;
        size_t n = 0;

        while (n < max && hex_value((*p)[n]) >= 0) {
                v = v * 16 + (unsigned) hex_value((*p)[n]);
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
                } else if (hex_value(s[i]) < 0)
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

        /* Every group and container holds a reference, so none can be left at this point. */
        assert(!c->groups && !c->containers);
        c->iommufd = safe_close(c->iommufd);
        free(c->sysfs_root);
        free(c->dev_root);
        free(c);
        return NULL;
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

static KernelContainer *kernel_container_ref(KernelContainer *k) {
        assert(k->n_ref > 0);
        k->n_ref++;
        return k;
}

static KernelContainer *kernel_container_unref(KernelContainer *k) {
        if (!k)
                return NULL;
        assert(k->n_ref > 0);
        if (--k->n_ref > 0)
                return NULL;

        LIST_REMOVE_ONE(k->context->containers, k);
        k->fd = safe_close(k->fd);
        kernel_context_unref(k->context);
        free(k);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(KernelContainer *, kernel_container_unref);

static int kernel_container_new(KernelContext *c, KernelContainer **ret, ErrorMessage *err) {
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

        r = ioctl(fd, VFIO_GET_API_VERSION);
        if (r < 0)
                return error_setf(err, -errno, "VFIO_GET_API_VERSION on %s failed: %m", path);
        if (r != VFIO_API_VERSION)
                return error_setf(err, -EOPNOTSUPP, "%s speaks VFIO API version %d, expected %d",
                                  path, r, VFIO_API_VERSION);

        r = ioctl(fd, VFIO_CHECK_EXTENSION, (unsigned long) VFIO_TYPE1v2_IOMMU);
        if (r < 0)
                return error_setf(err, -errno, "VFIO_CHECK_EXTENSION(VFIO_TYPE1v2_IOMMU) on %s failed: %m", path);
        if (r != 1)
                return error_setf(err, -EOPNOTSUPP,
                                  "The VFIO container %s does not offer the type1v2 IOMMU: "
                                  "is the vfio_iommu_type1 module loaded?", path);

        k = calloc(1, sizeof *k);
        if (!k)
                return oom(err);
        *k = (KernelContainer) {
                .n_ref = 1,
                .context = kernel_context_ref(c),
                .next = c->containers,
                .fd = TAKE_FD(fd),
        };
        c->containers = k;

        *ret = k;
        return 0;
}

static KernelGroup *kernel_group_ref(KernelGroup *g) {
        assert(g->n_ref > 0);
        g->n_ref++;
        return g;
}

static KernelGroup *kernel_group_unref(KernelGroup *g) {
        if (!g)
                return NULL;
        assert(g->n_ref > 0);
        if (--g->n_ref > 0)
                return NULL;

        LIST_REMOVE_ONE(g->context->groups, g);
        /* Closing the group detaches it from the container; only then may the container go. */
        g->fd = safe_close(g->fd);
        kernel_container_unref(g->container);
        kernel_context_unref(g->context);
        free(g);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(KernelGroup *, kernel_group_unref);

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

static int kernel_group_attach(KernelGroup *g, KernelContainer *k, ErrorMessage *err) {
        int r;

        if (ioctl(g->fd, VFIO_GROUP_SET_CONTAINER, &k->fd) < 0)
                return error_setf(err, -errno, "Cannot attach IOMMU group %u to a VFIO container: %m", g->number);
        g->container = kernel_container_ref(k);

        /* The IOMMU type can only be chosen once a group is attached, and only once. */
        if (!k->iommu_set) {
                if (ioctl(k->fd, VFIO_SET_IOMMU, (unsigned long) VFIO_TYPE1v2_IOMMU) < 0)
                        return error_setf(err, -errno, "VFIO_SET_IOMMU(VFIO_TYPE1v2_IOMMU) failed for IOMMU group %u: %m",
                                          g->number);
                k->iommu_set = true;
        }

        /* Asked again after every attach: UPDATE_VADDR disappears once an mdev group joins. */
        r = ioctl(k->fd, VFIO_CHECK_EXTENSION, (unsigned long) VFIO_UPDATE_VADDR);
        if (r < 0)
                log_debug_errno(errno, "VFIO_CHECK_EXTENSION(VFIO_UPDATE_VADDR) failed, assuming unsupported: %m");
        k->update_vaddr = r == 1;

        log_debug("IOMMU group %u attached to a type1v2 container (UPDATE_VADDR %s).", g->number,
                  k->update_vaddr ? "available" : "unavailable");
        return 0;
}

static int kernel_context_acquire_group(KernelContext *c, const KernelDeviceLocation *l, KernelGroup **ret,
                                        ErrorMessage *err) {
        _cleanup_(kernel_group_unrefp) KernelGroup *g = NULL;
        _cleanup_(kernel_container_unrefp) KernelContainer *k = NULL;
        _cleanup_free_ char *path = NULL;
        _cleanup_close_ int fd = -EBADF;
        struct vfio_group_status status = { .argsz = sizeof status };
        unsigned number = (unsigned) l->iommu_group;
        int r;

        for (KernelGroup *i = c->groups; i; i = i->next)
                if (i->number == number) {
                        *ret = kernel_group_ref(i);
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

        if (ioctl(fd, VFIO_GROUP_GET_STATUS, &status) < 0)
                return error_setf(err, -errno, "VFIO_GROUP_GET_STATUS on %s failed: %m", path);
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

        g = calloc(1, sizeof *g);
        if (!g)
                return oom(err);
        *g = (KernelGroup) {
                .n_ref = 1,
                .context = kernel_context_ref(c),
                .number = number,
                .fd = TAKE_FD(fd),
        };

        /* A container of its own for now; address spaces will choose the container later. */
        r = kernel_container_new(c, &k, err);
        if (r < 0)
                return r;
        r = kernel_group_attach(g, k, err);
        if (r < 0)
                return r;

        g->next = c->groups;
        c->groups = g;
        *ret = TAKE_PTR(g);
        return 0;
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

/* VFIO_DEVICE_FEATURE with a payload of at most 16 bytes, copied back only on success. */
static int device_feature(int fd, uint32_t flags, void *payload, size_t size) {
        union {
                struct vfio_device_feature header;
                uint64_t align;
                uint8_t raw[sizeof(struct vfio_device_feature) + 16];
        } buf = {};

        assert(size <= sizeof buf.raw - sizeof buf.header);

        buf.header.argsz = (uint32_t) (sizeof buf.header + size);
        buf.header.flags = flags;
        memcpy(buf.raw + sizeof buf.header, payload, size);
        if (ioctl(fd, VFIO_DEVICE_FEATURE, &buf) < 0)
                return -errno;
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
        int iommufd;

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
        if (ioctl(fd, VFIO_DEVICE_BIND_IOMMUFD, &bind) < 0)
                return error_setf(err, -errno, "Cannot bind %s (%s) to iommufd: %m", l->name, path);

        log_debug("%s: opened %s and bound it to iommufd as device %u.", l->name, path, bind.out_devid);
        k->devid = bind.out_devid;
        k->dev.device_fd = TAKE_FD(fd);
        return 0;
}

static int kernel_device_open_legacy(KernelDevice *k, const KernelDeviceLocation *l, ErrorMessage *err) {
        int fd, r;

        r = kernel_context_acquire_group(k->context, l, &k->group, err);
        if (r < 0)
                return r;

        /* Device fds from the group come with O_CLOEXEC set; we keep it so. */
        fd = ioctl(k->group->fd, VFIO_GROUP_GET_DEVICE_FD, l->name);
        if (fd < 0)
                return error_setf(err, -errno, "Cannot get a device fd for %s from IOMMU group %u: %m",
                                  l->name, k->group->number);

        log_debug("%s: opened through IOMMU group %u.", l->name, k->group->number);
        k->dev.device_fd = fd;
        return 0;
}

static int kernel_device_probe_migration(KernelDevice *k) {
        struct vfio_device_feature_migration mig = {};
        char *reason;
        int r;

        r = device_feature(k->dev.device_fd, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIGRATION, &mig, sizeof mig);
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
                log_debug("%s: migration flags 0x%x.", k->dev.name, k->dev.migration_flags);
                return 0;
        }
        if (!reason)
                return -ENOMEM;

        log_debug("%s: not migratable: %s", k->dev.name, reason);
        k->dev.migratable = false;
        k->dev.migration_flags = 0;
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

        k = calloc(1, sizeof *k);
        if (!k)
                return oom(err);
        r = vfio_dev_init_common(&k->dev, &kernel_device_ops, use_iommufd ? VFIO_BACKEND_IOMMUFD : VFIO_BACKEND_LEGACY,
                                 l.name, l.name, l.driver, l.sysfs_path);
        if (r < 0) {
                free(k);
                return oom(err);
        }
        d = &k->dev;
        k->context = kernel_context_ref(c);
        k->iommu_group = l.iommu_group;

        if (use_iommufd)
                r = kernel_device_open_iommufd(k, &l, err);
        else
                r = kernel_device_open_legacy(k, &l, err);
        if (r < 0)
                return r;

        if (ioctl(d->device_fd, VFIO_DEVICE_GET_INFO, &info) < 0)
                return error_setf(err, -errno, "VFIO_DEVICE_GET_INFO on %s failed: %m", l.name);
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
        return kernel_device(d)->group->container->fd;
}

int kernel_device_get_type1_update_vaddr(VfioDev *d) {
        if (!kernel_device_owns(d) || d->backend != VFIO_BACKEND_LEGACY)
                return -EOPNOTSUPP;
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

/* ---- Operations ---- */

static int kernel_device_get_state(VfioDev *d, MigState *ret_state) {
        struct vfio_device_feature_mig_state s = { .data_fd = -1 };
        int r;

        r = device_feature(d->device_fd, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &s, sizeof s);
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

        r = device_feature(d->device_fd, VFIO_DEVICE_FEATURE_SET | VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, &s, sizeof s);
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

static int kernel_device_precopy_info(VfioDev *d, int data_fd, uint64_t *ret_initial, uint64_t *ret_dirty) {
        struct vfio_precopy_info info = { .argsz = sizeof info };

        if (ioctl(data_fd, VFIO_MIG_GET_PRECOPY_INFO, &info) < 0)
                return log_debug_errno(feature_errno(-errno), "%s: VFIO_MIG_GET_PRECOPY_INFO failed: %m", d->name);

        if (ret_initial)
                *ret_initial = info.initial_bytes;
        if (ret_dirty)
                *ret_dirty = info.dirty_bytes;
        return 0;
}

static int kernel_device_stop_copy_size(VfioDev *d, uint64_t *ret_size) {
        struct vfio_device_feature_mig_data_size size = {};
        int r;

        /* MIG_DATA_SIZE arrived in 6.2; older kernels answer ENOTTY. */
        r = device_feature(d->device_fd, VFIO_DEVICE_FEATURE_GET | VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, &size, sizeof size);
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
        if (!(kernel_device(d)->info_flags & VFIO_DEVICE_FLAGS_RESET))
                return log_debug_errno(SYNTHETIC_ERRNO(EOPNOTSUPP),
                                       "%s: driver '%s' does not offer VFIO_DEVICE_RESET for this device.",
                                       d->name, d->driver);
        if (ioctl(d->device_fd, VFIO_DEVICE_RESET) < 0)
                return log_debug_errno(errno, "%s: VFIO_DEVICE_RESET failed: %m", d->name);

        log_debug("%s: reset.", d->name);
        return 0;
}

static void kernel_device_destroy(VfioDev *d) {
        KernelDevice *k = kernel_device(d);

        /* The device fd goes first: closing it unbinds the device from iommufd or releases it from
         * its group, and the group may be closed only after its last device. */
        d->device_fd = safe_close(d->device_fd);
        kernel_group_unref(k->group);
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
