#!/usr/bin/env bash
# Run a list of harness jobs one after another (each resumes its own record), e.g.
#   nohup bash scripts/queue_runs.sh "method=vanilla_nocontext task=locomo" "method=vanilla task=locomo" &
# Logs go to logs/<QUEUE><n>.log (QUEUE defaults to "job"; give two queues different names to run
# them side by side). Running jobs in sequence keeps the CPU for one job at a time.
# AFTER_PID=<pid> waits for that process (e.g. a job of an earlier queue) to exit before starting.
set -u
cd "$(dirname "$0")/.."
mkdir -p logs
i=0
queue=${QUEUE:-job}
if [ -n "${AFTER_PID:-}" ]; then
  echo "[queue] $(date +%FT%T) $queue waits for pid $AFTER_PID" >> logs/queue.log
  while kill -0 "$AFTER_PID" 2>/dev/null; do sleep 20; done
fi
for job in "$@"; do
  i=$((i + 1))
  echo "[queue] $(date +%FT%T) $queue$i start: $job" >> logs/queue.log
  # shellcheck disable=SC2086
  .venv/bin/python -m harness $job > "logs/$queue$i.log" 2>&1
  echo "[queue] $(date +%FT%T) $queue$i exit $?: $job" >> logs/queue.log
done
