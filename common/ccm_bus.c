/*  ccm_bus: socket set-up shared by every service.                         */

#include "ccm_bus.h"

#include "ccm_log.h"
#include "ccm_msg.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

int
ccm_bus_prepare (const char *endpoint)
{
    if (strncmp (endpoint, "ipc://", 6) != 0)
        return 0;
    char dir[4096];
    snprintf (dir, sizeof dir, "%s", endpoint + 6);
    char *slash = strrchr (dir, '/');
    if (!slash || slash == dir)
        return 0;
    *slash = 0;
    //  Create each missing parent; only the socket's own directory is forced to 0700.
    for (char *p = dir + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir (dir, 0700) && errno != EEXIST)
                return -1;
            *p = '/';
        }
    if (mkdir (dir, 0700) && errno != EEXIST)
        return -1;
    return chmod (dir, 0700);
}

static void
s_common_options (zsock_t *sock, int linger)
{
    zsock_set_linger (sock, linger);
    zsock_set_sndhwm (sock, 100000);
    zsock_set_rcvhwm (sock, 100000);
}

//  --------------------------------------------------------------------------
//  CurveZMQ on tcp://

static struct {
    zcert_t *cert;             //  this machine's certificate, NULL if none
    char cert_path[PATH_MAX];  //  where it is (or would be)
    char server_key[41];       //  the hub's public key (Z85), "" if not set
    char trusted[PATH_MAX];    //  the allowed-keys directory
    int heartbeat_ms, handshake_ms;
    bool plain;         //  bus.curve=off: loopback tcp:// in the clear (bench/tcp only)
    zactor_t *auth;     //  zauth, started at the first tcp:// server
    zactor_t *watcher;  //  logs and counts refused handshakes
    atomic_uint_fast64_t refusals;
} s_curve = {.heartbeat_ms = 1000, .handshake_ms = 5000};

static bool
s_is_tcp (const char *endpoint)
{
    return strncmp (endpoint, "tcp://", 6) == 0;
}

//  A 40-character Z85 public key.
static bool
s_z85_key (const char *text)
{
    return strlen (text) == 40
           && strspn (text, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                            ".-:+=^!/*?&<>()[]{}@%$#")
                  == 40;
}

//  A tcp:// endpoint whose host is a loopback address (127.0.0.0/8, ::1,
//  localhost): only those may go without CurveZMQ.
static bool
s_loopback (const char *endpoint)
{
    const char *host = endpoint + 6;
    if (strncmp (host, "127.", 4) == 0 || strncmp (host, "localhost:", 10) == 0
        || strncmp (host, "[::1]:", 6) == 0)
        return strchr (host, ';') == NULL;  //  no "source;destination" form
    return false;
}

