/*  ccm_id: identifiers and timestamps shared by every service.             */

#ifndef CCM_ID_H_INCLUDED
#define CCM_ID_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CCM_UUID_LEN 36  //  lowercase text form, without the terminating NUL

//  Writes a fresh random lowercase UUID (libuuid) into out, which holds 37 bytes.
void ccm_uuid (char out[CCM_UUID_LEN + 1]);

//  True if text is a well-formed lowercase UUID.
bool ccm_uuid_valid (const char *text);

//  Writes the current UTC time as ISO-8601 with milliseconds into out (25 bytes).
void ccm_now_iso (char out[25]);

//  Parses a UTC ISO-8601 time as the store writes it (2026-01-02T03:04:05.678Z,
//  milliseconds optional) into milliseconds since the epoch. Returns 0 or -1.
int ccm_iso_ms (const char *text, int64_t *ms);

//  Milliseconds since the epoch, on the wall clock.
int64_t ccm_wall_ms (void);

//  Milliseconds on the monotonic clock.
int64_t ccm_mono_ms (void);

//  Milliseconds of CLOCK_BOOTTIME: monotonic, and counting a suspended
//  machine's sleep too (leases are measured on it).
int64_t ccm_boot_ms (void);

#endif
