/*  sync_push: one push round.

    1. sync.pending gives the next records, urgent first, each with the
       newest data of its queued rows (so per-record order always holds).
    2. They become PostgREST requests, table by table in the order rows
       refer to each other (systems, projects, contexts, tasks, results,
       events, reports): batched upserts
           POST /rest/v1/<table>?on_conflict=<key>
           Prefer: resolution=merge-duplicates,return=minimal
       of up to sync.batch rows with the same keys. Tables of one level go
       out in parallel (sync.parallel at most); the next level starts once
       they are answered.
    3. Each answer marks its rows (sync.mark): synced after a 2xx only;
       failed (retry_count, error_message) on a transient failure; parked
       on a permanent refusal. A refused batch of several rows is not
       parked whole: its rows go again one by one, so only the bad row is.

    Who writes a task on the hub: the system that runs it owns its status,
    the one that made it owns the rest. So a task made elsewhere and run
    here is sent as a PATCH of its run columns; one made here for another
    system is inserted once (ignore-duplicates) and afterwards only its
    cancellation is sent; one made here for here is upserted whole.
    user_id and created_by are never sent: the hub fills them with
    auth.uid(), and row-level security checks them.                      */

#include "sync_internal.h"

#include "ccm_log.h"

typedef enum { S_MERGE, S_IGNORE, S_PATCH } s_kind_t;

//  The tables pushed, in the order rows refer to each other, and the
//  columns each conflict is found by.
static const struct {
    const char *table;
    const char *key;
} s_tables[] = {
    {"systems", "id"},
    {"projects", "id"},
    {"contexts", "id"},
    {"tasks", "id"},
    {"task_results", "id"},
    {"task_events", "id"},
    {"supervisory_reports", "origin_system_id,id"},
};
#define S_LEVELS ((int) (sizeof s_tables / sizeof s_tables[0]))

//  What a task made elsewhere and run here may change on the hub.
static const char *const s_run_columns[] = {
    "status",       "status_reason", "attempts",  "started_at",
    "completed_at", "locked_at",     "locked_by", NULL};
static const char *const s_cancel_columns[] = {"status", "status_reason", "completed_at", NULL};

typedef struct {
    sync_round_t *round;
    int level;
    s_kind_t kind;
    char *signature;  //  the keys of its rows, in order
    cJSON *rows;      //  what is sent
    cJSON *items;     //  {table, record_id, upto, retry_count} for sync.mark
    char *patch_id;   //  for S_PATCH: the task id
} s_req_t;

struct _sync_round_t {
    sync_t *owner;
    zlist_t *todo[S_LEVELS];  //  s_req_t not yet sent, per level
    int level;
    int inflight;
    bool stop;  //  no further request is sent (offline, auth)
    bool full;  //  sync.pending returned a full page: more waits
    cJSON *synced;
    zlist_t *marks;  //  cJSON {outcome, error, items}: failed and parked groups
    int marking;     //  sync.mark requests not answered yet, at the end
    sync_verdict_t verdict;
    char why[512];
};

static void
s_req_destroy (s_req_t **req_p)
{
    if (req_p && *req_p) {
        s_req_t *req = *req_p;
        free (req->signature);
        free (req->patch_id);
        cJSON_Delete (req->rows);
        cJSON_Delete (req->items);
        free (req);
        *req_p = NULL;
    }
}

void
sync_round_destroy (sync_round_t **round_p)
{
    if (round_p && *round_p) {
        sync_round_t *round = *round_p;
        for (int i = 0; i < S_LEVELS; i++) {
            s_req_t *req;
            while (round->todo[i] && (req = (s_req_t *) zlist_pop (round->todo[i])))
                s_req_destroy (&req);
            zlist_destroy (&round->todo[i]);
        }
        cJSON *mark;
        while (round->marks && (mark = (cJSON *) zlist_pop (round->marks)))
            cJSON_Delete (mark);
        zlist_destroy (&round->marks);
        cJSON_Delete (round->synced);
        free (round);
        *round_p = NULL;
    }
}

