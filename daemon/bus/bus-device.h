/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

#include "bus-service.h"

/* Cancels every SaveState/LoadState in flight and joins its worker: each call gets
 * org.vfiomig1.Error.Cancelled and its device is idle (and back in stop, or reset after a load)
 * on return. Called when the daemon stops, before anything a worker uses is freed. */
void bus_device_stop_transfers(BusService *s);
