/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "address-space.h"
#include "log.h"
#include "manager.h"

int address_space_new(Manager *m, const char *id, IommuSpace *iommu, AddressSpace **ret) {
        AddressSpace *s;

        s = new0(AddressSpace, 1);
        if (!s)
                return -ENOMEM;
        s->id = strdup(id);
        if (!s->id) {
                free(s);
                return -ENOMEM;
        }
        s->manager = m;
        s->iommu = iommu;
        *ret = s;
        return 0;
}

static void mapping_free(Mapping *m) {
        if (!m)
                return;
        safe_close(m->m.fd);
        free(m);
}

AddressSpace *address_space_free(AddressSpace *s) {
        if (!s)
                return NULL;
        /* Backends never unmap in destroy(): at exit before a restart the translations must
         * survive for the successor, and a space destroyed on request is empty already. */
        iommu_space_free(s->iommu);
        for (size_t i = 0; i < s->n_mappings; i++)
                mapping_free(s->mappings[i]);
        free(s->mappings);
        free(s->handover_problem);
        free(s->saved_mappings);
        free(s->id);
        free(s);
        return NULL;
}

int access_from_strv(char **names, uint32_t *ret, ErrorMessage *err) {
        uint32_t access = 0;

        for (char **n = names; n && *n; n++) {
                if (streq(*n, "read"))
                        access |= IOMMU_READ;
                else if (streq(*n, "write"))
                        access |= IOMMU_WRITE;
                else
                        return error_setf(err, -EINVAL, "unknown access '%s' (known: read, write)", *n);
        }
        if (access == 0)
                return error_setf(err, -EINVAL, "access must name read and/or write");
        *ret = access;
        return 0;
}

int access_to_strv(uint32_t access, char ***ret) {
        char **l = new0(char *, 3);
        size_t n = 0;

        if (!l)
                return -ENOMEM;
        if (access & IOMMU_READ)
                l[n++] = strdup("read");
        if (access & IOMMU_WRITE)
                l[n++] = strdup("write");
        for (size_t i = 0; i < n; i++)
                if (!l[i]) {
                        strv_free(l);
                        return -ENOMEM;
                }
        *ret = l;
        return 0;
}

static bool page_aligned(uint64_t v) {
        return (v & (IOMMU_PAGE_SIZE - 1)) == 0;
}

/* Ranges by their last byte, so that one ending at 2^64 - 1 is representable, as in the kernel. */
static uint64_t last_byte(uint64_t start, uint64_t length) {
        return start + length - 1;
}

static bool ranges_overlap(uint64_t a, uint64_t a_len, uint64_t b, uint64_t b_len) {
        return a <= last_byte(b, b_len) && b <= last_byte(a, a_len);
}

static bool range_inside(uint64_t inner, uint64_t inner_len, uint64_t outer, uint64_t outer_len) {
        return inner >= outer && last_byte(inner, inner_len) <= last_byte(outer, outer_len);
}

