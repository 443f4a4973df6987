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
 * a group holds its container, and the last holder of a group (its devices, the legacy address
 * space whose container it is in) releases both. Devices and address spaces hold a reference to
 * the context, so everything may be freed in any order.
 *
 * Every long-lived kernel object can be saved (its descriptor added to a NamedFds set under a
 * stable name, its facts to JSON) and adopted by a restarted daemon from the service manager's
 * file descriptor store, without being opened, bound or attached again:
 *
 *   context  {"iommufd": "k-iommufd",                        (only once /dev/iommu was opened)
 *             "next-container-id": 3,
 *             "containers": [{"id": 1, "fd": "k-container-1", "iommu-set": true,
 *                             "update-vaddr": true,
 *                             "groups": [{"number": 12, "fd": "k-group-12", "mdev": false}]}]}
 *   device   {"name": "0000:3b:00.1", "address": "0000:3b:00.1", "driver": "vfio-pci",
 *             "sysfs-path": "/sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.1",
 *             "fd": "k-device-0000_3b_00_1",        (null if the device had no descriptor)
 *             "path": "iommufd", "iommu-group": 12, "mdev": false,
 *             "devid": 5, "ioas-id": 2, "hwpt-id": 7}  (ioas-id/hwpt-id null when not attached)
 *         or {..., "path": "legacy", "iommu-group": 12, "mdev": false}
 *
 * Restoring happens in a new process in this order: kernel_context_restore(), then address
 * spaces (kernel-iommu.h) and devices in any order, then kernel_context_restore_finish().
 *
 * Not thread-safe: use one context from one thread (the event loop).
 */

#include <json.h>
#include <stdbool.h>
#include <stdint.h>

#include "error-message.h"
#include "named-fds.h"
#include "vfio-dev.h"

typedef struct KernelContext KernelContext;

typedef struct KernelContextOptions {
        const char *sysfs_root;  /* default "/sys"; tests point it at a fake tree */
        const char *dev_root;    /* default "/dev" */
        const char *proc_root;   /* default "/proc" */
        bool prefer_legacy;      /* use group/container even when iommufd and the VFIO cdev exist */
        /* Tests only: when set, every ioctl the kernel backend issues goes here instead of to
         * ioctl(2), with the same contract (-1 and errno on failure). Integer arguments
         * (VFIO_CHECK_EXTENSION, VFIO_SET_IOMMU) arrive cast to a pointer. */
        int (*ioctl)(int fd, unsigned long request, void *arg, void *userdata);
        void *ioctl_userdata;
} KernelContextOptions;

/*
 * Asked for each device of an IOMMU group before the legacy backend closes the daemon's
 * descriptors of those devices in order to move the group into another container (attaching a
 * device to a legacy address space may require it: see kernel-iommu.h). Return 0 to allow it, or
 * a negative errno with a message in err to refuse: -EBUSY when a VMM holds a duplicate of the
 * device fd, or a migration data fd is open (closing the device ends the session), or the
 * device must not be reset (closing the last descriptor of a vfio-pci device resets it).
 *
 * A copy of the device fd in the service manager's fd store keeps the device open as much as a
 * VMM does: the check should remove it from the store (FDSTOREREMOVE, name from
 * kernel_device_fd_name()) before allowing, and the new descriptor (VfioDev.device_fd changes)
 * be stored again afterwards. Without a check, moves are attempted; the kernel itself refuses
 * (VFIO_GROUP_UNSET_CONTAINER: EBUSY) while any other descriptor of the devices is open, and the
 * backend then reopens the devices where they were.
 */
typedef int (*KernelReopenCheck)(VfioDev *d, void *userdata, ErrorMessage *err);
void kernel_context_set_reopen_check(KernelContext *c, KernelReopenCheck check, void *userdata);

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
 * VFIO cdev (unless prefer_legacy), else through its group: a group the context has open already
 * (another device of it is open, or a legacy address space holds it) is reused where it is, a
 * group opened now gets a container of its own. The
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

/* The name of the device's descriptor in the fd store: "k-device-" and the kernel name with ':'
 * and '.' replaced by '_' ("k-device-0000_3b_00_1", "k-device-<mdev uuid>"). */
int kernel_device_fd_name(const VfioDev *d, char **ret);

/* ---- Saving and restoring (formats above) ---- */

/* The context's shared objects: the iommufd ("k-iommufd") and every container that holds one of
 * our groups ("k-container-<id>") with those groups ("k-group-<number>"). The descriptors are
 * added to fds borrowed (the set never closes them); they keep O_CLOEXEC. */
int kernel_context_save(KernelContext *c, json_object **ret, NamedFds *fds);
/*
 * In a new process, before any device or space exists: adopts the objects described by saved,
 * taking their descriptors out of fds (named_fds_take()) and setting O_CLOEXEC on them. Every
 * descriptor named must be present and the JSON well formed, else nothing is taken and the
 * error names what is wrong (-ENOENT missing descriptor, -EINVAL malformed, -EBUSY the context
 * already has kernel objects). A group whose status says CONTAINER_SET is expected (our
 * predecessor set it); one that the kernel says is in no container is refused. Records that
 * IOMMU_IOAS_CHANGE_PROCESS has not been done by this process yet.
 */
int kernel_context_restore(KernelContext *c, json_object *saved, NamedFds *fds, ErrorMessage *err);
/* After the devices and spaces were restored: releases the restored groups that none of them
 * claimed (closing them, and their containers when nothing else holds those). *ret_released, if
 * not NULL, receives the names of the descriptors closed, for removal from the fd store. */
int kernel_context_restore_finish(KernelContext *c, char ***ret_released);

/* A device: its descriptor (kernel_device_fd_name(), borrowed) and the facts above. */
int kernel_device_save(VfioDev *d, json_object **ret, NamedFds *fds);
/*
 * Adopts a device saved by kernel_device_save(): takes its descriptor out of fds (no open, no
 * bind, no attach: the descriptor is bound and attached already), re-reads VFIO_DEVICE_GET_INFO
 * and probes migration again (harmless ioctls). A legacy device needs its group restored by
 * kernel_context_restore(); an iommufd device needs the context's iommufd restored. On failure
 * nothing is taken.
 */
int kernel_device_restore(KernelContext *c, json_object *saved, NamedFds *fds, VfioDev **ret, ErrorMessage *err);
