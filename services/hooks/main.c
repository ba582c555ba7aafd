/*  ccm-hooks: the hook ingester (see hooks_server.c).                       */

#include "ccm_service.h"
#include "hooks.h"

int
main (int argc, char **argv)
{
    int rc;
    ccm_config_t *config = ccm_service_start (
        "ccm-hooks", "The hook ingester: takes events from ccm-hook to the store", argc, argv, &rc);
    if (!config)
        return rc;
    hooks_t *hooks = hooks_new (config);
    rc = hooks ? hooks_run (hooks) : 1;
    hooks_destroy (&hooks);
    ccm_config_destroy (&config);
    return rc;
}
