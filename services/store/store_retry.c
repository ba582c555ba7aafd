/*  store_retry: when a failed task is tried again, and how its reason says so. */

#include "store_retry.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#define S_MAX_DOUBLINGS 20  //  2000 ms << 20 is 24 days: longer means never

//  True if a move from `from` ended a run (the task was held by an executor).
static bool
s_was_running (const char *from)
{
    return strcmp (from, "assigned") == 0 || strcmp (from, "executing") == 0;
}

bool
store_retry_wanted (const char *from, int attempts, int max_attempts, bool final)
{
    return !final && s_was_running (from) && attempts >= 1 && attempts < max_attempts;
}

int64_t
store_retry_delay_ms (int64_t base_ms, int attempts, uint64_t draw)
{
    if (base_ms < 1)
        base_ms = 1;
    int doublings = attempts < 1 ? 0 : attempts - 1;
    if (doublings > S_MAX_DOUBLINGS)
        doublings = S_MAX_DOUBLINGS;
    //  base_ms comes from config: keep the product in range whatever it is.
    if (base_ms > (INT64_MAX / 4) >> S_MAX_DOUBLINGS)
        base_ms = (INT64_MAX / 4) >> S_MAX_DOUBLINGS;
    return (base_ms << doublings) + (int64_t) (draw % (uint64_t) (base_ms / 2 + 1));
}

void
store_retry_iso (int64_t unix_ms, char iso[32])
{
    time_t secs = (time_t) (unix_ms / 1000);
    struct tm tm;
    gmtime_r (&secs, &tm);
    size_t len = strftime (iso, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf (iso + len, 32 - len, ".%03dZ", (int) (unix_ms % 1000));
}

void
store_retry_reason (char *out, size_t len, const char *reason, const char *from, int attempts,
                    int max_attempts, const char *retry_iso)
{
    if (retry_iso)
        //  The time of day of the ISO time, which is UTC: HH:MM:SS.
        snprintf (out, len, "retry %d of %d at %.8s UTC, after: %s", attempts + 1, max_attempts,
                  strlen (retry_iso) >= 19 ? retry_iso + 11 : retry_iso,
                  reason ? reason : "no reason given");
    else if (s_was_running (from) && attempts >= max_attempts)
        snprintf (out, len, "failed after %d attempts%s%s", attempts, reason ? ": " : "",
                  reason ? reason : "");
    else
        snprintf (out, len, "%s", reason ? reason : "");
}
