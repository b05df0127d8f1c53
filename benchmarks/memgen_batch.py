"""MemGen decoding of several questions on one shared prefix: batched (``weave.generate_woven_batch``) against one
question at a time (``weave.generate_one``), side by side in one run, with the bare backbone's batched decoding
for reference.

    python -m benchmarks.memgen_batch [--prefix-tokens 2048] [--questions 8] [--new-tokens 32] [--rounds 2]
                                      [--threads 1] [--tiny] [--out reports/benchmarks/memgen_batch.json]

The prefix is LoCoMo text (an episode's context, prefilled once for the reasoner and once for the weaver, outside
the timing, as the method does once per episode); the questions are ``--questions`` different 12-token slices
of the same text. Greedy, no stop tokens (every row decodes ``--new-tokens``), random weaver weights (the speed
does not depend on them), up to 5 insertions per row after ``, . \\n``; rounds interleave the variants. Both
MemGen variants produce the same tokens (checked on every round).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.parametric_decode import _prompt_ids, emit, setup_backbone
from harness.generation import generate_batch, prefill_prefix
from harness.types import GenerationSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix-tokens", type=int, default=2048)
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (a smoke test of the script)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    backbone = setup_backbone(args.threads, args.tiny)
    from methods.memgen.model import MemGen, MemGenConfig
    from methods.memgen.weave import generate_one, generate_woven_batch, weave_prefix

    text = _prompt_ids(backbone, args.prefix_tokens + 12 * args.questions)
    prefix_ids = text[:args.prefix_tokens]
    questions = [text[args.prefix_tokens + 12 * i: args.prefix_tokens + 12 * (i + 1)] for i in range(args.questions)]
    settings = GenerationSettings(max_new_tokens=args.new_tokens)
    torch.manual_seed(0)
    mg = MemGen(backbone.model, MemGenConfig(weaver_dropout=0.0))
    mg.peft.eval()
    with torch.inference_mode(), mg.reasoner():
        prefix = prefill_prefix(backbone.model, prefix_ids)
    with torch.inference_mode():
        wprefix = weave_prefix(mg, prefix, prefix_ids)
    kw = dict(stop_ids=set(), prefix=prefix, weaver_prefix=wprefix)

    def one_at_a_time():
        return [generate_one(mg, backbone.tokenizer, q, settings, **kw) for q in questions]

    def batched():
        return generate_woven_batch(mg, backbone.tokenizer, questions, settings, pad_id=backbone.pad_id, **kw)

    def bare():
        with mg.reasoner():
            return generate_batch(backbone.model, questions, settings, stop_ids=set(), pad_id=backbone.pad_id,
                                  prefix=prefix)

    times: dict[str, list[float]] = {"memgen_one_at_a_time": [], "memgen_batched": [], "bare_batched": []}
    insertions, same = [], []
    for _ in range(args.rounds):
        outs = {}
        for name, fn in (("memgen_one_at_a_time", one_at_a_time), ("memgen_batched", batched), ("bare_batched", bare)):
            t0 = time.perf_counter()
            outs[name] = fn()
            times[name].append(time.perf_counter() - t0)
        same.append([w.ids for w in outs["memgen_one_at_a_time"]] == [w.ids for w in outs["memgen_batched"]])
        insertions = [w.insertions for w in outs["memgen_batched"]]
    mg.detach()
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"backbone": backbone.name, "prefix_tokens": len(prefix_ids), "questions": args.questions,
           "new_tokens": args.new_tokens, "rounds": args.rounds, "threads": torch.get_num_threads(),
           "seconds_median": {k: round(v, 3) for k, v in med.items()},
           "batched_vs_one_at_a_time": round(med["memgen_one_at_a_time"] / med["memgen_batched"], 2),
           "memgen_batched_vs_bare_batched": round(med["bare_batched"] / med["memgen_batched"], 3),
           "insertions_per_question": insertions, "same_tokens_every_round": all(same)}
    emit(out, args.out)


if __name__ == "__main__":
    main()
