/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Our own definitions of the VFIO ABI we use, so the build does not depend on the build host's
 * <linux/vfio.h> (Debian 12 ships 6.1 headers: no PRE_COPY, no MIG_DATA_SIZE, no cdev/iommufd
 * binding). Names follow the kernel's uapi header so the code reads like the documentation;
 * never include <linux/vfio.h> alongside this file. Sizes and offsets are checked below and
 * cross-checked against the host's header, where it has the definition, by test-uapi-abi.
 *
 * All ioctls are _IO(';', 100 + n): VFIO carries no size in the request number and extends
 * its structures through the leading argsz field instead.
 */

#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>

typedef uint64_t vfio_aligned_u64 __attribute__((aligned(8)));

#define VFIO_API_VERSION 0
#define VFIO_TYPE (';')
#define VFIO_BASE 100

/* ---- Extensions (VFIO_CHECK_EXTENSION on the container) ---- */
#define VFIO_TYPE1_IOMMU 1
#define VFIO_SPAPR_TCE_IOMMU 2
#define VFIO_TYPE1v2_IOMMU 3
#define VFIO_DMA_CC_IOMMU 4
#define VFIO_EEH 5
#define VFIO_SPAPR_TCE_v2_IOMMU 7
#define VFIO_NOIOMMU_IOMMU 8
#define VFIO_UNMAP_ALL 9
/* Reported as 1 only after VFIO_SET_IOMMU, and only while no emulated (mdev) group is attached. */
#define VFIO_UPDATE_VADDR 10

/* ---- Container, group and device ioctls ---- */
#define VFIO_GET_API_VERSION _IO(VFIO_TYPE, VFIO_BASE + 0)
#define VFIO_CHECK_EXTENSION _IO(VFIO_TYPE, VFIO_BASE + 1)
#define VFIO_SET_IOMMU _IO(VFIO_TYPE, VFIO_BASE + 2)
#define VFIO_GROUP_GET_STATUS _IO(VFIO_TYPE, VFIO_BASE + 3)
#define VFIO_GROUP_SET_CONTAINER _IO(VFIO_TYPE, VFIO_BASE + 4)
#define VFIO_GROUP_UNSET_CONTAINER _IO(VFIO_TYPE, VFIO_BASE + 5)
#define VFIO_GROUP_GET_DEVICE_FD _IO(VFIO_TYPE, VFIO_BASE + 6)
#define VFIO_DEVICE_GET_INFO _IO(VFIO_TYPE, VFIO_BASE + 7)
#define VFIO_DEVICE_GET_REGION_INFO _IO(VFIO_TYPE, VFIO_BASE + 8)
#define VFIO_DEVICE_RESET _IO(VFIO_TYPE, VFIO_BASE + 11)
#define VFIO_IOMMU_GET_INFO _IO(VFIO_TYPE, VFIO_BASE + 12)
#define VFIO_IOMMU_MAP_DMA _IO(VFIO_TYPE, VFIO_BASE + 13)
#define VFIO_IOMMU_UNMAP_DMA _IO(VFIO_TYPE, VFIO_BASE + 14)
#define VFIO_DEVICE_FEATURE _IO(VFIO_TYPE, VFIO_BASE + 17)
#define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 19)
#define VFIO_DEVICE_DETACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 20)
/* Issued on the migration data_fd, not on the device fd. */
#define VFIO_MIG_GET_PRECOPY_INFO _IO(VFIO_TYPE, VFIO_BASE + 21)

struct vfio_info_cap_header {
        uint16_t id;
        uint16_t version;
        uint32_t next;
};

struct vfio_group_status {
        uint32_t argsz;
        uint32_t flags;
};
#define VFIO_GROUP_FLAGS_VIABLE (1u << 0)
#define VFIO_GROUP_FLAGS_CONTAINER_SET (1u << 1)

struct vfio_device_info {
        uint32_t argsz;
        uint32_t flags;
        uint32_t num_regions;
        uint32_t num_irqs;
        uint32_t cap_offset;
};
#define VFIO_DEVICE_FLAGS_RESET (1u << 0)
#define VFIO_DEVICE_FLAGS_PCI (1u << 1)
#define VFIO_DEVICE_FLAGS_CAPS (1u << 7)

