/*  ccm-store: reads config, sets up logging and signals, runs the store.   */

#include "ccm_config.h"
#include "ccm_log.h"
#include "store.h"

#include <czmq.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static void
s_usage (void)
{
    fprintf (stderr, "usage: ccm-store [--home DIR]\n"
                     "The store of ccm: the only SQLite writer. Settings come from\n"
                     "$CCM_HOME/config.json and CCM_* variables (see 'ccm config').\n");
}

int
main (int argc, char **argv)
{
    const char *home = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp (argv[i], "--home") == 0 && i + 1 < argc)
            home = argv[++i];
        else {
            s_usage ();
            return 2;
        }
    }
    //  Every file the store creates (db, wal, sockets, lock) is private.
    umask (077);
    zsys_init ();
    zsys_catch_interrupts ();
    char *error = NULL;
    ccm_config_t *config = ccm_config_load (home, &error);
    if (!config) {
        fprintf (stderr, "ccm-store: %s\n", error ? error : "cannot load config");
        free (error);
        return 1;
    }
    ccm_log_init ("ccm-store", ccm_log_level_parse (ccm_config_str (config, "log_level")));
    if (mkdir (ccm_config_home (config), 0700) && errno != EEXIST) {
        ccm_error ("%s: %s", ccm_config_home (config), strerror (errno));
        ccm_config_destroy (&config);
        return 1;
    }
    store_t *store = store_new (config, &error);
    if (!store) {
        ccm_error ("%s", error ? error : "cannot start");
        free (error);
        ccm_config_destroy (&config);
        return 1;
    }
    int rc = store_run (store);
    store_destroy (&store);
    ccm_config_destroy (&config);
    return rc ? 1 : 0;
}
