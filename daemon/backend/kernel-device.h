/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The kernel backend of the device operations table: real VFIO devices, reached either through a
 * VFIO cdev bound to iommufd (/dev/vfio/devices/vfioN + /dev/iommu) or through the legacy
 * group/container API (/dev/vfio/<group> + /dev/vfio/vfio).
 *
 * A KernelContext holds what devices share: the iommufd, and the registry of open VFIO groups
 * and containers. The kernel lets a group be opened only once at a time system-wide and several
 * devices may sit in one group, so groups are looked up in the registry and reference counted;
 * a group holds its container, and the last device to close releases both. Devices, groups and
 * containers each hold a reference to the context, so they may be freed in any order.
 *
 * Not thread-safe: use one context from one thread (the event loop).
 */

#include <stdbool.h>
#include <stdint.h>

#include "error-message.h"
#include "vfio-dev.h"

typedef struct KernelContext KernelContext;

typedef struct KernelContextOptions {
        const char *sysfs_root;  /* default "/sys"; tests point it at a fake tree */
        const char *dev_root;    /* default "/dev" */
        bool prefer_legacy;      /* use group/container even when iommufd and the VFIO cdev exist */
} KernelContextOptions;

/* opts may be NULL for the defaults. Opens nothing: device nodes are opened on first use. */
int kernel_context_new(const KernelContextOptions *opts, KernelContext **ret);
KernelContext *kernel_context_ref(KernelContext *c);
KernelContext *kernel_context_unref(KernelContext *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(KernelContext *, kernel_context_unref);

const char *kernel_context_get_sysfs_root(const KernelContext *c);
const char *kernel_context_get_dev_root(const KernelContext *c);

/* The iommufd all devices of this context bind to, opened on first use and owned by the context
 * (do not close it). Returns the fd or a negative errno. */
int kernel_context_get_iommufd(KernelContext *c, ErrorMessage *err);

typedef struct KernelDeviceLocation {
        char *name;         /* kernel device name: "0000:3b:00.1" or the mdev UUID, lower case */
        char *sysfs_path;   /* resolved: <sysfs_root>/devices/... */
        char *driver;       /* bound driver, e.g. "vfio-pci", "mlx5_vfio_pci", "mtty" */
        int iommu_group;
        bool is_mdev;
        char *cdev_name;    /* "vfio3" when the device has a VFIO cdev, else NULL */
} KernelDeviceLocation;

/*
 * Resolves an address without opening anything. Accepted forms: a PCI address ("0000:3b:00.1",
 * or "3b:00.1" for domain 0000; hex digits in either case), an mdev UUID, or an absolute sysfs
 * path (/sys/bus/pci/devices/..., /sys/devices/..., /sys/bus/mdev/devices/UUID) that resolves
 * inside <sysfs_root>/devices. Every form of one device yields the same location.
 *
 * Errors: -EINVAL malformed address or not a PCI/mdev device; -ENODEV no such device;
 * -ENXIO not bound to any driver, or no IOMMU group.
 */
int kernel_device_locate(KernelContext *c, const char *address, KernelDeviceLocation *ret, ErrorMessage *err);
void kernel_device_location_done(KernelDeviceLocation *l);
/* Whether the bound driver drives the device through VFIO (vfio-pci, a variant driver, an mdev
 * driver), judged from sysfs alone. */
bool kernel_device_location_is_vfio(const KernelDeviceLocation *l);

/*
 * Opens the device at address: through iommufd when the kernel offers it and the device has a
 * VFIO cdev (unless prefer_legacy), else through its group and a container of its own. The
 * device's migration support is probed; a device without it still opens, with migratable false
 * and the reason in migratable_reason.
 *
 * Errors, besides those of kernel_device_locate(): -ENXIO bound to a driver that is not a VFIO
 * driver; -EBUSY group or device already in use, or group not viable; -ENOENT device node
 * missing; -EOPNOTSUPP the kernel lacks what the chosen path needs; other kernel errnos.
 */
int kernel_device_open(KernelContext *c, const char *address, VfioDev **ret, ErrorMessage *err);

/* True if d was opened by kernel_device_open(). The getters below return -EOPNOTSUPP for other
 * devices and for devices on the other kernel path. */
bool kernel_device_owns(const VfioDev *d);
/* iommufd path: the device id VFIO_DEVICE_BIND_IOMMUFD returned, for ATTACH_IOMMUFD_PT. */
int kernel_device_get_iommufd_devid(VfioDev *d, uint32_t *ret_devid);
/* Legacy path: the container the device's group is attached to (owned by the context). */
int kernel_device_get_container_fd(VfioDev *d);
/* Legacy path: 1 if the container answered CHECK_EXTENSION(VFIO_UPDATE_VADDR) after
 * VFIO_SET_IOMMU and the last group attach, else 0. Containers with an mdev group answer 0. */
int kernel_device_get_type1_update_vaddr(VfioDev *d);
/* Both paths: the device's IOMMU group number. */
int kernel_device_get_iommu_group(VfioDev *d);
/* Both paths: the flags of VFIO_DEVICE_GET_INFO (VFIO_DEVICE_FLAGS_*). */
int kernel_device_get_info_flags(VfioDev *d, uint32_t *ret_flags);
