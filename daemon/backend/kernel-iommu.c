/* SPDX-License-Identifier: GPL-2.0-or-later */

/*
 * The kernel address spaces. What is known about the kernel's behaviour and where it was checked
 * is in reference/vfio-uapi.md (§3 type1 and VADDR, §4 iommufd) and reference/kernel-harness.md /
 * mtty-harness.md (measured on Debian's 6.1 and 6.12). The legacy paths run on a real kernel in
 * the VM tier (tests/vm: edu on vfio-pci for VADDR, mtty for mdev). Debian's kernels are built
 * without iommufd, so the iommufd paths here have run only against the unit tests' model of the
 * kernel, never against a real one.
 */

#include <assert.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "iommufd-uapi.h"
#include "kernel-internal.h"
#include "kernel-iommu.h"
#include "log.h"

/* How many IOVA ranges an error message names before it says "and N more". */
#define NAMED_RANGES_MAX 8

typedef struct KernelMap {
        uint64_t iova;
        uint64_t length;
        void *vaddr;      /* by address: our MAP_SHARED view of the range, or NULL */
        bool by_file;
} KernelMap;

typedef struct KernelSpace {
        IommuSpace base;
        KernelContext *context;
        KernelMap *maps;
        size_t n_maps, n_maps_allocated;
        KernelDevice **devices;
        size_t n_devices, n_devices_allocated;
        bool handover_prepared; /* host addresses invalidated / CHANGE_PROCESS checked for a successor */

        /* iommufd */
        uint32_t ioas_id;
        bool style_by_address;     /* new mappings go by address: the kernel lacks IOMMU_IOAS_MAP_FILE */
        bool restored;             /* the IOAS came from a predecessor ... */
        bool taken_over;           /* ... and take_over() has told us what is in it */
        uint32_t ioas_lost;        /* restored, but the predecessor's IOAS with this id was gone */
        uint32_t saved_by_address; /* restored: by-address mappings the predecessor had, until take_over() */

        /* legacy */
        KernelContainer *container;
        KernelGroup **groups;      /* every group in the container: they keep its IOMMU alive */
        size_t n_groups, n_groups_allocated;
} KernelSpace;

static const IommuSpaceOps iommufd_space_ops;
static const IommuSpaceOps legacy_space_ops;

static KernelSpace *to_kernel(IommuSpace *s) {
        return (KernelSpace *) s;
}

bool iommu_space_is_kernel(const IommuSpace *s) {
        return s && (s->ops == &iommufd_space_ops || s->ops == &legacy_space_ops);
}

static bool is_iommufd(const IommuSpace *s) {
        return s && s->ops == &iommufd_space_ops;
}

static bool is_legacy(const IommuSpace *s) {
        return s && s->ops == &legacy_space_ops;
}

int kernel_space_get_ioas_id(IommuSpace *s, uint32_t *ret) {
        if (!is_iommufd(s))
                return -EOPNOTSUPP;
        if (ret)
                *ret = to_kernel(s)->ioas_id;
        return 0;
}

int kernel_space_get_container_id(IommuSpace *s, unsigned *ret) {
        if (!is_legacy(s))
                return -EOPNOTSUPP;
        if (ret)
                *ret = to_kernel(s)->container ? to_kernel(s)->container->id : 0;
        return 0;
}

static int oom(ErrorMessage *err) {
        return error_setf(err, -ENOMEM, "Out of memory");
}

/* ---- Bookkeeping ---- */

static bool grow(void **array, size_t *allocated, size_t needed, size_t size) {
        void *p;
        size_t n;

        if (needed <= *allocated)
                return true;
        n = MAX(needed, MAX(*allocated * 2, (size_t) 8));
        p = reallocarray(*array, n, size);
        if (!p)
                return false;
        *array = p;
        *allocated = n;
        return true;
}

static ssize_t maps_find(KernelSpace *s, uint64_t iova, uint64_t length) {
        for (size_t i = 0; i < s->n_maps; i++)
                if (s->maps[i].iova == iova && s->maps[i].length == length)
                        return (ssize_t) i;
        return -1;
}

/* Room for one more, so that recording after the kernel said yes cannot fail. */
static bool maps_reserve(KernelSpace *s, size_t more) {
        return grow((void **) &s->maps, &s->n_maps_allocated, s->n_maps + more, sizeof *s->maps);
}

static void maps_append(KernelSpace *s, const KernelMap *m) {
        assert(s->n_maps < s->n_maps_allocated);
        s->maps[s->n_maps++] = *m;
}

static void view_release(void *vaddr, uint64_t length) {
        if (vaddr && munmap(vaddr, (size_t) length) < 0)
                log_debug_errno(errno, "munmap() of a mapping view failed, ignoring: %m");
}

static void maps_remove(KernelSpace *s, size_t i) {
        view_release(s->maps[i].vaddr, s->maps[i].length);
        memmove(s->maps + i, s->maps + i + 1, (s->n_maps - i - 1) * sizeof *s->maps);
        s->n_maps--;
}

static size_t maps_count_by_address(KernelSpace *s) {
        size_t n = 0;

        for (size_t i = 0; i < s->n_maps; i++)
                n += !s->maps[i].by_file;
        return n;
}

static ssize_t devices_find(KernelSpace *s, KernelDevice *k) {
        for (size_t i = 0; i < s->n_devices; i++)
                if (s->devices[i] == k)
                        return (ssize_t) i;
        return -1;
}

static bool devices_reserve(KernelSpace *s) {
        return grow((void **) &s->devices, &s->n_devices_allocated, s->n_devices + 1, sizeof *s->devices);
}

static void devices_append(KernelSpace *s, KernelDevice *k) {
        assert(s->n_devices < s->n_devices_allocated);
        s->devices[s->n_devices++] = k;
        k->space = &s->base;
}

static void devices_remove(KernelSpace *s, size_t i) {
        s->devices[i]->space = NULL;
        memmove(s->devices + i, s->devices + i + 1, (s->n_devices - i - 1) * sizeof *s->devices);
        s->n_devices--;
}

void kernel_space_forget_device(IommuSpace *space, VfioDev *d) {
        KernelSpace *s = to_kernel(space);
        KernelDevice *k = kernel_device_from_dev(d);
        ssize_t i;

        assert(iommu_space_is_kernel(space));
        if (!k)
                return;
        i = devices_find(s, k);
        if (i >= 0)
                devices_remove(s, (size_t) i);
}

static int space_new(KernelContext *c, IommuBackend backend, const IommuSpaceOps *ops, KernelSpace **ret) {
        KernelSpace *s;

        s = new0(KernelSpace, 1);
        if (!s)
                return -ENOMEM;
        s->base = (IommuSpace) { .ops = ops, .backend = backend };
        s->context = kernel_context_ref(c);
        *ret = s;
        return 0;
}

static void space_free_common(KernelSpace *s) {
        for (size_t i = 0; i < s->n_maps; i++)
                view_release(s->maps[i].vaddr, s->maps[i].length);
        free(s->maps);
        for (size_t i = 0; i < s->n_devices; i++)
                s->devices[i]->space = NULL;
        free(s->devices);
        kernel_context_unref(s->context);
        free(s);
}

/* ---- Mapping helpers ---- */

