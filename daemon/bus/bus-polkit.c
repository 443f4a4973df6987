/* SPDX-License-Identifier: GPL-2.0-or-later */

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bus-polkit.h"
#include "log.h"
#include "macro.h"
#include "vfiomig1.h"

typedef enum QueryState {
        QUERY_PENDING,
        QUERY_ALLOWED,
        QUERY_DENIED,
        QUERY_FAILED,
} QueryState;

typedef struct PolkitQuery PolkitQuery;
struct PolkitQuery {
        PolkitRegistry *registry;
        PolkitQuery *next;
        sd_bus_message *call;   /* the method call waiting for the answer; re-dispatched on it */
        sd_bus_slot *slot;
        /* Frees the query once the re-dispatched call is finished, whatever its handler did: a
         * handler that fails validation the second time never comes back to collect the answer,
         * and the call (with every fd in it) would be kept forever. */
        sd_event_source *defer;
        char *action;
        char *sender;
        uid_t uid;
        QueryState state;
        sd_bus_error error;
};

struct PolkitRegistry {
        PolkitQuery *queries;
        unsigned n_queries;
};

static PolkitQuery *query_free(PolkitQuery *q) {
        if (!q)
                return NULL;
        if (q->registry) {
                for (PolkitQuery **p = &q->registry->queries; *p; p = &(*p)->next)
                        if (*p == q) {
                                *p = q->next;
                                q->registry->n_queries--;
                                break;
                        }
        }
        sd_bus_slot_unref(q->slot);
        sd_event_source_disable_unref(q->defer);
        sd_bus_message_unref(q->call);
        sd_bus_error_free(&q->error);
        free(q->action);
        free(q->sender);
        free(q);
        return NULL;
}

PolkitRegistry *polkit_registry_free(PolkitRegistry *r) {
        if (!r)
                return NULL;
        while (r->queries)
                query_free(r->queries);
        free(r);
        return NULL;
}

static bool polkit_absent(const sd_bus_error *e) {
        return sd_bus_error_has_names(e, SD_BUS_ERROR_SERVICE_UNKNOWN, SD_BUS_ERROR_NAME_HAS_NO_OWNER);
}

static int on_call_finished(sd_event_source *s, void *userdata) {
        query_free(userdata);
        return 0;
}

static int on_check_authorization(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        PolkitQuery *q = userdata;
        const sd_bus_error *e = sd_bus_message_get_error(reply);
        sd_bus *bus = sd_bus_message_get_bus(q->call);
        int authorized, challenge, r;

        q->slot = sd_bus_slot_unref(q->slot);

        if (e) {
                if (polkit_absent(e)) {
                        /* No polkit on this bus: non-root callers cannot be authorized. */
                        q->state = QUERY_DENIED;
                        (void) sd_bus_error_setf(&q->error, SD_BUS_ERROR_ACCESS_DENIED,
                                                 "Not authorized to perform %s: polkit is not running, so only root may",
                                                 q->action);
                } else {
                        log_warning("polkit CheckAuthorization failed: %s", e->message ?: e->name);
                        q->state = QUERY_FAILED;
                        (void) sd_bus_error_copy(&q->error, e);
                }
        } else {
                r = sd_bus_message_enter_container(reply, 'r', "bba{ss}");
                if (r >= 0)
                        r = sd_bus_message_read(reply, "bb", &authorized, &challenge);
                if (r < 0) {
                        q->state = QUERY_FAILED;
                        (void) sd_bus_error_setf(&q->error, SD_BUS_ERROR_FAILED,
                                                 "Malformed polkit reply: %s", strerror(-r));
                } else if (authorized)
                        q->state = QUERY_ALLOWED;
                else {
                        q->state = QUERY_DENIED;
                        (void) sd_bus_error_setf(&q->error, SD_BUS_ERROR_ACCESS_DENIED,
                                                 challenge ? "Not authorized to perform %s: interactive "
                                                             "authentication is required"
                                                           : "Not authorized to perform %s",
                                                 q->action);
                }
        }

        /* Dispatch the original call again: its handler finds this answer. The bus dispatches
         * every queued message before an idle source runs, so the answer is there for it; if
         * the handler is gone, failed, or asked something else, the defer source frees the
         * query all the same (a handler dispatched later still would just ask polkit again). */
        r = sd_event_add_defer(sd_bus_get_event(bus), &q->defer, on_call_finished, q);
        if (r >= 0)
                r = sd_event_source_set_priority(q->defer, SD_EVENT_PRIORITY_IDLE);
        if (r >= 0)
                r = sd_event_source_set_enabled(q->defer, SD_EVENT_ONESHOT);
        if (r >= 0)
                (void) sd_event_source_set_description(q->defer, "polkit-query-done");
        if (r >= 0)
                r = sd_bus_message_rewind(q->call, true);
        if (r >= 0)
                r = sd_bus_enqueue_for_read(bus, q->call);
        if (r < 0) {
                log_error_errno(r, "Failed to re-dispatch a call after authorization: %m");
                (void) sd_bus_reply_method_errorf(q->call, SD_BUS_ERROR_FAILED,
                                                  "Internal error after authorization");
                query_free(q);
        }
        return 0;
}

/* Pending queries hold their call, and so every fd in it (up to the bus's per-message limit):
 * a caller may keep as many as it likes waiting on polkit, so they are capped per connection,
 * per user (who may open many connections) and in total. */
