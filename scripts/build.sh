#!/usr/bin/env bash
# Installs what is missing, then configures and builds ccm into build/.
#   scripts/build.sh [--test]     (--test: also the test suite's packages)
# Extra CMake arguments come from CCM_CMAKE_ARGS, e.g. -DCCM_SANITIZE=ON.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh "$@"
# shellcheck disable=SC2086
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo ${CCM_CMAKE_ARGS:-} >/dev/null
cmake --build build -j"$(nproc)"
