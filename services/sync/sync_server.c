/*  sync_server: ccm-sync's loop (zloop), its credentials and state.

    A tick every 100 ms decides what to do next, one thing at a time:
    refresh the token when it is about to expire, push while sync_queue
    holds rows (sync_push.c), pull every sync.pull_ms (sync_pull.c). Every
    HTTP request goes through curl multi on this same loop (sync_http.c)
    and every store request through a ccm_req on it, so nothing here ever
    waits for the hub or the store: each step goes on in the callback of
    the one before.

    A failure the hub may get over (no connection, 5xx, a garbled or cut
    response) waits sync.backoff_base_ms x 2^n, up to sync.backoff_max_ms,
    with jitter (half to all of it); the state goes Offline (no connection)
    or Queuing (the hub answers badly). Local work never waits for any of it:
    the store keeps queueing.                                              */

#include "sync.h"
#include "sync_internal.h"

#include "ccm_bus.h"
#include "ccm_id.h"
#include "ccm_log.h"
#include "ccm_notify.h"
#include "ccm_proc.h"

#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define S_TICK_MS      100
#define S_MAX_RESPONSE (64 * 1024 * 1024)
#define S_REFRESH_SKEW 30    //  seconds before expiry a token is refreshed
#define S_FIND_MS      1000  //  how often this system's id is looked for until known

static const char *const s_state_names[] = {"LocalOnly", "Online", "Offline", "Queuing", "Syncing"};

bool
sync_ok (const char *verb, int rc, cJSON *reply)
{
    if (rc == 0)
        return true;
    if (rc != CCM_ECLOSED)
        ccm_warn ("%s: %s", verb, ccm_client_strerror (rc, reply));
    return false;
}

static void
s_logged (void *arg, int rc, cJSON *reply)
{
    sync_ok ((const char *) arg, rc, reply);
}

void
sync_read (sync_t *self, const char *verb, cJSON *body, ccm_req_fn *fn, void *arg)
{
    if (!fn) {
        fn = s_logged;
        arg = (void *) verb;
    }
    if (ccm_req_send (self->store, verb, &body, fn, arg))
        fn (arg, CCM_EPROTO, NULL);
}

void
sync_write (sync_t *self, const char *verb, cJSON *body, ccm_req_fn *fn, void *arg)
{
    ccm_client_add_idem (body);
    sync_read (self, verb, body, fn, arg);
}

//  READY=1 once the first state is known and the store has it (the
//  router's WaitConnection reads it there).
static void
s_maybe_ready (sync_t *self)
{
    if (self->ready || !self->settled || self->state_writes > 0 || self->state_unsent)
        return;
    self->ready = true;
    ccm_info ("ready: state %s%s%s", s_state_names[self->state], *self->detail ? ": " : "",
              self->detail);
    ccm_notify ("READY=1");
}

static void
s_state_written (void *arg, int rc, cJSON *reply)
{
    sync_t *self = (sync_t *) arg;
    self->state_writes--;
    if (rc == CCM_ECLOSED)
        return;
    //  Not recorded: the tick sends the state in force again.
    self->state_unsent = !sync_ok ("sync.set_state", rc, reply);
    s_maybe_ready (self);
}

//  Records the state in force in the store (sync.set_state).
static void
s_publish (sync_t *self)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "state", s_state_names[self->state]);
    if (*self->detail)
        cJSON_AddStringToObject (body, "detail", self->detail);
    self->state_writes++;
    self->state_unsent = false;
    sync_write (self, "sync.set_state", body, s_state_written, self);
}

void
sync_set_state (sync_t *self, sync_state_t state, const char *detail)
{
    if (!detail)
        detail = "";
    if (state == self->state && !strcmp (detail, self->detail))
        return;
    bool changed = state != self->state;
    self->state = state;
    snprintf (self->detail, sizeof self->detail, "%s", detail);
    if (changed)
        ccm_info ("state %s%s%s", s_state_names[state], *detail ? ": " : "", detail);
    s_publish (self);
}

