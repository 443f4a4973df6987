/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * What the sending side's files (stream-out.c, stream-out-io.c, stream-out-setup.c) share and
 * nobody else needs: StreamOut and its channels, devices, packets and rings, and the functions
 * that cross between those files.
 */

#include "stream-internal.h"

typedef struct OutPacket OutPacket;
struct OutPacket {
        OutPacket *next;
        uint8_t *buf;            /* header, then payload */
        size_t size;             /* header + payload */
        uint32_t payload;
        uint8_t type;
        int device;
        bool pooled;
        bool last_of_device;     /* DEVICE_SENT once it went out */
};

typedef struct OutRing OutRing;

typedef struct OutChannel {
        StreamOut *o;
        unsigned index;
        int fd;
        StreamTlsSession *tls;               /* NULL: cleartext; set before connected, then fixed */
        OutRing *ring;
        /* under o->lock */
        OutPacket *head, *tail;              /* ordered packets, in stream order */
        OutPacket *urgent_head, *urgent_tail; /* control packets (channel 0): SWITCHOVER, ABORT */
        uint64_t queued;                     /* bytes queued or in flight */
        bool idle;                           /* the sender found nothing: wake it on enqueue */
        bool broken;
        uint8_t binding[STREAM_BINDING_SIZE]; /* stream_channel_binding() of the connection */
        /* channels ≥ 1: the destination sends nothing there; one byte is a violation */
        bool side_posted, side_done;
        uint8_t side_byte;
        pthread_cond_t cond;                 /* blocking sender */
        /* the sender's own */
        OutPacket *inflight;
        size_t sent;
        _Atomic uint64_t rate;               /* test knob: bytes per second */
        uint64_t next_usec;
        pthread_t thread;
        bool thread_started;
} OutChannel;

typedef enum ReadMode {
        READ_IDLE,
        READ_PRECOPY,
        READ_STOPCOPY,
} ReadMode;

typedef struct OutDevice {
        StreamOut *o;
        unsigned index;
        VfioDev *dev;
        pthread_cond_t cond;
        pthread_t thread;
        bool thread_started;
        /* under o->lock */
        ReadMode want;
        int fd;
        bool busy;               /* the reader is between reads, not waiting for a command */
        bool exited;
        bool finished;           /* END queued */
        uint64_t next_device_seq;
        uint64_t data_bytes, data_packets;
        bool initial_loaded;     /* INITIAL_LOADED arrived for every INITIAL_DONE, none re-opened since */
        unsigned initial_rounds; /* INITIAL_DONEs queued (more than 1 only in 2.1, after REINIT) */
        unsigned initial_acks;   /* INITIAL_LOADEDs received */
        bool reinit_unacked;     /* a REINIT the session cannot acknowledge was reported */
        bool sent_reported;      /* DEVICE_SENT went out */
        bool last_out;           /* its BLOB was handed to a sender */
        StreamDigest digest;     /* over its ordered packets, as COMPLETE must echo it */
        /* the reader's own (also read under o->lock by the receiver, after it was set) */
        bool initial_done_sent;
        bool initial_known;
        uint64_t initial_bytes;
        uint8_t *blob;
        size_t blob_size;
        bool has_blob;
} OutDevice;

struct OutRing {
        StreamOut *o;
        unsigned index;
        struct io_uring ring;
        bool ring_ok;
        int wake_fd;
        uint64_t wake_buf;
        bool wake_pending;       /* under o->lock */
        unsigned outstanding;
        pthread_t thread;
        bool thread_started;
};

/* Receive state of channel 0, owned by whichever thread receives it. */
typedef struct OutRx {
        uint8_t hdr[STREAM_HEADER_SIZE];
        uint8_t payload[STREAM_DST_PAYLOAD_MAX];
        StreamHeader h;
        size_t got;
        bool in_payload;
        bool posted;
        bool done;
} OutRx;

struct StreamOut {
        StreamOutConfig cfg;
        EventQueue events;
        bool use_uring;
        StreamTransport transport;      /* once connected */
        unsigned n_channels, n_rings;
        uint32_t announced_payload;
        uint16_t peer_minor;            /* the session's minor version, from the WELCOMEs */
        uint32_t chunk;                 /* effective, once connected */
        int setup_wake_fd;

        pthread_mutex_t lock;
        pthread_cond_t pool_cond, sup_cond;
        bool connected;
        bool stopping;                  /* readers stop; only urgent packets go out */
        bool teardown;                  /* the supervisor is (or has been) asked to stop everything */
        bool dead;                      /* sockets shut down: every thread leaves */
        bool torn_down;
        bool exiting;
        bool completed;                 /* COMPLETE arrived and matched */
        bool switchover_out;            /* SWITCHOVER was handed to the sender */
        unsigned devices_out;           /* devices whose BLOB was handed to a sender */
        bool handed_all;                /* every byte of the migration was handed to a sender */
        uint64_t stall_usec;
        uint64_t last_progress_usec;    /* a send completed or a packet arrived */
        bool sup_unarmed;               /* the supervisor waits without a stall deadline */
        uint8_t job_id[STREAM_JOB_ID_SIZE];
        bool peer_aborted;
        bool abort_done;                /* our ABORT went out */
        bool deferred;                  /* a connection failed: reported unless an ABORT explains it */
        int deferred_error;
        uint64_t deferred_deadline;
        char deferred_text[256];
        unsigned sock_threads;          /* threads that use the sockets, still running */
        uint32_t abort_reason;
        char abort_text[STREAM_ABORT_TEXT_MAX + 1];
        uint64_t next_stream_seq;
        unsigned rr;
        OutPacket *pool;
        OutPacket *pool_free;
        unsigned pool_cap, pool_count;
        uint64_t bw_next_usec;
        uint64_t queued_total;

        OutChannel channels[STREAM_CHANNELS_MAX];
        OutDevice devices[STREAM_DEVICES_MAX];
        OutRing *rings;
        OutRx rx;

        pthread_t out_setup_thread, sup_thread, rx_thread;
        bool setup_started, sup_started, rx_started;

        StreamCounters counters;
};

enum {
        OP_WAKE = 1,
        OP_SEND,
        OP_RECV,
        OP_CANCEL,
};

/* stream-out.c */
void out_request_teardown_locked(StreamOut *o, uint32_t abort_reason, const char *text);
_printf_(4, 5) void out_fail_locked(StreamOut *o, int error, uint32_t abort_reason, const char *format, ...);
_printf_(3, 4) void out_conn_failed_locked(StreamOut *o, int error, const char *format, ...);
void out_sock_thread_exit(StreamOut *o);
void out_packet_release_locked(StreamOut *o, OutPacket *p);
OutPacket *out_channel_pop_locked(StreamOut *o, OutChannel *ch);
void out_enqueue_ordered_locked(StreamOut *o, OutDevice *d, OutPacket *p, uint8_t flags, uint32_t payload_crc);
int out_enqueue_small_ordered_locked(StreamOut *o, OutDevice *d, uint8_t type, const void *payload,
                                     uint32_t length, bool last);
void out_packet_sent_locked(StreamOut *o, OutChannel *ch, OutPacket *p);
void out_packet_failed_locked(StreamOut *o, OutChannel *ch, OutPacket *p, int error);

/* stream-out-io.c */
void *out_reader_thread(void *arg);
void *out_ring_thread(void *arg);
void *out_sender_thread(void *arg);
void *out_receiver_thread(void *arg);

/* stream-out-setup.c */
void *out_setup_thread(void *arg);
