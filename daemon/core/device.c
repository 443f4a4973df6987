/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <stdio.h>
#include <string.h>

#include "device.h"
#include "kernel-device.h"
#include "log.h"
#include "manager.h"
#include "sim-device.h"

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

Device *device_free(Device *d) {
        if (!d)
                return NULL;
        safe_close(d->session_fd);
        vfio_dev_free(d->dev);
        free(d->id);
        free(d->last_transition);
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
}

int device_set_state(Device *d, MigState target, int recover_state, TransitionReport *ret_report, ErrorMessage *err) {
        _cleanup_free_ char *steps = NULL, *summary = NULL;
        int data_fd = -EBADF, r;

        log_set_context_device(d->id);
        r = transition_run(d->dev, target, recover_state, ret_report, &data_fd, err);
        log_set_context_device(NULL);

        if (r >= 0) {
                if (asprintf(&summary, "%s → %s: ok", mig_state_to_string(ret_report->initial),
                             mig_state_to_string(target)) < 0)
                        summary = NULL;
                log_info("%s: %s", d->id, summary ?: "transition done");
        } else if (ret_report->n_steps > 1 || ret_report->verdict != MIG_VERDICT_OK) {
                /* Refusals are not recorded: they changed nothing. Failures are, with every step. */
                if (ret_report->verdict == MIG_VERDICT_OK) {
                        (void) transition_report_format(ret_report, &steps);
                        if (asprintf(&summary, "%s → %s failed: %s", mig_state_to_string(ret_report->initial),
                                     mig_state_to_string(target), steps ?: strerror(-r)) < 0)
                                summary = NULL;
                        log_error("%s: %s", d->id, summary ?: "transition failed");
                }
        }
        device_note_outcome(d, r >= 0 ? (int) target : ret_report->final, data_fd,
                            ret_report->verdict == MIG_VERDICT_OK ? summary : NULL);
        return r;
}

int device_reset(Device *d, ErrorMessage *err) {
        int r;

        r = vfio_dev_reset(d->dev);
        if (r < 0) {
                (void) device_refresh_state(d, NULL);
                return error_setf(err, r, "Failed to reset %s: %m", d->id);
        }
        log_notice("%s: reset", d->id);
        device_note_outcome(d, -1, -EBADF, "reset");
        (void) device_refresh_state(d, NULL);
        return 0;
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