int address_space_check_map(AddressSpace *s, const MapRequest *req, ErrorMessage *err) {
        const ManagerOptions *o = &s->manager->options;
        struct stat st;
        int flags;

        if (fstat(req->fd, &st) < 0)
                return error_setf(err, -errno, "cannot examine the file descriptor: %m");
        if (!S_ISREG(st.st_mode))
                return error_setf(err, -EINVAL,
                                  "the file descriptor is a %s, not a memfd or regular file",
                                  S_ISSOCK(st.st_mode) ? "socket" : S_ISFIFO(st.st_mode) ? "pipe" :
                                  S_ISCHR(st.st_mode)  ? "character device" : S_ISDIR(st.st_mode) ? "directory" :
                                                         "special file");
        flags = fcntl(req->fd, F_GETFL);
        if (flags < 0)
                return error_setf(err, -errno, "cannot examine the file descriptor: %m");
        if ((flags & O_PATH) == O_PATH)
                return error_setf(err, -EINVAL, "the file descriptor was opened with O_PATH");
        if ((flags & O_ACCMODE) == O_WRONLY)
                return error_setf(err, -EINVAL, "the file is open write-only; mapping it needs read access");
        if ((req->access & IOMMU_WRITE) && (flags & O_ACCMODE) != O_RDWR)
                return error_setf(err, -EINVAL, "the file is open read-only; device writes need it open read-write");
        if (req->access == 0 || (req->access & ~(IOMMU_READ | IOMMU_WRITE)))
                return error_setf(err, -EINVAL, "access must name read and/or write");
        if (req->length == 0)
                return error_setf(err, -EINVAL, "the length is zero");
        if (!page_aligned(req->offset) || !page_aligned(req->length) || !page_aligned(req->iova))
                return error_setf(err, -EINVAL, "offset, length and iova must be multiples of %u", IOMMU_PAGE_SIZE);
        if (last_byte(req->iova, req->length) < req->iova || last_byte(req->offset, req->length) < req->offset)
                return error_setf(err, -EINVAL, "the range wraps around the end of the address space");
        if (last_byte(req->offset, req->length) >= (uint64_t) st.st_size)
                return error_setf(err, -EINVAL, "offset 0x%llx + length 0x%llx ends beyond the file (%lld bytes)",
                                  (unsigned long long) req->offset, (unsigned long long) req->length,
                                  (long long) st.st_size);

        for (size_t i = 0; i < s->n_mappings; i++) {
                const IommuMapping *e = &s->mappings[i]->m;
                if (ranges_overlap(req->iova, req->length, e->iova, e->length))
                        return error_setf(err, -EEXIST, "IOVA 0x%llx+0x%llx overlaps the mapping at 0x%llx+0x%llx",
                                          (unsigned long long) req->iova, (unsigned long long) req->length,
                                          (unsigned long long) e->iova, (unsigned long long) e->length);
        }

        if (s->n_mappings >= o->max_mappings)
                return error_setf(err, -E2BIG, "the address space holds %zu mappings, the maximum (max-mappings)",
                                  s->n_mappings);
        if (manager_pinned_bytes(s->manager) + req->length > o->max_pinned_bytes)
                return error_setf(err, -E2BIG,
                                  "mapping %llu bytes would pin more than the %llu bytes allowed (max-pinned-bytes)",
                                  (unsigned long long) req->length, (unsigned long long) o->max_pinned_bytes);
        return 0;
}

int address_space_map(AddressSpace *s, const MapRequest *req, Mapping **ret, ErrorMessage *err) {
        _cleanup_free_ Mapping *m = NULL;
        Mapping **mappings;
        size_t at = 0;
        int r;

        r = address_space_check_map(s, req, err);
        if (r < 0)
                return r;

        m = new0(Mapping, 1);
        if (!m)
                return -ENOMEM;
        m->m = (IommuMapping) {
                .iova = req->iova,
                .length = req->length,
                .offset = req->offset,
                .access = req->access,
        };
        m->m.fd = fcntl(req->fd, F_DUPFD_CLOEXEC, 3);
        if (m->m.fd < 0)
                return error_setf(err, -errno, "cannot keep the file: %m");

        mappings = reallocarray(s->mappings, s->n_mappings + 1, sizeof *mappings);
        if (!mappings) {
                safe_close(m->m.fd);
                return -ENOMEM;
        }
        s->mappings = mappings;

        r = s->iommu->ops->map(s->iommu, &m->m, err);
        if (r < 0) {
                safe_close(m->m.fd);
                return error_setf(err, r, "the IOMMU refused the mapping: %m");
        }

        m->serial = s->next_serial++;
        while (at < s->n_mappings && s->mappings[at]->m.iova < m->m.iova)
                at++;
        memmove(s->mappings + at + 1, s->mappings + at, (s->n_mappings - at) * sizeof *mappings);
        s->mappings[at] = m;
        s->n_mappings++;
        s->pinned_bytes += m->m.length;

        log_info("%s: mapped 0x%llx bytes at IOVA 0x%llx (file offset 0x%llx, %s%s, %s).", s->id,
                 (unsigned long long) m->m.length, (unsigned long long) m->m.iova, (unsigned long long) m->m.offset,
                 m->m.access & IOMMU_READ ? "r" : "", m->m.access & IOMMU_WRITE ? "w" : "",
                 m->m.by_file ? "by file" : "by address");
        manager_notify_space_changed(s->manager, s);
        if (ret)
                *ret = m;
        TAKE_PTR(m);
        return 0;
}

