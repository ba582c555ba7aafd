/*  store_retry: the retry schedule of failed tasks, as pure functions so it
    is tested without a database or a clock.

    A run that fails (assigned or executing -> failed) is tried again while
    attempts < max_attempts, unless its failure is final: a task failed
    while still queued never ran this attempt (WaitConnection timed out), an
    agent killed at its timeout_s had the time it was given, and a caller
    may say so itself (task.transition's "final"). The next try is due
    base × 2^(attempts−1), plus up to base/2 of jitter, after the failure;
    status_reason says when ("retry 2 of 3 at 20:09:41 UTC, after: ...").  */

#ifndef STORE_RETRY_H_INCLUDED
#define STORE_RETRY_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

//  True if a move from `from` to failed, with attempts used of max_attempts,
//  schedules a retry; final is the caller's word that it cannot help.
bool store_retry_wanted (const char *from, int attempts, int max_attempts, bool final);

//  The delay before the retry after attempt `attempts` (≥ 1):
//  base_ms << (attempts − 1) plus draw % (base_ms / 2 + 1). base_ms < 1
//  counts as 1; the doubling stops at 2^20 so the sum cannot overflow.
int64_t store_retry_delay_ms (int64_t base_ms, int attempts, uint64_t draw);

//  Writes unix_ms (milliseconds since the epoch) as protocol.md's times,
//  e.g. 2026-11-23T10:15:02.123Z, into iso[32].
void store_retry_iso (int64_t unix_ms, char iso[32]);

//  Writes the status_reason of a task moved to failed into out[len]:
//    retry_iso set:  "retry N of M at HH:MM:SS UTC, after: REASON" (N = attempts + 1)
//    spent:          "failed after M attempts: REASON" when a run (from
//                    assigned or executing) used the last of max_attempts
//    otherwise:      REASON as given.
//  reason may be NULL ("no reason given", or nothing in the last case:
//  then out is "" and the caller stores NULL).
void store_retry_reason (char *out, size_t len, const char *reason, const char *from, int attempts,
                         int max_attempts, const char *retry_iso);

#endif
