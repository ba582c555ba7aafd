/*  ccm_service: how every ccm service process starts.                      */

#include "ccm_service.h"

#include "ccm_bus.h"

#include "ccm_log.h"

#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

ccm_config_t *
ccm_service_start (const char *name, const char *about, int argc, char **argv, int *exit_code)
{
    const char *home = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp (argv[i], "--home") == 0 && i + 1 < argc)
            home = argv[++i];
        else {
            fprintf (stderr,
                     "usage: %s [--home DIR]\n%s. Settings come from $CCM_HOME/config.json and "
                     "CCM_* variables (see 'ccm config').\n",
                     name, about);
            *exit_code = 2;
            return NULL;
        }
    }
    umask (077);
    zsys_init ();
    zsys_catch_interrupts ();
    char *error = NULL;
    ccm_config_t *config = ccm_config_load (home, &error);
    if (!config) {
        fprintf (stderr, "%s: %s\n", name, error ? error : "cannot load config");
        free (error);
        *exit_code = 1;
        return NULL;
    }
    ccm_log_init (name, ccm_log_level_parse (ccm_config_str (config, "log_level")));
    if (mkdir (ccm_config_home (config), 0700) && errno != EEXIST) {
        ccm_error ("%s: %s", ccm_config_home (config), strerror (errno));
        ccm_config_destroy (&config);
        *exit_code = 1;
        return NULL;
    }
    if (ccm_bus_secure (config, &error)) {
        ccm_error ("cannot start: %s", error ? error : "out of memory");
        free (error);
        ccm_config_destroy (&config);
        *exit_code = 1;
        return NULL;
    }
    *exit_code = 0;
    return config;
}
