/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * The data path of a migration (proto/stream-protocol.md): the sending side (StreamOut) reads
 * device data fds and sends packets over N TCP channels; the receiving side (StreamIn) receives
 * them, reassembles them (reassembly.c) and writes each device's data fd strictly in order. Both
 * run in threads of their own (io_uring rings for the sockets, falling back to plain blocking
 * I/O when io_uring is unavailable; one reader or writer thread per device for the data fds,
 * which drivers only offer as blocking read()/write()), and talk to the daemon's main thread
 * through a queue of events signalled on an eventfd. Device state transitions are never made
 * here: the job (core/migration.c) makes them on the main thread and tells the engine what to
 * read or write next.
 *
 * Every function here is called from the main thread only; the engine's threads never call
 * back into the daemon.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "error-message.h"
#include "stream-tls.h"
#include "vfio-dev.h"
#include "wire.h"

#define STREAM_CHUNK_DEFAULT (1u << 20)           /* bytes read from a data fd per DATA packet */
#define STREAM_BUDGET_DEFAULT (UINT64_C(256) << 20)
#define STREAM_STALL_TIMEOUT_USEC_DEFAULT (UINT64_C(30) * 1000000)

typedef enum StreamEventType {
        STREAM_EVENT_CONNECTED,      /* out: every channel is up and accepted; in: every channel arrived */
        STREAM_EVENT_INITIAL_LOADED, /* out: the peer loaded the device's initial data; in: we did (sent to the peer) */
        STREAM_EVENT_INITIAL_REINIT, /* the device's initial data re-opened (REINIT). out: reason 1 when the peer
                                      * will acknowledge it again (protocol 2.1), 0 when it cannot (2.0 or too many
                                      * rounds: it travels as dirty data); text says how much. in: the source re-opened it */
        STREAM_EVENT_DEVICE_SENT,    /* out: the device's END (and BLOB) went out */
        STREAM_EVENT_SWITCHOVER,     /* in: the source is stopping its devices */
        STREAM_EVENT_DEVICE_DONE,    /* in: the device's END arrived and matched; its data fd got everything */
        STREAM_EVENT_BLOB,           /* in: the device's blob (event.blob, event.blob_size; the receiver owns it) */
        STREAM_EVENT_COMPLETE,       /* out: the peer committed every device, and proved it received everything */
        STREAM_EVENT_PEER_ABORT,     /* the peer sent ABORT: event.reason, event.text */
        STREAM_EVENT_FAILED,         /* this side failed: event.error, event.text; the engine has stopped */
        _STREAM_EVENT_MAX,
} StreamEventType;

typedef struct StreamEvent {
        StreamEventType type;
        int device;                  /* -1 for the whole job */
        int error;                   /* FAILED: a negative errno; -EBADMSG for a protocol violation */
        uint32_t reason;             /* PEER_ABORT: STREAM_ABORT_* */
        char text[256];
        uint8_t *blob;
        size_t blob_size;
} StreamEvent;

typedef struct StreamStats {
        uint64_t bytes;              /* data bytes moved (DATA payloads), all devices */
        uint64_t packets;
        uint64_t device_bytes[STREAM_DEVICES_MAX];
        uint64_t buffered;           /* in: bytes held by reassembly; out: bytes read from the devices, not yet sent */
        uint64_t buffered_peak;
        unsigned channels_up;
        bool io_uring;               /* the sockets run on io_uring */
        StreamTransport transport;   /* what protects the channels, once they are up */
} StreamStats;

typedef struct StreamOut StreamOut;
typedef struct StreamIn StreamIn;

typedef struct StreamOutConfig {
        struct sockaddr_storage peer;   /* where the destination listens */
        socklen_t peer_len;
        StreamTlsContext *tls;          /* every channel runs TLS with it; NULL: cleartext (referenced) */
        uint8_t token[STREAM_TOKEN_SIZE];
        unsigned channels;              /* 1..STREAM_CHANNELS_MAX */
        unsigned rings;                 /* io_uring ring threads, 1..channels; 0 = min(channels, CPUs) */
        bool io_uring;                  /* false: plain blocking I/O, one thread per channel */
        bool precopy;
        uint64_t bandwidth_limit;       /* bytes per second, 0 = none */
        uint32_t chunk;                 /* 0 = STREAM_CHUNK_DEFAULT */
        uint64_t stall_timeout_usec;    /* 0 = STREAM_STALL_TIMEOUT_USEC_DEFAULT */
        unsigned device_count;
        VfioDev *devices[STREAM_DEVICES_MAX];
        StreamDeviceInfo infos[STREAM_DEVICES_MAX];
        const uint8_t *blobs[STREAM_DEVICES_MAX];   /* sent after END; NULL for none */
        size_t blob_sizes[STREAM_DEVICES_MAX];
} StreamOutConfig;

