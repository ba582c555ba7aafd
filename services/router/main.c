/*  ccm-router: the context router and scheduler (see router_server.c).    */

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
    router_t *router = router_new (config);
    rc = router ? router_run (router) : 1;
    router_destroy (&router);
    ccm_config_destroy (&config);
    return rc;
}
