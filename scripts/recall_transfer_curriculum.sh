#!/usr/bin/env bash
# Train for transfer (issue 32 step 3): the one-fact recall adapters, continued on diverse recall dialogues
# (conf/train_data/recall_diverse.yaml: many statement and question template families, six value formats,
# 1-4 facts with distractors, 100-1,000-token histories, held out by template family), then the online distilled
# stage of the shipped recipe on the same dialogues. For each variant given (default: msw tsw):
#   1. recall_diverse, warm start from the recall-only one-fact adapter (experiments/adapters/smollm2_135m/
#      recall_only/deltamem_<variant>, the lineage's last recall round before the distilled stage); write 1,280
#      tokens (the longest histories are ~1,100), read 128, RECALL_STEPS x 2 episodes, lr 3e-3; repeated with a
#      new seed (warm start from the round before, at most RECALL_ROUNDS rounds) while the held-out CE with
#      another dialogue's history exceeds the own-history CE by less than 0.1 nats. The held-out dialogues are
#      worded in families never trained on, so that gap is recall under unseen wording.
#   2. recall_diverse_self_distill_online (the bare backbone's own replies read online, KL to the bare backbone),
#      warm start from the last round of 1, DISTILL_STEPS x 2, read 256, seed 11: keeps general ability (IFEval).
# Outputs go to $RECALL_TRANSFER_ROOT (default runs/train/recall_transfer)/<variant>_<stage>, never to adapters/.
# A stage whose training.json says "complete" is skipped and an interrupted one resumes from its checkpoint, so
# rerunning the same command continues. Settings (environment): RECALL_STEPS (1600), RECALL_ROUNDS (3),
# DISTILL_STEPS (600), THREADS (1), EVAL_EPISODES (48), WARM_START_DIR (the recall_only folder), HISTORY_TOKENS
# (100,1000: the range of history lengths drawn, training and held-out alike); arguments after "--" are passed to
# every stage (e.g. backbone.device=cuda:0).
#   nohup bash scripts/recall_transfer_curriculum.sh msw tsw > logs/recall_transfer.log 2>&1 &
# The short-history variant (the acceptance bar is at 100-250-token histories; a step costs about a third on CPU):
#   RECALL_TRANSFER_ROOT=runs/train/recall_transfer_short HISTORY_TOKENS=100,300 RECALL_STEPS=800 \
#     nohup bash scripts/recall_transfer_curriculum.sh msw > logs/recall_transfer_short.log 2>&1 &
# Another backbone (e.g. on a GPU): run scripts/recall_curriculum.sh <variant> backbone=... backbone.device=cuda:0
# first, link its last one-fact round as $WARM_START_DIR/deltamem_<variant>, then this script with
# `-- backbone=... backbone.device=cuda:0`.
# Screen a stage (or a checkpoint's adapter/ folder) on the out-of-template dialogues before shipping anything:
#   python -m benchmarks.recall_out_of_template run --conditions msw_own,msw_other --buckets 100,250 \
#     --adapter msw=runs/train/recall_transfer/msw_recall_diverse    # then `report ... --report-dir DIR`
# and by forced choice (is the value in the state at all; minutes, no decoding):
#   python -m benchmarks.recall_forced_choice --adapter msw=runs/train/recall_transfer/msw_recall_diverse --no-context
set -euo pipefail
cd "$(dirname "$0")/.."
variants=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  case $1 in
    msw|tsw|ssw) variants+=("$1") ;;
    *) echo "usage: recall_transfer_curriculum.sh [msw] [tsw] [ssw] [-- hydra overrides...]; got '$1'" >&2; exit 2 ;;
  esac
  shift
done
[ "${1:-}" = "--" ] && shift
extra=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(msw tsw)

root=${RECALL_TRANSFER_ROOT:-runs/train/recall_transfer}
recall_steps=${RECALL_STEPS:-1600}
recall_rounds=${RECALL_ROUNDS:-3}
distill_steps=${DISTILL_STEPS:-600}
threads=${THREADS:-1}
eval_episodes=${EVAL_EPISODES:-48}
history_tokens=${HISTORY_TOKENS:-100,1000}
[[ $history_tokens =~ ^[1-9][0-9]*,[1-9][0-9]*$ ]] || { echo "HISTORY_TOKENS must be MIN,MAX (tokens);" \
  "got '$history_tokens'" >&2; exit 2; }
