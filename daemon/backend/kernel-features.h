/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * What the running kernel offers for VFIO, iommufd and io_uring, probed once at start and
 * reported as Manager.KernelFeatures. Probing opens /dev/iommu and /dev/vfio/vfio and issues only
 * harmless ioctls; it needs no VFIO device.
 */

#include <stdbool.h>

typedef struct KernelFeatures {
        bool iommufd;             /* /dev/iommu opens */
        bool vfio_cdev;           /* VFIO device cdevs exist (a "vfio-dev" char major, /dev/vfio/devices) */
        bool vfio_container;      /* /dev/vfio/vfio opens and speaks VFIO API version 0 */
        bool ioas_map_file;       /* IOMMU_IOAS_MAP_FILE (6.13) */
        bool ioas_change_process; /* IOMMU_IOAS_CHANGE_PROCESS (6.13) */
        bool type1_update_vaddr;  /* legacy type1 VFIO_UPDATE_VADDR / VFIO_UNMAP_ALL (5.12) */
        bool io_uring;            /* a ring can be set up (not disabled by sysctl or seccomp) */
        char release[65];         /* uname -r */
} KernelFeatures;

/* NULL roots mean "/dev" and "/sys". A missing or inaccessible node makes its feature false; only
 * failures of the probe itself (uname, memory) are errors. */
int kernel_features_probe(const char *dev_root, const char *sysfs_root, const char *proc_root, KernelFeatures *ret);

/* The VFIOMIG_FEATURE_* names of the features present, as a NULL-terminated list. */
int kernel_features_to_strv(const KernelFeatures *f, char ***ret);
