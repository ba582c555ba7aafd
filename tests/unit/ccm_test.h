/*  ccm_test: a minimal harness for the C unit tests. Each CHECK counts one
    assertion; main returns non-zero if any failed, and the last line is
    "N passed, N failed", which ctest and CI read.                          */

#ifndef CCM_TEST_H_INCLUDED
#define CCM_TEST_H_INCLUDED

#include <stdio.h>
#include <string.h>

static int ccm_test_passed = 0;
static int ccm_test_failed = 0;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond)                                                                                  \
            ccm_test_passed++;                                                                     \
        else {                                                                                     \
            ccm_test_failed++;                                                                     \
            fprintf (stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);              \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (a_ && b_ && strcmp (a_, b_) == 0)                                                      \
            ccm_test_passed++;                                                                     \
        else {                                                                                     \
            ccm_test_failed++;                                                                     \
            fprintf (stderr, "%s:%d: CHECK_STR failed: '%s' != '%s'\n", __FILE__, __LINE__,        \
                     a_ ? a_ : "(null)", b_ ? b_ : "(null)");                                      \
        }                                                                                          \
    } while (0)

#define CCM_TEST_DONE()                                                                            \
    (printf ("%d passed, %d failed\n", ccm_test_passed, ccm_test_failed), ccm_test_failed != 0)

#endif
