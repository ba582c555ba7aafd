/*  ccm_req: asynchronous Lazy Pirate requests on a service's zloop.       */

#include "ccm_req.h"

#include "ccm_bus.h"
#include "ccm_id.h"
#include "ccm_log.h"
#include "ccm_msg.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    char id[24];
    char *verb;
    char *text;  //  the body as sent, with its id (and so its idem)
    ccm_req_fn *fn;
    void *arg;
    int tries;        //  sends so far
    int64_t sent_ms;  //  last send, 0 while queued
} s_item_t;

struct _ccm_req_t {
    zloop_t *loop;  //  borrowed
    char *endpoint;
    zsock_t *sock;
    int timer;
    int timeout_ms;
    int retries;
    size_t window;
    zlistx_t *queued;    //  s_item_t, not sent yet, in order
    zlistx_t *inflight;  //  s_item_t, sent, in the order first sent
    uint64_t counter;
    int64_t heard_ms;
    bool closing;  //  being destroyed: nothing more is taken
};

static int s_readable (zloop_t *loop, zsock_t *reader, void *arg);

static void
s_item_destroy (s_item_t **item_p)
{
    if (item_p && *item_p) {
        free ((*item_p)->verb);
        free ((*item_p)->text);
        free (*item_p);
        *item_p = NULL;
    }
}

static int
s_send (ccm_req_t *self, s_item_t *item)
{
    item->tries++;
    item->sent_ms = ccm_mono_ms ();
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, item->verb);
    zmsg_addmem (msg, item->text, strlen (item->text));
    //  A full pipe (the store away) is no error: the resend timer covers it.
    if (!self->sock || zmsg_send (&msg, self->sock)) {
        zmsg_destroy (&msg);
        return -1;
    }
    return 0;
}

//  Sends queued requests while the window has room.
static void
s_pump (ccm_req_t *self)
{
    while (zlistx_size (self->inflight) < self->window && zlistx_size (self->queued)) {
        s_item_t *item = zlistx_detach (self->queued, NULL);
        zlistx_add_end (self->inflight, item);
        s_send (self, item);
    }
}

//  Calls the item's callback once, then frees it (it is in no list now).
static void
s_finish (s_item_t *item, int rc, cJSON *reply)
{
    if (item->fn)
        item->fn (item->arg, rc, reply);
    s_item_destroy (&item);
}

//  Handles one reply; returns 0, or -1 if the message was not one.
static void
s_reply (ccm_req_t *self, zmsg_t *msg)
{
    zframe_t *status = zmsg_pop (msg);
    zframe_t *frame = zmsg_pop (msg);
    cJSON *body =
        frame ? cJSON_ParseWithLength ((const char *) zframe_data (frame), zframe_size (frame))
              : NULL;
    bool ok = status && zframe_streq (status, "ok");
    bool error = status && zframe_streq (status, "error");
    const char *id = cJSON_GetStringValue (cJSON_GetObjectItemCaseSensitive (body, "id"));
    s_item_t *item = NULL;
    if ((ok || error) && id)
        for (item = zlistx_first (self->inflight); item; item = zlistx_next (self->inflight))
            if (strcmp (item->id, id) == 0) {
                zlistx_detach_cur (self->inflight);
                break;
            }
    if (ok || error)
        self->heard_ms = ccm_mono_ms ();
    //  Anything else is a late answer to a request already given up (or not
    //  a reply at all): skipped.
    if (item)
        s_finish (item, ok ? 0 : CCM_EREPLY, body);
    cJSON_Delete (body);
    zframe_destroy (&frame);
    zframe_destroy (&status);
}

static void
s_drain (ccm_req_t *self)
{
    while (self->sock && (zsock_events (self->sock) & ZMQ_POLLIN)) {
        zmsg_t *msg = zmsg_recv (self->sock);
        if (!msg)
            break;
        s_reply (self, msg);
        zmsg_destroy (&msg);
    }
    s_pump (self);
}

static int
s_readable (zloop_t *loop, zsock_t *reader, void *arg)
{
    (void) loop, (void) reader;
    s_drain ((ccm_req_t *) arg);
    return 0;
}

