/*  ccm_client: Lazy Pirate request/reply over a DEALER socket.             */

#include "ccm_client.h"

#include "ccm_bus.h"
#include "ccm_id.h"
#include "ccm_msg.h"

#include <stdio.h>
#include <string.h>

struct _ccm_client_t {
    char *endpoint;
    zsock_t *sock;
    int timeout_ms;
    int retries;
    unsigned long counter;  //  correlation ids, so stale replies are skipped
};

ccm_client_t *
ccm_client_new (const char *endpoint, int timeout_ms, int retries)
{
    ccm_client_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->endpoint = strdup (endpoint);
    self->timeout_ms = timeout_ms;
    self->retries = retries;
    self->sock = ccm_bus_dealer_connect (endpoint);
    if (!self->endpoint || !self->sock)
        ccm_client_destroy (&self);
    return self;
}

void
ccm_client_destroy (ccm_client_t **self_p)
{
    if (self_p && *self_p) {
        ccm_client_t *self = *self_p;
        zsock_destroy (&self->sock);
        free (self->endpoint);
        free (self);
        *self_p = NULL;
    }
}

//  Waits for the reply whose id is want; returns 0 / CCM_EREPLY / CCM_ETIMEOUT / CCM_EPROTO.
static int
s_wait (ccm_client_t *self, const char *want, cJSON **reply_p)
{
    int64_t deadline = zclock_mono () + self->timeout_ms;
    while (true) {
        int64_t left = deadline - zclock_mono ();
        if (left <= 0)
            return CCM_ETIMEOUT;
        zmq_pollitem_t item = {zsock_resolve (self->sock), 0, ZMQ_POLLIN, 0};
        if (zmq_poll (&item, 1, (long) left) <= 0)
            return CCM_ETIMEOUT;
        zmsg_t *msg = zmsg_recv (self->sock);
        if (!msg)
            return CCM_ETIMEOUT;
        zframe_t *status = zmsg_pop (msg);
        zframe_t *body = zmsg_pop (msg);
        cJSON *reply =
            body ? cJSON_ParseWithLength ((const char *) zframe_data (body), zframe_size (body))
                 : NULL;
        bool ok = status && zframe_streq (status, "ok");
        bool error = status && zframe_streq (status, "error");
        zframe_destroy (&status);
        zframe_destroy (&body);
        zmsg_destroy (&msg);
        if (!reply || (!ok && !error)) {
            cJSON_Delete (reply);
            return CCM_EPROTO;
        }
        cJSON *id = cJSON_GetObjectItemCaseSensitive (reply, "id");
        if (!cJSON_IsString (id) || strcmp (id->valuestring, want) != 0) {
            cJSON_Delete (reply);  //  a late answer to an earlier request
            continue;
        }
        *reply_p = reply;
        return ok ? 0 : CCM_EREPLY;
    }
}

int
ccm_client_call (ccm_client_t *self, const char *verb, cJSON *body, cJSON **reply_p)
{
    *reply_p = NULL;
    char id[32];
    snprintf (id, sizeof id, "c%lu", ++self->counter);
    cJSON *request = cJSON_Duplicate (body, true);
    if (!request)
        return CCM_EPROTO;
    cJSON_DeleteItemFromObjectCaseSensitive (request, "v");
    cJSON_DeleteItemFromObjectCaseSensitive (request, "id");
    cJSON_AddNumberToObject (request, "v", CCM_PROTOCOL_VERSION);
    cJSON_AddStringToObject (request, "id", id);
    char *text = cJSON_PrintUnformatted (request);
    cJSON_Delete (request);
    if (!text)
        return CCM_EPROTO;

    int rc = CCM_ETIMEOUT;
    for (int attempt = 0; attempt <= self->retries; attempt++) {
        if (attempt > 0) {
            //  A service told to stop does not wait out every retry.
            if (zsys_interrupted)
                break;
            //  Lazy Pirate: a fresh socket drops whatever the old one had queued.
            zsock_destroy (&self->sock);
            self->sock = ccm_bus_dealer_connect (self->endpoint);
            if (!self->sock)
                break;
        }
        zmsg_t *msg = zmsg_new ();
        zmsg_addstr (msg, verb);
        zmsg_addmem (msg, text, strlen (text));
        if (zmsg_send (&msg, self->sock)) {
            zmsg_destroy (&msg);
            continue;
        }
        rc = s_wait (self, id, reply_p);
        if (rc != CCM_ETIMEOUT)
            break;
    }
    free (text);
    return rc;
}

const char *
ccm_client_strerror (int rc, cJSON *reply)
{
    if (rc == CCM_EREPLY && reply) {
        cJSON *error = cJSON_GetObjectItemCaseSensitive (reply, "error");
        cJSON *message = cJSON_GetObjectItemCaseSensitive (error, "message");
        if (cJSON_IsString (message))
            return message->valuestring;
    }
    if (rc == CCM_ETIMEOUT)
        return "no answer from the store (is ccm running? try 'ccm up')";
    if (rc == CCM_EPROTO)
        return "malformed reply from the store";
    return rc == 0 ? "ok" : "request failed";
}

void
ccm_client_add_idem (cJSON *body)
{
    char idem[CCM_UUID_LEN + 1];
    ccm_uuid (idem);
    cJSON_AddStringToObject (body, "idem", idem);
}