//  The first state is known (no hub, or what the hub's answer or silence
//  told): READY=1 once the store has it.
static void
s_settle (sync_t *self)
{
    self->settled = true;
    s_maybe_ready (self);
}

struct curl_slist *
sync_headers (sync_t *self, const char *extra)
{
    struct curl_slist *list = NULL;
    char *line = NULL;
    if (asprintf (&line, "apikey: %s", self->cred.anon_key) >= 0)
        list = curl_slist_append (list, line);
    free (line);
    line = NULL;
    if (asprintf (&line, "Authorization: Bearer %s", self->cred.access_token) >= 0)
        list = curl_slist_append (list, line);
    free (line);
    list = curl_slist_append (list, "Content-Type: application/json");
    list = curl_slist_append (list, "Accept: application/json");
    if (extra)
        list = curl_slist_append (list, extra);
    return list;
}

char *
sync_escape (const char *text)
{
    char *escaped = curl_easy_escape (NULL, text, 0);
    char *copy = escaped ? strdup (escaped) : NULL;
    curl_free (escaped);
    return copy;
}

//  Writes at most 160 bytes of text into out, control bytes as '?'.
static void
s_excerpt (const char *text, size_t len, char *out, size_t size)
{
    size_t n = len < 160 ? len : 160;
    if (n >= size)
        n = size - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (unsigned char) text[i] < 0x20 || (unsigned char) text[i] == 0x7f ? '?' : text[i];
    out[n] = '\0';
}

//  curl's error without the " after N ms" (or milliseconds) it may carry:
//  the same outage reads the same each time, so a steady Offline is one
//  state, not a new detail at every try.
static void
s_steady_error (const char *error, char *out, size_t size)
{
    snprintf (out, size, "%s", error);
    char *after = strstr (out, " after ");
    if (!after)
        return;
    char *digits = after + 7;
    size_t count = strspn (digits, "0123456789");
    const char *units[] = {" milliseconds", " ms"};
    for (int i = 0; count > 0 && i < 2; i++)
        if (strncmp (digits + count, units[i], strlen (units[i])) == 0) {
            char *rest = digits + count + strlen (units[i]);
            memmove (after, rest, strlen (rest) + 1);
            return;
        }
}

sync_verdict_t
sync_judge (const sync_http_resp_t *resp, char *why, size_t size)
{
    if (resp->result != CURLE_OK) {
        char error[CURL_ERROR_SIZE];
        switch (resp->result) {
            case CURLE_COULDNT_CONNECT:
            case CURLE_COULDNT_RESOLVE_HOST:
            case CURLE_COULDNT_RESOLVE_PROXY:
            case CURLE_OPERATION_TIMEDOUT:
            case CURLE_SEND_ERROR:
                s_steady_error (resp->error, error, sizeof error);
                snprintf (why, size, "cannot reach the hub: %s", error);
                return SYNC_NET;
            default:
                //  An answer came, but not a whole HTTP response: garbage, a
                //  cut body, HTTP/0.9, an oversized reply.
                snprintf (why, size, "bad HTTP response from the hub (curl %d): %s",
                          (int) resp->result, resp->error);
                return SYNC_TRANSIENT;
        }
    }
    long status = resp->status;
    if (status >= 200 && status < 300)
        return SYNC_OK;
    //  PostgREST's error body: {code, details, hint, message}.
    cJSON *body = cJSON_ParseWithLength (resp->body, resp->size);
    cJSON *code = cJSON_GetObjectItemCaseSensitive (body, "code");
    cJSON *message = cJSON_GetObjectItemCaseSensitive (body, "message");
    if (!cJSON_IsString (message))
        message = cJSON_GetObjectItemCaseSensitive (body, "error_description");
    if (!cJSON_IsString (message))
        message = cJSON_GetObjectItemCaseSensitive (body, "msg");
    const char *pg = cJSON_IsString (code) ? code->valuestring : "";
    char text[200];
    if (cJSON_IsString (message))
        s_excerpt (message->valuestring, strlen (message->valuestring), text, sizeof text);
    else
        s_excerpt (resp->body, resp->size, text, sizeof text);
    snprintf (why, size, "HTTP %ld%s%s: %s", status, *pg ? " " : "", pg,
              *text ? text : "(no body)");
    sync_verdict_t verdict;
    if (status == 401 && (!*pg || !strncmp (pg, "PGRST3", 6)))
        verdict = SYNC_AUTH;
    else if (status >= 500 || status == 408 || status == 429 || !strncmp (pg, "40", 2)
             || !strncmp (pg, "57", 2) || !strncmp (pg, "08", 2) || !strncmp (pg, "53", 2))
        verdict = SYNC_TRANSIENT;
    else if (!strcmp (pg, "23503"))
        verdict = SYNC_PARENT;
    else
        verdict = SYNC_PERMANENT;
    cJSON_Delete (body);
    return verdict;
}

