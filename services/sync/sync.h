/*  ccm-sync: pushes sync_queue to a Supabase (PostgREST) hub and pulls the
    tasks meant for this system, their results, and shared skills.       */

#ifndef SYNC_H_INCLUDED
#define SYNC_H_INCLUDED

#include "ccm_config.h"

//  Runs the sync engine until interrupted. Returns 0, or 1 if it cannot start.
int sync_main (ccm_config_t *config);

#endif
