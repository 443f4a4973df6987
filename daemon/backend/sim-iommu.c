/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "sim-device.h"
#include "sim-iommu.h"

typedef struct SimEntry {
        uint64_t iova;
        uint64_t length;
        uint64_t offset;
        uint32_t access;
        int fd;           /* our own reference to the file: the "pinned pages" */
        bool by_file;
        void *vaddr;      /* by address: the view registered last (ours, or the predecessor's) */
        bool vaddr_valid;
        bool vaddr_ours;  /* we created the view and must unmap it */
} SimEntry;

typedef struct SimIommu {
        IommuSpace base;
        SimMappingStyle style;
        SimEntry *entries; /* sorted by iova */
        size_t n_entries;
        VfioDev **devices;
        size_t n_devices;
} SimIommu;

static const IommuSpaceOps sim_iommu_ops;

static SimIommu *to_sim(IommuSpace *s) {
        return (SimIommu *) s;
}

const char *sim_mapping_style_to_string(SimMappingStyle s) {
        switch (s) {
        case SIM_MAP_BY_FILE:
                return "by-file";
        case SIM_MAP_BY_ADDRESS:
                return "by-address";
        default:
                return NULL;
        }
}

SimMappingStyle sim_mapping_style_from_string(const char *s) {
        for (SimMappingStyle i = 0; i < _SIM_MAP_STYLE_MAX; i++)
                if (s && streq(s, sim_mapping_style_to_string(i)))
                        return i;
        return _SIM_MAP_STYLE_INVALID;
}

bool iommu_space_is_sim(const IommuSpace *s) {
        return s && s->ops == &sim_iommu_ops;
}

SimMappingStyle sim_iommu_style(IommuSpace *s) {
        return to_sim(s)->style;
}

size_t sim_iommu_mapping_count(IommuSpace *s) {
        return to_sim(s)->n_entries;
}

static void entry_release(SimEntry *e) {
        if (e->vaddr_ours && e->vaddr)
                (void) munmap(e->vaddr, e->length);
        e->fd = safe_close(e->fd);
        e->vaddr = NULL;
        e->vaddr_ours = false;
}

static bool aligned(uint64_t v) {
        return (v & (IOMMU_PAGE_SIZE - 1)) == 0;
}

/* The view of the file range a by-address mapping registers, as the legacy backend makes it. */
static int map_view(const IommuMapping *m, void **ret) {
        void *p = mmap(NULL, m->length, (m->access & IOMMU_WRITE ? PROT_WRITE : 0) | PROT_READ, MAP_SHARED, m->fd,
                       (off_t) m->offset);
        if (p == MAP_FAILED)
                return -errno;
        *ret = p;
        return 0;
}

static int insert_entry(SimIommu *s, const SimEntry *e) {
        SimEntry *entries;
        size_t at = 0;

        entries = reallocarray(s->entries, s->n_entries + 1, sizeof *entries);
        if (!entries)
                return -ENOMEM;
        s->entries = entries;
        while (at < s->n_entries && s->entries[at].iova < e->iova)
                at++;
        memmove(s->entries + at + 1, s->entries + at, (s->n_entries - at) * sizeof *entries);
        s->entries[at] = *e;
        s->n_entries++;
        return 0;
}