static int check_mapping(const IommuMapping *m, ErrorMessage *err) {
        if (m->fd < 0)
                return error_setf(err, -EBADF, "the mapping has no file");
        if (m->length == 0)
                return error_setf(err, -EINVAL, "the length is zero");
        if (!(m->access & (IOMMU_READ | IOMMU_WRITE)) || (m->access & ~(IOMMU_READ | IOMMU_WRITE)))
                return error_setf(err, -EINVAL, "access must be read and/or write");
        if (m->iova + m->length < m->iova || m->offset + m->length < m->offset)
                return error_setf(err, -EOVERFLOW, "the range wraps around");
        if (m->length > SIZE_MAX || m->offset > (uint64_t) INT64_MAX)
                return error_setf(err, -EOVERFLOW, "the range does not fit this machine's address space");
        return 0;
}

/* The daemon's MAP_SHARED view of the file range: what by-address mappings pin. The device may
 * write, so the view is writable when the mapping is (the kernel pins with FOLL_WRITE then). */
static int view_map(const IommuMapping *m, void **ret, ErrorMessage *err) {
        int prot = PROT_READ | (m->access & IOMMU_WRITE ? PROT_WRITE : 0);
        void *p;

        p = mmap(NULL, (size_t) m->length, prot, MAP_SHARED, m->fd, (off_t) m->offset);
        if (p == MAP_FAILED)
                return error_setf(err, -errno, "cannot map the file range 0x%llx+0x%llx into vfiomigd: %m",
                                  (unsigned long long) m->offset, (unsigned long long) m->length);
        *ret = p;
        return 0;
}

static int map_error(ErrorMessage *err, int r, const char *request, const IommuMapping *m) {
        unsigned long long iova = m->iova, length = m->length;

        switch (r) {
        case -EEXIST:
                return error_setf(err, r, "%s: IOVA 0x%llx+0x%llx overlaps a mapping the kernel already has", request,
                                  iova, length);
        case -ENOMEM:
                return error_setf(err, r, "%s of 0x%llx bytes at IOVA 0x%llx failed: %m (pinning them would exceed "
                                  "vfiomigd's RLIMIT_MEMLOCK? see LimitMEMLOCK= in vfiomigd.service)", request, length,
                                  iova);
        case -ENOSPC:
                return error_setf(err, r, "%s at IOVA 0x%llx failed: the IOMMU holds as many mappings as it allows "
                                  "(vfio_iommu_type1 dma_entry_limit)", request, iova);
        case -EINVAL:
        case -ERANGE:
                return error_setf(err, r, "%s refused IOVA 0x%llx+0x%llx: %m (outside the IOVA ranges the IOMMU "
                                  "allows, or not aligned to its page size?)", request, iova, length);
        default:
                return error_setf(err, r, "%s of IOVA 0x%llx+0x%llx failed: %m", request, iova, length);
        }
}

/* "0x100000+0x10000, 0x200000+0x1000 and 3 more" of the mappings with by_file == by_file. */
static void format_ranges(IommuMapping *const *mappings, size_t n, bool by_file, char *buf, size_t size) {
        size_t named = 0, total = 0, at = 0;

        buf[0] = 0;
        for (size_t i = 0; i < n; i++) {
                if (mappings[i]->by_file != by_file)
                        continue;
                total++;
                if (named >= NAMED_RANGES_MAX || at >= size)
                        continue;
                at += (size_t) snprintf(buf + at, size - at, "%s0x%llx+0x%llx", named > 0 ? ", " : "",
                                        (unsigned long long) mappings[i]->iova,
                                        (unsigned long long) mappings[i]->length);
                named++;
        }
        if (total > named && at < size)
                (void) snprintf(buf + at, size - at, " and %zu more", total - named);
}

/* Records the mappings a predecessor had (the core passes them to take_over()); ones already
 * recorded (take_over() in the same process after an aborted handover) are kept. */
static int record_taken_over(KernelSpace *s, IommuMapping *const *mappings, size_t n, size_t *ret_added) {
        size_t added = 0;

        if (!maps_reserve(s, n))
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                if (maps_find(s, mappings[i]->iova, mappings[i]->length) >= 0)
                        continue;
                maps_append(s, &(KernelMap) {
                        .iova = mappings[i]->iova,
                        .length = mappings[i]->length,
                        .by_file = mappings[i]->by_file,
                });
                added++;
        }
        if (ret_added)
                *ret_added = added;
        return 0;
}

/* ---- iommufd ---- */

/* Whether the kernel has IOMMU_IOAS_MAP_FILE, asked once per context in the way kernel-features.c
 * does: IOAS 0 never exists, so a kernel with the ioctl fails the lookup (ENOENT) after checking
 * the fields, one without it answers ENOTTY. Nothing is mapped either way. */
static void probe_map_file(KernelContext *c) {
        struct iommu_ioas_map_file map = {
                .size = sizeof map,
                .flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE,
                .ioas_id = 0,
                .fd = -1,
                .length = IOMMU_PAGE_SIZE,
        };
        int r;

        if (c->map_file >= 0 || c->iommufd < 0)
                return;
        r = kernel_ioctl(c, c->iommufd, IOMMU_IOAS_MAP_FILE, &map);
        if (r >= 0 || r == -ENOENT || r == -EBADF || r == -EINVAL)
                c->map_file = 1;
        else if (r == -ENOTTY)
                c->map_file = 0;
        else
                log_debug_errno(r, "Probing IOMMU_IOAS_MAP_FILE gave %m; the first mapping will tell.");
        if (c->map_file >= 0)
                log_debug("This kernel %s IOMMU_IOAS_MAP_FILE.", c->map_file ? "has" : "lacks");
}

/* Tells whether an IOAS exists: IOMMU_IOAS_IOVA_RANGES with room for no range answers EMSGSIZE
 * (or 0) for an IOAS and ENOENT for an id that is not one. 1 exists, 0 gone, <0 cannot tell. */
static int ioas_exists(KernelContext *c, uint32_t ioas_id) {
        struct iommu_ioas_iova_ranges ranges = { .size = sizeof ranges, .ioas_id = ioas_id };
        int r;

        r = kernel_ioctl(c, c->iommufd, IOMMU_IOAS_IOVA_RANGES, &ranges);
        if (r >= 0 || r == -EMSGSIZE)
                return 1;
        if (r == -ENOENT)
                return 0;
        return r;
}

static int ioas_alloc(KernelContext *c, uint32_t *ret, ErrorMessage *err) {
        struct iommu_ioas_alloc alloc = { .size = sizeof alloc };
        int r;

        r = kernel_ioctl(c, c->iommufd, IOMMU_IOAS_ALLOC, &alloc);
        if (r < 0)
                return error_setf(err, r, "IOMMU_IOAS_ALLOC failed: %m");
        *ret = alloc.out_ioas_id;
        return 0;
}

static void ioas_destroy(KernelContext *c, uint32_t ioas_id) {
        struct iommu_destroy d = { .size = sizeof d, .id = ioas_id };
        int r;

        r = kernel_ioctl(c, c->iommufd, IOMMU_DESTROY, &d);
        if (r < 0)
                log_debug_errno(r, "IOMMU_DESTROY of IOAS %u failed, ignoring: %m", ioas_id);
        else
                log_debug("Destroyed IOAS %u.", ioas_id);
}

