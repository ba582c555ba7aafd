/*  ccm-gateway: the web UI and the WebSocket JSON API (protocol.md, "Gateway
    WebSocket API"), over libwebsockets, fed by the store's events.        */

#ifndef GATEWAY_H_INCLUDED
#define GATEWAY_H_INCLUDED

#include "ccm_config.h"

//  Runs the gateway until interrupted. Returns 0, 1 if it cannot start, or 2
//  if its configuration is refused (a non-loopback bind without a token).
int gateway_main (ccm_config_t *config);

#endif
