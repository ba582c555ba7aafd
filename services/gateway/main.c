/*  ccm-gateway: HTTP + WebSocket for the browser (see gw_server.c).        */

#include "ccm_service.h"
#include "gateway.h"

int
main (int argc, char **argv)
{
    int rc;
    ccm_config_t *config = ccm_service_start (
        "ccm-gateway", "The gateway of ccm: the web UI and its WebSocket API", argc, argv, &rc);
    if (!config)
        return rc;
    rc = gateway_main (config);
    ccm_config_destroy (&config);
    return rc;
}