int address_space_check_unmap(AddressSpace *s, uint64_t iova, uint64_t length, ErrorMessage *err) {
        size_t covered = 0;

        if (length == 0 || !page_aligned(iova) || !page_aligned(length))
                return error_setf(err, -EINVAL, "iova and length must be non-zero multiples of %u", IOMMU_PAGE_SIZE);
        if (last_byte(iova, length) < iova)
                return error_setf(err, -EINVAL, "the range wraps around the end of the address space");

        for (size_t i = 0; i < s->n_mappings; i++) {
                const IommuMapping *e = &s->mappings[i]->m;
                bool overlaps = ranges_overlap(iova, length, e->iova, e->length);
                bool inside = range_inside(e->iova, e->length, iova, length);
                if (overlaps && !inside)
                        return error_setf(err, -EEXIST,
                                          "0x%llx+0x%llx would split the mapping at 0x%llx+0x%llx: unmap whole mappings",
                                          (unsigned long long) iova, (unsigned long long) length,
                                          (unsigned long long) e->iova, (unsigned long long) e->length);
                covered += inside;
        }
        if (covered == 0)
                return error_setf(err, -ENOENT, "nothing is mapped in 0x%llx+0x%llx", (unsigned long long) iova,
                                  (unsigned long long) length);
        return 0;
}

int address_space_unmap(AddressSpace *s, uint64_t iova, uint64_t length, ErrorMessage *err) {
        int r;

        r = address_space_check_unmap(s, iova, length, err);
        if (r < 0)
                return r;

        for (size_t i = 0; i < s->n_mappings;) {
                Mapping *m = s->mappings[i];
                if (!range_inside(m->m.iova, m->m.length, iova, length)) {
                        i++;
                        continue;
                }
                r = s->iommu->ops->unmap(s->iommu, &m->m, err);
                if (r < 0) {
                        /* What was unmapped before stays unmapped; the rest stays mapped. */
                        manager_notify_space_changed(s->manager, s);
                        return error_setf(err, r, "the IOMMU refused to unmap 0x%llx+0x%llx: %m",
                                          (unsigned long long) m->m.iova, (unsigned long long) m->m.length);
                }
                log_info("%s: unmapped 0x%llx bytes at IOVA 0x%llx.", s->id, (unsigned long long) m->m.length,
                         (unsigned long long) m->m.iova);
                s->pinned_bytes -= m->m.length;
                memmove(s->mappings + i, s->mappings + i + 1, (s->n_mappings - i - 1) * sizeof *s->mappings);
                s->n_mappings--;
                mapping_free(m);
        }
        /* A take-over problem concerns the mappings present at the restart: none are left. */
        if (s->n_mappings == 0)
                s->handover_problem = mfree(s->handover_problem);
        manager_notify_space_changed(s->manager, s);
        return 0;
}

size_t address_space_device_count(AddressSpace *s) {
        size_t n = 0;

        for (size_t i = 0; i < s->manager->n_devices; i++)
                n += s->manager->devices[i]->space == s;
        return n;
}

const char *address_space_live_update(AddressSpace *s) {
        if (!manager_has_fd_store(s->manager))
                return "lost on restart: vfiomigd is not running under a service manager, so it has no file "
                       "descriptor store to keep them in";
        if (s->handover_problem)
                return s->handover_problem;
        return s->iommu->ops->live_update(s->iommu);
}