static const char *
s_str (cJSON *obj, const char *key)
{
    cJSON *item = cJSON_GetObjectItemCaseSensitive (obj, key);
    return cJSON_IsString (item) ? item->valuestring : NULL;
}

static int
s_level (const char *table)
{
    for (int i = 0; i < S_LEVELS; i++)
        if (!strcmp (s_tables[i].table, table))
            return i;
    return -1;
}

//  The item as sync.mark takes it.
static cJSON *
s_mark_item (cJSON *item)
{
    cJSON *out = cJSON_CreateObject ();
    cJSON_AddStringToObject (out, "table", s_str (item, "table"));
    cJSON_AddStringToObject (out, "record_id", s_str (item, "record_id"));
    cJSON_AddNumberToObject (out, "upto", cJSON_GetObjectItem (item, "upto")->valuedouble);
    cJSON_AddNumberToObject (out, "retry_count",
                             cJSON_GetObjectItem (item, "retry_count")->valuedouble);
    return out;
}

static void
s_add_mark (sync_round_t *round, const char *outcome, const char *error, cJSON *items)
{
    cJSON *mark = cJSON_CreateObject ();
    cJSON_AddStringToObject (mark, "outcome", outcome);
    cJSON_AddStringToObject (mark, "error", error);
    cJSON_AddItemToObject (mark, "items", items);
    zlist_append (round->marks, mark);
}

static char *
s_suspect_key (cJSON *item)
{
    return zsys_sprintf ("%s\t%s", s_str (item, "table"), s_str (item, "record_id"));
}

//  Only the listed columns of data (a PATCH body).
static cJSON *
s_pick (cJSON *data, const char *const *columns)
{
    cJSON *out = cJSON_CreateObject ();
    for (const char *const *c = columns; *c; c++) {
        cJSON *value = cJSON_GetObjectItemCaseSensitive (data, *c);
        cJSON_AddItemToObject (out, *c,
                               value ? cJSON_Duplicate (value, true) : cJSON_CreateNull ());
    }
    return out;
}

//  Adds data (taken) as a row of a request of this level, kind and keys,
//  or of a new one; a suspect gets a request of its own.
static void
s_queue_row (sync_round_t *round, int level, s_kind_t kind, cJSON *data, cJSON *item, bool alone)
{
    sync_t *self = round->owner;
    char *signature = NULL;
    size_t len = 0;
    FILE *stream = open_memstream (&signature, &len);
    cJSON *key;
    cJSON_ArrayForEach (key, data) fprintf (stream, "%s,", key->string);
    fclose (stream);
    s_req_t *req = NULL;
    if (!alone && kind != S_PATCH)
        for (s_req_t *r = (s_req_t *) zlist_first (round->todo[level]); r;
             r = (s_req_t *) zlist_next (round->todo[level]))
            if (r->kind == kind && r->signature && !strcmp (r->signature, signature)
                && cJSON_GetArraySize (r->rows) < self->batch)
                req = r;
    if (req)
        free (signature);
    else {
        req = calloc (1, sizeof *req);
        req->round = round;
        req->level = level;
        req->kind = kind;
        //  A lone row gets no signature, so nothing joins it.
        req->signature = alone ? (free (signature), NULL) : signature;
        req->rows = cJSON_CreateArray ();
        req->items = cJSON_CreateArray ();
        zlist_append (round->todo[level], req);
    }
    if (kind == S_PATCH) {
        req->patch_id = strdup (s_str (item, "record_id"));
        cJSON_Delete (req->rows);
        req->rows = data;
    }
    else
        cJSON_AddItemToArray (req->rows, data);
    cJSON_AddItemToArray (req->items, s_mark_item (item));
}

