/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <endian.h>
#include <errno.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <string.h>
#include <sys/random.h>

#include "macro.h"
#include "stream-auth.h"

_Static_assert(sizeof(STREAM_LABEL_DST) == sizeof(STREAM_LABEL_SRC), "labels of equal length");

int stream_job_id(const uint8_t token[static STREAM_TOKEN_SIZE], uint8_t ret[static STREAM_JOB_ID_SIZE]) {
        uint8_t mac[STREAM_MAC_SIZE];

        if (gnutls_hmac_fast(GNUTLS_MAC_SHA256, token, STREAM_TOKEN_SIZE, STREAM_LABEL_JOB_ID,
                             strlen(STREAM_LABEL_JOB_ID), mac) < 0)
                return -EIO;
        memcpy(ret, mac, STREAM_JOB_ID_SIZE);
        return 0;
}

int stream_random(uint8_t *buf, size_t n) {
        while (n > 0) {
                ssize_t k = getrandom(buf, n, 0);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                buf += k;
                n -= (size_t) k;
        }
        return 0;
}

int stream_proof_mac(const uint8_t token[static STREAM_TOKEN_SIZE], StreamProofSide side, const StreamTranscript *t,
                     uint8_t ret[static STREAM_MAC_SIZE]) {
        const char *label = side == STREAM_PROOF_DST ? STREAM_LABEL_DST : STREAM_LABEL_SRC;
        uint16_t index = htole16(t->channel_index), count = htole16(t->channel_count);
        gnutls_hmac_hd_t hd;
        int r;

        if (gnutls_hmac_init(&hd, GNUTLS_MAC_SHA256, token, STREAM_TOKEN_SIZE) < 0)
                return -EIO;
        r = gnutls_hmac(hd, label, strlen(label));
        if (r >= 0)
                r = gnutls_hmac(hd, t->hello, t->hello_size);
        if (r >= 0)
                r = gnutls_hmac(hd, t->welcome, STREAM_WELCOME_SIZE);
        if (r >= 0)
                r = gnutls_hmac(hd, t->nonce_src, STREAM_NONCE_SIZE);
        if (r >= 0)
                r = gnutls_hmac(hd, t->nonce_dst, STREAM_NONCE_SIZE);
        if (r >= 0)
                r = gnutls_hmac(hd, &index, sizeof index);
        if (r >= 0)
                r = gnutls_hmac(hd, &count, sizeof count);
        if (r >= 0)
                r = gnutls_hmac(hd, t->binding, STREAM_BINDING_SIZE);
        gnutls_hmac_deinit(hd, ret);
        return r < 0 ? -EIO : 0;
}

bool stream_equal_ct(const uint8_t *a, const uint8_t *b, size_t n) {
        volatile uint8_t x = 0;

        for (size_t k = 0; k < n; k++)
                x |= a[k] ^ b[k];
        return x == 0;
}

bool stream_proof_verify(const uint8_t token[static STREAM_TOKEN_SIZE], StreamProofSide side, const StreamTranscript *t,
                         const uint8_t mac[static STREAM_MAC_SIZE]) {
        uint8_t want[STREAM_MAC_SIZE];

        if (stream_proof_mac(token, side, t, want) < 0)
                return false;
        return stream_equal_ct(want, mac, STREAM_MAC_SIZE);
}

int stream_digest_init(StreamDigest *d) {
        gnutls_hash_hd_t hd;

        if (gnutls_hash_init(&hd, GNUTLS_DIG_SHA256) < 0)
                return -ENOMEM;
        d->hd = hd;
        return 0;
}

void stream_digest_add(StreamDigest *d, const StreamHeader *h) {
        uint8_t rec[STREAM_DIGEST_RECORD_SIZE];

        stream_digest_record(h, rec);
        (void) gnutls_hash(d->hd, rec, sizeof rec);
}

void stream_digest_peek(StreamDigest *d, uint8_t ret[static STREAM_DIGEST_SIZE]) {
        gnutls_hash_hd_t copy = gnutls_hash_copy(d->hd);

        if (!copy) {
                memset(ret, 0, STREAM_DIGEST_SIZE); /* matches nothing a peer can produce by chance */
                return;
        }
        gnutls_hash_deinit(copy, ret);
}

void stream_digest_done(StreamDigest *d) {
        if (d->hd)
                gnutls_hash_deinit(d->hd, NULL);
        d->hd = NULL;
}
