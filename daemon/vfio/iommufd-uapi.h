/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Our own definitions of the iommufd ABI (/dev/iommu), which Debian 12's 6.1 headers lack
 * entirely. Names follow the kernel's include/uapi/linux/iommufd.h; never include that header
 * alongside this one. iommufd structures lead with a size field: the kernel accepts any size
 * at least as large as the version it first shipped, and requires bytes it does not know to
 * be zero (E2BIG otherwise).
 */

#include "vfio-uapi.h"

#define IOMMUFD_TYPE (';')

enum {
        IOMMUFD_CMD_BASE = 0x80,
        IOMMUFD_CMD_DESTROY = IOMMUFD_CMD_BASE,
        IOMMUFD_CMD_IOAS_ALLOC = 0x81,
        IOMMUFD_CMD_IOAS_ALLOW_IOVAS = 0x82,
        IOMMUFD_CMD_IOAS_COPY = 0x83,
        IOMMUFD_CMD_IOAS_IOVA_RANGES = 0x84,
        IOMMUFD_CMD_IOAS_MAP = 0x85,
        IOMMUFD_CMD_IOAS_UNMAP = 0x86,
        IOMMUFD_CMD_OPTION = 0x87,
        IOMMUFD_CMD_VFIO_IOAS = 0x88,
        IOMMUFD_CMD_HWPT_ALLOC = 0x89,
        IOMMUFD_CMD_GET_HW_INFO = 0x8a,
        IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING = 0x8b,
        IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP = 0x8c,
        IOMMUFD_CMD_IOAS_MAP_FILE = 0x8f,       /* 6.13 */
        IOMMUFD_CMD_IOAS_CHANGE_PROCESS = 0x92, /* 6.13 */
};

#define IOMMU_DESTROY _IO(IOMMUFD_TYPE, IOMMUFD_CMD_DESTROY)
#define IOMMU_IOAS_ALLOC _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC)
#define IOMMU_IOAS_IOVA_RANGES _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_IOVA_RANGES)
#define IOMMU_IOAS_MAP _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP)
#define IOMMU_IOAS_UNMAP _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_UNMAP)
#define IOMMU_OPTION _IO(IOMMUFD_TYPE, IOMMUFD_CMD_OPTION)
#define IOMMU_HWPT_ALLOC _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_ALLOC)
#define IOMMU_GET_HW_INFO _IO(IOMMUFD_TYPE, IOMMUFD_CMD_GET_HW_INFO)
#define IOMMU_HWPT_SET_DIRTY_TRACKING _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_SET_DIRTY_TRACKING)
#define IOMMU_HWPT_GET_DIRTY_BITMAP _IO(IOMMUFD_TYPE, IOMMUFD_CMD_HWPT_GET_DIRTY_BITMAP)
#define IOMMU_IOAS_MAP_FILE _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_MAP_FILE)
#define IOMMU_IOAS_CHANGE_PROCESS _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_CHANGE_PROCESS)

struct iommu_destroy {
        uint32_t size;
        uint32_t id;
};

struct iommu_ioas_alloc {
        uint32_t size;
        uint32_t flags;
        uint32_t out_ioas_id;
};

struct iommu_iova_range {
        vfio_aligned_u64 start;
        vfio_aligned_u64 last; /* inclusive */
};

struct iommu_ioas_iova_ranges {
        uint32_t size;
        uint32_t ioas_id;
        uint32_t num_iovas;
        uint32_t __reserved;
        vfio_aligned_u64 allowed_iovas; /* user pointer to struct iommu_iova_range[] */
        vfio_aligned_u64 out_iova_alignment;
};

enum iommufd_ioas_map_flags {
        IOMMU_IOAS_MAP_FIXED_IOVA = 1 << 0,
        IOMMU_IOAS_MAP_WRITEABLE = 1 << 1,
        IOMMU_IOAS_MAP_READABLE = 1 << 2,
};

struct iommu_ioas_map {
        uint32_t size;
        uint32_t flags;
        uint32_t ioas_id;
        uint32_t __reserved;
        vfio_aligned_u64 user_va;
        vfio_aligned_u64 length;
        vfio_aligned_u64 iova;
};