int kernel_iommufd_space_new(KernelContext *c, IommuSpace **ret, ErrorMessage *err) {
        KernelSpace *s;
        uint32_t ioas_id = 0;
        int r;

        assert(c);
        assert(ret);

        r = kernel_context_get_iommufd(c, err);
        if (r < 0)
                return r;
        r = ioas_alloc(c, &ioas_id, err);
        if (r < 0)
                return r;
        r = space_new(c, IOMMU_BACKEND_IOMMUFD, &iommufd_space_ops, &s);
        if (r < 0) {
                ioas_destroy(c, ioas_id);
                return oom(err);
        }
        s->ioas_id = ioas_id;
        probe_map_file(c);
        s->style_by_address = c->map_file == 0;

        log_debug("Allocated IOAS %u (mappings %s).", ioas_id, s->style_by_address ? "by address" : "by file");
        *ret = &s->base;
        return 0;
}

static int iommufd_map(IommuSpace *space, IommuMapping *m, ErrorMessage *err) {
        KernelSpace *s = to_kernel(space);
        KernelContext *c = s->context;
        KernelMap km = { .iova = m->iova, .length = m->length };
        uint32_t flags = IOMMU_IOAS_MAP_FIXED_IOVA;
        int r;

        r = check_mapping(m, err);
        if (r < 0)
                return r;
        if (!maps_reserve(s, 1))
                return oom(err);
        if (m->access & IOMMU_READ)
                flags |= IOMMU_IOAS_MAP_READABLE;
        if (m->access & IOMMU_WRITE)
                flags |= IOMMU_IOAS_MAP_WRITEABLE;

        if (!s->style_by_address && c->map_file != 0) {
                struct iommu_ioas_map_file map = {
                        .size = sizeof map,
                        .flags = flags,
                        .ioas_id = s->ioas_id,
                        .fd = m->fd,
                        .start = m->offset,
                        .length = m->length,
                        .iova = m->iova,
                };

                r = kernel_ioctl(c, c->iommufd, IOMMU_IOAS_MAP_FILE, &map);
                if (r >= 0) {
                        c->map_file = 1;
                        km.by_file = true;
                        goto done;
                }
                if (r != -ENOTTY)
                        return map_error(err, r, "IOMMU_IOAS_MAP_FILE", m);
                c->map_file = 0;
                log_debug("This kernel lacks IOMMU_IOAS_MAP_FILE (Linux 6.13): IOAS %u maps by address from now on.",
                          s->ioas_id);
        }
        /* The fallback for kernels before 6.13: by the address of our view, which no successor can
         * take over (live_update() says so). */
        s->style_by_address = true;

        r = view_map(m, &km.vaddr, err);
        if (r < 0)
                return r;
        {
                struct iommu_ioas_map map = {
                        .size = sizeof map,
                        .flags = flags,
                        .ioas_id = s->ioas_id,
                        .user_va = (uint64_t) (uintptr_t) km.vaddr,
                        .length = m->length,
                        .iova = m->iova,
                };

                r = kernel_ioctl(c, c->iommufd, IOMMU_IOAS_MAP, &map);
                if (r < 0) {
                        view_release(km.vaddr, km.length);
                        return map_error(err, r, "IOMMU_IOAS_MAP", m);
                }
        }
        c->n_by_address++;

done:
        maps_append(s, &km);
        m->by_file = km.by_file;
        m->vaddr = km.vaddr;
        s->handover_prepared = false; /* the daemon goes on after all */
        log_debug("IOAS %u: mapped IOVA 0x%llx+0x%llx %s.", s->ioas_id, (unsigned long long) m->iova,
                  (unsigned long long) m->length, km.by_file ? "by file" : "by address");
        return 0;
}

static int iommufd_unmap(IommuSpace *space, IommuMapping *m, ErrorMessage *err) {
        KernelSpace *s = to_kernel(space);
        KernelContext *c = s->context;
        struct iommu_ioas_unmap unmap = {
                .size = sizeof unmap,
                .ioas_id = s->ioas_id,
                .iova = m->iova,
                .length = m->length,
        };
        ssize_t i = maps_find(s, m->iova, m->length);
        int r;

        /* The kernel is asked even for a range we have no record of: it is the authority, and it
         * refuses (ENOENT) anything but whole mappings. */
        r = kernel_ioctl(c, c->iommufd, IOMMU_IOAS_UNMAP, &unmap);
        if (r < 0) {
                if (r == -ENOENT)
                        return error_setf(err, r, "IOAS %u has no mapping at exactly IOVA 0x%llx+0x%llx", s->ioas_id,
                                          (unsigned long long) m->iova, (unsigned long long) m->length);
                return error_setf(err, r, "IOMMU_IOAS_UNMAP of IOVA 0x%llx+0x%llx failed: %m",
                                  (unsigned long long) m->iova, (unsigned long long) m->length);
        }
        if (unmap.length != m->length)
                log_debug("IOAS %u: unmapping 0x%llx+0x%llx removed 0x%llx bytes.", s->ioas_id,
                          (unsigned long long) m->iova, (unsigned long long) m->length,
                          (unsigned long long) unmap.length);
        if (i >= 0) {
                if (!s->maps[i].by_file && c->n_by_address > 0)
                        c->n_by_address--;
                maps_remove(s, (size_t) i);
        }
        m->vaddr = NULL;
        return 0;
}

static int iommufd_attach_device(IommuSpace *space, VfioDev *d, ErrorMessage *err) {
        KernelSpace *s = to_kernel(space);
        KernelDevice *k = kernel_device_from_dev(d);
        struct vfio_device_attach_iommufd_pt attach = { .argsz = sizeof attach, .pt_id = s->ioas_id };
        bool was_attached;
        int r;

        if (!k || d->backend != VFIO_BACKEND_IOMMUFD)
                return error_setf(err, -EINVAL, "%s was not opened through iommufd (a VFIO cdev): only such devices "
                                  "attach to an iommufd address space", d->name);
        if (k->space == space)
                return 0;
        if (k->space)
                return error_setf(err, -EBUSY, "%s is attached to another address space: detach it first", d->name);
        if (!devices_reserve(s))
                return oom(err);

        /* A device restored attached to this IOAS is attached in the kernel already. Attaching
         * again replaces the page table by the same one, which changes nothing; it also repairs
         * an attachment that was lost, so it is done, and its failure is not taken as the truth. */
        was_attached = k->attached_pt == s->ioas_id;

        r = kernel_ioctl(s->context, d->device_fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach);
        if (r < 0 && was_attached)
                log_debug_errno(r, "%s: attaching again to IOAS %u failed, keeping the attachment it was restored "
                                "with: %m", d->name, s->ioas_id);
        else if (r < 0)
                return error_setf(err, r, "VFIO_DEVICE_ATTACH_IOMMUFD_PT of %s to IOAS %u failed: %m%s", d->name,
                                  s->ioas_id,
                                  r == -EINVAL || r == -EBUSY ? " (is another device of its IOMMU group attached to "
                                                                "another address space?)" : "");
        else
                k->hwpt_id = attach.pt_id;
        k->attached_pt = s->ioas_id;
        devices_append(s, k);
        s->handover_prepared = false; /* the daemon goes on after all */
        log_debug("%s: attached to IOAS %u (HWPT %u).", d->name, s->ioas_id, k->hwpt_id);
        return 0;
}