//  ------------------------------------------------------------ credentials

//  Reads the credentials file again if it changed. Returns true if a hub
//  is configured.
static bool
s_load_cred (sync_t *self)
{
    struct stat st;
    int64_t mtime = stat (self->cred_path, &st) == 0
                        ? (int64_t) st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec
                        : -1;
    if (mtime == self->cred_mtime_ns)
        return self->have_cred;
    self->cred_mtime_ns = mtime;
    ccm_cred_clear (&self->cred);
    char why[600];
    int rc = ccm_cred_load (self->cred_path, &self->cred, why, sizeof why);
    bool had = self->have_cred;
    self->have_cred = rc == 0;
    if (rc < 0)
        ccm_error ("credentials: %s", why);
    if (self->have_cred && !had)
        ccm_info ("hub %s, user %s", self->cred.url,
                  self->cred.email ? self->cred.email : "(unknown)");
    if (self->have_cred) {
        //  A new login: whatever failed before may work now.
        self->auth_failures = 0;
        self->next_try_ms = 0;
        self->backoff_ms = 0;
        self->push_wanted = true;
    }
    return self->have_cred;
}

static void
s_refresh_done (const sync_http_resp_t *resp, void *arg)
{
    sync_t *self = (sync_t *) arg;
    self->phase = SYNC_IDLE;
    char why[512];
    sync_verdict_t verdict = sync_judge (resp, why, sizeof why);
    cJSON *json = verdict == SYNC_OK ? cJSON_ParseWithLength (resp->body, resp->size) : NULL;
    if (verdict == SYNC_OK && json && ccm_cred_take_tokens (&self->cred, json) == 0) {
        cJSON_Delete (json);
        if (ccm_cred_save (self->cred_path, &self->cred))
            ccm_error ("cannot save the refreshed token to %s: %s", self->cred_path,
                       strerror (errno));
        struct stat st;
        if (stat (self->cred_path, &st) == 0)
            self->cred_mtime_ns = (int64_t) st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        ccm_info ("token refreshed");
        self->next_try_ms = 0;
        self->push_wanted = true;
        if (self->retry_after_refresh)
            self->last_pull_ms = 0;
        self->retry_after_refresh = false;
        return;
    }
    cJSON_Delete (json);
    if (verdict == SYNC_OK)
        snprintf (why, sizeof why, "the token endpoint answered without tokens");
    if (verdict == SYNC_NET || verdict == SYNC_TRANSIENT) {
        sync_after (self, verdict, why);
        return;
    }
    //  The refresh token itself is refused: only a new login helps.
    char detail[600];
    snprintf (detail, sizeof detail, "token refresh refused (%s): run ccm sync login", why);
    ccm_error ("%s", detail);
    sync_set_state (self, SYNC_QUEUING, detail);
    self->backoff_ms = self->backoff_max_ms;
    self->next_try_ms = zclock_mono () + self->backoff_max_ms;
    s_settle (self);
}

