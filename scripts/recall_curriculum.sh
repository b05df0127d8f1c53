#!/usr/bin/env bash
# The recall curriculum of harness/training/README.md ("Recall probes"), for one δ-mem variant:
#   1. copy task (20 code words), write 64 tokens, 400 steps x 4 episodes; repeated (warm start, seed 7,
#      then 8) while the held-out CE with another history exceeds the own-history CE by less than 0.5 nats,
#      i.e. while the state does not yet carry the word (SSW's message-mean write needed this)
#   2. synthetic one-fact dialogues, write 256, 800 x 2, warm start from 1; repeated the same way (seed 7,
#      8, then 9) while the gap is under 0.1 nats (MSW reached 0.29 after its second round)
#   3. one-fact dialogues + the bare backbone's own replies read online and distilled (read 256), 600 x 2,
#      warm start from the last round of 2
# all at lr 3e-3 (the recipe's 2e-4 learns only the answer form at these step counts), one thread.
#   nohup bash scripts/recall_curriculum.sh tsw > logs/curriculum_tsw.log 2>&1 &
# Each stage writes to $RECALL_ROOT (default probes/recall)/<variant>_<stage>; a stage whose training.json says
# "complete" is skipped and an interrupted one resumes from its last checkpoint, so rerunning the script
# continues. Arguments after the variant are Hydra overrides passed to every stage, e.g. on a GPU:
#   RECALL_ROOT=runs/train/recall_qwen3_4b bash scripts/recall_curriculum.sh msw backbone=qwen3_4b_instruct \
#     backbone.device=cuda:0
set -euo pipefail
variant=${1:?usage: recall_curriculum.sh tsw|ssw|msw [hydra overrides...]}
shift
extra=("$@")
case $variant in tsw|ssw|msw) ;; *) echo "usage: recall_curriculum.sh tsw|ssw|msw [hydra overrides...]; got '$variant'" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
root=${RECALL_ROOT:-probes/recall}
case $root in adapters|adapters/*|./adapters*) echo "refusing to write into adapters/ ($root)" >&2; exit 2 ;; esac
data=$root/data/copy20.jsonl
mkdir -p "$root/data"
[ -f "$data" ] || gunzip -c experiments/training/recall_probe_copy20_msw_lr3e-3/copy20.jsonl.gz > "$data"

abs() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }  # adapters are resolved from the cwd

run_stage() {  # out_dir, then overrides
  local out=$1; shift
  if grep -qs '"status": "complete"' "$out/training.json"; then
    echo "[curriculum] $(date +%FT%T) $out already complete"; return
  fi
  # resume=true: the trainer continues from the last checkpoint, or starts at step 0 when there is none
  echo "[curriculum] $(date +%FT%T) $out start"
  .venv/bin/python -m harness.train method=deltamem_"$variant" out_dir="$out" resume=true \
    train.lr=0.003 run.threads=1 run.progress=false run.keep_checkpoints=1 run.eval_episodes=48 "$@" \
    ${extra[@]+"${extra[@]}"}
  echo "[curriculum] $(date +%FT%T) $out done"
}

onefact=(train_data=synthetic train_data.sources.synthetic.conversations=3000
  train_data.sources.synthetic.questions=1 'train_data.sources.synthetic.items=[1,1]'
  'train_data.sources.synthetic.small_talk=[0,0]' train.write_length=256 train.read_length=96
  train.grad_accum=2 train.max_steps=800 run.save_every=100 run.eval_every=200)

recall_gap() {  # other-history minus own-history held-out CE at the end of a finished stage
  .venv/bin/python -c "import json,sys; d=json.load(open(sys.argv[1]))
print(d['heldout_ce_other_history_last'] - d['heldout_ce_last'])" "$1/training.json"
}

rounds_until_recall() {  # stage, last round, min gap, overrides: round 1, then rounds 2.. while the gap is small
  local stage=$1 last=$2 min_gap=$3; shift 3
  local start=null
  [ "$prev" = null ] || start=$(abs "$prev")
  run_stage "$stage" method.adapter="$start" "$@"
  prev=$stage
  local round gap
  for round in $(seq 2 "$last"); do
    gap=$(recall_gap "$prev")
    echo "[curriculum] $prev: held-out CE gap, another history vs own, $gap nats"
    .venv/bin/python -c "import sys; sys.exit(float(sys.argv[1]) >= float(sys.argv[2]))" "$gap" "$min_gap" || break
    run_stage "${stage}_round$round" method.adapter="$(abs "$prev")" seed=$((5 + round)) "$@"
    prev=${stage}_round$round
  done
}

copy=(train_data=jsonl train_data.sources.jsonl.path="$data" train.write_length=64 train.read_length=64
  train.grad_accum=4 train.max_steps=400 run.save_every=100 run.eval_every=100)
prev=null  # the copy stage starts from an untrained memory
rounds_until_recall "$root/${variant}_copy20" 3 0.5 "${copy[@]}"
rounds_until_recall "$root/${variant}_onefact" 4 0.1 "${onefact[@]}"
# 3. one-fact dialogues mixed with the bare backbone's own replies to everyday instructions (about 40 % of the
#    episodes; conf/train_data/onefact_self_distill_online.yaml), read as the context protocol reads a prompt
#    (writes on while prefilled) with the KL to the bare backbone as their loss, so the adapter leaves the
#    backbone alone where the memory has nothing to add (MSW before this stage: IFEval -11 points against the
#    bare backbone; after it: 0)
run_stage "$root/${variant}_onefact_self_distill_online" method.adapter="$(abs "$prev")" seed=11 \
  train_data=onefact_self_distill_online train.write_length=256 train.read_length=256 train.grad_accum=2 \
  train.max_steps=600 run.save_every=100 run.eval_every=200
prev=$root/${variant}_onefact_self_distill_online
echo "[curriculum] $(date +%FT%T) last stage: $prev"
