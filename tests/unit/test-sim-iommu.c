/* SPDX-License-Identifier: GPL-2.0-or-later */
/* The simulated IOMMU refuses what the kernel refuses (vfio-uapi.md §3, §4). */

#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "sim-device.h"
#include "sim-iommu.h"

#define MiB (UINT64_C(1) << 20)

static int memfd(uint64_t size) {
        int fd = memfd_create("test-sim-iommu", MFD_CLOEXEC);
        cr_assert_geq(fd, 0);
        cr_assert_eq(ftruncate(fd, (off_t) size), 0);
        return fd;
}

static IommuSpace *space(SimMappingStyle style) {
        IommuSpace *s = NULL;
        cr_assert_eq(sim_iommu_new(style, &s), 0);
        return s;
}

static IommuMapping mapping(int fd, uint64_t iova, uint64_t length, uint64_t offset) {
        return (IommuMapping) { .iova = iova, .length = length, .offset = offset,
                                .access = IOMMU_READ | IOMMU_WRITE, .fd = fd };
}

Test(sim_iommu, map_rules) {
        IommuSpace *s = space(SIM_MAP_BY_FILE);
        int fd = memfd(MiB);
        ErrorMessage err = {};
        IommuMapping m;

        m = mapping(fd, 0x100000, 0x10000, 0);
        cr_assert_eq(s->ops->map(s, &m, &err), 0, "%s", err.text);
        cr_assert(m.by_file);
        cr_assert_null(m.vaddr);

        static const struct { uint64_t iova, length, offset; uint32_t access; int error; } bad[] = {
                { 0x100800, 0x1000, 0, 3, -EINVAL },        /* unaligned iova */
                { 0x200000, 0x1800, 0, 3, -EINVAL },        /* unaligned length */
                { 0x200000, 0x1000, 0x10, 3, -EINVAL },     /* unaligned offset */
                { 0x200000, 0, 0, 3, -EINVAL },             /* empty */
                { 0x200000, 0x1000, 0, 0, -EINVAL },        /* no access */
                { 0x200000, 0x1000, 0, 4, -EINVAL },        /* unknown access bit */
                { 0x200000, 0x1000, MiB, 3, -EINVAL },      /* beyond the end of the file */
                { UINT64_MAX - 0xfff, 0x2000, 0, 3, -EOVERFLOW },
                { 0x10f000, 0x2000, 0, 3, -EEXIST },        /* overlaps the end */
                { 0xff000, 0x2000, 0, 3, -EEXIST },         /* overlaps the start */
                { 0x104000, 0x1000, 0, 3, -EEXIST },        /* inside */
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                IommuMapping b = { .iova = bad[i].iova, .length = bad[i].length, .offset = bad[i].offset,
                                   .access = bad[i].access, .fd = fd };
                err = (ErrorMessage) {};
                cr_assert_eq(s->ops->map(s, &b, &err), bad[i].error, "case %zu", i);
                cr_assert(err.text[0], "case %zu has no message", i);
        }
        cr_assert_eq(sim_iommu_mapping_count(s), 1, "refused maps change nothing");

        /* adjacent ranges are fine */
        IommuMapping next = mapping(fd, 0x110000, 0x1000, 0x10000);
        cr_assert_eq(s->ops->map(s, &next, NULL), 0);
        cr_assert_eq(s->ops->unmap(s, &next, NULL), 0);
        cr_assert_eq(s->ops->unmap(s, &next, &err), -ENOENT);
        IommuMapping half = mapping(fd, 0x100000, 0x8000, 0);
        cr_assert_eq(s->ops->unmap(s, &half, NULL), -ENOENT, "no bisecting");
        cr_assert_eq(sim_iommu_mapping_count(s), 1);
        close(fd);
        iommu_space_free(s);
}

Test(sim_iommu, dma_lands_in_the_file_and_faults_outside) {
        IommuSpace *s = space(SIM_MAP_BY_FILE);
        int fd = memfd(MiB);
        ErrorMessage err = {};
        char buf[16] = {};

        IommuMapping m = mapping(fd, 0x100000, 0x2000, 0x3000);
        cr_assert_eq(s->ops->map(s, &m, NULL), 0);
        IommuMapping ro = { .iova = 0x102000, .length = 0x1000, .offset = 0x8000, .access = IOMMU_READ, .fd = fd };
        cr_assert_eq(s->ops->map(s, &ro, NULL), 0);

        cr_assert_eq(sim_iommu_dma(s, 0x100010, "pattern-A", 9, true, &err), 0, "%s", err.text);
        cr_assert_eq(pread(fd, buf, 9, 0x3010), 9);
        cr_assert_str_eq(buf, "pattern-A");
        /* across the boundary of two mappings: the write part faults on the read-only one */
        cr_assert_eq(sim_iommu_dma(s, 0x101ffc, "12345678", 8, true, &err), -EFAULT);
        cr_assert(strstr(err.text, "read-only"), "%s", err.text);
        err = (ErrorMessage) {};
        cr_assert_eq(sim_iommu_dma(s, 0x200000, "x", 1, true, &err), -EFAULT);
        cr_assert(strstr(err.text, "IOMMU fault") && strstr(err.text, "0x200000"), "%s", err.text);
        memset(buf, 0, sizeof buf);
        cr_assert_eq(sim_iommu_dma(s, 0x100010, buf, 9, false, NULL), 0);
        cr_assert_str_eq(buf, "pattern-A");
        close(fd);
        iommu_space_free(s);
}

