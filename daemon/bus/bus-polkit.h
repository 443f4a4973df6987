/* SPDX-License-Identifier: GPL-2.0-or-later */
#pragma once

/*
 * Asynchronous polkit authorization for method handlers, after systemd's bus-polkit.c:
 *
 *     r = bus_verify_polkit_async(m, ACTION, details, &registry, error);
 *     if (r < 0)
 *             return r;        // denied, or polkit failed: error is set
 *     if (r == 0)
 *             return 1;        // asked polkit; this message is dispatched again with the answer
 *     ... act ...
 *
 * The handler must therefore be idempotent up to this call: validate arguments, then verify,
 * then change state. Root and the daemon's own user are allowed without asking. When polkit is
 * not on the bus at all, nobody else is (a host without polkit has no other way to express policy).
 *
 * A query lives until its call has been dispatched again and finished, whatever the handler
 * returns then; the call and every fd in it are released with it. Queries are capped (over a cap
 * the call fails with org.vfiomig1.Error.LimitExceeded) and time out (polkit's silence is a
 * failure, not a wait).
 */

#include <systemd/sd-bus.h>

#define POLKIT_QUERIES_PER_SENDER 16u  /* one bus connection */
#define POLKIT_QUERIES_PER_UID 64u     /* one user, over all its connections */
#define POLKIT_QUERIES_MAX 256u        /* everyone */
#define POLKIT_TIMEOUT_USEC (25ULL * 1000000ULL)
#define POLKIT_INTERACTIVE_TIMEOUT_USEC (300ULL * 1000000ULL) /* a human answering a prompt */

typedef struct PolkitRegistry PolkitRegistry;

/* details: NULL or a NULL-terminated list of key, value, key, value… (polkit rule matchable). */
int bus_verify_polkit_async(sd_bus_message *call, const char *action, const char *const *details,
                            PolkitRegistry **registry, sd_bus_error *error);
PolkitRegistry *polkit_registry_free(PolkitRegistry *r);
