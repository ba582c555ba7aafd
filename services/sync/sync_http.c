/*  sync_http: libcurl multi driven by zloop (curl's "multi_socket" API).

    curl says which sockets to watch (CURLMOPT_SOCKETFUNCTION): each becomes
    a zloop poller on its fd. curl says when it needs a timeout
    (CURLMOPT_TIMERFUNCTION): that is a one-shot zloop timer. Either event
    calls curl_multi_socket_action, then finished transfers are collected. */

#include "sync_http.h"

#include "ccm_log.h"

typedef struct {
    sync_http_t *owner;
    CURL *easy;
    struct curl_slist *headers;
    char *body_out;  //  the request body
    char *data;      //  the response
    size_t size, cap;
    bool too_large;
    char error[CURL_ERROR_SIZE];
    sync_http_done_fn *done;
    void *arg;
} s_req_t;

//  A socket curl asked us to watch.
typedef struct {
    zmq_pollitem_t item;
    bool polled;
} s_sock_t;

struct _sync_http_t {
    zloop_t *loop;
    CURLM *multi;
    int timer_id;  //  0: none
    int running;
    long timeout_ms;
    size_t max_response;
    zlist_t *requests;  //  s_req_t, in flight
};

static void s_check_done (sync_http_t *self);

static size_t
s_write (char *data, size_t size, size_t count, void *arg)
{
    s_req_t *req = (s_req_t *) arg;
    size_t len = size * count;
    if (req->size + len > req->owner->max_response) {
        req->too_large = true;
        return 0;  //  curl fails the transfer with CURLE_WRITE_ERROR
    }
    if (req->size + len + 1 > req->cap) {
        size_t cap = req->cap ? req->cap * 2 : 16384;
        while (cap < req->size + len + 1)
            cap *= 2;
        char *grown = realloc (req->data, cap);
        if (!grown)
            return 0;
        req->data = grown;
        req->cap = cap;
    }
    memcpy (req->data + req->size, data, len);
    req->size += len;
    req->data[req->size] = '\0';
    return len;
}

static void
s_req_destroy (s_req_t **req_p)
{
    s_req_t *req = *req_p;
    if (req) {
        curl_slist_free_all (req->headers);
        free (req->body_out);
        free (req->data);
        free (req);
        *req_p = NULL;
    }
}

static int
s_on_socket (zloop_t *loop, zmq_pollitem_t *item, void *arg)
{
    (void) loop;
    sync_http_t *self = (sync_http_t *) arg;
    int mask = 0;
    if (item->revents & ZMQ_POLLIN)
        mask |= CURL_CSELECT_IN;
    if (item->revents & ZMQ_POLLOUT)
        mask |= CURL_CSELECT_OUT;
    if (item->revents & ZMQ_POLLERR)
        mask |= CURL_CSELECT_ERR;
    curl_multi_socket_action (self->multi, item->fd, mask, &self->running);
    s_check_done (self);
    return 0;
}

static int
s_on_timer (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop, (void) timer_id;
    sync_http_t *self = (sync_http_t *) arg;
    self->timer_id = 0;
    curl_multi_socket_action (self->multi, CURL_SOCKET_TIMEOUT, 0, &self->running);
    s_check_done (self);
    return 0;
}

//  CURLMOPT_SOCKETFUNCTION: watch fd for what curl wants, or stop.
static int
s_socket_cb (CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void) easy;
    sync_http_t *self = (sync_http_t *) userp;
    s_sock_t *sock = (s_sock_t *) socketp;
    if (sock && sock->polled) {
        zloop_poller_end (self->loop, &sock->item);
        sock->polled = false;
    }
    if (what == CURL_POLL_REMOVE) {
        free (sock);
        curl_multi_assign (self->multi, fd, NULL);
        return 0;
    }
    if (!sock) {
        sock = calloc (1, sizeof *sock);
        if (!sock)
            return -1;
        curl_multi_assign (self->multi, fd, sock);
    }
    sock->item = (zmq_pollitem_t){NULL, fd, 0, 0};
    if (what & CURL_POLL_IN)
        sock->item.events |= ZMQ_POLLIN;
    if (what & CURL_POLL_OUT)
        sock->item.events |= ZMQ_POLLOUT;
    if (zloop_poller (self->loop, &sock->item, s_on_socket, self) == 0) {
        zloop_poller_set_tolerant (self->loop, &sock->item);
        sock->polled = true;
    }
    else
        ccm_error ("cannot watch socket %d", (int) fd);
    return 0;
}

//  CURLMOPT_TIMERFUNCTION: one timer, replaced at each call.
static int
s_timer_cb (CURLM *multi, long timeout_ms, void *userp)
{
    (void) multi;
    sync_http_t *self = (sync_http_t *) userp;
    if (self->timer_id) {
        zloop_timer_end (self->loop, self->timer_id);
        self->timer_id = 0;
    }
    if (timeout_ms >= 0) {
        int id = zloop_timer (self->loop, (size_t) (timeout_ms > 0 ? timeout_ms : 1), 1, s_on_timer,
                              self);
        self->timer_id = id > 0 ? id : 0;
    }
    return 0;
}

