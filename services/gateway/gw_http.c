/*  gw_http: the gateway's HTTP side (protocol.md, "Gateway WebSocket API").

    - The web UI's static files, from the web root only (realpath-checked),
      with security headers (CSP, nosniff, DENY, no-referrer, no-store).
    - /api/auth, /login, /logout: the token as a cookie, never in a URL.
    - The WebSocket upgrade is judged before it happens (path /ws,
      subprotocol ccm.v1, Origin, token), and refused with a 403 or 400.  */

#include "gw_internal.h"

#include "ccm_log.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_BODY_MAX 1024  //  a POST /login body

static gw_auth_t *s_auth;          //  borrowed
static char s_web_root[PATH_MAX];  //  "" if none

void
gw_http_init (gw_auth_t *auth, const char *web_root)
{
    s_auth = auth;
    snprintf (s_web_root, sizeof s_web_root, "%s", web_root);
}

//  Where the UI's files are: gateway.web_root, else next to the binary
//  (../share/ccm/web when installed), else the source tree's web/.
void
gw_http_web_root (ccm_config_t *config, char *out, size_t len)
{
    char candidates[3][PATH_MAX + 64];
    snprintf (candidates[0], sizeof candidates[0], "%s",
              ccm_config_str (config, "gateway.web_root"));
    char self[PATH_MAX] = "";
    ssize_t n = readlink ("/proc/self/exe", self, sizeof self - 1);
    if (n > 0) {
        self[n] = 0;
        *strrchr (self, '/') = 0;
    }
    snprintf (candidates[1], sizeof candidates[1], "%s/../share/ccm/web", self);
    snprintf (candidates[2], sizeof candidates[2], "%s", CCM_SOURCE_WEB);
    out[0] = 0;
    for (int i = 0; i < 3; i++) {
        char real[PATH_MAX];
        if (candidates[i][0] && realpath (candidates[i], real)) {
            snprintf (out, len, "%s", real);
            return;
        }
        if (i == 0 && candidates[0][0]) {
            ccm_error ("gateway.web_root %s: %s", candidates[0], strerror (errno));
            return;
        }
    }
}

static const char *const s_security_headers[][2] = {
    {"content-security-policy:",
     "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'"},
    {"x-content-type-options:", "nosniff"},
    {"x-frame-options:", "DENY"},
    {"referrer-policy:", "no-referrer"},
    {"cache-control:", "no-store"},
};

static int
s_add_headers (struct lws *wsi, unsigned char **p, unsigned char *end, const char *extra[][2])
{
    for (size_t i = 0; i < sizeof s_security_headers / sizeof s_security_headers[0]; i++)
        if (lws_add_http_header_by_name (wsi, (const unsigned char *) s_security_headers[i][0],
                                         (const unsigned char *) s_security_headers[i][1],
                                         (int) strlen (s_security_headers[i][1]), p, end))
            return -1;
    for (int i = 0; extra && extra[i][0]; i++)
        if (lws_add_http_header_by_name (wsi, (const unsigned char *) extra[i][0],
                                         (const unsigned char *) extra[i][1],
                                         (int) strlen (extra[i][1]), p, end))
            return -1;
    return 0;
}

//  Writes a whole small response. Returns what the callback should return.
static int
s_respond (struct lws *wsi, unsigned int status, const char *type, const char *body,
           const char *extra[][2], bool upgrade)
{
    unsigned char buf[LWS_PRE + 4096], *start = buf + LWS_PRE, *p = start;
    unsigned char *end = buf + sizeof buf - 1;
    size_t len = body ? strlen (body) : 0;
    if (lws_add_http_common_headers (wsi, status, type, (lws_filepos_t) len, &p, end)
        || s_add_headers (wsi, &p, end, extra)
        || lws_finalize_write_http_header (wsi, start, &p, end))
        return -1;
    if (len) {
        unsigned char *out = malloc (LWS_PRE + len);
        if (!out)
            return -1;
        memcpy (out + LWS_PRE, body, len);
        int n = lws_write (wsi, out + LWS_PRE, len, LWS_WRITE_HTTP_FINAL);
        free (out);
        if (n < (int) len)
            return -1;
    }
    if (upgrade)
        return 1;
    return lws_http_transaction_completed (wsi) ? -1 : 0;
}

