/*  ccm-hooks: the hook ingester. ccm-hook processes hand it records over a
    unix socket; it journals them, normalizes them into hook_events rows
    and writes them to the store in batches (hooks_server.c).             */

#ifndef HOOKS_H_INCLUDED
#define HOOKS_H_INCLUDED

#include "ccm_config.h"

typedef struct _hooks_t hooks_t;

//  Opens the spool and the journal, listens on hooks.socket and connects to
//  the store. Returns NULL if it cannot start (logged). config is borrowed.
hooks_t *hooks_new (ccm_config_t *config);

//  Reads back what an earlier run left in the journal and the spool, says
//  READY=1 to systemd, and turns the loop until a signal. Returns 0.
int hooks_run (hooks_t *self);

//  Lets go of parked hooks and connections, closes the socket, frees the
//  ingester and sets *self_p to NULL. Events not yet committed stay in the
//  journal for the next start.
void hooks_destroy (hooks_t **self_p);

#endif
