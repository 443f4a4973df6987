/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * CRC32C (Castagnoli, reflected polynomial 0x82F63B78) as used by iSCSI, ext4 and btrfs; the
 * SSE4.2 crc32 instruction when the CPU has it, slicing-by-8 tables otherwise. Streaming:
 * crc32c_update(crc32c_update(0, a), b) == crc32c_update(0, a||b).
 */

#include <stddef.h>
#include <stdint.h>

uint32_t crc32c_update(uint32_t crc, const void *buf, size_t n);

static inline uint32_t crc32c(const void *buf, size_t n) {
        return crc32c_update(0, buf, n);
}

/* The table-driven implementation, whatever the CPU has; tests compare the two. */
uint32_t crc32c_update_portable(uint32_t crc, const void *buf, size_t n);

/* True when the hardware instruction is in use (for benchmarks and logs). */
int crc32c_hardware(void);