struct vfio_region_info {
        uint32_t argsz;
        uint32_t flags;
        uint32_t index;
        uint32_t cap_offset;
        uint64_t size;
        uint64_t offset;
};
#define VFIO_REGION_INFO_FLAG_READ (1u << 0)
#define VFIO_REGION_INFO_FLAG_WRITE (1u << 1)
#define VFIO_REGION_INFO_FLAG_MMAP (1u << 2)
#define VFIO_PCI_CONFIG_REGION_INDEX 7

/* ---- Type1 IOMMU (legacy container) ---- */
struct vfio_iommu_type1_info {
        uint32_t argsz;
        uint32_t flags;
        uint64_t iova_pgsizes;
        uint32_t cap_offset;
        uint32_t pad; /* implicit in kernels before 6.6, explicit since; the layout is the same */
};
#define VFIO_IOMMU_INFO_PGSIZES (1u << 0)
#define VFIO_IOMMU_INFO_CAPS (1u << 1)

struct vfio_iova_range {
        uint64_t start;
        uint64_t end;
};

#define VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE 1
struct vfio_iommu_type1_info_cap_iova_range {
        struct vfio_info_cap_header header;
        uint32_t nr_iovas;
        uint32_t reserved;
        struct vfio_iova_range iova_ranges[];
};

#define VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL 3
struct vfio_iommu_type1_info_dma_avail {
        struct vfio_info_cap_header header;
        uint32_t avail;
};

struct vfio_iommu_type1_dma_map {
        uint32_t argsz;
        uint32_t flags;
        uint64_t vaddr;
        uint64_t iova;
        uint64_t size;
};
#define VFIO_DMA_MAP_FLAG_READ (1u << 0)
#define VFIO_DMA_MAP_FLAG_WRITE (1u << 1)
/* Re-registers the host address of an invalidated mapping; iova and size must match it exactly. */
#define VFIO_DMA_MAP_FLAG_VADDR (1u << 2)

struct vfio_iommu_type1_dma_unmap {
        uint32_t argsz;
        uint32_t flags;
        uint64_t iova;
        uint64_t size;
        /* uint8_t data[] follows for GET_DIRTY_BITMAP; we never use it */
};
#define VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP (1u << 0)
#define VFIO_DMA_UNMAP_FLAG_ALL (1u << 1)
/* Invalidates the host address only: pages stay pinned and device DMA continues. */
#define VFIO_DMA_UNMAP_FLAG_VADDR (1u << 2)

/* ---- VFIO_DEVICE_FEATURE ---- */
struct vfio_device_feature {
        uint32_t argsz;
        uint32_t flags;
        uint8_t data[];
};
#define VFIO_DEVICE_FEATURE_MASK 0xffffu
#define VFIO_DEVICE_FEATURE_GET (1u << 16)
#define VFIO_DEVICE_FEATURE_SET (1u << 17)
#define VFIO_DEVICE_FEATURE_PROBE (1u << 18)

#define VFIO_DEVICE_FEATURE_PCI_VF_TOKEN 0
#define VFIO_DEVICE_FEATURE_MIGRATION 1
#define VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE 2
#define VFIO_DEVICE_FEATURE_DMA_LOGGING_START 6
#define VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP 7
#define VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT 8
#define VFIO_DEVICE_FEATURE_MIG_DATA_SIZE 9
/* Linux 7.2: a SET without payload opts the open device in to PRECOPY_INFO v2, where
 * vfio_precopy_info.flags is an output (VFIO_PRECOPY_INFO_REINIT). The core refuses it with
 * EINVAL for a device without PRE_COPY; older kernels hand it to the driver (ENOTTY), or answer
 * EINVAL themselves for a driver without device features (mtty, before the core said ENOTTY).
 * The opt-in lasts until the device's last fd closes. */
#define VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 12

struct vfio_device_feature_migration {
        vfio_aligned_u64 flags;
};
#define VFIO_MIGRATION_STOP_COPY (1u << 0)
#define VFIO_MIGRATION_P2P (1u << 1)
#define VFIO_MIGRATION_PRE_COPY (1u << 2)

struct vfio_device_feature_mig_state {
        uint32_t device_state; /* enum vfio_device_mig_state */
        int32_t data_fd;
};

enum vfio_device_mig_state {
        VFIO_DEVICE_STATE_ERROR = 0,
        VFIO_DEVICE_STATE_STOP = 1,
        VFIO_DEVICE_STATE_RUNNING = 2,
        VFIO_DEVICE_STATE_STOP_COPY = 3,
        VFIO_DEVICE_STATE_RESUMING = 4,
        VFIO_DEVICE_STATE_RUNNING_P2P = 5,
        VFIO_DEVICE_STATE_PRE_COPY = 6,
        VFIO_DEVICE_STATE_PRE_COPY_P2P = 7,
        VFIO_DEVICE_STATE_NR,
};

