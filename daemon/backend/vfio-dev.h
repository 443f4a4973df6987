/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * One migratable (or not) device, reached through a small operations table. Two backends
 * implement it: kernel (real VFIO ioctls, iommufd + cdev or the legacy container) and sim (a
 * faithful simulation inside the daemon). Nothing above this header knows which one it has.
 *
 * The operations mirror the kernel uAPI one to one, including its sharp edges: set_state()
 * is a single MIG_DEVICE_STATE SET that walks the whole path itself and may stop anywhere on
 * failure; precopy_info() is issued on the data fd; data_read() returns -ENOMSG at the
 * temporary end of pre-copy and 0 at the end of stop-copy. Validation and recovery live above
 * (core/transition.c), never here.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "error-message.h"
#include "mig-state.h"

typedef enum VfioBackend {
        VFIO_BACKEND_IOMMUFD,
        VFIO_BACKEND_LEGACY,
        VFIO_BACKEND_SIM,
        _VFIO_BACKEND_MAX,
        _VFIO_BACKEND_INVALID = -EINVAL,
} VfioBackend;

const char *vfio_backend_to_string(VfioBackend b);

typedef struct VfioDev VfioDev;

/* Which VFIO_MIG_GET_PRECOPY_INFO semantics a device speaks: none without PRE_COPY; v2 when it
 * accepted VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 (Linux 7.2: initial bytes may start over,
 * VFIO_PRECOPY_INFO_REINIT), else v1 (initial bytes only ever shrink). */
typedef enum VfioPrecopyInfo {
        VFIO_PRECOPY_INFO_NONE,
        VFIO_PRECOPY_INFO_V1,
        VFIO_PRECOPY_INFO_V2,
} VfioPrecopyInfo;

const char *vfio_precopy_info_to_string(VfioPrecopyInfo v);

typedef struct VfioDevOps {
        /* VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE GET. */
        int (*get_state)(VfioDev *d, MigState *ret_state);
        /* VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE SET to the final target. *ret_data_fd receives the
         * new data fd when the final arc opened a session, else -EBADF. On failure the device may
         * be in the original state, any intermediate state or ERROR: ask get_state(). */
        int (*set_state)(VfioDev *d, MigState target, int *ret_data_fd);
        /* VFIO_MIG_GET_PRECOPY_INFO on data_fd; -EINVAL outside PRE_COPY(_P2P). *ret_flags (may
         * be NULL) gets VFIO_PRECOPY_INFO_REINIT only on a device that took PRECOPY_INFOv2; a
         * v1 device's flags are never passed up (v1 drivers echo whatever the caller sent). */
        int (*precopy_info)(VfioDev *d, int data_fd, uint64_t *ret_initial, uint64_t *ret_dirty,
                            uint32_t *ret_flags);
        /* VFIO_DEVICE_FEATURE_MIG_DATA_SIZE: bytes a stop-copy would still produce. */
        int (*stop_copy_size)(VfioDev *d, uint64_t *ret_size);
        /* read(2)/write(2) on data_fd: byte count, or a negative errno. */
        ssize_t (*data_read)(VfioDev *d, int data_fd, void *buf, size_t n);
        ssize_t (*data_write)(VfioDev *d, int data_fd, const void *buf, size_t n);
        /* VFIO_DEVICE_RESET: back to RUNNING; any open session ends. */
        int (*reset)(VfioDev *d);
        void (*destroy)(VfioDev *d);
} VfioDevOps;

struct VfioDev {
        const VfioDevOps *ops;
        VfioBackend backend;
        char *name;      /* kernel device name: PCI address or mdev UUID; for sim the NAME in sim:NAME */
        char *address;   /* canonical address: "0000:3b:00.1", the mdev UUID, or "sim:NAME" */
        char *driver;    /* bound driver: "vfio-pci", "mlx5_vfio_pci", "mtty", "sim" */
        char *sysfs_path;/* resolved /sys/devices/... path; NULL for sim */
        bool migratable;
        char *migratable_reason;  /* why not, when !migratable; else NULL */
        uint32_t migration_flags; /* VFIO_MIGRATION_*; 0 when not migratable */
        int device_fd;            /* the VFIO device fd; for sim a small memfd standing for it */
        VfioPrecopyInfo precopy_info_version; /* set by the backend when it opens the device */
};

/* Fills the common fields; used by backends only. */
int vfio_dev_init_common(VfioDev *d, const VfioDevOps *ops, VfioBackend backend, const char *name,
                         const char *address, const char *driver, const char *sysfs_path);
void vfio_dev_done_common(VfioDev *d);

VfioDev *vfio_dev_free(VfioDev *d);
DEFINE_TRIVIAL_CLEANUP_FUNC(VfioDev *, vfio_dev_free);

static inline int vfio_dev_get_state(VfioDev *d, MigState *ret_state) {
        return d->ops->get_state(d, ret_state);
}
static inline int vfio_dev_set_state(VfioDev *d, MigState target, int *ret_data_fd) {
        return d->ops->set_state(d, target, ret_data_fd);
}
static inline int vfio_dev_precopy_info(VfioDev *d, int data_fd, uint64_t *ret_initial, uint64_t *ret_dirty) {
        return d->ops->precopy_info(d, data_fd, ret_initial, ret_dirty, NULL);
}
static inline int vfio_dev_precopy_info_flags(VfioDev *d, int data_fd, uint64_t *ret_initial, uint64_t *ret_dirty,
                                              uint32_t *ret_flags) {
        return d->ops->precopy_info(d, data_fd, ret_initial, ret_dirty, ret_flags);
}
static inline int vfio_dev_stop_copy_size(VfioDev *d, uint64_t *ret_size) {
        return d->ops->stop_copy_size(d, ret_size);
}
static inline ssize_t vfio_dev_data_read(VfioDev *d, int data_fd, void *buf, size_t n) {
        return d->ops->data_read(d, data_fd, buf, n);
}
static inline ssize_t vfio_dev_data_write(VfioDev *d, int data_fd, const void *buf, size_t n) {
        return d->ops->data_write(d, data_fd, buf, n);
}
static inline int vfio_dev_reset(VfioDev *d) {
        return d->ops->reset(d);
}
