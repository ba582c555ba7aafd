/*  gw_internal: what the gateway's modules share.

    Threads. The main thread runs libwebsockets (HTTP, WebSocket clients,
    fan-out); nothing in it blocks. Everything that waits runs elsewhere and
    reports back through the mailbox (gw_mail_post wakes lws with
    lws_cancel_service):
    - the feed (gw_feed.c): the store's events, gapless, enriched;
    - the workers (gw_work.c): store calls, replays and ccm commands;
    - the terminal (gw_term.c): tmux capture-pane of watched windows.      */

#ifndef GW_INTERNAL_H_INCLUDED
#define GW_INTERNAL_H_INCLUDED

#include "ccm_client.h"
#include "ccm_config.h"
#include "ccm_msg.h"

#include <libwebsockets.h>

#include <czmq.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

//  One store event as the gateway pushes it: the frame's text, with LWS_PRE
//  bytes of room before it (lws writes the frame header there), and what
//  filters look at. Owned by one holder (the ring, or a replay page).
typedef struct {
    int64_t seq;
    char *topic;
    char *task_id;     //  NULL if none
    char *project_id;  //  the task's project, or NULL
    char *entity;
    char *entity_id;
    char *hook_types;  //  hook.added: "\tPreToolUse\tStop\t", else NULL
    size_t len;
    unsigned char *buf;  //  LWS_PRE + len + 1
} gw_event_t;

//  Builds a push from a store EVENT object (borrowed; project_id and hooks
//  are added to it). Returns NULL on failure. Caller owns.
gw_event_t *gw_event_new (cJSON *event, const char *project_id);
void gw_event_destroy (gw_event_t **self_p);

//  A subscription's filters, resolved to ids (gw_filter.c).
typedef struct {
    char *project_id;
    char *task_id;
    char *agent_id;
    char *agent_task_id;
    char **types;
    int ntypes;
    char **hook_types;
    int nhook_types;
} gw_filter_t;

//  Reads "filters" of a subscribe request, as given (names, prefixes):
//  returns 0, or -1 with err naming the field. Caller destroys *out.
int gw_filter_parse (cJSON *filters, gw_filter_t **out, ccm_error_t *err);
void gw_filter_destroy (gw_filter_t **self_p);
//  True if event passes every filter set.
bool gw_filter_match (const gw_filter_t *self, const gw_event_t *event);

//  The task -> project cache shared by the feed and the workers.
typedef struct _gw_cache_t gw_cache_t;
gw_cache_t *gw_cache_new (void);
void gw_cache_destroy (gw_cache_t **self_p);
//  The project id of task_id into out ("" if none); calls the store on a
//  miss. Returns 0, or -1 if the store could not tell.
int gw_cache_project (gw_cache_t *self, ccm_client_t *store, const char *task_id, char *out,
                      size_t len);
void gw_cache_put (gw_cache_t *self, const char *task_id, const char *project_id);

//  Turns a page of store EVENT objects (an events.since "events" array,
//  borrowed) into pushes: project ids added, hook.added events of at most
//  GW_HOOK_ROWS rows given their rows. Returns the count put in *out (caller
//  owns the array and its events), or -1.
#define GW_HOOK_ROWS 100
int gw_enrich (gw_cache_t *cache, ccm_client_t *store, cJSON *events, gw_event_t ***out);

//  --------------------------------------------------------------- mailbox

typedef enum {
    GW_MAIL_EVENTS,      //  the feed: new live events, in seq order
    GW_MAIL_REPLY,       //  a worker: a reply text for a connection
    GW_MAIL_SUBSCRIBED,  //  a worker: a subscribe request resolved
    GW_MAIL_PAGE,        //  a worker: a replay page for a connection
    GW_MAIL_TERMINAL,    //  the terminal: a window's screen, or its end
    GW_MAIL_WINDOW,      //  a worker: terminal.open found the window
    GW_MAIL_HEAD,        //  the feed: the seq it starts after
} gw_mail_kind_t;

typedef struct _gw_mail_t gw_mail_t;
struct _gw_mail_t {
    gw_mail_t *next;
    gw_mail_kind_t kind;
    uint64_t conn_id;
    uint32_t gen;  //  the subscription it belongs to
    char *text;    //  REPLY: the frame; TERMINAL: the screen (NULL: gone)
    char *task;    //  TERMINAL, WINDOW
    char *window;  //  WINDOW
    bool control;  //  WINDOW
    gw_event_t **events;
    int nevents;
    bool more;            //  PAGE: the store has more after these
    int64_t last_seq;     //  PAGE: the store's head; SUBSCRIBED: the head too
    int64_t since;        //  SUBSCRIBED: the resolved start seq, -1: from the head
    gw_filter_t *filter;  //  SUBSCRIBED (NULL: refused, text holds the reply)
};

void gw_mail_destroy (gw_mail_t **self_p);

//  --------------------------------------------------------------- jobs