extra=("train_data.sources.recall_diverse.history_tokens=[$history_tokens]" "${extra[@]}")
warm_dir=${WARM_START_DIR:-experiments/adapters/smollm2_135m/recall_only}
case $root in adapters|adapters/*|./adapters*) echo "refusing to write into adapters/ ($root)" >&2; exit 2 ;; esac
for n in "$recall_steps" "$recall_rounds" "$distill_steps" "$threads" "$eval_episodes"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "RECALL_STEPS, RECALL_ROUNDS, DISTILL_STEPS, THREADS and EVAL_EPISODES" \
    "must be positive integers; got '$n'" >&2; exit 2; }
done
mkdir -p "$root"
abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }  # adapters are resolved from the cwd

cpu_seconds() {  # CPU seconds logged by a stage's training steps (all invocations, resumes included)
  .venv/bin/python -c "import json,sys,pathlib
p=pathlib.Path(sys.argv[1])/'train_log.jsonl'
rows=[json.loads(l) for l in p.open()] if p.is_file() else []
print(round(sum(r.get('cpu_seconds',0) for r in rows if r.get('kind','train')=='train')))" "$1"
}

run_stage() {  # out_dir, then overrides
  local out=$1; shift
  if grep -qs '"status": "complete"' "$out/training.json"; then
    echo "[transfer] $(date +%FT%T) $out already complete ($(cpu_seconds "$out") CPU s of training steps)"; return
  fi
  echo "[transfer] $(date +%FT%T) $out start"
  local t0; t0=$(date +%s)
  # resume=true: continue from the last checkpoint, or start at step 0 when there is none
  .venv/bin/python -m harness.train method=deltamem_"$variant" out_dir="$out" resume=true \
    train.lr=0.003 run.threads="$threads" run.progress=false run.keep_checkpoints=1 \
    run.eval_episodes="$eval_episodes" "$@" "${extra[@]}"
  echo "[transfer] $(date +%FT%T) $out done: $(( $(date +%s) - t0 )) s wall in this invocation," \
    "$(cpu_seconds "$out") CPU s of training steps in all"
}

recall_gap() {  # other-history minus own-history held-out CE at the end of a finished stage
  .venv/bin/python -c "import json,sys; d=json.load(open(sys.argv[1]))
print(d['heldout_ce_other_history_last'] - d['heldout_ce_last'])" "$1/training.json"
}

for variant in "${variants[@]}"; do
  start=$warm_dir/deltamem_$variant
  [ -f "$start/deltamem_model.safetensors" ] || {
    echo "no warm-start adapter in $start (set WARM_START_DIR)" >&2; exit 2; }
  diverse=(train_data=recall_diverse train.write_length=1280 train.read_length=128 train.grad_accum=2
    train.max_steps="$recall_steps" run.save_every=100 run.eval_every=200)
  stage=$root/${variant}_recall_diverse
  run_stage "$stage" method.adapter="$(abs "$start")" "${diverse[@]}"
  prev=$stage
  for round in $(seq 2 "$recall_rounds"); do
    gap=$(recall_gap "$prev")
    echo "[transfer] $prev: held-out CE gap, another history vs own, $gap nats"
    .venv/bin/python -c "import sys; sys.exit(float(sys.argv[1]) >= 0.1)" "$gap" || break
    run_stage "${stage}_round$round" method.adapter="$(abs "$prev")" seed=$((5 + round)) "${diverse[@]}"
    prev=${stage}_round$round
  done
  run_stage "$root/${variant}_recall_diverse_self_distill_online" method.adapter="$(abs "$prev")" seed=11 \
    train_data=recall_diverse_self_distill_online train.write_length=1280 train.read_length=256 \
    train.grad_accum=2 train.max_steps="$distill_steps" run.save_every=100 run.eval_every=200
  echo "[transfer] $(date +%FT%T) $variant last stage: $root/${variant}_recall_diverse_self_distill_online"
done
times  # CPU time of this script and its children (user, system)
