/*  ccm-executor: runs each task's agent in tmux, in its own git worktree.  */

#include "ccm_notify.h"
#include "ccm_service.h"

int exec_main (ccm_config_t *config);

int
main (int argc, char **argv)
{
    int rc;
    ccm_config_t *config = ccm_service_start (
        "ccm-executor", "Runs each task's agent in tmux, in its own git worktree", argc, argv, &rc);
    if (!config)
        return rc;
    ccm_notify ("READY=1");
    rc = exec_main (config);
    ccm_config_destroy (&config);
    return rc;
}
