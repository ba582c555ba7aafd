/*  ccm-store: the only process that writes the SQLite database.

    It answers requests on a ROUTER socket, applies concurrent writes in one
    transaction (group commit), acknowledges them only after COMMIT, and
    publishes every committed change from the append-only event log.        */

#ifndef STORE_H_INCLUDED
#define STORE_H_INCLUDED

#include "ccm_config.h"

typedef struct _store_t store_t;

//  Opens (creating, mode 0600) and migrates the database, then binds the
//  request and event sockets. Returns NULL with *error set (caller frees).
store_t *store_new (ccm_config_t *config, char **error);

//  Closes sockets and the database; sets *self_p to NULL.
void store_destroy (store_t **self_p);

//  Runs the request loop until SIGINT/SIGTERM. Returns 0 on a clean stop.
int store_run (store_t *self);

#endif