int
ccm_bus_secure (ccm_config_t *config, char **error)
{
    static bool registered = false;
    if (!registered) {
        //  Runs before zsys's own exit handler (registered earlier, by zsys_init).
        atexit (ccm_bus_secure_end);
        registered = true;
    }
    snprintf (s_curve.cert_path, sizeof s_curve.cert_path, "%s",
              ccm_config_str (config, "bus.cert"));
    snprintf (s_curve.trusted, sizeof s_curve.trusted, "%s",
              ccm_config_str (config, "bus.trusted"));
    s_curve.heartbeat_ms = (int) ccm_config_int (config, "bus.heartbeat_ms");
    s_curve.handshake_ms = (int) ccm_config_int (config, "bus.handshake_ms");
    const char *curve = ccm_config_str (config, "bus.curve");
    if (strcmp (curve, "on") && strcmp (curve, "off"))
        return ccm_set_error (error, "bus.curve: must be on or off, not '%s'", curve);
    s_curve.plain = strcmp (curve, "off") == 0;
    //  Plain TCP exists to measure what CurveZMQ costs (bench/tcp), never
    //  to carry ccm between machines.
    static const char *const endpoints[] = {"store.endpoint", "store.pub_endpoint",
                                            "router.endpoint", NULL};
    for (const char *const *key = endpoints; s_curve.plain && *key; key++) {
        const char *endpoint = ccm_config_str (config, *key);
        if (s_is_tcp (endpoint) && !s_loopback (endpoint))
            return ccm_set_error (error,
                                  "bus.curve=off is for benchmarks on loopback only, and %s is"
                                  " %s; tcp:// between machines always uses CurveZMQ",
                                  *key, endpoint);
    }
    zcert_destroy (&s_curve.cert);
    struct stat st;
    if (stat (s_curve.cert_path, &st) == 0) {
        char secret[PATH_MAX + 8];
        snprintf (secret, sizeof secret, "%s_secret", s_curve.cert_path);
        if (stat (secret, &st))
            return ccm_set_error (error,
                                  "bus.cert: %s has no secret part (%s: %s); run 'ccm keys gen'",
                                  s_curve.cert_path, secret, strerror (errno));
        if (st.st_mode & 077)
            return ccm_set_error (error,
                                  "bus.cert: %s is readable by others (mode %03o); it must be 0600",
                                  secret, (unsigned) (st.st_mode & 0777));
        s_curve.cert = zcert_load (s_curve.cert_path);
        if (!s_curve.cert || !s_z85_key (zcert_public_txt (s_curve.cert))
            || strcmp (zcert_secret_txt (s_curve.cert), "0000000000000000000000000000000000000000")
                   == 0) {
            zcert_destroy (&s_curve.cert);
            return ccm_set_error (error,
                                  "bus.cert: %s is not a ZeroMQ certificate with a public and a"
                                  " secret key",
                                  s_curve.cert_path);
        }
    }
    const char *server = ccm_config_str (config, "bus.server_key");
    s_curve.server_key[0] = 0;
    if (*server && s_z85_key (server))
        snprintf (s_curve.server_key, sizeof s_curve.server_key, "%s", server);
    else if (*server) {
        zcert_t *hub = stat (server, &st) == 0 ? zcert_load (server) : NULL;
        if (!hub || !s_z85_key (zcert_public_txt (hub))) {
            zcert_destroy (&hub);
            return ccm_set_error (error,
                                  "bus.server_key: '%s' is neither a 40-character Z85 key nor a"
                                  " public certificate file",
                                  server);
        }
        snprintf (s_curve.server_key, sizeof s_curve.server_key, "%s", zcert_public_txt (hub));
        zcert_destroy (&hub);
    }
    return 0;
}

//  The watcher: reads every secured server's monitor, and logs and counts
//  each refused handshake. Monitors arrive on its pipe as pointers.
static void
s_watcher (zsock_t *pipe, void *args)
{
    (void) args;
    zpoller_t *poller = zpoller_new (pipe, NULL);
    zlistx_t *monitors = zlistx_new ();
    zlistx_set_destructor (monitors, (zlistx_destructor_fn *) zactor_destroy);
    zsock_signal (pipe, 0);
    while (!zsys_interrupted) {
        void *which = zpoller_wait (poller, -1);
        if (which == pipe) {
            zmsg_t *msg = zmsg_recv (pipe);
            char *command = msg ? zmsg_popstr (msg) : NULL;
            bool stop = !command || strcmp (command, "$TERM") == 0;
            if (command && strcmp (command, "WATCH") == 0) {
                //  zsock_send's "p": the pointer's bytes, in a frame.
                zframe_t *frame = zmsg_pop (msg);
                zactor_t *monitor = NULL;
                if (frame && zframe_size (frame) == sizeof monitor) {
                    memcpy (&monitor, zframe_data (frame), sizeof monitor);
                    zlistx_add_end (monitors, monitor);
                    zpoller_add (poller, monitor);
                }
                zframe_destroy (&frame);
            }
            zstr_free (&command);
            zmsg_destroy (&msg);
            if (stop)
                break;
        }
        else if (which) {
            zmsg_t *msg = zmsg_recv (which);
            char *event = msg ? zmsg_popstr (msg) : NULL;
            char *value = msg ? zmsg_popstr (msg) : NULL;
            char *address = msg ? zmsg_popstr (msg) : NULL;
            if (event && strncmp (event, "HANDSHAKE_FAILED", 16) == 0) {
                uint64_t count = atomic_fetch_add (&s_curve.refusals, 1) + 1;
                const char *why = strcmp (event, "HANDSHAKE_FAILED_AUTH") == 0
                                      ? "its key is not trusted (see zauth's line above for"
                                        " its address and key)"
                                  : strcmp (event, "HANDSHAKE_FAILED_PROTOCOL") == 0
                                      ? "not a CURVE client (plain, or a wrong server key)"
                                      : "the handshake failed (a plain client, a wrong server"
                                        " key, or a broken link)";
                ccm_warn ("refused a peer on %s: %s [%s %s]; %llu refused so far",
                          address ? address : "?", why, event, value ? value : "",
                          (unsigned long long) count);
            }
            zstr_free (&event);
            zstr_free (&value);
            zstr_free (&address);
            zmsg_destroy (&msg);
        }
        else if (zpoller_terminated (poller))
            break;
    }
    zlistx_destroy (&monitors);
    zpoller_destroy (&poller);
}