/* Maps pages of a memfd (shmem/hugetlbfs) by file offset: no host virtual address is involved,
 * which is what lets IOMMU_IOAS_CHANGE_PROCESS move ownership to a new process. */
struct iommu_ioas_map_file {
        uint32_t size;
        uint32_t flags;
        uint32_t ioas_id;
        int32_t fd;
        vfio_aligned_u64 start;
        vfio_aligned_u64 length;
        vfio_aligned_u64 iova;
};

struct iommu_ioas_unmap {
        uint32_t size;
        uint32_t ioas_id;
        vfio_aligned_u64 iova;
        vfio_aligned_u64 length; /* in: bytes to unmap; out: bytes unmapped */
};

/* Moves the pinned-page accounting of every mapping to the calling process. Fails with EINVAL
 * while any address-based (IOMMU_IOAS_MAP) mapping exists; changes nothing on failure. */
struct iommu_ioas_change_process {
        uint32_t size;
        uint32_t __reserved;
};

enum iommufd_option {
        IOMMU_OPTION_RLIMIT_MODE = 0,
        IOMMU_OPTION_HUGE_PAGES = 1,
};

enum iommufd_option_ops {
        IOMMU_OPTION_OP_SET = 0,
        IOMMU_OPTION_OP_GET = 1,
};

struct iommu_option {
        uint32_t size;
        uint32_t option_id;
        uint16_t op;
        uint16_t __reserved;
        uint32_t object_id;
        vfio_aligned_u64 val64;
};

enum iommufd_hwpt_alloc_flags {
        IOMMU_HWPT_ALLOC_NEST_PARENT = 1 << 0,
        IOMMU_HWPT_ALLOC_DIRTY_TRACKING = 1 << 1,
};

enum iommu_hwpt_data_type {
        IOMMU_HWPT_DATA_NONE = 0,
};

struct iommu_hwpt_alloc {
        uint32_t size;
        uint32_t flags;
        uint32_t dev_id;
        uint32_t pt_id;
        uint32_t out_hwpt_id;
        uint32_t __reserved;
        uint32_t data_type;
        uint32_t data_len;
        vfio_aligned_u64 data_uptr;
};

enum iommufd_hw_capabilities {
        IOMMU_HW_CAP_DIRTY_TRACKING = 1 << 0,
};

struct iommu_hw_info {
        uint32_t size;
        uint32_t flags;
        uint32_t dev_id;
        uint32_t data_len;
        vfio_aligned_u64 data_uptr;
        uint32_t out_data_type;
        uint32_t __reserved;
        vfio_aligned_u64 out_capabilities;
};

enum iommufd_hwpt_set_dirty_tracking_flags {
        IOMMU_HWPT_DIRTY_TRACKING_ENABLE = 1,
};

struct iommu_hwpt_set_dirty_tracking {
        uint32_t size;
        uint32_t flags;
        uint32_t hwpt_id;
        uint32_t __reserved;
};

enum iommufd_hwpt_get_dirty_bitmap_flags {
        IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR = 1,
};

struct iommu_hwpt_get_dirty_bitmap {
        uint32_t size;
        uint32_t hwpt_id;
        uint32_t flags;
        uint32_t __reserved;
        vfio_aligned_u64 iova;
        vfio_aligned_u64 length;
        vfio_aligned_u64 page_size;
        vfio_aligned_u64 data; /* user pointer to the bitmap */
};

