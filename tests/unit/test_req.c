/*  Unit tests of ccm_req, the asynchronous store requester, against a real
    ZeroMQ ROUTER "store" in an actor thread of this process. The actor
    answers as it is told (at once, in reverse, late, slowly, never, or
    only a resend) and counts what it saw: receipts, bodies sent twice
    byte for byte, the most requests it held unanswered at once.         */

#include "ccm_test.h"

#include "ccm_client.h"
#include "ccm_id.h"
#include "ccm_log.h"
#include "ccm_req.h"

#include <czmq.h>
#include <stdlib.h>

typedef enum {
    S_ECHO,        //  answers each request at once
    S_REVERSE,     //  holds `hold` requests, then answers them last first
    S_DROP_FIRST,  //  drops the first receipt of each request, answers a resend
    S_SILENT,      //  never answers
    S_SLOW,        //  answers the oldest held request every `delay_ms`
    S_LATE         //  answers each request `delay_ms` after it came
} s_mode_t;

typedef struct {
    char endpoint[64];
    s_mode_t mode;
    int hold;
    int delay_ms;
} s_server_cfg_t;

typedef struct {
    zmsg_t *msg;  //  the request, its routing id first
    int64_t at_ms;
} s_held_t;

typedef struct {
    int received, replied, max_held, same, differ;
} s_stats_t;

static void
s_answer (zsock_t *router, zmsg_t **msg_p, s_stats_t *stats)
{
    zmsg_t *msg = *msg_p;
    zframe_t *identity = zmsg_pop (msg);
    char *verb = zmsg_popstr (msg);
    char *text = zmsg_popstr (msg);
    cJSON *body = text ? cJSON_Parse (text) : NULL;
    cJSON *reply = cJSON_CreateObject ();
    cJSON_AddNumberToObject (reply, "v", 1);
    cJSON_AddStringToObject (reply, "id",
                             cJSON_GetStringValue (cJSON_GetObjectItem (body, "id"))
                                 ? cJSON_GetStringValue (cJSON_GetObjectItem (body, "id"))
                                 : "");
    cJSON *index = cJSON_GetObjectItem (body, "i");
    cJSON_AddNumberToObject (reply, "i", cJSON_IsNumber (index) ? index->valuedouble : -1);
    cJSON_AddStringToObject (reply, "verb", verb ? verb : "");
    bool refuse = cJSON_IsTrue (cJSON_GetObjectItem (body, "refuse"));
    if (refuse) {
        cJSON *error = cJSON_AddObjectToObject (reply, "error");
        cJSON_AddStringToObject (error, "message", "refused as asked");
    }
    char *out = cJSON_PrintUnformatted (reply);
    zmsg_t *answer = zmsg_new ();
    zmsg_append (answer, &identity);
    zmsg_addstr (answer, refuse ? "error" : "ok");
    zmsg_addstr (answer, out);
    zmsg_send (&answer, router);
    stats->replied++;
    free (out);
    cJSON_Delete (reply);
    cJSON_Delete (body);
    free (text);
    free (verb);
    zmsg_destroy (msg_p);
}