typedef enum {
    GW_JOB_CMD,        //  a snapshot or command: reply text
    GW_JOB_SUBSCRIBE,  //  resolve filters and since_seq
    GW_JOB_REPLAY,     //  one page of events.since
    GW_JOB_TERMINAL,   //  terminal.open: find the window
} gw_job_kind_t;

typedef struct _gw_job_t gw_job_t;
struct _gw_job_t {
    gw_job_t *next;
    gw_job_kind_t kind;
    uint64_t conn_id;
    uint32_t gen;
    cJSON *request;       //  CMD, SUBSCRIBE, TERMINAL
    gw_filter_t *filter;  //  REPLAY: for the store-side filters (borrowed copy of ids)
    char *task_filter;    //  REPLAY
    char *topic_filter;   //  REPLAY
    int64_t seq;          //  REPLAY
    int64_t head;         //  SUBSCRIBE: the gateway's head when asked
};

//  --------------------------------------------------------------- the gateway

typedef struct _gw_t gw_t;
struct _gw_t {
    ccm_config_t *config;
    struct lws_context *context;
    volatile bool stop;
    char ccm_bin[4096 + 16];  //  the ccm CLI, for commands that are CLI commands
    char tmux_socket[4096];
    int terminal_ms;
    gw_cache_t *cache;

    pthread_mutex_t mail_lock;
    gw_mail_t *mail_head, *mail_tail;

    pthread_mutex_t job_lock;
    pthread_cond_t job_cond;
    gw_job_t *job_head, *job_tail;
    int nworkers;         //  at most (gateway.workers)
    int workers_idle;     //  waiting for a job (job_lock)
    int64_t jobs_queued;  //  jobs not taken yet (job_lock)
    pthread_t *workers;

    pthread_t feed;

    pthread_t term;
    pthread_mutex_t term_lock;
    zhashx_t *term_watch;  //  task id -> window id: what gw_term captures
    zhashx_t *term_fresh;  //  tasks whose screen is sent even if unchanged (a new viewer)
    bool feed_started, term_started;
    int workers_started;  //  job_lock
};

//  Posts mail to the main thread (takes it) and wakes it.
void gw_mail_post (gw_t *self, gw_mail_t *mail);
//  Takes every mail posted so far, oldest first (caller destroys each).
gw_mail_t *gw_mail_take (gw_t *self);
//  Queues a job for the workers (takes it).
void gw_job_post (gw_t *self, gw_job_t *job);
void gw_job_destroy (gw_job_t **self_p);

//  Start the threads: the feed, the first worker (the others start as
//  requests wait), the terminal (on the first terminal.open).
int gw_feed_start (gw_t *self);
int gw_work_start (gw_t *self);
int gw_term_start (gw_t *self);
//  Stops the threads; returns -1 if one did not stop in time (then nothing
//  they share may be freed).
int gw_threads_join (gw_t *self);

//  Whether cmd is a command the workers run (the table of gw_work.c).
bool gw_cmd_known (const char *cmd);
//  A reply frame's text: {"type":"reply","id":ID,"ok":false,"error":{...}}. id borrowed (may be NULL). Caller frees.
char *gw_reply_error (cJSON *id, const char *code, const char *field, const char *format, ...)
    __attribute__ ((format (printf, 4, 5)));
//  A reply frame's text with result (taken). Caller frees.
char *gw_reply_ok (cJSON *id, cJSON *result);

//  Auth (gw_auth.c). The token, loaded from file when it changes; "" if none.
typedef struct _gw_auth_t gw_auth_t;
gw_auth_t *gw_auth_new (ccm_config_t *config, const char *bind, int port);
void gw_auth_destroy (gw_auth_t **self_p);
//  Re-reads the token file if it changed; returns true if a token is set.
bool gw_auth_has_token (gw_auth_t *self);
//  Sets the port the gateway really listens on (port 0 picks one).
void gw_auth_set_port (gw_auth_t *self, int port);
//  True if text (a candidate token of len bytes) is the token (constant time).
bool gw_auth_token_ok (gw_auth_t *self, const char *text, size_t len);
//  True if origin (a header value) is allowed.
bool gw_auth_origin_ok (gw_auth_t *self, const char *origin);
//  True if bind names a loopback address.
bool gw_auth_loopback (const char *bind);

//  HTTP (gw_http.c): the web UI's files, /api/auth, /login, /logout, and
//  the judgement of every WebSocket upgrade (path, subprotocol, Origin, token).
typedef struct {
    char *body;  //  a POST /login body being read
    size_t len;
    bool over;
    bool login;
} gw_http_t;  //  lws's per-session data of the "http" protocol

//  Sets what HTTP serves and checks with (auth borrowed: it outlives the lws context).
void gw_http_init (gw_auth_t *auth, const char *web_root);
//  The web UI's directory into out: gateway.web_root, else ../share/ccm/web
//  next to the binary, else the source tree's web/ ("" if none).
void gw_http_web_root (ccm_config_t *config, char *out, size_t len);
//  The lws callback of the "http" protocol.
int gw_http_cb (struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                size_t len);
//  The peer's address of wsi into out (for logs).
void gw_http_peer (struct lws *wsi, char *out, size_t len);

#endif
