/*  ccm_bus: endpoints and sockets with their options set explicitly.

    Endpoints come from config (ccm_config.h) and default to IPC sockets
    under $CCM_HOME/run/, a directory of mode 0700; any may be tcp://.       */

#ifndef CCM_BUS_H_INCLUDED
#define CCM_BUS_H_INCLUDED

#include <czmq.h>

//  Makes sure an ipc:// endpoint's directory exists with mode 0700; does
//  nothing for other transports. Returns 0, or -1 with errno set.
int ccm_bus_prepare (const char *endpoint);

//  Binds a ROUTER for requests: linger 0 on close is never relied on, so it
//  is set to 1000 ms; ROUTER_MANDATORY on; high-water marks raised. Returns
//  NULL if the bind fails. Caller owns.
zsock_t *ccm_bus_router_bind (const char *endpoint, size_t max_message);

//  Binds a PUB for events. Caller owns; NULL on failure.
zsock_t *ccm_bus_pub_bind (const char *endpoint);

//  Connects a DEALER for requests, with linger 0 (a request is retried, never
//  relied on to flush). Caller owns; NULL on failure.
zsock_t *ccm_bus_dealer_connect (const char *endpoint);

//  Connects a SUB subscribed to prefix. Caller owns; NULL on failure.
zsock_t *ccm_bus_sub_connect (const char *endpoint, const char *prefix);

//  Returns -1 if endpoint is an ipc:// socket that nobody listens on (so a
//  caller can say "not running" at once instead of waiting for a timeout),
//  0 if it may be reachable (always 0 for tcp://).
int ccm_bus_reachable (const char *endpoint);

#endif
