/*  Unit tests of ccm_id: UUIDs, and reading the store's timestamps back.  */

#include "ccm_id.h"
#include "ccm_test.h"

int
main (void)
{
    char id[CCM_UUID_LEN + 1], other[CCM_UUID_LEN + 1];
    ccm_uuid (id);
    ccm_uuid (other);
    CHECK (ccm_uuid_valid (id));
    CHECK (strcmp (id, other) != 0);
    CHECK (!ccm_uuid_valid ("not-a-uuid"));

    int64_t ms = 0;
    CHECK (ccm_iso_ms ("1970-01-01T00:00:01.250Z", &ms) == 0 && ms == 1250);
    CHECK (ccm_iso_ms ("2026-11-23T10:00:00Z", &ms) == 0 && ms == 1795428000000LL);
    CHECK (ccm_iso_ms ("2026-11-23T10:00:00.5Z", &ms) == 0 && ms == 1795428000500LL);
    CHECK (ccm_iso_ms ("2026-11-23 10:00:00", &ms) == -1);
    CHECK (ccm_iso_ms ("2026-11-23T10:00:00.000+01:00", &ms) == -1);
    CHECK (ccm_iso_ms (NULL, &ms) == -1);

    //  What ccm_now_iso writes, ccm_iso_ms reads, within a second of the wall clock.
    char now[25];
    ccm_now_iso (now);
    CHECK (ccm_iso_ms (now, &ms) == 0);
    int64_t wall = ccm_wall_ms ();
    CHECK (ms <= wall && wall - ms < 1000);
    return CCM_TEST_DONE ();
}
