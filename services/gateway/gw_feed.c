/*  gw_feed: the store's events, gapless, for the main thread.

    zguide's Clone pattern, as protocol.md asks of every subscriber: the SUB
    is connected first; every seq must be exactly last+1, and a gap (or a
    second of silence, in case the last PUB was the one dropped) is filled
    from events.since. Each event is enriched before it is handed over: the
    project of its task (filters by project need it), and for a small
    hook.added, its rows (one hook.list for a whole batch), so a browser's
    timeline needs no second round trip.                                   */

#include "gw_internal.h"

#include "ccm_bus.h"
#include "ccm_log.h"

#include <string.h>

#define S_CACHE_MAX 100000  //  task -> project entries before the cache starts over
#define S_BATCH_MAX 1000    //  events taken from the SUB at once
#define S_IDLE_MS   1000    //  silence after which the log is asked anyway
#define S_ROWS_SPAN 5000    //  most rows one hook.list of a batch may read

struct _gw_cache_t {
    pthread_mutex_t lock;
    zhashx_t *projects;  //  task id -> project id ("" for none)
};

gw_cache_t *
gw_cache_new (void)
{
    gw_cache_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    pthread_mutex_init (&self->lock, NULL);
    self->projects = zhashx_new ();
    zhashx_set_destructor (self->projects, (zhashx_destructor_fn *) zstr_free);
    zhashx_set_duplicator (self->projects, (zhashx_duplicator_fn *) strdup);
    return self;
}

void
gw_cache_destroy (gw_cache_t **self_p)
{
    if (self_p && *self_p) {
        gw_cache_t *self = *self_p;
        zhashx_destroy (&self->projects);
        pthread_mutex_destroy (&self->lock);
        free (self);
        *self_p = NULL;
    }
}

void
gw_cache_put (gw_cache_t *self, const char *task_id, const char *project_id)
{
    pthread_mutex_lock (&self->lock);
    if (zhashx_size (self->projects) >= S_CACHE_MAX)
        zhashx_purge (self->projects);
    zhashx_update (self->projects, task_id, (void *) (project_id ? project_id : ""));
    pthread_mutex_unlock (&self->lock);
}

int
gw_cache_project (gw_cache_t *self, ccm_client_t *store, const char *task_id, char *out, size_t len)
{
    pthread_mutex_lock (&self->lock);
    const char *known = zhashx_lookup (self->projects, task_id);
    if (known)
        snprintf (out, len, "%s", known);
    pthread_mutex_unlock (&self->lock);
    if (known)
        return 0;
    cJSON *body = cJSON_CreateObject (), *reply = NULL;
    cJSON_AddStringToObject (body, "task", task_id);
    int rc = ccm_client_call (store, "task.get", body, &reply);
    cJSON_Delete (body);
    out[0] = 0;
    if (rc == 0) {
        cJSON *project =
            cJSON_GetObjectItemCaseSensitive (cJSON_GetObjectItem (reply, "task"), "project_id");
        if (cJSON_IsString (project))
            snprintf (out, len, "%s", project->valuestring);
    }
    //  A task the store does not know has no project; remember that too.
    const char *code = rc == CCM_EREPLY ? cJSON_GetStringValue (
                           cJSON_GetObjectItem (cJSON_GetObjectItem (reply, "error"), "code"))
                                        : NULL;
    cJSON_Delete (reply);
    if (rc == 0 || (code && strcmp (code, "not_found") == 0)) {
        gw_cache_put (self, task_id, out);
        return 0;
    }
    return -1;
}

static int64_t
s_int (cJSON *obj, const char *key)
{
    cJSON *item = cJSON_GetObjectItemCaseSensitive (obj, key);
    return cJSON_IsNumber (item) ? (int64_t) item->valuedouble : -1;
}

