/*  ccm-executor: runs each task's agent in tmux, in its own git worktree.  */

#include "ccm_service.h"
#include "executor.h"

#include <czmq.h>

int
main (int argc, char **argv)
{
    int rc;
    ccm_config_t *config = ccm_service_start (
        "ccm-executor", "Runs each task's agent in tmux, in its own git worktree", argc, argv, &rc);
    if (!config)
        return rc;
    exec_server_t *executor = exec_new (config);
    rc = executor ? exec_run (executor) : zsys_interrupted ? 0 : 1;
    exec_destroy (&executor);
    ccm_config_destroy (&config);
    return rc;
}
