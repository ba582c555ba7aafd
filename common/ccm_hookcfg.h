/*  ccm_hookcfg: ccm's entries in a Claude Code settings.json.

    Claude Code runs each "command" hook through a shell, so the command is
    built with every path single-quoted. ccm's entries are the hook entries
    whose command runs a ccm-hook binary; everything else in the file is the
    user's and is kept. The first install saves the file's original bytes
    next to it (<file>.ccm-orig); an uninstall that leaves the same JSON as
    that original (empty hook containers aside) puts the original bytes
    back. A file that holds nothing but ccm's entries is ccm's own: it is
    never saved as an original, and uninstall removes it.                   */

#ifndef CCM_HOOKCFG_H_INCLUDED
#define CCM_HOOKCFG_H_INCLUDED

#include <stdbool.h>

//  The hook events ccm installs a hook for.
extern const char *const ccm_hookcfg_events[];

//  The shell command that runs hook_bin for CCM_HOME home. Caller frees.
char *ccm_hookcfg_command (const char *hook_bin, const char *home);

//  The least timeout of ccm-hook on PermissionRequest, in seconds: room
//  for a human's answer (hooks.ask_timeout_ms) and a little more.
#define CCM_HOOKCFG_ASK_TIMEOUT_S 330

//  Merges ccm's entries (command, timeout_s) into the settings file at path,
//  creating it (and its directory) if needed. Idempotent: a file that has
//  them already is not rewritten. Returns 0, or -1 with *error (caller frees).
int ccm_hookcfg_install (const char *path, const char *command, int timeout_s, char **error);

//  Removes ccm's entries from the settings file at path. Returns 0 (also if
//  there was nothing to remove), or -1 with *error (caller frees).
int ccm_hookcfg_uninstall (const char *path, char **error);

#endif