//  Gives each small hook.added of events its rows, with one hook.list for
//  the whole id range when it is short, else one per event.
static void
s_add_hooks (ccm_client_t *store, cJSON *events)
{
    int64_t lo = INT64_MAX, hi = -1;
    cJSON *event;
    cJSON_ArrayForEach (event, events)
    {
        cJSON *data = cJSON_GetObjectItem (event, "data");
        int64_t count = s_int (data, "count"), first = s_int (data, "first_id");
        int64_t last = s_int (data, "last_id");
        if (!cJSON_IsString (cJSON_GetObjectItem (event, "topic"))
            || strcmp (cJSON_GetObjectItem (event, "topic")->valuestring, "hook.added") || count < 1
            || count > GW_HOOK_ROWS || first < 1 || last < first)
            continue;
        lo = first < lo ? first : lo;
        hi = last > hi ? last : hi;
    }
    if (hi < 0)
        return;
    bool one_call = hi - lo + 1 <= S_ROWS_SPAN;
    cJSON *rows = NULL, *reply = NULL;
    if (one_call) {
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddNumberToObject (body, "after_id", (double) (lo - 1));
        cJSON_AddNumberToObject (body, "limit", (double) (hi - lo + 1));
        if (ccm_client_call (store, "hook.list", body, &reply) == 0)
            rows = cJSON_GetObjectItem (reply, "hooks");
        cJSON_Delete (body);
    }
    cJSON_ArrayForEach (event, events)
    {
        cJSON *data = cJSON_GetObjectItem (event, "data");
        int64_t count = s_int (data, "count"), first = s_int (data, "first_id");
        int64_t last = s_int (data, "last_id");
        if (strcmp (cJSON_GetObjectItem (event, "topic")->valuestring, "hook.added") || count < 1
            || count > GW_HOOK_ROWS || first < 1 || last < first)
            continue;
        cJSON *mine = NULL, *own_reply = NULL;
        if (!one_call) {
            cJSON *body = cJSON_CreateObject ();
            cJSON_AddNumberToObject (body, "after_id", (double) (first - 1));
            cJSON_AddNumberToObject (body, "limit", (double) (last - first + 1));
            if (ccm_client_call (store, "hook.list", body, &own_reply) == 0)
                mine = cJSON_GetObjectItem (own_reply, "hooks");
            cJSON_Delete (body);
        }
        else
            mine = rows;
        if (!mine) {
            cJSON_Delete (own_reply);
            continue;
        }
        //  The rows of this event: its id range, and its task (ranges of
        //  different tasks' events of one request interleave).
        cJSON *task = cJSON_GetObjectItem (event, "task_id");
        cJSON *list = cJSON_AddArrayToObject (event, "hooks");
        cJSON *row;
        cJSON_ArrayForEach (row, mine)
        {
            int64_t id = s_int (row, "id");
            cJSON *row_task = cJSON_GetObjectItem (row, "task_id");
            bool same_task = cJSON_IsString (task)
                                 ? cJSON_IsString (row_task)
                                       && strcmp (task->valuestring, row_task->valuestring) == 0
                                 : !cJSON_IsString (row_task);
            if (id >= first && id <= last && same_task)
                cJSON_AddItemToArray (list, cJSON_Duplicate (row, true));
        }
        cJSON_Delete (own_reply);
    }
    cJSON_Delete (reply);
}

int
gw_enrich (gw_cache_t *cache, ccm_client_t *store, cJSON *events, gw_event_t ***out)
{
    int n = cJSON_GetArraySize (events), count = 0;
    *out = calloc ((size_t) (n ? n : 1), sizeof (gw_event_t *));
    if (!*out)
        return -1;
    s_add_hooks (store, events);
    cJSON *event;
    cJSON_ArrayForEach (event, events)
    {
        cJSON *task = cJSON_GetObjectItem (event, "task_id");
        cJSON *topic = cJSON_GetObjectItem (event, "topic");
        char project[80] = "";
        if (cJSON_IsString (task)) {
            //  A new task says its project: no store call for it, ever.
            cJSON *data = cJSON_GetObjectItem (event, "data");
            cJSON *pid = cJSON_GetObjectItem (data, "project_id");
            if (cJSON_IsString (topic) && strcmp (topic->valuestring, "task.created") == 0) {
                gw_cache_put (cache, task->valuestring,
                              cJSON_IsString (pid) ? pid->valuestring : "");
                snprintf (project, sizeof project, "%s",
                          cJSON_IsString (pid) ? pid->valuestring : "");
            }
            else if (gw_cache_project (cache, store, task->valuestring, project, sizeof project))
                ccm_warn ("event %lld: the project of task %.64s is unknown (store unavailable)",
                          (long long) s_int (event, "seq"), task->valuestring);
        }
        gw_event_t *push = gw_event_new (event, project);
        if (push)
            (*out)[count++] = push;
        else
            ccm_error ("event %lld: cannot be pushed (malformed)",
                       (long long) s_int (event, "seq"));
    }
    return count;
}

//  One page of events.since(seq) into *reply_p; returns 0 or the client's error.
static int
s_since (ccm_client_t *store, int64_t seq, cJSON **reply_p)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddNumberToObject (body, "seq", (double) seq);
    cJSON_AddNumberToObject (body, "limit", S_BATCH_MAX);
    int rc = ccm_client_call (store, "events.since", body, reply_p);
    cJSON_Delete (body);
    return rc;
}

//  Hands events (a JSON array, taken) to the main thread, enriched.
static void
s_hand_over (gw_t *self, ccm_client_t *store, cJSON *events)
{
    gw_mail_t *mail = calloc (1, sizeof *mail);
    if (!mail) {
        cJSON_Delete (events);
        return;
    }
    mail->kind = GW_MAIL_EVENTS;
    mail->nevents = gw_enrich (self->cache, store, events, &mail->events);
    cJSON_Delete (events);
    if (mail->nevents <= 0)
        gw_mail_destroy (&mail);
    else
        gw_mail_post (self, mail);
}

