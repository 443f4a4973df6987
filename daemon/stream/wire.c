/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <endian.h>
#include <errno.h>
#include <string.h>

#include "crc32c.h"
#include "macro.h"
#include "wire.h"

static void put16(uint8_t *p, uint16_t v) {
        v = htole16(v);
        memcpy(p, &v, 2);
}
static void put32(uint8_t *p, uint32_t v) {
        v = htole32(v);
        memcpy(p, &v, 4);
}
static void put64(uint8_t *p, uint64_t v) {
        v = htole64(v);
        memcpy(p, &v, 8);
}
static uint16_t get16(const uint8_t *p) {
        uint16_t v;
        memcpy(&v, p, 2);
        return le16toh(v);
}
static uint32_t get32(const uint8_t *p) {
        uint32_t v;
        memcpy(&v, p, 4);
        return le32toh(v);
}
static uint64_t get64(const uint8_t *p) {
        uint64_t v;
        memcpy(&v, p, 8);
        return le64toh(v);
}

static bool all_zero(const uint8_t *p, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (p[i])
                        return false;
        return true;
}

static int refuse(const char **why, const char *reason) {
        if (why)
                *why = reason;
        return -EBADMSG;
}

/* A NUL-padded text field: copied out NUL-terminated; it must hold a terminating NUL or fill
 * the field exactly, and nothing but NULs after the text. */
static bool get_text(const uint8_t *p, size_t field, char *out) {
        size_t n = strnlen((const char *) p, field);
        memcpy(out, p, n);
        out[n] = '\0';
        return all_zero(p + n, field - n);
}

size_t stream_hello_size(uint32_t device_count) {
        return STREAM_HELLO_FIXED_SIZE + (size_t) device_count * STREAM_HELLO_DEVICE_SIZE + STREAM_HELLO_CRC_SIZE;
}

int stream_hello_encode(const StreamHello *h, uint8_t *buf, size_t size) {
        size_t total;

        if (h->device_count < 1 || h->device_count > STREAM_DEVICES_MAX || h->channel_count < 1 ||
            h->channel_count > STREAM_CHANNELS_MAX || h->channel_index >= h->channel_count ||
            h->max_payload < 1 || h->max_payload > STREAM_PAYLOAD_MAX)
                return -EINVAL;
        total = stream_hello_size(h->device_count);
        if (size < total)
                return -ENOBUFS;
        memset(buf, 0, total);
        memcpy(buf, STREAM_HELLO_MAGIC, 8);
        put16(buf + 8, h->major);
        put16(buf + 10, h->minor);
        put16(buf + 12, h->channel_index);
        put16(buf + 14, h->channel_count);
        memcpy(buf + 16, h->job_id, STREAM_JOB_ID_SIZE);
        memcpy(buf + 32, h->nonce, STREAM_NONCE_SIZE);
        put32(buf + 64, h->device_count);
        put32(buf + 68, h->flags);
        put32(buf + 72, h->max_payload);
        for (uint32_t i = 0; i < h->device_count; i++) {
                const StreamDeviceInfo *d = &h->devices[i];
                uint8_t *r = buf + STREAM_HELLO_FIXED_SIZE + (size_t) i * STREAM_HELLO_DEVICE_SIZE;
                size_t n = strnlen(d->driver, STREAM_DRIVER_NAME_SIZE + 1);

                if (n > STREAM_DRIVER_NAME_SIZE)
                        return -EINVAL;
                put32(r + 0, d->migration_flags);
                put32(r + 4, d->stream_format);
                put16(r + 8, d->vendor_id);
                put16(r + 10, d->device_id);
                put64(r + 16, d->stop_copy_size);
                put64(r + 24, d->state_size);
                memcpy(r + 32, d->driver, n);
        }
        put32(buf + total - 4, crc32c(buf, total - 4));
        return (int) total;
}

int stream_hello_peek_size(const uint8_t *buf, size_t size, size_t *ret_size, uint16_t *ret_major,
                           uint16_t *ret_minor, const char **why) {
        uint32_t n;

        if (size < STREAM_HELLO_FIXED_SIZE)
                return refuse(why, "short HELLO");
        if (memcmp(buf, STREAM_HELLO_MAGIC, 8) != 0)
                return refuse(why, "not a HELLO (bad magic)");
        if (get16(buf + 8) != STREAM_PROTOCOL_MAJOR) {
                /* Nothing else of another version's layout can be trusted. */
                if (ret_major)
                        *ret_major = get16(buf + 8);
                if (ret_minor)
                        *ret_minor = get16(buf + 10);
                if (why)
                        *why = "unsupported protocol major version";
                return -EPROTONOSUPPORT;
        }
        n = get32(buf + 64);
        if (n < 1 || n > STREAM_DEVICES_MAX)
                return refuse(why, "device count out of range");
        *ret_size = stream_hello_size(n);
        return 0;
}

