/* SPDX-License-Identifier: GPL-2.0-or-later */

/* org.vfiomig1.Device at /org/vfiomig1/device/ID, one object per attached device. */

#include <fcntl.h>
#include <string.h>

#include "bus-device.h"
#include "bus-move.h"
#include "bus-polkit.h"
#include "bus-service.h"
#include "bus-util.h"
#include "bus-worker.h"
#include "state-transfer.h"
#include "log.h"
#include "vfiomig1.h"

/* Device objects are found through the fallback vtable, which hands handlers the Device; the
 * service observing its manager is the one that registered the hooks. */
static BusService *service_of(Device *d) {
        return d->manager->hooks.userdata;
}

static Device *find_by_id(BusService *s, const char *id) {
        for (size_t i = 0; i < s->manager->n_devices; i++)
                if (streq(s->manager->devices[i]->id, id))
                        return s->manager->devices[i];
        return NULL;
}

Device *bus_device_from_path(BusService *s, const char *path, sd_bus_error *error) {
        const char *id = bus_device_id_from_path(path);
        Device *d;

        if (!id) {
                sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "%s is not a device object path", path);
                return NULL;
        }
        d = find_by_id(s, id);
        if (!d)
                sd_bus_error_setf(error, VFIOMIG_ERROR_NO_SUCH_DEVICE, "No device is attached at %s", path);
        return d;
}

int bus_device_object_find(sd_bus *bus, const char *path, const char *interface, void *userdata, void **ret_found,
                           sd_bus_error *error) {
        BusService *s = userdata;
        const char *id = bus_device_id_from_path(path);
        Device *d;

        if (!id)
                return 0;
        d = find_by_id(s, id);
        if (!d)
                return 0;
        *ret_found = d;
        return 1;
}

int bus_device_node_enumerator(sd_bus *bus, const char *path, void *userdata, char ***ret_nodes,
                               sd_bus_error *error) {
        BusService *s = userdata;
        _cleanup_strv_free_ char **nodes = NULL;
        size_t n = s->manager->n_devices;

        nodes = new0(char *, n + 1);
        if (!nodes)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                int r = bus_device_path(s->manager->devices[i]->id, &nodes[i]);
                if (r < 0)
                        return r;
        }
        *ret_nodes = TAKE_PTR(nodes);
        return 1;
}

static int method_set_state(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        const char *target_name, *recover_name = NULL;
        const BusOption options[] = {
                { VFIOMIG_OPTION_RECOVER_STATE, "s", &recover_name },
                {},
        };
        int target, recover = TRANSITION_NO_RECOVER, r;

        r = sd_bus_message_read(m, "s", &target_name);
        if (r < 0)
                return r;
        r = bus_read_options(m, options, error);
        if (r < 0)
                return r;
        target = mig_state_from_string(target_name);
        if (target < 0)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "'%s' is not a migration state", target_name);
        if (recover_name) {
                recover = mig_state_from_string(recover_name);
                if (recover < 0)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "recover-state '%s' is not a migration state", recover_name);
                if (!mig_state_supported(d->dev->migration_flags, recover))
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                                 "recover-state %s is not a state %s can rest in", recover_name, d->id);
        }

        const char *details[] = { "device", d->id, "target", target_name, NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_SET_STATE, details, &service_of(d)->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        return bus_move_device(service_of(d), m, d, /* reset= */ false, target, recover, error);
}

static int method_get_precopy_info(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        ErrorMessage err = {};
        uint64_t initial, dirty;
        int r;

        r = device_precopy_info(d, &initial, &dirty, &err);
        if (r == -ENOMSG)
                return bus_error_from_message(error, VFIOMIG_ERROR_NO_PRECOPY_SESSION, r, &err);
        if (r == -EOPNOTSUPP)
                return bus_error_from_message(error, VFIOMIG_ERROR_NOT_MIGRATABLE, r, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_FAILED, r, &err);
        return sd_bus_reply_method_return(m, "tt", initial, dirty);
}