/* The checks the kernel makes before pinning anything. */
static int check_new_mapping(SimIommu *s, const IommuMapping *m, ErrorMessage *err) {
        struct stat st;

        if (m->length == 0 || !aligned(m->iova) || !aligned(m->length) || !aligned(m->offset))
                return error_setf(err, -EINVAL, "iova, length and offset must be multiples of %u and length non-zero",
                                  IOMMU_PAGE_SIZE);
        /* by last byte, as the kernel: a range may end at 2^64 - 1 */
        if (m->iova + m->length - 1 < m->iova || m->offset + m->length - 1 < m->offset)
                return error_setf(err, -EOVERFLOW, "the range wraps around");
        if (!(m->access & (IOMMU_READ | IOMMU_WRITE)) || (m->access & ~(IOMMU_READ | IOMMU_WRITE)))
                return error_setf(err, -EINVAL, "access must be read and/or write");
        if (fstat(m->fd, &st) < 0)
                return error_setf(err, -errno, "cannot examine the file: %m");
        if (m->offset + m->length - 1 >= (uint64_t) st.st_size)
                return error_setf(err, -EINVAL, "the range ends beyond the end of the file (%lld bytes)",
                                  (long long) st.st_size);
        if (s->n_entries >= IOMMU_MAPPINGS_KERNEL_MAX)
                return error_setf(err, -ENOSPC, "the IOMMU holds %u mappings, its limit", IOMMU_MAPPINGS_KERNEL_MAX);
        for (size_t i = 0; i < s->n_entries; i++) {
                const SimEntry *e = &s->entries[i];
                if (m->iova <= e->iova + e->length - 1 && e->iova <= m->iova + m->length - 1)
                        return error_setf(err, -EEXIST, "IOVA range 0x%llx+0x%llx overlaps the mapping at 0x%llx+0x%llx",
                                          (unsigned long long) m->iova, (unsigned long long) m->length,
                                          (unsigned long long) e->iova, (unsigned long long) e->length);
        }
        return 0;
}

static int sim_map(IommuSpace *space, IommuMapping *m, ErrorMessage *err) {
        SimIommu *s = to_sim(space);
        SimEntry e = {};
        int r;

        r = check_new_mapping(s, m, err);
        if (r < 0)
                return r;

        e = (SimEntry) {
                .iova = m->iova,
                .length = m->length,
                .offset = m->offset,
                .access = m->access,
                .by_file = s->style == SIM_MAP_BY_FILE,
        };
        e.fd = fcntl(m->fd, F_DUPFD_CLOEXEC, 3);
        if (e.fd < 0)
                return error_setf(err, -errno, "cannot hold the file: %m");
        if (!e.by_file) {
                r = map_view(m, &e.vaddr);
                if (r < 0) {
                        entry_release(&e);
                        return error_setf(err, r, "cannot map the file into the daemon: %m");
                }
                e.vaddr_valid = e.vaddr_ours = true;
        }
        r = insert_entry(s, &e);
        if (r < 0) {
                entry_release(&e);
                return r;
        }
        m->by_file = e.by_file;
        m->vaddr = e.vaddr;
        return 0;
}

static int sim_unmap(IommuSpace *space, IommuMapping *m, ErrorMessage *err) {
        SimIommu *s = to_sim(space);

        for (size_t i = 0; i < s->n_entries; i++) {
                SimEntry *e = &s->entries[i];
                if (e->iova != m->iova || e->length != m->length)
                        continue;
                entry_release(e);
                memmove(s->entries + i, s->entries + i + 1, (s->n_entries - i - 1) * sizeof *e);
                s->n_entries--;
                m->vaddr = NULL;
                return 0;
        }
        return error_setf(err, -ENOENT, "no mapping at IOVA 0x%llx with length 0x%llx", (unsigned long long) m->iova,
                          (unsigned long long) m->length);
}

static int sim_attach_device(IommuSpace *space, VfioDev *d, ErrorMessage *err) {
        SimIommu *s = to_sim(space);
        VfioDev **devices;

        if (!vfio_dev_is_sim(d))
                return error_setf(err, -EINVAL, "only simulated devices attach to a simulated address space");
        for (size_t i = 0; i < s->n_devices; i++)
                if (s->devices[i] == d)
                        return 0;
        devices = reallocarray(s->devices, s->n_devices + 1, sizeof *devices);
        if (!devices)
                return -ENOMEM;
        s->devices = devices;
        s->devices[s->n_devices++] = d;
        return 0;
}

static void sim_detach_device(IommuSpace *space, VfioDev *d) {
        SimIommu *s = to_sim(space);

        for (size_t i = 0; i < s->n_devices; i++)
                if (s->devices[i] == d) {
                        memmove(s->devices + i, s->devices + i + 1, (s->n_devices - i - 1) * sizeof *s->devices);
                        s->n_devices--;
                        return;
                }
}