VFIO_ASSERT_SIZE(struct iommu_destroy, 8);
VFIO_ASSERT_OFFSET(struct iommu_destroy, id, 4);
VFIO_ASSERT_SIZE(struct iommu_ioas_alloc, 12);
VFIO_ASSERT_OFFSET(struct iommu_ioas_alloc, out_ioas_id, 8);
VFIO_ASSERT_SIZE(struct iommu_iova_range, 16);
VFIO_ASSERT_OFFSET(struct iommu_iova_range, last, 8);
VFIO_ASSERT_SIZE(struct iommu_ioas_iova_ranges, 32);
VFIO_ASSERT_OFFSET(struct iommu_ioas_iova_ranges, num_iovas, 8);
VFIO_ASSERT_OFFSET(struct iommu_ioas_iova_ranges, allowed_iovas, 16);
VFIO_ASSERT_OFFSET(struct iommu_ioas_iova_ranges, out_iova_alignment, 24);
VFIO_ASSERT_SIZE(struct iommu_ioas_map, 40);
VFIO_ASSERT_OFFSET(struct iommu_ioas_map, ioas_id, 8);
VFIO_ASSERT_OFFSET(struct iommu_ioas_map, user_va, 16);
VFIO_ASSERT_OFFSET(struct iommu_ioas_map, length, 24);
VFIO_ASSERT_OFFSET(struct iommu_ioas_map, iova, 32);
VFIO_ASSERT_SIZE(struct iommu_ioas_map_file, 40);
VFIO_ASSERT_OFFSET(struct iommu_ioas_map_file, ioas_id, 8);
VFIO_ASSERT_OFFSET(struct iommu_ioas_map_file, fd, 12);
VFIO_ASSERT_OFFSET(struct iommu_ioas_map_file, start, 16);
VFIO_ASSERT_OFFSET(struct iommu_ioas_map_file, length, 24);
VFIO_ASSERT_OFFSET(struct iommu_ioas_map_file, iova, 32);
VFIO_ASSERT_SIZE(struct iommu_ioas_unmap, 24);
VFIO_ASSERT_OFFSET(struct iommu_ioas_unmap, iova, 8);
VFIO_ASSERT_OFFSET(struct iommu_ioas_unmap, length, 16);
VFIO_ASSERT_SIZE(struct iommu_ioas_change_process, 8);
VFIO_ASSERT_SIZE(struct iommu_option, 24);
VFIO_ASSERT_OFFSET(struct iommu_option, op, 8);
VFIO_ASSERT_OFFSET(struct iommu_option, object_id, 12);
VFIO_ASSERT_OFFSET(struct iommu_option, val64, 16);
VFIO_ASSERT_SIZE(struct iommu_hwpt_alloc, 40);
VFIO_ASSERT_OFFSET(struct iommu_hwpt_alloc, dev_id, 8);
VFIO_ASSERT_OFFSET(struct iommu_hwpt_alloc, pt_id, 12);
VFIO_ASSERT_OFFSET(struct iommu_hwpt_alloc, out_hwpt_id, 16);
VFIO_ASSERT_OFFSET(struct iommu_hwpt_alloc, data_type, 24);
VFIO_ASSERT_OFFSET(struct iommu_hwpt_alloc, data_uptr, 32);
VFIO_ASSERT_SIZE(struct iommu_hw_info, 40);
VFIO_ASSERT_OFFSET(struct iommu_hw_info, dev_id, 8);
VFIO_ASSERT_OFFSET(struct iommu_hw_info, data_uptr, 16);
VFIO_ASSERT_OFFSET(struct iommu_hw_info, out_data_type, 24);
VFIO_ASSERT_OFFSET(struct iommu_hw_info, out_capabilities, 32);
VFIO_ASSERT_SIZE(struct iommu_hwpt_set_dirty_tracking, 16);
VFIO_ASSERT_OFFSET(struct iommu_hwpt_set_dirty_tracking, hwpt_id, 8);
VFIO_ASSERT_SIZE(struct iommu_hwpt_get_dirty_bitmap, 48);
VFIO_ASSERT_OFFSET(struct iommu_hwpt_get_dirty_bitmap, iova, 16);
VFIO_ASSERT_OFFSET(struct iommu_hwpt_get_dirty_bitmap, length, 24);
VFIO_ASSERT_OFFSET(struct iommu_hwpt_get_dirty_bitmap, page_size, 32);
VFIO_ASSERT_OFFSET(struct iommu_hwpt_get_dirty_bitmap, data, 40);

_Static_assert(IOMMU_IOAS_MAP_FILE == 0x3B8F, "IOMMU_IOAS_MAP_FILE");
_Static_assert(IOMMU_IOAS_CHANGE_PROCESS == 0x3B92, "IOMMU_IOAS_CHANGE_PROCESS");
_Static_assert(IOMMU_IOAS_ALLOC == 0x3B81, "IOMMU_IOAS_ALLOC");
