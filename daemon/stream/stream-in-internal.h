/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * What the receiving side's files (stream-in.c, stream-in-io.c, stream-in-adopt.c) share and
 * nobody else needs: StreamIn and its channels, devices and rings, and the functions that cross
 * between those files.
 */

#include "reassembly.h"
#include "stream-internal.h"

typedef enum RxState {
        RX_NEW,        /* adopted, nothing received yet */
        RX_HDR,
        RX_PAYLOAD,
        RX_CTL,
        RX_PARKED,
        RX_DONE,
} RxState;

typedef struct InRing InRing;

typedef struct InChannel {
        StreamIn *in;
        unsigned index;
        int fd;
        StreamTlsSession *tls;           /* NULL: cleartext; fixed once adopted */
        InRing *ring;
        /* under in->lock */
        bool adopted;
        bool parked;
        uint8_t binding[STREAM_BINDING_SIZE];  /* stream_channel_binding() of the connection */
        /* the receiving thread's own (h also read under the lock while parked) */
        RxState state;
        bool posted;
        uint8_t hdr[STREAM_HEADER_SIZE];
        size_t got;
        StreamHeader h;
        uint8_t *payload;
        uint64_t reserved;               /* the admitted payload's cost, in in->inflight */
        uint8_t ctl[STREAM_CONTROL_PAYLOAD_MAX];
        pthread_t thread;
        bool thread_started;
} InChannel;

typedef struct InDevice {
        StreamIn *in;
        unsigned index;
        VfioDev *dev;
        int fd;
        pthread_cond_t cond;
        pthread_t thread;
        bool thread_started;
        /* under in->lock */
        bool waiting;                    /* looked and found nothing to apply; nothing added since */
        bool done;                       /* END applied and matched */
        /* the writer's own */
        bool initial_done;               /* INITIAL_DONE applied, and no initial data re-opened since */
        unsigned initial_rounds;         /* INITIAL_DONEs applied (more than 1 only in 2.1, after REINIT) */
        bool ended;                      /* END applied and matched; DEVICE_DONE follows its BLOB */
        uint64_t bytes, packets;
        StreamDigest digest;             /* over the ordered packets applied, for COMPLETE */
} InDevice;

struct InRing {
        StreamIn *in;
        unsigned index;
        struct io_uring ring;
        bool ring_ok;
        int wake_fd;
        uint64_t wake_buf;
        bool wake_pending;               /* under in->lock */
        unsigned parked;                 /* under in->lock */
        unsigned outstanding;
        pthread_t thread;
        bool thread_started;
};

struct StreamIn {
        StreamInConfig cfg;
        EventQueue events;
        uint8_t job_id[STREAM_JOB_ID_SIZE];
        uint64_t budget;
        uint32_t max_payload;
        uint64_t stall_usec;
        uint64_t reserve;
        bool use_uring;
        StreamTransport transport;       /* the first channel's; every other must match */
        StreamListener *listener;        /* the main thread's */

        pthread_mutex_t lock;
        pthread_mutex_t send_lock;
        pthread_cond_t progress_cond, sup_cond;
        unsigned n_channels;             /* 0 until the first HELLO is accepted */
        unsigned n_adopted;
        uint32_t hello_flags;
        uint16_t minor;                  /* the session's minor version: the lower of ours and the source's */
        uint32_t peer_max_payload;       /* what the source takes in one packet */
        bool connected;
        bool teardown, dead, torn_down, exiting;
        bool completed, peer_aborted, switchover;
        uint32_t abort_reason;
        char abort_text[STREAM_ABORT_TEXT_MAX + 1];
        unsigned devices_done;
        uint64_t last_progress_usec;
        bool deferred;                   /* a channel broke: reported unless an ABORT explains it */
        int deferred_error;
        uint64_t deferred_deadline;
        char deferred_text[256];
        unsigned sock_threads;           /* receiving threads still running */
        Reassembly *reasm;
        uint64_t inflight;
        unsigned parked;
        unsigned n_rings;
        InRing *rings;
        void *cache;                     /* recycled payload buffers of cache_size bytes, linked */
        uint64_t cache_bytes;
        uint32_t cache_size;

        InChannel channels[STREAM_CHANNELS_MAX];
        InDevice devices[STREAM_DEVICES_MAX];
        pthread_t sup_thread;
        bool sup_started;

        StreamCounters counters;
};

enum {
        OP_WAKE = 1,
        OP_RECV,
        OP_CANCEL,
};

/* stream-in.c */
void in_request_teardown_locked(StreamIn *in, uint32_t abort_reason, const char *text);
void in_fail_event_locked(StreamIn *in, int device, int error, uint32_t abort_reason, const char *text);
_printf_(4, 5) void in_fail_locked(StreamIn *in, int error, uint32_t abort_reason, const char *format, ...);
void in_violation_locked(StreamIn *in, const InChannel *ch, const StreamHeader *h, const char *why);
void in_violation(StreamIn *in, const InChannel *ch, const StreamHeader *h, const char *why);
void in_channel_closed(StreamIn *in, InChannel *ch, int error);
void in_sock_thread_exit(StreamIn *in);
void in_buffer_put_locked(StreamIn *in, uint8_t *buf, uint32_t length);
void in_update_peak_locked(StreamIn *in);
int in_admit_locked(StreamIn *in, InChannel *ch);
void in_wake_parked_locked(StreamIn *in);
void in_check_deadlock_locked(StreamIn *in);

/* stream-in-io.c */
int in_send_control(StreamIn *in, uint8_t type, uint16_t device, const void *payload, uint32_t length,
                    uint64_t timeout_usec);
void *in_writer_thread(void *arg);
void *in_ring_thread(void *arg);
void *in_receiver_thread(void *arg);