struct vfio_precopy_info {
        uint32_t argsz;
        uint32_t flags; /* v2 only: an output; under v1 drivers echo what was passed in */
#define VFIO_PRECOPY_INFO_REINIT (1u << 0) /* new initial data: initial_bytes starts over, dirty_bytes reset */
        vfio_aligned_u64 initial_bytes;
        vfio_aligned_u64 dirty_bytes;
};

struct vfio_device_feature_mig_data_size {
        vfio_aligned_u64 stop_copy_length;
};

struct vfio_device_feature_dma_logging_range {
        vfio_aligned_u64 iova;
        vfio_aligned_u64 length;
};

struct vfio_device_feature_dma_logging_control {
        vfio_aligned_u64 page_size;
        uint32_t num_ranges;
        uint32_t __reserved;
        vfio_aligned_u64 ranges; /* user pointer to struct vfio_device_feature_dma_logging_range[] */
};

struct vfio_device_feature_dma_logging_report {
        vfio_aligned_u64 iova;
        vfio_aligned_u64 length;
        vfio_aligned_u64 page_size;
        vfio_aligned_u64 bitmap; /* user pointer; the kernel only sets bits */
};

/* ---- VFIO cdev binding to iommufd (6.6+) ---- */
struct vfio_device_bind_iommufd {
        uint32_t argsz;
        uint32_t flags;
        int32_t iommufd;
        uint32_t out_devid;
};

struct vfio_device_attach_iommufd_pt {
        uint32_t argsz;
        uint32_t flags;
        uint32_t pt_id; /* in: IOAS or HWPT id; out: the HWPT actually attached */
};

struct vfio_device_detach_iommufd_pt {
        uint32_t argsz;
        uint32_t flags;
};