static void iommufd_detach_device(IommuSpace *space, VfioDev *d) {
        KernelSpace *s = to_kernel(space);
        KernelDevice *k = kernel_device_from_dev(d);
        ssize_t i;

        if (!k)
                return;
        i = devices_find(s, k);
        if (i < 0)
                return;
        devices_remove(s, (size_t) i);

        /* After a prepared handover the attachment belongs to the successor: detaching now (the
         * core frees its devices on the way out) would stop the device's DMA in the middle of the
         * restart. Any later map or attach shows the daemon went on, and clears the flag. */
        if (s->handover_prepared) {
                log_debug("%s: leaving IOAS %u attached for the successor.", d->name, s->ioas_id);
                return;
        }
        if (k->attached_pt == s->ioas_id && d->device_fd >= 0) {
                struct vfio_device_detach_iommufd_pt detach = { .argsz = sizeof detach };
                int r = kernel_ioctl(s->context, d->device_fd, VFIO_DEVICE_DETACH_IOMMUFD_PT, &detach);
                if (r < 0)
                        log_debug_errno(r, "%s: VFIO_DEVICE_DETACH_IOMMUFD_PT failed, ignoring: %m", d->name);
        }
        k->attached_pt = 0;
        k->hwpt_id = 0;
}

static int change_process(KernelSpace *s, size_t n_by_file, ErrorMessage *err) {
        KernelContext *c = s->context;
        struct iommu_ioas_change_process change = { .size = sizeof change };
        int r;

        r = kernel_ioctl(c, c->iommufd, IOMMU_IOAS_CHANGE_PROCESS, &change);
        switch (r) {
        case 0:
                c->change_process = 1;
                return 0;
        case -ENOTTY:
                c->change_process = 0;
                return error_setf(err, -EOPNOTSUPP, "this kernel lacks IOMMU_IOAS_CHANGE_PROCESS (Linux 6.13): the "
                                  "%zu mapping%s by file of IOAS %u cannot change owner, so a restart of the daemon "
                                  "loses them", n_by_file, n_by_file == 1 ? "" : "s", s->ioas_id);
        case -EINVAL:
                if (c->n_by_address > 0)
                        return error_setf(err, r, "IOMMU_IOAS_CHANGE_PROCESS refused (EINVAL): %llu mapping%s of the "
                                          "daemon's iommufd %s by address, which cannot change owner, and it moves "
                                          "every mapping of the iommufd or none",
                                          (unsigned long long) c->n_by_address, c->n_by_address == 1 ? "" : "s",
                                          c->n_by_address == 1 ? "is" : "are");
                return error_setf(err, r, "IOMMU_IOAS_CHANGE_PROCESS refused (EINVAL): an address space of the "
                                  "daemon's iommufd has mappings by address, which cannot change owner, and it "
                                  "moves every mapping of the iommufd or none");
        case -ENOMEM:
                return error_setf(err, r, "IOMMU_IOAS_CHANGE_PROCESS failed: %m (charging the pinned pages to this "
                                  "process would exceed its RLIMIT_MEMLOCK? see LimitMEMLOCK= in vfiomigd.service)");
        default:
                return error_setf(err, r, "IOMMU_IOAS_CHANGE_PROCESS failed: %m");
        }
}

static int iommufd_prepare_handover(IommuSpace *space, ErrorMessage *err) {
        KernelSpace *s = to_kernel(space);
        size_t by_address = maps_count_by_address(s) + s->saved_by_address;
        int r;

        if (s->n_maps == 0 && s->saved_by_address == 0) {
                s->handover_prepared = true;
                return 0;
        }
        if (by_address > 0) {
                /* The kernel would refuse with EINVAL: say which and why. */
                return error_setf(err, -EOPNOTSUPP, "%zu mapping%s of IOAS %u %s by address (IOMMU_IOAS_MAP, as "
                                  "this kernel lacks IOMMU_IOAS_MAP_FILE, Linux 6.13), and only mappings by file can "
                                  "change owner (IOMMU_IOAS_CHANGE_PROCESS): a restart of the daemon loses them",
                                  by_address, by_address == 1 ? "" : "s", s->ioas_id, by_address == 1 ? "is" : "are");
        }

        /* In the old process a no-op when it succeeds: QEMU's pre-flight check, the same here. */
        r = change_process(s, s->n_maps, err);
        if (r < 0)
                return r;
        s->handover_prepared = true;
        return 0;
}

static int iommufd_take_over(IommuSpace *space, IommuMapping *const *mappings, size_t n, bool prepared,
                             ErrorMessage *err) {
        KernelSpace *s = to_kernel(space);
        KernelContext *c = s->context;
        size_t n_by_file = 0, n_by_address = 0, before;
        int r;

        before = maps_count_by_address(s);
        r = record_taken_over(s, mappings, n, NULL);
        if (r < 0)
                return oom(err);
        c->n_by_address += maps_count_by_address(s) - before;
        s->taken_over = true;
        s->saved_by_address = 0;
        for (size_t i = 0; i < n; i++) {
                if (mappings[i]->by_file)
                        n_by_file++;
                else
                        n_by_address++;
                mappings[i]->vaddr = NULL; /* by address, the predecessor's view is gone with it */
        }
        if (n == 0)
                return 0;

        if (s->ioas_lost > 0)
                return error_setf(err, -ENOENT, "IOAS %u no longer existed when the daemon restarted, so its %zu "
                                  "mapping%s lost", s->ioas_lost, n, n == 1 ? " is" : "s are");

        if (n_by_address > 0) {
                char ranges[512];

                /* They stay in the IOMMU (DMA continues), charged to the exited process, and emulated
                 * devices can no longer reach them: to own them, unmap and map them again. And
                 * while they exist, CHANGE_PROCESS refuses to move the others. */
                format_ranges(mappings, n, /* by_file= */ false, ranges, sizeof ranges);
                return error_setf(err, -EOPNOTSUPP, "%zu mapping%s of IOAS %u %s by address (this kernel lacks "
                                  "IOMMU_IOAS_MAP_FILE, Linux 6.13) and cannot change owner: IOVA %s", n_by_address,
                                  n_by_address == 1 ? "" : "s", s->ioas_id, n_by_address == 1 ? "was made" : "were made",
                                  ranges);
        }

        /* CHANGE_PROCESS moves every mapping of every IOAS of the iommufd: once per process. It
         * needs no preparation by the predecessor, so a crash is handled like a planned stop. */
        if (!c->change_process_done) {
                r = change_process(s, n_by_file, err);
                if (r < 0)
                        return r;
                c->change_process_done = true;
                log_debug("IOMMU_IOAS_CHANGE_PROCESS: the iommufd's mappings are charged to this process now%s.",
                          prepared ? "" : " (the predecessor did not stop cleanly)");
        }
        s->handover_prepared = false;
        return 0;
}

