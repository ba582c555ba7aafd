/*  ccm-router: the context router and scheduler (see router_server.c).    */

#include "ccm_notify.h"
#include "ccm_service.h"
#include "router.h"

int
main (int argc, char **argv)
{
    int rc;
    ccm_config_t *config = ccm_service_start (
        "ccm-router", "The router of ccm: places queued tasks on executors", argc, argv, &rc);
    if (!config)
        return rc;
    ccm_notify ("READY=1");
    rc = router_main (config);
    ccm_config_destroy (&config);
    return rc;
}
