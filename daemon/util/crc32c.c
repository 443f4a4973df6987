/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <pthread.h>
#include <string.h>

#include "crc32c.h"

#define CRC32C_POLY 0x82F63B78u

static uint32_t table[8][256];
static int use_hardware;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

static void crc32c_init(void) {
        for (uint32_t i = 0; i < 256; i++) {
                uint32_t c = i;
                for (int k = 0; k < 8; k++)
                        c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1)));
                table[0][i] = c;
        }
        for (uint32_t i = 0; i < 256; i++)
                for (int t = 1; t < 8; t++)
                        table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
#if defined(__x86_64__)
        __builtin_cpu_init();
        use_hardware = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc32c_software(uint32_t crc, const uint8_t *p, size_t n) {
        while (n && ((uintptr_t) p & 7)) {
                crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
                n--;
        }
        while (n >= 8) {
                uint64_t w;
                memcpy(&w, p, 8);
                w ^= crc; /* little-endian: the low word folds into the running CRC */
                crc = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^ table[5][(w >> 16) & 0xff] ^
                      table[4][(w >> 24) & 0xff] ^ table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
                      table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
                p += 8;
                n -= 8;
        }
        while (n--)
                crc = (crc >> 8) ^ table[0][(crc ^ *p++) & 0xff];
        return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p, size_t n) {
        uint64_t c = crc;
        while (n && ((uintptr_t) p & 7)) {
                c = __builtin_ia32_crc32qi((uint32_t) c, *p++);
                n--;
        }
        while (n >= 8) {
                uint64_t w;
                memcpy(&w, p, 8);
                c = __builtin_ia32_crc32di(c, w);
                p += 8;
                n -= 8;
        }
        while (n--)
                c = __builtin_ia32_crc32qi((uint32_t) c, *p++);
        return (uint32_t) c;
}
#endif

uint32_t crc32c_update(uint32_t crc, const void *buf, size_t n) {
        (void) pthread_once(&init_once, crc32c_init);
        crc = ~crc;
#if defined(__x86_64__)
        if (use_hardware)
                return ~crc32c_sse42(crc, buf, n);
#endif
        return ~crc32c_software(crc, buf, n);
}

uint32_t crc32c_update_portable(uint32_t crc, const void *buf, size_t n) {
        (void) pthread_once(&init_once, crc32c_init);
        return ~crc32c_software(~crc, buf, n);
}

int crc32c_hardware(void) {
        (void) pthread_once(&init_once, crc32c_init);
        return use_hardware;
}
