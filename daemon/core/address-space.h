/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * A DMA address space the daemon owns: an IOMMU translation (backend/iommu-space.h), the
 * devices attached to it, and the mappings clients asked for, each backed by a file the client
 * handed over (a memfd of guest memory). The space keeps its own reference to every file, so a
 * client may close its copy, and the files go to the service manager's fd store so that a
 * restarted daemon gets them back.
 *
 * Requests are validated here, before the backend sees them, with the messages an operator
 * needs: the file must be a regular file (memfd, hugetlbfs or tmpfs file) opened for the access
 * asked; offset, length and IOVA page-aligned; the range inside the file; no overlap; an unmap
 * covers whole mappings; every space is capped in mappings and the daemon in pinned bytes.
 */

#include "error-message.h"
#include "iommu-space.h"
#include "sim-iommu.h"

typedef struct Manager Manager;
typedef struct Device Device;

typedef struct Mapping {
        IommuMapping m;      /* m.fd is the space's own reference to the file */
        uint64_t serial;     /* names the file in the fd store: map-<space>-<serial> */
} Mapping;

typedef struct AddressSpace {
        Manager *manager;
        char *id;            /* "s0", "s1", …: /org/vfiomig1/space/<id> */
        IommuSpace *iommu;
        Mapping **mappings;  /* sorted by IOVA */
        size_t n_mappings;
        uint64_t next_serial;
        uint64_t pinned_bytes;
        bool handover_prepared;
        char *handover_problem; /* why taking the mappings over at the last restart failed, if it did */
        /* persist.c's copy of the mappings' JSON, valid while next_serial and n_mappings are what
         * they were: every Map raises next_serial, every Unmap lowers n_mappings, and a mapping's
         * fields never change, so the two name the set of mappings. */
        char *saved_mappings;
        uint64_t saved_next_serial;
        size_t saved_n_mappings;
} AddressSpace;

typedef struct MapRequest {
        int fd;              /* the client's; duplicated on success */
        uint64_t offset;
        uint64_t length;
        uint64_t iova;
        uint32_t access;
} MapRequest;

int address_space_new(Manager *m, const char *id, IommuSpace *iommu, AddressSpace **ret);
AddressSpace *address_space_free(AddressSpace *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(AddressSpace *, address_space_free);

/* The checks that need no change: -EINVAL (malformed: file type, access mode, alignment,
 * range), -EEXIST (overlap), -E2BIG (a cap). */
int address_space_check_map(AddressSpace *s, const MapRequest *req, ErrorMessage *err);
int address_space_map(AddressSpace *s, const MapRequest *req, Mapping **ret, ErrorMessage *err);
/* The mappings [iova, iova+length) covers, which must be whole: -EINVAL malformed, -ENOENT
 * nothing there, -EEXIST it would split a mapping. */
int address_space_check_unmap(AddressSpace *s, uint64_t iova, uint64_t length, ErrorMessage *err);
int address_space_unmap(AddressSpace *s, uint64_t iova, uint64_t length, ErrorMessage *err);

/* The devices attached (Device.space == s), for the bus. */
size_t address_space_device_count(AddressSpace *s);
const char *address_space_live_update(AddressSpace *s);

/* Names of access bits: "read", "write". */
int access_from_strv(char **names, uint32_t *ret, ErrorMessage *err);
int access_to_strv(uint32_t access, char ***ret);
