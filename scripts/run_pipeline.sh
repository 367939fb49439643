#!/usr/bin/env bash
# Run the whole pipeline with the project's venv: make sure git and DVC are
# ready (a tarball without .git still works), then `dvc repro`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "==> no git repository here: creating one (DVC needs git)"
  git init -q
fi
if ! git rev-parse HEAD >/dev/null 2>&1; then
  git add -A >/dev/null 2>&1 || true
  git -c user.name=gptpipe -c user.email=gptpipe@localhost commit -q -m "gptpipe: initial state" || true
fi
echo "==> dvc repro (download -> clean -> tokenize -> split -> train -> evaluate -> sample)"
dvc repro "$@"
echo
echo "==> metrics"
dvc metrics show
echo
echo "==> samples: reports/samples.md   runs: . .venv/bin/activate; gptpipe ui"
