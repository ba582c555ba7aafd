/*  ccm_bus: socket set-up shared by every service.                         */

#include "ccm_bus.h"

#include <errno.h>
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
    if (zsock_bind (sock, "%s", endpoint) < 0) {
        zsock_destroy (&sock);
        return NULL;
    }
    return sock;
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
    if (zsock_bind (sock, "%s", endpoint) < 0) {
        zsock_destroy (&sock);
        return NULL;
    }
    return sock;
}

zsock_t *
ccm_bus_dealer_connect (const char *endpoint)
{
    zsock_t *sock = zsock_new (ZMQ_DEALER);
    if (!sock)
        return NULL;
    s_common_options (sock, 0);
    if (zsock_connect (sock, "%s", endpoint) < 0) {
        zsock_destroy (&sock);
        return NULL;
    }
    return sock;
}

zsock_t *
ccm_bus_sub_connect (const char *endpoint, const char *prefix)
{
    zsock_t *sock = zsock_new (ZMQ_SUB);
    if (!sock)
        return NULL;
    s_common_options (sock, 0);
    zsock_set_subscribe (sock, prefix);
    if (zsock_connect (sock, "%s", endpoint) < 0) {
        zsock_destroy (&sock);
        return NULL;
    }
    return sock;
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
