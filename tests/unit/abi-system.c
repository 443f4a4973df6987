/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * The build host's view of the VFIO/iommufd ABI. This file must never include our own uAPI
 * headers. Each tier of abi-facts.h is compiled in only when the host's headers have it; the
 * guard for each is a macro the kernel added in that same release.
 */

#include "abi-system.h"

#if __has_include(<linux/vfio.h>)
#  include <linux/vfio.h>
#  define ABI_STATE_vfio61 abi_yes
#else
#  define ABI_STATE_vfio61 abi_no
#endif

#if __has_include(<linux/iommufd.h>)
#  include <linux/iommufd.h>
#  define ABI_STATE_iommufd abi_yes
#else
#  define ABI_STATE_iommufd abi_no
#endif

#ifdef VFIO_MIG_GET_PRECOPY_INFO
#  define ABI_STATE_vfio_precopy abi_yes
#else
#  define ABI_STATE_vfio_precopy abi_no
#endif

#ifdef VFIO_PRECOPY_INFO_REINIT
#  define ABI_STATE_vfio_precopy_v2 abi_yes
#else
#  define ABI_STATE_vfio_precopy_v2 abi_no
#endif

#ifdef VFIO_DEVICE_BIND_IOMMUFD
#  define ABI_STATE_vfio_cdev abi_yes
#else
#  define ABI_STATE_vfio_cdev abi_no
#endif

#ifdef IOMMU_HWPT_GET_DIRTY_BITMAP
#  define ABI_STATE_iommufd_dirty abi_yes
#else
#  define ABI_STATE_iommufd_dirty abi_no
#endif

#ifdef IOMMU_IOAS_CHANGE_PROCESS
#  define ABI_STATE_iommufd_cpr abi_yes
#else
#  define ABI_STATE_iommufd_cpr abi_no
#endif

/* The names are stringified here, before the state is expanded: by then a constant's name would
 * already have been replaced by its definition. */
#define ABI_DISPATCH(state, kind, ...) ABI_DISPATCH_(state, kind, __VA_ARGS__)
#define ABI_DISPATCH_(state, kind, ...) ABI_##state##_##kind(__VA_ARGS__)

#define ABI_SIZE(tier, type) ABI_DISPATCH(ABI_STATE_##tier, SIZE, #tier, "sizeof(" #type ")", type)
#define ABI_ALIGN(tier, type) ABI_DISPATCH(ABI_STATE_##tier, ALIGN, #tier, "_Alignof(" #type ")", type)
#define ABI_OFFSET(tier, type, field) \
        ABI_DISPATCH(ABI_STATE_##tier, OFFSET, #tier, "offsetof(" #type ", " #field ")", type, field)
#define ABI_CONST(tier, name) ABI_DISPATCH(ABI_STATE_##tier, CONST, #tier, #name, name)

#define ABI_abi_yes_SIZE(tier, what, type) { tier, what, sizeof(type), true },
#define ABI_abi_yes_ALIGN(tier, what, type) { tier, what, _Alignof(type), true },
#define ABI_abi_yes_OFFSET(tier, what, type, field) { tier, what, offsetof(type, field), true },
#define ABI_abi_yes_CONST(tier, what, name) { tier, what, (uint64_t) (name), true },
#define ABI_abi_no_SIZE(tier, what, type) { tier, what, 0, false },
#define ABI_abi_no_ALIGN(tier, what, type) { tier, what, 0, false },
#define ABI_abi_no_OFFSET(tier, what, type, field) { tier, what, 0, false },
#define ABI_abi_no_CONST(tier, what, name) { tier, what, 0, false },

static const AbiFact facts[] = {
#include "abi-facts.h"
};

const AbiFact *abi_system_facts(size_t *ret_n) {
        *ret_n = sizeof facts / sizeof facts[0];
        return facts;
}