static void
s_check_done (sync_http_t *self)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read (self->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        s_req_t *req = NULL;
        curl_easy_getinfo (easy, CURLINFO_PRIVATE, (char **) &req);
        sync_http_resp_t resp = {.result = msg->data.result};
        curl_easy_getinfo (easy, CURLINFO_RESPONSE_CODE, &resp.status);
        resp.body = req->data ? req->data : (char *) "";
        resp.size = req->size;
        if (req->too_large)
            snprintf (resp.error, sizeof resp.error, "response larger than %zu bytes",
                      self->max_response);
        else
            snprintf (resp.error, sizeof resp.error, "%s",
                      req->error[0] ? req->error : curl_easy_strerror (resp.result));
        curl_multi_remove_handle (self->multi, easy);
        curl_easy_cleanup (easy);
        zlist_remove (self->requests, req);
        req->done (&resp, req->arg);
        s_req_destroy (&req);
    }
}

sync_http_t *
sync_http_new (zloop_t *loop, long timeout_ms, size_t max_response)
{
    sync_http_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->timeout_ms = timeout_ms;
    self->max_response = max_response;
    self->multi = curl_multi_init ();
    self->requests = zlist_new ();
    if (!self->multi || !self->requests) {
        sync_http_destroy (&self);
        return NULL;
    }
    curl_multi_setopt (self->multi, CURLMOPT_SOCKETFUNCTION, s_socket_cb);
    curl_multi_setopt (self->multi, CURLMOPT_SOCKETDATA, self);
    curl_multi_setopt (self->multi, CURLMOPT_TIMERFUNCTION, s_timer_cb);
    curl_multi_setopt (self->multi, CURLMOPT_TIMERDATA, self);
    return self;
}

void
sync_http_destroy (sync_http_t **self_p)
{
    if (self_p && *self_p) {
        sync_http_t *self = *self_p;
        s_req_t *req;
        while (self->requests && (req = (s_req_t *) zlist_pop (self->requests))) {
            curl_multi_remove_handle (self->multi, req->easy);
            curl_easy_cleanup (req->easy);
            s_req_destroy (&req);
        }
        zlist_destroy (&self->requests);
        if (self->timer_id)
            zloop_timer_end (self->loop, self->timer_id);
        if (self->multi)
            curl_multi_cleanup (self->multi);
        free (self);
        *self_p = NULL;
    }
}

int
sync_http_start (sync_http_t *self, const char *method, const char *url, struct curl_slist *headers,
                 const char *body, sync_http_done_fn *done, void *arg)
{
    s_req_t *req = calloc (1, sizeof *req);
    CURL *easy = curl_easy_init ();
    if (!req || !easy) {
        free (req);
        curl_easy_cleanup (easy);
        curl_slist_free_all (headers);
        return -1;
    }
    req->owner = self;
    req->easy = easy;
    req->headers = headers;
    req->done = done;
    req->arg = arg;
    if (body && !(req->body_out = strdup (body))) {
        s_req_destroy (&req);
        curl_easy_cleanup (easy);
        return -1;
    }
    curl_easy_setopt (easy, CURLOPT_URL, url);
    curl_easy_setopt (easy, CURLOPT_CUSTOMREQUEST, method);
    if (req->body_out) {
        curl_easy_setopt (easy, CURLOPT_POSTFIELDS, req->body_out);
        curl_easy_setopt (easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) strlen (req->body_out));
    }
    curl_easy_setopt (easy, CURLOPT_HTTPHEADER, req->headers);
    curl_easy_setopt (easy, CURLOPT_WRITEFUNCTION, s_write);
    curl_easy_setopt (easy, CURLOPT_WRITEDATA, req);
    curl_easy_setopt (easy, CURLOPT_ERRORBUFFER, req->error);
    curl_easy_setopt (easy, CURLOPT_PRIVATE, req);
    curl_easy_setopt (easy, CURLOPT_TIMEOUT_MS, self->timeout_ms);
    curl_easy_setopt (easy, CURLOPT_CONNECTTIMEOUT_MS,
                      self->timeout_ms < 5000 ? self->timeout_ms : 5000L);
    curl_easy_setopt (easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt (easy, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt (easy, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt (easy, CURLOPT_USERAGENT, "ccm-sync/0.1");
    if (curl_multi_add_handle (self->multi, easy) != CURLM_OK) {
        curl_easy_cleanup (easy);
        s_req_destroy (&req);
        return -1;
    }
    zlist_append (self->requests, req);
    return 0;
}

int
sync_http_running (sync_http_t *self)
{
    return (int) zlist_size (self->requests);
}