static const char *iommufd_live_update(IommuSpace *space) {
        KernelSpace *s = to_kernel(space);
        KernelContext *c = s->context;

        if (maps_count_by_address(s) > 0 || s->saved_by_address > 0 || s->style_by_address || c->map_file == 0)
                return "mappings by address: a restart of the daemon loses them "
                       "(this kernel lacks IOMMU_IOAS_MAP_FILE, Linux 6.13)";
        if (c->change_process == 0)
                return "mappings by file cannot change owner, so a restart of the daemon loses them: "
                       "this kernel lacks IOMMU_IOAS_CHANGE_PROCESS (Linux 6.13)";
        return "survives planned restarts and crashes: mappings are by file (IOMMU_IOAS_MAP_FILE) and "
               "change owner with IOMMU_IOAS_CHANGE_PROCESS";
}

static void iommufd_destroy(IommuSpace *space) {
        KernelSpace *s = to_kernel(space);
        KernelContext *c = s->context;
        size_t by_address = maps_count_by_address(s);

        c->n_by_address -= MIN(c->n_by_address, (uint64_t) by_address);
        /* Only an IOAS known to be empty goes: the core destroys spaces at exit too, and one that
         * holds mappings or devices, or whose predecessor's contents were never told to us, must
         * live on in the iommufd the fd store keeps. */
        if (!s->handover_prepared && s->n_maps == 0 && s->n_devices == 0 && (!s->restored || s->taken_over) &&
            c->iommufd >= 0)
                ioas_destroy(c, s->ioas_id);
        space_free_common(s);
}

static const IommuSpaceOps iommufd_space_ops = {
        .map = iommufd_map,
        .unmap = iommufd_unmap,
        .attach_device = iommufd_attach_device,
        .detach_device = iommufd_detach_device,
        .prepare_handover = iommufd_prepare_handover,
        .take_over = iommufd_take_over,
        .live_update = iommufd_live_update,
        .destroy = iommufd_destroy,
};

/* ---- legacy ---- */

int kernel_legacy_space_new(KernelContext *c, IommuSpace **ret, ErrorMessage *err) {
        KernelSpace *s;
        int r;

        assert(c);
        assert(ret);

        /* Nothing to open: the container comes with the first device. */
        r = space_new(c, IOMMU_BACKEND_LEGACY, &legacy_space_ops, &s);
        if (r < 0)
                return oom(err);
        *ret = &s->base;
        return 0;
}

static bool legacy_holds_group(KernelSpace *s, KernelGroup *g) {
        for (size_t i = 0; i < s->n_groups; i++)
                if (s->groups[i] == g)
                        return true;
        return false;
}

/* The space's own reference on a group in its container. */
static int legacy_hold_group(KernelSpace *s, KernelGroup *g) {
        if (legacy_holds_group(s, g))
                return 0;
        if (!grow((void **) &s->groups, &s->n_groups_allocated, s->n_groups + 1, sizeof *s->groups))
                return -ENOMEM;
        s->groups[s->n_groups++] = kernel_group_ref(g);
        return 0;
}

static void legacy_drop_container(KernelSpace *s) {
        if (!s->container)
                return;
        s->container->space = NULL;
        s->container = kernel_container_unref(s->container);
}

/* g left s's container (a move to another space): s lets it go, and its container too if that
 * is empty now (the kernel dropped its IOMMU with the last group). */
static void legacy_release_group(KernelSpace *s, KernelGroup *g) {
        for (size_t i = 0; i < s->n_groups; i++)
                if (s->groups[i] == g) {
                        memmove(s->groups + i, s->groups + i + 1, (s->n_groups - i - 1) * sizeof *s->groups);
                        s->n_groups--;
                        kernel_group_unref(g);
                        break;
                }
        if (s->container && s->container->n_groups == 0) {
                log_debug("VFIO container %u lost its last group: the address space has no IOMMU until a device is "
                          "attached again.", s->container->id);
                legacy_drop_container(s);
        }
}

/* Moves g into target, and settles which space holds it. */
static int legacy_move_group(KernelSpace *s, KernelGroup *g, KernelContainer *target, ErrorMessage *err) {
        KernelSpace *owner = g->container && g->container->space ? to_kernel(g->container->space) : NULL;
        int r;

        r = kernel_group_move(g, target, err);
        if (r < 0)
                return r;
        if (owner && owner != s)
                legacy_release_group(owner, g);
        return 0;
}

static int legacy_attach_device(IommuSpace *space, VfioDev *d, ErrorMessage *err) {
        KernelSpace *s = to_kernel(space);
        KernelContext *c = s->context;
        KernelDevice *k = kernel_device_from_dev(d);
        KernelContainer *old;
        KernelSpace *owner;
        KernelGroup *g;
        int r;

        if (!k || d->backend != VFIO_BACKEND_LEGACY)
                return error_setf(err, -EINVAL, "%s was not opened through the legacy VFIO group API: only such "
                                  "devices attach to a legacy address space", d->name);
        if (k->space == space)
                return 0;
        if (k->space)
                return error_setf(err, -EBUSY, "%s is attached to another address space: detach it first", d->name);
        /* Room first, so that nothing can fail once the group has moved. */
        if (!devices_reserve(s) ||
            !grow((void **) &s->groups, &s->n_groups_allocated, s->n_groups + 1, sizeof *s->groups))
                return oom(err);

        g = k->group;
        old = g->container;
        owner = old && old->space ? to_kernel(old->space) : NULL;

        /* Already in our container (another device of the group brought it, or it was restored
         * there): the kernel has nothing to do. */
        if (s->container && old == s->container)
                goto attached;

        if (owner && owner != s) {
                for (KernelDevice *i = g->devices; i; i = i->group_next)
                        if (i->space == old->space)
                                return error_setf(err, -EBUSY, "%s shares IOMMU group %u with %s, which is attached "
                                                  "to another address space: the devices of an IOMMU group share "
                                                  "one translation", d->name, g->number, i->dev.name);
                if (old->n_groups == 1 && owner->n_maps > 0)
                        return error_setf(err, -EBUSY, "IOMMU group %u of %s is the last group in the VFIO container "
                                          "of another address space, which has %zu mapping%s: moving the group "
                                          "out would make the kernel drop them", g->number, d->name, owner->n_maps,
                                          owner->n_maps == 1 ? "" : "s");
        }

        if (!s->container) {
                _cleanup_(kernel_container_unrefp) KernelContainer *fresh = NULL;

                /* The group's own container becomes ours if nothing else is in it or mapped by it;
                 * else the group moves into a new one. */
                if (old && !owner && old->n_groups == 1 && old->n_mappings == 0 && old->iommu_set) {
                        s->container = kernel_container_ref(old);
                        s->container->space = space;
                        log_debug("%s: its VFIO container %u becomes the address space's.", d->name, old->id);
                } else {
                        r = kernel_container_new(c, &fresh, err);
                        if (r < 0)
                                return r;
                        r = legacy_move_group(s, g, fresh, err);
                        if (r < 0)
                                return error_setf(err, r, "Cannot move IOMMU group %u of %s into a new VFIO "
                                                  "container: %m", g->number, d->name);
                        s->container = TAKE_PTR(fresh);
                        s->container->space = space;
                }
        } else {
                r = legacy_move_group(s, g, s->container, err);
                if (r < 0)
                        return error_setf(err, r, "Cannot move IOMMU group %u of %s into VFIO container %u: %m",
                                          g->number, d->name, s->container->id);
        }

        (void) legacy_hold_group(s, g); /* cannot fail: the room was reserved above */

attached:
        devices_append(s, k);
        log_debug("%s: attached to VFIO container %u (UPDATE_VADDR %s).", d->name, s->container->id,
                  s->container->update_vaddr ? "available" : "unavailable");
        return 0;
}

