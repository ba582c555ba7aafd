/*  gw_server: ccm-gateway's main thread, the libwebsockets loop.

    - HTTP and the judgement of a WebSocket upgrade are gw_http.c's.
    - Requests: size-limited, rate-limited, parsed; each goes to a worker
      (gw_work.c) and its reply comes back through the mailbox.
    - Events: the feed hands over gapless, enriched events; the last
      gateway.ring of them sit in a ring shared by every client. A client is
      a cursor (the last seq it was sent) and a filter, never a copy of the
      stream: it reads the ring, or pages of the store's log (events.since)
      while it is behind the ring. A live client more than
      gateway.queue_max matching events behind is sent "resync" and dropped,
      so one slow reader never holds up the others or grows the gateway.  */

#include "gateway.h"
#include "gw_internal.h"

#include "ccm_log.h"
#include "ccm_notify.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_INFLIGHT_MAX  32          //  requests of one connection in the workers
#define S_OUT_MAX       1024        //  replies and pushes queued for one connection
#define S_OUT_BYTES_MAX (16 << 20)  //  and their bytes
#define S_WRITES        64          //  frames written per writable callback
#define S_WALK          8192        //  ring entries one writable callback may skip
#define S_REFUSALS_MAX  1000        //  refused requests in a row before a close
#define S_TICK_US       (100 * LWS_US_PER_MS)

typedef enum { S_REPLAY, S_CATCHUP, S_LIVE } s_mode_t;

//  A reply or push waiting to be written, with LWS_PRE bytes before it.
typedef struct s_out_t {
    struct s_out_t *next;
    char *task;  //  a terminal push: a newer screen of the same task replaces it
    bool last;   //  close the connection once written (resync)
    size_t len;
    unsigned char *buf;
} s_out_t;

typedef struct {
    struct lws *wsi;
    uint64_t id;
    char key[24];
    char peer[64];
    //  requests
    char *rx;
    size_t rx_len;
    bool rx_active, rx_over, rx_binary;
    double tokens;
    int64_t tokens_ms;
    int refused;
    int inflight;
    //  replies and pushes
    s_out_t *out_head, *out_tail;
    size_t out_count, out_bytes;
    bool closing;
    bool kill;  //  close now (it kept sending what is refused)
    //  the subscription
    bool subscribed;
    uint32_t gen;
    gw_filter_t *filter;
    int64_t cursor;  //  the last seq sent (or skipped)
    s_mode_t mode;
    int64_t pending;  //  LIVE: matching events in the ring after cursor
    bool synced;
    gw_event_t **page;
    int npage, ipage;
    bool page_more, page_wait;
    int64_t page_head;
    int64_t retry_ms;  //  a failed page is asked again at this time
    //  terminal views: task -> "1" (control) or "0"
    zhashx_t *terms;
} s_conn_t;

typedef struct {
    gw_t gw;
    gw_auth_t *auth;
    char bind[256];
    int port;
    char web_root[PATH_MAX];
    size_t max_frame;
    double rate;
    int64_t queue_max;
    int sndbuf;
    zhashx_t *conns;  //  key -> s_conn_t
    uint64_t next_id;
    //  the ring
    gw_event_t **ring;
    int64_t cap, mask;
    int64_t head;  //  the last seq in the ring; -1 until the feed starts
    int64_t lo;    //  the lowest seq present
    lws_sorted_usec_list_t tick;
    int64_t watchdog_ms, notified_ms;
} s_server_t;

static s_server_t s_srv;

//  ------------------------------------------------------------ output

static s_out_t *
s_out_new (const char *text, size_t len)
{
    s_out_t *out = calloc (1, sizeof *out);
    if (!out)
        return NULL;
    out->buf = malloc (LWS_PRE + len + 1);
    if (!out->buf) {
        free (out);
        return NULL;
    }
    memcpy (out->buf + LWS_PRE, text, len);
    out->buf[LWS_PRE + len] = 0;
    out->len = len;
    return out;
}

static void
s_out_destroy (s_out_t **out_p)
{
    if (*out_p) {
        free ((*out_p)->task);
        free ((*out_p)->buf);
        free (*out_p);
        *out_p = NULL;
    }
}

static void s_drop (s_conn_t *conn, const char *why);

//  Queues text (taken) for conn; at the front if first.
static void
s_send (s_conn_t *conn, char *text, const char *task, bool first)
{
    if (!text || conn->closing) {
        free (text);
        return;
    }
    s_out_t *out = s_out_new (text, strlen (text));
    free (text);
    if (!out)
        return;
    if (task) {
        //  Only the newest screen of a terminal matters.
        out->task = strdup (task);
        for (s_out_t **p = &conn->out_head; *p; p = &(*p)->next) {
            if ((*p)->task && strcmp ((*p)->task, task) == 0) {
                s_out_t *old = *p;
                *p = old->next;
                conn->out_count--;
                conn->out_bytes -= old->len;
                s_out_destroy (&old);
                break;
            }
        }
        conn->out_tail = NULL;
        for (s_out_t *p = conn->out_head; p; p = p->next)
            conn->out_tail = p;
    }
    if (first) {
        out->next = conn->out_head;
        conn->out_head = out;
        if (!conn->out_tail)
            conn->out_tail = out;
    }
    else {
        if (conn->out_tail)
            conn->out_tail->next = out;
        else
            conn->out_head = out;
        conn->out_tail = out;
    }
    conn->out_count++;
    conn->out_bytes += out->len;
    if (conn->out_count > S_OUT_MAX || conn->out_bytes > S_OUT_BYTES_MAX)
        s_drop (conn, "its replies and pushes were not read");
    else
        lws_callback_on_writable (conn->wsi);
}

