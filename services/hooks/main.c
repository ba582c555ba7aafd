/*  ccm-hooks: the hook ingester (see hooks_server.c).                       */

#include "ccm_notify.h"
#include "ccm_service.h"

int hooks_main (ccm_config_t *config);

int
main (int argc, char **argv)
{
    int rc;
    ccm_config_t *config = ccm_service_start (
        "ccm-hooks", "The hook ingester: takes events from ccm-hook to the store", argc, argv, &rc);
    if (!config)
        return rc;
    ccm_notify ("READY=1");
    rc = hooks_main (config);
    ccm_config_destroy (&config);
    return rc;
}