static void
s_server (zsock_t *pipe, void *arg)
{
    s_server_cfg_t *cfg = arg;
    zsock_t *router = zsock_new (ZMQ_ROUTER);
    zsock_set_linger (router, 0);
    int bound = zsock_bind (router, "%s", cfg->endpoint);
    zsock_signal (pipe, bound == 0 ? 0 : 1);
    s_stats_t stats = {0};
    zlistx_t *held = zlistx_new ();
    zhashx_t *seen = zhashx_new ();  //  id -> the first body received with it
    zhashx_set_destructor (seen, (zhashx_destructor_fn *) zstr_free);
    zpoller_t *poller = zpoller_new (pipe, router, NULL);
    int64_t last_reply_ms = ccm_mono_ms ();
    while (true) {
        zsock_t *which = zpoller_wait (poller, 5);
        if (which == pipe) {
            char *command = zstr_recv (pipe);
            bool stop = !command || streq (command, "$TERM");
            if (command && streq (command, "STATS"))
                zsock_send (pipe, "iiiii", stats.received, stats.replied, stats.max_held,
                            stats.same, stats.differ);
            zstr_free (&command);
            if (stop)
                break;
        }
        else if (which == router) {
            zmsg_t *msg = zmsg_recv (router);
            if (!msg)
                break;
            stats.received++;
            //  [routing id][verb][body]
            zframe_t *frame = zmsg_last (msg);
            char *text = zframe_strdup (frame);
            cJSON *body = cJSON_Parse (text);
            const char *id = cJSON_GetStringValue (cJSON_GetObjectItem (body, "id"));
            char *first = id ? zhashx_lookup (seen, id) : NULL;
            if (first && streq (first, text))
                stats.same++;
            else if (first)
                stats.differ++;
            else if (id)
                zhashx_insert (seen, id, strdup (text));
            cJSON_Delete (body);
            free (text);
            if (cfg->mode == S_ECHO || (cfg->mode == S_DROP_FIRST && first))
                s_answer (router, &msg, &stats);
            else if (cfg->mode == S_DROP_FIRST || cfg->mode == S_SILENT)
                zmsg_destroy (&msg);
            else {
                s_held_t *hold = calloc (1, sizeof *hold);
                hold->msg = msg;
                hold->at_ms = ccm_mono_ms ();
                zlistx_add_end (held, hold);
                if ((int) zlistx_size (held) > stats.max_held)
                    stats.max_held = (int) zlistx_size (held);
            }
            if (cfg->mode == S_REVERSE && (int) zlistx_size (held) >= cfg->hold) {
                s_held_t *hold;
                while ((hold = zlistx_last (held))) {
                    zlistx_detach_cur (held);
                    s_answer (router, &hold->msg, &stats);
                    free (hold);
                }
            }
        }
        else if (zpoller_terminated (poller))
            break;
        int64_t now = ccm_mono_ms ();
        if (cfg->mode == S_SLOW && zlistx_size (held) && now - last_reply_ms >= cfg->delay_ms) {
            s_held_t *hold = zlistx_detach (held, NULL);
            s_answer (router, &hold->msg, &stats);
            free (hold);
            last_reply_ms = now;
        }
        if (cfg->mode == S_LATE)
            for (s_held_t *hold = zlistx_first (held); hold; hold = zlistx_next (held))
                if (now - hold->at_ms >= cfg->delay_ms) {
                    zlistx_detach_cur (held);
                    s_answer (router, &hold->msg, &stats);
                    free (hold);
                }
    }
    s_held_t *hold;
    while ((hold = zlistx_detach (held, NULL))) {
        zmsg_destroy (&hold->msg);
        free (hold);
    }
    zlistx_destroy (&held);
    zhashx_destroy (&seen);
    zpoller_destroy (&poller);
    zsock_destroy (&router);
}

//  A store on a fresh inproc endpoint, behaving as mode says.
static zactor_t *
s_store_new (s_server_cfg_t *cfg, s_mode_t mode, int hold, int delay_ms)
{
    static int counter = 0;
    snprintf (cfg->endpoint, sizeof cfg->endpoint, "inproc://test-req-%d", ++counter);
    cfg->mode = mode;
    cfg->hold = hold;
    cfg->delay_ms = delay_ms;
    return zactor_new (s_server, cfg);
}

static s_stats_t
s_store_stats (zactor_t *store)
{
    s_stats_t stats = {0};
    zstr_send (store, "STATS");
    zsock_recv (store, "iiiii", &stats.received, &stats.replied, &stats.max_held, &stats.same,
                &stats.differ);
    return stats;
}

//  What the callbacks saw.
typedef struct {
    int calls;
    int rc[64];
    int index[64];   //  the "i" of each reply, in the order they came
    int arg_ok;      //  callbacks whose arg matched their reply's "i"
    bool had_reply;  //  a callback with a non-zero rc was given a reply
    ccm_req_t *req;  //  for the callbacks that send further requests
    int chain;       //  requests still to send from callbacks
} s_seen_t;

typedef struct {
    s_seen_t *seen;
    int i;
} s_call_t;