static void
s_unsubscribe (s_conn_t *conn)
{
    conn->subscribed = false;
    conn->gen++;
    gw_filter_destroy (&conn->filter);
    for (int i = 0; i < conn->npage; i++)
        gw_event_destroy (&conn->page[i]);
    free (conn->page);
    conn->page = NULL;
    conn->npage = conn->ipage = 0;
    conn->page_wait = conn->page_more = false;
}

//  Tells conn to resync and closes it once that is written (or in 5 s).
static void
s_drop (s_conn_t *conn, const char *why)
{
    if (conn->closing)
        return;
    ccm_warn ("client %s (%s) dropped: %s", conn->key, conn->peer, why);
    //  What it had queued is dropped; the resync goes out alone.
    while (conn->out_head) {
        s_out_t *out = conn->out_head;
        conn->out_head = out->next;
        s_out_destroy (&out);
    }
    conn->out_tail = NULL;
    conn->out_count = conn->out_bytes = 0;
    cJSON *push = cJSON_CreateObject ();
    cJSON_AddStringToObject (push, "type", "resync");
    cJSON_AddStringToObject (push, "reason", why);
    cJSON_AddNumberToObject (push, "seq", (double) conn->cursor);
    char *text = cJSON_PrintUnformatted (push);
    cJSON_Delete (push);
    s_unsubscribe (conn);
    s_out_t *out = text ? s_out_new (text, strlen (text)) : NULL;
    free (text);
    if (out) {
        out->last = true;
        conn->out_head = conn->out_tail = out;
        conn->out_count = 1;
    }
    conn->closing = true;
    lws_set_timeout (conn->wsi, PENDING_TIMEOUT_USER_OK, 5);
    lws_callback_on_writable (conn->wsi);
}

//  ------------------------------------------------------------ the ring

static gw_event_t *
s_ring_get (int64_t seq)
{
    if (s_srv.head < 0 || seq < s_srv.lo || seq > s_srv.head)
        return NULL;
    return s_srv.ring[seq & s_srv.mask];
}

static void
s_request_page (s_conn_t *conn)
{
    if (conn->page_wait)
        return;
    gw_job_t *job = calloc (1, sizeof *job);
    if (!job)
        return;
    job->kind = GW_JOB_REPLAY;
    job->conn_id = conn->id;
    job->gen = conn->gen;
    job->seq = conn->cursor;
    //  What the store can filter itself, it does.
    if (conn->filter && conn->filter->task_id)
        job->task_filter = strdup (conn->filter->task_id);
    if (conn->filter && conn->filter->ntypes == 1)
        job->topic_filter = strdup (conn->filter->types[0]);
    conn->page_wait = true;
    gw_job_post (&s_srv.gw, job);
}

//  A client close enough to the head reads live: from now on, what it has
//  not been sent is counted, and too much of it drops the client.
static void
s_maybe_live (s_conn_t *conn)
{
    if (conn->mode != S_CATCHUP || s_srv.head < 0 || conn->cursor < s_srv.lo - 1
        || s_srv.head - conn->cursor > s_srv.queue_max / 2)
        return;
    conn->mode = S_LIVE;
    conn->pending = 0;
    for (int64_t seq = conn->cursor + 1; seq <= s_srv.head; seq++)
        conn->pending += gw_filter_match (conn->filter, s_ring_get (seq));
}

//  The next event conn should be sent, or NULL for now. Advances cursor over
//  what it skips; the caller sets cursor to the returned event's seq.
static gw_event_t *
s_next (s_conn_t *conn)
{
    if (conn->mode == S_REPLAY) {
        while (conn->ipage < conn->npage) {
            gw_event_t *event = conn->page[conn->ipage++];
            if (event->seq <= conn->cursor)
                continue;
            if (gw_filter_match (conn->filter, event))
                return event;
            conn->cursor = event->seq;
        }
        if (conn->page_wait || conn->retry_ms)
            return NULL;
        if (conn->npage == 0 && conn->page_head < 0) {
            s_request_page (conn);  //  the first page
            return NULL;
        }
        if (conn->page_more) {
            s_request_page (conn);
            return NULL;
        }
        //  The store had nothing more up to page_head that passes the filters.
        if (conn->page_head > conn->cursor)
            conn->cursor = conn->page_head;
        if (s_srv.head >= 0 && conn->cursor >= s_srv.lo - 1) {
            for (int i = 0; i < conn->npage; i++)
                gw_event_destroy (&conn->page[i]);
            free (conn->page);
            conn->page = NULL;
            conn->npage = conn->ipage = 0;
            conn->mode = S_CATCHUP;
        }
        else {
            conn->page_head = -1;
            conn->npage = 0;
            s_request_page (conn);
            return NULL;
        }
    }
    if (s_srv.head < 0)
        return NULL;
    if (conn->cursor < s_srv.lo - 1) {
        //  The ring has moved past it: back to the store's log.
        conn->mode = S_REPLAY;
        conn->page_head = -1;
        s_request_page (conn);
        return NULL;
    }
    for (int skipped = 0; conn->cursor < s_srv.head && skipped < S_WALK; skipped++) {
        gw_event_t *event = s_ring_get (conn->cursor + 1);
        if (gw_filter_match (conn->filter, event)) {
            if (conn->mode == S_LIVE && conn->pending > 0)
                conn->pending--;
            return event;
        }
        conn->cursor++;
    }
    s_maybe_live (conn);
    if (conn->cursor >= s_srv.head && !conn->synced) {
        conn->synced = true;
        s_send (conn, zsys_sprintf ("{\"type\":\"synced\",\"seq\":%lld}", (long long) conn->cursor),
                NULL, false);
    }
    if (conn->cursor < s_srv.head)
        lws_callback_on_writable (conn->wsi);  //  more to walk
    return NULL;
}