/* Starts connecting and handshaking in the background; CONNECTED or FAILED follows. */
int stream_out_new(const StreamOutConfig *c, StreamOut **ret, ErrorMessage *err);
/* The eventfd that becomes readable when events are queued. */
int stream_out_event_fd(StreamOut *o);
/* 1 and an event, or 0 when the queue is empty. */
int stream_out_next_event(StreamOut *o, StreamEvent *ret);
/* Pre-copy: read the device's (PRE_COPY) data fd as long as there is data, pausing at its
 * temporary end (ENOMSG, or 0 with mtty quirks) and looking again. DATA packets carry the
 * pre-copy flag, and the initial flag until precopy info says the initial bytes are read; then
 * INITIAL_DONE goes out. */
int stream_out_start_precopy(StreamOut *o, unsigned device, int data_fd);
/* Stops the device's pre-copy reading and waits until the reader is idle, so the job can move
 * the device to STOP_COPY. */
int stream_out_pause(StreamOut *o, unsigned device);
/* Sends SWITCHOVER (before the job stops the devices). */
int stream_out_switchover(StreamOut *o);
/* Stop-copy: read the (STOP_COPY) data fd to its end (0), then send END, then the BLOB. The fd
 * may be the pre-copy one (the same session continues). DEVICE_SENT follows. */
int stream_out_start_stopcopy(StreamOut *o, unsigned device, int data_fd);
/* Sends ABORT (best effort) and stops everything. */
void stream_out_abort(StreamOut *o, uint32_t reason, const char *text);
/* SWITCHOVER and every packet of every device went to the senders: from here on the destination
 * may hold everything and commit, so a failure without COMPLETE or ABORT leaves the outcome
 * unknown (proto/stream-protocol.md §3.2). */
bool stream_out_handed_all(StreamOut *o);
/* A COMPLETE arrived and passed the commit rule (its event may still be queued). */
bool stream_out_completed(StreamOut *o);
void stream_out_stats(StreamOut *o, StreamStats *ret);
/* Stops the threads and closes everything. */
StreamOut *stream_out_free(StreamOut *o);

typedef struct StreamInConfig {
        uint8_t token[STREAM_TOKEN_SIZE];
        unsigned device_count;
        VfioDev *devices[STREAM_DEVICES_MAX];
        StreamDeviceInfo infos[STREAM_DEVICES_MAX];  /* what the source must announce */
        int data_fds[STREAM_DEVICES_MAX];            /* RESUMING data fds, borrowed */
        uint64_t budget;                              /* 0 = STREAM_BUDGET_DEFAULT */
        uint32_t max_payload;                         /* 0 = STREAM_PAYLOAD_MAX */
        uint64_t stall_timeout_usec;                  /* 0 = STREAM_STALL_TIMEOUT_USEC_DEFAULT */
        bool io_uring;
        unsigned rings;
} StreamInConfig;

int stream_in_new(const StreamInConfig *c, StreamIn **ret, ErrorMessage *err);
int stream_in_event_fd(StreamIn *i);
int stream_in_next_event(StreamIn *i, StreamEvent *ret);
/* Tells the source every device committed. */
int stream_in_complete(StreamIn *i);
void stream_in_abort(StreamIn *i, uint32_t reason, const char *text);
void stream_in_stats(StreamIn *i, StreamStats *ret);
StreamIn *stream_in_free(StreamIn *i);

/*
 * Where the destination takes connections: a listening socket (its own, or one systemd passed
 * in, FileDescriptorName=stream). Accepted connections are read up to their HELLO (with a
 * timeout); the StreamIn registered under the HELLO's job identifier checks it, the listener
 * answers with a WELCOME carrying the destination's proof, waits (with a timeout) for the
 * source's PROOF and verifies it, and only then hands the channel over. An unknown job, a bad
 * HELLO or a job that takes no more channels gets a refusing WELCOME; a wrong or missing PROOF
 * gets the connection closed, and the job never hears of it. Runs in a thread of its own.
 */
typedef struct StreamListener StreamListener;

/* listen_fd < 0: bind address (e.g. "0.0.0.0:7179", "[::]:7179", "127.0.0.1:0").
 * What connections must bring: with tls (referenced), a TLS handshake before anything else, and
 * a cleartext HELLO is refused; without, a TLS ClientHello is refused (and logged), and so is a
 * cleartext connection from a non-loopback address unless allow_cleartext. */
int stream_listener_new_secure(int listen_fd, const char *address, StreamTlsContext *tls, bool allow_cleartext,
                               StreamListener **ret, ErrorMessage *err);
/* Cleartext, from loopback addresses only. */
int stream_listener_new(int listen_fd, const char *address, StreamListener **ret, ErrorMessage *err);
/* The addresses it accepts on, as "host:port" strings (for PrepareIncoming). */
int stream_listener_addresses(StreamListener *l, char ***ret);
int stream_listener_register(StreamListener *l, StreamIn *in);
void stream_listener_unregister(StreamListener *l, StreamIn *in);
StreamListener *stream_listener_free(StreamListener *l);

/* io_uring can be set up here (not disabled by sysctl or seccomp). */
bool stream_io_uring_available(void);
