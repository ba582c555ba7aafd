/*  ccm-hooks: the hook ingester (see hooks_server.c).  */

#include "ccm_config.h"
#include "ccm_log.h"
#include "ccm_notify.h"

#include <czmq.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int hooks_main (ccm_config_t *config);

int
main (int argc, char **argv)
{
    const char *home = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp (argv[i], "--home") == 0 && i + 1 < argc)
            home = argv[++i];
        else {
            fprintf (stderr, "usage: ccm-hooks [--home DIR]\n");
            return 2;
        }
    }
    umask (077);
    zsys_init ();
    zsys_catch_interrupts ();
    char *error = NULL;
    ccm_config_t *config = ccm_config_load (home, &error);
    if (!config) {
        fprintf (stderr, "ccm-hooks: %s\n", error ? error : "cannot load config");
        free (error);
        return 1;
    }
    ccm_log_init ("ccm-hooks", ccm_log_level_parse (ccm_config_str (config, "log_level")));
    ccm_notify ("READY=1");
    int rc = hooks_main (config);
    ccm_config_destroy (&config);
    return rc;
}
