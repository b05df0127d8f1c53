"""Prefix reuse for in-context answering: the same questions with and without it.

    python -m benchmarks.prefix_reuse [--questions 20] [--episode conv-26] [--batch 8]

Without reuse every question prefills its whole prompt (the truncated conversation plus
the question) alone; with reuse the conversation is prefilled once per episode and the
questions are decoded in batches from a copy of its KV cache. Greedy decoding, so the
predictions must be identical; the script prints both timings, the ratio and any
prediction that differs.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from harness.backbone import load_backbone
from harness.generation import generate_batch
from harness.types import Episode, GenerationSettings
from methods.prompting import build_episode_prompts, render_episode_context
from tasks.locomo.task import LoCoMoTask

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--episode", default="conv-26")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared, busy machine)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    task_cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/task/locomo.yaml"))
    task_cfg.pop("_target_")
    task_cfg.update(episode_ids=[args.episode], generation={"max_new_tokens": 50, "do_sample": False})
    task = LoCoMoTask(**task_cfg)
    full = task.episodes(seed=42)[0]
    episode = Episode(full.id, full.units, full.queries[: args.questions], full.metadata)
    backbone = load_backbone(OmegaConf.load(ROOT / "conf/backbone/smollm2_135m.yaml"))
    settings = task.generation
    context = render_episode_context(backbone, task, episode)

    t0 = time.perf_counter()
    plain = build_episode_prompts(backbone, task, episode, context, reuse_prefix=False)
    without = []
    for q in episode.queries:
        g = generate_batch(backbone.model, [plain.ids[q.id]], settings, stop_ids=backbone.stop_ids, pad_id=backbone.pad_id)[0]
        without.append(backbone.decode(g.ids).strip())
    t_without = time.perf_counter() - t0

    t0 = time.perf_counter()
    shared = build_episode_prompts(backbone, task, episode, context, reuse_prefix=True)  # prefills the prefix
    p = shared.prefix.length
    with_reuse = []
    qs = list(episode.queries)
    for i in range(0, len(qs), args.batch):
        batch = qs[i:i + args.batch]
        gens = generate_batch(backbone.model, [shared.ids[q.id][p:] for q in batch], settings,
                              stop_ids=backbone.stop_ids, pad_id=backbone.pad_id, prefix=shared.prefix)
        with_reuse.extend(backbone.decode(g.ids).strip() for g in gens)
    t_with = time.perf_counter() - t0

    n = len(qs)
    diffs = [(q.id, a, b) for q, a, b in zip(qs, without, with_reuse) if a != b]
    result = {
        "episode": episode.id, "questions": n, "batch": args.batch, "context_tokens": context.kept_tokens,
        "shared_prefix_tokens": p, "threads": torch.get_num_threads(),
        "s_per_question_without_reuse": round(t_without / n, 3), "s_per_question_with_reuse": round(t_with / n, 3),
        "speedup": round(t_without / t_with, 2), "identical_predictions": n - len(diffs),
    }
    print(json.dumps(result, indent=2))
    for qid, a, b in diffs:
        print(f"DIFF {qid}: without={a!r} with={b!r}")
    if args.out:
        Path(args.out).write_text(json.dumps({**result, "diffs": diffs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
