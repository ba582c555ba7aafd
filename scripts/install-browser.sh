#!/usr/bin/env bash
# Installs what the browser test (tests/integration/test_web_ui.py) needs and is
# missing: Debian's chromium (scripts/deps.sh --test lists it) and playwright-core
# from npm, pinned, into $CCM_BROWSER_DIR (default ~/.cache/ccm/browser-test; never
# into the source tree, and no browser download: Playwright drives /usr/bin/chromium).
#   scripts/install-browser.sh     prints the directory holding node_modules last
# Idempotent: a second run installs nothing and needs no network.
set -euo pipefail

# playwright-core 1.61.1 is the newest that runs on Debian 12's nodejs (18.20.4): its
# engines field says node >= 18, and its start-up check (lib/bootstrap.js) refuses only
# node < 18. From 1.62 on both say >= 20, and a fresh Debian 12 failed the browser test
# with "Playwright requires Node.js 20 or higher". We keep Debian's node rather than
# install a second one from npm: it is the node the Claude CLI's tests already use, it
# comes with the system's updates, and it needs no binary kept in a cache. Playwright
# drives Debian's chromium over CDP, which is compatible across versions: 1.61.1 is built
# against Chromium 149 and passes tests/integration/test_web_ui.py with Debian's 156.
# Before raising this pin, check `npm view playwright-core@X engines` against Debian's node.
PLAYWRIGHT_VERSION=1.61.1
NODE_MIN_MAJOR=18
PREFIX=${CCM_BROWSER_DIR:-$HOME/.cache/ccm/browser-test}

# As root, apt-get directly (a minimal Debian has no sudo); otherwise through sudo.
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
fi
apt_install() {
    if [[ ${#sudo[@]} -gt 0 ]] && ! command -v sudo >/dev/null; then
        echo "install-browser: need root or sudo to install: $*" >&2
        exit 1
    fi
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
