/*  ccm-router: places queued tasks on executors (router_server.c), with the
    choice made by the pure routing core (route.h).                          */

#ifndef ROUTER_H_INCLUDED
#define ROUTER_H_INCLUDED

#include "ccm_config.h"

#include <czmq.h>

typedef struct _router_t router_t;

//  Binds the dispatch socket and connects to the store. Returns NULL if it
//  cannot start (logged). config is borrowed.
router_t *router_new (ccm_config_t *config);

//  Reads the executors and running tasks from the store, says READY=1 to
//  systemd, and turns the loop until a signal. Returns 0.
int router_run (router_t *self);

//  Frees the router and sets *self_p to NULL.
void router_destroy (router_t **self_p);

#endif
