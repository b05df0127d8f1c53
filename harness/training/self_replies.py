"""Self-replies: the frozen backbone's own answers to everyday instructions, as δ-mem training episodes.

Recall training alone teaches the read path one answer form (a short value) and the adapter then imposes
it everywhere: on IFEval the MSW recall adapter answered with a median of 22 tokens where the bare backbone
writes 233, and lost 11 points. Mixing in episodes whose target is what the *bare backbone* says keeps the
corrections near zero wherever the memory has nothing to add (a self-distillation anchor).

An episode writes the instruction into the state and reads it again with the reply as target; with
``protocol="online"`` it is instead read once with writes on, as the context protocol prefills a prompt.

Build the file once per backbone (greedy decoding). A reply cut at the token limit is kept (dropping them
would keep only the short ones, and SmolLM2 mostly writes long answers) but marked ``"stopped": false``: its
episode has no end-of-turn label, so the adapter is not taught to stop mid-sentence.

    python -m harness.training.self_replies --out experiments/training/self_replies_smollm2_135m/replies.jsonl.gz --threads 1

(the defaults, 480 instructions, 192 new tokens, batches of 32, made the committed SmolLM2 file in 1,051 s
of one core; 327 replies were cut at the limit)

The instructions are procedural (task × topic × length wording); none comes from a benchmark.
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, DataError
from harness.training.episodes import Conversation
from harness.training.sources import Source, _read_jsonl, _require, data_path, refuse_benchmark_data

TOPICS = (
    "growing tomatoes on a balcony", "the water cycle", "learning to play the guitar", "saving money on groceries",
    "how bees make honey", "the history of the bicycle", "keeping a houseplant alive", "training for a 5 km run",
    "volcanoes", "the Moon's phases", "making bread at home", "public libraries", "recycling plastic",
    "learning a second language", "the invention of the printing press", "sleep and memory", "electric cars",
    "coral reefs", "writing a good email", "board games for families", "the Roman aqueducts", "composting",
    "how a refrigerator works", "time management for students", "migrating birds", "the rules of chess",
    "camping in the rain", "photosynthesis", "starting a small business", "first aid for minor burns",
    "the solar system", "the benefits of walking", "how vaccines are tested", "jazz music", "tea from around the world",
    "rainforests", "preparing for a job interview", "how bridges carry weight", "ancient Egypt", "the internet",
    "cooking rice", "friendship", "cleaning a kitchen quickly", "the life of a lighthouse keeper", "earthquakes",
    "winter in a small mountain village", "a robot that learns to paint", "a lost cat finding its way home",
    "the first day at a new school", "a market on a rainy morning", "wind power", "map reading", "octopuses",
    "the history of tea", "museums", "choosing a laptop", "planning a birthday party", "the human heart",
    "desert plants", "how clouds form", "kindness", "the ocean tides", "a train journey across a continent",
)
TASKS = (
    "Explain {topic} to a ten-year-old.", "Write a short poem about {topic}.", "Give me three tips about {topic}.",
    "Write a short story about {topic}.", "What are the main facts everyone should know about {topic}?",
    "Summarise what you know about {topic}.", "Write a friendly email to a colleague about {topic}.",
    "List the pros and cons of {topic}.", "Describe {topic} in simple words.",
    "Write a blog post introduction about {topic}.", "Why does {topic} matter?",
    "Write a dialogue between two friends talking about {topic}.", "Give step-by-step advice on {topic}.",
    "Write a haiku about {topic}.", "Tell me an interesting fact about {topic} and explain it.",
    "Write a short speech about {topic}.", "What questions would a beginner ask about {topic}? Answer two of them.",
    "Write a product description inspired by {topic}.", "Compare {topic} with something from everyday life.",
    "Write a diary entry about {topic}.",
)
LENGTHS = ("", "", "", " Keep it short.", " Use one paragraph.", " Use a few sentences.", " Be detailed.",
           " Use bullet points.")


def instructions(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct instructions, the same for the same ``(n, seed)``."""
    combos = [t.format(topic=topic) + length for t in TASKS for topic in TOPICS for length in LENGTHS]
    unique = sorted(set(combos))
    if n > len(unique):
        raise ConfigError(f"self_replies: only {len(unique)} distinct instructions exist, asked for {n}")
    return random.Random(seed).sample(unique, n)


