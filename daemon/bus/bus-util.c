/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <stdio.h>
#include <string.h>

#include "bus-util.h"
#include "vfiomig1.h"

static int invalid_type(sd_bus_error *error, const char *key, const char *expected, const char *got) {
        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "option '%s' takes a value of type %s, not %s",
                                 key, expected, got ?: "?");
}

int bus_read_option_value(sd_bus_message *m, const char *key, OptionType expected, OptionValue *ret,
                          char ***strv_storage, sd_bus_error *error) {
        const char *sig = option_type_signature(expected), *contents = NULL;
        char type;
        int r;

        r = sd_bus_message_peek_type(m, &type, &contents);
        if (r < 0)
                return r;
        if (type != SD_BUS_TYPE_VARIANT || !contents || !streq(contents, sig))
                return invalid_type(error, key, sig, contents);

        r = sd_bus_message_enter_container(m, SD_BUS_TYPE_VARIANT, sig);
        if (r < 0)
                return r;
        *ret = (OptionValue) { .type = expected };
        switch (expected) {
        case OPTION_U64:
                r = sd_bus_message_read_basic(m, 't', &ret->u64);
                break;
        case OPTION_BOOL: {
                int b;
                r = sd_bus_message_read_basic(m, 'b', &b);
                ret->b = b;
                break;
        }
        case OPTION_STRV:
                strv_free(*strv_storage);
                *strv_storage = NULL;
                r = sd_bus_message_read_strv(m, strv_storage);
                ret->strv = *strv_storage;
                break;
        default:
                return -EINVAL;
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

int bus_read_options(sd_bus_message *m, const BusOption *options, sd_bus_error *error) {
        int r;

        r = sd_bus_message_enter_container(m, 'a', "{sv}");
        if (r < 0)
                return r;
        for (;;) {
                const BusOption *o = NULL;
                const char *key, *contents;
                char type;

                r = sd_bus_message_enter_container(m, 'e', "sv");
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                r = sd_bus_message_read_basic(m, 's', &key);
                if (r < 0)
                        return r;
                for (const BusOption *i = options; i && i->key; i++)
                        if (streq(i->key, key))
                                o = i;
                if (!o)
                        return sd_bus_error_setf(error, SD_BUS_ERROR_INVALID_ARGS, "unknown option '%s'", key);

                r = sd_bus_message_peek_type(m, &type, &contents);
                if (r < 0)
                        return r;
                if (!contents || !streq(contents, o->signature))
                        return invalid_type(error, key, o->signature, contents);
                r = sd_bus_message_enter_container(m, 'v', o->signature);
                if (r < 0)
                        return r;
                switch (o->signature[0]) {
                case 's':
                        r = sd_bus_message_read_basic(m, 's', o->storage);
                        break;
                case 't':
                        r = sd_bus_message_read_basic(m, 't', o->storage);
                        break;
                case 'u':
                        r = sd_bus_message_read_basic(m, 'u', o->storage);
                        break;
                case 'b': {
                        int b;
                        r = sd_bus_message_read_basic(m, 'b', &b);
                        *(bool *) o->storage = b;
                        break;
                }
                default:
                        return -EINVAL;
                }
                if (r < 0)
                        return r;
                if (o->seen)
                        *o->seen = true;
                r = sd_bus_message_exit_container(m);
                if (r >= 0)
                        r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_exit_container(m);
}

int bus_device_path(const char *id, char **ret) {
        return asprintf(ret, VFIOMIG_DEVICE_PATH_PREFIX "/%s", id) < 0 ? -ENOMEM : 0;
}

const char *bus_device_id_from_path(const char *path) {
        const size_t n = strlen(VFIOMIG_DEVICE_PATH_PREFIX);

        if (!path || strncmp(path, VFIOMIG_DEVICE_PATH_PREFIX, n) != 0 || path[n] != '/' || !path[n + 1] ||
            strchr(path + n + 1, '/'))
                return NULL;
        return path + n + 1;
}

int bus_error_from_message(sd_bus_error *error, const char *name, int r, const ErrorMessage *e) {
        return sd_bus_error_set(error, name, error_is_set(e) ? e->text : strerror(r < 0 ? -r : r));
}