//  Appends the feed's events to the ring and tells the live clients.
static void
s_ring_add (gw_event_t *event)
{
    if (s_srv.head >= 0 && event->seq <= s_srv.head) {
        gw_event_destroy (&event);
        return;
    }
    if (s_srv.head < 0 || event->seq != s_srv.head + 1) {
        //  Never a gap inside the ring: start it again from here.
        for (int64_t i = 0; i < s_srv.cap; i++)
            gw_event_destroy (&s_srv.ring[i]);
        s_srv.lo = event->seq;
    }
    int64_t slot = event->seq & s_srv.mask;
    gw_event_destroy (&s_srv.ring[slot]);
    s_srv.ring[slot] = event;
    s_srv.head = event->seq;
    if (s_srv.head - s_srv.lo + 1 > s_srv.cap)
        s_srv.lo = s_srv.head - s_srv.cap + 1;

    for (s_conn_t *conn = zhashx_first (s_srv.conns); conn; conn = zhashx_next (s_srv.conns)) {
        if (!conn->subscribed || conn->closing || event->seq <= conn->cursor)
            continue;
        if (conn->mode == S_CATCHUP) {
            s_maybe_live (conn);  //  if it goes live, this event is counted
            if (conn->mode == S_CATCHUP || conn->pending > 0)
                lws_callback_on_writable (conn->wsi);
            continue;
        }
        if (conn->mode != S_LIVE)
            continue;
        if (gw_filter_match (conn->filter, event)) {
            conn->pending++;
            if (conn->pending > s_srv.queue_max || conn->cursor < s_srv.lo - 1) {
                char why[96];
                snprintf (why, sizeof why, "slow reader: %lld events behind",
                          (long long) conn->pending);
                s_drop (conn, why);
            }
            else
                lws_callback_on_writable (conn->wsi);
        }
        else if (conn->pending == 0)
            conn->cursor = event->seq;
    }
}

//  ------------------------------------------------------------ requests

static void
s_job (s_conn_t *conn, gw_job_kind_t kind, cJSON *request)
{
    gw_job_t *job = calloc (1, sizeof *job);
    if (!job) {
        cJSON_Delete (request);
        return;
    }
    job->kind = kind;
    job->conn_id = conn->id;
    job->gen = conn->gen;
    job->request = request;
    conn->inflight++;
    gw_job_post (&s_srv.gw, job);
}

static bool
s_watched (const char *task)
{
    for (s_conn_t *conn = zhashx_first (s_srv.conns); conn; conn = zhashx_next (s_srv.conns))
        if (conn->terms && zhashx_lookup (conn->terms, task))
            return true;
    return false;
}

static void
s_unwatch (s_conn_t *conn, const char *task)
{
    zhashx_delete (conn->terms, task);
    if (!s_watched (task)) {
        pthread_mutex_lock (&s_srv.gw.term_lock);
        zhashx_delete (s_srv.gw.term_watch, task);
        pthread_mutex_unlock (&s_srv.gw.term_lock);
    }
}

