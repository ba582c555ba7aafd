/*  ccm_bus: endpoints and sockets with their options set explicitly.

    Endpoints come from config (ccm_config.h) and default to IPC sockets
    under $CCM_HOME/run/, a directory of mode 0700; any may be tcp://.       */

#ifndef CCM_BUS_H_INCLUDED
#define CCM_BUS_H_INCLUDED

#include "ccm_config.h"

#include <czmq.h>

//  CurveZMQ for every tcp:// socket. Loads this machine's certificate
//  (bus.cert, with its secret part in bus.cert + "_secret", mode 0600),
//  the directory of trusted peers' public certificates (bus.trusted) and
//  the hub's public key (bus.server_key: 40 Z85 characters or the path of
//  a public certificate file). A missing certificate is not an error here
//  (IPC needs none: a tcp:// socket then fails to open, saying so); a
//  malformed one is. Call once, before any socket. Returns 0, or -1 with
//  *error set (caller frees).
//  On tcp://, servers (binds) are CURVE servers whose clients zauth checks
//  against bus.trusted (never CURVE_ALLOW_ANY), logging each refusal with
//  the peer's address and counting it; clients (connects) are CURVE clients
//  of bus.server_key. Both get ZMTP heartbeats (bus.heartbeat_ms) and a
//  handshake limit (bus.handshake_ms).
int ccm_bus_secure (ccm_config_t *config, char **error);

//  Stops zauth and the refusal logger (at exit; safe to skip).
void ccm_bus_secure_end (void);

//  This machine's public key (Z85), or "" without a certificate.
const char *ccm_bus_public_key (void);

//  How many peers the tcp:// servers of this process refused so far.
uint64_t ccm_bus_refusals (void);

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
