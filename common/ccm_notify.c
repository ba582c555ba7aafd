/*  ccm_notify: sd_notify over a unix datagram socket.                      */

#include "ccm_notify.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int
ccm_notify (const char *state)
{
    const char *path = getenv ("NOTIFY_SOCKET");
    if (!path || !*path)
        return 0;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t len = strlen (path);
    if (len >= sizeof addr.sun_path)
        return -1;
    memcpy (addr.sun_path, path, len);
    if (addr.sun_path[0] == '@')  //  abstract namespace
        addr.sun_path[0] = 0;
    int fd = socket (AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    ssize_t sent = sendto (fd, state, strlen (state), MSG_NOSIGNAL, (struct sockaddr *) &addr,
                           (socklen_t) (offsetof (struct sockaddr_un, sun_path) + len));
    close (fd);
    return sent < 0 ? -1 : 0;
}

int64_t
ccm_notify_watchdog_ms (void)
{
    const char *usec = getenv ("WATCHDOG_USEC");
    const char *pid = getenv ("WATCHDOG_PID");
    if (!usec)
        return 0;
    if (pid && *pid && atol (pid) != (long) getpid ())
        return 0;
    return atoll (usec) / 1000;
}