//  Turns one pending item into a row of a request (or a mark).
static void
s_plan_item (sync_round_t *round, cJSON *item)
{
    sync_t *self = round->owner;
    const char *table = s_str (item, "table");
    int level = s_level (table);
    cJSON *data = cJSON_GetObjectItemCaseSensitive (item, "data");
    if (level < 0 || !cJSON_IsObject (data)) {
        char error[200];
        snprintf (error, sizeof error, "table %.64s is not synced to the hub", table);
        cJSON *items = cJSON_CreateArray ();
        cJSON_AddItemToArray (items, s_mark_item (item));
        s_add_mark (round, "parked", error, items);
        return;
    }
    data = cJSON_Duplicate (data, true);
    cJSON_DeleteItemFromObjectCaseSensitive (data, "user_id");
    cJSON_DeleteItemFromObjectCaseSensitive (data, "created_by");
    char *key = s_suspect_key (item);
    bool alone = zhashx_lookup (self->suspects, key) != NULL;
    free (key);
    s_kind_t kind = S_MERGE;
    if (!strcmp (table, "projects")) {
        cJSON *system = cJSON_GetObjectItemCaseSensitive (data, "system_id");
        if (cJSON_IsNull (system) && *self->me)
            cJSON_ReplaceItemInObjectCaseSensitive (data, "system_id",
                                                    cJSON_CreateString (self->me));
    }
    else if (!strcmp (table, "supervisory_reports")) {
        if (!*self->me) {  //  not yet known: left for a later round
            cJSON_Delete (data);
            return;
        }
        cJSON_AddStringToObject (data, "origin_system_id", self->me);
    }
    else if (!strcmp (table, "tasks")) {
        const char *origin = s_str (data, "origin_system_id");
        const char *target = s_str (data, "system_id");
        const char *status = s_str (data, "status");
        if (origin && *self->me && strcmp (origin, self->me) != 0) {
            //  Made elsewhere, run here: only its run.
            cJSON *patch = s_pick (data, s_run_columns);
            cJSON_Delete (data);
            s_queue_row (round, level, S_PATCH, patch, item, true);
            return;
        }
        if (!origin && *self->me)
            cJSON_ReplaceItemInObjectCaseSensitive (data, "origin_system_id",
                                                    cJSON_CreateString (self->me));
        if (target && *self->me && strcmp (target, self->me) != 0) {
            //  Made here, run elsewhere.
            const char *first_op = s_str (item, "first_op");
            if (first_op && !strcmp (first_op, "INSERT"))
                kind = S_IGNORE;
            else if (status && !strcmp (status, "cancelled")) {
                cJSON *patch = s_pick (data, s_cancel_columns);
                cJSON_Delete (data);
                s_queue_row (round, level, S_PATCH, patch, item, true);
                return;
            }
            else {
                //  Its runner's status is the hub's; this copy's is not news.
                cJSON_Delete (data);
                cJSON_AddItemToArray (round->synced, s_mark_item (item));
                return;
            }
        }
    }
    s_queue_row (round, level, kind, data, item, alone);
}

static void s_send_level (sync_round_t *round);

//  Every mark is answered: the round is over.
static void
s_end (sync_round_t *round)
{
    sync_t *self = round->owner;
    sync_verdict_t verdict = round->verdict;
    char why[512];
    snprintf (why, sizeof why, "%s", round->why);
    bool more = round->full || zhashx_size (self->suspects) > 0;
    self->round = NULL;
    sync_round_destroy (&round);
    if (verdict == SYNC_OK || verdict == SYNC_PERMANENT) {
        if (more)
            self->push_wanted = true;
        else
            self->pending = 0;
    }
    else if (verdict == SYNC_PARENT)
        verdict = SYNC_TRANSIENT;
    sync_after (self, verdict, why);
}

static void
s_marked (sync_round_t *round, int rc, cJSON *reply, bool synced)
{
    if (rc == CCM_ECLOSED)
        return;  //  stopping: the round is freed with the engine
    sync_t *self = round->owner;
    cJSON *marked = cJSON_GetObjectItemCaseSensitive (reply, "marked");
    if (sync_ok ("sync.mark", rc, reply) && synced && cJSON_IsNumber (marked))
        self->pushed += (uint64_t) marked->valuedouble;
    if (--round->marking == 0)
        s_end (round);
}

static void
s_synced_done (void *arg, int rc, cJSON *reply)
{
    s_marked ((sync_round_t *) arg, rc, reply, true);
}

static void
s_mark_done (void *arg, int rc, cJSON *reply)
{
    s_marked ((sync_round_t *) arg, rc, reply, false);
}