static void legacy_detach_device(IommuSpace *space, VfioDev *d) {
        KernelSpace *s = to_kernel(space);
        KernelDevice *k = kernel_device_from_dev(d);
        ssize_t i;

        if (!k)
                return;
        i = devices_find(s, k);
        if (i < 0)
                return;
        /* Bookkeeping only: type1 can take the group out of the container only with every device
         * of the group closed, and taking out the last group would drop every mapping. The group
         * stays in the space's container (the space holds it) until the device is attached to
         * another space, which moves it. */
        devices_remove(s, (size_t) i);
}

static int legacy_map(IommuSpace *space, IommuMapping *m, ErrorMessage *err) {
        KernelSpace *s = to_kernel(space);
        struct vfio_iommu_type1_dma_map map = { .argsz = sizeof map };
        void *view = NULL;
        int r;

        if (!s->container || !s->container->iommu_set)
                return error_setf(err, -EOPNOTSUPP, "a legacy address space gets its IOMMU from the first device "
                                  "attached: attach a device before mapping");
        r = check_mapping(m, err);
        if (r < 0)
                return r;
        if (!maps_reserve(s, 1))
                return oom(err);

        r = view_map(m, &view, err);
        if (r < 0)
                return r;
        map.flags = (m->access & IOMMU_READ ? VFIO_DMA_MAP_FLAG_READ : 0) |
                    (m->access & IOMMU_WRITE ? VFIO_DMA_MAP_FLAG_WRITE : 0);
        map.vaddr = (uint64_t) (uintptr_t) view;
        map.iova = m->iova;
        map.size = m->length;
        r = kernel_ioctl(s->context, s->container->fd, VFIO_IOMMU_MAP_DMA, &map);
        if (r < 0) {
                view_release(view, m->length);
                return map_error(err, r, "VFIO_IOMMU_MAP_DMA", m);
        }

        maps_append(s, &(KernelMap) { .iova = m->iova, .length = m->length, .vaddr = view });
        s->container->n_mappings++;
        m->by_file = false;
        m->vaddr = view;
        log_debug("VFIO container %u: mapped IOVA 0x%llx+0x%llx.", s->container->id, (unsigned long long) m->iova,
                  (unsigned long long) m->length);
        return 0;
}

static int legacy_unmap(IommuSpace *space, IommuMapping *m, ErrorMessage *err) {
        KernelSpace *s = to_kernel(space);
        ssize_t i = maps_find(s, m->iova, m->length);

        if (s->container && s->container->iommu_set) {
                struct vfio_iommu_type1_dma_unmap unmap = {
                        .argsz = sizeof unmap,
                        .iova = m->iova,
                        .size = m->length,
                };
                int r = kernel_ioctl(s->context, s->container->fd, VFIO_IOMMU_UNMAP_DMA, &unmap);
                if (r < 0)
                        return error_setf(err, r, "VFIO_IOMMU_UNMAP_DMA of IOVA 0x%llx+0x%llx failed: %m",
                                          (unsigned long long) m->iova, (unsigned long long) m->length);
                /* type1 reports what it removed; nothing means it had nothing there. */
                if (unmap.size == 0 && i < 0)
                        return error_setf(err, -ENOENT, "VFIO container %u has no mapping at IOVA 0x%llx+0x%llx",
                                          s->container->id, (unsigned long long) m->iova,
                                          (unsigned long long) m->length);
                if (unmap.size != m->length)
                        log_debug("VFIO container %u: unmapping 0x%llx+0x%llx removed 0x%llx bytes.", s->container->id,
                                  (unsigned long long) m->iova, (unsigned long long) m->length,
                                  (unsigned long long) unmap.size);
        } else if (i < 0)
                return error_setf(err, -ENOENT, "no mapping at IOVA 0x%llx+0x%llx", (unsigned long long) m->iova,
                                  (unsigned long long) m->length);
        else
                log_debug("The container of this address space lost its IOMMU, and the kernel its mappings.");

        if (i >= 0) {
                maps_remove(s, (size_t) i);
                if (s->container && s->container->n_mappings > 0)
                        s->container->n_mappings--;
        }
        m->vaddr = NULL;
        return 0;
}

/* Why the container offers no VADDR update, as the error for prepare_handover()/take_over(). */
static int legacy_no_vaddr(KernelSpace *s, size_t n, ErrorMessage *err) {
        unsigned mdev;

        if (kernel_container_has_mdev(s->container, &mdev))
                return error_setf(err, -EOPNOTSUPP, "legacy VADDR update is unavailable with mdev devices: IOMMU "
                                  "group %u, an mdev, is in VFIO container %u with this address space, so a restart "
                                  "of the daemon loses its %zu mapping%s", mdev, s->container->id, n,
                                  n == 1 ? "" : "s");
        return error_setf(err, -EOPNOTSUPP, "VFIO container %u does not offer VFIO_UPDATE_VADDR (the type1 IOMMU "
                          "predates Linux 5.12, or /dev/vfio/vfio is iommufd's compatibility container), so a "
                          "restart of the daemon loses its %zu mapping%s", s->container->id, n, n == 1 ? "" : "s");
}

/* UNMAP_DMA with VFIO_DMA_UNMAP_FLAG_VADDR: the host addresses become invalid; the pages stay
 * pinned and the IOMMU keeps translating, so DMA continues. */
static int legacy_invalidate(KernelSpace *s, bool all, uint64_t iova, uint64_t size) {
        struct vfio_iommu_type1_dma_unmap unmap = {
                .argsz = sizeof unmap,
                .flags = VFIO_DMA_UNMAP_FLAG_VADDR | (all ? VFIO_DMA_UNMAP_FLAG_ALL : 0),
                .iova = all ? 0 : iova,
                .size = all ? 0 : size,
        };

        return kernel_ioctl(s->context, s->container->fd, VFIO_IOMMU_UNMAP_DMA, &unmap);
}

