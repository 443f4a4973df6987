/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <string.h>

#include "vfio-dev.h"
#include "vfiomig1.h"

const char *vfio_backend_to_string(VfioBackend b) {
        static const char *const table[_VFIO_BACKEND_MAX] = {
                [VFIO_BACKEND_IOMMUFD] = VFIOMIG_BACKEND_IOMMUFD,
                [VFIO_BACKEND_LEGACY] = VFIOMIG_BACKEND_LEGACY,
                [VFIO_BACKEND_SIM] = VFIOMIG_BACKEND_SIM,
        };
        return (int) b >= 0 && b < _VFIO_BACKEND_MAX ? table[b] : NULL;
}

const char *vfio_precopy_info_to_string(VfioPrecopyInfo v) {
        switch (v) {
        case VFIO_PRECOPY_INFO_V1:
                return "v1";
        case VFIO_PRECOPY_INFO_V2:
                return "v2";
        default:
                return "";
        }
}

int vfio_dev_init_common(VfioDev *d, const VfioDevOps *ops, VfioBackend backend, const char *name,
                         const char *address, const char *driver, const char *sysfs_path) {
        *d = (VfioDev) {
                .ops = ops,
                .backend = backend,
                .device_fd = -EBADF,
        };
        d->name = strdup(name);
        d->address = strdup(address);
        d->driver = strdup(driver);
        d->sysfs_path = sysfs_path ? strdup(sysfs_path) : NULL;
        if (!d->name || !d->address || !d->driver || (sysfs_path && !d->sysfs_path)) {
                vfio_dev_done_common(d);
                return -ENOMEM;
        }
        return 0;
}

void vfio_dev_done_common(VfioDev *d) {
        free(d->name);
        free(d->address);
        free(d->driver);
        free(d->sysfs_path);
        free(d->migratable_reason);
        d->name = d->address = d->driver = d->sysfs_path = d->migratable_reason = NULL;
        d->device_fd = safe_close(d->device_fd);
}

VfioDev *vfio_dev_free(VfioDev *d) {
        if (!d)
                return NULL;
        d->ops->destroy(d);
        return NULL;
}
