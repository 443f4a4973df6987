/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <string.h>

#include "device-options.h"
#include "vfiomig1.h"

static const struct {
        const char *key;
        const char *signature;
} sim_options[] = VFIOMIG_SIM_OPTIONS;

const char *option_type_signature(OptionType t) {
        switch (t) {
        case OPTION_U64:
                return "t";
        case OPTION_BOOL:
                return "b";
        case OPTION_STRV:
                return "as";
        default:
                return NULL;
        }
}

OptionType sim_option_type(const char *key) {
        for (size_t i = 0; i < ELEMENTSOF(sim_options); i++)
                if (streq(key, sim_options[i].key)) {
                        for (OptionType t = 0; t < _OPTION_TYPE_MAX; t++)
                                if (streq(sim_options[i].signature, option_type_signature(t)))
                                        return t;
                }
        return _OPTION_TYPE_INVALID;
}

static int parse_flags(char **names, uint32_t *ret, ErrorMessage *err) {
        uint32_t flags = 0;

        for (char **n = names; n && *n; n++) {
                int bit = mig_flag_from_string(*n);
                if (bit < 0)
                        return error_setf(err, -EINVAL, "unknown migration flag '%s' (known: stop-copy, p2p, pre-copy)", *n);
                flags |= (uint32_t) bit;
        }
        *ret = flags;
        return 0;
}

static int parse_arcs(const char *key, char **arcs, uint64_t *ret, ErrorMessage *err) {
        uint64_t mask = 0;

        for (char **a = arcs; a && *a; a++) {
                uint64_t bit;
                if (sim_arc_from_string(*a, &bit) < 0)
                        return error_setf(err, -EINVAL, "%s: '%s' is not an arc: use FROM>TO with two different state names",
                                          key, *a);
                mask |= bit;
        }
        *ret = mask;
        return 0;
}

int sim_config_apply(SimConfig *c, const char *key, const OptionValue *v, ErrorMessage *err) {
        OptionType type = sim_option_type(key);

        if (type < 0)
                return error_setf(err, -EINVAL, "unknown option '%s'", key);
        if (v->type != type)
                return error_setf(err, -EINVAL, "option '%s' takes a value of type %s, not %s", key,
                                  option_type_signature(type), option_type_signature(v->type) ?: "?");

        if (streq(key, "state-size"))
                c->state_size = v->u64;
        else if (streq(key, "precopy-size")) {
                c->precopy_size = v->u64;
                c->precopy_size_set = true;
        }
        else if (streq(key, "dirty-rate"))
                c->dirty_rate = v->u64;
        else if (streq(key, "seed")) {
                c->seed = v->u64;
                c->seed_set = true;
        } else if (streq(key, "mtty-quirks"))
                c->mtty_quirks = v->b;
        else if (streq(key, "flags"))
                return parse_flags(v->strv, &c->migration_flags, err);
        else if (streq(key, "fail-arcs"))
                return parse_arcs(key, v->strv, &c->fail_in_place, err);
        else if (streq(key, "error-arcs"))
                return parse_arcs(key, v->strv, &c->fail_to_error, err);
        else if (streq(key, "arc-latency-usec"))
                c->arc_latency_usec = v->u64;
        else if (streq(key, "latency-arcs"))
                return parse_arcs(key, v->strv, &c->latency_arcs, err);
        else if (streq(key, "reinit"))
                c->reinit_after = v->u64;
        else if (streq(key, "precopy-v2"))
                c->refuse_precopy_v2 = !v->b;
        else
                return error_setf(err, -EINVAL, "unknown option '%s'", key);
        return 0;
}