Test(sim_iommu, vaddr_update_rules_and_dma_while_invalid) {
        IommuSpace *s = space(SIM_MAP_BY_ADDRESS);
        int fd = memfd(MiB);
        char buf[8] = {};

        IommuMapping a = mapping(fd, 0x100000, 0x1000, 0), b = mapping(fd, 0x200000, 0x2000, 0x1000);
        cr_assert_eq(s->ops->map(s, &a, NULL), 0);
        cr_assert_eq(s->ops->map(s, &b, NULL), 0);
        cr_assert(!a.by_file);
        cr_assert_not_null(a.vaddr, "by address: the daemon's own view is registered");
        memcpy(a.vaddr, "viewA", 5);
        cr_assert_eq(pread(fd, buf, 5, 0), 5);
        cr_assert_str_eq(buf, "viewA");

        cr_assert_eq(sim_iommu_change_process(s), -EINVAL, "CHANGE_PROCESS refused with address mappings");
        cr_assert_eq(sim_iommu_register_vaddr(s, 0x100000, 0x1000, a.vaddr), -EINVAL, "still valid");
        cr_assert_eq(sim_iommu_invalidate_vaddr_all(s), 0);
        cr_assert_eq(sim_iommu_invalidate_vaddr_all(s), -EINVAL, "already invalid");
        cr_assert_eq(sim_iommu_dma(s, 0x200000, "during", 6, true, NULL), 0, "DMA continues while invalid");
        cr_assert_eq(pread(fd, buf, 6, 0x1000), 6);
        cr_assert_eq(memcmp(buf, "during", 6), 0);

        void *view = mmap(NULL, 0x2000, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0x1000);
        cr_assert_neq(view, MAP_FAILED);
        cr_assert_eq(sim_iommu_register_vaddr(s, 0x200000, 0x1000, view), -ENOENT, "only the exact range");
        cr_assert_eq(sim_iommu_register_vaddr(s, 0x201000, 0x1000, view), -ENOENT);
        cr_assert_eq(sim_iommu_register_vaddr(s, 0x200000, 0x2000, view), 0);
        cr_assert_eq(memcmp(view, "during", 6), 0, "the new view sees the DMA: same memory");
        /* one valid, one invalid: invalidating all is refused and rolled back */
        cr_assert_eq(sim_iommu_invalidate_vaddr_all(s), -EINVAL);
        cr_assert_eq(sim_iommu_register_vaddr(s, 0x200000, 0x2000, view), -EINVAL, "rolled back: still valid");
        close(fd);
        iommu_space_free(s);
}

Test(sim_iommu, take_over_after_planned_stop_and_after_crash) {
        for (int prepared = 0; prepared < 2; prepared++)
                for (SimMappingStyle style = 0; style < _SIM_MAP_STYLE_MAX; style++) {
                        IommuSpace *old = space(style), *successor = space(style);
                        int fd = memfd(MiB);
                        ErrorMessage err = {};
                        char buf[8] = {};

                        IommuMapping m = mapping(fd, 0x400000, 0x4000, 0x4000);
                        cr_assert_eq(old->ops->map(old, &m, NULL), 0);
                        cr_assert_eq(sim_iommu_dma(old, 0x400000, "before", 6, true, NULL), 0);
                        if (prepared)
                                cr_assert_eq(old->ops->prepare_handover(old, &err), 0, "%s", err.text);
                        /* what the successor knows: the record, without the host address */
                        IommuMapping rec = m;
                        rec.vaddr = NULL;
                        IommuMapping *list[] = { &rec };
                        cr_assert_eq(successor->ops->take_over(successor, list, 1, prepared, &err), 0,
                                     "style %d prepared %d: %s", style, prepared, err.text);
                        iommu_space_free(old); /* the predecessor is gone */
                        cr_assert_eq(sim_iommu_dma(successor, 0x400000, buf, 6, false, NULL), 0);
                        cr_assert_eq(memcmp(buf, "before", 6), 0);
                        cr_assert_eq(sim_iommu_dma(successor, 0x403000, "after", 5, true, NULL), 0);
                        cr_assert_eq(pread(fd, buf, 5, 0x7000), 5);
                        cr_assert_eq(memcmp(buf, "after", 5), 0);
                        if (style == SIM_MAP_BY_ADDRESS) {
                                cr_assert_not_null(rec.vaddr, "the successor registered its own view");
                                cr_assert_eq(memcmp(rec.vaddr, "before", 6), 0);
                        }
                        close(fd);
                        iommu_space_free(successor);
                }
}

Test(sim_iommu, devices_and_names) {
        IommuSpace *s = space(SIM_MAP_BY_FILE);
        SimConfig c;
        VfioDev *d = NULL;
        ErrorMessage err = {};

        sim_config_init(&c);
        cr_assert_eq(sim_device_new("d", &c, &d, NULL), 0);
        cr_assert_eq(s->ops->attach_device(s, d, &err), 0);
        cr_assert_eq(s->ops->attach_device(s, d, &err), 0, "attaching twice is harmless");
        s->ops->detach_device(s, d);
        cr_assert(iommu_space_is_sim(s));
        cr_assert_str_eq(iommu_backend_to_string(IOMMU_BACKEND_LEGACY), "legacy");
        cr_assert_eq(iommu_backend_from_string("iommufd"), IOMMU_BACKEND_IOMMUFD);
        cr_assert_eq(iommu_backend_from_string("bogus"), _IOMMU_BACKEND_INVALID);
        cr_assert_eq(sim_mapping_style_from_string("by-address"), SIM_MAP_BY_ADDRESS);
        cr_assert_str_eq(s->ops->live_update(s) ? "x" : "", "x");
        vfio_dev_free(d);
        iommu_space_free(s);
}
