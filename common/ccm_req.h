/*  ccm_req: the asynchronous requester of a service's loop.

    A service's reactor never waits for the store. It hands each request to
    a ccm_req on its zloop, and the reply comes back to a callback on that
    same loop. Requests are matched to replies by their correlation "id",
    so they may be answered in any order. At most `window` are in flight;
    the rest wait in order. A request unanswered for timeout_ms is resent
    (zguide's Lazy Pirate: a fresh socket, every request in flight sent
    again in its first order, each with its same body and so its same
    idempotency key: a write is never applied twice), up to `retries` times,
    or forever with retries < 0.

    ccm_client (synchronous) stays for the CLI and for start-up.          */

#ifndef CCM_REQ_H_INCLUDED
#define CCM_REQ_H_INCLUDED

#include "ccm_client.h"

#include <czmq.h>
#include <stdint.h>

#define CCM_ECLOSED -5  //  the requester was destroyed before an answer came

typedef struct _ccm_req_t ccm_req_t;

//  Called on the loop when a request is over: rc is 0 (reply is the ok
//  body), CCM_EREPLY (reply is the error body), CCM_ETIMEOUT (no answer
//  after every retry; reply NULL) or CCM_ECLOSED (reply NULL). reply is
//  borrowed for the call; take what you keep with cJSON_Detach... or
//  cJSON_Duplicate. A callback may send further requests, never destroy
//  the requester.
typedef void (ccm_req_fn) (void *arg, int rc, cJSON *reply);

//  Creates a requester of endpoint whose replies are read on loop (borrowed;
//  it must outlive the requester). Returns NULL on failure. Caller owns.
ccm_req_t *ccm_req_new (zloop_t *loop, const char *endpoint, int timeout_ms, int retries,
                        int window);

//  Calls every pending callback with CCM_ECLOSED, closes the socket, frees
//  the requester and sets *self_p to NULL.
void ccm_req_destroy (ccm_req_t **self_p);

//  Queues verb with the body *body_p, which it takes ("v" and "id" are set;
//  a write must already carry its "idem": ccm_client_add_idem). fn (may be
//  NULL) gets the outcome with arg. Returns 0, or -1 with *body_p freed and
//  fn not called if the body is not an object or verb is invalid.
int ccm_req_send (ccm_req_t *self, const char *verb, cJSON **body_p, ccm_req_fn *fn, void *arg);

//  How many requests are queued or in flight.
size_t ccm_req_pending (ccm_req_t *self);

//  When (ccm_mono_ms) a reply last arrived, or 0 if none has.
int64_t ccm_req_heard_ms (ccm_req_t *self);

//  Waits, outside the loop (at shutdown), until nothing is pending or
//  timeout_ms has passed, reading replies and calling callbacks as the loop
//  would. Returns the number of requests still pending.
size_t ccm_req_flush (ccm_req_t *self, int timeout_ms);

#endif