static int
s_text (struct lws *wsi, unsigned int status, const char *message)
{
    char body[512];
    snprintf (body, sizeof body, "%s\n", message);
    return s_respond (wsi, status, "text/plain; charset=utf-8", body, NULL, false);
}

static const char *
s_mime (const char *path)
{
    static const char *const types[][2] = {
        {".html", "text/html; charset=utf-8"},
        {".js", "text/javascript; charset=utf-8"},
        {".mjs", "text/javascript; charset=utf-8"},
        {".css", "text/css; charset=utf-8"},
        {".json", "application/json"},
        {".webmanifest", "application/manifest+json"},
        {".svg", "image/svg+xml"},
        {".png", "image/png"},
        {".ico", "image/x-icon"},
        {".txt", "text/plain; charset=utf-8"},
        {".woff2", "font/woff2"},
    };
    const char *dot = strrchr (path, '.');
    for (size_t i = 0; dot && i < sizeof types / sizeof types[0]; i++)
        if (strcmp (dot, types[i][0]) == 0)
            return types[i][1];
    return NULL;
}

static int
s_static (struct lws *wsi, const char *uri)
{
    //  Strict: [A-Za-z0-9._/-], no "..", no hidden files, under web_root.
    if (strcmp (uri, "/") == 0)
        uri = "/index.html";
    bool good = uri[0] == '/' && strlen (uri) < 256 && !strstr (uri, "/.") && !strstr (uri, "//");
    for (const char *c = uri; good && *c; c++)
        good = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9')
               || *c == '.' || *c == '/' || *c == '-' || *c == '_';
    const char *mime = good ? s_mime (uri) : NULL;
    char path[PATH_MAX + 256], real[PATH_MAX];
    snprintf (path, sizeof path, "%s%s", s_web_root, uri);
    struct stat st;
    if (!good || !mime || !s_web_root[0] || !realpath (path, real)
        || strncmp (real, s_web_root, strlen (s_web_root)) != 0 || stat (real, &st)
        || !S_ISREG (st.st_mode))
        return s_text (wsi, HTTP_STATUS_NOT_FOUND, "not found");
    unsigned char headers[1024], *p = headers;
    if (s_add_headers (wsi, &p, headers + sizeof headers, NULL))
        return -1;
    int n = lws_serve_http_file (wsi, real, mime, (const char *) headers, (int) (p - headers));
    if (n < 0 || (n > 0 && lws_http_transaction_completed (wsi)))
        return -1;
    return 0;
}

//  The value of cookie name in the request into out; its length or -1.
static int
s_cookie (struct lws *wsi, const char *name, char *out, size_t size)
{
    char cookies[2048];
    if (lws_hdr_total_length (wsi, WSI_TOKEN_HTTP_COOKIE) >= (int) sizeof cookies
        || lws_hdr_copy (wsi, cookies, sizeof cookies, WSI_TOKEN_HTTP_COOKIE) <= 0)
        return -1;
    size_t nlen = strlen (name);
    for (char *c = cookies; *c;) {
        while (*c == ' ' || *c == ';')
            c++;
        char *semi = strchr (c, ';');
        size_t len = semi ? (size_t) (semi - c) : strlen (c);
        if (len > nlen && strncmp (c, name, nlen) == 0 && c[nlen] == '=') {
            size_t vlen = len - nlen - 1;
            if (vlen >= size)
                return -1;
            memcpy (out, c + nlen + 1, vlen);
            out[vlen] = 0;
            explicit_bzero (cookies, sizeof cookies);
            return (int) vlen;
        }
        c += len;
    }
    explicit_bzero (cookies, sizeof cookies);
    return -1;
}