//  Handles one complete client message.
static void
s_message (s_conn_t *conn, const char *data, size_t len)
{
    int64_t now = zclock_mono ();
    conn->tokens += (double) (now - conn->tokens_ms) * s_srv.rate / 1000.0;
    if (conn->tokens > 2 * s_srv.rate)
        conn->tokens = 2 * s_srv.rate;
    conn->tokens_ms = now;

    cJSON *request = NULL, *id = NULL;
    char *error = NULL;
    if (!ccm_utf8_valid (data, len))
        error = gw_reply_error (NULL, "bad_json", NULL, "the frame is not valid UTF-8");
    else if (!(request = cJSON_ParseWithLength (data, len)))
        error = gw_reply_error (NULL, "bad_json", NULL, "the frame is not valid JSON");
    else if (!cJSON_IsObject (request))
        error = gw_reply_error (NULL, "bad_json", NULL, "the frame is not a JSON object");
    if (!error) {
        id = cJSON_GetObjectItemCaseSensitive (request, "id");
        cJSON *cmd = cJSON_GetObjectItemCaseSensitive (request, "cmd");
        if (id && !(cJSON_IsNumber (id) && id->valuedouble == (double) (int64_t) id->valuedouble)
            && !(cJSON_IsString (id) && strlen (id->valuestring) <= 128)) {
            id = NULL;
            error = gw_reply_error (NULL, "bad_request", "id",
                                    "id: must be an integer or a string of at most 128 bytes");
        }
        else if (!cJSON_IsString (cmd))
            error = gw_reply_error (id, "bad_request", "cmd", "cmd: required, a string");
        else if (conn->tokens < 1.0)
            error = gw_reply_error (id, "rate_limited", NULL,
                                    "more than %.0f requests per second: slow down", s_srv.rate);
        else if (conn->inflight >= S_INFLIGHT_MAX)
            error = gw_reply_error (id, "rate_limited", NULL,
                                    "%d requests are still running: wait for their replies",
                                    conn->inflight);
    }
    if (error) {
        //  A refusal costs a token too, so a flood of garbage is limited as well.
        conn->tokens = conn->tokens >= 1.0 ? conn->tokens - 1.0 : conn->tokens;
        cJSON_Delete (request);
        s_send (conn, error, NULL, false);
        if (++conn->refused >= S_REFUSALS_MAX) {
            ccm_warn ("client %s (%s) closed: %d refused requests in a row", conn->key, conn->peer,
                      conn->refused);
            lws_close_reason (conn->wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION,
                              (unsigned char *) "too many refused requests", 25);
            conn->kill = true;
        }
        return;
    }
    conn->tokens -= 1.0;
    conn->refused = 0;
    const char *cmd = cJSON_GetObjectItemCaseSensitive (request, "cmd")->valuestring;
    if (strcmp (cmd, "subscribe") == 0) {
        //  A new subscription replaces the old one at once; its start comes from a worker.
        s_unsubscribe (conn);
        s_job (conn, GW_JOB_SUBSCRIBE, request);
    }
    else if (strcmp (cmd, "unsubscribe") == 0) {
        s_unsubscribe (conn);
        s_send (conn, gw_reply_ok (id, NULL), NULL, false);
        cJSON_Delete (request);
    }
    else if (strcmp (cmd, "terminal.open") == 0) {
        //  The capturing thread starts with the first view: an idle gateway has none.
        if (!s_srv.gw.term_started && gw_term_start (&s_srv.gw)) {
            ccm_error ("cannot start the terminal thread: %s", strerror (errno));
            s_send (conn,
                    gw_reply_error (id, "internal", NULL, "the terminal view cannot start here"),
                    NULL, false);
            cJSON_Delete (request);
        }
        else
            s_job (conn, GW_JOB_TERMINAL, request);
    }
    else if (strcmp (cmd, "terminal.close") == 0 || strcmp (cmd, "terminal.input") == 0) {
        //  Both name the task as terminal.open resolved it, or a prefix of it.
        const char *task = cJSON_GetStringValue (cJSON_GetObjectItem (request, "task"));
        const char *found = NULL, *mode = NULL;
        for (const char *one = conn->terms ? zhashx_first (conn->terms) : NULL; one && task;
             one = zhashx_next (conn->terms)) {
            const char *key = zhashx_cursor (conn->terms);
            if (strlen (task) >= 4 && strncmp (key, task, strlen (task)) == 0) {
                found = key;
                mode = one;
            }
        }
        if (!task)
            s_send (conn, gw_reply_error (id, "missing_field", "task", "task: required"), NULL,
                    false);
        else if (!found)
            s_send (conn,
                    gw_reply_error (id, "not_found", "task",
                                    "no terminal view of task %.64s is open here", task),
                    NULL, false);
        else if (strcmp (cmd, "terminal.close") == 0) {
            char *key = strdup (found);
            s_unwatch (conn, key);
            free (key);
            s_send (conn, gw_reply_ok (id, NULL), NULL, false);
        }
        else if (strcmp (mode, "1") != 0)
            s_send (conn,
                    gw_reply_error (id, "forbidden", "task",
                                    "the terminal of task %.64s is read-only here: open it with "
                                    "control: true to type into it",
                                    found),
                    NULL, false);
        else {
            cJSON_ReplaceItemInObject (request, "task", cJSON_CreateString (found));
            s_job (conn, GW_JOB_CMD, request);
            return;
        }
        cJSON_Delete (request);
    }
    else if (gw_cmd_known (cmd))
        s_job (conn, GW_JOB_CMD, request);
    else {
        s_send (conn, gw_reply_error (id, "unknown_cmd", "cmd", "unknown command '%.64s'", cmd),
                NULL, false);
        cJSON_Delete (request);
    }
}

//  ------------------------------------------------------------ mail

static s_conn_t *
s_conn (uint64_t id)
{
    char key[24];
    snprintf (key, sizeof key, "%llu", (unsigned long long) id);
    return zhashx_lookup (s_srv.conns, key);
}

