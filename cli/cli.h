/*  cli: what the ccm command's modules share.                              */

#ifndef CLI_H_INCLUDED
#define CLI_H_INCLUDED

#include "ccm_client.h"
#include "ccm_config.h"

#include <cjson/cJSON.h>
#include <stdbool.h>

typedef struct {
    ccm_config_t *config;
    bool json;  //  --json: machine-readable output
} cli_t;

//  Prints "ccm: message" to stderr and returns 1, for `return cli_fail (...)`.
int cli_fail (const char *format, ...) __attribute__ ((format (printf, 1, 2)));

//  Prints a usage error to stderr and returns 2.
int cli_usage (const char *format, ...) __attribute__ ((format (printf, 1, 2)));

//  Calls the store; on failure prints the error and returns non-zero. On
//  success *reply_p holds the reply (caller owns). body is borrowed.
int cli_call (cli_t *cli, const char *verb, cJSON *body, cJSON **reply_p);

//  Prints item as indented JSON on stdout.
void cli_print_json (cJSON *item);

//  Returns the string member key of obj, or "" (borrowed).
const char *cli_str (cJSON *obj, const char *key);

//  Prints text on one line: control characters become spaces, and it is cut
//  to width display bytes (UTF-8 safe) with "..." when longer.
void cli_print_cell (const char *text, int width);

//  Commands. Each returns the process exit code.
int cli_cmd_up (cli_t *cli, int argc, char **argv);
int cli_cmd_down (cli_t *cli, int argc, char **argv);
int cli_cmd_status (cli_t *cli, int argc, char **argv);
int cli_cmd_config (cli_t *cli, int argc, char **argv);
int cli_cmd_project (cli_t *cli, int argc, char **argv);
int cli_cmd_task (cli_t *cli, int argc, char **argv);
int cli_cmd_events (cli_t *cli, int argc, char **argv);
int cli_cmd_worktree (cli_t *cli, int argc, char **argv);
int cli_cmd_logs (cli_t *cli, int argc, char **argv);
int cli_cmd_attach (cli_t *cli, int argc, char **argv);
int cli_cmd_send (cli_t *cli, int argc, char **argv);
int cli_cmd_hooks (cli_t *cli, int argc, char **argv);
int cli_cmd_systems (cli_t *cli, int argc, char **argv);
int cli_cmd_contexts (cli_t *cli, int argc, char **argv);
int cli_cmd_keys (cli_t *cli, int argc, char **argv);
int cli_cmd_gateway (cli_t *cli, int argc, char **argv);
int cli_cmd_sync (cli_t *cli, int argc, char **argv);

#endif