static void
s_done (void *arg, int rc, cJSON *reply)
{
    s_call_t *call = arg;
    s_seen_t *seen = call->seen;
    cJSON *index = cJSON_GetObjectItem (reply, "i");
    if (seen->calls < 64) {
        seen->rc[seen->calls] = rc;
        seen->index[seen->calls] = cJSON_IsNumber (index) ? index->valueint : -1;
    }
    if (cJSON_IsNumber (index) && index->valueint == call->i)
        seen->arg_ok++;
    if (rc != 0 && rc != CCM_EREPLY && reply)
        seen->had_reply = true;
    seen->calls++;
    free (call);
}

static int
s_send (ccm_req_t *req, s_seen_t *seen, int i, bool write)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddNumberToObject (body, "i", i);
    if (write)
        ccm_client_add_idem (body);
    s_call_t *call = calloc (1, sizeof *call);
    call->seen = seen;
    call->i = i;
    int rc = ccm_req_send (req, "task.get", &body, s_done, call);
    CHECK (body == NULL);  //  taken, whatever the outcome
    if (rc)
        free (call);
    return rc;
}

//  Ends the loop once *(int *) arg callbacks are in, or at the deadline.
typedef struct {
    s_seen_t *seen;
    int want;
    int64_t deadline_ms;
} s_until_t;

static int
s_until_timer (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop, (void) timer_id;
    s_until_t *until = arg;
    return until->seen->calls >= until->want || ccm_mono_ms () >= until->deadline_ms ? -1 : 0;
}

//  Turns loop until seen has want callbacks or timeout_ms passed.
static void
s_run (zloop_t *loop, s_seen_t *seen, int want, int timeout_ms)
{
    s_until_t until = {seen, want, ccm_mono_ms () + timeout_ms};
    int timer = zloop_timer (loop, 5, 0, s_until_timer, &until);
    zloop_start (loop);
    zloop_timer_end (loop, timer);
}

//  Replies that come in another order than the requests are matched by id.
static void
test_out_of_order (void)
{
    s_server_cfg_t cfg;
    zactor_t *store = s_store_new (&cfg, S_REVERSE, 5, 0);
    zloop_t *loop = zloop_new ();
    ccm_req_t *req = ccm_req_new (loop, cfg.endpoint, 5000, 0, 8);
    CHECK (req != NULL);
    s_seen_t seen = {0};
    for (int i = 0; i < 5; i++)
        CHECK (s_send (req, &seen, i, false) == 0);
    CHECK (ccm_req_pending (req) == 5);
    s_run (loop, &seen, 5, 5000);
    CHECK (seen.calls == 5);
    CHECK (seen.arg_ok == 5);  //  each callback got its own request's reply
    for (int i = 0; i < 5 && i < seen.calls; i++) {
        CHECK (seen.rc[i] == 0);
        CHECK (seen.index[i] == 4 - i);  //  answered last first
    }
    CHECK (ccm_req_pending (req) == 0);
    CHECK (ccm_req_heard_ms (req) > 0);
    ccm_req_destroy (&req);
    CHECK (req == NULL);
    s_stats_t stats = s_store_stats (store);
    CHECK (stats.received == 5);
    zloop_destroy (&loop);
    zactor_destroy (&store);
}

//  A request the store drops is sent again after the timeout, byte for byte
//  (so with its same idem), and its callback runs once.
static void
test_dropped_is_resent (void)
{
    s_server_cfg_t cfg;
    zactor_t *store = s_store_new (&cfg, S_DROP_FIRST, 0, 0);
    zloop_t *loop = zloop_new ();
    ccm_req_t *req = ccm_req_new (loop, cfg.endpoint, 200, 3, 4);
    s_seen_t seen = {0};
    int64_t start = ccm_mono_ms ();
    CHECK (s_send (req, &seen, 7, true) == 0);
    CHECK (s_send (req, &seen, 8, true) == 0);
    s_run (loop, &seen, 2, 5000);
    CHECK (seen.calls == 2);
    CHECK (seen.rc[0] == 0 && seen.rc[1] == 0);
    CHECK (seen.arg_ok == 2);
    CHECK (ccm_mono_ms () - start >= 200);  //  not before the timeout
    //  Nothing more comes: each was answered once.
    s_run (loop, &seen, 3, 600);
    CHECK (seen.calls == 2);
    s_stats_t stats = s_store_stats (store);
    CHECK (stats.received == 4);
    CHECK (stats.same == 2);  //  each resend was the first body again
    CHECK (stats.differ == 0);
    CHECK (stats.replied == 2);
    ccm_req_destroy (&req);
    zloop_destroy (&loop);
    zactor_destroy (&store);
}

