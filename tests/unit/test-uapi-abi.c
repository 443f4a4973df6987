/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * Our own VFIO and iommufd uAPI definitions against the build host's kernel headers, fact by
 * fact (abi-facts.h): sizes, alignments, offsets, constants and ioctl numbers. Each kernel
 * release group is its own test, skipped when the host's headers predate it, so that a host with
 * newer headers checks more.
 */

#include <criterion/criterion.h>
#include <criterion/logging.h>

#include "abi-system.h"
#include "iommufd-uapi.h"
#include "macro.h"
#include "vfio-uapi.h"

#define ABI_SIZE(tier, type) { #tier, "sizeof(" #type ")", sizeof(type), true },
#define ABI_ALIGN(tier, type) { #tier, "_Alignof(" #type ")", _Alignof(type), true },
#define ABI_OFFSET(tier, type, field) { #tier, "offsetof(" #type ", " #field ")", offsetof(type, field), true },
#define ABI_CONST(tier, name) { #tier, #name, (uint64_t) (name), true },

static const AbiFact ours[] = {
#include "abi-facts.h"
};

static void check_tier(const char *tier, const char *missing) {
        const AbiFact *host;
        size_t n, total = 0, compared = 0, mismatched = 0;

        host = abi_system_facts(&n);
        cr_assert_eq(n, ELEMENTSOF(ours), "both sides must be built from the same list");

        for (size_t i = 0; i < n; i++) {
                cr_assert_str_eq(host[i].what, ours[i].what);
                cr_assert_str_eq(host[i].tier, ours[i].tier);
                if (!streq(ours[i].tier, tier))
                        continue;
                total++;
                if (!host[i].present)
                        continue;
                compared++;
                if (host[i].value == ours[i].value)
                        continue;
                mismatched++;
                cr_expect_fail("%s: the kernel says %llu (0x%llx), we say %llu (0x%llx)", ours[i].what,
                               (unsigned long long) host[i].value, (unsigned long long) host[i].value,
                               (unsigned long long) ours[i].value, (unsigned long long) ours[i].value);
        }
        cr_assert_gt(total, 0, "no facts listed for tier %s", tier);
        if (compared == 0)
                cr_skip_test("%s: %zu facts of tier %s not cross-checked", missing, total, tier);
        cr_assert_eq(compared, total, "tier %s is only partly present in the host's headers", tier);
        cr_log_info("%zu of %zu facts of tier %s match the host's kernel headers", compared - mismatched, compared, tier);
}

Test(uapi_abi, vfio61) {
        check_tier("vfio61", "The build host has no <linux/vfio.h> (install the kernel uAPI headers, linux-libc-dev)");
}

Test(uapi_abi, vfio_precopy) {
        check_tier("vfio_precopy", "The host's <linux/vfio.h> predates Linux 6.2 (no PRE_COPY, "
                                   "VFIO_MIG_GET_PRECOPY_INFO or MIG_DATA_SIZE)");
}

Test(uapi_abi, vfio_precopy_v2) {
        check_tier("vfio_precopy_v2", "The host's <linux/vfio.h> predates Linux 7.2 (no "
                                      "VFIO_DEVICE_FEATURE_MIG_PRECOPY_INFOv2 or VFIO_PRECOPY_INFO_REINIT)");
}

Test(uapi_abi, vfio_cdev) {
        check_tier("vfio_cdev", "The host's <linux/vfio.h> predates Linux 6.6 (no VFIO_DEVICE_BIND_IOMMUFD)");
}

Test(uapi_abi, iommufd) {
        check_tier("iommufd", "The build host has no <linux/iommufd.h> (Linux 6.2)");
}

Test(uapi_abi, iommufd_dirty) {
        check_tier("iommufd_dirty", "The host's <linux/iommufd.h> predates Linux 6.7 (no HWPT dirty tracking)");
}

Test(uapi_abi, iommufd_cpr) {
        check_tier("iommufd_cpr", "The host's <linux/iommufd.h> predates Linux 6.13 (no IOMMU_IOAS_MAP_FILE or "
                                  "IOMMU_IOAS_CHANGE_PROCESS)");
}
