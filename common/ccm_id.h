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

//  Milliseconds on the monotonic clock.
int64_t ccm_mono_ms (void);

#endif