static void
s_mail (void)
{
    gw_mail_t *mail = gw_mail_take (&s_srv.gw);
    while (mail) {
        gw_mail_t *next = mail->next;
        s_conn_t *conn = mail->conn_id ? s_conn (mail->conn_id) : NULL;
        switch (mail->kind) {
            case GW_MAIL_HEAD:
                if (s_srv.head < 0) {
                    s_srv.head = mail->last_seq;
                    s_srv.lo = mail->last_seq + 1;
                    ccm_info ("following the store's events after seq %lld",
                              (long long) mail->last_seq);
                }
                for (s_conn_t *c = zhashx_first (s_srv.conns); c; c = zhashx_next (s_srv.conns))
                    if (c->subscribed)
                        lws_callback_on_writable (c->wsi);
                break;
            case GW_MAIL_EVENTS:
                for (int i = 0; i < mail->nevents; i++) {
                    s_ring_add (mail->events[i]);
                    mail->events[i] = NULL;
                }
                break;
            case GW_MAIL_REPLY:
                if (conn) {
                    conn->inflight--;
                    s_send (conn, mail->text, NULL, false);
                    mail->text = NULL;
                }
                break;
            case GW_MAIL_SUBSCRIBED:
                if (conn)
                    conn->inflight--;
                if (!conn || mail->gen != conn->gen)
                    break;
                s_send (conn, mail->text, NULL, false);
                mail->text = NULL;
                if (mail->filter) {
                    conn->subscribed = true;
                    conn->filter = mail->filter;
                    mail->filter = NULL;
                    conn->cursor = mail->since;
                    conn->synced = false;
                    conn->pending = 0;
                    conn->page_head = -1;
                    conn->retry_ms = 0;
                    conn->mode =
                        s_srv.head >= 0 && conn->cursor >= s_srv.lo - 1 ? S_CATCHUP : S_REPLAY;
                    s_maybe_live (conn);
                    lws_callback_on_writable (conn->wsi);
                }
                break;
            case GW_MAIL_PAGE:
                if (!conn || mail->gen != conn->gen || !conn->subscribed)
                    break;
                conn->page_wait = false;
                if (mail->last_seq < 0) {
                    conn->retry_ms = zclock_mono () + 1000;  //  the store is away
                    break;
                }
                for (int i = 0; i < conn->npage; i++)
                    gw_event_destroy (&conn->page[i]);
                free (conn->page);
                conn->page = mail->events;
                conn->npage = mail->nevents;
                conn->ipage = 0;
                conn->page_more = mail->more;
                conn->page_head = mail->last_seq;
                mail->events = NULL;
                mail->nevents = 0;
                lws_callback_on_writable (conn->wsi);
                break;
            case GW_MAIL_WINDOW:
                if (!conn)
                    break;
                conn->inflight--;
                if (!conn->terms) {
                    conn->terms = zhashx_new ();
                    zhashx_set_duplicator (conn->terms, (zhashx_duplicator_fn *) strdup);
                    zhashx_set_destructor (conn->terms, (zhashx_destructor_fn *) zstr_free);
                }
                zhashx_update (conn->terms, mail->task, mail->control ? "1" : "0");
                pthread_mutex_lock (&s_srv.gw.term_lock);
                zhashx_update (s_srv.gw.term_watch, mail->task, mail->window);
                zhashx_update (s_srv.gw.term_fresh, mail->task, "1");
                pthread_mutex_unlock (&s_srv.gw.term_lock);
                s_send (conn, mail->text, NULL, false);
                mail->text = NULL;
                break;
            case GW_MAIL_TERMINAL:
                for (s_conn_t *c = zhashx_first (s_srv.conns); c; c = zhashx_next (s_srv.conns)) {
                    const char *mode = c->terms ? zhashx_lookup (c->terms, mail->task) : NULL;
                    if (!mode)
                        continue;
                    cJSON *push = cJSON_CreateObject ();
                    cJSON_AddStringToObject (push, "type",
                                             mail->text ? "terminal" : "terminal_closed");
                    cJSON_AddStringToObject (push, "task", mail->task);
                    if (mail->text) {
                        cJSON_AddStringToObject (push, "data", mail->text);
                        cJSON_AddBoolToObject (push, "control", strcmp (mode, "1") == 0);
                    }
                    else
                        cJSON_AddStringToObject (push, "reason", "the agent's window is gone");
                    s_send (c, cJSON_PrintUnformatted (push), mail->text ? mail->task : NULL,
                            false);
                    cJSON_Delete (push);
                    if (!mail->text)
                        zhashx_delete (c->terms, mail->task);
                }
                break;
        }
        gw_mail_destroy (&mail);
        mail = next;
    }
}

static void
s_tick (lws_sorted_usec_list_t *sul)
{
    (void) sul;
    if (zsys_interrupted) {
        s_srv.gw.stop = true;
        lws_cancel_service (s_srv.gw.context);
        return;
    }
    int64_t now = zclock_mono ();
    for (s_conn_t *c = zhashx_first (s_srv.conns); c; c = zhashx_next (s_srv.conns))
        if (c->retry_ms && now >= c->retry_ms) {
            c->retry_ms = 0;
            lws_callback_on_writable (c->wsi);
        }
    if (s_srv.watchdog_ms && now - s_srv.notified_ms >= s_srv.watchdog_ms / 2) {
        ccm_notify ("WATCHDOG=1");
        s_srv.notified_ms = now;
    }
    lws_sul_schedule (s_srv.gw.context, 0, &s_srv.tick, s_tick, S_TICK_US);
}

