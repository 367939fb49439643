#!/usr/bin/env bash
# CI retraining: bring the pipeline up to date with `dvc repro` (DVC reruns only
# the stages whose code, params or data changed), then report what changed
# against a base revision as markdown: on stdout and, under GitHub Actions, in
# the job summary ($GITHUB_STEP_SUMMARY). Works the same locally.
#
#   bash scripts/ci_retrain.sh [--commit] [--push] [BASE_REF]
#
# BASE_REF  the revision to compare metrics and params with. An empty or
#           all-zero value (a new branch's "before") or one that is not a
#           commit here counts as not given. Not given: origin/$GITHUB_BASE_REF
#           in a pull request; else the remote's default branch (origin/main)
#           when HEAD is not that commit; else HEAD (locally: what your
#           uncommitted changes did).
# --commit  (or CI_COMMIT_LOCK=1) commit dvc.lock and reports/ afterwards, with
#           "[skip ci]" in the message. Only those paths go into the commit.
# --push    (or CI_PUSH=1) --commit, then push that commit to the current branch.
#
# The DVC remote: with one configured (.dvc/config; its default, else the first
# listed), --commit first runs `dvc push` and `dvc push --run-cache` to it, so a
# teammate's `dvc pull` of the committed dvc.lock finds every output. A push
# that fails stops the script with one line naming the remote; nothing is
# committed. Without a remote the report carries a warning. Credentials come
# from the environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for S3);
# DVC_REMOTE_ENDPOINT_URL, when set, is the remote's endpointurl (MinIO & co.),
# written to .dvc/config.local, never committed.
#
# MLflow: MLFLOW_TRACKING_URI (+ MLFLOW_TRACKING_USERNAME/PASSWORD) when set, else
# the sqlite store mlflow.db. The report has the MLflow runs this job made next
# to the base's champion (`gptpipe runs`), and the loss curves of the base and
# the new model as $CI_ARTIFACTS_DIR/loss_curves.png (default ci-artifacts/,
# gitignored; the workflow uploads it and links it from the job summary).
#
# The corpus: corpus/ is a dep of the download stage, so DVC sees edits there.
# A local data.source outside corpus/ is invisible to DVC (only the data.*
# params are deps), so for one the download stage is always rerun; if the text
# is the same DVC then skips everything after it. Corpus files tracked with
# `dvc add` (*.dvc) are pulled from the DVC remote, or checked out of the local
# cache when no remote is configured. Metrics diffs need no cache: reports/metrics.json is
# `cache: false`, so every revision that committed its run has its metrics in git;
# a base without them (the repo ships no dvc.lock nor reports) shows "-" as old value.
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; }

commit=0
push=0
[[ "${CI_COMMIT_LOCK:-0}" == 1 || "${CI_COMMIT_LOCK:-}" == true ]] && commit=1
[[ "${CI_PUSH:-0}" == 1 || "${CI_PUSH:-}" == true ]] && push=1
base_arg=""
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
artifacts_dir="${CI_ARTIFACTS_DIR:-ci-artifacts}"

warn() {
  echo "warning: $*" >&2
  if [[ "${GITHUB_ACTIONS:-}" == true ]]; then echo "::warning::$*"; fi
}
is_commit() { [[ -n "$1" ]] && git rev-parse --verify --quiet "$1^{commit}" >/dev/null 2>&1; }

# ---- the base revision --------------------------------------------------------
base=""
if [[ -n "$base_arg" && ! "$base_arg" =~ ^0+$ ]]; then
  if is_commit "$base_arg"; then
    base="$base_arg"
  else
    warn "base '$base_arg' is not a commit in this clone (shallow clone or force-push?): using the default base"
  fi
fi
default_branch="$(git symbolic-ref --quiet --short refs/remotes/origin/HEAD 2>/dev/null || echo origin/main)"
if [[ -z "$base" && -n "${GITHUB_BASE_REF:-}" ]] && is_commit "origin/$GITHUB_BASE_REF"; then
  base="origin/$GITHUB_BASE_REF"
fi
if [[ -z "$base" ]] && is_commit "$default_branch" \
   && [[ "$(git rev-parse "$default_branch")" != "$(git rev-parse HEAD 2>/dev/null || true)" ]]; then
  base="$default_branch"
fi
if [[ -z "$base" ]] && is_commit HEAD; then
  base=HEAD