const char *
ccm_bus_public_key (void)
{
    return s_curve.cert ? zcert_public_txt (s_curve.cert) : "";
}

uint64_t
ccm_bus_refusals (void)
{
    return atomic_load (&s_curve.refusals);
}

void
ccm_bus_secure_end (void)
{
    zactor_destroy (&s_curve.watcher);
    zactor_destroy (&s_curve.auth);
    zcert_destroy (&s_curve.cert);
}

//  ZMTP heartbeats and a handshake limit on a tcp:// socket, so a dead
//  link is noticed and a stuck handshake is dropped.
static void
s_tcp_options (zsock_t *sock)
{
    zsock_set_heartbeat_ivl (sock, s_curve.heartbeat_ms);
    zsock_set_heartbeat_timeout (sock, s_curve.heartbeat_ms * 3);
    zsock_set_heartbeat_ttl (sock, s_curve.heartbeat_ms * 3);
    zsock_set_handshake_ivl (sock, s_curve.handshake_ms);
    zsock_set_reconnect_ivl (sock, 100);
    zsock_set_reconnect_ivl_max (sock, 5000);
}

//  Makes sock a CURVE server checked by zauth; -1 (logged) if it cannot.
static int
s_curve_server (zsock_t *sock, const char *endpoint)
{
    if (!s_curve.cert) {
        ccm_error ("%s: a tcp:// endpoint needs this machine's certificate, and %s has none;"
                   " run 'ccm keys gen'",
                   endpoint, s_curve.cert_path);
        return -1;
    }
    struct stat st;
    if (stat (s_curve.trusted, &st) || !S_ISDIR (st.st_mode)) {
        ccm_error ("%s: bus.trusted %s is not a directory; run 'ccm keys trust FILE'", endpoint,
                   s_curve.trusted);
        return -1;
    }
    if (!s_curve.auth) {
        s_curve.auth = zactor_new (zauth, NULL);
        zstr_sendx (s_curve.auth, "VERBOSE", NULL);
        zsock_wait (s_curve.auth);
        //  Only the keys in bus.trusted: never CURVE_ALLOW_ANY.
        zstr_sendx (s_curve.auth, "CURVE", s_curve.trusted, NULL);
        zsock_wait (s_curve.auth);
        s_curve.watcher = zactor_new (s_watcher, NULL);
    }
    zcert_apply (s_curve.cert, sock);
    zsock_set_curve_server (sock, 1);
    zsock_set_zap_domain (sock, "ccm");
    s_tcp_options (sock);
    zactor_t *monitor = zactor_new (zmonitor, sock);
    zstr_sendx (monitor, "LISTEN", "HANDSHAKE_FAILED_NO_DETAIL", "HANDSHAKE_FAILED_PROTOCOL",
                "HANDSHAKE_FAILED_AUTH", NULL);
    zstr_sendx (monitor, "START", NULL);
    zsock_wait (monitor);
    zsock_send (s_curve.watcher, "sp", "WATCH", monitor);
    return 0;
}

