/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <pthread.h>
#include <string.h>

#include "crc32c.h"

#define CRC32C_POLY 0x82F63B78u

static uint32_t table[8][256];
static int use_hardware;
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

/* The hardware path runs three independent crc32 chains over three adjacent lanes (the
 * instruction's latency is three times its throughput, so one chain leaves two thirds of the
 * unit idle), then joins them: the CRC register is linear, so feeding a register through n zero
 * bytes ("shifting" it) is a fixed 32×32 bit matrix, applied with four table lookups. */
#define LANE 2048u
#if defined(__x86_64__)
static uint32_t shift_lane[4][256], shift_2lanes[4][256];

static uint32_t crc32c_software(uint32_t crc, const uint8_t *p, size_t n);

static void make_shift(uint32_t t[4][256], size_t n) {
        static const uint8_t zeros[2 * LANE];
        uint32_t basis[32];

        for (unsigned i = 0; i < 32; i++)
                basis[i] = crc32c_software(1u << i, zeros, n);
        for (unsigned k = 0; k < 4; k++)
                for (unsigned b = 0; b < 256; b++) {
                        uint32_t v = 0;
                        for (unsigned j = 0; j < 8; j++)
                                if (b & (1u << j))
                                        v ^= basis[8 * k + j];
                        t[k][b] = v;
                }
}

static uint32_t shift_by(const uint32_t t[4][256], uint32_t v) {
        return t[0][v & 0xff] ^ t[1][(v >> 8) & 0xff] ^ t[2][(v >> 16) & 0xff] ^ t[3][v >> 24];
}
#endif

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
        if (use_hardware) {
                make_shift(shift_lane, LANE);
                make_shift(shift_2lanes, 2 * LANE);
        }
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

__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42_3way(uint32_t crc, const uint8_t *p, size_t n) {
        while (n && ((uintptr_t) p & 7)) {
                crc = __builtin_ia32_crc32qi(crc, *p++);
                n--;
        }
        while (n >= 3 * LANE) {
                uint64_t a = crc, b = 0, c = 0;

                for (size_t i = 0; i < LANE; i += 8) {
                        uint64_t wa, wb, wc;
                        memcpy(&wa, p + i, 8);
                        memcpy(&wb, p + LANE + i, 8);
                        memcpy(&wc, p + 2 * LANE + i, 8);
                        a = __builtin_ia32_crc32di(a, wa);
                        b = __builtin_ia32_crc32di(b, wb);
                        c = __builtin_ia32_crc32di(c, wc);
                }
                crc = shift_by(shift_2lanes, (uint32_t) a) ^ shift_by(shift_lane, (uint32_t) b) ^ (uint32_t) c;
                p += 3 * LANE;
                n -= 3 * LANE;
        }
        return crc32c_sse42(crc, p, n);
}
#endif

uint32_t crc32c_update(uint32_t crc, const void *buf, size_t n) {
        (void) pthread_once(&init_once, crc32c_init);
        crc = ~crc;
#if defined(__x86_64__)
        if (use_hardware)
                return ~(n >= 3 * LANE ? crc32c_sse42_3way(crc, buf, n) : crc32c_sse42(crc, buf, n));
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
