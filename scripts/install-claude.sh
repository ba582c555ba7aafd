#!/usr/bin/env bash
# Installs the real Claude Code CLI for the tests, into tests/.claude-cli (no global
# install). Ensures node and npm first, from Debian's packages when they are missing.
# The tests run it offline against tests/fake_anthropic.py (see shared/REAL-CLIENT.md).
#   scripts/install-claude.sh     prints the path of the claude binary last
# Idempotent: a second run installs nothing and needs no network.
set -euo pipefail

CLAUDE_VERSION=2.1.197
NODE_MIN_MAJOR=18 # claude-code's engines field: node >= 18 (Debian 12 ships 18.20)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX="$ROOT/tests/.claude-cli"
BIN="$PREFIX/node_modules/.bin/claude"

# As root, apt-get directly (a minimal Debian has no sudo); otherwise through sudo.
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
fi

# node and npm: install Debian's only when a command is missing. Where node comes from
# elsewhere (e.g. a NodeSource build that bundles npm), leave it alone.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    if [[ ${#sudo[@]} -gt 0 ]] && ! command -v sudo >/dev/null; then
        echo "install-claude: need root or sudo to install: nodejs npm" >&2
        exit 1
    fi
    echo "install-claude: installing nodejs and npm"
    export DEBIAN_FRONTEND=noninteractive
    if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends nodejs npm; then
        # Empty or stale package lists: refresh once and retry.
        "${sudo[@]}" apt-get update -qq
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends nodejs npm
    fi
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if ((node_major < NODE_MIN_MAJOR)); then
    echo "install-claude: node $(node --version) is too old, need >= $NODE_MIN_MAJOR" >&2
    exit 1
fi

# claude itself: skip when the pinned version is already there.
installed=""
if [[ -x "$BIN" ]]; then
    installed=$("$BIN" --version 2>/dev/null | awk '{print $1}' || true)
fi
if [[ "$installed" != "$CLAUDE_VERSION" ]]; then
    echo "install-claude: installing @anthropic-ai/claude-code@$CLAUDE_VERSION" \
        "(node $(node --version), npm $(npm --version))"
    mkdir -p "$PREFIX"
    npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
        "@anthropic-ai/claude-code@$CLAUDE_VERSION"
    installed=$("$BIN" --version | awk '{print $1}')
    if [[ "$installed" != "$CLAUDE_VERSION" ]]; then
        echo "install-claude: $BIN reports '$installed', expected $CLAUDE_VERSION" >&2
        exit 1
    fi
fi

echo "$BIN"
