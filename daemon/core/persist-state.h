/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The serialized state as it comes back from the fd store, checked before anything uses it.
 *
 * The record is input like any other: written by a predecessor (perhaps another version, perhaps
 * one with a bug), kept by the service manager, read back by us. json-c asserts, that is aborts,
 * when asked for the length of something that is not an array; an abort under Restart=on-failure
 * is a crash loop, and a crash loop ends with the start limit and the service manager releasing
 * the fd store: every device and mapping lost. So the whole record is parsed and validated here,
 * by type and range, before persist.c adopts a single descriptor; what passes can be read with
 * plain json-c getters. The kernel backend's records (the kernel objects, kernel devices and
 * spaces) are checked by type here too; what their values mean (that an id exists, that a named
 * descriptor is in the store) the backend checks as it adopts them.
 *
 * Pure: no descriptors, no daemon state; tests/fuzz/fuzz-persist.c feeds it arbitrary bytes.
 */

#include <json.h>
#include <stddef.h>

#include "error-message.h"

#define PERSIST_STATE_VERSION 2
/* json-c builds the whole tree before anything can be checked, at some 50-100 bytes per value:
 * the values are counted first. The most a real state holds is far below: the fd store's 66,560
 * descriptors bound the mappings (8 values each), and a simulated device of the largest size
 * with every block rewritten needs 3 values per 64 KiB block. */
#define PERSIST_STATE_VALUES_MAX (UINT64_C(1) << 22)
/* The record is 6 levels deep (root, devices, device, sim, gens, pair); the kernel objects' records
 * one more. */
#define PERSIST_STATE_DEPTH_MAX 16
#define PERSIST_STATE_ID_MAX 64
/* Entries of fds and users in all of them: the fd store's size in units/vfiomigd.service.in. */
#define PERSIST_STATE_FDS_MAX 66560u
#define PERSIST_STATE_ADDRESS_MAX 256
#define PERSIST_STATE_TEXT_MAX 4096

/* Parses and validates the JSON text of a state (size bytes, no terminator needed). On success
 * ret holds the root, every field of which has the type and range documented in persist.c's
 * serializer. On failure -EBADMSG (or -ENOMEM) with err naming the first bad field, e.g.
 * "devices[1].sim.state-size must be an unsigned integer, not a string". */
int persist_state_parse(const char *text, size_t size, json_object **ret, ErrorMessage *err);
