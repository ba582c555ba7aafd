/*  ccm-store: the only SQLite writer (see store.h).                         */

#include "ccm_log.h"
#include "ccm_service.h"
#include "store.h"

#include <stdlib.h>

int
main (int argc, char **argv)
{
    int rc;
    ccm_config_t *config = ccm_service_start (
        "ccm-store", "The store of ccm: the only SQLite writer", argc, argv, &rc);
    if (!config)
        return rc;
    char *error = NULL;
    store_t *store = store_new (config, &error);
    if (!store) {
        ccm_error ("%s", error ? error : "cannot start");
        free (error);
        ccm_config_destroy (&config);
        return 1;
    }
    rc = store_run (store);
    store_destroy (&store);
    ccm_config_destroy (&config);
    return rc ? 1 : 0;
}