//  A store that never answers: after retries resends the request is given
//  up with CCM_ETIMEOUT, and a reply that comes later is not a second call.
static void
test_retries_exhausted (void)
{
    s_server_cfg_t cfg;
    zactor_t *store = s_store_new (&cfg, S_SILENT, 0, 0);
    zloop_t *loop = zloop_new ();
    ccm_req_t *req = ccm_req_new (loop, cfg.endpoint, 100, 2, 4);
    s_seen_t seen = {0};
    int64_t start = ccm_mono_ms ();
    CHECK (s_send (req, &seen, 1, true) == 0);
    s_run (loop, &seen, 1, 5000);
    CHECK (seen.calls == 1);
    CHECK (seen.rc[0] == CCM_ETIMEOUT);
    CHECK (!seen.had_reply);
    CHECK (ccm_mono_ms () - start >= 300);  //  three sends, each waited out
    CHECK (ccm_req_pending (req) == 0);
    s_stats_t stats = s_store_stats (store);
    CHECK (stats.received == 3);  //  the first send and two retries
    CHECK (stats.same == 2);
    ccm_req_destroy (&req);
    zloop_destroy (&loop);
    zactor_destroy (&store);

    //  A late answer (after the request was given up) is skipped.
    store = s_store_new (&cfg, S_LATE, 0, 400);
    loop = zloop_new ();
    req = ccm_req_new (loop, cfg.endpoint, 100, 0, 4);
    seen = (s_seen_t){0};
    CHECK (s_send (req, &seen, 2, false) == 0);
    s_run (loop, &seen, 1, 5000);
    CHECK (seen.calls == 1);
    CHECK (seen.rc[0] == CCM_ETIMEOUT);
    s_run (loop, &seen, 2, 700);  //  the late reply comes meanwhile
    CHECK (seen.calls == 1);
    CHECK (s_store_stats (store).replied == 1);
    ccm_req_destroy (&req);
    zloop_destroy (&loop);
    zactor_destroy (&store);
}

//  The window bounds what is in flight: the store never holds more than
//  `window` requests unanswered, and it does get that many at once.
static void
test_window (void)
{
    s_server_cfg_t cfg;
    zactor_t *store = s_store_new (&cfg, S_SLOW, 0, 15);
    zloop_t *loop = zloop_new ();
    ccm_req_t *req = ccm_req_new (loop, cfg.endpoint, 5000, 0, 3);
    s_seen_t seen = {0};
    for (int i = 0; i < 12; i++)
        CHECK (s_send (req, &seen, i, true) == 0);
    CHECK (ccm_req_pending (req) == 12);
    s_run (loop, &seen, 12, 10000);
    CHECK (seen.calls == 12);
    for (int i = 0; i < 12 && i < seen.calls; i++)
        CHECK (seen.rc[i] == 0 && seen.index[i] == i);  //  in order: oldest first
    s_stats_t stats = s_store_stats (store);
    CHECK (stats.received == 12);
    CHECK (stats.max_held <= 3);
    CHECK (stats.max_held == 3);
    ccm_req_destroy (&req);
    zloop_destroy (&loop);
    zactor_destroy (&store);
}

