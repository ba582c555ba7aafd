/*  Unit tests of the config table (common/ccm_config.c).                   */

#include "ccm_config.h"
#include "ccm_test.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

static char s_home[] = "/tmp/ccm-test-config-XXXXXX";

static void
s_write (const char *text)
{
    char path[256];
    snprintf (path, sizeof path, "%s/config.json", s_home);
    FILE *file = fopen (path, "w");
    fputs (text, file);
    fclose (file);
}

static ccm_config_t *
s_load (char **error)
{
    free (*error);
    *error = NULL;
    return ccm_config_load (s_home, error);
}

int
main (void)
{
    CHECK (mkdtemp (s_home) != NULL);
    unsetenv ("CCM_STORE_ENDPOINT");
    unsetenv ("CCM_BUS_TIMEOUT_MS");
    unsetenv ("CCM_LOG_LEVEL");
    char *error = NULL;

    //  Defaults, with {home} expanded
    ccm_config_t *config = s_load (&error);
    CHECK (config != NULL);
    char expect[512];
    snprintf (expect, sizeof expect, "ipc://%s/run/store.ipc", s_home);
    CHECK_STR (ccm_config_str (config, "store.endpoint"), expect);
    snprintf (expect, sizeof expect, "%s/ccm.db", s_home);
    CHECK_STR (ccm_config_str (config, "store.db_path"), expect);
    CHECK (ccm_config_int (config, "bus.timeout_ms") == 3000);
    CHECK_STR (ccm_config_home (config), s_home);
    ccm_config_destroy (&config);
    CHECK (config == NULL);

    //  config.json overrides, flat and nested
    s_write ("{\"store\": {\"endpoint\": \"tcp://127.0.0.1:7000\"}, \"bus.timeout_ms\": 250}");
    config = s_load (&error);
    CHECK (config != NULL);
    CHECK_STR (ccm_config_str (config, "store.endpoint"), "tcp://127.0.0.1:7000");
    CHECK (ccm_config_int (config, "bus.timeout_ms") == 250);
    ccm_config_destroy (&config);

    //  The environment overrides config.json
    setenv ("CCM_BUS_TIMEOUT_MS", "99", 1);
    config = s_load (&error);
    CHECK (config && ccm_config_int (config, "bus.timeout_ms") == 99);
    ccm_config_destroy (&config);
    setenv ("CCM_BUS_TIMEOUT_MS", "soon", 1);
    config = s_load (&error);
    CHECK (config == NULL);
    CHECK (error && strstr (error, "CCM_BUS_TIMEOUT_MS") && strstr (error, "integer"));
    unsetenv ("CCM_BUS_TIMEOUT_MS");

    //  Unknown keys and wrong types are errors that name the key
    s_write ("{\"store\": {\"endpiont\": \"x\"}}");
    config = s_load (&error);
    CHECK (config == NULL);
    CHECK (error && strstr (error, "unknown key 'store.endpiont'"));
    s_write ("{\"bus.retries\": \"three\"}");
    config = s_load (&error);
    CHECK (config == NULL);
    CHECK (error && strstr (error, "'bus.retries' must be an integer"));
    s_write ("{\"log_level\": \"loud\"}");
    config = s_load (&error);
    CHECK (config == NULL);
    CHECK (error && strstr (error, "log_level"));
    s_write ("[1, 2]");
    config = s_load (&error);
    CHECK (config == NULL);
    CHECK (error && strstr (error, "not a JSON object"));
    s_write ("{\"bus.retries\": -1}");
    config = s_load (&error);
    CHECK (config == NULL);
    CHECK (error && strstr (error, "bus.retries"));

    //  Environment names
    char name[64];
    ccm_config_env_name ("store.pub_endpoint", name, sizeof name);
    CHECK_STR (name, "CCM_STORE_PUB_ENDPOINT");

    free (error);
    char path[256];
    snprintf (path, sizeof path, "%s/config.json", s_home);
    unlink (path);
    rmdir (s_home);
    return CCM_TEST_DONE ();
}