static void
s_refresh (sync_t *self)
{
    char *url = NULL;
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "refresh_token", self->cred.refresh_token);
    char *text = cJSON_PrintUnformatted (body);
    cJSON_Delete (body);
    struct curl_slist *headers = NULL;
    char *line = NULL;
    if (asprintf (&line, "apikey: %s", self->cred.anon_key) >= 0)
        headers = curl_slist_append (headers, line);
    free (line);
    headers = curl_slist_append (headers, "Content-Type: application/json");
    if (text && asprintf (&url, "%s/auth/v1/token?grant_type=refresh_token", self->cred.url) >= 0
        && sync_http_start (self->http, "POST", url, headers, text, s_refresh_done, self) == 0)
        self->phase = SYNC_REFRESHING;
    else {
        ccm_error ("cannot start a token refresh");
        self->next_try_ms = zclock_mono () + self->backoff_max_ms;
    }
    free (url);
    if (text)
        memset (text, 0, strlen (text));
    free (text);
}

//  --------------------------------------------------------------- the flow

void
sync_after (sync_t *self, sync_verdict_t verdict, const char *why)
{
    self->phase = SYNC_IDLE;
    if (verdict == SYNC_OK || verdict == SYNC_PERMANENT) {
        self->backoff_ms = 0;
        self->auth_failures = 0;
        if (self->pending > 0)
            sync_set_state (self, SYNC_SYNCING, "pushing queued changes");
        else
            sync_set_state (self, SYNC_ONLINE, "");
        s_settle (self);
        return;
    }
    if (verdict == SYNC_AUTH) {
        //  An expired or refused JWT: refresh once, then retry. Twice in a
        //  row means the new token is refused too.
        if (++self->auth_failures <= 2) {
            ccm_info ("the hub refused the token (%s): refreshing it", why);
            self->retry_after_refresh = true;
            s_refresh (self);
            return;
        }
        sync_set_state (self, SYNC_QUEUING, why);
    }
    else
        sync_set_state (self, verdict == SYNC_NET ? SYNC_OFFLINE : SYNC_QUEUING, why);
    self->failures++;
    //  Exponential backoff with jitter: half to all of the doubled wait.
    int64_t wait = self->backoff_ms ? self->backoff_ms * 2 : self->backoff_base_ms;
    if (wait > self->backoff_max_ms)
        wait = self->backoff_max_ms;
    self->backoff_ms = wait;
    int64_t jittered = wait / 2 + (int64_t) (random () % (wait / 2 + 1));
    self->next_try_ms = zclock_mono () + jittered;
    ccm_warn ("%s; next try in %lld ms", why, (long long) jittered);
    s_settle (self);
}

static void
s_found_me (void *arg, int rc, cJSON *reply)
{
    sync_t *self = (sync_t *) arg;
    self->finding = false;
    self->found_ms = zclock_mono ();
    if (!sync_ok ("system.list", rc, reply))
        return;
    cJSON *system;
    cJSON_ArrayForEach (system, cJSON_GetObjectItemCaseSensitive (reply, "systems"))
    {
        cJSON *mid = cJSON_GetObjectItemCaseSensitive (system, "machine_id");
        cJSON *id = cJSON_GetObjectItemCaseSensitive (system, "id");
        if (cJSON_IsString (mid) && cJSON_IsString (id)
            && !strcmp (mid->valuestring, self->machine_id))
            snprintf (self->me, sizeof self->me, "%s", id->valuestring);
    }
    if (*self->me)
        ccm_info ("this system is %s", self->me);
}