static int legacy_prepare_handover(IommuSpace *space, ErrorMessage *err) {
        KernelSpace *s = to_kernel(space);
        int r;

        if (s->n_maps == 0) {
                s->handover_prepared = true;
                return 0;
        }
        if (!s->container || !s->container->iommu_set)
                return error_setf(err, -ENXIO, "the VFIO container of this address space has lost its IOMMU, and "
                                  "the kernel its mappings");

        /* Asked now, not at attach time: an mdev group may have joined since. */
        r = kernel_container_check_update_vaddr(s->container);
        if (r < 0)
                return error_setf(err, r, "VFIO_CHECK_EXTENSION(VFIO_UPDATE_VADDR) on VFIO container %u failed: %m",
                                  s->container->id);
        if (r == 0)
                return legacy_no_vaddr(s, s->n_maps, err);

        r = legacy_invalidate(s, /* all= */ true, 0, 0);
        if (r == -EINVAL && s->handover_prepared)
                return 0; /* invalid since our earlier call */
        if (r == -EBUSY)
                return legacy_no_vaddr(s, s->n_maps, err); /* an mdev group (6.3+ refuses) */
        if (r == -EINVAL)
                return error_setf(err, r, "VFIO container %u refused to invalidate its host addresses because some "
                                  "are invalid already (a handover that was not completed?)", s->container->id);
        if (r < 0)
                return error_setf(err, r, "VFIO_IOMMU_UNMAP_DMA(VFIO_DMA_UNMAP_FLAG_VADDR|ALL) on VFIO container %u "
                                  "failed: %m", s->container->id);

        s->handover_prepared = true;
        log_debug("VFIO container %u: %zu host address%s invalidated for a successor; DMA continues.",
                  s->container->id, s->n_maps, s->n_maps == 1 ? "" : "es");
        return 0;
}

/* Maps m's file again and registers the view as its host address (MAP_DMA with
 * VFIO_DMA_MAP_FLAG_VADDR: flags VADDR only, iova and size exactly as mapped). */
static int legacy_register(KernelSpace *s, IommuMapping *m, ErrorMessage *err) {
        struct vfio_iommu_type1_dma_map map = {
                .argsz = sizeof map,
                .flags = VFIO_DMA_MAP_FLAG_VADDR,
                .iova = m->iova,
                .size = m->length,
        };
        void *view = NULL;
        ssize_t i;
        int r;

        r = view_map(m, &view, err);
        if (r < 0)
                return r;
        map.vaddr = (uint64_t) (uintptr_t) view;

        r = kernel_ioctl(s->context, s->container->fd, VFIO_IOMMU_MAP_DMA, &map);
        if (r == -EINVAL) {
                /* The mapping's host address is still valid: that of a process that is gone (a
                 * predecessor that crashed, or a successor that crashed halfway through these
                 * registrations, after which the UNMAP(VADDR|ALL) of take_over() was refused and
                 * rolled back), or ours (take_over() after an aborted handover). Invalidating just
                 * this mapping and registering again is right in every case; a mapping whose
                 * range does not match the kernel's fails both steps and is reported. */
                int q = legacy_invalidate(s, /* all= */ false, m->iova, m->length);
                if (q >= 0)
                        r = kernel_ioctl(s->context, s->container->fd, VFIO_IOMMU_MAP_DMA, &map);
                else
                        log_debug_errno(q, "Invalidating the host address of IOVA 0x%llx alone failed: %m",
                                        (unsigned long long) m->iova);
        }
        if (r < 0) {
                view_release(view, m->length);
                if (r == -ENOENT)
                        return error_setf(err, r, "VFIO container %u has no mapping at exactly IOVA 0x%llx+0x%llx",
                                          s->container->id, (unsigned long long) m->iova,
                                          (unsigned long long) m->length);
                if (r == -ENOMEM)
                        return error_setf(err, r, "registering the host address of IOVA 0x%llx failed: %m (the "
                                          "pinned pages are charged to the new process and exceed its "
                                          "RLIMIT_MEMLOCK? see LimitMEMLOCK= in vfiomigd.service)",
                                          (unsigned long long) m->iova);
                return error_setf(err, r, "VFIO_IOMMU_MAP_DMA(VFIO_DMA_MAP_FLAG_VADDR) of IOVA 0x%llx+0x%llx "
                                  "failed: %m", (unsigned long long) m->iova, (unsigned long long) m->length);
        }

        i = maps_find(s, m->iova, m->length);
        assert(i >= 0);
        if (s->maps[i].vaddr != view)
                view_release(s->maps[i].vaddr, s->maps[i].length);
        s->maps[i].vaddr = view;
        m->by_file = false;
        m->vaddr = view;
        return 0;
}

static int legacy_take_over(IommuSpace *space, IommuMapping *const *mappings, size_t n, bool prepared,
                            ErrorMessage *err) {
        KernelSpace *s = to_kernel(space);
        size_t failed = 0;
        char ranges[512] = "";
        size_t at = 0;
        ErrorMessage first = {};
        int r, first_error = 0;

        if (n == 0)
                return 0;
        if (!s->container || !s->container->iommu_set)
                return error_setf(err, -ENXIO, "the VFIO container of this address space was not restored with an "
                                  "IOMMU, so its %zu mapping%s cannot be taken over", n, n == 1 ? "" : "s");
        r = record_taken_over(s, mappings, n, NULL);
        if (r < 0)
                return oom(err);
        s->container->n_mappings = s->n_maps;

        if (!prepared) {
                /* The predecessor crashed with its host addresses registered: invalidate them all. */
                r = legacy_invalidate(s, /* all= */ true, 0, 0);
                if (r == -EINVAL)
                        /* Some were invalid already: the predecessor crashed after preparing but before
                         * saying so, or a successor crashed while registering. The kernel rolled the
                         * call back; each registration below deals with its own mapping. */
                        log_debug("VFIO container %u: some host addresses were invalid already; registering each "
                                  "mapping on its own.", s->container->id);
                else if (r == -EBUSY || r == -ENOTTY || r == -EOPNOTSUPP)
                        return legacy_no_vaddr(s, n, err);
                else if (r < 0)
                        return error_setf(err, r, "VFIO_IOMMU_UNMAP_DMA(VFIO_DMA_UNMAP_FLAG_VADDR|ALL) on VFIO "
                                          "container %u failed: %m", s->container->id);
        }

        /* Every mapping is tried, so that as many as possible are ours; the failures are named. */
        for (size_t i = 0; i < n; i++) {
                ErrorMessage one = {};

                r = legacy_register(s, mappings[i], &one);
                if (r >= 0)
                        continue;
                if (failed == 0) {
                        first = one;
                        first_error = r;
                }
                failed++;
                if (failed <= NAMED_RANGES_MAX && at < sizeof ranges)
                        at += (size_t) snprintf(ranges + at, sizeof ranges - at, "%s0x%llx+0x%llx",
                                                failed > 1 ? ", " : "", (unsigned long long) mappings[i]->iova,
                                                (unsigned long long) mappings[i]->length);
        }
        if (failed > 0) {
                if (failed > NAMED_RANGES_MAX && at < sizeof ranges)
                        (void) snprintf(ranges + at, sizeof ranges - at, " and %zu more", failed - NAMED_RANGES_MAX);
                return error_setf(err, first_error, "%zu of %zu mapping%s could not be taken over (IOVA %s): %s",
                                  failed, n, n == 1 ? "" : "s", ranges, first.text);
        }

        s->handover_prepared = false;
        log_debug("VFIO container %u: registered new host addresses for %zu mapping%s.", s->container->id, n,
                  n == 1 ? "" : "s");
        return 0;
}

static const char *legacy_live_update(IommuSpace *space) {
        KernelSpace *s = to_kernel(space);

        if (!s->container || !s->container->iommu_set)
                return "nothing to keep yet: a legacy address space gets its IOMMU, and can map, once a device is "
                       "attached";
        if (s->container->update_vaddr)
                return "survives planned restarts and crashes: host addresses are invalidated "
                       "(VFIO_DMA_UNMAP_FLAG_VADDR) and registered anew by the successor";
        if (kernel_container_has_mdev(s->container, NULL))
                return "a restart of the daemon loses these mappings: legacy VADDR update is unavailable with mdev "
                       "devices in the container";
        return "a restart of the daemon loses these mappings: the VFIO container lacks VFIO_UPDATE_VADDR "
               "(Linux 5.12, and only the real type1 IOMMU has it)";
}

