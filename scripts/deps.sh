#!/usr/bin/env bash
# Installs what ccm needs on Debian 12, only what is missing.
#   scripts/deps.sh          build and run dependencies
#   scripts/deps.sh --test   also what the test suite needs
# Runs as root, or through sudo. A second run installs nothing and needs no network.
set -euo pipefail

packages=(build-essential cmake pkg-config git tmux ca-certificates
          libzmq3-dev libczmq-dev libsqlite3-dev libcjson-dev libcurl4-openssl-dev
          uuid-dev libwebsockets-dev)
if [[ "${1:-}" == "--test" ]]; then
    packages+=(python3 python3-zmq python3-websockets sqlite3 clang-format systemd procps psmisc iproute2
               chromium postgresql-15 python3-psycopg2)
fi

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [[ "$status" == "install ok installed" ]] || missing+=("$pkg")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "deps: all ${#packages[@]} packages present"
    exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
