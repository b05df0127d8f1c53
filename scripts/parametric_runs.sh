#!/usr/bin/env bash
# The CPU matrix of a parametric baseline on the embedded backbone, on the same questions as the other methods:
# LoCoMo (all 1,540, context protocol), HotpotQA (the 300-question subset), IFEval (first 100 prompts by the
# deterministic subset) and GPQA-Diamond (60, stratified). Records resume, so rerunning continues.
# TASKS="hotpotqa ifeval" runs only those.
#   nohup bash scripts/parametric_runs.sh context2lora > logs/runs_context2lora.log 2>&1 &
set -euo pipefail
method=${1:?usage: parametric_runs.sh METHOD [extra overrides]}
shift
cd "$(dirname "$0")/.."
run() { echo "[runs] $(date +%FT%T) $method $*"; .venv/bin/python -m harness method="$method" run.threads=1 \
  run.progress=false "$@" || echo "[runs] $(date +%FT%T) FAILED: $method $*"; }
limit() { case $1 in hotpotqa) echo task.limit=300;; gpqa_diamond) echo task.limit=60;; ifeval) echo task.limit=100;; esac; }
for task in ${TASKS:-hotpotqa gpqa_diamond ifeval locomo}; do run task="$task" $(limit "$task") "$@"; done
echo "[runs] $(date +%FT%T) $method done"