//  Reads the log from last until the head; returns the new last.
static int64_t
s_catch_up (gw_t *self, ccm_client_t *store, int64_t last)
{
    while (!self->stop) {
        cJSON *reply = NULL;
        if (s_since (store, last, &reply)) {
            cJSON_Delete (reply);
            break;
        }
        cJSON *events = cJSON_DetachItemFromObject (reply, "events");
        bool more = cJSON_IsTrue (cJSON_GetObjectItem (reply, "more"));
        cJSON_Delete (reply);
        int n = cJSON_GetArraySize (events);
        if (n > 0)
            last = s_int (cJSON_GetArrayItem (events, n - 1), "seq");
        if (n > 0)
            s_hand_over (self, store, events);
        else
            cJSON_Delete (events);
        if (!more)
            break;
    }
    return last;
}

static void *
s_feed (void *arg)
{
    gw_t *self = arg;
    ccm_config_t *config = self->config;
    zsock_t *sub = ccm_bus_sub_connect (ccm_config_str (config, "store.pub_endpoint"), "");
    //  One try per call: the feed has its own retry (the next event, or
    //  the idle catch-up), and must notice a stop within a second.
    int timeout = (int) ccm_config_int (config, "bus.timeout_ms");
    ccm_client_t *store = ccm_client_new (ccm_config_str (config, "store.endpoint"),
                                          timeout < 1000 ? timeout : 1000, 0);
    if (!sub || !store) {
        ccm_error ("feed: cannot connect to the store's sockets");
        zsock_destroy (&sub);
        ccm_client_destroy (&store);
        return NULL;
    }
    zsock_set_rcvhwm (sub, 100000);
    //  The SUB is connected first, then the head is read: nothing falls between.
    int64_t last = -1;
    while (!self->stop && last < 0) {
        cJSON *body = cJSON_CreateObject (), *reply = NULL;
        if (ccm_client_call (store, "ping", body, &reply) == 0)
            last = s_int (reply, "seq");
        cJSON_Delete (body);
        cJSON_Delete (reply);
        if (last < 0)
            ccm_warn ("feed: the store does not answer; trying again");
    }
    gw_mail_t *head = calloc (1, sizeof *head);
    if (head) {
        head->kind = GW_MAIL_HEAD;
        head->last_seq = last;
        gw_mail_post (self, head);
    }
    int64_t heard = zclock_mono ();
    zmq_pollitem_t item = {zsock_resolve (sub), 0, ZMQ_POLLIN, 0};
    while (!self->stop) {
        int rc = zmq_poll (&item, 1, 200);
        if (rc < 0 && errno != EINTR)
            break;
        if (rc <= 0) {
            if (zclock_mono () - heard >= S_IDLE_MS) {
                last = s_catch_up (self, store, last);
                heard = zclock_mono ();
            }
            continue;
        }
        heard = zclock_mono ();
        cJSON *batch = cJSON_CreateArray ();
        int taken = 0;
        while (taken < S_BATCH_MAX) {
            zmsg_t *msg = zmsg_recv_nowait (sub);
            if (!msg)
                break;
            taken++;
            zframe_t *topic = zmsg_first (msg), *seq_frame = zmsg_next (msg);
            zframe_t *body = zmsg_next (msg);
            char seq_text[24] = "";
            if (seq_frame && zframe_size (seq_frame) < sizeof seq_text)
                memcpy (seq_text, zframe_data (seq_frame), zframe_size (seq_frame));
            int64_t seq = strtoll (seq_text, NULL, 10);
            if (!topic || !body || seq <= 0) {
                ccm_warn ("feed: a malformed event was dropped");
                zmsg_destroy (&msg);
                continue;
            }
            if (seq <= last) {  //  already had it through a replay
                zmsg_destroy (&msg);
                continue;
            }
            if (seq != last + 1) {
                //  A gap: hand over what we have, then the log fills it.
                zmsg_destroy (&msg);
                if (cJSON_GetArraySize (batch) > 0) {
                    s_hand_over (self, store, batch);
                    batch = cJSON_CreateArray ();
                }
                last = s_catch_up (self, store, last);
                continue;
            }
            cJSON *event =
                cJSON_ParseWithLength ((const char *) zframe_data (body), zframe_size (body));
            zmsg_destroy (&msg);
            if (!cJSON_IsObject (event)) {
                cJSON_Delete (event);
                ccm_warn ("feed: event %lld is not JSON; reading it from the log", (long long) seq);
                last = s_catch_up (self, store, last);
                continue;
            }
            cJSON_AddItemToArray (batch, event);
            last = seq;
        }
        if (cJSON_GetArraySize (batch) > 0)
            s_hand_over (self, store, batch);
        else
            cJSON_Delete (batch);
    }
    zsock_destroy (&sub);
    ccm_client_destroy (&store);
    return NULL;
}

int
gw_feed_start (gw_t *self)
{
    if (pthread_create (&self->feed, NULL, s_feed, self))
        return -1;
    self->feed_started = true;
    return 0;
}
