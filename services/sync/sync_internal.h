/*  sync_internal: what ccm-sync's modules share. Not for other services.

    sync_server.c  the loop, credentials, token refresh, connectivity state,
                   and how a hub response is judged (sync_judge)
    sync_push.c    one push round: sync.pending -> upserts -> sync.mark
    sync_pull.c    one pull pass: systems, tasks for here, watched tasks and
                   their results, skills (written as SKILL.md files)

    Every store request is asynchronous (ccm_req on the loop) and every HTTP
    request goes through curl multi on the loop: each step of a round or a
    pass goes on in the callback of the one before.                       */

#ifndef SYNC_INTERNAL_H_INCLUDED
#define SYNC_INTERNAL_H_INCLUDED

#include "ccm_config.h"
#include "ccm_cred.h"
#include "ccm_req.h"
#include "sync.h"
#include "sync_http.h"

#include <czmq.h>
#include <stdbool.h>

//  Connectivity, as published on the bus (sync.set_state) and read by the
//  router's WaitConnection.
typedef enum {
    SYNC_LOCAL_ONLY,  //  no hub configured
    SYNC_ONLINE,      //  the hub answers and nothing waits
    SYNC_OFFLINE,     //  the hub cannot be reached
    SYNC_QUEUING,     //  the hub is reached but refuses for now: changes wait
    SYNC_SYNCING      //  changes are being pushed
} sync_state_t;

//  How a hub response is judged.
typedef enum {
    SYNC_OK,         //  2xx
    SYNC_NET,        //  no HTTP response at all: offline
    SYNC_TRANSIENT,  //  5xx, 408, 429, 40xxx/57xxx, a garbled or cut response: retry later
    SYNC_AUTH,       //  401 about the JWT: refresh the token, then retry
    SYNC_PARENT,    //  23503: a row it refers to is not there yet: retry, a bounded number of times
    SYNC_PERMANENT  //  any other 4xx: park
} sync_verdict_t;

typedef enum { SYNC_IDLE, SYNC_PUSHING, SYNC_PULLING, SYNC_REFRESHING } sync_phase_t;

typedef struct _sync_round_t sync_round_t;
typedef struct _sync_pull_t sync_pull_t;

struct _sync_t {
    ccm_config_t *config;
    zloop_t *loop;
    ccm_req_t *store;  //  every store request, one at a time, in order
    zsock_t *events;   //  SUB: any committed change may have queued rows
    sync_http_t *http;
    char *cred_path;
    ccm_cred_t cred;
    bool have_cred;
    int64_t cred_mtime_ns;
    char me[128];  //  this system's id; empty until known
    char machine_id[256];
    bool finding;      //  a system.list to find me is in flight
    int64_t found_ms;  //  mono: when the last one was answered
    sync_state_t state;
    char detail[512];
    int state_writes;   //  sync.set_state requests in flight
    bool state_unsent;  //  the last one failed: the store's state is stale
    bool settled;       //  the first state is known (no hub, or the hub's answer)
    bool ready;         //  READY=1 was sent
    sync_phase_t phase;
    bool push_wanted;  //  a change was committed since the last round
    bool retry_after_refresh;
    int auth_failures;     //  401s in a row, refreshes included
    int64_t next_try_ms;   //  mono: nothing is sent before this (backoff)
    int64_t backoff_ms;    //  the last wait; 0 after a success
    int64_t last_pull_ms;  //  mono
    int64_t watchdog_ms;   //  mono: last WATCHDOG=1
    int64_t pending;       //  rows waiting, as of the last sync.pending
    int push_limit;        //  the limit of the last sync.pending
    zhashx_t *suspects;    //  "table\trecord" -> 1: sent alone after a batch was refused
    sync_round_t *round;
    sync_pull_t *pull;
    cJSON *meta;  //  sync.meta as last read (cursors)
    //  Settings.
    int batch, parallel, max_retries;
    int64_t pull_ms, backoff_base_ms, backoff_max_ms;
    char *skills_dir;
    //  Counters, logged at shutdown.
    uint64_t pushed, parked, pulled, requests, failures;
};

//  sync_server.c

//  Sends a read (body taken) to the store; fn gets the outcome on the loop,
//  at once with CCM_EPROTO if it cannot be sent. fn NULL logs a failure
//  (verb must then be a string literal).
void sync_read (sync_t *self, const char *verb, cJSON *body, ccm_req_fn *fn, void *arg);

//  The same for a write, which gets a fresh idempotency key first (kept on
//  every resend).
void sync_write (sync_t *self, const char *verb, cJSON *body, ccm_req_fn *fn, void *arg);

//  True if rc is 0; otherwise logs why verb failed (not CCM_ECLOSED: that
//  is the shutdown) and returns false.
bool sync_ok (const char *verb, int rc, cJSON *reply);

//  Nothing to push: says Online (when it was LocalOnly or Syncing) and
//  starts a pull when one is due.
void sync_idle (sync_t *self);

//  Sets and publishes the connectivity state when it changes.
void sync_set_state (sync_t *self, sync_state_t state, const char *detail);

//  Headers every hub request carries (apikey, bearer token, JSON); caller
//  owns the list. extra (may be NULL) is appended.
struct curl_slist *sync_headers (sync_t *self, const char *extra);

//  Judges a response; writes a one-line reason into why (the hub's code and
//  message, or curl's error), never quoting a token.
sync_verdict_t sync_judge (const sync_http_resp_t *resp, char *why, size_t size);

//  The end of a round or pass: verdict decides what comes next (backoff,
//  refresh, offline). why explains a failure.
void sync_after (sync_t *self, sync_verdict_t verdict, const char *why);

//  Percent-encodes text for a URL query; caller frees.
char *sync_escape (const char *text);

//  sync_push.c

//  Starts a push round: asks the store what is pending (phase PUSHING). With
//  nothing pending it goes on to sync_idle; a store failure waits
//  sync.backoff_base_ms.
void sync_push_start (sync_t *self);

//  Frees a round (at shutdown).
void sync_round_destroy (sync_round_t **round_p);

//  sync_pull.c

//  Starts a pull pass (phase PULLING); a store failure waits
//  sync.backoff_base_ms.
void sync_pull_start (sync_t *self);

void sync_pull_destroy (sync_pull_t **pull_p);

#endif