static void
s_finish (sync_round_t *round)
{
    sync_t *self = round->owner;
    //  Marks go to the store first: what is marked synced is never sent
    //  again. The round ends once they are answered (one held here, so it
    //  cannot end before they are all sent).
    round->marking = 1;
    if (cJSON_GetArraySize (round->synced) > 0) {
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "outcome", "synced");
        cJSON_AddItemToObject (body, "items", round->synced);
        round->synced = NULL;
        round->marking++;
        sync_write (self, "sync.mark", body, s_synced_done, round);
    }
    cJSON *mark;
    while ((mark = (cJSON *) zlist_pop (round->marks))) {
        if (!strcmp (s_str (mark, "outcome"), "parked")) {
            self->parked += (uint64_t) cJSON_GetArraySize (cJSON_GetObjectItem (mark, "items"));
            ccm_warn ("parked %d row(s): %s",
                      cJSON_GetArraySize (cJSON_GetObjectItem (mark, "items")),
                      s_str (mark, "error"));
        }
        round->marking++;
        sync_write (self, "sync.mark", mark, s_mark_done, round);
    }
    if (--round->marking == 0)
        s_end (round);
}

static void
s_worse (sync_round_t *round, sync_verdict_t verdict, const char *why)
{
    static const int rank[] = {[SYNC_OK] = 0,        [SYNC_PERMANENT] = 1, [SYNC_PARENT] = 2,
                               [SYNC_TRANSIENT] = 3, [SYNC_NET] = 4,       [SYNC_AUTH] = 5};
    if (rank[verdict] > rank[round->verdict]) {
        round->verdict = verdict;
        snprintf (round->why, sizeof round->why, "%s", why);
    }
}

static void
s_done (const sync_http_resp_t *resp, void *arg)
{
    s_req_t *req = (s_req_t *) arg;
    sync_round_t *round = req->round;
    sync_t *self = round->owner;
    round->inflight--;
    self->requests++;
    char why[512];
    sync_verdict_t verdict = sync_judge (resp, why, sizeof why);
    int count = cJSON_GetArraySize (req->items);
    cJSON *item;
    switch (verdict) {
        case SYNC_OK:
            cJSON_ArrayForEach (item, req->items)
            {
                char *key = s_suspect_key (item);
                zhashx_delete (self->suspects, key);
                free (key);
            }
            while (cJSON_GetArraySize (req->items) > 0)
                cJSON_AddItemToArray (round->synced, cJSON_DetachItemFromArray (req->items, 0));
            break;
        case SYNC_PERMANENT:
        case SYNC_PARENT:
            if (count > 1) {
                //  One bad row refuses the whole batch: each goes alone next.
                cJSON_ArrayForEach (item, req->items)
                {
                    char *key = s_suspect_key (item);
                    zhashx_update (self->suspects, key, (void *) 1);
                    free (key);
                }
                ccm_info ("a batch of %d %s rows was refused (%s): sending them one by one", count,
                          s_tables[req->level].table, why);
                if (verdict == SYNC_PARENT)
                    s_worse (round, verdict, why);
                break;
            }
            item = cJSON_GetArrayItem (req->items, 0);
            bool park =
                verdict == SYNC_PERMANENT
                || cJSON_GetObjectItem (item, "retry_count")->valuedouble + 1 >= self->max_retries;
            if (park) {
                char *key = s_suspect_key (item);
                zhashx_delete (self->suspects, key);
                free (key);
            }
            s_add_mark (round, park ? "parked" : "failed", why, req->items);
            req->items = NULL;
            if (!park)
                s_worse (round, verdict, why);
            break;
        case SYNC_AUTH:
            round->stop = true;
            s_worse (round, verdict, why);
            break;
        default:  //  NET, TRANSIENT: the rows wait, their retry counted
            round->stop = true;
            s_add_mark (round, "failed", why, req->items);
            req->items = NULL;
            s_worse (round, verdict, why);
            break;
    }
    s_req_destroy (&req);
    s_send_level (round);
}

