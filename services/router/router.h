/*  ccm-router: places queued tasks on executors (router_server.c), with the
    choice made by the pure routing core (route.h).                          */

#ifndef ROUTER_H_INCLUDED
#define ROUTER_H_INCLUDED

#include "ccm_config.h"

#include <czmq.h>

//  Runs the router until interrupted. Returns 0, or 1 if it cannot start.
int router_main (ccm_config_t *config);

#endif
