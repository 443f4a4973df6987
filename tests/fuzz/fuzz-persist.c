/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * libFuzzer target for the saved state a restarted daemon reads back from the fd store: the
 * JSON parser and validator (persist_state_parse()) that decides, before anything is adopted,
 * whether a record is used or refused. Any crash, sanitizer report, leak or abort is a bug (json-c
 * aborts when asked for the length of a non-array: exactly what this must never let through);
 * refusals are expected, and each must say why.
 *
 *     CC=clang meson setup build-fuzz -Dfuzz=true && ninja -C build-fuzz
 *     mkdir -p /tmp/corpus && build-fuzz/tests/fuzz/fuzz-persist -max_total_time=600 /tmp/corpus \
 *             tests/fuzz/corpus/fuzz-persist
 *
 * tests/fuzz/corpus/fuzz-persist holds states as vfiomigd saves them, written by fuzz-seeds.c
 * (see there): "state", simulated devices and two spaces whose mappings share one fd store
 * entry; "kernel", kernel objects, a kernel device and a legacy address space beside the
 * simulated ones; "state-v1", the version before the fd store table (fds), still read.
 */

#include <stdlib.h>

#include "persist-state.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        json_object *root = NULL;
        ErrorMessage err = {};
        int r;

        r = persist_state_parse((const char *) data, size, &root, &err);
        if (r == 0) {
                /* What passes is an object persist.c can walk with plain getters. */
                if (!json_object_is_type(root, json_type_object) || error_is_set(&err))
                        abort();
                json_object_put(root);
        } else if (r != -EBADMSG || !error_is_set(&err) || root)
                abort();
        return 0;
}
