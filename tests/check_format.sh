#!/usr/bin/env bash
# Fails if any C source differs from what .clang-format makes of it.
set -uo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files -co --exclude-standard -- '*.c' '*.h' 2>/dev/null \
                     | grep -E '^(common|services|cli|tests/unit|bench)/' || true)
if [[ ${#files[@]} -eq 0 ]]; then
    mapfile -t files < <(find common services cli tests/unit bench -name '*.[ch]' 2>/dev/null)
fi
bad=0
for f in "${files[@]}"; do
    [[ -f "$f" ]] || continue
    if ! clang-format --dry-run -Werror "$f" >/dev/null 2>&1; then
        echo "not clang-formatted: $f (run: clang-format -i $f)"
        bad=1
    fi
done
echo "clang-format: ${#files[@]} files checked"
exit $bad
