#!/usr/bin/env bash
# Issue 30's matrix on the MAB-recipe data (NOT MemoryAgentBench; tasks/memoryagentbench/README.md), embedded
# backbone, one thread per run: 8K and 32K contexts, the same deterministic subset of questions (task.limit,
# stratified by competency) for every method. Builds the data first (seconds; byte-identical on every machine).
# Records resume, so rerunning continues; a run that fails prints one line and the sweep goes on.
#   nohup bash scripts/mab_recipe_runs.sh > logs/mab_recipe_runs.log 2>&1 &
#   LIMIT=40 LENGTHS="8192" bash scripts/mab_recipe_runs.sh      # a smaller slice
set -uo pipefail
cd "$(dirname "$0")/.."
data=${HARNESS_MAB_RECIPE:-.cache/mab_recipe}
limit=${LIMIT:-60}
.venv/bin/python -m tasks.memoryagentbench.recipe --out "$data" --length 8192 32768 || exit 2
run() { echo "[mab_recipe] $(date +%FT%T) $*"; .venv/bin/python -m harness task=memoryagentbench_recipe \
  task.data_dir="$data" task.limit="$limit" run.threads=1 run.progress=false "$@" ||
  echo "[mab_recipe] $(date +%FT%T) FAILED: $*"; }
for length in ${LENGTHS:-8192 32768}; do
  sources="[recipe_icl_banking77_${length},recipe_icl_clinc150_${length},recipe_mhqa_hotpotqa_${length}]"
  for method in vanilla_nocontext vanilla bm25_rag memorybank llmlingua1_smol; do
    run method=$method task.sources="$sources"
  done
  for method in deltamem_msw deltamem_tsw; do
    run method=$method method.protocol=memory task.sources="$sources"
    run method=$method method.protocol=memory control=other_history task.sources="$sources"
    run method=$method method.protocol=context task.sources="$sources"
  done
done
echo "[mab_recipe] $(date +%FT%T) done"