class SelfReplies(Source):
    """Reads a self-replies file: one ``{"id", "instruction", "reply", "stopped"?}`` object per line (``.gz``
    allowed). Each line becomes ``[user: instruction] → write``, ``[user: instruction, assistant: reply] → read``;
    ``"stopped": false`` (cut at the token limit) leaves the reply's end-of-turn tokens unlabelled.
    ``objective``: ``tokens`` (CE of the reply) or ``distill`` (KL to the bare backbone at the reply's
    positions). ``protocol``: ``written`` (the instruction written, then the read with writes off — the
    training protocol) or ``online`` (no write pass: the read is prefilled with writes on, reply included,
    which is what the context protocol does at evaluation time with ``write_generated``). The distilled
    MSW adapter trained ``written`` was inert there (KL 0.005) but not on IFEval, where the prompt is
    written while it is read: its first answer token differed from the bare backbone's on most prompts.
    """

    OBJECTIVES = ("tokens", "distill")
    PROTOCOLS = ("written", "online")

    def __init__(self, path: str, name: str = "self_replies", limit: int | None = None,
                 objective: str = "tokens", protocol: str = "written") -> None:
        if not path:
            raise ConfigError("train_data source self_replies needs path=/file.jsonl[.gz]")
        if objective not in self.OBJECTIVES:
            raise ConfigError(f"train_data source {name}: objective must be one of {', '.join(self.OBJECTIVES)}, "
                              f"got {objective!r}")
        if protocol not in self.PROTOCOLS:
            raise ConfigError(f"train_data source {name}: protocol must be one of {', '.join(self.PROTOCOLS)}, "
                              f"got {protocol!r}")
        self.objective = objective
        self.protocol = protocol
        self.path = data_path(path)
        refuse_benchmark_data(self.path)
        self.name = name
        self.limit = limit

    def conversations(self) -> list[Conversation]:
        if not self.path.is_file():
            raise DataError(self.path, "no such file (build it with python -m harness.training.self_replies)")
        out = []
        for n, row in _read_jsonl(self.path):
            where = f"line {n}"
            if not isinstance(row, dict):
                raise DataError(self.path, f"{where}: expected a JSON object, got {type(row).__name__}")
            for key in ("id", "instruction", "reply"):
                _require(self.path, where, row, key, str)
            ask = {"role": "user", "content": row["instruction"]}
            out.append(Conversation(id=f"{self.name}/{row['id']}", source=self.name, group=row["id"],
                                    messages=(ask, ask, {"role": "assistant", "content": row["reply"]}),
                                    metadata={"line": n, "open_end": row.get("stopped") is False,
                                              **({"distill": True} if self.objective == "distill" else {}),
                                              **({"online": True} if self.protocol == "online" else {})}))
            if self.limit is not None and len(out) >= self.limit:
                break
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path), "objective": self.objective,
                **({"protocol": self.protocol} if self.protocol != "written" else {})}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Generate the bare backbone's replies to procedural instructions.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--backbone", default="conf/backbone/smollm2_135m.yaml")
    ap.add_argument("--n", type=int, default=480)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    import torch
    from omegaconf import OmegaConf

    from harness.backbone import load_backbone
    from harness.generation import generate_batch
    from harness.types import GenerationSettings

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists():
        sys.exit(f"error: {out} exists; remove it to rebuild")
    backbone = load_backbone(OmegaConf.load(args.backbone))
    prompts = instructions(args.n, args.seed)
    ids = [backbone.chat_ids([{"role": "user", "content": p}]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(ids[i]))  # similar lengths batch with little padding
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    rows: dict[int, dict[str, Any]] = {}
    cut = 0
    t0 = time.time()
    for start in range(0, len(order), args.batch_size):
        chunk = order[start:start + args.batch_size]
        gens = generate_batch(backbone.model, [ids[i] for i in chunk], settings, stop_ids=backbone.stop_ids,
                              pad_id=backbone.pad_id)
        for i, g in zip(chunk, gens):
            cut += not g.stopped
            rows[i] = {"id": f"r{i:04d}", "instruction": prompts[i], "reply": backbone.decode(g.ids).strip(),
                       "reply_tokens": len(g.ids), "stopped": g.stopped}
        print(f"[self_replies] {start + len(chunk)}/{len(order)} prompts, {time.time() - t0:.0f} s", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    opener = gzip.open if out.suffix == ".gz" else open
    with opener(tmp, "wt", encoding="utf-8") as f:
        for i in sorted(rows):
            f.write(json.dumps(rows[i], ensure_ascii=False) + "\n")
    tmp.replace(out)
    meta = {"backbone": backbone.describe(), "instructions": args.n, "seed": args.seed,
            "max_new_tokens": args.max_new_tokens, "replies": len(rows), "cut_at_token_limit": cut,
            "decoding": "greedy", "seconds": round(time.time() - t0, 1)}
    out.with_name("generation.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta, indent=2, default=str))


if __name__ == "__main__":
    main()