int sim_iommu_invalidate_vaddr_all(IommuSpace *space) {
        SimIommu *s = to_sim(space);

        for (size_t i = 0; i < s->n_entries; i++) {
                SimEntry *e = &s->entries[i];
                if (e->by_file)
                        continue;
                if (!e->vaddr_valid) {
                        /* the kernel rolls back what it marked and refuses the whole call */
                        for (size_t j = 0; j < i; j++)
                                if (!s->entries[j].by_file)
                                        s->entries[j].vaddr_valid = true;
                        return -EINVAL;
                }
                e->vaddr_valid = false;
        }
        return 0;
}

int sim_iommu_register_vaddr(IommuSpace *space, uint64_t iova, uint64_t length, void *vaddr) {
        SimIommu *s = to_sim(space);

        for (size_t i = 0; i < s->n_entries; i++) {
                SimEntry *e = &s->entries[i];
                if (e->by_file || e->iova != iova || e->length != length)
                        continue;
                if (e->vaddr_valid)
                        return -EINVAL;
                if (e->vaddr_ours && e->vaddr && e->vaddr != vaddr)
                        (void) munmap(e->vaddr, e->length);
                e->vaddr = vaddr;
                e->vaddr_valid = true;
                e->vaddr_ours = true;
                return 0;
        }
        return -ENOENT;
}

int sim_iommu_change_process(IommuSpace *space) {
        SimIommu *s = to_sim(space);

        for (size_t i = 0; i < s->n_entries; i++)
                if (!s->entries[i].by_file)
                        return -EINVAL;
        return 0;
}

static int sim_prepare_handover(IommuSpace *space, ErrorMessage *err) {
        SimIommu *s = to_sim(space);
        int r;

        if (s->style == SIM_MAP_BY_FILE) {
                /* As QEMU does: CHANGE_PROCESS in the old process is a no-op that checks early. */
                r = sim_iommu_change_process(space);
                if (r < 0)
                        return error_setf(err, r, "address-based mappings cannot change owner");
                return 0;
        }
        r = sim_iommu_invalidate_vaddr_all(space);
        if (r < 0)
                return error_setf(err, r, "cannot invalidate host addresses: some already are");
        return 0;
}

static int sim_take_over(IommuSpace *space, IommuMapping *const *mappings, size_t n, bool prepared,
                         ErrorMessage *err) {
        SimIommu *s = to_sim(space);
        int r;

        /* A fresh process has an empty table: the "kernel" state is what the predecessor left,
         * its host addresses invalid if it prepared, else stale but valid. */
        for (size_t i = 0; i < n; i++) {
                const IommuMapping *m = mappings[i];
                SimEntry e = {
                        .iova = m->iova,
                        .length = m->length,
                        .offset = m->offset,
                        .access = m->access,
                        .by_file = m->by_file,
                        .vaddr_valid = !m->by_file && !prepared,
                };
                e.fd = fcntl(m->fd, F_DUPFD_CLOEXEC, 3);
                if (e.fd < 0)
                        return error_setf(err, -errno, "cannot hold the file of mapping 0x%llx: %m",
                                          (unsigned long long) m->iova);
                r = insert_entry(s, &e);
                if (r < 0) {
                        entry_release(&e);
                        return r;
                }
        }

        if (s->style == SIM_MAP_BY_FILE) {
                r = sim_iommu_change_process(space);
                if (r < 0)
                        return error_setf(err, r, "CHANGE_PROCESS refused: the space has address-based mappings");
                return 0;
        }

        if (!prepared) {
                /* The predecessor crashed with its addresses registered: invalidate them first. */
                r = sim_iommu_invalidate_vaddr_all(space);
                if (r < 0)
                        return error_setf(err, r, "cannot invalidate the crashed daemon's host addresses");
        }
        for (size_t i = 0; i < n; i++) {
                IommuMapping *m = mappings[i];
                void *view;

                r = map_view(m, &view);
                if (r < 0)
                        return error_setf(err, r, "cannot map the file of mapping 0x%llx: %m",
                                          (unsigned long long) m->iova);
                r = sim_iommu_register_vaddr(space, m->iova, m->length, view);
                if (r < 0) {
                        (void) munmap(view, m->length);
                        return error_setf(err, r, "cannot register the new host address of mapping 0x%llx: %m",
                                          (unsigned long long) m->iova);
                }
                m->vaddr = view;
        }
        return 0;
}