//  Finds this system's id: sync.system_id, else the system registered with
//  this machine's id (as the executor computes it), asked of the store.
static void
s_find_me (sync_t *self)
{
    const char *configured = ccm_config_str (self->config, "sync.system_id");
    if (*configured) {
        snprintf (self->me, sizeof self->me, "%s", configured);
        return;
    }
    char machine_id[256] = "";
    const char *set = ccm_config_str (self->config, "executor.machine_id");
    if (*set)
        snprintf (machine_id, sizeof machine_id, "%s", set);
    else {
        FILE *file = fopen ("/etc/machine-id", "r");
        if (file && fgets (machine_id, sizeof machine_id, file))
            ccm_proc_chomp (machine_id);
        if (file)
            fclose (file);
        if (!*machine_id) {
            char host[200] = "localhost";
            const char *name = ccm_config_str (self->config, "executor.hostname");
            if (*name)
                snprintf (host, sizeof host, "%s", name);
            else
                gethostname (host, sizeof host);
            snprintf (machine_id, sizeof machine_id, "host-%.200s", host);
        }
    }
    snprintf (self->machine_id, sizeof self->machine_id, "%s", machine_id);
    self->finding = true;
    sync_read (self, "system.list", cJSON_CreateObject (), s_found_me, self);
}

void
sync_idle (sync_t *self)
{
    if (self->state == SYNC_LOCAL_ONLY || self->state == SYNC_SYNCING)
        sync_set_state (self, SYNC_ONLINE, "");
    int64_t now = zclock_mono ();
    if (now - self->last_pull_ms >= self->pull_ms) {
        self->last_pull_ms = now;
        sync_pull_start (self);
    }
}

static int
s_tick (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop, (void) timer_id;
    sync_t *self = (sync_t *) arg;
    if (zsys_interrupted)
        return -1;
    int64_t watchdog = ccm_notify_watchdog_ms ();
    if (watchdog && zclock_mono () - self->watchdog_ms >= watchdog / 3) {
        self->watchdog_ms = zclock_mono ();
        ccm_notify ("WATCHDOG=1");
    }
    //  A state the store did not record goes again (the router reads it there).
    if (self->state_unsent && self->state_writes == 0)
        s_publish (self);
    if (self->phase != SYNC_IDLE)
        return 0;
    if (!s_load_cred (self)) {
        sync_set_state (self, SYNC_LOCAL_ONLY, "no hub configured: ccm sync login");
        s_settle (self);
        return 0;
    }
    int64_t now = zclock_mono ();
    if (!*self->me && !self->finding && now - self->found_ms >= S_FIND_MS)
        s_find_me (self);
    if (self->finding)
        return 0;  //  who we are decides what is pushed, and how
    if (now < self->next_try_ms)
        return 0;
    if (self->cred.expires_at && (int64_t) time (NULL) >= self->cred.expires_at - S_REFRESH_SKEW) {
        s_refresh (self);
        return 0;
    }
    if (self->push_wanted || self->pending > 0) {
        self->push_wanted = false;
        sync_push_start (self);  //  with nothing pending, it goes on to sync_idle
        return 0;
    }
    sync_idle (self);
    return 0;
}

static int
s_event (zloop_t *loop, zsock_t *reader, void *arg)
{
    (void) loop;
    sync_t *self = (sync_t *) arg;
    //  Any committed change may have queued rows: drain what is there.
    zmsg_t *msg;
    while ((zsock_events (reader) & ZMQ_POLLIN) && (msg = zmsg_recv (reader)))
        zmsg_destroy (&msg);
    self->push_wanted = true;
    return 0;
}

