"""Decode speed of the parametric baselines against the bare backbone, side by side in one run.

    python -m benchmarks.parametric_decode [--prompt-tokens 512] [--new-tokens 64] [--rounds 5] [--threads 1]
                                           [--tiny] [--out reports/benchmarks/parametric_decode.json]

One prompt (LoCoMo text cut to ``--prompt-tokens``), greedy decoding of ``--new-tokens`` at batch 1, rounds
interleaved so load on the machine hits every variant alike; the median time per variant and its ratio to the bare
backbone's. Variants: the bare backbone; Context2LoRA (an unmerged rank-8 LoRA on q/k/v/o: its cost does not
depend on the weights' values, so untrained weights are timed); MemGen with the KV caches appended after each
insertion (this harness) and with the official re-prefill after each insertion, both with 8 prompt latents and up
to 5 insertions, random weaver weights (the speed does not depend on them; the number of insertions made is
printed: it depends on where delimiters fall). ``latent_tokens`` counts the latent positions the reasoner read,
which is what MemGen must pay for in any implementation.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from harness.generation import generate_batch
from harness.types import GenerationSettings

ROOT = Path(__file__).resolve().parents[1]


def _prompt_ids(backbone, n: int) -> list[int]:
    data = json.loads((ROOT / "tasks/locomo/data/locomo10.json").read_text())
    conv = data[0]["conversation"]
    text = " ".join(t["text"] for k in sorted(conv) if k.startswith("session_") and isinstance(conv[k], list)
                    for t in conv[k])
    return backbone.encode(text)[:n]


def setup_backbone(threads: int | None, tiny: bool):
    """The embedded SmolLM2-135M (or a tiny random model for a smoke test), with ``threads`` set first."""
    if threads:
        torch.set_num_threads(threads)
    if tiny:
        from tests.conftest import make_backbone

        return make_backbone(window=4096)
    from omegaconf import OmegaConf

    from harness.backbone import load_backbone

    return load_backbone(OmegaConf.load(ROOT / "conf/backbone/smollm2_135m.yaml"))


def emit(result: dict, out: str | None) -> None:
    """Print the result and, when ``out`` is given, write it there as JSON."""
    print(json.dumps(result, indent=2))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (a smoke test of the script)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    backbone = setup_backbone(args.threads, args.tiny)
    from peft import get_peft_model

    from methods.context2lora import lora_config
    from methods.memgen.model import MemGen, MemGenConfig
    from methods.memgen.weave import generate_one

    ids = _prompt_ids(backbone, args.prompt_tokens)
    # a budget, not an answer: stop tokens never end a run early, so every variant decodes the same count
    settings = GenerationSettings(max_new_tokens=args.new_tokens)
    model = backbone.model
    insertions = {}

    def bare():
        return len(generate_batch(model, [ids], settings, stop_ids=set(), pad_id=backbone.pad_id)[0].ids)

    def memgen(reprefill: bool):
        def run():
            woven = generate_one(mg, backbone.tokenizer, ids, settings, stop_ids=set(), reprefill=reprefill)
            insertions["memgen_reprefill" if reprefill else "memgen"] = woven.insertions
            return len(woven.ids)
        return run

    times: dict[str, list[float]] = {"bare": [], "context2lora": [], "memgen": [], "memgen_reprefill": []}
    for _ in range(args.rounds):
        for name in times:
            if name == "context2lora":
                peft = get_peft_model(model, lora_config(8, 16.0, 0.0, ["q_proj", "k_proj", "v_proj", "o_proj"]))
                fn = bare
            elif name.startswith("memgen"):
                torch.manual_seed(0)
                mg = MemGen(model, MemGenConfig(weaver_dropout=0.0))
                mg.peft.eval()
                fn = memgen(name == "memgen_reprefill")
            else:
                fn = bare
            t0 = time.perf_counter()
            n = fn()
            times[name].append(time.perf_counter() - t0)
            assert n == args.new_tokens
            if name == "context2lora":
                peft.unload()
            elif name.startswith("memgen"):
                mg.detach()
    med = {k: statistics.median(v) for k, v in times.items()}
    cfg = MemGenConfig()
    out = {"backbone": backbone.name, "prompt_tokens": len(ids), "new_tokens": args.new_tokens, "rounds": args.rounds,
           "threads": torch.get_num_threads(),
           "seconds_median": {k: round(v, 3) for k, v in med.items()},
           "tokens_per_s": {k: round(args.new_tokens / v, 2) for k, v in med.items()},
           "speed_vs_bare": {k: round(med["bare"] / v, 3) for k, v in med.items()},
           "memgen_insertions": insertions,
           "memgen_latent_tokens": {k: cfg.prompt_latents + n * cfg.inference_latents for k, n in insertions.items()},
           "memgen_cached_vs_reprefill": round(med["memgen_reprefill"] / med["memgen"], 2)}
    emit(out, args.out)


if __name__ == "__main__":
    main()
