/*  store_fsm: which task status changes are legal.                         */

#include "store_fsm.h"

#include <stdio.h>
#include <string.h>

const char *const store_fsm_statuses[] = {"created",  "queued", "assigned",  "executing",
                                          "complete", "failed", "cancelled", NULL};

//  The legal moves, apart from the attempts rule.
static const struct {
    const char *from;
    const char *to;
} s_moves[] = {
    {"created", "queued"},      {"created", "cancelled"}, {"queued", "assigned"},
    {"queued", "failed"},       {"queued", "cancelled"},  {"assigned", "executing"},
    {"assigned", "queued"},     {"assigned", "failed"},   {"assigned", "cancelled"},
    {"executing", "complete"},  {"executing", "failed"},  {"executing", "queued"},
    {"executing", "cancelled"}, {"failed", "queued"},
};

bool
store_fsm_is_status (const char *status)
{
    for (const char *const *s = store_fsm_statuses; *s; s++)
        if (status && strcmp (*s, status) == 0)
            return true;
    return false;
}

bool
store_fsm_is_terminal (const char *status)
{
    return strcmp (status, "complete") == 0 || strcmp (status, "cancelled") == 0;
}

int
store_fsm_check (const char *from, const char *to, int attempts, int max_attempts, char *why,
                 size_t len)
{
    if (!store_fsm_is_status (to)) {
        snprintf (why, len, "'%s' is not a task status", to);
        return -1;
    }
    if (strcmp (from, to) == 0) {
        snprintf (why, len, "task is already %s", from);
        return -1;
    }
    if (store_fsm_is_terminal (from)) {
        snprintf (why, len, "cannot move a task from %s to %s: %s is final", from, to, from);
        return -1;
    }
    for (size_t i = 0; i < sizeof s_moves / sizeof s_moves[0]; i++)
        if (strcmp (s_moves[i].from, from) == 0 && strcmp (s_moves[i].to, to) == 0) {
            if (strcmp (to, "queued") == 0 && strcmp (from, "created") != 0
                && attempts >= max_attempts) {
                snprintf (why, len,
                          "cannot move a task from %s to queued: it has used %d of %d attempts",
                          from, attempts, max_attempts);
                return -1;
            }
            return 0;
        }
    snprintf (why, len, "cannot move a task from %s to %s", from, to);
    return -1;
}

const char *
store_fsm_event_type (const char *from, const char *to)
{
    if (strcmp (to, "queued") == 0)
        return strcmp (from, "created") == 0 ? "queued" : "requeued";
    if (strcmp (to, "executing") == 0)
        return "started";
    if (strcmp (to, "complete") == 0)
        return "completed";
    return to;  //  assigned, failed, cancelled name their own event
}
