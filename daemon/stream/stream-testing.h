/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Knobs for tests and benchmarks only; the daemon never calls these. They let a test make one
 * channel slow (to exercise reassembly back-pressure), shorten the listener's timeouts, try
 * socket buffer sizes, and make a TLS session send what a peer may (an alert, a KeyUpdate).
 */

#include "stream-engine.h"

/* Limits the channel's sending rate (bytes per second, 0 = none). Any time. */
void stream_out_test_set_channel_rate(StreamOut *o, unsigned channel, uint64_t bytes_per_second);
/* How long an accepted connection may take to send its HELLO, and how many unauthenticated
 * connections the listener holds at most (the oldest is dropped for a newer one). */
void stream_listener_test_set_limits(StreamListener *l, uint64_t hello_timeout_usec, unsigned max_pending);
/* How many unauthenticated connections the listener holds now. */
unsigned stream_listener_test_pending(StreamListener *l);
/* A channel's TLS channel binding (the exporter), once the channel is up: -ENOTCONN before,
 * -ENOPROTOOPT on a cleartext channel. */
int stream_out_test_channel_binding(StreamOut *o, unsigned channel, uint8_t out[STREAM_TLS_BINDING_SIZE]);
int stream_in_test_channel_binding(StreamIn *i, unsigned channel, uint8_t out[STREAM_TLS_BINDING_SIZE]);
/* SO_SNDBUF/SO_RCVBUF for new channels (0: the kernel's autotuning, the default). */
void stream_test_set_socket_buffers(int sndbuf, int rcvbuf);
int stream_test_get_sndbuf(void);
/* The protocol minor version sources and destinations of this process offer (-1: the current
 * one), to test sessions with a peer that speaks an older minor. */
void stream_test_set_minors(int source, int destination);
int stream_test_get_rcvbuf(void);
/* Sends a TLS alert (level warning or fatal; description as GnuTLS numbers them, 0 is
 * close_notify), or a KeyUpdate (asking the peer to update its keys too, or not), through the
 * session's transport: in ring mode it lands among the sealed records. 0 or -EIO. */
int stream_tls_test_alert(StreamTlsSession *s, bool fatal, int description);
int stream_tls_test_key_update(StreamTlsSession *s, bool ask_peer);
