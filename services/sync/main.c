/*  ccm-sync: the sync engine (see sync_server.c).                         */

#include "ccm_service.h"
#include "sync.h"

int
main (int argc, char **argv)
{
    int rc;
    ccm_config_t *config = ccm_service_start (
        "ccm-sync", "The sync engine of ccm: pushes changes to a Supabase hub and pulls tasks",
        argc, argv, &rc);
    if (!config)
        return rc;
    sync_t *sync = sync_new (config);
    rc = sync ? sync_run (sync) : 1;
    sync_destroy (&sync);
    ccm_config_destroy (&config);
    return rc;
}