//  The "http" protocol: the mailbox's wake-up (lws_cancel_service) comes
//  here; everything else is gw_http.c's.
static int
s_http_cb (struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    if (reason == LWS_CALLBACK_EVENT_WAIT_CANCELLED) {
        s_mail ();
        return 0;
    }
    return gw_http_cb (wsi, reason, user, in, len);
}

//  ------------------------------------------------------------ WebSocket

static int
s_writable (s_conn_t *conn)
{
    struct lws *wsi = conn->wsi;
    for (int n = 0; n < S_WRITES && !lws_send_pipe_choked (wsi); n++) {
        if (conn->out_head) {
            s_out_t *out = conn->out_head;
            conn->out_head = out->next;
            if (!conn->out_head)
                conn->out_tail = NULL;
            conn->out_count--;
            conn->out_bytes -= out->len;
            int rc = lws_write (wsi, out->buf + LWS_PRE, out->len, LWS_WRITE_TEXT);
            bool last = out->last;
            s_out_destroy (&out);
            if (rc < 0)
                return -1;
            if (last) {
                lws_close_reason (wsi, (enum lws_close_status) 4000, (unsigned char *) "resync", 6);
                return -1;
            }
            continue;
        }
        if (conn->closing || !conn->subscribed)
            return 0;
        gw_event_t *event = s_next (conn);
        if (!event) {
            if (conn->out_head)
                continue;  //  s_next queued "synced"
            return 0;
        }
        if (lws_write (wsi, event->buf + LWS_PRE, event->len, LWS_WRITE_TEXT) < 0)
            return -1;
        conn->cursor = event->seq;
    }
    lws_callback_on_writable (wsi);
    return 0;
}

static void
s_conn_destroy (s_conn_t **conn_p)
{
    s_conn_t *conn = *conn_p;
    if (!conn)
        return;
    s_unsubscribe (conn);
    while (conn->out_head) {
        s_out_t *out = conn->out_head;
        conn->out_head = out->next;
        s_out_destroy (&out);
    }
    if (conn->terms) {
        zlistx_t *tasks = zhashx_keys (conn->terms);
        for (const char *task = zlistx_first (tasks); task; task = zlistx_next (tasks))
            s_unwatch (conn, task);
        zlistx_destroy (&tasks);
        zhashx_destroy (&conn->terms);
    }
    free (conn->rx);
    free (conn);
    *conn_p = NULL;
}

static int
s_ws_cb (struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    s_conn_t **slot = user;
    switch (reason) {
        case LWS_CALLBACK_ESTABLISHED: {
            s_conn_t *conn = calloc (1, sizeof *conn);
            if (!conn)
                return -1;
            conn->wsi = wsi;
            conn->id = ++s_srv.next_id;
            snprintf (conn->key, sizeof conn->key, "%llu", (unsigned long long) conn->id);
            gw_http_peer (wsi, conn->peer, sizeof conn->peer);
            conn->tokens = 2 * s_srv.rate;
            conn->tokens_ms = zclock_mono ();
            conn->cursor = -1;
            zhashx_insert (s_srv.conns, conn->key, conn);
            //  What the kernel holds for a reader that stopped reading is bounded
            //  too, so a slow client shows as slow soon, at a known cost.
            if (s_srv.sndbuf > 0
                && setsockopt (lws_get_socket_fd (wsi), SOL_SOCKET, SO_SNDBUF, &s_srv.sndbuf,
                               sizeof s_srv.sndbuf))
                ccm_warn ("client %s: SO_SNDBUF: %s", conn->key, strerror (errno));
            *slot = conn;
            ccm_debug ("client %s connected from %s", conn->key, conn->peer);
            return 0;
        }
        case LWS_CALLBACK_CLOSED:
            if (*slot) {
                ccm_debug ("client %s closed", (*slot)->key);
                zhashx_delete (s_srv.conns, (*slot)->key);
                s_conn_destroy (slot);
            }
            return 0;
        case LWS_CALLBACK_RECEIVE: {
            s_conn_t *conn = *slot;
            if (!conn || conn->closing)
                return 0;
            if (!conn->rx_active) {
                conn->rx_active = true;
                conn->rx_len = 0;
                conn->rx_over = false;
                conn->rx_binary = lws_frame_is_binary (wsi);
            }
            if (!conn->rx_over && conn->rx_len + len > s_srv.max_frame) {
                conn->rx_over = true;
                free (conn->rx);  //  the rest is read and thrown away
                conn->rx = NULL;
                conn->rx_len = 0;
            }
            if (!conn->rx_over) {
                char *grown = realloc (conn->rx, conn->rx_len + len + 1);
                if (!grown)
                    return -1;
                conn->rx = grown;
                memcpy (conn->rx + conn->rx_len, in, len);
                conn->rx_len += len;
            }
            if (!lws_is_final_fragment (wsi) || lws_remaining_packet_payload (wsi) > 0)
                return 0;
            conn->rx_active = false;
            if (conn->rx_over)
                s_send (conn,
                        gw_reply_error (NULL, "too_big", "frame",
                                        "the frame exceeds %zu bytes (gateway.max_frame)",
                                        s_srv.max_frame),
                        NULL, false);
            else if (conn->rx_binary)
                s_send (conn,
                        gw_reply_error (NULL, "bad_json", NULL,
                                        "binary frames are not taken: send JSON text"),
                        NULL, false);
            else
                s_message (conn, conn->rx, conn->rx_len);
            if (conn->kill)
                return -1;
            //  A big buffer is not kept for the life of the connection.
            if (conn->rx_len > 65536) {
                free (conn->rx);
                conn->rx = NULL;
            }
            conn->rx_len = 0;
            return 0;
        }
        case LWS_CALLBACK_SERVER_WRITEABLE:
            return *slot ? s_writable (*slot) : 0;
        default:
            return 0;
    }
}