fi
# a full sha (as CI passes it) makes a wide table header: dvc takes the short one too
if [[ "$base" =~ ^[0-9a-f]{40}$ ]]; then base="$(git rev-parse --short "$base")"; fi
head_sha="$(git rev-parse --short HEAD 2>/dev/null || echo none)"
if [[ -n "$base" ]]; then
  base_desc="\`$base\` ($(git rev-parse --short "$base"))"
else
  base_desc="none (no commit yet)"
fi
echo "==> base for the diffs: $base_desc; HEAD: $head_sha"

# ---- the corpus ---------------------------------------------------------------
# The remote: the default one, else the first listed. Its URL without a password.
has_remote=0
remote_name=""
if default_remote="$(dvc remote default 2>/dev/null)"; then remote_name="$default_remote"; fi
if [[ -z "$remote_name" ]]; then
  remote_name="$(dvc remote list 2>/dev/null | awk 'NR == 1 {print $1}')"
fi
if [[ -n "$remote_name" ]]; then
  has_remote=1
  remote_url="$(dvc remote list 2>/dev/null | awk -v n="$remote_name" '$1 == n {print $2}' \
                | sed -E 's#(://)[^/]*@#\1***@#')"
  remote_desc="DVC remote '$remote_name' ($remote_url)"
  if [[ -n "${DVC_REMOTE_ENDPOINT_URL:-}" ]]; then
    dvc remote modify --local "$remote_name" endpointurl "$DVC_REMOTE_ENDPOINT_URL"
  fi
fi

