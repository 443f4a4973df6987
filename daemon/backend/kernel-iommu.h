/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The kernel implementations of IommuSpace (iommu-space.h).
 *
 * iommufd: an IOAS on the context's /dev/iommu. Devices opened on the iommufd path attach with
 * VFIO_DEVICE_ATTACH_IOMMUFD_PT. Mappings are by file (IOMMU_IOAS_MAP_FILE, Linux 6.13); a
 * kernel without it answers ENOTTY and the space falls back, for good, to mapping the daemon's
 * MAP_SHARED view of the file range by address (IOMMU_IOAS_MAP). A restart keeps by-file
 * mappings: the successor calls IOMMU_IOAS_CHANGE_PROCESS once for the whole iommufd. It cannot
 * take over by-address mappings (they stay in the IOMMU, DMA continuing, but are charged to the
 * dead process and unusable for emulated devices), and CHANGE_PROCESS refuses while any exists.
 *
 * legacy: a type1v2 container. The kernel sets a container's IOMMU only once a group is in it, so
 * a new space has no container: the first device attached brings its group's container (or,
 * when that container is shared with other groups or holds mappings, the group moves into a new
 * one). Every later device whose group is in another container is moved: its group leaves its
 * container and joins the space's, which the kernel allows only with every descriptor of every
 * device of the group closed. So the daemon closes its descriptors of those devices (after the
 * context's reopen check agreed, see kernel-device.h), moves the group, and opens the devices
 * again (VFIO_GROUP_GET_DEVICE_FD), updating VfioDev.device_fd in place. Closing a vfio-pci
 * device's last descriptor resets the device and ends any migration session, and a VMM holding a
 * duplicate keeps the device open (the kernel then refuses with EBUSY and nothing changes). A
 * move is refused (-EBUSY) when another device of the group is attached to another space, or
 * when the group is the last one in another space's container which still has mappings (the
 * kernel would drop them).
 *
 *   The space holds every group in its container, so that its IOMMU, and so its mappings,
 *   live as long as the space and not only as long as some device is open: type1 drops a
 *   container's IOMMU with its last group. A device detached from the space stays in its
 *   container (only a move takes a group out); attaching it to another space moves it.
 *
 *   Mappings are by the address of the daemon's MAP_SHARED view (VFIO_IOMMU_MAP_DMA). For a
 *   restart, prepare_handover() invalidates every host address at once (UNMAP_DMA with
 *   VFIO_DMA_UNMAP_FLAG_VADDR|ALL; DMA continues) and the successor's take_over() maps the files
 *   again and registers the new addresses (MAP_DMA with VFIO_DMA_MAP_FLAG_VADDR). The container
 *   must offer VFIO_UPDATE_VADDR (Linux 5.12, the real type1 backend, no mdev group in it).
 *
 * A handover prepared and then abandoned (the daemon does not exit after all) is undone by
 * calling take_over() in the same process with the space's own mappings and prepared = true:
 * legacy registers fresh views for the invalidated addresses; iommufd has nothing to undo. After
 * a successful prepare_handover(), detach_device() of an iommufd space leaves the kernel
 * attachment in place (the core frees its devices on the way out); a later map() or
 * attach_device() ends that.
 *
 * destroy() releases what the process holds (views, references) and never unmaps: the core
 * destroys spaces at exit, including the exit before a restart, where the kernel objects must
 * live on in the fd store. An iommufd space that has no mapping and no device, and was not
 * prepared for a handover, also destroys its IOAS (a restored one only after take_over() told
 * it what the IOAS holds). A restored iommufd space whose IOAS no longer exists gets a new one,
 * and its take_over() reports the mappings that were expected in it as lost.
 *
 * Saved state (kernel_space_save()), next to the core's own record of the mappings:
 *   iommufd  {"backend": "iommufd", "ioas-id": 2, "mapping-style": "by-file" | "by-address",
 *             "by-address-mappings": 0}
 *   legacy   {"backend": "legacy", "container": 1}      (null before the first device)
 */

#include <json.h>

#include "iommu-space.h"
#include "kernel-device.h"

/* IOMMU_IOAS_ALLOC on the context's iommufd (opened on first use). */
int kernel_iommufd_space_new(KernelContext *c, IommuSpace **ret, ErrorMessage *err);
/* A type1v2 container space; opens nothing until the first device is attached. */
int kernel_legacy_space_new(KernelContext *c, IommuSpace **ret, ErrorMessage *err);

bool iommu_space_is_kernel(const IommuSpace *s);
/* iommufd: the IOAS id. -EOPNOTSUPP for other spaces. */
int kernel_space_get_ioas_id(IommuSpace *s, uint32_t *ret);
/* legacy: the id of the space's container, 0 before the first device. -EOPNOTSUPP for others. */
int kernel_space_get_container_id(IommuSpace *s, unsigned *ret);

/* The space's kernel facts (format above). Its mappings are the core's to record. */
int kernel_space_save(IommuSpace *s, json_object **ret);
/* After kernel_context_restore(): the space over the restored IOAS or container. Its mappings
 * come back through take_over(); its devices through attach_device(), which for a device
 * restored attached to this space re-registers it (legacy: no ioctl; iommufd: an ATTACH to the
 * same IOAS, which the kernel treats as a replace by the same page table). */
int kernel_space_restore(KernelContext *c, json_object *saved, IommuSpace **ret, ErrorMessage *err);