static bool
s_cookie_ok (struct lws *wsi)
{
    char value[300];
    int n = s_cookie (wsi, "ccm_token", value, sizeof value);
    bool ok = n > 0 && gw_auth_token_ok (s_auth, value, (size_t) n);
    explicit_bzero (value, sizeof value);
    return ok;
}

void
gw_http_peer (struct lws *wsi, char *out, size_t len)
{
    out[0] = 0;
    if (!lws_get_peer_simple (wsi, out, len))
        snprintf (out, len, "?");
}

//  Judges a WebSocket upgrade; returns 0 to let it proceed.
static int
s_upgrade (struct lws *wsi)
{
    char uri[256] = "", origin[512] = "", protocols[1024] = "", peer[64];
    gw_http_peer (wsi, peer, sizeof peer);
    lws_hdr_copy (wsi, uri, sizeof uri, WSI_TOKEN_GET_URI);
    if (lws_hdr_total_length (wsi, WSI_TOKEN_ORIGIN) >= (int) sizeof origin
        || lws_hdr_total_length (wsi, WSI_TOKEN_PROTOCOL) >= (int) sizeof protocols) {
        ccm_warn ("upgrade from %s refused: headers too long", peer);
        return -1;
    }
    bool has_origin = lws_hdr_copy (wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN) > 0;
    lws_hdr_copy (wsi, protocols, sizeof protocols, WSI_TOKEN_PROTOCOL);
    bool v1 = false;
    const char *token = NULL;
    size_t token_len = 0;
    for (char *save = NULL, *one = strtok_r (protocols, ", ", &save); one;
         one = strtok_r (NULL, ", ", &save)) {
        if (strcmp (one, "ccm.v1") == 0)
            v1 = true;
        else if (strncmp (one, "token.", 6) == 0) {
            token = one + 6;
            token_len = strlen (token);
        }
    }
    const char *why = NULL;
    unsigned int status = HTTP_STATUS_FORBIDDEN;
    if (strcmp (uri, "/ws") != 0) {
        why = "the WebSocket lives at /ws";
        status = HTTP_STATUS_NOT_FOUND;
    }
    else if (!v1) {
        why = "the subprotocol ccm.v1 is required";
        status = HTTP_STATUS_BAD_REQUEST;
    }
    else if (has_origin && !gw_auth_origin_ok (s_auth, origin))
        why = "origin not allowed";
    else if (gw_auth_has_token (s_auth) && !(token && gw_auth_token_ok (s_auth, token, token_len))
             && !s_cookie_ok (wsi))
        why = token ? "wrong token" : "a token is required";
    explicit_bzero (protocols, sizeof protocols);
    if (!why)
        return 0;
    //  The origin is the browser's claim, not a secret; the token never is logged.
    ccm_warn ("WebSocket upgrade from %s refused: %s%s%.200s%s", peer, why,
              has_origin ? " (origin " : "", has_origin ? origin : "", has_origin ? ")" : "");
    //  Written whole by hand: at this point lws would answer HTTP/1.0.
    char response[LWS_PRE + 1024];
    char *text = response + LWS_PRE;
    int body = (int) strlen (why) + 10;
    int n = snprintf (text, 1024,
                      "HTTP/1.1 %u %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                      "content-length: %d\r\nconnection: close\r\n\r\nrefused: %s\n",
                      status,
                      status == HTTP_STATUS_FORBIDDEN   ? "Forbidden"
                      : status == HTTP_STATUS_NOT_FOUND ? "Not Found"
                                                        : "Bad Request",
                      body, why);
    if (lws_write (wsi, (unsigned char *) text, (size_t) n, LWS_WRITE_HTTP_HEADERS) < n)
        return -1;
    return 1;
}

