/*  ccm_proc: runs a helper program (git, tmux) from an argv array, never
    through a shell, and collects its output.                               */

#ifndef CCM_PROC_H_INCLUDED
#define CCM_PROC_H_INCLUDED

#include <stddef.h>

//  Runs argv (argv[0] looked up in PATH) in cwd (NULL: current), with stdin
//  from /dev/null. Captures stdout and stderr together into *output (caller
//  frees; may be NULL to discard), at most 1 MiB. Kills it after timeout_ms.
//  Returns the exit status (0-255), 128+signal if killed, or -1 if it could
//  not run.
int ccm_proc_run (char *const argv[], const char *cwd, char **output, int timeout_ms);

//  Like ccm_proc_run, but only stdout is captured (stderr is kept apart in
//  *errors if not NULL), for commands whose output is parsed.
int ccm_proc_run2 (char *const argv[], const char *cwd, char **output, char **errors,
                   int timeout_ms);

//  Trims trailing newlines and spaces in place; returns text.
char *ccm_proc_chomp (char *text);

#endif