sync_t *
sync_new (ccm_config_t *config)
{
    sync_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->config = config;
    self->state = SYNC_LOCAL_ONLY;
    snprintf (self->detail, sizeof self->detail, "starting");
    self->cred_path = strdup (ccm_config_str (config, "sync.credentials"));
    self->cred_mtime_ns = -2;
    self->batch = (int) ccm_config_int (config, "sync.batch");
    self->batch = self->batch < 1 ? 1 : self->batch > 10000 ? 10000 : self->batch;
    self->parallel = (int) ccm_config_int (config, "sync.parallel");
    self->parallel = self->parallel < 1 ? 1 : self->parallel > 64 ? 64 : self->parallel;
    self->max_retries = (int) ccm_config_int (config, "sync.max_retries");
    self->pull_ms = ccm_config_int (config, "sync.pull_ms");
    self->backoff_base_ms = ccm_config_int (config, "sync.backoff_base_ms");
    self->backoff_max_ms = ccm_config_int (config, "sync.backoff_max_ms");
    if (self->backoff_base_ms < 1)
        self->backoff_base_ms = 1;
    if (self->backoff_max_ms < self->backoff_base_ms)
        self->backoff_max_ms = self->backoff_base_ms;
    const char *skills = ccm_config_str (config, "sync.skills_dir");
    const char *home = getenv ("HOME");
    if (*skills)
        self->skills_dir = strdup (skills);
    else if (asprintf (&self->skills_dir, "%s/.claude/skills", home ? home : "/root") < 0)
        self->skills_dir = NULL;
    self->push_wanted = true;
    self->suspects = zhashx_new ();
    srandom ((unsigned) (getpid () ^ zclock_mono ()));
    curl_global_init (CURL_GLOBAL_DEFAULT);

    self->loop = zloop_new ();
    //  One request at a time, so in order (a cursor is never set back by a
    //  late resend), each given up after bus.retries resends, as before.
    self->store = self->loop ? ccm_req_new (self->loop, ccm_config_str (config, "store.endpoint"),
                                            (int) ccm_config_int (config, "bus.timeout_ms"),
                                            (int) ccm_config_int (config, "bus.retries"), 1)
                             : NULL;
    self->events = ccm_bus_sub_connect (ccm_config_str (config, "store.pub_endpoint"), "");
    self->http = self->loop ? sync_http_new (
                     self->loop, (long) ccm_config_int (config, "sync.timeout_ms"), S_MAX_RESPONSE)
                            : NULL;
    if (!self->store || !self->events || !self->http || !self->cred_path || !self->skills_dir) {
        ccm_error ("cannot start: %s", !self->http ? "libcurl" : "the store's sockets");
        sync_destroy (&self);
        return NULL;
    }
    zloop_reader (self->loop, self->events, s_event, self);
    zloop_timer (self->loop, S_TICK_MS, 0, s_tick, self);
    return self;
}

int
sync_run (sync_t *self)
{
    ccm_info ("started: credentials %s, batch %d, pull every %lld ms", self->cred_path, self->batch,
              (long long) self->pull_ms);
    zloop_start (self->loop);
    //  What the store has not answered yet (marks, the last state) gets a
    //  moment; an HTTP request a callback starts now is dropped.
    int64_t timeout = ccm_config_int (self->config, "bus.timeout_ms");
    ccm_req_flush (self->store, (int) (timeout < 2000 ? timeout : 2000));
    ccm_info ("stopping: %llu rows pushed, %llu parked, %llu rows pulled, %llu failures",
              (unsigned long long) self->pushed, (unsigned long long) self->parked,
              (unsigned long long) self->pulled, (unsigned long long) self->failures);
    return 0;
}

void
sync_destroy (sync_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    sync_t *self = *self_p;
    //  First: its callbacks (CCM_ECLOSED) still see the round and the pass.
    ccm_req_destroy (&self->store);
    sync_round_destroy (&self->round);
    sync_pull_destroy (&self->pull);
    sync_http_destroy (&self->http);
    zloop_destroy (&self->loop);
    zsock_destroy (&self->events);
    zhashx_destroy (&self->suspects);
    cJSON_Delete (self->meta);
    ccm_cred_clear (&self->cred);
    free (self->cred_path);
    free (self->skills_dir);
    free (self);
    *self_p = NULL;
    curl_global_cleanup ();
}
