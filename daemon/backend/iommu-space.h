/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * A DMA address space: an IOMMU translation that devices are attached to and that maps ranges of
 * files (memfds handed over by clients) at IOVAs. Three backends implement it:
 *
 *  - iommufd: an IOAS on the context's /dev/iommu. Mappings are by file (IOMMU_IOAS_MAP_FILE,
 *    6.13), which IOMMU_IOAS_CHANGE_PROCESS can move to a restarted daemon; where the kernel
 *    lacks MAP_FILE, by the address of the daemon's MAP_SHARED view (IOMMU_IOAS_MAP), which a
 *    restart cannot keep.
 *  - legacy: a type1v2 container. Mappings are by the address of the daemon's MAP_SHARED view
 *    (VFIO_IOMMU_MAP_DMA); a restart invalidates the addresses (UNMAP_DMA with VADDR: the pages
 *    stay pinned and DMA continues) and the successor registers its own (MAP_DMA with VADDR).
 *  - sim: the same rules enforced in the daemon, for simulated devices, by file or by address.
 *
 * The core (core/address-space.c) validates requests and owns the mapping records and their
 * files; a backend only performs what the kernel does, and refuses what the kernel refuses.
 */

#include <stdbool.h>
#include <stdint.h>

#include "error-message.h"
#include "vfio-dev.h"

#define IOMMU_PAGE_SIZE 4096u
#define IOMMU_READ (1u << 0)
#define IOMMU_WRITE (1u << 1)

typedef enum IommuBackend {
        IOMMU_BACKEND_IOMMUFD,
        IOMMU_BACKEND_LEGACY,
        IOMMU_BACKEND_SIM,
        _IOMMU_BACKEND_MAX,
        _IOMMU_BACKEND_INVALID = -EINVAL,
} IommuBackend;

const char *iommu_backend_to_string(IommuBackend b);
IommuBackend iommu_backend_from_string(const char *s);

typedef struct IommuMapping {
        uint64_t iova;
        uint64_t length;
        uint64_t offset;    /* into the file */
        uint32_t access;    /* IOMMU_READ | IOMMU_WRITE */
        int fd;             /* the file; owned by the caller for as long as the mapping exists */
        /* set by the backend: */
        bool by_file;       /* mapped by file: no host address involved */
        void *vaddr;        /* by address: the backend's MAP_SHARED view of the range */
} IommuMapping;

typedef struct IommuSpace IommuSpace;

typedef struct IommuSpaceOps {
        /* Creates the translation for m. On success by_file/vaddr say how. */
        int (*map)(IommuSpace *s, IommuMapping *m, ErrorMessage *err);
        /* Removes exactly the translation of m (the caller never bisects). */
        int (*unmap)(IommuSpace *s, IommuMapping *m, ErrorMessage *err);
        int (*attach_device)(IommuSpace *s, VfioDev *d, ErrorMessage *err);
        void (*detach_device)(IommuSpace *s, VfioDev *d);
        /* Called in the daemon that is about to hand its mappings to a successor (a planned
         * restart). Legacy and sim-by-address invalidate every host address; DMA continues. */
        int (*prepare_handover)(IommuSpace *s, ErrorMessage *err);
        /* Called in the successor, once, with every mapping the predecessor had (fds adopted,
         * by_file as recorded): makes this process their owner. prepared says whether the
         * predecessor managed prepare_handover() (it did not if it crashed). */
        int (*take_over)(IommuSpace *s, IommuMapping *const *mappings, size_t n, bool prepared, ErrorMessage *err);
        /* How the current mappings fare across a restart of the daemon, as a sentence. */
        const char *(*live_update)(IommuSpace *s);
        void (*destroy)(IommuSpace *s);
} IommuSpaceOps;

struct IommuSpace {
        const IommuSpaceOps *ops;
        IommuBackend backend;
};

IommuSpace *iommu_space_free(IommuSpace *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(IommuSpace *, iommu_space_free);

/* The maximum the kernel takes: type1's dma_entry_limit default. */
#define IOMMU_MAPPINGS_KERNEL_MAX 65535u
