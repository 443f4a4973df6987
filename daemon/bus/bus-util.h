/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

#include <systemd/sd-bus.h>

#include "device-options.h"
#include "error-message.h"

/* Reads one a{sv} option table: every key must be listed, with the variant signature given.
 * Unknown keys and wrong variant types are InvalidArgs. Storage by signature: "s" → char ** (a
 * borrowed string, valid while the message lives), "b" → bool *, "t" → uint64_t *, "u" → uint32_t *. */
typedef struct BusOption {
        const char *key;
        const char *signature;
        void *storage;
        bool *seen;
} BusOption;

int bus_read_options(sd_bus_message *m, const BusOption *options, sd_bus_error *error);

/* Reads the variant the message is positioned at (inside a dict entry) as an OptionValue of the
 * expected type; *strv_storage owns any string list. InvalidArgs on a type mismatch. */
int bus_read_option_value(sd_bus_message *m, const char *key, OptionType expected, OptionValue *ret,
                          char ***strv_storage, sd_bus_error *error);

/* /org/vfiomig1/device/ID */
int bus_device_path(const char *id, char **ret);
/* ID from a device path, or NULL when the path is not a device path. */
const char *bus_device_id_from_path(const char *path);

/* Turns an ErrorMessage into a named D-Bus error (the message, or strerror when empty). */
int bus_error_from_message(sd_bus_error *error, const char *name, int r, const ErrorMessage *e);
