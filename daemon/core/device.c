/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "device.h"
#include "kernel-device.h"
#include "log.h"
#include "manager.h"
#include "migration.h"
#include "sim-device.h"
#include "strv.h"

static char *escape_label(const char *prefix, const char *s) {
        /* Path elements may only hold [A-Za-z0-9_]: everything else becomes _xx, as systemd's
         * bus_label_escape() does. */
        size_t n = strlen(prefix);
        char *out = malloc(n + strlen(s) * 3 + 1), *p;

        if (!out)
                return NULL;
        memcpy(out, prefix, n);
        p = out + n;
        for (; *s; s++) {
                unsigned char c = (unsigned char) *s;
                if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
                        *p++ = (char) c;
                else
                        p += sprintf(p, "_%02x", c);
        }
        *p = '\0';
        return out;
}

static bool is_uuid(const char *s) {
        if (strlen(s) != 36)
                return false;
        for (int i = 0; i < 36; i++) {
                bool hyphen = i == 8 || i == 13 || i == 18 || i == 23;
                if (hyphen ? s[i] != '-' : !((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
                        return false;
        }
        return true;
}

int device_id_from_vfio_dev(const VfioDev *d, char **ret) {
        unsigned domain, bus, slot, fn;
        char *id = NULL;
        int r = 0;

        if (d->backend == VFIO_BACKEND_SIM) /* sim names are [A-Za-z0-9_] already */
                r = asprintf(&id, "sim_%s", d->name);
        else if (strlen(d->name) == 12 && sscanf(d->name, "%4x:%2x:%2x.%1x", &domain, &bus, &slot, &fn) == 4)
                r = asprintf(&id, "pci_%04x_%02x_%02x_%x", domain, bus, slot, fn);
        else if (is_uuid(d->name)) {
                r = asprintf(&id, "mdev_%s", d->name);
                for (char *p = id; r >= 0 && *p; p++)
                        if (*p == '-')
                                *p = '_';
        } else
                id = escape_label("dev_", d->name);
        if (r < 0 || !id)
                return -ENOMEM;
        *ret = id;
        return 0;
}

int device_new(Manager *m, VfioDev *dev, Device **ret) {
        _cleanup_free_ Device *d = NULL;
        int r;

        d = new0(Device, 1);
        if (!d)
                return -ENOMEM;
        r = device_id_from_vfio_dev(dev, &d->id);
        if (r < 0)
                return r;
        d->manager = m;
        d->dev = dev;
        d->session_fd = -EBADF;
        *ret = TAKE_PTR(d);
        return 0;
}

/* Freeing a device does not detach it from its space: at exit before a restart the kernel
 * attachment must survive for the successor. A device detached on request leaves its space
 * first (manager_detach()). */
Device *device_free(Device *d) {
        if (!d)
                return NULL;
        strv_free(d->clients);
        safe_close(d->session_fd);
        vfio_dev_free(d->dev);
        free(d->id);
        free(d->last_transition);
        free(d->blob);
        free(d);
        return NULL;
}

static void set_cached_state(Device *d, int state) {
        bool changed;

        if (state < 0) {
                changed = d->state_known;
                d->state_known = false;
        } else {
                changed = !d->state_known || d->state != (MigState) state;
                d->state = state;
                d->state_known = true;
        }
        if (changed)
                manager_notify_device_changed(d->manager, d);
}

int device_refresh_state(Device *d, MigState *ret) {
        MigState s;
        int r;

        if (!d->dev->migratable)
                return -EOPNOTSUPP;
        if (d->moving) {
                /* A worker is moving it: the driver holds its state lock for the whole move, and a
                 * read would stall the event loop until then. The last state known stands. */
                if (!d->state_known)
                        return -EBUSY;
                if (ret)
                        *ret = d->state;
                return 0;
        }
        r = vfio_dev_get_state(d->dev, &s);
        if (r < 0) {
                set_cached_state(d, -1);
                return r;
        }
        /* A state without a session means any session ended behind our back (a reset). */
        if (!mig_state_is_saving(s) && s != VFIO_DEVICE_STATE_RESUMING)
                d->session_fd = safe_close(d->session_fd);
        set_cached_state(d, s);
        if (ret)
                *ret = s;
        return 0;
}

void device_note_outcome(Device *d, int reached, int data_fd, const char *summary) {
        if (data_fd >= 0) {
                safe_close(d->session_fd);
                d->session_fd = data_fd;
        }
        if (reached < 0 || (!mig_state_is_saving(reached) && reached != VFIO_DEVICE_STATE_RESUMING))
                d->session_fd = safe_close(d->session_fd);
        if (summary) {
                char *copy = strdup(summary);
                if (copy) {
                        free(d->last_transition);
                        d->last_transition = copy;
                }
        }
        set_cached_state(d, reached);
        manager_notify_state_changed(d->manager);
}

static int check_idle_for(Device *d, const Migration *owner, ErrorMessage *err) {
        if (d->busy)
                return error_setf(err, -EBUSY, "%s is busy %s; try again when that is done", d->id, d->busy);
        if (d->migration && d->migration != owner)
                return error_setf(err, -EBUSY, "%s is being migrated (migration %u); wait for it or cancel it",
                                  d->id, d->migration->id);
        return 0;
}

int device_check_idle(Device *d, ErrorMessage *err) {
        return check_idle_for(d, NULL, err);
}

int device_set_blob(Device *d, const void *data, size_t size, ErrorMessage *err) {
        uint8_t *copy = NULL;
        int r;

        if (size > MIGRATION_BLOB_MAX)
                return error_setf(err, -E2BIG, "a migration blob holds at most %u bytes, not %zu", MIGRATION_BLOB_MAX,
                                  size);
        r = device_check_idle(d, err);
        if (r < 0)
                return r;
        if (size > 0) {
                copy = memdup(data, size);
                if (!copy)
                        return -ENOMEM;
        }
        free(d->blob);
        d->blob = copy;
        d->blob_size = size;
        return 0;
}

void device_adopt_blob(Device *d, uint8_t *data, size_t size) {
        free(d->blob);
        d->blob = size > 0 ? data : NULL;
        d->blob_size = size > 0 ? size : 0;
        if (size == 0)
                free(data);
}

void device_note_refused_load(Device *d, bool reset, int final_state) {
        d->holds_refused_data = !reset && final_state == VFIO_DEVICE_STATE_RESUMING;
        if (d->holds_refused_data)
                log_error("%s: still in resuming with migration data it refused, and could not be reset; it "
                          "refuses every state change until a reset", d->id);
}

int device_check_state_change(Device *d, ErrorMessage *err) {
        return device_check_state_change_for(d, NULL, err);
}

int device_check_state_change_for(Device *d, const Migration *owner, ErrorMessage *err) {
        MigState s;
        int r;

        r = check_idle_for(d, owner, err);
        if (r < 0)
                return r;
        if (!d->holds_refused_data)
                return 0;
        /* Something else (a VMM's reset through its fd, an FLR) may have cleared it since. */
        if (device_refresh_state(d, &s) >= 0 && s != VFIO_DEVICE_STATE_RESUMING) {
                d->holds_refused_data = false;
                return 0;
        }
        return error_setf(err, -EBADMSG, "%s holds migration data it refused in a failed LoadState and could not "
                          "be reset: leaving resuming would load that data. Reset it first (Device.Reset, or "
                          "unbind and rebind its driver)", d->id);
}

int device_move_begin(DeviceMove *mv, Device *d, const Migration *owner, bool reset, MigState target,
                      int recover_state, ErrorMessage *err) {
        int r;

        *mv = (DeviceMove) {
                .device = d,
                .reset = reset,
                .target = target,
                .recover_state = recover_state,
                .data_fd = -EBADF,
                .report = { .initial = -1, .final = -1 },
        };
        r = reset ? check_idle_for(d, owner, err) : device_check_state_change_for(d, owner, err);
        if (r < 0)
                return r;
        d->busy = reset ? "being reset" : "changing its state";
        d->moving = true;
        return 0;
}

void device_move_run(DeviceMove *mv) {
        /* Only the VfioDev and mv itself: this may run on a worker thread. */
        log_set_context_device(mv->device->id);
        if (mv->reset)
                mv->result = vfio_dev_reset(mv->device->dev);
        else
                mv->result = transition_run(mv->device->dev, mv->target, mv->recover_state, &mv->report,
                                            &mv->data_fd, &mv->err);
        log_set_context_device(NULL);
}

static int reset_end(DeviceMove *mv, ErrorMessage *err) {
        Device *d = mv->device;

        if (mv->result < 0) {
                (void) device_refresh_state(d, NULL);
                return error_setf(err, mv->result, "Failed to reset %s: %s", d->id, strerror(-mv->result));
        }
        log_notice("%s: reset", d->id);
        d->holds_refused_data = false;
        device_note_outcome(d, -1, -EBADF, "reset");
        (void) device_refresh_state(d, NULL);
        return 0;
}

int device_move_end(DeviceMove *mv, ErrorMessage *err) {
        _cleanup_free_ char *steps = NULL, *summary = NULL;
        Device *d = mv->device;
        TransitionReport *report = &mv->report;
        int r = mv->result;

        d->busy = NULL;
        d->moving = false;
        if (mv->reset)
                return reset_end(mv, err);
        if (err && mv->err.text[0] && !err->text[0])
                *err = mv->err;

        if (r >= 0) {
                if (asprintf(&summary, "%s → %s: ok", mig_state_to_string(report->initial),
                             mig_state_to_string(mv->target)) < 0)
                        summary = NULL;
                log_info("%s: %s", d->id, summary ?: "transition done");
        } else if (report->n_steps > 1 || report->verdict != MIG_VERDICT_OK) {
                /* Refusals are not recorded: they changed nothing. Failures are, with every step. */
                if (report->verdict == MIG_VERDICT_OK) {
                        (void) transition_report_format(report, &steps);
                        if (asprintf(&summary, "%s → %s failed: %s", mig_state_to_string(report->initial),
                                     mig_state_to_string(mv->target), steps ?: strerror(-r)) < 0)
                                summary = NULL;
                        log_error("%s: %s", d->id, summary ?: "transition failed");
                }
        }
        device_note_outcome(d, r >= 0 ? (int) mv->target : report->final, mv->data_fd,
                            report->verdict == MIG_VERDICT_OK ? summary : NULL);
        mv->data_fd = -EBADF; /* the device owns it now */
        return r;
}

void device_move_abort(DeviceMove *mv) {
        mv->device->busy = NULL;
        mv->device->moving = false;
}

int device_set_state(Device *d, MigState target, int recover_state, TransitionReport *ret_report, ErrorMessage *err) {
        DeviceMove mv;
        int r;

        r = device_move_begin(&mv, d, NULL, /* reset= */ false, target, recover_state, err);
        if (r >= 0) {
                device_move_run(&mv);
                r = device_move_end(&mv, err);
        }
        *ret_report = mv.report;
        return r;
}

int device_reset(Device *d, ErrorMessage *err) {
        return device_reset_for(d, NULL, err);
}

int device_reset_for(Device *d, const Migration *owner, ErrorMessage *err) {
        DeviceMove mv;
        int r;

        r = device_move_begin(&mv, d, owner, /* reset= */ true, VFIO_DEVICE_STATE_RUNNING, TRANSITION_NO_RECOVER, err);
        if (r < 0)
                return r;
        device_move_run(&mv);
        return device_move_end(&mv, err);
}

int device_precopy_info(Device *d, uint64_t *ret_initial, uint64_t *ret_dirty, ErrorMessage *err) {
        MigState s;
        int r;

        r = device_refresh_state(d, &s);
        if (r == -EOPNOTSUPP)
                return error_setf(err, -EOPNOTSUPP, "%s is not migratable", d->id);
        if (r < 0)
                return error_setf(err, r, "Failed to read the migration state of %s: %m", d->id);
        if ((s != VFIO_DEVICE_STATE_PRE_COPY && s != VFIO_DEVICE_STATE_PRE_COPY_P2P) || d->session_fd < 0)
                return error_setf(err, -ENOMSG, "%s has no open pre-copy session (state %s)", d->id,
                                  mig_state_to_string(s));
        r = vfio_dev_precopy_info(d->dev, d->session_fd, ret_initial, ret_dirty);
        if (r < 0)
                return error_setf(err, r, "VFIO_MIG_GET_PRECOPY_INFO failed on %s: %m", d->id);
        return 0;
}

int device_stop_copy_size(Device *d, uint64_t *ret, ErrorMessage *err) {
        int r;

        if (!d->dev->migratable)
                return error_setf(err, -EOPNOTSUPP, "%s is not migratable", d->id);
        r = vfio_dev_stop_copy_size(d->dev, ret);
        if (r < 0)
                return error_setf(err, r, "VFIO_DEVICE_FEATURE_MIG_DATA_SIZE failed on %s: %m", d->id);
        return 0;
}

int device_check_attach_space(Device *d, AddressSpace *s, ErrorMessage *err) {
        static const IommuBackend matching[_VFIO_BACKEND_MAX] = {
                [VFIO_BACKEND_IOMMUFD] = IOMMU_BACKEND_IOMMUFD,
                [VFIO_BACKEND_LEGACY] = IOMMU_BACKEND_LEGACY,
                [VFIO_BACKEND_SIM] = IOMMU_BACKEND_SIM,
        };

        if (d->space == s)
                return 0;
        if (device_check_idle(d, err) < 0)
                return -EBUSY;
        if (d->space)
                return error_setf(err, -EBUSY, "%s is attached to address space %s already; a device stays in "
                                  "its space until it is detached from vfiomigd", d->id, d->space->id);
        if (matching[d->dev->backend] != s->iommu->backend)
                return error_setf(err, -EINVAL, "%s is a %s device and cannot join the %s address space %s", d->id,
                                  vfio_backend_to_string(d->dev->backend), iommu_backend_to_string(s->iommu->backend),
                                  s->id);
        return 0;
}

int device_attach_space(Device *d, AddressSpace *s, ErrorMessage *err) {
        int r;

        r = device_check_attach_space(d, s, err);
        if (r < 0 || d->space == s)
                return r;
        r = s->iommu->ops->attach_device(s->iommu, d->dev, err);
        if (r < 0)
                return error_setf(err, r, "Cannot attach %s to address space %s: %m", d->id, s->id);
        d->space = s;
        log_info("%s: attached to address space %s.", d->id, s->id);
        manager_notify_device_changed(d->manager, d);
        manager_notify_space_changed(d->manager, s);
        return 0;
}

void device_leave_space(Device *d) {
        AddressSpace *s = d->space;

        if (!s)
                return;
        s->iommu->ops->detach_device(s->iommu, d->dev);
        d->space = NULL;
        manager_notify_space_changed(d->manager, s);
}

bool device_has_client(Device *d, const char *client) {
        return strv_contains(d->clients, client);
}

size_t device_client_count(Device *d) {
        return strv_length(d->clients);
}

int device_open_fd(Device *d, const char *client, int *ret_fd, ErrorMessage *err) {
        _cleanup_close_ int fd = -EBADF;
        size_t n = strv_length(d->clients);

        if (d->dev->device_fd < 0)
                return error_setf(err, -EOPNOTSUPP, "%s has no device file descriptor to hand out", d->id);
        if (!device_has_client(d, client) && n >= DEVICE_CLIENTS_MAX)
                return error_setf(err, -E2BIG, "%s already has %u clients holding its descriptor", d->id,
                                  DEVICE_CLIENTS_MAX);
        fd = fcntl(d->dev->device_fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0)
                return error_setf(err, -errno, "Cannot duplicate the descriptor of %s: %m", d->id);

        if (!device_has_client(d, client)) {
                if (strv_extend(&d->clients, client) < 0)
                        return -ENOMEM;
                log_info("%s: handed its descriptor to %s.", d->id, client);
                manager_notify_device_changed(d->manager, d);
                manager_notify_state_changed(d->manager);
        }
        *ret_fd = TAKE_FD(fd);
        return 0;
}

void device_forget_client(Device *d, const char *client) {
        size_t n = strv_length(d->clients);

        for (size_t i = 0; i < n; i++)
                if (streq(d->clients[i], client)) {
                        free(d->clients[i]);
                        memmove(d->clients + i, d->clients + i + 1, (n - i) * sizeof *d->clients);
                        log_info("%s: client %s is gone.", d->id, client);
                        manager_notify_device_changed(d->manager, d);
                        manager_notify_state_changed(d->manager);
                        return;
                }
}

int device_revoke_clients(Device *d, ErrorMessage *err) {
        int r;

        r = device_check_idle(d, err);
        if (r < 0)
                return r;
        strv_free(d->clients);
        d->clients = NULL;
        log_notice("%s: every client's grant revoked; resetting the device.", d->id);
        manager_notify_device_changed(d->manager, d);
        manager_notify_state_changed(d->manager);
        r = vfio_dev_reset(d->dev);
        if (r == -EOPNOTSUPP)
                return 0; /* nothing to reset: the grant is withdrawn all the same */
        if (r < 0)
                return error_setf(err, r, "Clients forgotten, but resetting %s failed: %m", d->id);
        device_note_outcome(d, -1, -EBADF, "reset (clients revoked)");
        (void) device_refresh_state(d, NULL);
        return 0;
}