//  Destroying the requester calls every pending callback, in flight and
//  queued, with CCM_ECLOSED and no reply.
static void
test_destroy_closes (void)
{
    s_server_cfg_t cfg;
    zactor_t *store = s_store_new (&cfg, S_SILENT, 0, 0);
    zloop_t *loop = zloop_new ();
    ccm_req_t *req = ccm_req_new (loop, cfg.endpoint, 5000, -1, 2);
    s_seen_t seen = {0};
    for (int i = 0; i < 4; i++)
        CHECK (s_send (req, &seen, i, true) == 0);
    s_run (loop, &seen, 1, 200);
    CHECK (seen.calls == 0);
    CHECK (ccm_req_pending (req) == 4);
    ccm_req_destroy (&req);
    CHECK (seen.calls == 4);
    for (int i = 0; i < 4; i++)
        CHECK (seen.rc[i] == CCM_ECLOSED);
    CHECK (!seen.had_reply);
    CHECK (s_store_stats (store).received == 2);  //  the window: two were sent
    ccm_req_destroy (&req);                       //  NULL: nothing
    zloop_destroy (&loop);
    zactor_destroy (&store);
}

//  A callback may send the next request; and a body that is no object is
//  refused without a callback.
static void
s_chain_done (void *arg, int rc, cJSON *reply)
{
    s_seen_t *seen = arg;
    cJSON *index = cJSON_GetObjectItem (reply, "i");
    if (seen->calls < 64) {
        seen->rc[seen->calls] = rc;
        seen->index[seen->calls] = cJSON_IsNumber (index) ? index->valueint : -1;
    }
    seen->calls++;
    if (rc == 0 && seen->chain > 0) {
        seen->chain--;
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddNumberToObject (body, "i", seen->calls);
        if (ccm_req_send (seen->req, "task.get", &body, s_chain_done, seen))
            seen->chain = -1000;
    }
}

static void
test_callback_sends (void)
{
    s_server_cfg_t cfg;
    zactor_t *store = s_store_new (&cfg, S_ECHO, 0, 0);
    zloop_t *loop = zloop_new ();
    ccm_req_t *req = ccm_req_new (loop, cfg.endpoint, 5000, 0, 1);
    s_seen_t seen = {.req = req, .chain = 40};
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddNumberToObject (body, "i", 0);
    CHECK (ccm_req_send (req, "task.get", &body, s_chain_done, &seen) == 0);
    s_run (loop, &seen, 41, 10000);
    CHECK (seen.calls == 41);
    CHECK (seen.chain == 0);
    bool ordered = true;
    for (int i = 0; i < 41 && i < 64; i++)
        ordered &= seen.rc[i] == 0 && seen.index[i] == i;
    CHECK (ordered);
    CHECK (ccm_req_pending (req) == 0);

    //  An error reply is CCM_EREPLY with the error body.
    s_seen_t refused = {0};
    body = cJSON_CreateObject ();
    cJSON_AddBoolToObject (body, "refuse", true);
    cJSON_AddNumberToObject (body, "i", 5);
    s_call_t *call = calloc (1, sizeof *call);
    call->seen = &refused;
    call->i = 5;
    CHECK (ccm_req_send (req, "task.add", &body, s_done, call) == 0);
    s_run (loop, &refused, 1, 5000);
    CHECK (refused.calls == 1 && refused.rc[0] == CCM_EREPLY && refused.arg_ok == 1);

    //  Refused at once: not an object, or not a verb. The body is freed.
    s_seen_t none = {0};
    cJSON *array = cJSON_CreateArray ();
    CHECK (ccm_req_send (req, "task.get", &array, s_chain_done, &none) == -1);
    CHECK (array == NULL);
    body = cJSON_CreateObject ();
    CHECK (ccm_req_send (req, "no verb!", &body, s_chain_done, &none) == -1);
    CHECK (body == NULL);
    CHECK (none.calls == 0);

    //  ccm_req_flush, outside the loop (shutdown), still reads the replies.
    s_seen_t flushed = {0};
    for (int i = 0; i < 3; i++)
        CHECK (s_send (req, &flushed, i, true) == 0);
    CHECK (ccm_req_flush (req, 5000) == 0);
    CHECK (flushed.calls == 3 && flushed.arg_ok == 3);
    ccm_req_destroy (&req);
    zloop_destroy (&loop);
    zactor_destroy (&store);
}

int
main (void)
{
    ccm_log_init ("test_req", CCM_LOG_ERROR);
    test_out_of_order ();
    test_dropped_is_resent ();
    test_retries_exhausted ();
    test_window ();
    test_destroy_closes ();
    test_callback_sends ();
    return CCM_TEST_DONE ();
}
