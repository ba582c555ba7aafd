/*  store_fsm: the task state machine, as a pure function so it is tested
    without a database.

    created   -> queued | cancelled
    queued    -> assigned | failed | cancelled
    assigned  -> executing | queued | failed | cancelled
    executing -> complete | failed | queued | cancelled
    failed    -> queued             while attempts < max_attempts
    complete, cancelled: terminal

    Every move back to queued needs attempts < max_attempts; each move to
    assigned counts one attempt.                                            */

#ifndef STORE_FSM_H_INCLUDED
#define STORE_FSM_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

//  The statuses, NULL-terminated (borrowed).
extern const char *const store_fsm_statuses[];

//  True if status is one of the task statuses.
bool store_fsm_is_status (const char *status);

//  True if status is final (complete, failed with no retry left is not final
//  here: failed may still be retried, so only complete and cancelled are).
bool store_fsm_is_terminal (const char *status);

//  Returns 0 if the move from -> to is legal, else -1 with why (a sentence
//  naming both states) written into why[len].
int store_fsm_check (const char *from, const char *to, int attempts, int max_attempts, char *why,
                     size_t len);

//  The task_events.event_type recorded for a move into to from from.
const char *store_fsm_event_type (const char *from, const char *to);

#endif