static const char *sim_live_update(IommuSpace *space) {
        SimIommu *s = to_sim(space);

        if (s->style == SIM_MAP_BY_FILE)
                return "survives planned restarts and crashes: mappings are by file and change owner "
                       "(simulated IOMMU_IOAS_CHANGE_PROCESS)";
        return "survives planned restarts and crashes: host addresses are invalidated and registered anew "
               "(simulated type1 VADDR update)";
}

int sim_iommu_dma(IommuSpace *space, uint64_t iova, void *buf, size_t n, bool write, ErrorMessage *err) {
        SimIommu *s = to_sim(space);
        uint8_t *p = buf;

        while (n > 0) {
                const SimEntry *hit = NULL;
                size_t k;
                ssize_t done;

                for (size_t i = 0; i < s->n_entries && !hit; i++)
                        if (iova >= s->entries[i].iova && iova - s->entries[i].iova < s->entries[i].length)
                                hit = &s->entries[i];
                /* (iova - start < length also holds for a mapping ending at 2^64 - 1) */
                if (!hit)
                        return error_setf(err, -EFAULT, "IOMMU fault: DMA %s IOVA 0x%llx, which is not mapped",
                                          write ? "write to" : "read from", (unsigned long long) iova);
                if (!(hit->access & (write ? IOMMU_WRITE : IOMMU_READ)))
                        return error_setf(err, -EFAULT, "IOMMU fault: DMA %s IOVA 0x%llx, which is mapped %s",
                                          write ? "write to" : "read from", (unsigned long long) iova,
                                          write ? "read-only" : "write-only");
                k = (size_t) MIN((uint64_t) n, hit->length - (iova - hit->iova));
                /* Through the file, never the host address: DMA goes to the pinned pages. */
                done = write ? pwrite(hit->fd, p, k, (off_t) (hit->offset + (iova - hit->iova)))
                             : pread(hit->fd, p, k, (off_t) (hit->offset + (iova - hit->iova)));
                if (done < 0)
                        return error_setf(err, -errno, "DMA at IOVA 0x%llx failed: %m", (unsigned long long) iova);
                if ((size_t) done != k)
                        return error_setf(err, -EIO, "short DMA at IOVA 0x%llx", (unsigned long long) iova);
                p += k;
                iova += k;
                n -= k;
        }
        return 0;
}

static void sim_destroy(IommuSpace *space) {
        SimIommu *s = to_sim(space);

        for (size_t i = 0; i < s->n_entries; i++)
                entry_release(&s->entries[i]);
        free(s->entries);
        free(s->devices);
        free(s);
}

static const IommuSpaceOps sim_iommu_ops = {
        .map = sim_map,
        .unmap = sim_unmap,
        .attach_device = sim_attach_device,
        .detach_device = sim_detach_device,
        .prepare_handover = sim_prepare_handover,
        .take_over = sim_take_over,
        .live_update = sim_live_update,
        .destroy = sim_destroy,
};

int sim_iommu_new(SimMappingStyle style, IommuSpace **ret) {
        SimIommu *s;

        if (style < 0 || style >= _SIM_MAP_STYLE_MAX)
                return -EINVAL;
        s = new0(SimIommu, 1);
        if (!s)
                return -ENOMEM;
        s->base = (IommuSpace) { .ops = &sim_iommu_ops, .backend = IOMMU_BACKEND_SIM };
        s->style = style;
        *ret = &s->base;
        return 0;
}
