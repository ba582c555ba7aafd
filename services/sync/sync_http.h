/*  sync_http: HTTP requests on a zloop through libcurl's multi interface.
    Sockets are watched by zloop pollers and curl's timeouts are zloop
    timers, so a request never blocks the loop.                           */

#ifndef SYNC_HTTP_H_INCLUDED
#define SYNC_HTTP_H_INCLUDED

#include <curl/curl.h>
#include <czmq.h>

typedef struct _sync_http_t sync_http_t;

//  One finished request. result is curl's code (CURLE_OK if a whole HTTP
//  response came); status the HTTP status (0 without a response); body the
//  response (NUL-terminated, may be empty); error curl's explanation.
typedef struct {
    CURLcode result;
    long status;
    char *body;
    size_t size;
    char error[CURL_ERROR_SIZE];
} sync_http_resp_t;

//  Called once per request, on the loop, when it ends. resp is borrowed.
typedef void (sync_http_done_fn) (const sync_http_resp_t *resp, void *arg);

//  Creates the client on loop (borrowed). Returns NULL on failure.
sync_http_t *sync_http_new (zloop_t *loop, long timeout_ms, size_t max_response);

//  Aborts every request still running (their callbacks are not called).
void sync_http_destroy (sync_http_t **self_p);

//  Starts method url with headers (taken) and body (copied; NULL for none).
//  Returns 0, or -1 if the request could not even start.
int sync_http_start (sync_http_t *self, const char *method, const char *url,
                     struct curl_slist *headers, const char *body, sync_http_done_fn *done,
                     void *arg);

//  Requests still running.
int sync_http_running (sync_http_t *self);

#endif
