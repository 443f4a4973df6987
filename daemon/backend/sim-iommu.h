/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The simulated IOMMU: an address space for simulated devices that enforces what the kernel
 * enforces, so that the daemon's mapping and live-update logic meets the same refusals on the
 * sim as on hardware:
 *
 *  - IOVA, length and file offset aligned to 4 KiB, length non-zero, no overflow, the range
 *    inside the file, read and/or write access; an overlap is EEXIST; 65535 mappings at most;
 *  - by address (as type1): VADDR invalidation of all mappings at once, refused with EINVAL (and
 *    rolled back) if any is already invalid; VADDR registration only for the exact iova and
 *    length of an invalidated mapping (ENOENT if there is none, EINVAL if it is still valid);
 *  - by file (as iommufd MAP_FILE): CHANGE_PROCESS refused with EINVAL while any address-based
 *    mapping exists;
 *  - device DMA translates through the mappings and keeps working while host addresses are
 *    invalid (the pages stay "pinned": the space holds the files); a miss is an IOMMU fault.
 */

#include "iommu-space.h"

typedef enum SimMappingStyle {
        SIM_MAP_BY_FILE,     /* like iommufd IOAS_MAP_FILE */
        SIM_MAP_BY_ADDRESS,  /* like type1 MAP_DMA of the daemon's MAP_SHARED view */
        _SIM_MAP_STYLE_MAX,
        _SIM_MAP_STYLE_INVALID = -EINVAL,
} SimMappingStyle;

const char *sim_mapping_style_to_string(SimMappingStyle s);
SimMappingStyle sim_mapping_style_from_string(const char *s);

int sim_iommu_new(SimMappingStyle style, IommuSpace **ret);
bool iommu_space_is_sim(const IommuSpace *s);
SimMappingStyle sim_iommu_style(IommuSpace *s);

/* A simulated device's DMA: reads or writes n bytes at iova. -EFAULT (with a message naming the
 * IOVA) when some byte is not mapped with the needed access. */
int sim_iommu_dma(IommuSpace *s, uint64_t iova, void *buf, size_t n, bool write, ErrorMessage *err);

/* The kernel-level primitives, for tests of the rules above. */
int sim_iommu_invalidate_vaddr_all(IommuSpace *s);
int sim_iommu_register_vaddr(IommuSpace *s, uint64_t iova, uint64_t length, void *vaddr);
int sim_iommu_change_process(IommuSpace *s);
size_t sim_iommu_mapping_count(IommuSpace *s);
