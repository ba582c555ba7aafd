/*  ccm-sync: pushes sync_queue to a Supabase (PostgREST) hub and pulls the
    tasks meant for this system, their results, and shared skills.       */

#ifndef SYNC_H_INCLUDED
#define SYNC_H_INCLUDED

#include "ccm_config.h"

typedef struct _sync_t sync_t;

//  Reads the settings, connects to the store and its events, and sets up
//  curl multi on the loop. Returns NULL if it cannot start (logged). config
//  is borrowed.
sync_t *sync_new (ccm_config_t *config);

//  Turns the loop until a signal. READY=1 goes to systemd once the first
//  state is known and recorded in the store: LocalOnly with no hub, else
//  what the first exchange with the hub found. Returns 0.
int sync_run (sync_t *self);

//  Frees the engine (requests in flight are dropped: rows not marked are
//  pushed again) and sets *self_p to NULL.
void sync_destroy (sync_t **self_p);

#endif