static int check_caps(PolkitRegistry *registry, const char *sender, uid_t uid, sd_bus_error *error) {
        unsigned by_sender = 0, by_uid = 0;

        for (PolkitQuery *q = registry->queries; q; q = q->next) {
                by_sender += streq(q->sender, sender);
                by_uid += q->uid == uid;
        }
        if (by_sender >= POLKIT_QUERIES_PER_SENDER)
                return sd_bus_error_setf(error, VFIOMIG_ERROR_LIMIT_EXCEEDED,
                                         "Too many calls pending authorization on this connection (at most %u): "
                                         "wait for their replies", POLKIT_QUERIES_PER_SENDER);
        if (by_uid >= POLKIT_QUERIES_PER_UID)
                return sd_bus_error_setf(error, VFIOMIG_ERROR_LIMIT_EXCEEDED,
                                         "Too many calls pending authorization for user %u (at most %u): wait for "
                                         "their replies", (unsigned) uid, POLKIT_QUERIES_PER_UID);
        if (registry->n_queries >= POLKIT_QUERIES_MAX)
                return sd_bus_error_setf(error, VFIOMIG_ERROR_LIMIT_EXCEEDED,
                                         "Too many calls pending authorization (at most %u in all): try again later",
                                         POLKIT_QUERIES_MAX);
        return 0;
}

static int start_query(sd_bus_message *call, const char *action, const char *const *details, uid_t uid,
                       PolkitRegistry *registry) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *pk = NULL;
        sd_bus *bus = sd_bus_message_get_bus(call);
        const char *sender = sd_bus_message_get_sender(call);
        bool interactive = sd_bus_message_get_allow_interactive_authorization(call) > 0;
        PolkitQuery *q;
        int r;

        if (!sender || !sd_bus_get_event(bus))
                return -EINVAL;
        r = sd_bus_message_new_method_call(bus, &pk, "org.freedesktop.PolicyKit1",
                                           "/org/freedesktop/PolicyKit1/Authority",
                                           "org.freedesktop.PolicyKit1.Authority", "CheckAuthorization");
        if (r < 0)
                return r;
        r = sd_bus_message_append(pk, "(sa{sv})s", "system-bus-name", 1, "name", "s", sender, action);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(pk, 'a', "{ss}");
        if (r < 0)
                return r;
        for (const char *const *d = details; d && d[0] && d[1]; d += 2) {
                r = sd_bus_message_append(pk, "{ss}", d[0], d[1]);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(pk);
        if (r < 0)
                return r;
        /* flag 1 = AllowUserInteraction, when the caller said it can answer a prompt */
        r = sd_bus_message_append(pk, "us", (uint32_t) interactive, NULL);
        if (r < 0)
                return r;

        q = new0(PolkitQuery, 1);
        if (!q)
                return -ENOMEM;
        q->action = strdup(action);
        q->sender = strdup(sender);
        if (!q->action || !q->sender) {
                query_free(q);
                return -ENOMEM;
        }
        q->call = sd_bus_message_ref(call);
        q->uid = uid;
        q->state = QUERY_PENDING;
        q->error = SD_BUS_ERROR_NULL;
        q->registry = registry;
        q->next = registry->queries;
        registry->queries = q;
        registry->n_queries++;

        /* A prompt waits for a human, but not forever: the query holds a slot of the caps. */
        r = sd_bus_call_async(bus, &q->slot, pk, on_check_authorization, q,
                              interactive ? POLKIT_INTERACTIVE_TIMEOUT_USEC : POLKIT_TIMEOUT_USEC);
        if (r < 0) {
                query_free(q);
                return r;
        }
        return 0;
}

int bus_verify_polkit_async(sd_bus_message *call, const char *action, const char *const *details,
                            PolkitRegistry **registry, sd_bus_error *error) {
        _cleanup_(sd_bus_creds_unrefp) sd_bus_creds *creds = NULL;
        uid_t euid;
        int r;

        r = sd_bus_query_sender_creds(call, SD_BUS_CREDS_EUID, &creds);
        if (r >= 0)
                r = sd_bus_creds_get_euid(creds, &euid);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Failed to identify the caller: %s", strerror(-r));
        /* Root, and the daemon's own user (who could take over the daemon anyway; this is what lets
         * an unprivileged user run the whole product on simulated devices), need nobody's leave. */
        if (euid == 0 || euid == geteuid())
                return 1;

        if (!*registry) {
                *registry = new0(PolkitRegistry, 1);
                if (!*registry)
                        return -ENOMEM;
        }

        for (PolkitQuery *q = (*registry)->queries; q; q = q->next) {
                if (q->call != call || !streq(q->action, action))
                        continue;
                if (q->state == QUERY_PENDING)
                        return 0;
                r = q->state == QUERY_ALLOWED ? 1 : -EACCES;
                if (r < 0)
                        sd_bus_error_move(error, &q->error);
                query_free(q);
                return r;
        }

        r = check_caps(*registry, sd_bus_message_get_sender(call), euid, error);
        if (r < 0)
                return r;
        r = start_query(call, action, details, euid, *registry);
        if (r < 0)
                return sd_bus_error_set_errnof(error, r, "Failed to ask polkit: %s", strerror(-r));
        return 0;
}
