/*  executor: ccm-executor's object (see exec_server.c).                  */

#ifndef EXECUTOR_H_INCLUDED
#define EXECUTOR_H_INCLUDED

#include "ccm_config.h"

typedef struct _exec_server_t exec_server_t;

//  Registers this machine with the store, reconciles with the agents a
//  previous run left in tmux and connects to the router. Returns NULL on
//  failure (logged) or when interrupted first. config is borrowed.
exec_server_t *exec_new (ccm_config_t *config);

//  Turns the loop until a signal. Says READY=1 to systemd once it serves.
int exec_run (exec_server_t *self);

//  Sends what it can of the writes not yet acknowledged, keeps the rest in
//  executor.outbox, and frees the executor; agents go on running in tmux.
void exec_destroy (exec_server_t **self_p);

#endif
