/*  ccm_service: how every ccm service process starts.                      */

#ifndef CCM_SERVICE_H_INCLUDED
#define CCM_SERVICE_H_INCLUDED

#include "ccm_config.h"

//  Parses "[--home DIR]" (anything else: usage on stderr, *exit_code 2),
//  makes every file the process creates private (umask 077), lets czmq catch
//  SIGINT and SIGTERM, loads the config (an error names the problem,
//  *exit_code 1), creates $CCM_HOME (mode 0700) and starts logging as name.
//  Returns the config (caller destroys), or NULL.
ccm_config_t *ccm_service_start (const char *name, const char *about, int argc, char **argv,
                                 int *exit_code);

#endif