dvc_files=()
while IFS= read -r f; do dvc_files+=("$f"); done < <(git ls-files -- '*.dvc' 2>/dev/null || true)
if ((${#dvc_files[@]})); then
  if ((has_remote)); then
    echo "==> dvc pull ${dvc_files[*]}"
    dvc pull "${dvc_files[@]}"
  else
    echo "==> dvc checkout ${dvc_files[*]} (no DVC remote: from the local cache)"
    dvc checkout "${dvc_files[@]}" \
      || warn "could not check out ${dvc_files[*]} from the local DVC cache and no DVC remote is configured (dvc remote add -d ...)"
  fi
fi

# Where data.source is: "remote" (the embedded plays or a URL: they change only
# with data.*), "watched" (inside corpus/, a dep of the download stage) or
# "unwatched" (a local file or folder elsewhere, which DVC cannot see change).
source_info="$(python - <<'PY'
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

with open("params.yaml", encoding="utf-8") as fh:
    params = yaml.safe_load(fh) or {}
source = str((params.get("data") or {}).get("source", "shakespeare")).strip()
parts = urllib.parse.urlsplit(source)
scheme = parts.scheme.lower() if len(parts.scheme) > 1 else ""  # one letter: a drive
if source == "shakespeare" or scheme in ("http", "https"):
    kind = "remote"
else:
    path = Path(urllib.request.url2pathname(parts.path)) if scheme == "file" else Path(source)
    inside = path.expanduser().resolve().is_relative_to(Path("corpus").resolve())
    kind = "watched" if inside else "unwatched"
print(kind, source)
PY
)"
read -r source_kind source_param <<<"$source_info"

# The champion before this job (its run id), for the report: evaluate may move it.
champion_run() {
  gptpipe runs --csv 2>/dev/null | python -c '
import csv, sys
print(next((r["run_id"] for r in csv.DictReader(sys.stdin) if r.get("champion") == "True"), ""))
' 2>/dev/null || true
}
champion_before="$(champion_run)"

# ---- retrain -----------------------------------------------------------------
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
repro_args=()
((has_remote)) && repro_args+=(--pull)
if [[ "$source_kind" == unwatched ]]; then
  echo "==> data.source ($source_param) is outside corpus/, where DVC cannot see it change: rerunning the download stage"
  dvc repro --single-item --force ${repro_args[@]+"${repro_args[@]}"} download 2>&1 | tee "$log"
fi
echo "==> dvc repro${repro_args[*]+ ${repro_args[*]}}"
dvc repro ${repro_args[@]+"${repro_args[@]}"} 2>&1 | tee -a "$log"

ran="$(sed -n "s/^Running stage '\([^']*\)'.*/\1/p" "$log" | awk '!seen[$0]++' | paste -sd, - | sed 's/,/, /g')"
restored="$(sed -n -e "s/^Stage '\([^']*\)' is cached - skipping run.*/\1/p" \
                   -e "s/^Pulling data for stage: '\([^']*\)'.*/\1/p" "$log" \
           | awk '!seen[$0]++' | paste -sd, - | sed 's/,/, /g')"

# ---- push the outputs the lock will point at ---------------------------------
summary() {  # append to the job summary (GitHub Actions), if any
  if [[ -n "${GITHUB_STEP_SUMMARY:-}" ]]; then printf '%s\n' "$@" >>"$GITHUB_STEP_SUMMARY"; fi
}
push_note=""
if ((commit)) && ((has_remote)); then
  push_log="$(mktemp)"
  echo "==> dvc push -r $remote_name; dvc push --run-cache -r $remote_name"
  if dvc push -r "$remote_name" >"$push_log" 2>&1 \
     && dvc push --run-cache -r "$remote_name" >>"$push_log" 2>&1; then
    sed 's/^/    /' "$push_log"
    push_note="- Outputs and run cache pushed to $remote_desc"
  else
    sed 's/^/    /' "$push_log"  # dvc's own words, in the job log
    why="$(grep -m1 '^ERROR' "$push_log" | sed -E 's/^ERROR:? *//' | cut -c1-300)"
    rm -f "$push_log"
    error="ci_retrain.sh: error: dvc push to $remote_desc failed${why:+: $why}; nothing committed"
    summary "# Retraining report" "" "**Error:** $error"
    echo "$error" >&2
    exit 1
  fi
  rm -f "$push_log"
elif ((has_remote)); then
  push_note="- Outputs not pushed to $remote_desc (no --commit)"
else
  push_note="- **Warning: no DVC remote is configured.** The outputs are only in this job's cache: a teammate's \`dvc pull\` of this dvc.lock finds nothing (\`dvc remote add -d storage s3://...\`; see docs/team.md)"
  warn "no DVC remote is configured: the outputs of this dvc.lock cannot be pulled by anyone"
fi

# ---- the report --------------------------------------------------------------
diff_md() {  # KIND (metrics|params): dvc's markdown table, or a note when empty
  local out
  out="$(dvc "$1" diff --md "$base")" || return
  # dvc prints a bare header when nothing changed: a table needs a third row
  if [[ "$(grep -c '^|' <<<"$out" || true)" -gt 2 ]]; then
    printf '%s\n' "$out"
  else
    echo "_No $1 changed against \`$base\`._"
  fi
}
if [[ -n "$base" ]]; then
  echo "==> dvc metrics diff --md $base; dvc params diff --md $base"
  metrics_md="$(diff_md metrics)"
  params_md="$(diff_md params)"
else
  metrics_md="_No base revision to compare with._"
  params_md="$metrics_md"
fi

# Where the runs went: a server (password-free URL) or the local sqlite store.
if [[ -n "${MLFLOW_TRACKING_URI:-}" ]]; then
  tracking_desc="$(sed -E 's#(://)[^/]*@#\1***@#' <<<"$MLFLOW_TRACKING_URI")"
else
  tracking_desc="mlflow.db (sqlite; no MLFLOW_TRACKING_URI)"
fi

# The MLflow run this job made (reports/mlflow_run.json differs from the base's)
# next to the base's run and the champion before this job, as `gptpipe runs`
# shows them (its champion column: the champion now).
run_id_of() { python -c 'import json, sys; print(json.load(sys.stdin)["run_id"])' 2>/dev/null; }
runs_md() {
  local base_run="" new_run="" table runs_help
  if [[ -n "$base" ]]; then
    # a DVC output: from the local cache or the remote, as the base's dvc.lock records it
    base_run="$(python -c 'import dvc.api, sys; print(dvc.api.read("reports/mlflow_run.json", rev=sys.argv[1]))' \
                "$base" 2>/dev/null | run_id_of || true)"
  fi
  if [[ -f reports/mlflow_run.json ]]; then
    new_run="$(run_id_of <reports/mlflow_run.json || true)"
  fi
  if [[ -z "$new_run" || "$new_run" == "$base_run" ]]; then
    echo "_No new MLflow run: the model is the base's._"
    return
  fi
  echo "New run \`$new_run\`; the base's run: \`${base_run:-none}\`; the champion before" \
       "this job: \`${champion_before:-none}\`."
  echo
  runs_help="$(gptpipe runs --help 2>/dev/null || true)"
  if ! grep -q -- --run-ids <<<"$runs_help"; then
    echo "_This gptpipe has no \`gptpipe runs --run-ids\`: no runs table._"
  elif table="$(gptpipe runs --markdown --run-ids "$new_run,$base_run,$champion_before" 2>&1)"; then
    printf '%s\n' "$table"
  else
    echo "_\`gptpipe runs\` failed: ${table//$'\n'/ }_"
  fi
}

# The loss curves: the base's committed reports/train_losses.csv (when it has
# one) against the new one, as a PNG beside the report.
curves_md() {
  if [[ ! -f reports/train_losses.csv ]]; then
    echo "_No loss curves: no reports/train_losses.csv._"
    return
  fi
  local base_csv="" args=()
  if [[ -n "$base" ]] && git cat-file -e "$base:reports/train_losses.csv" 2>/dev/null; then
    base_csv="$(mktemp)"
    git show "$base:reports/train_losses.csv" >"$base_csv"
    args+=(--base "$base_csv" --base-label "base $(git rev-parse --short "$base")")
  fi
  mkdir -p "$artifacts_dir"
  if python -m gptpipe.curves ${args[@]+"${args[@]}"} --new reports/train_losses.csv \
       --new-label "new" -o "$artifacts_dir/loss_curves.png" >/dev/null; then
    echo "Loss curves (base dashed, new solid): \`$artifacts_dir/loss_curves.png\`"
    if [[ -z "$base_csv" ]]; then
      echo
      echo "_The base has no committed reports/train_losses.csv: the new curves alone._"
    fi
  else
    echo "_Could not draw the loss curves (see the job log)._"
  fi
  if [[ -n "$base_csv" ]]; then rm -f "$base_csv"; fi
}

report="$(
  echo "# Retraining report"
  echo
  echo "- Base: $base_desc; HEAD: \`$head_sha\` plus the retrained workspace"
  echo "- Stages run: ${ran:-none (everything was up to date)}"
  if [[ "$source_kind" == unwatched ]]; then
    echo "- data.source \`$source_param\` is outside corpus/: the download stage reruns every time, to see changes in it"
  fi
  if [[ -n "$restored" ]]; then echo "- Outputs restored, not rerun (DVC run cache or remote): $restored"; fi
  echo "$push_note"
  echo "- MLflow: $tracking_desc"
  echo
  echo "## Metrics diff"
  echo
  printf '%s\n' "$metrics_md"
  echo
  echo "## Params diff"
  echo
  printf '%s\n' "$params_md"
  echo
  echo "## MLflow runs"
  echo
  runs_md
  echo
  echo "## Loss curves"
  echo
  curves_md
)"
echo
printf '%s\n' "$report"
summary "$report"

# ---- commit (and push) the new lock and reports ------------------------------
if ((commit)); then
  git add -A -- dvc.lock reports
  if git diff --cached --quiet -- dvc.lock reports; then
    echo "==> nothing to commit: dvc.lock and reports/ are unchanged"
  else
    ident=()
    if [[ -z "$(git config user.email || true)" ]]; then
      ident=(-c "user.name=github-actions[bot]"
             -c "user.email=41898282+github-actions[bot]@users.noreply.github.com")
    fi
    git ${ident[@]+"${ident[@]}"} commit -q \
      -m "ci: retrain pipeline on ${head_sha} [skip ci]" \
      -m "Stages run: ${ran:-none}. Updated dvc.lock and reports/." \
      -- dvc.lock reports
    echo "==> committed $(git rev-parse --short HEAD): dvc.lock and reports/"
    if ((push)); then
      branch="${GITHUB_REF_NAME:-$(git symbolic-ref --quiet --short HEAD || true)}"
      if [[ "${GITHUB_EVENT_NAME:-}" == pull_request* || -z "$branch" ]]; then
        warn "not pushing: no branch to push to (detached HEAD or a pull request)"
      elif git push origin "HEAD:refs/heads/$branch"; then
        echo "==> pushed to $branch"
      else
        # The branch moved on while we trained: that newer commit has its own
        # (queued) run, which commits its own dvc.lock.
        warn "push to $branch was rejected (the branch moved on?): its newer run will commit the lock"
      fi
    fi
  fi
fi
