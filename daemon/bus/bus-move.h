/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Device state changes off the event loop: Device.SetState, Device.Reset and Manager.SetStates
 * run their transitions on a worker thread (bus-worker.h), so that the bus answers every other
 * call while a driver takes its time (milliseconds to seconds per arc on real hardware). The
 * devices are busy meanwhile: another call that would change or use them gets
 * org.vfiomig1.Error.Busy, their State property reports the state they started from, and they
 * cannot be detached. The reply goes out when the move ends. Shutdown joins every move before
 * the state is saved.
 */

#include "bus-service.h"
#include "device.h"
#include "manager.h"

/* After validation and polkit. Returns 1 (the reply comes later) or a negative errno / a set
 * error for a move refused before it started. */
int bus_move_device(BusService *s, sd_bus_message *call, Device *d, bool reset, MigState target, int recover_state,
                    sd_bus_error *error);
/* Takes devices and paths (freed with the job, also on failure). */
int bus_move_group(BusService *s, sd_bus_message *call, Device **devices, char **paths, size_t n, MigState target,
                   bool force_without_p2p, sd_bus_error *error);

/* Waits for every move to end (an arc cannot be interrupted) and replies to their callers. */
void bus_moves_join(BusService *s);

/* The bus error for a failed DeviceMove or group move (shared with the synchronous callers). */
int bus_move_error(sd_bus_error *error, Device *d, int r, const TransitionReport *report, const ErrorMessage *err);
int bus_group_error(sd_bus_error *error, GroupOutcome outcome, int r, const ErrorMessage *err);
