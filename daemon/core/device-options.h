/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Options of a simulated device, as typed values. The bus layer converts a{sv} entries and the
 * config parser converts JSON members into OptionValue, and both apply them here, so the two
 * front ends accept exactly the same keys, types and ranges (proto/vfiomig1.h lists them).
 */

#include "error-message.h"
#include "sim-device.h"

typedef enum OptionType {
        OPTION_U64,
        OPTION_BOOL,
        OPTION_STRV,
        _OPTION_TYPE_MAX,
        _OPTION_TYPE_INVALID = -EINVAL,
} OptionType;

typedef struct OptionValue {
        OptionType type;
        uint64_t u64;
        bool b;
        char **strv;     /* NULL-terminated; borrowed */
} OptionValue;

/* The type of a sim option key, or _OPTION_TYPE_INVALID for an unknown key. */
OptionType sim_option_type(const char *key);
/* "t", "b" or "as". */
const char *option_type_signature(OptionType t);

/* Applies one option to c. -EINVAL with a message for an unknown key, a value of the wrong
 * type, or a value out of range. The whole config is checked by sim_config_validate() after. */
int sim_config_apply(SimConfig *c, const char *key, const OptionValue *v, ErrorMessage *err);
