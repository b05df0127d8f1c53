#!/usr/bin/env bash
# Run a list of harness jobs one after another (each resumes its own record), e.g.
#   nohup bash scripts/queue_runs.sh "method=vanilla_nocontext task=locomo" "method=vanilla task=locomo" &
# Logs go to logs/<n>.log. Running jobs in sequence keeps the CPU for one job at a time.
set -u
cd "$(dirname "$0")/.."
mkdir -p logs
i=0
for job in "$@"; do
  i=$((i + 1))
  echo "[queue] $(date +%FT%T) start: $job" >> logs/queue.log
  # shellcheck disable=SC2086
  .venv/bin/python -m harness $job > "logs/job$i.log" 2>&1
  echo "[queue] $(date +%FT%T) exit $?: $job" >> logs/queue.log
done