//  Makes sock a CURVE client of the hub; -1 (logged) if it cannot.
static int
s_curve_client (zsock_t *sock, const char *endpoint)
{
    if (!s_curve.cert) {
        ccm_error ("%s: a tcp:// endpoint needs this machine's certificate, and %s has none;"
                   " run 'ccm keys gen'",
                   endpoint, s_curve.cert_path);
        return -1;
    }
    if (!*s_curve.server_key) {
        ccm_error ("%s: bus.server_key is not set; it must be the hub's public key"
                   " (its certificate file, from 'ccm keys gen' on the hub)",
                   endpoint);
        return -1;
    }
    zcert_apply (s_curve.cert, sock);
    zsock_set_curve_serverkey (sock, s_curve.server_key);
    s_tcp_options (sock);
    return 0;
}

//  Binds sock (made secure first on tcp://); destroys it and returns NULL on failure.
//  bus.curve=off: tcp:// in the clear, on loopback only; -1 (logged) otherwise.
static int
s_plain (zsock_t *sock, const char *endpoint)
{
    if (!s_loopback (endpoint)) {
        ccm_error ("%s: bus.curve=off is for loopback only; tcp:// between machines always"
                   " uses CurveZMQ",
                   endpoint);
        return -1;
    }
    s_tcp_options (sock);
    return 0;
}

static zsock_t *
s_bind (zsock_t *sock, const char *endpoint)
{
    if (s_is_tcp (endpoint)
        && (s_curve.plain ? s_plain (sock, endpoint) : s_curve_server (sock, endpoint)))
        zsock_destroy (&sock);
    else if (zsock_bind (sock, "%s", endpoint) < 0) {
        ccm_error ("cannot bind %s: %s", endpoint, zmq_strerror (zmq_errno ()));
        zsock_destroy (&sock);
    }
    return sock;
}

//  Connects sock (made secure first on tcp://); destroys it and returns NULL on failure.
static zsock_t *
s_connect (zsock_t *sock, const char *endpoint)
{
    if (s_is_tcp (endpoint)
        && (s_curve.plain ? s_plain (sock, endpoint) : s_curve_client (sock, endpoint)))
        zsock_destroy (&sock);
    else if (zsock_connect (sock, "%s", endpoint) < 0) {
        ccm_error ("cannot connect to %s: %s", endpoint, zmq_strerror (zmq_errno ()));
        zsock_destroy (&sock);
    }
    return sock;
}

zsock_t *
ccm_bus_router_bind (const char *endpoint, size_t max_message)
{
    if (ccm_bus_prepare (endpoint))
        return NULL;
    zsock_t *sock = zsock_new (ZMQ_ROUTER);
    if (!sock)
        return NULL;
    s_common_options (sock, 1000);
    zsock_set_router_mandatory (sock, 1);
    //  A client that never reads its replies must not stall the service: a
    //  reply that meets a full pipe fails at once (EAGAIN) instead of blocking.
    zsock_set_sndtimeo (sock, 0);
    //  Bodies over the protocol limit still get a clear error; only far larger
    //  ones are cut off by libzmq, to bound memory.
    zsock_set_maxmsgsize (sock, (int64_t) max_message);
    return s_bind (sock, endpoint);
}

zsock_t *
ccm_bus_pub_bind (const char *endpoint)
{
    if (ccm_bus_prepare (endpoint))
        return NULL;
    zsock_t *sock = zsock_new (ZMQ_PUB);
    if (!sock)
        return NULL;
    s_common_options (sock, 1000);
    return s_bind (sock, endpoint);
}

zsock_t *
ccm_bus_dealer_connect (const char *endpoint)
{
    zsock_t *sock = zsock_new (ZMQ_DEALER);
    if (!sock)
        return NULL;
    s_common_options (sock, 0);
    return s_connect (sock, endpoint);
}

zsock_t *
ccm_bus_sub_connect (const char *endpoint, const char *prefix)
{
    zsock_t *sock = zsock_new (ZMQ_SUB);
    if (!sock)
        return NULL;
    s_common_options (sock, 0);
    zsock_set_subscribe (sock, prefix);
    return s_connect (sock, endpoint);
}

int
ccm_bus_reachable (const char *endpoint)
{
    if (strncmp (endpoint, "ipc://", 6) != 0)
        return 0;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen (endpoint + 6) >= sizeof addr.sun_path)
        return 0;
    strcpy (addr.sun_path, endpoint + 6);
    int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int rc = connect (fd, (struct sockaddr *) &addr, sizeof addr);
    close (fd);
    return rc == 0 ? 0 : -1;
}
