/*  Unit tests of the retry schedule (services/store/store_retry.c).         */

#include "ccm_test.h"
#include "store_retry.h"

#include <stdint.h>

int
main (void)
{
    //  A run that failed with attempts left is retried; nothing else is.
    CHECK (store_retry_wanted ("executing", 1, 3, false));
    CHECK (store_retry_wanted ("assigned", 2, 3, false));
    CHECK (!store_retry_wanted ("executing", 3, 3, false));
    CHECK (!store_retry_wanted ("executing", 5, 3, false));
    CHECK (!store_retry_wanted ("queued", 1, 3, false));  //  WaitConnection: never ran
    CHECK (!store_retry_wanted ("queued", 0, 3, false));
    CHECK (!store_retry_wanted ("assigned", 0, 3, false));  //  no attempt counted
    CHECK (!store_retry_wanted ("executing", 1, 3, true));  //  the caller says final
    CHECK (!store_retry_wanted ("executing", 1, 1, false));
    CHECK (store_retry_wanted ("executing", 9, 10, false));

    //  base × 2^(attempts−1), plus draw % (base/2 + 1) of jitter.
    CHECK (store_retry_delay_ms (2000, 1, 0) == 2000);
    CHECK (store_retry_delay_ms (2000, 1, 1000) == 3000);
    CHECK (store_retry_delay_ms (2000, 1, 1001) == 2000);  //  the jitter wraps at base/2
    CHECK (store_retry_delay_ms (2000, 2, 0) == 4000);
    CHECK (store_retry_delay_ms (2000, 3, 7) == 8007);
    for (uint64_t draw = 0; draw < 5000; draw += 37) {
        int64_t delay = store_retry_delay_ms (2000, 2, draw);
        CHECK (delay >= 4000 && delay <= 5000);
    }
    CHECK (store_retry_delay_ms (0, 1, 12345) == 1);  //  a base below 1 counts as 1
    CHECK (store_retry_delay_ms (-5, 1, 0) == 1);
    CHECK (store_retry_delay_ms (1, 1, UINT64_MAX) == 1);
    CHECK (store_retry_delay_ms (100, 0, 0) == 100);  //  no attempt: no doubling
    //  Many attempts or a huge base neither overflow nor go negative.
    CHECK (store_retry_delay_ms (2000, 1000, 0) == (int64_t) 2000 << 20);
    CHECK (store_retry_delay_ms (INT64_MAX, 1000, UINT64_MAX) > 0);

    char iso[32];
    store_retry_iso (0, iso);
    CHECK_STR (iso, "1970-01-01T00:00:00.000Z");
    store_retry_iso (1795601381123, iso);
    CHECK_STR (iso, "2026-11-25T10:09:41.123Z");

    char why[4200];
    store_retry_reason (why, sizeof why, "agent exited with status 1", "executing", 1, 3,
                        "2026-11-23T20:09:41.123Z");
    CHECK_STR (why, "retry 2 of 3 at 20:09:41 UTC, after: agent exited with status 1");
    store_retry_reason (why, sizeof why, NULL, "assigned", 2, 3, "2026-11-23T20:09:45.000Z");
    CHECK_STR (why, "retry 3 of 3 at 20:09:45 UTC, after: no reason given");
    store_retry_reason (why, sizeof why, "agent exited with status 1", "executing", 3, 3, NULL);
    CHECK_STR (why, "failed after 3 attempts: agent exited with status 1");
    store_retry_reason (why, sizeof why, NULL, "executing", 3, 3, NULL);
    CHECK_STR (why, "failed after 3 attempts");
    //  Final for another cause than attempts: the reason as given.
    store_retry_reason (why, sizeof why, "WaitConnection timed out", "queued", 3, 3, NULL);
    CHECK_STR (why, "WaitConnection timed out");
    store_retry_reason (why, sizeof why, "timed out; agent killed", "executing", 1, 3, NULL);
    CHECK_STR (why, "timed out; agent killed");
    store_retry_reason (why, sizeof why, NULL, "queued", 0, 3, NULL);
    CHECK_STR (why, "");
    //  A small buffer cuts, never overruns.
    char small[16];
    store_retry_reason (small, sizeof small, "agent exited with status 1", "executing", 1, 3,
                        "2026-11-23T20:09:41.123Z");
    CHECK_STR (small, "retry 2 of 3 at");
    return CCM_TEST_DONE ();
}
