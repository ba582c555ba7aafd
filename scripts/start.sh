#!/usr/bin/env bash
# The quick start: installs what is missing, builds, and runs ccm in the
# foreground on its embedded SQLite database ($CCM_HOME, default ~/.ccm).
# Arguments go to `ccm up` (e.g. --detach).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
exec build/ccm up "$@"