/* ---- Layout checks: values from the kernel's include/uapi/linux/vfio.h ---- */
#define VFIO_ASSERT_SIZE(type, size) _Static_assert(sizeof(type) == (size), "size of " #type)
#define VFIO_ASSERT_OFFSET(type, field, off) \
        _Static_assert(offsetof(type, field) == (off), "offset of " #type "." #field)

VFIO_ASSERT_SIZE(struct vfio_info_cap_header, 8);
VFIO_ASSERT_OFFSET(struct vfio_info_cap_header, version, 2);
VFIO_ASSERT_OFFSET(struct vfio_info_cap_header, next, 4);
VFIO_ASSERT_SIZE(struct vfio_group_status, 8);
VFIO_ASSERT_OFFSET(struct vfio_group_status, flags, 4);
VFIO_ASSERT_SIZE(struct vfio_device_info, 20);
VFIO_ASSERT_OFFSET(struct vfio_device_info, num_regions, 8);
VFIO_ASSERT_OFFSET(struct vfio_device_info, num_irqs, 12);
VFIO_ASSERT_OFFSET(struct vfio_device_info, cap_offset, 16);
VFIO_ASSERT_SIZE(struct vfio_region_info, 32);
VFIO_ASSERT_OFFSET(struct vfio_region_info, index, 8);
VFIO_ASSERT_OFFSET(struct vfio_region_info, cap_offset, 12);
VFIO_ASSERT_OFFSET(struct vfio_region_info, size, 16);
VFIO_ASSERT_OFFSET(struct vfio_region_info, offset, 24);
VFIO_ASSERT_SIZE(struct vfio_iommu_type1_info, 24);
VFIO_ASSERT_OFFSET(struct vfio_iommu_type1_info, iova_pgsizes, 8);
VFIO_ASSERT_OFFSET(struct vfio_iommu_type1_info, cap_offset, 16);
VFIO_ASSERT_SIZE(struct vfio_iova_range, 16);
VFIO_ASSERT_SIZE(struct vfio_iommu_type1_info_cap_iova_range, 16);
VFIO_ASSERT_OFFSET(struct vfio_iommu_type1_info_cap_iova_range, nr_iovas, 8);
VFIO_ASSERT_OFFSET(struct vfio_iommu_type1_info_cap_iova_range, iova_ranges, 16);
VFIO_ASSERT_SIZE(struct vfio_iommu_type1_info_dma_avail, 12);
VFIO_ASSERT_OFFSET(struct vfio_iommu_type1_info_dma_avail, avail, 8);
VFIO_ASSERT_SIZE(struct vfio_iommu_type1_dma_map, 32);
VFIO_ASSERT_OFFSET(struct vfio_iommu_type1_dma_map, flags, 4);
VFIO_ASSERT_OFFSET(struct vfio_iommu_type1_dma_map, vaddr, 8);
VFIO_ASSERT_OFFSET(struct vfio_iommu_type1_dma_map, iova, 16);
VFIO_ASSERT_OFFSET(struct vfio_iommu_type1_dma_map, size, 24);
VFIO_ASSERT_SIZE(struct vfio_iommu_type1_dma_unmap, 24);
VFIO_ASSERT_OFFSET(struct vfio_iommu_type1_dma_unmap, iova, 8);
VFIO_ASSERT_OFFSET(struct vfio_iommu_type1_dma_unmap, size, 16);
VFIO_ASSERT_SIZE(struct vfio_device_feature, 8);
VFIO_ASSERT_OFFSET(struct vfio_device_feature, flags, 4);
VFIO_ASSERT_OFFSET(struct vfio_device_feature, data, 8);
VFIO_ASSERT_SIZE(struct vfio_device_feature_migration, 8);
VFIO_ASSERT_SIZE(struct vfio_device_feature_mig_state, 8);
VFIO_ASSERT_OFFSET(struct vfio_device_feature_mig_state, data_fd, 4);
VFIO_ASSERT_SIZE(struct vfio_precopy_info, 24);
VFIO_ASSERT_OFFSET(struct vfio_precopy_info, flags, 4);
VFIO_ASSERT_OFFSET(struct vfio_precopy_info, initial_bytes, 8);
VFIO_ASSERT_OFFSET(struct vfio_precopy_info, dirty_bytes, 16);
VFIO_ASSERT_SIZE(struct vfio_device_feature_mig_data_size, 8);
VFIO_ASSERT_SIZE(struct vfio_device_feature_dma_logging_range, 16);
VFIO_ASSERT_OFFSET(struct vfio_device_feature_dma_logging_range, length, 8);
VFIO_ASSERT_SIZE(struct vfio_device_feature_dma_logging_control, 24);
VFIO_ASSERT_OFFSET(struct vfio_device_feature_dma_logging_control, num_ranges, 8);
VFIO_ASSERT_OFFSET(struct vfio_device_feature_dma_logging_control, ranges, 16);
VFIO_ASSERT_SIZE(struct vfio_device_feature_dma_logging_report, 32);
VFIO_ASSERT_OFFSET(struct vfio_device_feature_dma_logging_report, length, 8);
VFIO_ASSERT_OFFSET(struct vfio_device_feature_dma_logging_report, page_size, 16);
VFIO_ASSERT_OFFSET(struct vfio_device_feature_dma_logging_report, bitmap, 24);
VFIO_ASSERT_SIZE(struct vfio_device_bind_iommufd, 16);
VFIO_ASSERT_OFFSET(struct vfio_device_bind_iommufd, iommufd, 8);
VFIO_ASSERT_OFFSET(struct vfio_device_bind_iommufd, out_devid, 12);
VFIO_ASSERT_SIZE(struct vfio_device_attach_iommufd_pt, 12);
VFIO_ASSERT_OFFSET(struct vfio_device_attach_iommufd_pt, pt_id, 8);
VFIO_ASSERT_SIZE(struct vfio_device_detach_iommufd_pt, 8);

/* Request numbers as the kernel documents them (vfio-uapi.md §1.1). */
_Static_assert(VFIO_DEVICE_FEATURE == 0x3B75, "VFIO_DEVICE_FEATURE");
_Static_assert(VFIO_MIG_GET_PRECOPY_INFO == 0x3B79, "VFIO_MIG_GET_PRECOPY_INFO");
/* Linux 7.2.13 include/uapi/linux/vfio.h */
_Static_assert(VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 == 12, "VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2");
_Static_assert(VFIO_PRECOPY_INFO_REINIT == 1, "VFIO_PRECOPY_INFO_REINIT");
_Static_assert(VFIO_DEVICE_BIND_IOMMUFD == 0x3B76, "VFIO_DEVICE_BIND_IOMMUFD");
_Static_assert(VFIO_IOMMU_MAP_DMA == 0x3B71, "VFIO_IOMMU_MAP_DMA");
_Static_assert(VFIO_GROUP_GET_DEVICE_FD == 0x3B6A, "VFIO_GROUP_GET_DEVICE_FD");