int stream_hello_decode(const uint8_t *buf, size_t size, StreamHello *ret, const char **why) {
        StreamHello h = {};
        size_t total;
        int r;

        r = stream_hello_peek_size(buf, size, &total, &h.major, &h.minor, why);
        if (r == -EPROTONOSUPPORT) {
                *ret = h;
                return r;
        }
        if (r < 0)
                return r;
        if (size != total)
                return refuse(why, "HELLO length does not match its device count");
        if (get32(buf + total - 4) != crc32c(buf, total - 4))
                return refuse(why, "HELLO checksum mismatch");

        h.major = get16(buf + 8);
        h.minor = get16(buf + 10);
        h.channel_index = get16(buf + 12);
        h.channel_count = get16(buf + 14);
        memcpy(h.job_id, buf + 16, STREAM_JOB_ID_SIZE);
        memcpy(h.nonce, buf + 32, STREAM_NONCE_SIZE);
        h.device_count = get32(buf + 64);
        h.flags = get32(buf + 68);
        h.max_payload = get32(buf + 72);
        if (h.channel_count < 1 || h.channel_count > STREAM_CHANNELS_MAX || h.channel_index >= h.channel_count)
                return refuse(why, "channel index or count out of range");
        if (h.flags & ~STREAM_HELLO_FLAG_PRECOPY)
                return refuse(why, "unknown HELLO flags");
        if (h.max_payload < 1 || h.max_payload > STREAM_PAYLOAD_MAX)
                return refuse(why, "maximum payload out of range");
        if (!all_zero(buf + 76, 4))
                return refuse(why, "reserved HELLO bytes are not zero");
        for (uint32_t i = 0; i < h.device_count; i++) {
                const uint8_t *d = buf + STREAM_HELLO_FIXED_SIZE + (size_t) i * STREAM_HELLO_DEVICE_SIZE;
                StreamDeviceInfo *info = &h.devices[i];

                info->migration_flags = get32(d + 0);
                info->stream_format = get32(d + 4);
                info->vendor_id = get16(d + 8);
                info->device_id = get16(d + 10);
                info->stop_copy_size = get64(d + 16);
                info->state_size = get64(d + 24);
                if (!all_zero(d + 12, 4) || !all_zero(d + 96, 32))
                        return refuse(why, "reserved device record bytes are not zero");
                if (info->stream_format > STREAM_FORMAT_SIM)
                        return refuse(why, "unknown stream format");
                if (!get_text(d + 32, STREAM_DRIVER_NAME_SIZE, info->driver) || !info->driver[0])
                        return refuse(why, "malformed driver name");
        }
        *ret = h;
        return 0;
}

void stream_welcome_encode(const StreamWelcome *w, uint8_t out[static STREAM_WELCOME_SIZE]) {
        memset(out, 0, STREAM_WELCOME_SIZE);
        memcpy(out, STREAM_WELCOME_MAGIC, 8);
        put16(out + 8, w->major);
        put16(out + 10, w->minor);
        put32(out + 12, w->status);
        put16(out + 16, w->channel_index);
        put32(out + 20, w->max_payload);
        memcpy(out + 24, w->reason, strnlen(w->reason, STREAM_REASON_TEXT_SIZE));
        put32(out + 92, crc32c(out, 92));
}

size_t stream_welcome_encode_full(const StreamWelcome *w,
                                  uint8_t out[static STREAM_WELCOME_SIZE + STREAM_WELCOME_PROOF_SIZE]) {
        stream_welcome_encode(w, out);
        if (w->status != STREAM_ACCEPTED)
                return STREAM_WELCOME_SIZE;
        memcpy(out + STREAM_WELCOME_SIZE, w->nonce, STREAM_NONCE_SIZE);
        memcpy(out + STREAM_WELCOME_SIZE + STREAM_NONCE_SIZE, w->mac, STREAM_MAC_SIZE);
        return STREAM_WELCOME_SIZE + STREAM_WELCOME_PROOF_SIZE;
}

void stream_welcome_decode_proof(const uint8_t in[static STREAM_WELCOME_PROOF_SIZE], StreamWelcome *w) {
        memcpy(w->nonce, in, STREAM_NONCE_SIZE);
        memcpy(w->mac, in + STREAM_NONCE_SIZE, STREAM_MAC_SIZE);
}

void stream_proof_encode(const StreamProof *p, uint8_t out[static STREAM_PROOF_SIZE]) {
        memset(out, 0, STREAM_PROOF_SIZE);
        memcpy(out, STREAM_PROOF_MAGIC, 8);
        memcpy(out + 8, p->mac, STREAM_MAC_SIZE);
        put32(out + 44, crc32c(out, 44));
}