static struct lws_protocols s_protocols[] = {
    {"http", s_http_cb, sizeof (gw_http_t), 0, 0, NULL, 0},
    {"ccm.v1", s_ws_cb, sizeof (s_conn_t *), 16384, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0}};

//  ------------------------------------------------------------ start

static void
s_lws_log (int level, const char *line)
{
    //  lws's own lines (errors and warnings only; they carry no header values).
    char text[512];
    snprintf (text, sizeof text, "%s", line);
    size_t n = strlen (text);
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r'))
        text[--n] = 0;
    if (level & LLL_ERR)
        ccm_error ("lws: %s", text);
    else
        ccm_warn ("lws: %s", text);
}

static int
s_write_url (ccm_config_t *config)
{
    char path[PATH_MAX + 32], tmp[PATH_MAX + 40];
    snprintf (path, sizeof path, "%s/run/gateway.url", ccm_config_home (config));
    snprintf (tmp, sizeof tmp, "%s.tmp", path);
    char dir[PATH_MAX + 8];
    snprintf (dir, sizeof dir, "%s/run", ccm_config_home (config));
    mkdir (dir, 0700);
    FILE *file = fopen (tmp, "w");
    if (!file)
        return -1;
    if (strchr (s_srv.bind, ':'))
        fprintf (file, "http://[%s]:%d/\n", s_srv.bind, s_srv.port);
    else
        fprintf (file, "http://%s:%d/\n", s_srv.bind, s_srv.port);
    return fclose (file) || rename (tmp, path) ? -1 : 0;
}

//  Lowers this process's open-file limit to gateway.max_fds: lws sizes two
//  tables by that limit (16 bytes a descriptor, filled at start), and a
//  limit of 20,000, or systemd's 524,288, would cost 0.3 to 8 MB for
//  descriptors the gateway never opens.
static void
s_fd_limit (ccm_config_t *config)
{
    struct rlimit limit;
    rlim_t most = (rlim_t) ccm_config_int (config, "gateway.max_fds");
    if (getrlimit (RLIMIT_NOFILE, &limit) != 0)
        ccm_warn ("getrlimit: %s", strerror (errno));
    else if (limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur > most) {
        limit.rlim_cur = most;
        if (setrlimit (RLIMIT_NOFILE, &limit) != 0)
            ccm_warn ("cannot lower the open-file limit to %llu: %s", (unsigned long long) most,
                      strerror (errno));
    }
}