static void legacy_destroy(IommuSpace *space) {
        KernelSpace *s = to_kernel(space);

        /* No unmapping: see kernel-iommu.h. The container must not name us once we are gone. */
        if (s->container)
                s->container->space = NULL;
        for (size_t i = 0; i < s->n_groups; i++)
                kernel_group_unref(s->groups[i]);
        free(s->groups);
        s->container = kernel_container_unref(s->container);
        space_free_common(s);
}

static const IommuSpaceOps legacy_space_ops = {
        .map = legacy_map,
        .unmap = legacy_unmap,
        .attach_device = legacy_attach_device,
        .detach_device = legacy_detach_device,
        .prepare_handover = legacy_prepare_handover,
        .take_over = legacy_take_over,
        .live_update = legacy_live_update,
        .destroy = legacy_destroy,
};

/* ---- Saving and restoring ---- */

static void json_putp(json_object **o) {
        if (*o)
                json_object_put(*o);
}

int kernel_space_save(IommuSpace *space, json_object **ret) {
        _cleanup_(json_putp) json_object *o = json_object_new_object();
        KernelSpace *s = to_kernel(space);
        int r;

        assert(ret);

        if (!iommu_space_is_kernel(space))
                return -EOPNOTSUPP;
        if (!o)
                return -ENOMEM;

        r = kjson_add_string(o, "backend", iommu_backend_to_string(space->backend));
        if (r < 0)
                return r;
        if (is_iommufd(space)) {
                size_t by_address = maps_count_by_address(s) + s->saved_by_address;

                r = kjson_add_u64(o, "ioas-id", s->ioas_id);
                if (r >= 0)
                        r = kjson_add_string(o, "mapping-style",
                                             s->style_by_address || by_address > 0 ? "by-address" : "by-file");
                if (r >= 0)
                        r = kjson_add_u64(o, "by-address-mappings", by_address);
        } else
                r = s->container ? kjson_add_u64(o, "container", s->container->id) : kjson_add_null(o, "container");
        if (r < 0)
                return r;

        *ret = TAKE_PTR(o);
        return 0;
}

static int iommufd_space_restore(KernelContext *c, json_object *saved, IommuSpace **ret, ErrorMessage *err) {
        const char *style;
        uint32_t ioas_id, by_address = 0;
        KernelSpace *s;
        int r;

        r = kjson_get_u32(saved, "ioas-id", "an iommufd address space", &ioas_id, err);
        if (r < 0)
                return r;
        if (ioas_id == 0)
                return error_setf(err, -EINVAL, "the saved state of an iommufd address space is malformed: "
                                  "\"ioas-id\" must be a positive integer");
        r = kjson_get_string(saved, "mapping-style", "an iommufd address space", &style, err);
        if (r >= 0)
                r = kjson_get_u32_opt(saved, "by-address-mappings", "an iommufd address space", &by_address, err);
        if (r < 0)
                return r;
        if (!streq(style, "by-file") && !streq(style, "by-address"))
                return error_setf(err, -EINVAL, "the saved state of IOAS %u is malformed: \"mapping-style\" must be "
                                  "\"by-file\" or \"by-address\"", ioas_id);
        if (c->iommufd < 0)
                return error_setf(err, -ENXIO, "IOAS %u lives in the daemon's iommufd, which was not restored", ioas_id);

        r = space_new(c, IOMMU_BACKEND_IOMMUFD, &iommufd_space_ops, &s);
        if (r < 0)
                return oom(err);
        s->ioas_id = ioas_id;
        s->restored = true;
        s->style_by_address = streq(style, "by-address");
        s->saved_by_address = by_address;
        if (s->style_by_address && c->map_file < 0)
                c->map_file = 0; /* the same kernel answered ENOTTY to our predecessor */

        /* An IOAS destroyed since (its space was empty when the predecessor exited without
         * preparing) is replaced, so that the space works; take_over() reports any mapping that
         * was expected in it. */
        r = ioas_exists(c, ioas_id);
        if (r == 0) {
                uint32_t fresh = 0;

                r = ioas_alloc(c, &fresh, err);
                if (r < 0) {
                        iommu_space_free(&s->base);
                        return r;
                }
                log_debug("IOAS %u no longer exists; replaced by IOAS %u.", ioas_id, fresh);
                s->ioas_lost = ioas_id;
                s->ioas_id = fresh;
                s->restored = false;
        } else if (r < 0)
                log_debug_errno(r, "Cannot tell whether IOAS %u exists, adopting it: %m", ioas_id);

        *ret = &s->base;
        return 0;
}

static int legacy_space_restore(KernelContext *c, json_object *saved, IommuSpace **ret, ErrorMessage *err) {
        _cleanup_(iommu_space_freep) IommuSpace *space = NULL;
        KernelContainer *k = NULL;
        KernelSpace *s;
        uint32_t id = 0;
        int r;

        r = kjson_get_u32_opt(saved, "container", "a legacy address space", &id, err);
        if (r < 0)
                return r;
        if (r > 0) {
                for (KernelContainer *i = c->containers; i; i = i->next)
                        if (i->id == id)
                                k = i;
                if (!k)
                        return error_setf(err, -ENXIO, "VFIO container %u of a legacy address space was not restored "
                                          "with the kernel objects", id);
                if (k->space)
                        return error_setf(err, -EBUSY, "VFIO container %u is claimed by two address spaces", id);
        }

        r = space_new(c, IOMMU_BACKEND_LEGACY, &legacy_space_ops, &s);
        if (r < 0)
                return oom(err);
        space = &s->base;

        if (k) {
                s->container = kernel_container_ref(k);
                k->space = space;
                k->n_mappings = 0; /* take_over() counts them */
                for (KernelGroup *g = c->groups; g; g = g->next)
                        if (g->container == k) {
                                r = legacy_hold_group(s, g);
                                if (r < 0)
                                        return oom(err);
                        }
        }

        *ret = TAKE_PTR(space);
        return 0;
}

int kernel_space_restore(KernelContext *c, json_object *saved, IommuSpace **ret, ErrorMessage *err) {
        const char *backend;
        int r;

        assert(c);
        assert(ret);

        if (!json_object_is_type(saved, json_type_object))
                return error_setf(err, -EINVAL, "the saved state of a kernel address space is malformed: not an object");
        r = kjson_get_string(saved, "backend", "a kernel address space", &backend, err);
        if (r < 0)
                return r;
        switch (iommu_backend_from_string(backend)) {
        case IOMMU_BACKEND_IOMMUFD:
                return iommufd_space_restore(c, saved, ret, err);
        case IOMMU_BACKEND_LEGACY:
                return legacy_space_restore(c, saved, ret, err);
        default:
                return error_setf(err, -EINVAL, "the saved state of a kernel address space is malformed: unknown "
                                  "backend \"%s\"", backend);
        }
}
