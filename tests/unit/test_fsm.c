/*  Unit tests of the task state machine (services/store/store_fsm.c).      */

#include "ccm_test.h"
#include "store_fsm.h"

static int
s_ok (const char *from, const char *to, int attempts)
{
    char why[256];
    return store_fsm_check (from, to, attempts, 3, why, sizeof why) == 0;
}

int
main (void)
{
    //  The whole legal path, and cancellation from every live state.
    CHECK (s_ok ("created", "queued", 0));
    CHECK (s_ok ("queued", "assigned", 0));
    CHECK (s_ok ("assigned", "executing", 1));
    CHECK (s_ok ("executing", "complete", 1));
    CHECK (s_ok ("executing", "failed", 1));
    const char *live[] = {"created", "queued", "assigned", "executing"};
    for (int i = 0; i < 4; i++)
        CHECK (s_ok (live[i], "cancelled", 1));

    //  Retry: failed -> queued only while attempts < 3, and requeue likewise.
    CHECK (s_ok ("failed", "queued", 1));
    CHECK (s_ok ("failed", "queued", 2));
    CHECK (!s_ok ("failed", "queued", 3));
    CHECK (!s_ok ("failed", "queued", 7));
    CHECK (s_ok ("assigned", "queued", 2));
    CHECK (!s_ok ("executing", "queued", 3));

    //  Everything else is refused, with a reason naming both states.
    char why[256];
    CHECK (store_fsm_check ("created", "complete", 0, 3, why, sizeof why) == -1);
    CHECK_STR (why, "cannot move a task from created to complete");
    CHECK (store_fsm_check ("complete", "queued", 1, 3, why, sizeof why) == -1);
    CHECK (strstr (why, "complete") && strstr (why, "queued") && strstr (why, "final"));
    CHECK (store_fsm_check ("failed", "queued", 3, 3, why, sizeof why) == -1);
    CHECK (strstr (why, "3 of 3 attempts") != NULL);
    CHECK (!s_ok ("cancelled", "queued", 0));
    CHECK (!s_ok ("queued", "executing", 0));
    CHECK (!s_ok ("queued", "complete", 0));
    CHECK (!s_ok ("created", "assigned", 0));
    CHECK (!s_ok ("failed", "complete", 1));
    CHECK (!s_ok ("queued", "queued", 0));
    CHECK (store_fsm_check ("queued", "done", 0, 3, why, sizeof why) == -1);
    CHECK_STR (why, "'done' is not a task status");

    //  Exhaustive: exactly 14 legal pairs at attempts 0.
    int legal = 0;
    for (int a = 0; store_fsm_statuses[a]; a++)
        for (int b = 0; store_fsm_statuses[b]; b++)
            legal += s_ok (store_fsm_statuses[a], store_fsm_statuses[b], 0);
    CHECK (legal == 14);

    CHECK_STR (store_fsm_event_type ("created", "queued"), "queued");
    CHECK_STR (store_fsm_event_type ("failed", "queued"), "requeued");
    CHECK_STR (store_fsm_event_type ("assigned", "executing"), "started");
    CHECK_STR (store_fsm_event_type ("executing", "complete"), "completed");
    CHECK (store_fsm_is_terminal ("complete") && store_fsm_is_terminal ("cancelled"));
    CHECK (!store_fsm_is_terminal ("failed"));
    return CCM_TEST_DONE ();
}
