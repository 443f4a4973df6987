/* SPDX-License-Identifier: GPL-2.0-or-later */

/* org.vfiomig1.SimDevice, served beside org.vfiomig1.Device on simulated devices only. */

#include <string.h>

#include "bus-polkit.h"
#include "bus-service.h"
#include "bus-util.h"
#include "sim-device.h"
#include "sim-iommu.h"
#include "vfiomig1.h"

/* One D-Bus message carries at most 128 MiB; a test needs far less. */
#define SIM_DMA_MAX (UINT64_C(1) << 20)

int bus_sim_device_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                               void **ret_found, sd_bus_error *error) {
        Device *d = NULL;
        int r = bus_device_object_find(bus, path, interface, userdata, (void **) &d, error);

        if (r <= 0 || !vfio_dev_is_sim(d->dev))
                return 0;
        *ret_found = d;
        return 1;
}

static BusService *service_of(Device *d) {
        return d->manager->hooks.userdata;
}

static int check_dma(Device *d, uint64_t iova, uint64_t length, sd_bus_error *error) {
        MigState s;

        if (length == 0 || length > SIM_DMA_MAX)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "a DMA moves 1 to %llu bytes",
                                         (unsigned long long) SIM_DMA_MAX);
        if (iova + length < iova)
                return sd_bus_error_set(error, SD_BUS_ERROR_INVALID_ARGS, "the range wraps around");
        if (!d->space)
                return sd_bus_error_setf(error, VFIOMIG_ERROR_DMA_FAULT,
                                         "%s is not attached to an address space: every DMA faults", d->id);
        /* As the uAPI demands of hardware: no DMA in stop, stop-copy, resuming or error. */
        if (vfio_dev_get_state(d->dev, &s) >= 0 && !mig_state_is_running(s))
                return sd_bus_error_setf(error, VFIOMIG_ERROR_DMA_FAULT,
                                         "%s is in %s: a device that is not running performs no DMA", d->id,
                                         mig_state_to_string(s));
        return 0;
}

static int method_dma_write(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        ErrorMessage err = {};
        const void *data;
        size_t size;
        uint64_t iova;
        int r;

        r = sd_bus_message_read(m, "t", &iova);
        if (r >= 0)
                r = sd_bus_message_read_array(m, 'y', &data, &size);
        if (r < 0)
                return r;
        r = check_dma(d, iova, size, error);
        if (r < 0)
                return r;

        /* It writes guest memory: as privileged as mapping it. */
        const char *details[] = { "device", d->id, "space", d->space->id, NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MAP_DMA, details, &service_of(d)->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        r = sim_iommu_dma(d->space->iommu, iova, (void *) data, size, true, &err);
        if (r == -EFAULT)
                return bus_error_from_message(error, VFIOMIG_ERROR_DMA_FAULT, r, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_FAILED, r, &err);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_dma_read(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        _cleanup_free_ void *buf = NULL;
        Device *d = userdata;
        ErrorMessage err = {};
        uint64_t iova, length;
        int r;

        r = sd_bus_message_read(m, "tt", &iova, &length);
        if (r < 0)
                return r;
        r = check_dma(d, iova, length, error);
        if (r < 0)
                return r;

        /* Reading guest memory is as sensitive as writing it. */
        const char *details[] = { "device", d->id, "space", d->space->id, NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MAP_DMA, details, &service_of(d)->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        buf = malloc(length);
        if (!buf)
                return -ENOMEM;
        r = sim_iommu_dma(d->space->iommu, iova, buf, length, false, &err);
        if (r == -EFAULT)
                return bus_error_from_message(error, VFIOMIG_ERROR_DMA_FAULT, r, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_FAILED, r, &err);
        r = sd_bus_message_new_method_return(m, &reply);
        if (r >= 0)
                r = sd_bus_message_append_array(reply, 'y', buf, length);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int property_get_state_digest(sd_bus *bus, const char *path, const char *interface, const char *property,
                                     sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        return sd_bus_message_append(reply, "t", sim_device_state_digest(d->dev));
}

const sd_bus_vtable bus_sim_device_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("StateDigest", "t", property_get_state_digest, 0, 0),
        SD_BUS_METHOD_WITH_ARGS("DmaWrite",
                                SD_BUS_ARGS("t", iova, "ay", data),
                                SD_BUS_NO_RESULT,
                                method_dma_write,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("DmaRead",
                                SD_BUS_ARGS("t", iova, "t", length),
                                SD_BUS_RESULT("ay", data),
                                method_dma_read,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};
