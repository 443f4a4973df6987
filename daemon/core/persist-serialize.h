/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The saved state as JSON: the devices, the address spaces with their mappings and the kernel
 * objects (the record persist-state.c validates on the way back), and the descriptors the objects
 * use, under their logical names (fd-table.h groups them into the fd store's entries). A space's
 * mappings are serialized once and kept while they do not change (AddressSpace.saved_mappings).
 */

#include <json.h>

#include "address-space.h"
#include "manager.h"
#include "named-fds.h"

/* The root (without "fds", which persist.c adds) and each object's descriptors, borrowed. */
int persist_serialize(Manager *m, json_object **ret, NamedFds *fds);
/* A JSON value printed as text (json-c calls a serializer instead of walking a tree): what a
 * cache saved. The text must outlive the stringification. */
json_object *persist_json_cached(const char *text);
/* The logical name of a mapping's file: map-SPACE-SERIAL. */
int persist_mapping_fd_name(const AddressSpace *s, const Mapping *m, char *buf, size_t size);
