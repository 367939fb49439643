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

bash "$(dirname "$0")/apt_install.sh" browser chromium chromium-driver fonts-liberation
echo "==> browser: $("$CHROMIUM" --version), $("$DRIVER" --version | cut -d' ' -f1-2)"
