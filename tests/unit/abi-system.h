/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Our VFIO/iommufd definitions and the kernel's use the same names, so they cannot meet in one
 * translation unit. abi-system.c sees only the build host's <linux/vfio.h> and <linux/iommufd.h>
 * and hands out the facts of abi-facts.h as plain numbers; test-uapi-abi.c builds the same table
 * from our headers and compares.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct AbiFact {
        const char *tier;  /* the kernel release group the fact belongs to, see abi-facts.h */
        const char *what;  /* "sizeof(struct x)", "offsetof(struct x, f)", "NAME" */
        uint64_t value;
        bool present;      /* false when the host's headers predate the tier */
} AbiFact;

/* The facts in abi-facts.h order, as the host's kernel headers define them. */
const AbiFact *abi_system_facts(size_t *ret_n);
