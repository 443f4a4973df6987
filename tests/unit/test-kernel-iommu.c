/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The kernel address spaces and the saving/restoring of kernel objects, without a kernel.
 *
 * Two kinds of tests:
 *  - with nothing behind the descriptors: contexts whose dev_root is an empty directory, and
 *    /dev/null or memfds standing in for the iommufd, container, group and device fds. These
 *    check the argument handling, the JSON and descriptor names, and the refusals that need no
 *    kernel.
 *  - against a model of the kernel (fake_ioctl below, installed through KernelContextOptions.ioctl)
 *    built from what reference/vfio-uapi.md and the VM prototypes report: the group moves, the
 *    VADDR invalidate/register sequences, CHANGE_PROCESS, the fallback to mapping by address.
 *    They prove the backend's bookkeeping and ioctl sequences against our reading of the
 *    kernel, not the kernel.
 *
 * Not tested here, because only a kernel can say: that UNSET_CONTAINER is refused (EBUSY) while a
 * device of the group is open anywhere and that reopening with GET_DEVICE_FD works afterwards;
 * that SET_CONTAINER replays mappings and refuses while host addresses are invalid; the real
 * answers of CHECK_EXTENSION(VFIO_UPDATE_VADDR); the EINVAL/EBUSY/ENOENT rules of the VADDR
 * calls; the locked_vm move of MAP_DMA(VADDR) (6.3+); DMA continuing throughout. Those run in the
 * VM tier (tests/vm: Debian 6.12 under QEMU, edu on vfio-pci for legacy VADDR, mtty for mdev).
 * Debian's kernels are built without iommufd, so the iommufd paths (IOAS_ALLOC, ATTACH/DETACH_PT,
 * IOAS_MAP_FILE and IOAS_CHANGE_PROCESS of Linux 6.13, the replace-by-same-IOAS on re-attach)
 * have no real-kernel test anywhere.
 */

#include <criterion/criterion.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "iommufd-uapi.h"
#include "kernel-iommu.h"
#include "sim-device.h"
#include "strv.h"

#define MiB (UINT64_C(1) << 20)
#define MDEV_UUID "11111111-2222-3333-4444-00000000000a"

static char root[256];

static void json_putp(json_object **o) {
        if (*o)
                json_object_put(*o);
}

/* ---- the temporary tree ---- */

static _printf_(1, 2) const char *at(const char *format, ...) {
        static char buf[8][PATH_MAX];
        static unsigned slot;
        char rel[1024];
        char *p = buf[slot++ % 8];
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(rel, sizeof rel, format, ap);
        va_end(ap);
        (void) snprintf(p, PATH_MAX, "%s/%s", root, rel);
        return p;
}

static void mkdir_p(const char *rel) {
        char path[PATH_MAX];

        (void) snprintf(path, sizeof path, "%s/%s", root, rel);
        for (char *s = path + strlen(root) + 1; *s; s++)
                if (*s == '/') {
                        *s = 0;
                        cr_assert(mkdir(path, 0755) >= 0 || errno == EEXIST, "mkdir %s: %m", path);
                        *s = '/';
                }
        cr_assert(mkdir(path, 0755) >= 0 || errno == EEXIST, "mkdir %s: %m", path);
}

