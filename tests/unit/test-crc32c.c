/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <criterion/criterion.h>
#include <errno.h>
#include <string.h>

#include "crc32c.h"

Test(crc32c, known_vectors) {
        static const uint8_t zeros[32] = {}, ones[32] = { [0 ... 31] = 0xff };
        uint8_t ascending[32];

        for (int i = 0; i < 32; i++)
                ascending[i] = (uint8_t) i;
        /* RFC 3720 B.4 test vectors, and the customary "123456789" check value. */
        cr_assert_eq(crc32c("123456789", 9), 0xE3069283u);
        cr_assert_eq(crc32c(zeros, 32), 0x8A9136AAu);
        cr_assert_eq(crc32c(ones, 32), 0x62A8AB43u);
        cr_assert_eq(crc32c(ascending, 32), 0x46DD794Eu);
        cr_assert_eq(crc32c("", 0), 0u);
}

Test(crc32c, hardware_and_portable_agree_and_stream) {
        uint8_t buf[4099];
        uint64_t x = 0x1234567;

        for (size_t i = 0; i < sizeof buf; i++) {
                x = x * 6364136223846793005u + 1442695040888963407u;
                buf[i] = (uint8_t) (x >> 56);
        }
        /* Every length and misalignment up to a few words, and a split at every point. */
        for (size_t off = 0; off < 9; off++)
                for (size_t len = 0; len < 80; len++)
                        cr_assert_eq(crc32c_update(7, buf + off, len), crc32c_update_portable(7, buf + off, len));
        uint32_t whole = crc32c(buf, sizeof buf);
        cr_assert_eq(whole, crc32c_update_portable(0, buf, sizeof buf));
        for (size_t split = 0; split <= sizeof buf; split += 97)
                cr_assert_eq(crc32c_update(crc32c(buf, split), buf + split, sizeof buf - split), whole);
        cr_log_info("crc32c hardware: %s", crc32c_hardware() ? "yes" : "no");
}

/* The hardware path splits long buffers into three lanes and joins them: every length around
 * the lane multiples, misaligned, must agree with the table-driven implementation. */
Test(crc32c, long_buffers_agree) {
        static uint8_t buf[3 * 3 * 2048 + 64];
        uint64_t x = 0xabcdef;
        static const size_t lengths[] = { 6143, 6144, 6145, 6151, 12288, 12289, 18431, 18432, 18433, 18440 };

        for (size_t i = 0; i < sizeof buf; i++) {
                x = x * 6364136223846793005u + 1442695040888963407u;
                buf[i] = (uint8_t) (x >> 56);
        }
        for (size_t off = 0; off < 9; off++)
                for (size_t k = 0; k < sizeof lengths / sizeof lengths[0]; k++)
                        cr_assert_eq(crc32c_update(0x5a5a, buf + off, lengths[k]),
                                     crc32c_update_portable(0x5a5a, buf + off, lengths[k]), "offset %zu length %zu", off,
                                     lengths[k]);
        cr_assert_eq(crc32c(buf, sizeof buf), crc32c_update_portable(0, buf, sizeof buf));
}