int
gw_http_cb (struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    gw_http_t *http = user;
    switch (reason) {
        case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
            return s_upgrade (wsi);
        case LWS_CALLBACK_HTTP: {
            const char *uri = in;
            bool post = lws_hdr_total_length (wsi, WSI_TOKEN_POST_URI) > 0;
            bool get = lws_hdr_total_length (wsi, WSI_TOKEN_GET_URI) > 0;
            if (strcmp (uri, "/api/auth") == 0 && get) {
                bool need = gw_auth_has_token (s_auth);
                char body[96];
                snprintf (body, sizeof body, "{\"token_required\":%s,\"authenticated\":%s}\n",
                          need ? "true" : "false", !need || s_cookie_ok (wsi) ? "true" : "false");
                return s_respond (wsi, HTTP_STATUS_OK, "application/json", body, NULL, false);
            }
            if (strcmp (uri, "/login") == 0 && post) {
                char origin[512] = "";
                if (lws_hdr_copy (wsi, origin, sizeof origin, WSI_TOKEN_ORIGIN) > 0
                    && !gw_auth_origin_ok (s_auth, origin))
                    return s_text (wsi, HTTP_STATUS_FORBIDDEN, "origin not allowed");
                memset (http, 0, sizeof *http);
                http->login = true;
                return 0;  //  the body follows
            }
            if (strcmp (uri, "/logout") == 0 && post) {
                const char *extra[][2] = {
                    {"set-cookie:", "ccm_token=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"},
                    {"location:", "/"},
                    {NULL, NULL}};
                return s_respond (wsi, HTTP_STATUS_SEE_OTHER, "text/plain", "", extra, false);
            }
            if (strcmp (uri, "/ws") == 0)
                return s_text (wsi, HTTP_STATUS_BAD_REQUEST, "this is the WebSocket endpoint");
            if (!get)
                return s_text (wsi, HTTP_STATUS_METHOD_NOT_ALLOWED, "method not allowed");
            return s_static (wsi, uri);
        }
        case LWS_CALLBACK_HTTP_BODY:
            if (!http->login)
                return -1;
            if (http->len + len > S_BODY_MAX)
                http->over = true;
            else {
                char *grown = realloc (http->body, http->len + len + 1);
                if (!grown)
                    return -1;
                http->body = grown;
                memcpy (http->body + http->len, in, len);
                http->len += len;
                http->body[http->len] = 0;
            }
            return 0;
        case LWS_CALLBACK_HTTP_BODY_COMPLETION: {
            if (!http->login)
                return -1;
            char peer[64];
            gw_http_peer (wsi, peer, sizeof peer);
            const char *value = NULL;
            for (char *save = NULL,
                      *pair = http->body && !http->over ? strtok_r (http->body, "&", &save) : NULL;
                 pair; pair = strtok_r (NULL, "&", &save))
                if (strncmp (pair, "token=", 6) == 0)
                    value = pair + 6;
            bool ok = value && gw_auth_has_token (s_auth)
                      && gw_auth_token_ok (s_auth, value, strlen (value));
            int rc;
            if (ok) {
                char cookie[400];
                snprintf (cookie, sizeof cookie, "ccm_token=%s; HttpOnly; SameSite=Strict; Path=/",
                          value);
                const char *extra[][2] = {
                    {"set-cookie:", cookie}, {"location:", "/"}, {NULL, NULL}};
                rc = s_respond (wsi, HTTP_STATUS_SEE_OTHER, "text/plain", "", extra, false);
                explicit_bzero (cookie, sizeof cookie);
            }
            else {
                ccm_warn ("login from %s refused: %s", peer,
                          http->over ? "body too large" : "wrong or no token");
                rc = s_text (wsi,
                             http->over ? HTTP_STATUS_REQ_ENTITY_TOO_LARGE : HTTP_STATUS_FORBIDDEN,
                             http->over ? "too large" : "wrong token");
            }
            if (http->body)
                explicit_bzero (http->body, http->len);
            free (http->body);
            http->body = NULL;
            http->login = false;
            return rc;
        }
        case LWS_CALLBACK_CLOSED_HTTP:
            if (http && http->body) {
                explicit_bzero (http->body, http->len);
                free (http->body);
                http->body = NULL;
            }
            return 0;
        default:
            return lws_callback_http_dummy (wsi, reason, user, in, len);
    }
}
