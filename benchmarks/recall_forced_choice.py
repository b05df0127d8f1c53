"""Forced-choice recall on the out-of-template dialogues: does a δ-mem state carry the asked value even where
greedy decoding does not name it?

    python -m benchmarks.recall_forced_choice --adapter msw=DIR [--adapter tsw=DIR ...] [--buckets 100,250]
        [--per-bucket 24] [--candidates 8] [--reply "{value}"] [--no-context] [--backbone conf/backbone/X.yaml]
        [--json out.json] [--markdown out.md]

Each dialogue of ``tasks/recall_oot`` (the evaluation-only generator) gets ``--candidates`` replies to its
question: the asked value and decoys drawn from the same fact family with the same surface shape (a 5-digit
number against 5-digit numbers, "March 12th" against "<Month> <day>th"), none equal to any value the dialogue
states. Each reply is the assistant's whole message (``--reply``: the value alone, or the value in a frame such
as "It's {value}."), teacher forced; its score is the summed log-probability of its tokens. A dialogue is a hit when the asked value scores highest, so chance is 1 / candidates whatever
the backbone's prior over values.

Conditions: ``nocontext`` (the bare backbone, question only: the prior), ``context`` (the bare backbone with
the dialogue as chat turns before the question), and per adapter ``<name>_own`` / ``<name>_other``: the
training protocol of ``harness.training.heldout`` (the history written into the state, then the question and
reply read with writes off), with the dialogue's own history or the next dialogue's of the same length (one
that never states the asked value). The state is written once per dialogue and every candidate is read from
it; reads with writes off leave it unchanged (tested against rewriting it per candidate).

Greedy decoding scores 0 of 96 for every shipped and screened adapter (``reports/recall_out_of_template.md``);
this probe asks the weaker question a training run needs answered first: is the value in the state at all.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tasks.recall_oot.templates import MONTH_NAMES

ROOT = Path(__file__).resolve().parents[1]

_MONTH = re.compile(r"\b(" + "|".join(MONTH_NAMES) + r")\b")
_ORDINAL = re.compile(r"(?<=\d)(st|nd|rd|th)\b")
SHAPED_KINDS = ("digits", "code", "date")  # kinds whose decoys must share the asked value's surface form


def shape(value: str) -> str:
    """The surface form of a value: month names, digits, ordinal suffixes and capitals abstracted."""
    s = _ORDINAL.sub("th", value)
    s = re.sub(r"\d", "9", s)
    s = re.sub(r"[A-Z]", "A", _MONTH.sub("#", s))
    return s


def decoys(dialogue, k: int, *, max_draws: int = 5000) -> list[str]:
    """``k`` values of the asked fact's family (same shape where the kind has one), deterministic per dialogue,
    distinct from each other and from every alias of every fact the dialogue states."""
    from tasks.recall_oot.generator import draw_value
    from tasks.recall_oot.scoring import normalise
    from tasks.recall_oot.templates import FAMILY_BY_KEY

    asked = dialogue.asked
    family = FAMILY_BY_KEY[asked.family]
    taken = {normalise(a) for f in (asked, *dialogue.distractors) for a in f.aliases}
    rng = random.Random(f"forced-choice/{dialogue.id}")
    out: list[str] = []
    for _ in range(max_draws):
        if len(out) == k:
            return out
        value, aliases, _ = draw_value(family, rng)
        if asked.kind in SHAPED_KINDS and shape(value) != shape(asked.value):
            continue
        if any(normalise(a) in taken for a in aliases):
            continue
        out.append(value)
        taken.update(normalise(a) for a in aliases)
    raise RuntimeError(f"{dialogue.id}: only {len(out)} of {k} decoys of family {asked.family} "
                       f"shaped like {asked.value!r} in {max_draws} draws")


def donors(dialogues: Sequence) -> list[int]:
    """For each dialogue, the next one of the same target length (cyclic) whose history never states its
    asked value: the other-history control writes that one."""
    from tasks.recall_oot.scoring import occurrences

    by_length: dict[int, list[int]] = {}
    for i, d in enumerate(dialogues):
        by_length.setdefault(d.target_tokens, []).append(i)
    out = []
    for i, d in enumerate(dialogues):
        group = by_length[d.target_tokens]
        pos = group.index(i)
        for step in range(1, len(group)):
            j = group[(pos + step) % len(group)]
            if not occurrences(dialogues[j].history_text, d.asked.aliases):
                out.append(j)
                break
        else:
            raise ValueError(f"{d.id}: no other dialogue of length {d.target_tokens} to take a history from")
    return out


def _messages(dialogue) -> tuple[dict[str, str], ...]:
    return tuple({"role": t.role, "content": t.text} for t in dialogue.turns)


def episode(dialogue, reply: str, *, history=None):
    """A training-protocol episode: ``history`` (default: the dialogue's own turns) as the write, the question
    and ``reply`` as the read."""
    from harness.training.episodes import Episode

    question = ({"role": "user", "content": dialogue.question}, {"role": "assistant", "content": reply})
    return Episode(id=f"{dialogue.id}/{reply}", source="recall_oot", group=dialogue.id,
                   write=_messages(history if history is not None else dialogue), read=question)


@dataclass
class ConditionScores:
    name: str
    scores: list[list[float]] = field(default_factory=list)  # per dialogue, per candidate (asked value first)

    @property
    def hits(self) -> list[float]:
        return [float(s[0] > max(s[1:])) for s in self.scores]

    @property
    def margins(self) -> list[float]:  # log-prob of the asked value over the best decoy (nats; > 0: a hit)
        return [s[0] - max(s[1:]) for s in self.scores]

    @property
    def ranks(self) -> list[int]:  # 1 = the asked value scored highest
        return [1 + sum(x > s[0] for x in s[1:]) for s in self.scores]


def score_conditions(backbone, dialogues: Sequence, candidates: Sequence[Sequence[str]], *,
                     adapters: dict[str, str], context: bool = True, reply: str = "{value}", write_length: int = 4096,
                     read_length: int = 512, progress: bool = True) -> dict[str, ConditionScores]:
    """Summed log-probabilities of the reply ``reply.format(value=candidate)`` for every candidate under every
    condition (candidates[i][0]: the asked value of dialogues[i])."""
    import torch
    from tqdm import tqdm

    from harness.training.episodes import IGNORE, ChatRenderer, tokenize_episode
    from harness.training.heldout import target_logp
    from methods.deltamem import attach
    from methods.deltamem.adapter import read_config

    model, device = backbone.model, backbone.device
    renderer = ChatRenderer.for_backbone(backbone)
    donor = donors(dialogues)

    def reply_logp(ids, labels) -> float:
        logp, target = target_logp(model, ids, labels, device)
        return float(logp.gather(-1, target[:, None]).sum())

    def tokenized(i: int, history=None):
        return [tokenize_episode(episode(dialogues[i], reply.format(value=c), history=history), renderer,
                                 write_length=write_length, read_length=read_length) for c in candidates[i]]

    out: dict[str, ConditionScores] = {}
    model.eval()
    with torch.no_grad():
        for name in ("nocontext", "context") if context else ("nocontext",):
            res = out[name] = ConditionScores(name)
            for i, d in enumerate(tqdm(dialogues, desc=name, disable=not progress, leave=False)):
                if name == "nocontext":
                    res.scores.append([reply_logp(t.read_ids, t.labels) for t in tokenized(i)])
                    continue
                row = []
                for c in candidates[i]:
                    msgs = [*_messages(d), *episode(d, reply.format(value=c)).read]
                    ids, owner = renderer.encode(msgs)
                    labels = [t if o == len(msgs) - 1 else IGNORE for t, o in zip(ids, owner)]
                    row.append(reply_logp(ids, labels))
                res.scores.append(row)
        for adapter_name, path in adapters.items():
            dm = attach(model, read_config(path))
            dm.load_adapter(path)
            try:
                for mode in ("own", "other"):
                    res = out[f"{adapter_name}_{mode}"] = ConditionScores(f"{adapter_name}_{mode}")
                    for i, d in enumerate(tqdm(dialogues, desc=res.name, disable=not progress, leave=False)):
                        toks = tokenized(i, history=None if mode == "own" else dialogues[donor[i]])
                        res.scores.append(read_after_write(model, dm, toks, device, reply_logp))
            finally:
                dm.detach()
    return out


def read_after_write(model, dm, toks, device, reply_logp) -> list[float]:
    """Write the (shared) history of ``toks`` once, then score every candidate's read with writes off."""
    import torch

    dm.reset()
    written = toks[0]
    if dm.config.write_granularity != "token":
        dm.set_segment_ids(torch.tensor([list(written.write_message_ids)], device=device))
    with dm.writes(True):
        model(input_ids=torch.tensor([list(written.write_ids)], device=device), use_cache=False, logits_to_keep=1)
    with dm.writes(False):
        return [reply_logp(t.read_ids, t.labels) for t in toks]


def summarise(results: dict[str, ConditionScores], dialogues: Sequence, k: int) -> dict[str, Any]:
    from harness.metrics import bootstrap_ci, mean

    ids = [d.id for d in dialogues]
    blob: dict[str, Any] = {"n_dialogues": len(dialogues), "candidates": k, "chance": 1 / k, "conditions": {},
                            "paired": {}, "by_length": {}}
    lengths = sorted({d.target_tokens for d in dialogues})
    for name, res in results.items():
        hits = res.hits
        blob["conditions"][name] = {"hit_rate": mean(hits), "hit_rate_ci95": list(bootstrap_ci(hits, ids)),
                                    "mean_rank": mean(res.ranks), "hits": hits,
                                    "margin": mean(res.margins)}
        blob["by_length"][name] = {str(n): mean([h for h, d in zip(hits, dialogues) if d.target_tokens == n])
                                   for n in lengths}
    pairs = [(f"{a}_own", f"{a}_other") for a in {n.rsplit("_", 1)[0] for n in results if n.endswith("_own")}]
    pairs += [(n, "nocontext") for n in results if n != "nocontext"]
    for better, worse in sorted(pairs):
        if better in results and worse in results:
            diff = [x - y for x, y in zip(results[better].hits, results[worse].hits)]
            margin = [x - y for x, y in zip(results[better].margins, results[worse].margins)]
            blob["paired"][f"{better} - {worse}"] = {"diff": mean(diff), "ci95": list(bootstrap_ci(diff, ids)),
                                                     "margin_diff": mean(margin),
                                                     "margin_ci95": list(bootstrap_ci(margin, ids))}
    return blob


def markdown(blob: dict[str, Any]) -> str:
    k = blob["candidates"]
    lines = [f"Forced choice among {k} same-family, same-shape values (chance {100 / k:.1f} %), "
             f"{blob['n_dialogues']} out-of-template dialogues, reply scored: {blob.get('reply', '{value}')!r}; "
             "95 % bootstrap intervals over dialogues.", "",
             "| condition | asked value ranked first, % [95 % CI] | mean rank | mean margin over the best decoy, nats |", "|---|---|---|---|"]
    for name, row in blob["conditions"].items():
        lo, hi = row["hit_rate_ci95"]
        lines.append(f"| `{name}` | {100 * row['hit_rate']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] | "
                     f"{row['mean_rank']:.2f} | {row['margin']:+.2f} |")
    lines += ["", "| paired difference | ranked first, points [95 % CI] | margin, nats [95 % CI] |", "|---|---|---|"]
    for name, row in blob["paired"].items():
        lo, hi = row["margin_ci95"]
        lines.append(f"| {name} | {100 * row['diff']:+.1f} [{100 * row['ci95'][0]:+.1f}, {100 * row['ci95'][1]:+.1f}] | "
                     f"{row['margin_diff']:+.2f} [{lo:+.2f}, {hi:+.2f}] |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="a δ-mem adapter (repeatable)")
    ap.add_argument("--buckets", default="100,250")
    ap.add_argument("--per-bucket", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0, help="the generator's seed")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--reply", default="{value}", help="the scored reply, a format string with {value}")
    ap.add_argument("--no-context", action="store_true", help="skip the dialogue-in-the-prompt condition")
    ap.add_argument("--backbone", default=str(ROOT / "conf/backbone/smollm2_135m.yaml"),
                    help="a backbone config (the adapters must have been trained on it)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    from methods.deltamem.adapter import adapter_format

    adapters = {}
    for item in args.adapter:
        name, sep, path = item.partition("=")
        if not sep or not name:
            ap.error(f"--adapter {item!r}: expected NAME=DIR")
        try:
            adapter_format(path)
        except FileNotFoundError as err:
            ap.error(f"--adapter {item!r}: {err}")
        adapters[name] = path
    if "{value}" not in args.reply:
        ap.error(f"--reply {args.reply!r}: needs a {{value}} field")
    if args.candidates < 2:
        ap.error("--candidates must be at least 2")

    import torch
    from omegaconf import OmegaConf

    from harness.backbone import load_backbone
    from tasks.recall_oot.generator import generate_set

    torch.set_num_threads(args.threads)
    dialogues = generate_set(args.seed, [int(b) for b in args.buckets.split(",")], args.per_bucket)
    candidates = [[d.asked.value, *decoys(d, args.candidates - 1)] for d in dialogues]
    backbone = load_backbone(OmegaConf.load(args.backbone))
    t0 = time.time()
    results = score_conditions(backbone, dialogues, candidates, adapters=adapters, context=not args.no_context,
                               reply=args.reply)
    blob = summarise(results, dialogues, args.candidates)
    blob.update(adapters=adapters, reply=args.reply, buckets=args.buckets, seed=args.seed, seconds=round(time.time() - t0, 1),
                candidates_per_dialogue={d.id: c for d, c in zip(dialogues, candidates)})
    text = markdown(blob)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(blob, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