static void touch(const char *rel) {
        int fd = open(at("%s", rel), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        cr_assert(fd >= 0, "create %s: %m", rel);
        close(fd);
}

static void link_rel(const char *target, const char *rel) {
        cr_assert(symlink(target, at("%s", rel)) >= 0, "symlink %s: %m", rel);
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

/* ---- a model of the kernel ---- */

#define FAKE_MAX 32

typedef struct FakeMap {
        uint64_t iova, size, vaddr;
        bool valid;     /* type1: the host address is valid */
        bool by_file;   /* iommufd */
} FakeMap;

typedef struct FakeContainer {
        bool iommu;
        FakeMap maps[FAKE_MAX];
        int n_maps;
} FakeContainer;

typedef struct FakeDevice {
        char name[64];
        unsigned group;
        char cdev[16];
        bool mdev;
        bool bound;
        uint32_t devid;
        uint32_t pt;
        /* Like mtty: VFIO_DEVICE_RESET implemented without VFIO_DEVICE_FLAGS_RESET in the info. */
        bool reset_unadvertised;
        int reset_errno;             /* what VFIO_DEVICE_RESET fails with, 0 for success */
        unsigned resets;
        /* Migration, as vfio_main.c of Linux 7.2 answers it: VFIO_DEVICE_FEATURE_MIGRATION GET
         * (ENOTTY when 0), and the PRECOPY_INFOv2 SET, EINVAL without PRE_COPY, or precopy_v2_errno
         * (a kernel before 7.2 hands feature 12 to the driver: ENOTTY, or EINVAL from an older core
         * for a driver without device features, such as mtty). */
        uint32_t mig_flags;
        int precopy_v2_errno;
        unsigned precopy_v2_sets;
} FakeDevice;

typedef struct FakeIoas {
        bool exists;
        FakeMap maps[FAKE_MAX];
        int n_maps;
} FakeIoas;

static struct {
        FakeContainer containers[FAKE_MAX]; /* by id, 1-based; the id is the open file's offset */
        int n_containers;
        int group_container[FAKE_MAX];      /* by group number: the container id, 0 none */
        FakeDevice devices[FAKE_MAX];
        int n_devices;
        FakeIoas ioas[FAKE_MAX];            /* by id, 1-based */
        int n_ioas;
        uint32_t next_devid;
        bool has_map_file, has_change_process;
        uint32_t precopy_flags;             /* what VFIO_MIG_GET_PRECOPY_INFO adds to the flags it echoes */
        int change_process_calls;
        char log[8192];                     /* the requests that changed something, in order */
} fake;

static _printf_(1, 2) void fake_log(const char *format, ...) {
        size_t n = strlen(fake.log);
        va_list ap;

        va_start(ap, format);
        (void) vsnprintf(fake.log + n, sizeof fake.log - n, format, ap);
        va_end(ap);
        n = strlen(fake.log);
        if (n + 1 < sizeof fake.log) {
                fake.log[n] = ' ';
                fake.log[n + 1] = 0;
        }
}

static void fake_add_device(const char *name, unsigned group, const char *cdev, bool mdev) {
        FakeDevice *d = &fake.devices[fake.n_devices++];

        *d = (FakeDevice) { .group = group, .mdev = mdev };
        (void) snprintf(d->name, sizeof d->name, "%s", name);
        (void) snprintf(d->cdev, sizeof d->cdev, "%s", cdev ?: "");
        mkdir_p("devfiles");
        touch(at("devfiles/%s", name) + strlen(root) + 1);
}

static FakeDevice *fake_device_by_name(const char *name) {
        for (int i = 0; i < fake.n_devices; i++)
                if (streq(fake.devices[i].name, name))
                        return &fake.devices[i];
        return NULL;
}

/* Open anywhere in the process (the fd store's copies are simulated by dups in this process). */
static bool fake_device_open(const FakeDevice *d) {
        char want[PATH_MAX], path[PATH_MAX], link[300];
        DIR *dir = opendir("/proc/self/fd");
        bool found = false;

        cr_assert_not_null(dir);
        (void) snprintf(want, sizeof want, "%s/devfiles/%s", root, d->name);
        for (struct dirent *de; !found && (de = readdir(dir));) {
                ssize_t n;

                (void) snprintf(link, sizeof link, "/proc/self/fd/%s", de->d_name);
                n = readlink(link, path, sizeof path - 1);
                if (n < 0)
                        continue;
                path[n] = 0;
                found = streq(path, want);
        }
        closedir(dir);
        return found;
}

static bool fake_group_has_mdev(unsigned group) {
        for (int i = 0; i < fake.n_devices; i++)
                if (fake.devices[i].group == group && fake.devices[i].mdev)
                        return true;
        return false;
}

static bool fake_container_has_mdev(int id) {
        for (unsigned g = 0; g < FAKE_MAX; g++)
                if (fake.group_container[g] == id && fake_group_has_mdev(g))
                        return true;
        return false;
}

static int fake_container_groups(int id) {
        int n = 0;

        for (unsigned g = 0; g < FAKE_MAX; g++)
                n += fake.group_container[g] == id;
        return n;
}

static bool fake_container_all_valid(int id) {
        for (int i = 0; i < fake.containers[id].n_maps; i++)
                if (!fake.containers[id].maps[i].valid)
                        return false;
        return true;
}

static int fail(int e) {
        errno = e;
        return -1;
}

typedef enum FakeKind { FAKE_OTHER, FAKE_CONTAINER, FAKE_GROUP, FAKE_IOMMUFD, FAKE_DEVICE } FakeKind;

static FakeKind fake_classify(int fd, unsigned *ret_number, FakeDevice **ret_device) {
        char link[64], path[PATH_MAX];
        const char *rel;
        ssize_t n;

        (void) snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        n = readlink(link, path, sizeof path - 1);
        if (n < 0)
                return FAKE_OTHER;
        path[n] = 0;
        if (strncmp(path, root, strlen(root)) != 0)
                return FAKE_OTHER;
        rel = path + strlen(root) + 1;
        if (streq(rel, "dev/vfio/vfio"))
                return FAKE_CONTAINER;
        if (streq(rel, "dev/iommu"))
                return FAKE_IOMMUFD;
        if (strncmp(rel, "dev/vfio/devices/", 17) == 0) {
                for (int i = 0; i < fake.n_devices; i++)
                        if (streq(fake.devices[i].cdev, rel + 17)) {
                                *ret_device = &fake.devices[i];
                                return FAKE_DEVICE;
                        }
                return FAKE_OTHER;
        }
        if (strncmp(rel, "devfiles/", 9) == 0) {
                *ret_device = fake_device_by_name(rel + 9);
                return *ret_device ? FAKE_DEVICE : FAKE_OTHER;
        }
        if (sscanf(rel, "dev/vfio/%u", ret_number) == 1)
                return FAKE_GROUP;
        return FAKE_OTHER;
}

static int container_id(int fd) {
        off_t id = lseek(fd, 0, SEEK_CUR);
        cr_assert(id > 0 && id <= fake.n_containers, "container fd %d has no container", fd);
        return (int) id;
}

static int fake_container(int fd, unsigned long request, void *arg) {
        int id;

        if (request == VFIO_GET_API_VERSION) {
                /* Every open: a new container, identified by the file offset its dups share. */
                cr_assert_lt(fake.n_containers, FAKE_MAX - 1);
                id = ++fake.n_containers;
                fake.containers[id] = (FakeContainer) {};
                cr_assert_eq(lseek(fd, id, SEEK_SET), id);
                return 0;
        }
        id = container_id(fd);
        FakeContainer *k = &fake.containers[id];

        switch (request) {
        case VFIO_CHECK_EXTENSION:
                switch ((uintptr_t) arg) {
                case VFIO_TYPE1v2_IOMMU:
                case VFIO_UNMAP_ALL:
                        return 1;
                case VFIO_UPDATE_VADDR:
                        return k->iommu && !fake_container_has_mdev(id);
                default:
                        return 0;
                }
        case VFIO_SET_IOMMU:
                if (fake_container_groups(id) == 0 || k->iommu)
                        return fail(EINVAL);
                k->iommu = true;
                fake_log("SET_IOMMU(%d)", id);
                return 0;
        case VFIO_IOMMU_GET_INFO:
                return k->iommu ? 0 : fail(EINVAL);
        case VFIO_IOMMU_MAP_DMA: {
                struct vfio_iommu_type1_dma_map *m = arg;

                if (!k->iommu)
                        return fail(ENOTTY);
                cr_assert_eq(m->argsz, 32);
                if (m->flags & VFIO_DMA_MAP_FLAG_VADDR) {
                        if (m->flags != VFIO_DMA_MAP_FLAG_VADDR)
                                return fail(EINVAL);
                        for (int i = 0; i < k->n_maps; i++)
                                if (m->iova >= k->maps[i].iova && m->iova < k->maps[i].iova + k->maps[i].size) {
                                        if (k->maps[i].valid || k->maps[i].iova != m->iova || k->maps[i].size != m->size)
                                                return fail(EINVAL);
                                        k->maps[i].vaddr = m->vaddr;
                                        k->maps[i].valid = true;
                                        fake_log("MAP_DMA_VADDR(%d,0x%llx)", id, (unsigned long long) m->iova);
                                        return 0;
                                }
                        return fail(ENOENT);
                }
                if (!(m->flags & (VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE)))
                        return fail(EINVAL);
                for (int i = 0; i < k->n_maps; i++)
                        if (m->iova < k->maps[i].iova + k->maps[i].size && k->maps[i].iova < m->iova + m->size)
                                return fail(EEXIST);
                k->maps[k->n_maps++] = (FakeMap) { .iova = m->iova, .size = m->size, .vaddr = m->vaddr, .valid = true };
                fake_log("MAP_DMA(%d,0x%llx)", id, (unsigned long long) m->iova);
                return 0;
        }
        case VFIO_IOMMU_UNMAP_DMA: {
                struct vfio_iommu_type1_dma_unmap *u = arg;
                bool all = u->flags & VFIO_DMA_UNMAP_FLAG_ALL;
                uint64_t removed = 0;

                if (!k->iommu)
                        return fail(ENOTTY);
                cr_assert_eq(u->argsz, 24);
                if (all && (u->iova != 0 || u->size != 0))
                        return fail(EINVAL);
                if (u->flags & VFIO_DMA_UNMAP_FLAG_VADDR) {
                        bool marked[FAKE_MAX] = {};

                        if (fake_container_has_mdev(id))
                                return fail(EBUSY);
                        for (int i = 0; i < k->n_maps; i++) {
                                if (!all && !(k->maps[i].iova >= u->iova &&
                                              k->maps[i].iova + k->maps[i].size <= u->iova + u->size))
                                        continue;
                                if (!k->maps[i].valid) {
                                        for (int j = 0; j < i; j++)
                                                if (marked[j])
                                                        k->maps[j].valid = true;
                                        return fail(EINVAL);
                                }
                                k->maps[i].valid = false;
                                marked[i] = true;
                        }
                        fake_log("UNMAP_DMA_VADDR%s(%d)", all ? "_ALL" : "", id);
                        return 0;
                }
                for (int i = 0; i < k->n_maps;) {
                        if (all || (k->maps[i].iova >= u->iova && k->maps[i].iova + k->maps[i].size <= u->iova + u->size)) {
                                removed += k->maps[i].size;
                                k->maps[i] = k->maps[--k->n_maps];
                                continue;
                        }
                        i++;
                }
                u->size = removed;
                fake_log("UNMAP_DMA(%d,0x%llx)", id, (unsigned long long) u->iova);
                return 0;
        }
        default:
                return fail(ENOTTY);
        }
}

static int fake_group(unsigned number, unsigned long request, void *arg) {
        int *container = &fake.group_container[number];

        switch (request) {
        case VFIO_GROUP_GET_STATUS: {
                struct vfio_group_status *s = arg;
                s->flags = VFIO_GROUP_FLAGS_VIABLE | (*container ? VFIO_GROUP_FLAGS_CONTAINER_SET : 0);
                return 0;
        }
        case VFIO_GROUP_SET_CONTAINER: {
                int id = container_id(*(int *) arg);

                if (*container)
                        return fail(EBUSY);
                /* type1 replays the mappings for the new group, pinning by host address */
                if (!fake_container_all_valid(id))
                        return fail(EBUSY);
                *container = id;
                fake_log("SET_CONTAINER(%u,%d)", number, id);
                return 0;
        }
        case VFIO_GROUP_UNSET_CONTAINER: {
                int id = *container;

                if (!id)
                        return fail(EINVAL);
                for (int i = 0; i < fake.n_devices; i++)
                        if (fake.devices[i].group == number && fake_device_open(&fake.devices[i]))
                                return fail(EBUSY);
                *container = 0;
                if (fake_container_groups(id) == 0)
                        fake.containers[id] = (FakeContainer) {}; /* the last group takes the IOMMU along */
                fake_log("UNSET_CONTAINER(%u)", number);
                return 0;
        }
        case VFIO_GROUP_GET_DEVICE_FD: {
                FakeDevice *d = fake_device_by_name(arg);
                int fd;

                if (!*container || !fake.containers[*container].iommu)
                        return fail(EINVAL);
                if (!d || d->group != number)
                        return fail(ENODEV);
                fd = open(at("devfiles/%s", d->name), O_RDWR | O_CLOEXEC);
                cr_assert_geq(fd, 0);
                fake_log("GET_DEVICE_FD(%s)", d->name);
                return fd;
        }
        default:
                return fail(ENOTTY);
        }
}

static int fake_iommufd(unsigned long request, void *arg) {
        switch (request) {
        case IOMMU_IOAS_ALLOC: {
                struct iommu_ioas_alloc *a = arg;

                cr_assert_eq(a->size, 12);
                cr_assert_lt(fake.n_ioas, FAKE_MAX - 1);
                a->out_ioas_id = (uint32_t) ++fake.n_ioas;
                fake.ioas[a->out_ioas_id] = (FakeIoas) { .exists = true };
                fake_log("IOAS_ALLOC(%u)", a->out_ioas_id);
                return 0;
        }
        case IOMMU_DESTROY: {
                struct iommu_destroy *d = arg;

                if (d->id == 0 || d->id >= FAKE_MAX || !fake.ioas[d->id].exists)
                        return fail(ENOENT);
                for (int i = 0; i < fake.n_devices; i++)
                        if (fake.devices[i].pt == d->id)
                                return fail(EBUSY);
                fake.ioas[d->id] = (FakeIoas) {};
                fake_log("DESTROY(%u)", d->id);
                return 0;
        }
        case IOMMU_IOAS_IOVA_RANGES: {
                struct iommu_ioas_iova_ranges *r = arg;

                if (r->ioas_id == 0 || r->ioas_id >= FAKE_MAX || !fake.ioas[r->ioas_id].exists)
                        return fail(ENOENT);
                r->num_iovas = 1;
                return fail(EMSGSIZE);
        }
        case IOMMU_IOAS_MAP_FILE:
        case IOMMU_IOAS_MAP: {
                bool by_file = request == IOMMU_IOAS_MAP_FILE;
                struct iommu_ioas_map_file *mf = arg;
                struct iommu_ioas_map *m = arg;
                uint32_t ioas_id = by_file ? mf->ioas_id : m->ioas_id;
                uint64_t iova = by_file ? mf->iova : m->iova, length = by_file ? mf->length : m->length;
                uint32_t flags = by_file ? mf->flags : m->flags;
                FakeIoas *s;

                if (by_file && !fake.has_map_file)
                        return fail(ENOTTY);
                cr_assert_eq(by_file ? mf->size : m->size, 40);
                if (ioas_id == 0 || ioas_id >= FAKE_MAX || !fake.ioas[ioas_id].exists)
                        return fail(ENOENT);
                if (!(flags & IOMMU_IOAS_MAP_FIXED_IOVA) ||
                    !(flags & (IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE)))
                        return fail(EINVAL);
                s = &fake.ioas[ioas_id];
                for (int i = 0; i < s->n_maps; i++)
                        if (iova < s->maps[i].iova + s->maps[i].size && s->maps[i].iova < iova + length)
                                return fail(EEXIST);
                s->maps[s->n_maps++] = (FakeMap) { .iova = iova, .size = length, .by_file = by_file,
                                                   .vaddr = by_file ? 0 : m->user_va };
                fake_log("%s(%u,0x%llx)", by_file ? "IOAS_MAP_FILE" : "IOAS_MAP", ioas_id, (unsigned long long) iova);
                return 0;
        }
        case IOMMU_IOAS_UNMAP: {
                struct iommu_ioas_unmap *u = arg;
                FakeIoas *s;

                if (u->ioas_id == 0 || u->ioas_id >= FAKE_MAX || !fake.ioas[u->ioas_id].exists)
                        return fail(ENOENT);
                s = &fake.ioas[u->ioas_id];
                for (int i = 0; i < s->n_maps; i++)
                        if (s->maps[i].iova == u->iova && s->maps[i].size == u->length) {
                                s->maps[i] = s->maps[--s->n_maps];
                                fake_log("IOAS_UNMAP(%u,0x%llx)", u->ioas_id, (unsigned long long) u->iova);
                                return 0;
                        }
                return fail(ENOENT);
        }
        case IOMMU_IOAS_CHANGE_PROCESS: {
                struct iommu_ioas_change_process *c = arg;

                if (!fake.has_change_process)
                        return fail(ENOTTY);
                cr_assert_eq(c->size, 8);
                for (int i = 1; i < FAKE_MAX; i++)
                        for (int j = 0; j < fake.ioas[i].n_maps; j++)
                                if (!fake.ioas[i].maps[j].by_file)
                                        return fail(EINVAL);
                fake.change_process_calls++;
                fake_log("CHANGE_PROCESS");
                return 0;
        }
        default:
                return fail(ENOTTY);
        }
}

static int fake_device(FakeDevice *d, unsigned long request, void *arg) {
        switch (request) {
        case VFIO_DEVICE_GET_INFO: {
                struct vfio_device_info *info = arg;

                if (d->cdev[0] && !d->bound && !d->mdev && fake.group_container[d->group] == 0)
                        return fail(EINVAL); /* a cdev answers only once bound */
                info->flags = (d->reset_unadvertised ? 0 : VFIO_DEVICE_FLAGS_RESET) | VFIO_DEVICE_FLAGS_PCI;
                info->num_regions = 9;
                info->num_irqs = 5;
                return 0;
        }
        case VFIO_DEVICE_RESET:
                if (d->reset_errno)
                        return fail(d->reset_errno);
                d->resets++;
                fake_log("RESET(%s)", d->name);
                return 0;
        case VFIO_DEVICE_BIND_IOMMUFD: {
                struct vfio_device_bind_iommufd *b = arg;

                if (d->bound)
                        return fail(EINVAL);
                d->bound = true;
                d->devid = b->out_devid = ++fake.next_devid;
                fake_log("BIND(%s,%u)", d->name, d->devid);
                return 0;
        }
        case VFIO_DEVICE_ATTACH_IOMMUFD_PT: {
                struct vfio_device_attach_iommufd_pt *a = arg;

                cr_assert_eq(a->argsz, 12);
                if (!d->bound)
                        return fail(EINVAL);
                if (a->pt_id == 0 || a->pt_id >= FAKE_MAX || !fake.ioas[a->pt_id].exists)
                        return fail(ENOENT);
                d->pt = a->pt_id;
                a->pt_id = 100 + d->pt; /* the HWPT the kernel chose */
                fake_log("ATTACH(%s,%u)", d->name, d->pt);
                return 0;
        }
        case VFIO_DEVICE_DETACH_IOMMUFD_PT: {
                struct vfio_device_detach_iommufd_pt *dt = arg;

                cr_assert_eq(dt->argsz, 8);
                if (!d->pt)
                        return fail(EINVAL);
                d->pt = 0;
                fake_log("DETACH(%s)", d->name);
                return 0;
        }
        case VFIO_DEVICE_FEATURE: {
                struct vfio_device_feature *f = arg;
                uint32_t feature = f->flags & VFIO_DEVICE_FEATURE_MASK;

                if (!d->mig_flags)
                        return fail(ENOTTY); /* no migration: VFIO_DEVICE_FEATURE answers ENOTTY */
                if (feature == VFIO_DEVICE_FEATURE_MIGRATION && (f->flags & VFIO_DEVICE_FEATURE_GET)) {
                        struct vfio_device_feature_migration *m = (void *) f->data;
                        cr_assert_geq(f->argsz, sizeof *f + sizeof *m);
                        m->flags = d->mig_flags;
                        return 0;
                }
                if (feature == VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2) {
                        if (d->precopy_v2_errno)
                                return fail(d->precopy_v2_errno);
                        if (!(d->mig_flags & VFIO_MIGRATION_PRE_COPY) || f->flags != (VFIO_DEVICE_FEATURE_SET | feature))
                                return fail(EINVAL);
                        cr_assert_eq(f->argsz, sizeof *f, "the opt-in has no payload");
                        d->precopy_v2_sets++;
                        fake_log("PRECOPY_INFOv2(%s)", d->name);
                        return 0;
                }
                return fail(ENOTTY);
        }
        default:
                return fail(ENOTTY);
        }
}

static int fake_ioctl(int fd, unsigned long request, void *arg, void *userdata) {
        FakeDevice *d = NULL;
        unsigned number = 0;

        if (request == VFIO_MIG_GET_PRECOPY_INFO) {
                /* on any data fd; like every driver before 7.2, flags go back as they came */
                struct vfio_precopy_info *info = arg;
                info->flags |= fake.precopy_flags;
                info->initial_bytes = 100;
                info->dirty_bytes = 7;
                return 0;
        }

        switch (fake_classify(fd, &number, &d)) {
        case FAKE_CONTAINER:
                return fake_container(fd, request, arg);
        case FAKE_GROUP:
                cr_assert_lt(number, FAKE_MAX);
                return fake_group(number, request, arg);
        case FAKE_IOMMUFD:
                return fake_iommufd(request, arg);
        case FAKE_DEVICE:
                return fake_device(d, request, arg);
        default:
                return fail(ENOTTY);
        }
}

/* ---- the tree and contexts ---- */

static void add_pci(const char *name, unsigned group, const char *cdev) {
        char rel[512], target[512];

        (void) snprintf(rel, sizeof rel, "sys/devices/pci0000:00/%s", name);
        mkdir_p(rel);
        (void) snprintf(target, sizeof target, "../../../devices/pci0000:00/%s", name);
        (void) snprintf(rel, sizeof rel, "sys/bus/pci/devices/%s", name);
        link_rel(target, rel);
        (void) snprintf(rel, sizeof rel, "sys/devices/pci0000:00/%s/driver", name);
        link_rel("../../../bus/pci/drivers/vfio-pci", rel);
        (void) snprintf(rel, sizeof rel, "sys/kernel/iommu_groups/%u/devices", group);
        mkdir_p(rel);
        (void) snprintf(target, sizeof target, "../../../kernel/iommu_groups/%u", group);
        (void) snprintf(rel, sizeof rel, "sys/devices/pci0000:00/%s/iommu_group", name);
        link_rel(target, rel);
        (void) snprintf(rel, sizeof rel, "dev/vfio/%u", group);
        touch(rel);
        if (cdev) {
                (void) snprintf(rel, sizeof rel, "sys/devices/pci0000:00/%s/vfio-dev/%s", name, cdev);
                mkdir_p(rel);
                (void) snprintf(rel, sizeof rel, "dev/vfio/devices/%s", cdev);
                touch(rel);
        }
        fake_add_device(name, group, cdev, false);
}

static void add_mdev(unsigned group) {
        char rel[512];

        mkdir_p("sys/devices/virtual/mtty/mtty/" MDEV_UUID);
        mkdir_p("sys/bus/mdev/drivers/mtty");
        mkdir_p("sys/bus/mdev/devices");
        (void) snprintf(rel, sizeof rel, "sys/kernel/iommu_groups/%u/devices", group);
        mkdir_p(rel);
        link_rel("../../../../../bus/mdev/drivers/mtty", "sys/devices/virtual/mtty/mtty/" MDEV_UUID "/driver");
        (void) snprintf(rel, sizeof rel, "../../../../../kernel/iommu_groups/%u", group);
        link_rel(rel, "sys/devices/virtual/mtty/mtty/" MDEV_UUID "/iommu_group");
        link_rel("../../../devices/virtual/mtty/mtty/" MDEV_UUID, "sys/bus/mdev/devices/" MDEV_UUID);
        (void) snprintf(rel, sizeof rel, "dev/vfio/%u", group);
        touch(rel);
        fake_add_device(MDEV_UUID, group, NULL, true);
}

static void setup(void) {
        const char *tmp = getenv("TMPDIR") ?: "/tmp";

        (void) snprintf(root, sizeof root, "%s/test-kernel-iommu.XXXXXX", tmp);
        cr_assert_not_null(mkdtemp(root), "mkdtemp: %m");
        memset(&fake, 0, sizeof fake);
        fake.has_map_file = fake.has_change_process = true;
        mkdir_p("dev");
        mkdir_p("sys/devices");
        mkdir_p("sys/bus/pci/devices");
        mkdir_p("sys/bus/pci/drivers/vfio-pci");
}

/* A host with legacy VFIO: two PCI functions in groups 12 and 13, one in group 14, an mdev in 5. */
static void setup_legacy(void) {
        setup();
        mkdir_p("dev/vfio");
        touch("dev/vfio/vfio");
        add_pci("0000:3b:00.1", 12, NULL);
        add_pci("0000:3c:00.0", 13, NULL);
        add_pci("0000:3d:00.0", 14, NULL);
        add_mdev(5);
}

/* A host with iommufd and VFIO cdevs. */
static void setup_iommufd(void) {
        setup();
        mkdir_p("dev/vfio/devices");
        touch("dev/iommu");
        add_pci("0000:3b:00.1", 12, "vfio3");
        add_pci("0000:3c:00.0", 13, "vfio4");
}

static void teardown(void) {
        if (root[0])
                (void) nftw(root, remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

static KernelContext *context_with(bool use_fake) {
        KernelContext *c = NULL;
        char sys[PATH_MAX], dev[PATH_MAX];

        (void) snprintf(sys, sizeof sys, "%s/sys", root);
        (void) snprintf(dev, sizeof dev, "%s/dev", root);
        cr_assert_eq(kernel_context_new(&(KernelContextOptions) {
                        .sysfs_root = sys,
                        .dev_root = dev,
                        .ioctl = use_fake ? fake_ioctl : NULL,
                }, &c), 0);
        return c;
}

static KernelContext *context(void) {
        return context_with(true);
}

static VfioDev *open_device(KernelContext *c, const char *address) {
        ErrorMessage err = {};
        VfioDev *d = NULL;

        cr_assert_eq(kernel_device_open(c, address, &d, &err), 0, "%s: %s", address, err.text);
        return d;
}

static int memfd(uint64_t size) {
        int fd = memfd_create("test-kernel-iommu", MFD_CLOEXEC);
        cr_assert_geq(fd, 0);
        cr_assert_eq(ftruncate(fd, (off_t) size), 0);
        return fd;
}

static IommuMapping mapping(int fd, uint64_t iova, uint64_t length) {
        return (IommuMapping) { .iova = iova, .length = length, .access = IOMMU_READ | IOMMU_WRITE, .fd = fd };
}

static const char *json(json_object *o) {
        return json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
}

static json_object *parse(const char *text) {
        json_object *o = json_tokener_parse(text);
        cr_assert_not_null(o, "bad test JSON: %s", text);
        return o;
}

static bool has_cloexec(int fd) {
        int flags = fcntl(fd, F_GETFD);
        return flags >= 0 && (flags & FD_CLOEXEC);
}

/* What the fd store hands a successor: its own copies of every descriptor, by name (without
 * O_CLOEXEC: the restore must set it). The copies share the open files, as the store's do. */
static void store_copy(const NamedFds *from, NamedFds *to) {
        for (size_t i = 0; i < from->n; i++) {
                int fd = dup(from->items[i].fd);
                cr_assert_geq(fd, 0);
                cr_assert_eq(named_fds_add(to, from->items[i].name, fd, /* owned= */ true), 0);
        }
}

/* The list as one string, kept until the next call. */
static const char *joined(char **l) {
        static char *last;

        free(last);
        last = strv_join(l, " ");
        cr_assert_not_null(last);
        return last;
}

static bool log_has(const char *s) {
        return strstr(fake.log, s) != NULL;
}

/* ================= without a kernel ================= */

Test(kernel_iommu, iommufd_space_fails_cleanly_without_dev_iommu, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context_with(false);
        IommuSpace *sentinel = (IommuSpace *) &root, *s = sentinel;
        ErrorMessage err = {};

        cr_assert_eq(kernel_iommufd_space_new(c, &s, &err), -ENOENT);
        cr_assert(strstr(err.text, "Cannot open ") && strstr(err.text, "/dev/iommu"), "%s", err.text);
        cr_assert_eq(s, sentinel, "output written on failure");
}

Test(kernel_iommu, legacy_space_maps_only_after_a_device, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context_with(false);
        _cleanup_(iommu_space_freep) IommuSpace *s = NULL;
        _cleanup_(json_putp) json_object *saved = NULL;
        ErrorMessage err = {};
        int fd = memfd(MiB);
        IommuMapping m = mapping(fd, 0x100000, 0x1000);
        unsigned id = 77;

        cr_assert_eq(kernel_legacy_space_new(c, &s, &err), 0, "%s", err.text);
        cr_assert_eq(s->backend, IOMMU_BACKEND_LEGACY);
        cr_assert(iommu_space_is_kernel(s));
        cr_assert_eq(kernel_space_get_container_id(s, &id), 0);
        cr_assert_eq(id, 0);
        cr_assert_eq(kernel_space_get_ioas_id(s, NULL), -EOPNOTSUPP);

        cr_assert_eq(s->ops->map(s, &m, &err), -EOPNOTSUPP);
        cr_assert_str_eq(err.text, "a legacy address space gets its IOMMU from the first device attached: attach a "
                                   "device before mapping");
        cr_assert_null(m.vaddr);
        cr_assert_str_eq(s->ops->live_update(s), "nothing to keep yet: a legacy address space gets its IOMMU, and "
                                                 "can map, once a device is attached");
        /* Nothing mapped: nothing to prepare, nothing to take over. */
        cr_assert_eq(s->ops->prepare_handover(s, NULL), 0);
        cr_assert_eq(s->ops->take_over(s, NULL, 0, true, NULL), 0);

        cr_assert_eq(kernel_space_save(s, &saved), 0);
        cr_assert_str_eq(json(saved), "{\"backend\":\"legacy\",\"container\":null}");
        close(fd);
}

Test(kernel_iommu, attach_refuses_devices_of_other_kinds, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context_with(false);
        _cleanup_(iommu_space_freep) IommuSpace *s = NULL;
        _cleanup_(vfio_dev_freep) VfioDev *sim = NULL;
        ErrorMessage err = {};
        SimConfig config;

        sim_config_init(&config);
        cr_assert_eq(sim_device_new("a", &config, &sim, NULL), 0);
        cr_assert_eq(kernel_legacy_space_new(c, &s, NULL), 0);
        cr_assert_eq(s->ops->attach_device(s, sim, &err), -EINVAL);
        cr_assert(strstr(err.text, "legacy VFIO group API"), "%s", err.text);
        s->ops->detach_device(s, sim); /* not attached: nothing happens */
}

static const char *const SAVED_CONTEXT =
        "{\"iommufd\":\"k-iommufd\",\"next-container-id\":4,\"containers\":["
        "{\"id\":1,\"fd\":\"k-container-1\",\"iommu-set\":true,\"update-vaddr\":true,"
        "\"groups\":[{\"number\":12,\"fd\":\"k-group-12\",\"mdev\":false},"
        "{\"number\":13,\"fd\":\"k-group-13\",\"mdev\":false}]},"
        "{\"id\":3,\"fd\":\"k-container-3\",\"iommu-set\":true,\"update-vaddr\":false,"
        "\"groups\":[{\"number\":5,\"fd\":\"k-group-5\",\"mdev\":true}]}]}";

static void add_null_fds(NamedFds *fds, const char *const *names) {
        for (const char *const *n = names; *n; n++) {
                /* Without O_CLOEXEC, as a careless predecessor might have left them. */
                int fd = open("/dev/null", O_RDWR);
                cr_assert_geq(fd, 0);
                cr_assert_eq(named_fds_add(fds, *n, fd, /* owned= */ true), 0);
        }
}

static const char *const CONTEXT_FDS[] = {
        "k-iommufd", "k-container-1", "k-group-12", "k-group-13", "k-container-3", "k-group-5", NULL,
};

Test(kernel_iommu, context_round_trip_with_stand_in_fds, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context_with(false);
        _cleanup_(json_putp) json_object *saved = parse(SAVED_CONTEXT), *again = NULL;
        _cleanup_(named_fds_done) NamedFds fds = {}, out = {};
        _cleanup_strv_free_ char **released = NULL;
        ErrorMessage err = {};

        add_null_fds(&fds, CONTEXT_FDS);
        cr_assert_eq(named_fds_add(&fds, "something-else", open("/dev/null", O_RDONLY | O_CLOEXEC), true), 0);

        cr_assert_eq(kernel_context_restore(c, saved, &fds, &err), 0, "%s", err.text);
        /* Exactly the named descriptors were taken. */
        cr_assert_eq(fds.n, 1);
        cr_assert_str_eq(fds.items[0].name, "something-else");

        cr_assert_eq(kernel_context_save(c, &again, &out), 0);
        cr_assert_str_eq(json(again), SAVED_CONTEXT);
        cr_assert_eq(out.n, 6);
        for (size_t i = 0; i < out.n; i++) {
                cr_assert(!out.items[i].owned, "%s must be borrowed", out.items[i].name);
                cr_assert(has_cloexec(out.items[i].fd), "%s lacks O_CLOEXEC", out.items[i].name);
        }
        cr_assert_str_eq(out.items[0].name, "k-iommufd");
        cr_assert_str_eq(out.items[1].name, "k-group-12");
        cr_assert_str_eq(out.items[3].name, "k-container-1");

        /* A second restore into the same context is refused. */
        cr_assert_eq(kernel_context_restore(c, saved, &fds, &err), -EBUSY);

        /* Nobody claimed the groups: finishing closes them and their containers. */
        named_fds_done(&out);
        cr_assert_eq(kernel_context_restore_finish(c, &released), 0);
        cr_assert_str_eq(joined(released), "k-group-5 k-container-3 k-group-13 k-group-12 k-container-1");
        json_putp(&again);
        cr_assert_eq(kernel_context_save(c, &again, &out), 0);
        cr_assert_str_eq(json(again), "{\"iommufd\":\"k-iommufd\",\"next-container-id\":4,\"containers\":[]}");
}

static void expect_restore_error(const char *text, NamedFds *fds, int error, const char *message) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context_with(false);
        _cleanup_(json_putp) json_object *saved = parse(text);
        size_t before = fds->n;
        ErrorMessage err = {};
        int r;

        r = kernel_context_restore(c, saved, fds, &err);
        cr_expect_eq(r, error, "%s: expected %d, got %d (%s)", text, error, r, err.text);
        cr_expect(strstr(err.text, message), "%s: message \"%s\" lacks \"%s\"", text, err.text, message);
        cr_expect_eq(fds->n, before, "%s: descriptors were taken although the restore failed", text);
}

Test(kernel_iommu, context_restore_refusals, .init = setup, .fini = teardown) {
        _cleanup_(named_fds_done) NamedFds fds = {};

        add_null_fds(&fds, CONTEXT_FDS);

        expect_restore_error("[]", &fds, -EINVAL, "not an object");
        expect_restore_error("{\"containers\":[]}", &fds, -ENOENT, "lacks \"next-container-id\"");
        expect_restore_error("{\"next-container-id\":1}", &fds, -ENOENT, "lacks \"containers\"");
        expect_restore_error("{\"next-container-id\":\"1\",\"containers\":[]}", &fds, -EINVAL, "must be an integer");
        expect_restore_error("{\"next-container-id\":-1,\"containers\":[]}", &fds, -EINVAL, "between 0 and");
        expect_restore_error("{\"next-container-id\":1,\"containers\":{}}", &fds, -EINVAL, "must be an array");
        expect_restore_error("{\"iommufd\":\"k-iommufd-2\",\"next-container-id\":1,\"containers\":[]}", &fds, -ENOENT,
                             "\"k-iommufd-2\" of the daemon's iommufd is missing");
        expect_restore_error("{\"next-container-id\":1,\"containers\":[7]}", &fds, -EINVAL, "not an object");
        expect_restore_error("{\"next-container-id\":1,\"containers\":[{\"id\":1,\"fd\":\"k-container-9\","
                             "\"iommu-set\":true,\"update-vaddr\":true,\"groups\":[]}]}", &fds, -ENOENT,
                             "\"k-container-9\" of VFIO container 1 is missing from the fd store");
        expect_restore_error("{\"next-container-id\":1,\"containers\":[{\"id\":1,\"fd\":\"k-container-1\","
                             "\"iommu-set\":true,\"update-vaddr\":true,\"groups\":[{\"number\":14,"
                             "\"fd\":\"k-group-14\",\"mdev\":false}]}]}", &fds, -ENOENT,
                             "\"k-group-14\" of IOMMU group 14 is missing from the fd store");
        expect_restore_error("{\"next-container-id\":1,\"containers\":[{\"id\":1,\"fd\":\"k-container-1\","
                             "\"iommu-set\":1,\"update-vaddr\":true,\"groups\":[]}]}", &fds, -EINVAL,
                             "\"iommu-set\" must be true or false");
        expect_restore_error("{\"next-container-id\":1,\"containers\":[{\"id\":1,\"fd\":\"k-container-1\","
                             "\"iommu-set\":true,\"update-vaddr\":true,\"groups\":[{\"number\":12,"
                             "\"fd\":\"k-group-12\",\"mdev\":false},{\"number\":12,\"fd\":\"k-group-13\","
                             "\"mdev\":false}]}]}", &fds, -EINVAL, "IOMMU group 12 is listed twice");
        expect_restore_error("{\"next-container-id\":1,\"containers\":[{\"id\":1,\"fd\":\"k-container-1\","
                             "\"iommu-set\":true,\"update-vaddr\":true,\"groups\":[]},{\"id\":1,"
                             "\"fd\":\"k-container-3\",\"iommu-set\":true,\"update-vaddr\":true,\"groups\":[]}]}",
                             &fds, -EINVAL, "VFIO container 1 is listed twice");
        expect_restore_error("{\"next-container-id\":1,\"containers\":[{\"id\":0,\"fd\":\"k-container-1\","
                             "\"iommu-set\":true,\"update-vaddr\":true,\"groups\":[]}]}", &fds, -EINVAL,
                             "\"id\" must be a positive integer");
        cr_assert_eq(fds.n, 6);
}

Test(kernel_iommu, device_and_space_restore_refusals, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context_with(false);
        _cleanup_(json_putp) json_object *saved = parse(SAVED_CONTEXT);
        _cleanup_(named_fds_done) NamedFds fds = {};
        static const char *const device_fds[] = { "k-device-0000_3b_00_1", NULL };
        static const struct {
                const char *json;
                int error;
                const char *message;
        } devices[] = {
                { "{\"name\":\"0000:3b:00.1\",\"address\":\"0000:3b:00.1\",\"driver\":\"vfio-pci\","
                  "\"sysfs-path\":null,\"fd\":\"k-device-0000_3b_00_1\",\"path\":\"legacy\",\"iommu-group\":12,"
                  "\"mdev\":false}",
                  -ENOTTY, "VFIO_DEVICE_GET_INFO on the adopted descriptor \"k-device-0000_3b_00_1\" of device "
                           "0000:3b:00.1 failed" },
                { "{\"name\":\"0000:3b:00.1\",\"address\":\"0000:3b:00.1\",\"driver\":\"vfio-pci\","
                  "\"fd\":\"k-device-0000_3b_00_2\",\"path\":\"legacy\",\"iommu-group\":12,\"mdev\":false}",
                  -ENOENT, "\"k-device-0000_3b_00_2\" of device 0000:3b:00.1 is missing from the fd store" },
                { "{\"name\":\"0000:3b:00.1\",\"address\":\"0000:3b:00.1\",\"driver\":\"vfio-pci\","
                  "\"fd\":\"k-device-0000_3b_00_1\",\"path\":\"legacy\",\"iommu-group\":14,\"mdev\":false}",
                  -ENXIO, "IOMMU group 14 of device 0000:3b:00.1 was not restored" },
                { "{\"name\":\"0000:3b:00.1\",\"address\":\"0000:3b:00.1\",\"driver\":\"vfio-pci\","
                  "\"fd\":null,\"path\":\"legacy\",\"iommu-group\":12,\"mdev\":false}",
                  -ENOENT, "had no open descriptor" },
                { "{\"name\":\"0000:3b:00.1\",\"address\":\"0000:3b:00.1\",\"driver\":\"vfio-pci\","
                  "\"fd\":\"k-device-0000_3b_00_1\",\"path\":\"sim\",\"iommu-group\":12,\"mdev\":false}",
                  -EINVAL, "\"path\" must be \"iommufd\" or \"legacy\"" },
                { "{\"name\":\"0000:3b:00.1\",\"address\":\"0000:3b:00.1\",\"driver\":\"vfio-pci\","
                  "\"fd\":\"k-device-0000_3b_00_1\",\"path\":\"iommufd\",\"iommu-group\":12,\"mdev\":false}",
                  -ENOENT, "lacks \"devid\"" },
                { "{\"address\":\"0000:3b:00.1\"}", -ENOENT, "lacks \"name\"" },
                { "7", -EINVAL, "not an object" },
        };
        static const struct {
                const char *json;
                int error;
                const char *message;
        } spaces[] = {
                { "{\"backend\":\"legacy\",\"container\":2}", -ENXIO, "VFIO container 2 of a legacy address space "
                                                                      "was not restored" },
                { "{\"backend\":\"sim\"}", -EINVAL, "unknown backend \"sim\"" },
                { "{\"backend\":\"iommufd\",\"ioas-id\":0,\"mapping-style\":\"by-file\"}", -EINVAL, "positive" },
                { "{\"backend\":\"iommufd\",\"ioas-id\":2,\"mapping-style\":\"by-magic\"}", -EINVAL,
                  "\"mapping-style\" must be" },
                { "{\"ioas-id\":2}", -ENOENT, "lacks \"backend\"" },
        };
        ErrorMessage err = {};

        add_null_fds(&fds, CONTEXT_FDS);
        add_null_fds(&fds, device_fds);
        cr_assert_eq(kernel_context_restore(c, saved, &fds, &err), 0, "%s", err.text);

        for (size_t i = 0; i < ELEMENTSOF(devices); i++) {
                _cleanup_(json_putp) json_object *j = parse(devices[i].json);
                VfioDev *sentinel = (VfioDev *) &root, *d = sentinel;

                err = (ErrorMessage) {};
                cr_expect_eq(kernel_device_restore(c, j, &fds, &d, &err), devices[i].error, "device case %zu: %s", i,
                             err.text);
                cr_expect(strstr(err.text, devices[i].message), "device case %zu: \"%s\" lacks \"%s\"", i, err.text,
                          devices[i].message);
                cr_expect_eq(d, sentinel);
                cr_expect_eq(named_fds_get(&fds, "k-device-0000_3b_00_1") >= 0, true, "device case %zu took the fd", i);
        }
        for (size_t i = 0; i < ELEMENTSOF(spaces); i++) {
                _cleanup_(json_putp) json_object *j = parse(spaces[i].json);
                IommuSpace *sentinel = (IommuSpace *) &root, *s = sentinel;

                err = (ErrorMessage) {};
                cr_expect_eq(kernel_space_restore(c, j, &s, &err), spaces[i].error, "space case %zu: %s", i, err.text);
                cr_expect(strstr(err.text, spaces[i].message), "space case %zu: \"%s\" lacks \"%s\"", i, err.text,
                          spaces[i].message);
                cr_expect_eq(s, sentinel);
        }

        /* A legacy space restores over container 1 and holds its groups; container 1 cannot be
         * claimed twice. */
        {
                _cleanup_(json_putp) json_object *j = parse("{\"backend\":\"legacy\",\"container\":1}");
                _cleanup_(json_putp) json_object *back = NULL;
                _cleanup_(iommu_space_freep) IommuSpace *s = NULL, *twice = NULL;
                _cleanup_strv_free_ char **released = NULL;

                err = (ErrorMessage) {};
                cr_assert_eq(kernel_space_restore(c, j, &s, &err), 0, "%s", err.text);
                cr_assert_eq(kernel_space_save(s, &back), 0);
                cr_assert_str_eq(json(back), "{\"backend\":\"legacy\",\"container\":1}");
                cr_assert_eq(kernel_space_restore(c, j, &twice, &err), -EBUSY);
                cr_assert(strstr(err.text, "claimed by two address spaces"), "%s", err.text);
                /* The space holds groups 12 and 13: only container 3's group goes. */
                cr_assert_eq(kernel_context_restore_finish(c, &released), 0);
                cr_assert_str_eq(joined(released), "k-group-5 k-container-3");
        }

        /* An iommufd space over a stand-in iommufd: the IOAS cannot be checked, and is adopted. */
        {
                _cleanup_(json_putp) json_object *j = parse("{\"backend\":\"iommufd\",\"ioas-id\":2,"
                                                            "\"mapping-style\":\"by-file\",\"by-address-mappings\":0}");
                _cleanup_(json_putp) json_object *back = NULL;
                _cleanup_(iommu_space_freep) IommuSpace *s = NULL;
                uint32_t ioas = 0;

                err = (ErrorMessage) {};
                cr_assert_eq(kernel_space_restore(c, j, &s, &err), 0, "%s", err.text);
                cr_assert_eq(kernel_space_get_ioas_id(s, &ioas), 0);
                cr_assert_eq(ioas, 2);
                cr_assert_eq(kernel_space_save(s, &back), 0);
                cr_assert_str_eq(json(back), json(j));
                cr_assert_str_eq(s->ops->live_update(s), "survives planned restarts and crashes: mappings are by "
                                 "file (IOMMU_IOAS_MAP_FILE) and change owner with IOMMU_IOAS_CHANGE_PROCESS");
        }
}

Test(kernel_iommu, restore_needs_the_iommufd, .init = setup, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context_with(false);
        _cleanup_(json_putp) json_object *saved = parse("{\"next-container-id\":1,\"containers\":[]}");
        _cleanup_(json_putp) json_object *space = parse("{\"backend\":\"iommufd\",\"ioas-id\":2,"
                                                        "\"mapping-style\":\"by-file\"}");
        _cleanup_(json_putp) json_object *device = parse(
                "{\"name\":\"0000:3b:00.1\",\"address\":\"0000:3b:00.1\",\"driver\":\"vfio-pci\","
                "\"fd\":\"k-device-0000_3b_00_1\",\"path\":\"iommufd\",\"iommu-group\":12,\"mdev\":false,"
                "\"devid\":1,\"ioas-id\":null,\"hwpt-id\":null}");
        _cleanup_(named_fds_done) NamedFds fds = {};
        IommuSpace *s = NULL;
        VfioDev *d = NULL;
        ErrorMessage err = {};

        cr_assert_eq(kernel_context_restore(c, saved, &fds, &err), 0, "%s", err.text);
        cr_assert_eq(kernel_space_restore(c, space, &s, &err), -ENXIO);
        cr_assert(strstr(err.text, "IOAS 2 lives in the daemon's iommufd, which was not restored"), "%s", err.text);
        err = (ErrorMessage) {};
        cr_assert_eq(kernel_device_restore(c, device, &fds, &d, &err), -ENXIO);
        cr_assert(strstr(err.text, "bound to the daemon's iommufd, which was not restored"), "%s", err.text);
}

/* ================= against the model of the kernel: legacy ================= */

Test(kernel_iommu, legacy_first_device_brings_its_container, .init = setup_legacy, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context();
        _cleanup_(iommu_space_freep) IommuSpace *s = NULL;
        _cleanup_(vfio_dev_freep) VfioDev *a = open_device(c, "0000:3b:00.1");
        _cleanup_(json_putp) json_object *saved = NULL;
        ErrorMessage err = {};
        int fd_before = a->device_fd, fd = memfd(MiB);
        IommuMapping m = mapping(fd, 0x100000, 0x10000);
        unsigned id = 0;

        cr_assert_eq(kernel_legacy_space_new(c, &s, NULL), 0);
        fake.log[0] = 0;
        cr_assert_eq(s->ops->attach_device(s, a, &err), 0, "%s", err.text);
        cr_assert_str_eq(fake.log, "", "adopting the device's own container needs no ioctl");
        cr_assert_eq(a->device_fd, fd_before);
        cr_assert_eq(s->ops->attach_device(s, a, &err), 0, "attaching twice is a no-op");
        cr_assert_eq(kernel_space_get_container_id(s, &id), 0);
        cr_assert_eq(id, 1);

        cr_assert_eq(s->ops->map(s, &m, &err), 0, "%s", err.text);
        cr_assert(!m.by_file);
        cr_assert_not_null(m.vaddr);
        cr_assert_eq(fake.containers[1].n_maps, 1);
        cr_assert_eq(fake.containers[1].maps[0].vaddr, (uint64_t) (uintptr_t) m.vaddr);
        /* The view is the file: what the device would see. */
        cr_assert_eq(pwrite(fd, "hello", 5, 0), 5);
        cr_assert_eq(memcmp(m.vaddr, "hello", 5), 0);

        IommuMapping overlap = mapping(fd, 0x108000, 0x1000);
        cr_assert_eq(s->ops->map(s, &overlap, &err), -EEXIST);
        cr_assert(strstr(err.text, "overlaps"), "%s", err.text);

        cr_assert_str_eq(s->ops->live_update(s), "survives planned restarts and crashes: host addresses are "
                         "invalidated (VFIO_DMA_UNMAP_FLAG_VADDR) and registered anew by the successor");
        cr_assert_eq(kernel_space_save(s, &saved), 0);
        cr_assert_str_eq(json(saved), "{\"backend\":\"legacy\",\"container\":1}");

        cr_assert_eq(s->ops->unmap(s, &m, &err), 0, "%s", err.text);
        cr_assert_null(m.vaddr);
        cr_assert_eq(fake.containers[1].n_maps, 0);
        err = (ErrorMessage) {};
        cr_assert_eq(s->ops->unmap(s, &m, &err), -ENOENT);

        /* Detaching is bookkeeping: the group stays in the space's container. */
        fake.log[0] = 0;
        s->ops->detach_device(s, a);
        cr_assert_str_eq(fake.log, "");
        cr_assert_eq(fake.group_container[12], 1);
        close(fd);
}

Test(kernel_iommu, legacy_later_devices_move_into_the_space, .init = setup_legacy, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context();
        _cleanup_(iommu_space_freep) IommuSpace *s = NULL;
        _cleanup_(vfio_dev_freep) VfioDev *a = open_device(c, "0000:3b:00.1"), *b = open_device(c, "0000:3c:00.0");
        ErrorMessage err = {};
        int fd = memfd(MiB);
        IommuMapping m = mapping(fd, 0x100000, 0x10000);

        cr_assert_eq(fake.group_container[12], 1);
        cr_assert_eq(fake.group_container[13], 2);
        cr_assert_eq(kernel_legacy_space_new(c, &s, NULL), 0);
        cr_assert_eq(s->ops->attach_device(s, a, &err), 0, "%s", err.text);
        cr_assert_eq(s->ops->map(s, &m, &err), 0, "%s", err.text);

        fake.log[0] = 0;
        cr_assert_eq(s->ops->attach_device(s, b, &err), 0, "%s", err.text);
        cr_assert_str_eq(fake.log, "UNSET_CONTAINER(13) SET_CONTAINER(13,1) GET_DEVICE_FD(0000:3c:00.0) ");
        cr_assert_eq(fake.group_container[13], 1);
        cr_assert_geq(b->device_fd, 0);
        cr_assert(has_cloexec(b->device_fd));
        cr_assert_eq(kernel_device_get_container_fd(b), kernel_device_get_container_fd(a));
        cr_assert_eq(kernel_device_get_type1_update_vaddr(b), 1);

        /* Both groups are the space's now: the context saves one container. */
        {
                _cleanup_(json_putp) json_object *saved = NULL;
                _cleanup_(named_fds_done) NamedFds fds = {};

                cr_assert_eq(kernel_context_save(c, &saved, &fds), 0);
                cr_assert_str_eq(json(saved), "{\"next-container-id\":3,\"containers\":[{\"id\":1,"
                                 "\"fd\":\"k-container-1\",\"iommu-set\":true,\"update-vaddr\":true,\"groups\":["
                                 "{\"number\":12,\"fd\":\"k-group-12\",\"mdev\":false},"
                                 "{\"number\":13,\"fd\":\"k-group-13\",\"mdev\":false}]}]}");
        }
        close(fd);
}

/* PRECOPY_INFOv2: a PRE_COPY device is opted in at open and again after every reopen (the kernel
 * forgets it when the last fd closes); a refusal leaves v1, whose echoed flags are ignored; a
 * device without PRE_COPY is not asked. */
Test(kernel_iommu, precopy_info_v2_opt_in_and_fallback, .init = setup_legacy, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context();
        _cleanup_(iommu_space_freep) IommuSpace *s = NULL;
        FakeDevice *fa = fake_device_by_name("0000:3b:00.1"), *fb = fake_device_by_name("0000:3c:00.0"),
                   *fc = fake_device_by_name("0000:3d:00.0"), *fm = fake_device_by_name(MDEV_UUID);
        ErrorMessage err = {};
        uint64_t initial = 0, dirty = 0;
        uint32_t flags = 0;
        int data = memfd(4096);

        fa->mig_flags = fb->mig_flags = VFIO_MIGRATION_STOP_COPY | VFIO_MIGRATION_P2P | VFIO_MIGRATION_PRE_COPY;
        fc->mig_flags = VFIO_MIGRATION_STOP_COPY;
        fm->mig_flags = fa->mig_flags;
        fm->precopy_v2_errno = ENOTTY; /* Linux before 7.2 */
        _cleanup_(vfio_dev_freep) VfioDev *a = open_device(c, "0000:3b:00.1"), *b = open_device(c, "0000:3c:00.0"),
                                          *plain = open_device(c, "0000:3d:00.0"), *old = open_device(c, MDEV_UUID);

        cr_assert_eq(a->precopy_info_version, VFIO_PRECOPY_INFO_V2);
        cr_assert_eq(fa->precopy_v2_sets, 1);
        cr_assert_eq(plain->precopy_info_version, VFIO_PRECOPY_INFO_NONE);
        cr_assert_eq(fc->precopy_v2_sets, 0, "a device without PRE_COPY is not asked");
        cr_assert_eq(old->precopy_info_version, VFIO_PRECOPY_INFO_V1, "refused: v1");
        cr_assert_str_eq(vfio_precopy_info_to_string(old->precopy_info_version), "v1");

        /* v1 drivers echo the flags they were given; only a v2 device's REINIT is believed */
        fake.precopy_flags = VFIO_PRECOPY_INFO_REINIT;
        cr_assert_eq(vfio_dev_precopy_info_flags(old, data, &initial, &dirty, &flags), 0);
        cr_assert_eq(flags, 0);
        cr_assert_eq(initial, 100);
        cr_assert_eq(dirty, 7);
        cr_assert_eq(vfio_dev_precopy_info_flags(a, data, &initial, &dirty, &flags), 0);
        cr_assert_eq(flags, VFIO_PRECOPY_INFO_REINIT);
        fake.precopy_flags = 0;
        cr_assert_eq(vfio_dev_precopy_info_flags(a, data, &initial, &dirty, &flags), 0);
        cr_assert_eq(flags, 0);

        /* moving b's group into a's container reopens b: the opt-in is made again */
        cr_assert_eq(kernel_legacy_space_new(c, &s, NULL), 0);
        cr_assert_eq(s->ops->attach_device(s, a, &err), 0, "%s", err.text);
        fake.log[0] = 0;
        cr_assert_eq(s->ops->attach_device(s, b, &err), 0, "%s", err.text);
        cr_assert_str_eq(fake.log, "UNSET_CONTAINER(13) SET_CONTAINER(13,1) GET_DEVICE_FD(0000:3c:00.0) "
                                   "PRECOPY_INFOv2(0000:3c:00.0) ");
        cr_assert_eq(fb->precopy_v2_sets, 2);
        cr_assert_eq(b->precopy_info_version, VFIO_PRECOPY_INFO_V2);
        close(data);
}

Test(kernel_iommu, legacy_move_refusals, .init = setup_legacy, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context();
        _cleanup_(iommu_space_freep) IommuSpace *s = NULL, *t = NULL;
        _cleanup_(vfio_dev_freep) VfioDev *a = open_device(c, "0000:3b:00.1"), *b = open_device(c, "0000:3c:00.0");
        _cleanup_close_ int copy = -EBADF;
        ErrorMessage err = {};
        int fd = memfd(MiB);
        IommuMapping m = mapping(fd, 0x100000, 0x10000);

        cr_assert_eq(kernel_legacy_space_new(c, &s, NULL), 0);
        cr_assert_eq(kernel_legacy_space_new(c, &t, NULL), 0);
        cr_assert_eq(s->ops->attach_device(s, a, &err), 0, "%s", err.text);
        cr_assert_eq(s->ops->map(s, &m, &err), 0, "%s", err.text);

        /* A copy of b's descriptor elsewhere (a VMM, the fd store) keeps the device open: the
         * kernel refuses, and b is reopened where it was. */
        copy = dup(b->device_fd);
        fake.log[0] = 0;
        cr_assert_eq(s->ops->attach_device(s, b, &err), -EBUSY);
        cr_assert(strstr(err.text, "IOMMU group 13 cannot leave VFIO container 2: a device of the group is still "
                         "open elsewhere"), "%s", err.text);
        cr_assert_str_eq(fake.log, "GET_DEVICE_FD(0000:3c:00.0) ");
        cr_assert_geq(b->device_fd, 0);
        cr_assert_eq(fake.group_container[13], 2);
        copy = safe_close(copy);

        /* a's group is the last in s's container and s has a mapping: t cannot take it. */
        err = (ErrorMessage) {};
        cr_assert_eq(t->ops->attach_device(t, a, &err), -EBUSY);
        cr_assert(strstr(err.text, "attached to another address space"), "%s", err.text);
        s->ops->detach_device(s, a);
        err = (ErrorMessage) {};
        cr_assert_eq(t->ops->attach_device(t, a, &err), -EBUSY);
        cr_assert(strstr(err.text, "last group in the VFIO container of another address space, which has 1 mapping"),
                  "%s", err.text);
        cr_assert_eq(fake.group_container[12], 1);

        /* Once unmapped, it may go; s has no IOMMU left then. */
        cr_assert_eq(s->ops->unmap(s, &m, &err), 0);
        err = (ErrorMessage) {};
        cr_assert_eq(t->ops->attach_device(t, a, &err), 0, "%s", err.text);
        cr_assert_neq(fake.group_container[12], 1);
        err = (ErrorMessage) {};
        cr_assert_eq(s->ops->map(s, &m, &err), -EOPNOTSUPP);
        close(fd);
}

static int refuse_reopen(VfioDev *d, void *userdata, ErrorMessage *err) {
        (*(unsigned *) userdata)++;
        return error_setf(err, -EBUSY, "%s has a client holding its descriptor", d->name);
}

Test(kernel_iommu, legacy_reopen_check_can_refuse, .init = setup_legacy, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context();
        _cleanup_(iommu_space_freep) IommuSpace *s = NULL;
        _cleanup_(vfio_dev_freep) VfioDev *a = open_device(c, "0000:3b:00.1"), *b = open_device(c, "0000:3c:00.0");
        ErrorMessage err = {};
        unsigned asked = 0;
        int fd_before = b->device_fd;

        kernel_context_set_reopen_check(c, refuse_reopen, &asked);
        cr_assert_eq(kernel_legacy_space_new(c, &s, NULL), 0);
        cr_assert_eq(s->ops->attach_device(s, a, &err), 0, "adopting needs no reopen: %s", err.text);
        cr_assert_eq(asked, 0);
        fake.log[0] = 0;
        cr_assert_eq(s->ops->attach_device(s, b, &err), -EBUSY);
        cr_assert_eq(asked, 1);
        cr_assert(strstr(err.text, "0000:3c:00.0 has a client holding its descriptor"), "%s", err.text);
        cr_assert_str_eq(fake.log, "", "nothing was closed or moved");
        cr_assert_eq(b->device_fd, fd_before);
}

/* The flag in VFIO_DEVICE_GET_INFO is advisory: mtty implements VFIO_DEVICE_RESET without setting
 * it. The ioctl is tried either way; only the kernel's refusal makes a reset unsupported. */
Test(kernel_iommu, reset_is_tried_even_when_unadvertised, .init = setup_legacy, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context();
        FakeDevice *fd = fake_device_by_name("0000:3b:00.1");
        _cleanup_(vfio_dev_freep) VfioDev *advertised = open_device(c, "0000:3b:00.1");

        cr_assert_eq(vfio_dev_reset(advertised), 0);
        cr_expect_eq(fd->resets, 1);

        fd->reset_errno = EINVAL; /* vfio-pci without a reset method */
        cr_expect_eq(vfio_dev_reset(advertised), -EINVAL, "an advertised reset that fails is that failure");
        cr_expect_eq(fd->resets, 1);

        FakeDevice *md = fake_device_by_name(MDEV_UUID);
        md->reset_unadvertised = true;
        _cleanup_(vfio_dev_freep) VfioDev *mdev = open_device(c, MDEV_UUID);
        cr_assert_eq(vfio_dev_reset(mdev), 0);
        cr_expect_eq(md->resets, 1);

        md->reset_errno = ENOTTY;
        cr_expect_eq(vfio_dev_reset(mdev), -EOPNOTSUPP, "a driver without the ioctl: not supported");
        md->reset_errno = EINVAL;
        cr_expect_eq(vfio_dev_reset(mdev), -EOPNOTSUPP);
        md->reset_errno = EIO;
        cr_expect_eq(vfio_dev_reset(mdev), -EIO, "a real failure stays one");
        cr_expect_eq(md->resets, 1);
}

Test(kernel_iommu, legacy_mdev_takes_vaddr_update_away, .init = setup_legacy, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context();
        _cleanup_(iommu_space_freep) IommuSpace *s = NULL;
        _cleanup_(vfio_dev_freep) VfioDev *a = open_device(c, "0000:3b:00.1"), *mdev = open_device(c, MDEV_UUID);
        ErrorMessage err = {};
        int fd = memfd(MiB);
        IommuMapping m = mapping(fd, 0x100000, 0x10000);

        cr_assert_eq(kernel_legacy_space_new(c, &s, NULL), 0);
        cr_assert_eq(s->ops->attach_device(s, a, &err), 0, "%s", err.text);
        cr_assert_eq(s->ops->map(s, &m, &err), 0, "%s", err.text);
        cr_assert_eq(s->ops->attach_device(s, mdev, &err), 0, "%s", err.text);
        cr_assert_eq(kernel_device_get_type1_update_vaddr(a), 0);
        cr_assert_str_eq(s->ops->live_update(s), "a restart of the daemon loses these mappings: legacy VADDR update "
                         "is unavailable with mdev devices in the container");

        fake.log[0] = 0;
        cr_assert_eq(s->ops->prepare_handover(s, &err), -EOPNOTSUPP);
        cr_assert(strstr(err.text, "legacy VADDR update is unavailable with mdev devices: IOMMU group 5, an mdev, is in "
                         "VFIO container 1"), "%s", err.text);
        cr_assert_str_eq(fake.log, "", "nothing was invalidated");
        cr_assert(fake.containers[1].maps[0].valid);
        close(fd);
}

/* Saves everything a daemon would, frees it (the descriptors live on in the "store"), and
 * restores it in a fresh context, as a restarted daemon does. */
typedef struct World {
        KernelContext *c;
        IommuSpace *s;
        VfioDev *devices[4];
        size_t n_devices;
} World;

static void world_done(World *w) {
        for (size_t i = 0; i < w->n_devices; i++)
                vfio_dev_free(w->devices[i]);
        iommu_space_free(w->s);
        kernel_context_unref(w->c);
        *w = (World) {};
}

static void world_restart(World *w, NamedFds *store, bool use_prepare) {
        _cleanup_(json_putp) json_object *context_state = NULL, *space_state = NULL;
        json_object *device_state[4] = {};
        _cleanup_(named_fds_done) NamedFds borrowed = {};
        _cleanup_strv_free_ char **released = NULL;
        size_t n = w->n_devices;
        ErrorMessage err = {};

        if (use_prepare)
                cr_assert_eq(w->s->ops->prepare_handover(w->s, &err), 0, "%s", err.text);
        cr_assert_eq(kernel_context_save(w->c, &context_state, &borrowed), 0);
        cr_assert_eq(kernel_space_save(w->s, &space_state), 0);
        for (size_t i = 0; i < n; i++)
                cr_assert_eq(kernel_device_save(w->devices[i], &device_state[i], &borrowed), 0);
        store_copy(&borrowed, store);
        named_fds_done(&borrowed);
        world_done(w);

        w->c = context();
        cr_assert_eq(kernel_context_restore(w->c, context_state, store, &err), 0, "%s", err.text);
        cr_assert_eq(kernel_space_restore(w->c, space_state, &w->s, &err), 0, "%s", err.text);
        for (size_t i = 0; i < n; i++) {
                cr_assert_eq(kernel_device_restore(w->c, device_state[i], store, &w->devices[i], &err), 0, "%s",
                             err.text);
                cr_assert(has_cloexec(w->devices[i]->device_fd));
                json_object_put(device_state[i]);
        }
        w->n_devices = n;
        cr_assert_eq(store->n, 0, "every descriptor was taken");
        cr_assert_eq(kernel_context_restore_finish(w->c, &released), 0);
        cr_assert_null(released[0], "every restored group was claimed");
}

static void take_over_and_check(World *w, IommuMapping *m, size_t n, bool prepared) {
        IommuMapping *list[4];
        ErrorMessage err = {};
        int fc = fake.group_container[12];

        for (size_t i = 0; i < n; i++) {
                m[i].vaddr = NULL;
                list[i] = &m[i];
        }
        cr_assert_eq(w->s->ops->take_over(w->s, list, n, prepared, &err), 0, "%s", err.text);
        for (size_t i = 0; i < n; i++) {
                cr_assert_not_null(m[i].vaddr);
                for (int j = 0; j < fake.containers[fc].n_maps; j++)
                        if (fake.containers[fc].maps[j].iova == m[i].iova) {
                                cr_assert(fake.containers[fc].maps[j].valid);
                                cr_assert_eq(fake.containers[fc].maps[j].vaddr, (uint64_t) (uintptr_t) m[i].vaddr);
                        }
        }
}

static void legacy_world(World *w, IommuMapping *m, int fd) {
        ErrorMessage err = {};

        w->c = context();
        w->devices[w->n_devices++] = open_device(w->c, "0000:3b:00.1");
        w->devices[w->n_devices++] = open_device(w->c, "0000:3c:00.0");
        cr_assert_eq(kernel_legacy_space_new(w->c, &w->s, NULL), 0);
        for (size_t i = 0; i < w->n_devices; i++)
                cr_assert_eq(w->s->ops->attach_device(w->s, w->devices[i], &err), 0, "%s", err.text);
        m[0] = mapping(fd, 0x100000, 0x10000);
        m[1] = (IommuMapping) { .iova = 0x200000, .length = 0x1000, .offset = 0x10000, .access = IOMMU_READ, .fd = fd };
        cr_assert_eq(w->s->ops->map(w->s, &m[0], &err), 0, "%s", err.text);
        cr_assert_eq(w->s->ops->map(w->s, &m[1], &err), 0, "%s", err.text);
}

Test(kernel_iommu, legacy_planned_restart, .init = setup_legacy, .fini = teardown) {
        _cleanup_(named_fds_done) NamedFds store = {};
        World w = {};
        IommuMapping m[2];
        int fd = memfd(MiB);
        ErrorMessage err = {};

        legacy_world(&w, m, fd);
        fake.log[0] = 0;
        world_restart(&w, &store, /* use_prepare= */ true);
        cr_assert(fake.log[0] == 'U' && log_has("UNMAP_DMA_VADDR_ALL(1)"), "%s", fake.log);
        cr_assert(!fake.containers[1].maps[0].valid && !fake.containers[1].maps[1].valid);
        /* No open, bind, attach or group move happened in the successor. */
        cr_assert(!log_has("SET_CONTAINER") && !log_has("GET_DEVICE_FD") && !log_has("SET_IOMMU"), "%s", fake.log);
        cr_assert_eq(fake.group_container[12], 1);

        fake.log[0] = 0;
        take_over_and_check(&w, m, 2, /* prepared= */ true);
        cr_assert_str_eq(fake.log, "MAP_DMA_VADDR(1,0x100000) MAP_DMA_VADDR(1,0x200000) ");
        cr_assert_eq(pwrite(fd, "after", 5, 0), 5);
        cr_assert_eq(memcmp(m[0].vaddr, "after", 5), 0);

        /* The devices rejoin their space without a kernel call. */
        fake.log[0] = 0;
        for (size_t i = 0; i < w.n_devices; i++)
                cr_assert_eq(w.s->ops->attach_device(w.s, w.devices[i], &err), 0, "%s", err.text);
        cr_assert_str_eq(fake.log, "");
        cr_assert_eq(kernel_device_get_type1_update_vaddr(w.devices[0]), 1);

        /* And the restored space unmaps what it took over. */
        cr_assert_eq(w.s->ops->unmap(w.s, &m[1], &err), 0, "%s", err.text);
        cr_assert_eq(fake.containers[1].n_maps, 1);
        world_done(&w);
        close(fd);
}

Test(kernel_iommu, legacy_restart_after_a_crash, .init = setup_legacy, .fini = teardown) {
        _cleanup_(named_fds_done) NamedFds store = {};
        World w = {};
        IommuMapping m[2];
        int fd = memfd(MiB);

        legacy_world(&w, m, fd);
        world_restart(&w, &store, /* use_prepare= */ false);
        cr_assert(fake.containers[1].maps[0].valid, "the crashed daemon's addresses are still registered");

        fake.log[0] = 0;
        take_over_and_check(&w, m, 2, /* prepared= */ false);
        cr_assert_str_eq(fake.log, "UNMAP_DMA_VADDR_ALL(1) MAP_DMA_VADDR(1,0x100000) MAP_DMA_VADDR(1,0x200000) ");
        world_done(&w);
        close(fd);
}

Test(kernel_iommu, legacy_restart_after_a_crash_halfway, .init = setup_legacy, .fini = teardown) {
        _cleanup_(named_fds_done) NamedFds store = {};
        World w = {};
        IommuMapping m[2];
        int fd = memfd(MiB);

        /* A successor crashed after registering the first mapping only: one address is valid (of a
         * dead process), one invalid. UNMAP(VADDR|ALL) is refused and rolled back; each mapping
         * is then handled on its own. */
        legacy_world(&w, m, fd);
        world_restart(&w, &store, /* use_prepare= */ true);
        fake.containers[1].maps[0].valid = true;
        cr_assert(!fake.containers[1].maps[1].valid);

        fake.log[0] = 0;
        take_over_and_check(&w, m, 2, /* prepared= */ false);
        cr_assert_str_eq(fake.log, "UNMAP_DMA_VADDR(1) MAP_DMA_VADDR(1,0x100000) MAP_DMA_VADDR(1,0x200000) ",
                         "the refused UNMAP(VADDR|ALL) is not logged; the valid mapping is invalidated alone");
        world_done(&w);
        close(fd);
}

Test(kernel_iommu, legacy_take_over_reports_what_the_kernel_lacks, .init = setup_legacy, .fini = teardown) {
        _cleanup_(named_fds_done) NamedFds store = {};
        World w = {};
        IommuMapping m[3];
        IommuMapping *list[3];
        ErrorMessage err = {};
        int fd = memfd(MiB);

        legacy_world(&w, m, fd);
        world_restart(&w, &store, /* use_prepare= */ true);
        m[2] = mapping(fd, 0x300000, 0x1000); /* never mapped: the records and the kernel disagree */
        for (size_t i = 0; i < 3; i++)
                list[i] = &m[i];
        cr_assert_eq(w.s->ops->take_over(w.s, list, 3, true, &err), -ENOENT);
        cr_assert(strstr(err.text, "1 of 3 mappings could not be taken over (IOVA 0x300000+0x1000): VFIO container 1 "
                         "has no mapping at exactly IOVA 0x300000+0x1000"), "%s", err.text);
        cr_assert_not_null(m[0].vaddr, "the others are ours");
        cr_assert(fake.containers[1].maps[0].valid && fake.containers[1].maps[1].valid);
        world_done(&w);
        close(fd);
}

Test(kernel_iommu, legacy_abandoned_handover_is_undone_by_take_over, .init = setup_legacy, .fini = teardown) {
        World w = {};
        IommuMapping m[2];
        void *old_view;
        int fd = memfd(MiB);
        ErrorMessage err = {};

        legacy_world(&w, m, fd);
        old_view = m[0].vaddr;
        cr_assert_eq(w.s->ops->prepare_handover(w.s, &err), 0, "%s", err.text);
        cr_assert_eq(w.s->ops->prepare_handover(w.s, &err), 0, "preparing twice is harmless: %s", err.text);
        cr_assert(!fake.containers[1].maps[0].valid);

        /* The stop did not happen: the same process registers its addresses again. */
        fake.log[0] = 0;
        take_over_and_check(&w, m, 2, /* prepared= */ true);
        cr_assert_str_eq(fake.log, "MAP_DMA_VADDR(1,0x100000) MAP_DMA_VADDR(1,0x200000) ");
        cr_assert_neq(m[0].vaddr, old_view, "a fresh view; the old one is unmapped");
        cr_assert_eq(w.s->ops->unmap(w.s, &m[0], &err), 0, "%s", err.text);
        cr_assert_eq(fake.containers[1].n_maps, 1);
        world_done(&w);
        close(fd);
}

Test(kernel_iommu, device_save_format, .init = setup_legacy, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context();
        _cleanup_(vfio_dev_freep) VfioDev *a = open_device(c, "0000:3b:00.1"), *mdev = open_device(c, MDEV_UUID);
        _cleanup_(json_putp) json_object *o = NULL, *p = NULL;
        _cleanup_(named_fds_done) NamedFds fds = {};
        _cleanup_free_ char *name = NULL, *expected = NULL;

        cr_assert_eq(kernel_device_fd_name(mdev, &name), 0);
        cr_assert_str_eq(name, "k-device-" MDEV_UUID);
        cr_assert_eq(kernel_device_save(a, &o, &fds), 0);
        {
                char real[PATH_MAX];

                /* the tree may sit behind a symlink (TMPDIR): sysfs paths are resolved */
                cr_assert_not_null(realpath(root, real));
                cr_assert_geq(asprintf(&expected, "{\"name\":\"0000:3b:00.1\",\"address\":\"0000:3b:00.1\","
                                       "\"driver\":\"vfio-pci\",\"sysfs-path\":\"%s/sys/devices/pci0000:00/0000:3b:00.1\","
                                       "\"fd\":\"k-device-0000_3b_00_1\",\"path\":\"legacy\",\"iommu-group\":12,"
                                       "\"mdev\":false}", real), 0);
        }
        cr_assert_str_eq(json(o), expected);
        cr_assert_eq(fds.n, 1);
        cr_assert_str_eq(fds.items[0].name, "k-device-0000_3b_00_1");
        cr_assert_eq(fds.items[0].fd, a->device_fd);
        cr_assert(!fds.items[0].owned);
        cr_assert_eq(kernel_device_save(mdev, &p, &fds), 0);
        cr_assert(strstr(json(p), "\"mdev\":true"), "%s", json(p));
        cr_assert_eq(kernel_device_save(a, &p, &fds), -EEXIST, "a name twice in one set is refused");
}

/* ================= against the model of the kernel: iommufd ================= */

static void iommufd_world(World *w) {
        ErrorMessage err = {};

        w->c = context();
        w->devices[w->n_devices++] = open_device(w->c, "0000:3b:00.1");
        cr_assert_eq(w->devices[0]->backend, VFIO_BACKEND_IOMMUFD);
        cr_assert_eq(kernel_iommufd_space_new(w->c, &w->s, &err), 0, "%s", err.text);
        cr_assert_eq(w->s->ops->attach_device(w->s, w->devices[0], &err), 0, "%s", err.text);
}

/* A mapping whose file the fd store did not hand back (persist.c): the successor removes its
 * translation, which the kernel kept, before taking the others over, with no descriptor for it;
 * then nothing of it remains and the others move as usual. */
static void legacy_lost_mapping(bool prepared) {
        _cleanup_(named_fds_done) NamedFds store = {};
        World w = {};
        IommuMapping m[2], lost;
        int fd = memfd(MiB);
        ErrorMessage err = {};

        legacy_world(&w, m, fd);
        world_restart(&w, &store, prepared);
        fake.log[0] = 0;
        lost = m[1];
        lost.fd = -EBADF;
        lost.vaddr = NULL;
        cr_assert_eq(w.s->ops->unmap(w.s, &lost, &err), 0, "%s", err.text);
        cr_assert_str_eq(fake.log, "UNMAP_DMA(1,0x200000) ");
        cr_assert_eq(fake.containers[1].n_maps, 1);
        cr_assert_eq(fake.containers[1].maps[0].iova, 0x100000);
        fake.log[0] = 0;
        take_over_and_check(&w, m, 1, prepared);
        cr_assert_str_eq(fake.log, prepared ? "MAP_DMA_VADDR(1,0x100000) "
                                            : "UNMAP_DMA_VADDR_ALL(1) MAP_DMA_VADDR(1,0x100000) ");
        world_done(&w);
        close(fd);
}

Test(kernel_iommu, legacy_lost_mapping_is_unmapped_before_take_over, .init = setup_legacy, .fini = teardown) {
        legacy_lost_mapping(/* prepared= */ true);
}

Test(kernel_iommu, legacy_lost_mapping_is_unmapped_after_a_crash, .init = setup_legacy, .fini = teardown) {
        legacy_lost_mapping(/* prepared= */ false);
}

Test(kernel_iommu, iommufd_lost_mapping_is_unmapped_before_take_over, .init = setup_iommufd, .fini = teardown) {
        _cleanup_(named_fds_done) NamedFds store = {};
        World w = {};
        IommuMapping m[2], lost;
        IommuMapping *list[1] = { &m[0] };
        ErrorMessage err = {};
        int fd = memfd(MiB);

        iommufd_world(&w);
        m[0] = mapping(fd, 0x100000, 0x10000);
        m[1] = mapping(fd, 0x200000, 0x10000);
        for (size_t i = 0; i < 2; i++)
                cr_assert_eq(w.s->ops->map(w.s, &m[i], &err), 0, "%s", err.text);
        world_restart(&w, &store, /* use_prepare= */ false);
        cr_assert_eq(fake.ioas[1].n_maps, 2);

        fake.log[0] = 0;
        lost = m[1];
        lost.fd = -EBADF;
        cr_assert_eq(w.s->ops->unmap(w.s, &lost, &err), 0, "%s", err.text);
        cr_assert_eq(w.s->ops->take_over(w.s, list, 1, false, &err), 0, "%s", err.text);
        cr_assert_str_eq(fake.log, "IOAS_UNMAP(1,0x200000) CHANGE_PROCESS ");
        cr_assert_eq(fake.ioas[1].n_maps, 1);
        cr_assert_eq(fake.ioas[1].maps[0].iova, 0x100000);
        /* Unmapping it again finds nothing: the kernel's ENOENT, which persist.c takes as "not mapped". */
        cr_assert_eq(w.s->ops->unmap(w.s, &lost, &err), -ENOENT);
        world_done(&w);
        close(fd);
}

Test(kernel_iommu, iommufd_by_file_and_restart, .init = setup_iommufd, .fini = teardown) {
        _cleanup_(named_fds_done) NamedFds store = {};
        _cleanup_(json_putp) json_object *saved = NULL;
        World w = {};
        IommuMapping m = {};
        IommuMapping *list[1] = { &m };
        ErrorMessage err = {};
        int fd = memfd(MiB);

        iommufd_world(&w);
        cr_assert_str_eq(fake.log, "BIND(0000:3b:00.1,1) IOAS_ALLOC(1) ATTACH(0000:3b:00.1,1) ");
        m = mapping(fd, 0x100000, 0x10000);
        cr_assert_eq(w.s->ops->map(w.s, &m, &err), 0, "%s", err.text);
        cr_assert(m.by_file);
        cr_assert_null(m.vaddr);
        cr_assert_eq(fake.ioas[1].n_maps, 1);
        cr_assert(fake.ioas[1].maps[0].by_file);
        cr_assert_eq(kernel_space_save(w.s, &saved), 0);
        cr_assert_str_eq(json(saved), "{\"backend\":\"iommufd\",\"ioas-id\":1,\"mapping-style\":\"by-file\","
                                      "\"by-address-mappings\":0}");
        {
                _cleanup_(json_putp) json_object *d = NULL;
                _cleanup_(named_fds_done) NamedFds fds = {};

                cr_assert_eq(kernel_device_save(w.devices[0], &d, &fds), 0);
                cr_assert(strstr(json(d), "\"path\":\"iommufd\",\"iommu-group\":12,\"mdev\":false,\"devid\":1,"
                                 "\"ioas-id\":1,\"hwpt-id\":101}"), "%s", json(d));
        }

        fake.log[0] = 0;
        world_restart(&w, &store, /* use_prepare= */ true);
        cr_assert_eq(fake.change_process_calls, 1, "the pre-flight check in the old process");
        cr_assert_str_eq(fake.log, "CHANGE_PROCESS ", "no DESTROY, DETACH or UNMAP at exit: %s", fake.log);
        cr_assert(fake.ioas[1].exists);

        fake.log[0] = 0;
        cr_assert_eq(w.s->ops->take_over(w.s, list, 1, true, &err), 0, "%s", err.text);
        cr_assert_eq(w.s->ops->attach_device(w.s, w.devices[0], &err), 0, "%s", err.text);
        cr_assert_str_eq(fake.log, "CHANGE_PROCESS ATTACH(0000:3b:00.1,1) ");

        /* CHANGE_PROCESS covers the whole iommufd: a second space takes over without it. */
        {
                _cleanup_(json_putp) json_object *j = parse("{\"backend\":\"iommufd\",\"ioas-id\":1,"
                                                            "\"mapping-style\":\"by-file\"}");
                _cleanup_(iommu_space_freep) IommuSpace *other = NULL;
                IommuMapping m2 = mapping(fd, 0x100000, 0x10000);
                IommuMapping *l2[1] = { &m2 };

                m2.by_file = true;
                cr_assert_eq(kernel_space_restore(w.c, j, &other, &err), 0, "%s", err.text);
                cr_assert_eq(other->ops->take_over(other, l2, 1, false, &err), 0, "%s", err.text);
                cr_assert_eq(fake.change_process_calls, 2);
        }

        cr_assert_eq(w.s->ops->unmap(w.s, &m, &err), 0, "%s", err.text);
        cr_assert_eq(fake.ioas[1].n_maps, 0);
        fake.log[0] = 0;
        w.s->ops->detach_device(w.s, w.devices[0]);
        cr_assert_str_eq(fake.log, "DETACH(0000:3b:00.1) ");
        world_done(&w);
        cr_assert(!fake.ioas[1].exists, "an empty IOAS is destroyed with its space");
        close(fd);
}

Test(kernel_iommu, iommufd_restore_replaces_a_vanished_ioas, .init = setup_iommufd, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context();
        _cleanup_(json_putp) json_object *ctx = parse("{\"iommufd\":\"k-iommufd\",\"next-container-id\":1,"
                                                      "\"containers\":[]}");
        _cleanup_(json_putp) json_object *j = parse("{\"backend\":\"iommufd\",\"ioas-id\":7,"
                                                    "\"mapping-style\":\"by-file\"}");
        _cleanup_(iommu_space_freep) IommuSpace *s = NULL;
        _cleanup_(named_fds_done) NamedFds fds = {};
        int fd = memfd(MiB);
        IommuMapping m = mapping(fd, 0x100000, 0x1000);
        IommuMapping *list[1] = { &m };
        ErrorMessage err = {};
        uint32_t ioas = 0;

        cr_assert_eq(named_fds_add(&fds, "k-iommufd", open(at("dev/iommu"), O_RDWR), true), 0);
        cr_assert_eq(kernel_context_restore(c, ctx, &fds, &err), 0, "%s", err.text);
        cr_assert_eq(kernel_space_restore(c, j, &s, &err), 0, "%s", err.text);
        cr_assert_eq(kernel_space_get_ioas_id(s, &ioas), 0);
        cr_assert_eq(ioas, 1, "IOAS 7 is gone: a new one was allocated");
        m.by_file = true;
        cr_assert_eq(s->ops->take_over(s, list, 1, true, &err), -ENOENT);
        cr_assert(strstr(err.text, "IOAS 7 no longer existed when the daemon restarted, so its 1 mapping is lost"),
                  "%s", err.text);
        close(fd);
}

Test(kernel_iommu, iommufd_falls_back_to_mapping_by_address, .init = setup_iommufd, .fini = teardown) {
        _cleanup_(named_fds_done) NamedFds store = {};
        World w = {};
        IommuMapping m[2];
        IommuMapping *list[2] = { &m[0], &m[1] };
        ErrorMessage err = {};
        int fd = memfd(MiB);

        fake.has_map_file = fake.has_change_process = false;
        iommufd_world(&w);
        m[0] = mapping(fd, 0x100000, 0x10000);
        m[1] = mapping(fd, 0x200000, 0x1000);
        for (size_t i = 0; i < 2; i++) {
                cr_assert_eq(w.s->ops->map(w.s, &m[i], &err), 0, "%s", err.text);
                cr_assert(!m[i].by_file);
                cr_assert_not_null(m[i].vaddr);
        }
        cr_assert_eq(fake.ioas[1].maps[0].vaddr, (uint64_t) (uintptr_t) m[0].vaddr);
        cr_assert_str_eq(w.s->ops->live_update(w.s), "mappings by address: a restart of the daemon loses them (this "
                         "kernel lacks IOMMU_IOAS_MAP_FILE, Linux 6.13)");
        cr_assert_eq(w.s->ops->prepare_handover(w.s, &err), -EOPNOTSUPP);
        cr_assert(strstr(err.text, "2 mappings of IOAS 1 are by address"), "%s", err.text);

        world_restart(&w, &store, /* use_prepare= */ false);
        cr_assert_str_eq(w.s->ops->live_update(w.s), "mappings by address: a restart of the daemon loses them (this "
                         "kernel lacks IOMMU_IOAS_MAP_FILE, Linux 6.13)");
        err = (ErrorMessage) {};
        cr_assert_eq(w.s->ops->take_over(w.s, list, 2, false, &err), -EOPNOTSUPP);
        cr_assert(strstr(err.text, "2 mappings of IOAS 1 were made by address (this kernel lacks IOMMU_IOAS_MAP_FILE, "
                         "Linux 6.13) and cannot change owner: IOVA 0x100000+0x10000, 0x200000+0x1000"), "%s",
                  err.text);
        /* They are still in the IOMMU and can be unmapped. */
        cr_assert_eq(w.s->ops->unmap(w.s, &m[0], &err), 0, "%s", err.text);
        cr_assert_eq(fake.ioas[1].n_maps, 1);
        world_done(&w);
        close(fd);
}

Test(kernel_iommu, iommufd_without_change_process, .init = setup_iommufd, .fini = teardown) {
        World w = {};
        IommuMapping m;
        ErrorMessage err = {};
        int fd = memfd(MiB);

        fake.has_change_process = false;
        iommufd_world(&w);
        m = mapping(fd, 0x100000, 0x10000);
        cr_assert_eq(w.s->ops->map(w.s, &m, &err), 0, "%s", err.text);
        cr_assert(m.by_file);
        cr_assert_eq(w.s->ops->prepare_handover(w.s, &err), -EOPNOTSUPP);
        cr_assert(strstr(err.text, "this kernel lacks IOMMU_IOAS_CHANGE_PROCESS (Linux 6.13)"), "%s", err.text);
        cr_assert_str_eq(w.s->ops->live_update(w.s), "mappings by file cannot change owner, so a restart of the daemon "
                         "loses them: this kernel lacks IOMMU_IOAS_CHANGE_PROCESS (Linux 6.13)");
        /* Not prepared: the space keeps its IOAS (it has a mapping) and detaches on exit. */
        fake.log[0] = 0;
        world_done(&w);
        cr_assert(fake.ioas[1].exists);
        close(fd);
}

Test(kernel_iommu, iommufd_refusals, .init = setup_iommufd, .fini = teardown) {
        _cleanup_(kernel_context_unrefp) KernelContext *c = context();
        _cleanup_(iommu_space_freep) IommuSpace *s = NULL, *t = NULL, *legacy = NULL;
        _cleanup_(vfio_dev_freep) VfioDev *a = open_device(c, "0000:3b:00.1");
        ErrorMessage err = {};
        int fd = memfd(MiB);
        IommuMapping bad = mapping(fd, 0x100000, 0x1000);

        cr_assert_eq(kernel_iommufd_space_new(c, &s, &err), 0, "%s", err.text);
        cr_assert_eq(kernel_iommufd_space_new(c, &t, &err), 0, "%s", err.text);
        cr_assert_eq(kernel_legacy_space_new(c, &legacy, &err), 0, "%s", err.text);
        cr_assert_eq(s->ops->attach_device(s, a, &err), 0, "%s", err.text);
        cr_assert_eq(t->ops->attach_device(t, a, &err), -EBUSY);
        cr_assert(strstr(err.text, "attached to another address space"), "%s", err.text);
        err = (ErrorMessage) {};
        cr_assert_eq(legacy->ops->attach_device(legacy, a, &err), -EINVAL);
        cr_assert(strstr(err.text, "not opened through the legacy VFIO group API"), "%s", err.text);

        bad.access = 0;
        err = (ErrorMessage) {};
        cr_assert_eq(s->ops->map(s, &bad, &err), -EINVAL);
        cr_assert(strstr(err.text, "access"), "%s", err.text);
        bad = mapping(-EBADF, 0x100000, 0x1000);
        cr_assert_eq(s->ops->map(s, &bad, NULL), -EBADF);
        bad = mapping(fd, 0x100000, 0);
        cr_assert_eq(s->ops->map(s, &bad, NULL), -EINVAL);
        bad = mapping(fd, UINT64_MAX - 0xfff, 0x2000);
        cr_assert_eq(s->ops->map(s, &bad, NULL), -EOVERFLOW);
        bad = mapping(fd, 0x100000, 0x1000);
        cr_assert_eq(s->ops->unmap(s, &bad, &err), -ENOENT);

        /* The device goes first: the space forgets it, and then has nothing attached. */
        vfio_dev_free(TAKE_PTR(a));
        close(fd);
}