int
gateway_main (ccm_config_t *config)
{
    memset (&s_srv, 0, sizeof s_srv);
    gw_t *gw = &s_srv.gw;
    gw->config = config;
    snprintf (s_srv.bind, sizeof s_srv.bind, "%s", ccm_config_str (config, "gateway.bind"));
    s_srv.port = (int) ccm_config_int (config, "gateway.port");
    s_srv.max_frame = (size_t) ccm_config_int (config, "gateway.max_frame");
    s_srv.rate = (double) ccm_config_int (config, "gateway.rate");
    s_srv.queue_max = ccm_config_int (config, "gateway.queue_max");
    s_srv.sndbuf = (int) ccm_config_int (config, "gateway.sndbuf");
    int64_t ring = ccm_config_int (config, "gateway.ring");
    int64_t max_fds = ccm_config_int (config, "gateway.max_fds");
    if (s_srv.port < 0 || s_srv.port > 65535 || s_srv.max_frame < 1024 || s_srv.rate < 1
        || s_srv.queue_max < 16 || ring < 2 * s_srv.queue_max || max_fds < 64
        || max_fds > 1048576) {
        ccm_error ("refusing to start: gateway.port must be 0-65535, gateway.max_frame >= 1024, "
                   "gateway.rate >= 1, gateway.queue_max >= 16, gateway.ring >= 2 x "
                   "gateway.queue_max and gateway.max_fds 64-1048576");
        return 2;
    }
    s_srv.auth = gw_auth_new (config, s_srv.bind, s_srv.port);
    if (!gw_auth_loopback (s_srv.bind) && !gw_auth_has_token (s_srv.auth)) {
        ccm_error ("refusing to bind %s without a token: run 'ccm gateway token' (it writes %s)",
                   s_srv.bind, ccm_config_str (config, "gateway.token_file"));
        gw_auth_destroy (&s_srv.auth);
        return 2;
    }
    gw_http_web_root (config, s_srv.web_root, sizeof s_srv.web_root);
    if (!s_srv.web_root[0])
        ccm_warn ("no web UI files found (gateway.web_root): only the API is served");
    gw_http_init (s_srv.auth, s_srv.web_root);

    //  The ccm CLI sits next to this binary; its children find this home.
    char self[PATH_MAX] = "";
    ssize_t n = readlink ("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = 0;
        *strrchr (self, '/') = 0;
    }
    snprintf (gw->ccm_bin, sizeof gw->ccm_bin, "%s/ccm", self);
    setenv ("CCM_HOME", ccm_config_home (config), 1);
    snprintf (gw->tmux_socket, sizeof gw->tmux_socket, "%s",
              ccm_config_str (config, "executor.tmux_socket"));
    gw->terminal_ms = (int) ccm_config_int (config, "gateway.terminal_ms");
    if (gw->terminal_ms < 20)
        gw->terminal_ms = 20;
    gw->nworkers = (int) ccm_config_int (config, "gateway.workers");
    if (gw->nworkers < 1)
        gw->nworkers = 1;
    pthread_mutex_init (&gw->mail_lock, NULL);
    pthread_mutex_init (&gw->job_lock, NULL);
    pthread_cond_init (&gw->job_cond, NULL);
    pthread_mutex_init (&gw->term_lock, NULL);
    gw->term_watch = zhashx_new ();
    zhashx_set_duplicator (gw->term_watch, (zhashx_duplicator_fn *) strdup);
    zhashx_set_destructor (gw->term_watch, (zhashx_destructor_fn *) zstr_free);
    gw->term_fresh = zhashx_new ();
    zhashx_set_duplicator (gw->term_fresh, (zhashx_duplicator_fn *) strdup);
    zhashx_set_destructor (gw->term_fresh, (zhashx_destructor_fn *) zstr_free);
    gw->cache = gw_cache_new ();
    s_srv.conns = zhashx_new ();
    s_srv.cap = 1;
    while (s_srv.cap < ring)
        s_srv.cap <<= 1;
    s_srv.mask = s_srv.cap - 1;
    s_srv.ring = calloc ((size_t) s_srv.cap, sizeof (gw_event_t *));
    s_srv.head = -1;
    s_srv.watchdog_ms = ccm_notify_watchdog_ms ();
    s_fd_limit (config);

    lws_set_log_level (LLL_ERR | LLL_WARN, s_lws_log);
    struct lws_context_creation_info info;
    memset (&info, 0, sizeof info);
    info.port = s_srv.port;
    info.iface = s_srv.bind;
    info.protocols = s_protocols;
    info.vhost_name = "ccm";
    info.server_string = "ccm-gateway";
    info.timeout_secs = 30;
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6 * !strchr (s_srv.bind, ':');
    if (strcmp (s_srv.bind, "localhost") == 0)
        info.iface = "127.0.0.1";
    int rc = 1;
    gw->context = lws_create_context (&info);
    if (!gw->context)
        ccm_error ("cannot listen on %s:%d (in use, or not an address of this machine)", s_srv.bind,
                   s_srv.port);
    else {
        struct lws_vhost *vhost = lws_get_vhost_by_name (gw->context, "ccm");
        int port = vhost ? lws_get_vhost_listen_port (vhost) : s_srv.port;
        if (port > 0)
            s_srv.port = port;
        gw_auth_set_port (s_srv.auth, s_srv.port);
        if (s_write_url (config))
            ccm_warn ("cannot write run/gateway.url: %s", strerror (errno));
        if (gw_feed_start (gw) || gw_work_start (gw)) {
            ccm_error ("cannot start the gateway's threads");
            gw->stop = true;
        }
        else {
            ccm_info ("listening on %s:%d (web UI %s, token %s)", s_srv.bind, s_srv.port,
                      s_srv.web_root[0] ? s_srv.web_root : "none",
                      gw_auth_has_token (s_srv.auth) ? "required" : "not set");
            ccm_notify ("READY=1");
            lws_sul_schedule (gw->context, 0, &s_srv.tick, s_tick, S_TICK_US);
            while (!gw->stop && !zsys_interrupted)
                if (lws_service (gw->context, 0) < 0)
                    break;
            rc = 0;
        }
        ccm_notify ("STOPPING=1");
        if (gw_threads_join (gw))
            return rc;  //  a thread still uses what follows; the exit frees it
        lws_context_destroy (gw->context);
        gw->context = NULL;
    }
    gw_mail_t *mail = gw_mail_take (gw);
    while (mail) {
        gw_mail_t *next = mail->next;
        gw_mail_destroy (&mail);
        mail = next;
    }
    while (gw->job_head) {
        gw_job_t *job = gw->job_head;
        gw->job_head = job->next;
        gw_job_destroy (&job);
    }
    for (int64_t i = 0; i < s_srv.cap; i++)
        gw_event_destroy (&s_srv.ring[i]);
    free (s_srv.ring);
    zhashx_destroy (&s_srv.conns);
    zhashx_destroy (&gw->term_watch);
    zhashx_destroy (&gw->term_fresh);
    gw_cache_destroy (&gw->cache);
    free (gw->workers);
    gw_auth_destroy (&s_srv.auth);
    return rc;
}