//  Lazy Pirate: a request unanswered past its timeout closes the socket
//  (dropping what it queued) and every request in flight goes again on a
//  fresh one, oldest first; one out of retries is given up.
static void
s_check (ccm_req_t *self)
{
    int64_t now = ccm_mono_ms ();
    s_item_t *late = NULL;
    for (s_item_t *item = zlistx_first (self->inflight); item && !late;
         item = zlistx_next (self->inflight))
        if (now - item->sent_ms >= self->timeout_ms)
            late = item;
    if (!late)
        return;
    if (self->loop && self->sock)
        zloop_reader_end (self->loop, self->sock);
    zsock_destroy (&self->sock);
    self->sock = ccm_bus_dealer_connect (self->endpoint);
    if (self->loop && self->sock)
        zloop_reader (self->loop, self->sock, s_readable, self);
    zlistx_t *gone = zlistx_new ();
    zlistx_t *again = zlistx_new ();
    s_item_t *item;
    while ((item = zlistx_detach (self->inflight, NULL))) {
        bool overdue = now - item->sent_ms >= self->timeout_ms;
        if (overdue && self->retries >= 0 && item->tries > self->retries)
            zlistx_add_end (gone, item);
        else {
            //  Only its own lateness costs a request a try.
            if (!overdue)
                item->tries--;
            zlistx_add_end (again, item);
        }
    }
    zlistx_destroy (&self->inflight);
    self->inflight = again;
    //  One line per resend, naming the request that was late.
    if (zlistx_size (gone))
        ccm_warn ("no reply from the store in %d ms; %s given up after %d tries, %zu resent",
                  self->timeout_ms, ((s_item_t *) zlistx_first (gone))->verb, self->retries + 1,
                  zlistx_size (again));
    else
        ccm_warn ("no reply from the store in %d ms; resending %s%s", self->timeout_ms, late->verb,
                  zlistx_size (again) > 1 ? " and the rest in flight" : "");
    for (item = zlistx_first (self->inflight); item; item = zlistx_next (self->inflight))
        s_send (self, item);
    while ((item = zlistx_detach (gone, NULL)))
        s_finish (item, CCM_ETIMEOUT, NULL);
    zlistx_destroy (&gone);
    s_pump (self);
}

static int
s_timer (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop, (void) timer_id;
    s_check ((ccm_req_t *) arg);
    return 0;
}

ccm_req_t *
ccm_req_new (zloop_t *loop, const char *endpoint, int timeout_ms, int retries, int window)
{
    ccm_req_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->endpoint = strdup (endpoint);
    self->timeout_ms = timeout_ms > 10 ? timeout_ms : 10;
    self->retries = retries;
    self->window = window > 0 ? (size_t) window : 1;
    self->queued = zlistx_new ();
    self->inflight = zlistx_new ();
    self->sock = ccm_bus_dealer_connect (endpoint);
    if (!self->endpoint || !self->sock || !self->queued || !self->inflight) {
        ccm_req_destroy (&self);
        return NULL;
    }
    if (loop) {
        zloop_reader (loop, self->sock, s_readable, self);
        int tick = self->timeout_ms / 4 < 100 ? self->timeout_ms / 4 : 100;
        self->timer = zloop_timer (loop, (size_t) (tick > 5 ? tick : 5), 0, s_timer, self);
    }
    return self;
}

void
ccm_req_destroy (ccm_req_t **self_p)
{
    if (self_p && *self_p) {
        ccm_req_t *self = *self_p;
        self->closing = true;
        if (self->loop) {
            if (self->timer)
                zloop_timer_end (self->loop, self->timer);
            if (self->sock)
                zloop_reader_end (self->loop, self->sock);
        }
        zlistx_t *lists[] = {self->inflight, self->queued};
        for (int i = 0; i < 2; i++) {
            s_item_t *item;
            while (lists[i] && (item = zlistx_detach (lists[i], NULL)))
                s_finish (item, CCM_ECLOSED, NULL);
            zlistx_destroy (&lists[i]);
        }
        zsock_destroy (&self->sock);
        free (self->endpoint);
        free (self);
        *self_p = NULL;
    }
}

int
ccm_req_send (ccm_req_t *self, const char *verb, cJSON **body_p, ccm_req_fn *fn, void *arg)
{
    cJSON *body = body_p ? *body_p : NULL;
    if (body_p)
        *body_p = NULL;
    if (self->closing || !cJSON_IsObject (body) || !verb || !ccm_verb_valid (verb, strlen (verb))) {
        cJSON_Delete (body);
        return -1;
    }
    s_item_t *item = calloc (1, sizeof *item);
    snprintf (item->id, sizeof item->id, "q%llu", (unsigned long long) ++self->counter);
    cJSON_DeleteItemFromObjectCaseSensitive (body, "v");
    cJSON_DeleteItemFromObjectCaseSensitive (body, "id");
    cJSON_AddNumberToObject (body, "v", CCM_PROTOCOL_VERSION);
    cJSON_AddStringToObject (body, "id", item->id);
    item->verb = strdup (verb);
    item->text = cJSON_PrintUnformatted (body);
    cJSON_Delete (body);
    item->fn = fn;
    item->arg = arg;
    if (!item->verb || !item->text) {
        s_item_destroy (&item);
        return -1;
    }
    zlistx_add_end (self->queued, item);
    s_pump (self);
    return 0;
}

size_t
ccm_req_pending (ccm_req_t *self)
{
    return zlistx_size (self->queued) + zlistx_size (self->inflight);
}

int64_t
ccm_req_heard_ms (ccm_req_t *self)
{
    return self->heard_ms;
}

size_t
ccm_req_flush (ccm_req_t *self, int timeout_ms)
{
    int64_t deadline = ccm_mono_ms () + timeout_ms;
    while (ccm_req_pending (self) && ccm_mono_ms () < deadline) {
        zmq_pollitem_t item = {self->sock ? zsock_resolve (self->sock) : NULL, 0, ZMQ_POLLIN, 0};
        int64_t left = deadline - ccm_mono_ms ();
        if (item.socket)
            zmq_poll (&item, 1, (long) (left < 50 ? left : 50));
        else
            zclock_sleep (50);
        s_drain (self);
        s_check (self);
    }
    return ccm_req_pending (self);
}
