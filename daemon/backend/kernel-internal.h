/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Private to the kernel backend (kernel-device.c and kernel-iommu.c): the objects behind
 * KernelContext and the helpers both files use. Nothing outside daemon/backend/kernel-*.c may
 * include this.
 *
 * Ownership:
 *  - devices and address spaces hold a reference to the context;
 *  - a device holds its group (legacy path); a legacy address space holds every group in its
 *    container, and the container itself;
 *  - a group holds the container it is attached to;
 *  - after kernel_context_restore() the context holds ("pins") every restored group until
 *    kernel_context_restore_finish() or its own end, so that groups survive until the devices
 *    and spaces that use them are restored.
 * Groups and containers hold no reference to the context: they never outlive all of their
 * holders, and the holders keep the context alive.
 */

#include <json.h>

#include "iommu-space.h"
#include "kernel-device.h"

typedef struct KernelContainer KernelContainer;
typedef struct KernelGroup KernelGroup;
typedef struct KernelDevice KernelDevice;

/* A type1 container (/dev/vfio/vfio). */
struct KernelContainer {
        unsigned n_ref;
        KernelContext *context;
        KernelContainer *next;
        unsigned id;          /* stable within the context and across restarts: "k-container-<id>" */
        int fd;
        unsigned n_groups;    /* our groups attached to it */
        bool iommu_set;       /* VFIO_SET_IOMMU done; the kernel drops it with the last group */
        bool update_vaddr;    /* CHECK_EXTENSION(VFIO_UPDATE_VADDR) as last answered */
        IommuSpace *space;    /* the legacy address space that owns it (weak), or NULL */
        uint64_t n_mappings;  /* DMA mappings in it, as far as the owning space knows */
};

/* An open VFIO group (/dev/vfio/<number>), shared by every device of the group we open. */
struct KernelGroup {
        unsigned n_ref;
        KernelContext *context;
        KernelGroup *next;
        unsigned number;
        int fd;
        bool is_mdev;         /* an emulated group: it takes VFIO_UPDATE_VADDR away from its container */
        bool pinned;          /* the context holds a reference since kernel_context_restore() */
        KernelContainer *container;
        KernelDevice *devices; /* weak: our open devices of this group, linked by group_next */
};

struct KernelContext {
        unsigned n_ref;
        char *sysfs_root;
        char *dev_root;
        bool prefer_legacy;
        int (*ioctl_fn)(int fd, unsigned long request, void *arg, void *userdata);
        void *ioctl_userdata;
        KernelReopenCheck reopen_check;
        void *reopen_userdata;

        int iommufd;
        unsigned next_container_id;
        int map_file;          /* IOMMU_IOAS_MAP_FILE: -1 not known yet, 0 the kernel lacks it, 1 present */
        int change_process;    /* IOMMU_IOAS_CHANGE_PROCESS: likewise */
        bool restored;         /* the iommufd came from a predecessor (kernel_context_restore()) */
        bool change_process_done; /* IOMMU_IOAS_CHANGE_PROCESS succeeded in this process */
        uint64_t n_by_address; /* iommufd mappings by address (IOMMU_IOAS_MAP), over all spaces */

        /* Weak lists: members remove themselves when they go. */
        KernelGroup *groups;
        KernelContainer *containers;
};

struct KernelDevice {
        VfioDev dev; /* first, so that the operations can get from VfioDev back to KernelDevice */
        KernelContext *context;
        KernelGroup *group;       /* legacy path only */
        KernelDevice *group_next; /* in group->devices */
        int iommu_group;
        bool is_mdev;
        uint32_t devid;           /* iommufd path only */
        uint32_t info_flags;
        IommuSpace *space;        /* the kernel address space it is attached to (weak), or NULL */
        uint32_t attached_pt;     /* iommufd: the IOAS it is attached to, 0 if none */
        uint32_t hwpt_id;         /* iommufd: the HWPT the kernel attached it to */
};

/* ioctl(2), or the test hook of KernelContextOptions: the result, or a negative errno. */
int kernel_ioctl(KernelContext *c, int fd, unsigned long request, void *arg);

/* The KernelDevice behind d, or NULL if d is not a kernel device. */
KernelDevice *kernel_device_from_dev(VfioDev *d);

KernelContainer *kernel_container_ref(KernelContainer *k);
KernelContainer *kernel_container_unref(KernelContainer *k);
DEFINE_TRIVIAL_CLEANUP_FUNC(KernelContainer *, kernel_container_unref);
/* Opens a new, empty type1 container and registers it with the context under a fresh id. */
int kernel_container_new(KernelContext *c, KernelContainer **ret, ErrorMessage *err);
/* Asks CHECK_EXTENSION(VFIO_UPDATE_VADDR) again and records the answer (1 or 0), or returns a
 * negative errno when the container cannot answer. */
int kernel_container_check_update_vaddr(KernelContainer *k);
/* Whether an emulated (mdev) group of ours is in the container, and the number of the first. */
bool kernel_container_has_mdev(KernelContainer *k, unsigned *ret_group);

KernelGroup *kernel_group_ref(KernelGroup *g);
KernelGroup *kernel_group_unref(KernelGroup *g);
DEFINE_TRIVIAL_CLEANUP_FUNC(KernelGroup *, kernel_group_unref);

/*
 * Moves group g into the container target: asks the context's reopen check for every device of
 * g, closes their descriptors, VFIO_GROUP_UNSET_CONTAINER, VFIO_GROUP_SET_CONTAINER(target) (with
 * VFIO_SET_IOMMU when target has no IOMMU yet), and VFIO_GROUP_GET_DEVICE_FD for every device
 * again, updating VfioDev.device_fd in place. On failure the group is put back where it was as
 * far as the kernel allows and the devices are reopened; the message says what happened.
 */
int kernel_group_move(KernelGroup *g, KernelContainer *target, ErrorMessage *err);

/* kernel-iommu.c: the device is going away; drop it from the space's list (no ioctl). */
void kernel_space_forget_device(IommuSpace *s, VfioDev *d);

/* Small JSON helpers; the getters fill err with a message naming what and key. */
int kjson_add_u64(json_object *o, const char *key, uint64_t v);
int kjson_add_string(json_object *o, const char *key, const char *v);
int kjson_add_bool(json_object *o, const char *key, bool v);
int kjson_add_null(json_object *o, const char *key);
/* -ENOENT (message set) when absent, -EINVAL when of the wrong type or range. A key present
 * with the JSON value null counts as absent for the _opt variants, which then return 0 and
 * leave *ret untouched. */
int kjson_get_u32(json_object *o, const char *key, const char *what, uint32_t *ret, ErrorMessage *err);
int kjson_get_u32_opt(json_object *o, const char *key, const char *what, uint32_t *ret, ErrorMessage *err);
int kjson_get_bool(json_object *o, const char *key, const char *what, bool *ret, ErrorMessage *err);
int kjson_get_string(json_object *o, const char *key, const char *what, const char **ret, ErrorMessage *err);
int kjson_get_string_opt(json_object *o, const char *key, const char *what, const char **ret, ErrorMessage *err);
int kjson_get_array(json_object *o, const char *key, const char *what, json_object **ret, ErrorMessage *err);