static int method_reset(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        BusService *s = service_of(d);
        int r;

        const char *details[] = { "device", d->id, "target", "reset", NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_SET_STATE, details, &s->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        return bus_move_device(s, m, d, /* reset= */ true, VFIO_DEVICE_STATE_RUNNING, TRANSITION_NO_RECOVER, error);
}

static int method_attach_address_space(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        BusService *s = service_of(d);
        ErrorMessage err = {};
        AddressSpace *space;
        const char *path;
        int r;

        r = sd_bus_message_read(m, "o", &path);
        if (r < 0)
                return r;
        space = bus_space_from_path(s, path, error);
        if (!space)
                return -ENOENT;
        r = device_check_attach_space(d, space, &err);
        if (r < 0)
                return bus_error_from_message(error, r == -EBUSY ? VFIOMIG_ERROR_BUSY : SD_BUS_ERROR_INVALID_ARGS, r,
                                              &err);

        const char *details[] = { "device", d->id, "space", space->id, NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MAP_DMA, details, &s->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        r = device_attach_space(d, space, &err);
        if (r == -EBUSY)
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, &err);
        if (r == -EOPNOTSUPP)
                return bus_error_from_message(error, VFIOMIG_ERROR_NOT_SUPPORTED, r, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_FAILED, r, &err);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_open_fd(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_close_ int fd = -EBADF;
        Device *d = userdata;
        BusService *s = service_of(d);
        ErrorMessage err = {};
        const char *client = sd_bus_message_get_sender(m);
        int r;

        if (!client)
                return sd_bus_error_set(error, SD_BUS_ERROR_INVALID_ARGS, "the caller has no bus name to track");
        if (d->dev->device_fd < 0)
                return sd_bus_error_setf(error, VFIOMIG_ERROR_NOT_SUPPORTED, "%s has no descriptor to hand out", d->id);

        /* A device fd gives full control of the device: as privileged as attaching it. */
        const char *details[] = { "device", d->id, NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MANAGE_DEVICES, details, &s->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        r = device_open_fd(d, client, &fd, &err);
        if (r == -E2BIG)
                return bus_error_from_message(error, VFIOMIG_ERROR_LIMIT_EXCEEDED, r, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_FAILED, r, &err);
        r = bus_service_track_client(s, d, client);
        if (r < 0)
                return r;
        /* sd-bus sends its own duplicate; ours closes on return */
        return sd_bus_reply_method_return(m, "h", fd);
}

static int method_revoke_clients(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        BusService *s = service_of(d);
        ErrorMessage err = {};
        int r;

        const char *details[] = { "device", d->id, NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MANAGE_DEVICES, details, &s->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        r = device_check_idle(d, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, &err);
        bus_service_untrack_clients(s, d);
        r = device_revoke_clients(d, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_FAILED, r, &err);
        return sd_bus_reply_method_return(m, NULL);
}

/* A SaveState/LoadState in flight: the call waits for its reply while a worker moves the data;
 * CancelTransfer calls wait for the end too, so that their reply means the device is idle. */
#define TRANSFER_CANCEL_CALLS_MAX 16u

typedef struct TransferJob {
        Device *device;
        sd_bus_message *call;
        Worker *worker;
        sd_bus_message *cancel_calls[TRANSFER_CANCEL_CALLS_MAX];
        size_t n_cancel_calls;
        StateTransfer transfer;
} TransferJob;

static TransferJob *job_of(Device *d) {
        return d->transfer ? (TransferJob *) ((uint8_t *) d->transfer - offsetof(TransferJob, transfer)) : NULL;
}

static void transfer_run(void *userdata) {
        TransferJob *j = userdata;
        (void) state_transfer_run(&j->transfer);
}

static const char *transfer_error_name(StateTransferFailure f) {
        switch (f) {
        case STATE_TRANSFER_REFUSED_STATE:
                return VFIOMIG_ERROR_BUSY;
        case STATE_TRANSFER_TRANSITION:
                return VFIOMIG_ERROR_TRANSITION_FAILED;
        case STATE_TRANSFER_DEVICE_IO:
                return VFIOMIG_ERROR_DEVICE_FAILED;
        case STATE_TRANSFER_STREAM_REJECTED:
                return VFIOMIG_ERROR_STREAM_REJECTED;
        case STATE_TRANSFER_CANCELLED:
                return VFIOMIG_ERROR_CANCELLED;
        case STATE_TRANSFER_TIMED_OUT:
                return VFIOMIG_ERROR_TIMEOUT;
        default:
                return VFIOMIG_ERROR_TRANSFER_FAILED;
        }
}

static const char *transfer_aftermath(const Device *d, const StateTransfer *t) {
        if (t->reset)
                return "; the device was reset so that nothing refused can load";
        if (d->holds_refused_data)
                return "; the device could NOT be reset and still holds the refused data in resuming: it refuses "
                       "state changes until it is reset";
        return "";
}

static void reply_to_cancels(TransferJob *j) {
        const StateTransfer *t = &j->transfer;

        for (size_t i = 0; i < j->n_cancel_calls; i++) {
                sd_bus_message *m = j->cancel_calls[i];
                int r;

                if (t->failure == STATE_TRANSFER_CANCELLED)
                        r = sd_bus_reply_method_return(m, NULL);
                else
                        r = sd_bus_reply_method_errorf(m, VFIOMIG_ERROR_NO_TRANSFER,
                                                       "The transfer of %s ended (%s) before the cancel took effect",
                                                       j->device->id, t->error < 0 ? t->message.text : "done");
                if (r < 0)
                        log_warning_errno(r, "Failed to reply to a CancelTransfer of %s, ignoring: %m", j->device->id);
                sd_bus_message_unref(m);
        }
        j->n_cancel_calls = 0;
}

static void transfer_done(void *userdata) {
        TransferJob *j = userdata;
        Device *d = j->device;
        StateTransfer *t = &j->transfer;
        _cleanup_free_ char *summary = NULL;
        const char *verb = t->kind == STATE_TRANSFER_SAVE ? "saved" : "loaded";
        int r;

        d->busy = NULL;
        d->transfer = NULL;
        if (t->kind == STATE_TRANSFER_LOAD && t->error < 0)
                device_note_refused_load(d, t->reset, t->final_state);
        if (t->error >= 0)
                r = asprintf(&summary, "state %s: %llu bytes", verb, (unsigned long long) t->bytes);
        else
                r = asprintf(&summary, "state %s failed: %s%s", t->kind == STATE_TRANSFER_SAVE ? "save" : "load",
                             t->message.text, transfer_aftermath(d, t));
        if (r < 0)
                summary = NULL;
        if (t->error >= 0)
                log_info("%s: %s", d->id, summary ?: "state transferred");
        else
                log_error("%s: %s", d->id, summary ?: "state transfer failed");
        device_note_outcome(d, t->final_state, -EBADF, summary);

        if (t->error >= 0)
                r = sd_bus_reply_method_return(j->call, "t", t->bytes);
        else
                r = sd_bus_reply_method_errorf(j->call, transfer_error_name(t->failure), "%s%s", t->message.text,
                                               transfer_aftermath(d, t));
        if (r < 0)
                log_warning_errno(r, "Failed to reply to a state transfer of %s, ignoring: %m", d->id);
        reply_to_cancels(j);
        state_transfer_close(t); /* state_transfer_run() did, unless it never ran */
        sd_bus_message_unref(j->call);
        free(j);
}

void bus_device_stop_transfers(BusService *s) {
        Manager *m = s->manager;

        /* Ask all first, so that they wind down together, then join one by one. */
        for (size_t i = 0; i < m->n_devices; i++)
                if (m->devices[i]->transfer)
                        state_transfer_cancel(m->devices[i]->transfer, STATE_TRANSFER_CANCEL_STOPPING);
        for (size_t i = 0; i < m->n_devices; i++) {
                TransferJob *j = job_of(m->devices[i]);
                if (!j)
                        continue;
                log_info("%s: waiting for its state transfer to give up.", m->devices[i]->id);
                worker_join(j->worker); /* runs transfer_done(), which frees j */
        }
}

static int method_transfer_state(sd_bus_message *m, Device *d, StateTransferKind kind, sd_bus_error *error) {
        BusService *s = service_of(d);
        uint64_t timeout_msec = STATE_TRANSFER_TIMEOUT_DEFAULT_MSEC;
        const BusOption options[] = {
                { VFIOMIG_OPTION_TIMEOUT, "t", &timeout_msec },
                {},
        };
        ErrorMessage err = {};
        TransferJob *j;
        int fd, r;

        r = sd_bus_message_read(m, "h", &fd);
        if (r < 0)
                return r;
        r = bus_read_options(m, options, error);
        if (r < 0)
                return r;
        if (timeout_msec == 0 || timeout_msec > STATE_TRANSFER_TIMEOUT_MAX_MSEC)
                return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS,
                                         "timeout must be 1..%llu ms (24 hours), not %llu",
                                         (unsigned long long) STATE_TRANSFER_TIMEOUT_MAX_MSEC,
                                         (unsigned long long) timeout_msec);
        r = device_check_state_change(d, &err);
        if (r == -EBADMSG)
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_FAILED, r, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, &err);
        r = state_transfer_check(kind, d->dev, fd, &err);
        if (r == -EOPNOTSUPP)
                return bus_error_from_message(error, VFIOMIG_ERROR_NOT_MIGRATABLE, r, &err);
        if (r == -EBUSY)
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, &err);
        if (r == -EINVAL || r == -EBADF)
                return bus_error_from_message(error, SD_BUS_ERROR_INVALID_ARGS, r, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_DEVICE_FAILED, r, &err);

        const char *details[] = { "device", d->id, "operation", kind == STATE_TRANSFER_SAVE ? "save" : "load", NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MIGRATE, details, &s->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        j = new0(TransferJob, 1);
        if (!j)
                return -ENOMEM;
        j->device = d;
        j->transfer = (StateTransfer) {
                .kind = kind,
                .dev = d->dev,
                .client_fd = -EBADF,
                .timeout_msec = timeout_msec,
                .deadline = state_transfer_deadline(timeout_msec),
        };
        /* The message keeps the received fd; the worker needs one of its own. */
        r = state_transfer_open_client(&j->transfer, fd, &err);
        if (r < 0) {
                free(j);
                return bus_error_from_message(error, VFIOMIG_ERROR_TRANSFER_FAILED, r, &err);
        }
        j->call = sd_bus_message_ref(m);
        d->busy = kind == STATE_TRANSFER_SAVE ? "saving its state" : "loading a state";
        d->transfer = &j->transfer;
        r = worker_start(s->event, transfer_run, transfer_done, j, &j->worker);
        if (r < 0) {
                d->busy = NULL;
                d->transfer = NULL;
                state_transfer_close(&j->transfer);
                sd_bus_message_unref(j->call);
                free(j);
                return r;
        }
        return 1; /* the reply comes from transfer_done() */
}

static int method_save_state(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return method_transfer_state(m, userdata, STATE_TRANSFER_SAVE, error);
}

static int method_load_state(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return method_transfer_state(m, userdata, STATE_TRANSFER_LOAD, error);
}

/* Replies when the transfer has ended (and the device is idle again), not when it is asked. */
static int method_cancel_transfer(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        TransferJob *j = job_of(d);
        int r;

        if (!j)
                return sd_bus_error_setf(error, VFIOMIG_ERROR_NO_TRANSFER, "%s has no state transfer running", d->id);
        if (j->n_cancel_calls >= TRANSFER_CANCEL_CALLS_MAX)
                return sd_bus_error_setf(error, VFIOMIG_ERROR_LIMIT_EXCEEDED,
                                         "%u CancelTransfer calls wait for %s already", TRANSFER_CANCEL_CALLS_MAX, d->id);

        const char *details[] = { "device", d->id, "operation", "cancel", NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MIGRATE, details, &service_of(d)->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        log_notice("%s: cancelling its state transfer on request of %s.", d->id,
                   sd_bus_message_get_sender(m) ?: "a caller");
        j->cancel_calls[j->n_cancel_calls++] = sd_bus_message_ref(m);
        state_transfer_cancel(&j->transfer, STATE_TRANSFER_CANCEL_REQUESTED);
        return 1;
}

static int property_get_address_space(sd_bus *bus, const char *path, const char *interface,
                                      const char *property, sd_bus_message *reply, void *userdata,
                                      sd_bus_error *error) {
        _cleanup_free_ char *p = NULL;
        Device *d = userdata;
        int r;

        if (!d->space)
                return sd_bus_message_append(reply, "o", "/");
        r = bus_space_path(d->space->id, &p);
        if (r < 0)
                return r;
        return sd_bus_message_append(reply, "o", p);
}

static int property_get_migration(sd_bus *bus, const char *path, const char *interface, const char *property,
                                  sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        _cleanup_free_ char *p = NULL;
        Device *d = userdata;
        int r;

        if (!d->migration)
                return sd_bus_message_append(reply, "o", "/");
        r = bus_migration_path(d->migration->id, &p);
        if (r < 0)
                return r;
        return sd_bus_message_append(reply, "o", p);
}

/* The blob travels with the next outgoing migration; on a destination it is what the last
 * incoming one brought. Both ways need the migrate action: it may hold a VMM's device state. */
static int method_set_migration_blob(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        ErrorMessage err = {};
        const void *data;
        size_t size;
        int r;

        r = sd_bus_message_read_array(m, 'y', &data, &size);
        if (r < 0)
                return r;
        if (size > MIGRATION_BLOB_MAX)
                return sd_bus_error_setf(error, VFIOMIG_ERROR_LIMIT_EXCEEDED,
                                         "a migration blob holds at most %u bytes, not %zu", MIGRATION_BLOB_MAX, size);
        r = device_check_idle(d, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, &err);

        const char *details[] = { "device", d->id, NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MIGRATE, details, &service_of(d)->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        r = device_set_blob(d, data, size, &err);
        if (r == -EBUSY)
                return bus_error_from_message(error, VFIOMIG_ERROR_BUSY, r, &err);
        if (r < 0)
                return bus_error_from_message(error, VFIOMIG_ERROR_LIMIT_EXCEEDED, r, &err);
        return sd_bus_reply_method_return(m, NULL);
}

static int method_get_migration_blob(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        Device *d = userdata;
        int r;

        const char *details[] = { "device", d->id, NULL };
        r = bus_verify_polkit_async(m, VFIOMIG_ACTION_MIGRATE, details, &service_of(d)->polkit, error);
        if (r < 0)
                return r;
        if (r == 0)
                return 1;

        r = sd_bus_message_new_method_return(m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_append_array(reply, 'y', d->blob ?: (const void *) "", d->blob_size);
        if (r < 0)
                return r;
        return sd_bus_send(NULL, reply, NULL);
}

static int property_get_clients(sd_bus *bus, const char *path, const char *interface, const char *property,
                                sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        return sd_bus_message_append(reply, "u", (uint32_t) device_client_count(d));
}

#define DEVICE_STRING_PROPERTY(fn, expr)                                                                  \
        static int fn(sd_bus *bus, const char *path, const char *interface, const char *property,          \
                      sd_bus_message *reply, void *userdata, sd_bus_error *error) {                         \
                Device *d = userdata;                                                                       \
                return sd_bus_message_append(reply, "s", (expr) ?: "");                                     \
        }

DEVICE_STRING_PROPERTY(property_get_id, d->id)
DEVICE_STRING_PROPERTY(property_get_address, d->dev->address)
DEVICE_STRING_PROPERTY(property_get_driver, d->dev->driver)
DEVICE_STRING_PROPERTY(property_get_backend, vfio_backend_to_string(d->dev->backend))
DEVICE_STRING_PROPERTY(property_get_migratable_reason, d->dev->migratable ? "" : d->dev->migratable_reason)
DEVICE_STRING_PROPERTY(property_get_last_transition, d->last_transition)

static int property_get_migration_flags(sd_bus *bus, const char *path, const char *interface,
                                        const char *property, sd_bus_message *reply, void *userdata,
                                        sd_bus_error *error) {
        Device *d = userdata;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "s");
        if (r < 0)
                return r;
        for (uint32_t bit = 1; bit <= VFIO_MIGRATION_PRE_COPY; bit <<= 1)
                if (d->dev->migration_flags & bit) {
                        r = sd_bus_message_append(reply, "s", mig_flag_to_string(bit));
                        if (r < 0)
                                return r;
                }
        return sd_bus_message_close_container(reply);
}

static int property_get_migratable(sd_bus *bus, const char *path, const char *interface, const char *property,
                                   sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        return sd_bus_message_append(reply, "b", d->dev->migratable);
}

static int property_get_precopy_info(sd_bus *bus, const char *path, const char *interface, const char *property,
                                     sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        return sd_bus_message_append(reply, "s", vfio_precopy_info_to_string(d->dev->precopy_info_version));
}

static int property_get_state(sd_bus *bus, const char *path, const char *interface, const char *property,
                              sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Device *d = userdata;
        MigState s;

        /* A device without migration support has no migration state: from VFIO's point of view
         * it is always running. Otherwise read it live: a reset (also a guest FLR through a VMM's
         * fd) changes it behind our back. */
        if (!d->dev->migratable)
                return sd_bus_message_append(reply, "s", mig_state_to_string(VFIO_DEVICE_STATE_RUNNING));
        if (device_refresh_state(d, &s) < 0) {
                if (!d->state_known)
                        return sd_bus_error_setf(error, VFIOMIG_ERROR_DEVICE_FAILED,
                                                 "The migration state of %s cannot be read", d->id);
                s = d->state;
        }
        return sd_bus_message_append(reply, "s", mig_state_to_string(s));
}

static int property_get_stop_copy_size(sd_bus *bus, const char *path, const char *interface,
                                       const char *property, sd_bus_message *reply, void *userdata,
                                       sd_bus_error *error) {
        Device *d = userdata;
        uint64_t size = 0;

        /* 0 when unknown (not migratable, or a kernel without MIG_DATA_SIZE): a property that
         * failed would fail GetAll for every other property too. */
        if (d->dev->migratable && device_stop_copy_size(d, &size, NULL) < 0)
                size = 0;
        return sd_bus_message_append(reply, "t", size);
}

const sd_bus_vtable bus_device_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_PROPERTY("Id", "s", property_get_id, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Address", "s", property_get_address, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Driver", "s", property_get_driver, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Backend", "s", property_get_backend, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MigrationFlags", "as", property_get_migration_flags, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Migratable", "b", property_get_migratable, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("MigratableReason", "s", property_get_migratable_reason, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("PrecopyInfo", "s", property_get_precopy_info, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("State", "s", property_get_state, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("StopCopySize", "t", property_get_stop_copy_size, 0, 0),
        SD_BUS_PROPERTY("LastTransition", "s", property_get_last_transition, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("AddressSpace", "o", property_get_address_space, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Clients", "u", property_get_clients, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_PROPERTY("Migration", "o", property_get_migration, 0, SD_BUS_VTABLE_PROPERTY_EMITS_CHANGE),
        SD_BUS_METHOD_WITH_ARGS("SetState",
                                SD_BUS_ARGS("s", target, "a{sv}", options),
                                SD_BUS_RESULT("s", reached),
                                method_set_state,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetPrecopyInfo",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("t", initial_bytes, "t", dirty_bytes),
                                method_get_precopy_info,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("Reset",
                                SD_BUS_NO_ARGS,
                                SD_BUS_NO_RESULT,
                                method_reset,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("AttachAddressSpace",
                                SD_BUS_ARGS("o", space),
                                SD_BUS_NO_RESULT,
                                method_attach_address_space,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("OpenFd",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("h", fd),
                                method_open_fd,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SaveState",
                                SD_BUS_ARGS("h", fd, "a{sv}", options),
                                SD_BUS_RESULT("t", bytes),
                                method_save_state,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("LoadState",
                                SD_BUS_ARGS("h", fd, "a{sv}", options),
                                SD_BUS_RESULT("t", bytes),
                                method_load_state,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("CancelTransfer",
                                SD_BUS_NO_ARGS,
                                SD_BUS_NO_RESULT,
                                method_cancel_transfer,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("RevokeClients",
                                SD_BUS_NO_ARGS,
                                SD_BUS_NO_RESULT,
                                method_revoke_clients,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("SetMigrationBlob",
                                SD_BUS_ARGS("ay", blob),
                                SD_BUS_NO_RESULT,
                                method_set_migration_blob,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_ARGS("GetMigrationBlob",
                                SD_BUS_NO_ARGS,
                                SD_BUS_RESULT("ay", blob),
                                method_get_migration_blob,
                                SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};