int stream_proof_decode(const uint8_t in[static STREAM_PROOF_SIZE], StreamProof *ret, const char **why) {
        if (memcmp(in, STREAM_PROOF_MAGIC, 8) != 0)
                return refuse(why, "not a PROOF (bad magic)");
        if (get32(in + 44) != crc32c(in, 44))
                return refuse(why, "PROOF checksum mismatch");
        if (!all_zero(in + 40, 4))
                return refuse(why, "reserved PROOF bytes are not zero");
        memcpy(ret->mac, in + 8, STREAM_MAC_SIZE);
        return 0;
}

void stream_complete_encode(const StreamCompleteRecord *records, uint32_t device_count, uint8_t *out) {
        for (uint32_t i = 0; i < device_count; i++) {
                uint8_t *r = out + (size_t) i * STREAM_COMPLETE_RECORD_SIZE;
                put64(r, records[i].data_bytes);
                put64(r + 8, records[i].data_packets);
                memcpy(r + 16, records[i].digest, STREAM_DIGEST_SIZE);
        }
}

int stream_complete_decode(const uint8_t *in, size_t size, uint32_t device_count, StreamCompleteRecord *ret,
                           const char **why) {
        if (device_count < 1 || device_count > STREAM_DEVICES_MAX ||
            size != (size_t) device_count * STREAM_COMPLETE_RECORD_SIZE)
                return refuse(why, "COMPLETE does not carry one record per device");
        for (uint32_t i = 0; i < device_count; i++) {
                const uint8_t *r = in + (size_t) i * STREAM_COMPLETE_RECORD_SIZE;
                ret[i].data_bytes = get64(r);
                ret[i].data_packets = get64(r + 8);
                memcpy(ret[i].digest, r + 16, STREAM_DIGEST_SIZE);
        }
        return 0;
}

void stream_digest_record(const StreamHeader *h, uint8_t out[static STREAM_DIGEST_RECORD_SIZE]) {
        memset(out, 0, STREAM_DIGEST_RECORD_SIZE);
        put64(out, h->device_seq);
        out[8] = h->type;
        out[9] = h->flags;
        put32(out + 12, h->length);
        put32(out + 16, h->payload_crc);
}

int stream_welcome_decode(const uint8_t in[static STREAM_WELCOME_SIZE], StreamWelcome *ret, const char **why) {
        StreamWelcome w = {};

        if (memcmp(in, STREAM_WELCOME_MAGIC, 8) != 0)
                return refuse(why, "not a WELCOME (bad magic)");
        if (get32(in + 92) != crc32c(in, 92))
                return refuse(why, "WELCOME checksum mismatch");
        w.major = get16(in + 8);
        w.minor = get16(in + 10);
        w.status = get32(in + 12);
        w.channel_index = get16(in + 16);
        w.max_payload = get32(in + 20);
        if (!all_zero(in + 18, 2))
                return refuse(why, "reserved WELCOME bytes are not zero");
        if (!get_text(in + 24, STREAM_REASON_TEXT_SIZE, w.reason))
                return refuse(why, "malformed reason text");
        if (w.status == STREAM_ACCEPTED && (w.max_payload < STREAM_PAYLOAD_MIN || w.max_payload > STREAM_PAYLOAD_MAX))
                return refuse(why, "maximum payload out of range");
        *ret = w;
        return 0;
}

bool stream_packet_is_ordered(uint8_t type) {
        return type == STREAM_PACKET_DATA || type == STREAM_PACKET_INITIAL_DONE || type == STREAM_PACKET_END ||
               type == STREAM_PACKET_BLOB;
}

void stream_header_encode(const StreamHeader *h, uint8_t out[static STREAM_HEADER_SIZE]) {
        memset(out, 0, STREAM_HEADER_SIZE);
        memcpy(out, STREAM_PACKET_MAGIC, 4);
        out[4] = h->type;
        out[5] = h->flags;
        put16(out + 6, h->device);
        put64(out + 8, h->stream_seq);
        put64(out + 16, h->device_seq);
        put32(out + 24, h->length);
        put32(out + 28, h->payload_crc);
        put32(out + 36, crc32c(out, 36));
}

void stream_header_seal(StreamHeader *h, const void *payload, uint32_t length) {
        h->length = length;
        h->payload_crc = crc32c(payload, length);
}

