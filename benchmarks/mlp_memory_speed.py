"""MLP Memory decode speed, side by side with the bare backbone in one process.

    python -m benchmarks.mlp_memory_speed [--adapter DIR] [--lam 0.25] [--prompt 512] [--new 64] [--batch 1,8]
                                          [--reps 5] [--threads 1] [--device cpu] [--json out.json]

Decodes ``--new`` tokens (greedy, no stop token) after a ``--prompt``-token prompt through the harness's own
path (``prefill_prefix`` + ``harness.generation.generate_batch``, the shared prefix prefilled once outside the
timing, as the in-context methods do), with and without the mixture hooks of the shipped artefact. The variants
alternate within every repetition on the same model, so load drift from other processes cancels in the paired
ratio; the load from other processes during each timing is read from /proc/stat and printed.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.deltamem_speed import timed
    from harness.adapters import shipped_adapter
    from harness.backbone import load_backbone
    from harness.generation import generate_batch, prefill_prefix
    from harness.types import GenerationSettings
    from methods.mlp_memory.model import MLPMemoryMixer, load_artefact
    from omegaconf import OmegaConf

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", default=None, help="artefact folder (default: the shipped one)")
    ap.add_argument("--lam", type=float, default=0.25)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    root = Path(__file__).resolve().parents[1]
    cfg = OmegaConf.load(root / "conf" / "backbone" / "smollm2_135m.yaml")
    cfg.device, cfg.dtype = args.device, args.dtype
    bb = load_backbone(cfg)
    folder = Path(args.adapter) if args.adapter else shipped_adapter("smollm2_135m", "mlp_memory")
    net, info = load_artefact(folder, bb.model)
    sync = torch.cuda.synchronize if bb.device.type == "cuda" else (lambda: None)

    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(100, 40000, (args.prompt,), generator=g).tolist()
    shared = prompt[:-16]
    settings = GenerationSettings(max_new_tokens=args.new, do_sample=False)
    results = {"adapter": str(folder), "lambda": args.lam, "prompt_tokens": args.prompt, "new_tokens": args.new,
               "threads": args.threads, "device": str(bb.device), "dtype": args.dtype,
               "blocks": info["network"]["blocks"], "rows": []}
    print(f"MLP Memory decode speed: {info['network']['blocks']} blocks, λ {args.lam}, {args.prompt}-token prompt, "
          f"{args.new} new tokens, {args.threads} thread(s), {bb.device}", file=sys.stderr)

    for b in [int(x) for x in args.batch.split(",")]:
        suffixes = [prompt[len(shared):] for _ in range(b)]
        times: dict[str, list[float]] = {"bare": [], "mlp_memory": []}
        foreign: dict[str, list[float]] = {"bare": [], "mlp_memory": []}
        tokens: dict[str, list[list[int]]] = {}

        def run(variant: str) -> None:
            mixer = MLPMemoryMixer(bb.model, net, args.lam) if variant == "mlp_memory" else None
            try:
                prefix = prefill_prefix(bb.model, shared)
                sync()
                out: list = []
                dt, fc = timed(lambda: (out.extend(generate_batch(bb.model, suffixes, settings, stop_ids=set(),
                                                                  pad_id=bb.pad_id, prefix=prefix)), sync()))
                times[variant].append(dt)
                foreign[variant].append(fc)
                tokens[variant] = [o.ids for o in out]
            finally:
                if mixer is not None:
                    mixer.remove()

        run("bare")  # warm-up
        run("mlp_memory")
        for v in times:
            times[v].clear()
            foreign[v].clear()
        for rep in range(args.reps):
            for v in (("bare", "mlp_memory") if rep % 2 == 0 else ("mlp_memory", "bare")):
                run(v)
        n_tok = b * args.new
        row = {"batch": b}
        for v in times:
            med = statistics.median(times[v])
            row[v] = {"median_s": med, "tokens_per_s": n_tok / med, "times_s": times[v],
                      "foreign_cores_max": max(foreign[v])}
        row["speed_vs_bare"] = row["bare"]["median_s"] / row["mlp_memory"]["median_s"]
        row["paired_speed_vs_bare"] = statistics.median(a / m for a, m in zip(times["bare"], times["mlp_memory"]))
        row["same_tokens_as_bare"] = tokens["bare"] == tokens["mlp_memory"]
        results["rows"].append(row)
        print(f"  batch {b}: bare {row['bare']['tokens_per_s']:.1f} tok/s, mlp_memory "
              f"{row['mlp_memory']['tokens_per_s']:.1f} tok/s -> {row['speed_vs_bare']:.3f}x (paired "
              f"{row['paired_speed_vs_bare']:.3f}x); foreign cores <= "
              f"{max(row['bare']['foreign_cores_max'], row['mlp_memory']['foreign_cores_max']):.2f}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
