/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <string.h>

#include "iommu-space.h"
#include "vfiomig1.h"

const char *iommu_backend_to_string(IommuBackend b) {
        static const char *const table[_IOMMU_BACKEND_MAX] = {
                [IOMMU_BACKEND_IOMMUFD] = VFIOMIG_BACKEND_IOMMUFD,
                [IOMMU_BACKEND_LEGACY] = VFIOMIG_BACKEND_LEGACY,
                [IOMMU_BACKEND_SIM] = VFIOMIG_BACKEND_SIM,
        };
        return (int) b >= 0 && b < _IOMMU_BACKEND_MAX ? table[b] : NULL;
}

IommuBackend iommu_backend_from_string(const char *s) {
        for (IommuBackend b = 0; b < _IOMMU_BACKEND_MAX; b++)
                if (s && streq(s, iommu_backend_to_string(b)))
                        return b;
        return _IOMMU_BACKEND_INVALID;
}

IommuSpace *iommu_space_free(IommuSpace *s) {
        if (s)
                s->ops->destroy(s);
        return NULL;
}
