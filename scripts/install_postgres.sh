#!/usr/bin/env bash
# Install PostgreSQL (Debian's `postgresql` package) for tests/test_team_loop.py
# and tests/test_server_load.py, which start a throwaway cluster of their own
# (initdb + pg_ctl in a temp dir, on a loopback port) as the MLflow server's
# backend store. Nothing here starts or enables the system cluster. Idempotent: does nothing when initdb is present.
# Uses sudo only when not root. Fails loudly (non-zero) when it cannot install.
set -euo pipefail

find_initdb() { printf "%s\n" /usr/lib/postgresql/*/bin/initdb | grep -v "\*" | sort -V | tail -n 1; }

initdb="$(find_initdb || true)"
if [[ -n "$initdb" ]]; then
    echo "==> postgres: $("$initdb" --version) already installed ($(dirname "$initdb"))"
    exit 0
fi

bash "$(dirname "$0")/apt_install.sh" postgres postgresql
initdb="$(find_initdb || true)"
if [[ -z "$initdb" ]]; then
    echo "install_postgres.sh: error: postgresql installed but no initdb under" \
         "/usr/lib/postgresql/*/bin" >&2
    exit 1
fi
echo "==> postgres: $("$initdb" --version) ($(dirname "$initdb"))"
