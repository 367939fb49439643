#!/usr/bin/env bash
# Install headless Chromium and its WebDriver (Debian packages `chromium` and
# `chromium-driver`) for tests/test_browser.py. Idempotent: does nothing when
# /usr/bin/chromium and /usr/bin/chromedriver already exist. Uses sudo only
# when not root. Without them the browser test skips locally and fails in CI.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver

if [[ -x "$CHROMIUM" && -x "$DRIVER" ]]; then
    echo "==> browser: $("$CHROMIUM" --version 2>/dev/null || echo chromium) and" \
         "$("$DRIVER" --version 2>/dev/null | cut -d' ' -f1-2 || echo chromedriver)" \
         "already installed"
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    echo "install_browser.sh: not root and no sudo: cannot install chromium" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: no apt-get (not Debian/Ubuntu): install chromium and" \
         "chromedriver yourself" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "==> browser: apt-get update"
"${SUDO[@]}" apt-get update -q
echo "==> browser: apt-get install chromium chromium-driver"
"${SUDO[@]}" apt-get install -y -q --no-install-recommends \
    chromium chromium-driver fonts-liberation
echo "==> browser: $("$CHROMIUM" --version), $("$DRIVER" --version | cut -d' ' -f1-2)"
