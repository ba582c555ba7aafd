/*  ccm_client: a request client for the store (or any ccm ROUTER service),
    following zguide's Lazy Pirate pattern: wait up to a timeout, then close
    the socket, reopen it and resend the same request, a bounded number of
    times. Writes carry an idempotency key, so a resend never doubles a row. */

#ifndef CCM_CLIENT_H_INCLUDED
#define CCM_CLIENT_H_INCLUDED

#include <cjson/cJSON.h>

typedef struct _ccm_client_t ccm_client_t;

#define CCM_EREPLY   -2  //  the service answered "error"; the reply holds it
#define CCM_ETIMEOUT -3  //  no answer after every retry
#define CCM_EPROTO   -4  //  the answer was not a valid reply

//  Creates a client of endpoint. Returns NULL on failure. Caller owns.
ccm_client_t *ccm_client_new (const char *endpoint, int timeout_ms, int retries);

//  Destroys the client and sets *self_p to NULL.
void ccm_client_destroy (ccm_client_t **self_p);

//  Sends verb with body (borrowed; "v" and "id" are added) and waits for the
//  reply. Returns 0 with *reply_p set (caller owns), CCM_EREPLY with *reply_p
//  holding the error body, or CCM_ETIMEOUT / CCM_EPROTO with *reply_p NULL.
int ccm_client_call (ccm_client_t *self, const char *verb, cJSON *body, cJSON **reply_p);

//  Adds a fresh idempotency key ("idem") to the body of a write: a resend of
//  that same body (a retry after a timeout) is then never applied twice.
void ccm_client_add_idem (cJSON *body);

//  Returns the error message inside an error reply body (borrowed), or a
//  description of rc when there is no reply.
const char *ccm_client_strerror (int rc, cJSON *reply);

#endif