int stream_header_decode(const uint8_t in[static STREAM_HEADER_SIZE], uint32_t max_payload, uint32_t device_count,
                         StreamHeader *ret, const char **why) {
        StreamHeader h;
        uint32_t allowed_flags = 0;

        if (memcmp(in, STREAM_PACKET_MAGIC, 4) != 0)
                return refuse(why, "bad packet magic");
        if (get32(in + 36) != crc32c(in, 36))
                return refuse(why, "packet header checksum mismatch");
        if (!all_zero(in + 32, 4))
                return refuse(why, "reserved header bytes are not zero");

        h = (StreamHeader) {
                .type = in[4],
                .flags = in[5],
                .device = get16(in + 6),
                .stream_seq = get64(in + 8),
                .device_seq = get64(in + 16),
                .length = get32(in + 24),
                .payload_crc = get32(in + 28),
        };

        if (h.length > max_payload)
                return refuse(why, "payload longer than announced");

        switch (h.type) {
        case STREAM_PACKET_DATA:
                allowed_flags = STREAM_DATA_FLAG_PRECOPY | STREAM_DATA_FLAG_INITIAL;
                if (h.length == 0)
                        return refuse(why, "empty DATA packet");
                break;
        case STREAM_PACKET_INITIAL_DONE:
                if (h.length != 0)
                        return refuse(why, "INITIAL_DONE with a payload");
                break;
        case STREAM_PACKET_END:
                if (h.length != STREAM_END_PAYLOAD_SIZE)
                        return refuse(why, "END payload of the wrong size");
                break;
        case STREAM_PACKET_BLOB:
                if (h.length > STREAM_BLOB_MAX)
                        return refuse(why, "BLOB larger than 1 MiB");
                break;
        case STREAM_PACKET_SWITCHOVER:
                if (h.length != 0)
                        return refuse(why, "control packet with an unexpected payload");
                break;
        case STREAM_PACKET_COMPLETE:
                if (h.length != device_count * STREAM_COMPLETE_RECORD_SIZE)
                        return refuse(why, "COMPLETE does not carry one record per device");
                break;
        case STREAM_PACKET_INITIAL_LOADED:
                if (h.length != 0)
                        return refuse(why, "INITIAL_LOADED with a payload");
                break;
        case STREAM_PACKET_ABORT:
                if (h.length < 4 || h.length > 4 + STREAM_ABORT_TEXT_MAX)
                        return refuse(why, "ABORT payload of the wrong size");
                break;
        default:
                return refuse(why, "unknown packet type");
        }
        if (h.flags & ~allowed_flags)
                return refuse(why, "unknown packet flags");

        if (stream_packet_is_ordered(h.type) || h.type == STREAM_PACKET_INITIAL_LOADED) {
                if (h.device >= device_count)
                        return refuse(why, "device index out of range");
        } else if (h.device != STREAM_JOB_DEVICE)
                return refuse(why, "a job packet names a device");
        if (!stream_packet_is_ordered(h.type) && (h.stream_seq != 0 || h.device_seq != 0))
                return refuse(why, "a control packet carries sequence numbers");

        *ret = h;
        return 0;
}

const char *stream_packet_type_to_string(uint8_t type) {
        switch (type) {
        case STREAM_PACKET_DATA:
                return "DATA";
        case STREAM_PACKET_INITIAL_DONE:
                return "INITIAL_DONE";
        case STREAM_PACKET_END:
                return "END";
        case STREAM_PACKET_BLOB:
                return "BLOB";
        case STREAM_PACKET_SWITCHOVER:
                return "SWITCHOVER";
        case STREAM_PACKET_INITIAL_LOADED:
                return "INITIAL_LOADED";
        case STREAM_PACKET_COMPLETE:
                return "COMPLETE";
        case STREAM_PACKET_ABORT:
                return "ABORT";
        default:
                return "unknown";
        }
}

const char *stream_refusal_to_string(uint32_t status) {
        static const char *const table[] = {
                [STREAM_ACCEPTED] = "accepted",
                [STREAM_REFUSE_BAD_HELLO] = "bad-hello",
                [STREAM_REFUSE_VERSION] = "version",
                [STREAM_REFUSE_TOKEN] = "token",
                [STREAM_REFUSE_CHANNELS] = "channels",
                [STREAM_REFUSE_DEVICES] = "devices",
                [STREAM_REFUSE_INCOMPATIBLE] = "incompatible",
                [STREAM_REFUSE_BUSY] = "busy",
                [STREAM_REFUSE_LIMIT] = "limit",
        };
        return status < ELEMENTSOF(table) ? table[status] : "unknown";
}

const char *stream_abort_to_string(uint32_t reason) {
        switch (reason) {
        case STREAM_ABORT_CANCELLED:
                return "cancelled";
        case STREAM_ABORT_DEVICE:
                return "device";
        case STREAM_ABORT_PROTOCOL:
                return "protocol";
        case STREAM_ABORT_INTERNAL:
                return "internal";
        case STREAM_ABORT_TIMEOUT:
                return "timeout";
        default:
                return "unknown";
        }
}
