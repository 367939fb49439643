#!/usr/bin/env bash
# apt_install.sh NAME PACKAGE...: install Debian packages for the tests, as root or
# through sudo, printing each step under "==> NAME:". Fails loudly (non-zero) when
# it cannot: not root and no sudo, no apt-get, or apt-get itself failing.
# Used by install_browser.sh and install_postgres.sh.
set -euo pipefail

name=$1; shift
if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "apt_install.sh: error: not root and no sudo: cannot install $*" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "apt_install.sh: error: no apt-get (not Debian/Ubuntu): install $* yourself" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "==> $name: apt-get update"
"${SUDO[@]}" apt-get update -q
echo "==> $name: apt-get install $*"
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "$@"
