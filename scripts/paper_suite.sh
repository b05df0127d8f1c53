#!/usr/bin/env bash
# Run or resume the paper suite on the embedded backbone, one job at a time, one thread (the CPU matrix of
# reports/main.md). Complete records are skipped, covered subsets are read from the full records, jobs whose
# record another process is writing are left to it, and a job that cannot run here (data or weights missing)
# prints one line and the sweep goes on. Rerunning the script continues.
#   nohup bash scripts/paper_suite.sh > logs/paper_suite.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m harness -m +suite=paper run.threads=1 run.progress=false "$@"
