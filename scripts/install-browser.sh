#!/usr/bin/env bash
# Installs what the browser test (tests/integration/test_web_ui.py) needs and is
# missing: Debian's chromium (scripts/deps.sh --test lists it) and playwright-core
# from npm, pinned, into $CCM_BROWSER_DIR (default ~/.cache/ccm/browser-test; never
# into the source tree, and no browser download: Playwright drives /usr/bin/chromium).
#   scripts/install-browser.sh     prints the directory holding node_modules last
# Idempotent: a second run installs nothing and needs no network.
set -euo pipefail

PLAYWRIGHT_VERSION=1.65.1
NODE_MIN_MAJOR=18
PREFIX=${CCM_BROWSER_DIR:-$HOME/.cache/ccm/browser-test}

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
fi
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"; then
        # Empty or stale package lists: refresh once and retry.
        "${sudo[@]}" apt-get update -qq
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@"
    fi
}

if [[ ! -x /usr/bin/chromium ]]; then
    echo "install-browser: installing chromium"
    apt_install chromium
fi
# Where node comes from elsewhere (e.g. a NodeSource build that bundles npm), leave it.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "install-browser: installing nodejs and npm"
    apt_install nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if ((node_major < NODE_MIN_MAJOR)); then
    echo "install-browser: node $(node --version) is too old, need >= $NODE_MIN_MAJOR" >&2
    exit 1
fi

installed=""
if [[ -f "$PREFIX/node_modules/playwright-core/package.json" ]]; then
    installed=$(node -p "require('$PREFIX/node_modules/playwright-core/package.json').version" \
        2>/dev/null || true)
fi
if [[ "$installed" != "$PLAYWRIGHT_VERSION" ]]; then
    echo "install-browser: installing playwright-core@$PLAYWRIGHT_VERSION into $PREFIX"
    mkdir -p "$PREFIX"
    # playwright-core alone downloads no browser.
    npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
        "playwright-core@$PLAYWRIGHT_VERSION"
fi

echo "$PREFIX"