//  Builds and starts one request. Returns 0 or -1.
static int
s_start (sync_round_t *round, s_req_t *req)
{
    sync_t *self = round->owner;
    char *url = NULL, *body = cJSON_PrintUnformatted (req->rows);
    const char *table = s_tables[req->level].table;
    struct curl_slist *headers;
    int rc = -1;
    if (req->kind == S_PATCH) {
        char *id = sync_escape (req->patch_id);
        if (id && asprintf (&url, "%s/rest/v1/%s?id=eq.%s", self->cred.url, table, id) < 0)
            url = NULL;
        free (id);
        headers = sync_headers (self, "Prefer: return=minimal");
    }
    else {
        if (asprintf (&url, "%s/rest/v1/%s?on_conflict=%s", self->cred.url, table,
                      s_tables[req->level].key)
            < 0)
            url = NULL;
        headers = sync_headers (self, req->kind == S_IGNORE
                                          ? "Prefer: resolution=ignore-duplicates,return=minimal"
                                          : "Prefer: resolution=merge-duplicates,return=minimal");
    }
    if (url && body)
        rc = sync_http_start (self->http, req->kind == S_PATCH ? "PATCH" : "POST", url, headers,
                              body, s_done, req);
    else
        curl_slist_free_all (headers);
    free (url);
    free (body);
    return rc;
}

//  Sends what the level allows; moves to the next level once one is
//  answered; finishes the round at the end.
static void
s_send_level (sync_round_t *round)
{
    while (round->level < S_LEVELS) {
        zlist_t *todo = round->todo[round->level];
        while (!round->stop && round->inflight < round->owner->parallel && zlist_size (todo)) {
            s_req_t *req = (s_req_t *) zlist_pop (todo);
            if (s_start (round, req) == 0)
                round->inflight++;
            else {
                ccm_error ("cannot start a request to the hub");
                s_req_destroy (&req);
                round->stop = true;
                s_worse (round, SYNC_TRANSIENT, "cannot start a request");
            }
        }
        if (round->inflight > 0)
            return;
        if (round->stop || zlist_size (todo) == 0)
            round->level++;
        if (round->stop)
            round->level = S_LEVELS;
    }
    s_finish (round);
}

static void
s_pending_done (void *arg, int rc, cJSON *reply)
{
    sync_t *self = (sync_t *) arg;
    if (rc == CCM_ECLOSED)
        return;
    if (!sync_ok ("sync.pending", rc, reply)) {
        self->phase = SYNC_IDLE;
        self->next_try_ms = zclock_mono () + self->backoff_base_ms;
        return;
    }
    cJSON *pending = cJSON_GetObjectItemCaseSensitive (reply, "pending");
    self->pending = cJSON_IsNumber (pending) ? (int64_t) pending->valuedouble : 0;
    cJSON *items = cJSON_GetObjectItemCaseSensitive (reply, "items");
    int count = cJSON_GetArraySize (items);
    if (count == 0) {
        zhashx_purge (self->suspects);
        self->phase = SYNC_IDLE;
        sync_idle (self);
        return;
    }
    sync_round_t *round = calloc (1, sizeof *round);
    round->owner = self;
    round->full = count >= self->push_limit;
    round->synced = cJSON_CreateArray ();
    round->marks = zlist_new ();
    for (int i = 0; i < S_LEVELS; i++)
        round->todo[i] = zlist_new ();
    cJSON *item;
    cJSON_ArrayForEach (item, items) s_plan_item (round, item);
    self->round = round;
    //  Offline or Queuing stays so until a request goes through.
    if (self->state == SYNC_ONLINE || self->state == SYNC_LOCAL_ONLY)
        sync_set_state (self, SYNC_SYNCING, "pushing queued changes");
    s_send_level (round);
}

void
sync_push_start (sync_t *self)
{
    int limit = self->batch * self->parallel;
    if (limit < 100)
        limit = 100;
    if (limit > 10000)
        limit = 10000;
    self->push_limit = limit;
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddNumberToObject (body, "limit", limit);
    self->phase = SYNC_PUSHING;
    sync_read (self, "sync.pending", body, s_pending_done, self);
}
