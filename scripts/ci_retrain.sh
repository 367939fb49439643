#!/usr/bin/env bash
# CI retraining: bring the pipeline up to date with `dvc repro` (DVC reruns only
# the stages whose code, params or data changed), then report what changed
# against a base revision as markdown: on stdout and, under GitHub Actions, in
# the job summary ($GITHUB_STEP_SUMMARY). Works the same locally.
#
#   bash scripts/ci_retrain.sh [--commit] [--push] [BASE_REF]
#
# BASE_REF  the revision to compare metrics and params with. An empty or
#           all-zero value or one that is not a commit here counts as not given.
#           Not given: origin/$GITHUB_BASE_REF in a pull request; else the
#           remote's default branch when HEAD is not that commit; else HEAD.
# --commit  (or CI_COMMIT_LOCK=1) push the outputs and the run cache to the DVC
#           remote (a failed push stops here, nothing committed), then commit
#           dvc.lock and reports/ (only those) with "[skip ci]" in the message.
# --push    (or CI_PUSH=1) --commit, then push that commit to the current branch.
#
# DVC remote: .dvc/config's default, else the first; DVC_REMOTE_ENDPOINT_URL
# (MinIO & co.) goes to .dvc/config.local. MLflow: MLFLOW_TRACKING_URI, else
# mlflow.db. The loss curves: $CI_ARTIFACTS_DIR/loss_curves.png (ci-artifacts/).
# This script runs git and DVC; the decisions and the report: `gptpipe ci --help`.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; }

commit=0 push=0 base_arg=""
[[ "${CI_COMMIT_LOCK:-0}" == 1 || "${CI_COMMIT_LOCK:-}" == true ]] && commit=1
[[ "${CI_PUSH:-0}" == 1 || "${CI_PUSH:-}" == true ]] && push=1
while (($#)); do
  case "$1" in
    --commit) commit=1 ;;
    --push) push=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; base_arg="${1:-}"; break ;;
    -*) echo "ci_retrain.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) base_arg="$1" ;;
  esac
  shift
done
((push)) && commit=1

cd "$(dirname "$0")/.."
[[ -x .venv/bin/dvc ]] && export PATH="$PWD/.venv/bin:$PATH"
# A workflow passes a secret that does not exist as an empty string: that is "not set".
for var in MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD \
           AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN DVC_REMOTE_ENDPOINT_URL; do
  if [[ -z "${!var:-}" ]]; then unset "$var"; fi
done
warn() { echo "warning: $*" >&2; [[ "${GITHUB_ACTIONS:-}" != true ]] || echo "::warning::$*"; }

base="$(gptpipe ci base "$base_arg")"
head_sha="$(git rev-parse --short HEAD 2>/dev/null || echo none)"
echo "==> base for the diffs: ${base:-none (no commit yet)}; HEAD: $head_sha"

remote="$(gptpipe ci remote)"
if [[ -n "$remote" && -n "${DVC_REMOTE_ENDPOINT_URL:-}" ]]; then
  dvc remote modify --local "$remote" endpointurl "$DVC_REMOTE_ENDPOINT_URL"
fi
dvc_files=(); while IFS= read -r f; do dvc_files+=("$f"); done < <(git ls-files -- '*.dvc' 2>/dev/null || true)
if ((${#dvc_files[@]})); then
  if [[ -n "$remote" ]]; then
    echo "==> dvc pull ${dvc_files[*]}"
    dvc pull "${dvc_files[@]}"
  else
    echo "==> dvc checkout ${dvc_files[*]} (no DVC remote: from the local cache)"
    dvc checkout "${dvc_files[@]}" \
      || warn "could not check out ${dvc_files[*]} from the local DVC cache and no DVC remote is configured (dvc remote add -d ...)"
  fi
fi

# ---- retrain: what is out of date first, to know afterwards what ran -----------
state="$(mktemp)" && trap 'rm -f "$state"' EXIT
gptpipe ci before "$state"
repro_args=()
[[ -z "$remote" ]] || repro_args+=(--pull)
forced="$(gptpipe ci source)"
if [[ -n "$forced" ]]; then
  echo "==> $forced"
  dvc repro --single-item --force ${repro_args[@]+"${repro_args[@]}"} download 2>&1
fi
echo "==> dvc repro${repro_args[*]+ ${repro_args[*]}}"
dvc repro ${repro_args[@]+"${repro_args[@]}"} 2>&1

pushed=()  # ---- push the outputs the lock will point at ---------------------
if ((commit)) && [[ -n "$remote" ]]; then
  echo "==> dvc push -r $remote; dvc push --run-cache -r $remote"
  if ! { dvc push -r "$remote" && dvc push --run-cache -r "$remote"; }; then
    error="ci_retrain.sh: error: dvc push to $(gptpipe ci remote --describe) failed (dvc's error is above); nothing committed"
    [[ -z "${GITHUB_STEP_SUMMARY:-}" ]] || printf '%s\n' "# Retraining report" "" "**Error:** $error" >>"$GITHUB_STEP_SUMMARY"
    echo "$error" >&2
    exit 1
  fi
  pushed=(--pushed)
fi

# ---- the report (stdout and $GITHUB_STEP_SUMMARY), then commit and push --------
gptpipe ci report "$state" --base "$base" ${pushed[@]+"${pushed[@]}"}
((commit)) || exit 0
ran="$(gptpipe ci ran "$state")"
git add -A -- dvc.lock reports
if git diff --cached --quiet -- dvc.lock reports; then
  echo "==> nothing to commit: dvc.lock and reports/ are unchanged"
  exit 0
fi
ident=()  # no identity configured (GitHub's runner): the Actions bot's
[[ -n "$(git config user.email || true)" ]] \
  || ident=(-c "user.name=github-actions[bot]" -c "user.email=41898282+github-actions[bot]@users.noreply.github.com")
git ${ident[@]+"${ident[@]}"} commit -q -m "ci: retrain pipeline on ${head_sha} [skip ci]" \
  -m "Stages run: ${ran:-none}. Updated dvc.lock and reports/." -- dvc.lock reports
echo "==> committed $(git rev-parse --short HEAD): dvc.lock and reports/"
((push)) || exit 0
branch="${GITHUB_REF_NAME:-$(git symbolic-ref --quiet --short HEAD || true)}"
if [[ "${GITHUB_EVENT_NAME:-}" == pull_request* || -z "$branch" ]]; then
  warn "not pushing: no branch to push to (detached HEAD or a pull request)"
elif git push origin "HEAD:refs/heads/$branch"; then
  echo "==> pushed to $branch"
else  # the branch moved on while we trained: its newer (queued) run commits its own lock
  warn "push to $branch was rejected (the branch moved on?): its newer run will commit the lock"
fi
