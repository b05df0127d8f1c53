"""Held-out evaluation of a trained δ-mem adapter on the episodes its training run never saw.

Conditions, all on the same held-out episodes:

* ``nocontext``: the bare backbone, system + question only (the history-removed floor);
* ``context``: the bare backbone with the whole history in the prompt (left-truncated to the window);
* ``memory:<name>``: δ-mem with an adapter (trained, or ``untrained`` = a fresh seeded initialisation): the
  history is written into the state (left-truncated to the training write length), then system + question
  are read with writes off — the training protocol;
* ``memory:<name>:other`` (``other_history=True``): the same adapter, but the state holds the history of an
  episode from *another* document. A gain over ``nocontext`` that survives this swap is the answer's format
  or the adapter's prior, not recall; only the gap between ``memory:<name>`` and it is memory.

Metrics per episode: the target-token cross-entropy (teacher forced, mean over the target's tokens) and,
optionally, token F1 of a greedy answer against every reference (best match) and, where the episode names
the value its answer hinges on (``metadata["evidence"]``, e.g. the synthetic dialogues' number, name or
date), whether that value appears in the answer. Token F1 alone rewards a well-formed answer with the wrong
value ("Your card number is 2345" against "... 135415"); the evidence hit does not. Differences to
``nocontext`` and of each adapter to its other-history control are paired per episode, with a bootstrap 95%
interval that resamples whole documents.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from harness.metrics import bootstrap_ci, mean
from harness.training.episodes import IGNORE, ChatRenderer, Episode, tokenize_episode
from harness.training.sources import stable_hash


@dataclass
class ConditionResult:
    name: str
    ce: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)  # KL from the bare backbone on the target positions
    f1: list[float] = field(default_factory=list)
    evidence: list[float] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)


def target_logp(model, ids: Sequence[int], labels: Sequence[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of the next token at every labelled position, and the labels there."""
    x = torch.tensor([list(ids)], device=device)
    lab = torch.tensor(list(labels), device=device)
    pos = (lab[1:] != IGNORE).nonzero().squeeze(-1)
    out = model(input_ids=x, use_cache=False, logits_to_keep=pos)
    return F.log_softmax(out.logits[0].float(), dim=-1), lab[pos + 1]


def _kl(bare_logp: torch.Tensor, logp: torch.Tensor) -> float:
    """KL(bare ‖ model), mean over the positions."""
    return float(F.kl_div(logp, bare_logp, log_target=True, reduction="sum")) / max(1, logp.shape[0])


def _greedy(model, prompt: Sequence[int], *, device: torch.device, max_new_tokens: int, stop: set[int]) -> list[int]:
    """Greedy decoding with a KV cache, token by token (batch 1; δ-mem stays read-only outside)."""
    x = torch.tensor([list(prompt)], device=device)
    out = model(input_ids=x, use_cache=True)
    past, new = out.past_key_values, []
    for _ in range(max_new_tokens):
        token = int(out.logits[0, -1].argmax())
        if token in stop:
            break
        new.append(token)
        out = model(input_ids=torch.tensor([[token]], device=device), past_key_values=past, use_cache=True)
        past = out.past_key_values
    return new


def _f1(prediction: str, references: Sequence[str]) -> float:
    from tasks.qa_metrics import f1_lenient

    return max((f1_lenient(prediction, r) for r in references), default=0.0)


def evidence_hit(prediction: str, evidence: str) -> float:
    """1.0 when the normalised ``evidence`` occurs in the normalised prediction as whole words."""
    from tasks.qa_metrics import normalize_lenient

    needle = normalize_lenient(evidence)
    return float(bool(needle) and f" {needle} " in f" {normalize_lenient(prediction)} ")


def other_history_donors(episodes: Sequence[Episode]) -> list[int]:
    """For each episode, the index of an episode of another document whose history replaces its own.

    Documents are ordered by a hash of their name and each one takes the first episode of the next (cyclic),
    so the pairing is deterministic, independent of input order, and never pairs a document with itself."""
    groups = sorted({f"{e.source}/{e.group}" for e in episodes}, key=lambda g: (stable_hash("donor", g), g))
    if len(groups) < 2:
        raise ValueError("the other-history control needs held-out episodes from at least two documents")
    first = {}
    for i, e in sorted(enumerate(episodes), key=lambda x: x[1].id):
        first.setdefault(f"{e.source}/{e.group}", i)
    nxt = {g: groups[(k + 1) % len(groups)] for k, g in enumerate(groups)}
    return [first[nxt[f"{e.source}/{e.group}"]] for e in episodes]


def select(episodes: Sequence[Episode], limit: int | None, seed: int = 0) -> list[Episode]:
    """A deterministic subset of ``limit`` episodes, proportional per source (hash order inside a source)."""
    if limit is None or limit >= len(episodes):
        return list(episodes)
    by_source: dict[str, list[Episode]] = {}
    for e in episodes:
        by_source.setdefault(e.source, []).append(e)
    out: list[Episode] = []
    for source, eps in sorted(by_source.items()):
        k = max(1, round(limit * len(eps) / len(episodes)))
        out += sorted(eps, key=lambda e: stable_hash("select", seed, e.id))[:k]
    return out


@torch.no_grad()
def evaluate(backbone, episodes: Sequence[Episode], *, adapters: dict[str, str | None], write_length: int,
             read_length: int = 512, conditions: Sequence[str] = ("nocontext", "context"), generate: bool = False,
             max_new_tokens: int = 48, seed: int = 0, other_history: bool = False, kl: bool = False,
             online: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run every condition on ``episodes``; ``adapters`` maps a name to an adapter dir (None: untrained,
    built with the config of the first adapter that has a path). ``other_history`` adds, for every adapter
    with a path, the control that writes another document's history. ``kl`` adds, for every memory
    condition, the KL divergence of its target-position distributions from the bare backbone's (question
    only): how far the adapter moves the backbone where it was meant to leave it alone. ``online`` runs the
    memory conditions in the context protocol instead: no write pass, the read sequence is prefilled with
    writes on from an empty state, so every position reads the state its own prefix wrote (the target's
    tokens included, as ``write_generated`` decoding does); with ``generate``, the greedy answer is decoded
    the same way."""
    from tqdm import tqdm

    from methods.deltamem import DeltaMemConfig, attach
    from methods.deltamem.adapter import read_config

    model, device = backbone.model, backbone.device
    renderer = ChatRenderer.for_backbone(backbone)
    stop = backbone.stop_ids
    model.eval()
    results: dict[str, ConditionResult] = {}
    base_config = next((read_config(p) for p in adapters.values() if p), DeltaMemConfig.tsw())
    plan: list[tuple[str, str | None, bool, bool]] = [(c, None, False, False) for c in conditions]
    if online and other_history:
        raise ValueError("online reads write their own prefix: there is no other history to swap in")
    for name, path in adapters.items():
        plan.append((f"memory:{name}:online" if online else f"memory:{name}", path, True, False))
        if other_history and path:
            plan.append((f"memory:{name}:other", path, True, True))
    donors = other_history_donors(episodes) if other_history else None
    tokenized = [tokenize_episode(ep, renderer, write_length=write_length, read_length=read_length)
                 for ep in episodes]
    for cond, path, memory, swapped in plan:
        res = results[cond] = ConditionResult(cond)
        dm = None
        if memory:
            if path:
                config = read_config(path)
                dm = attach(model, config)
                dm.load_adapter(path)  # refuses an adapter trained on another backbone
            else:
                with torch.random.fork_rng():
                    torch.manual_seed(seed)
                    dm = attach(model, base_config)
        try:
            for i, ep in enumerate(tqdm(episodes, desc=cond, disable=not progress, leave=False)):
                tok = tokenized[i]
                written = tokenized[donors[i]] if swapped else tok
                if cond == "context":
                    msgs = list(ep.write) + list(ep.read[len(ep.system):])
                    ids, owner = renderer.encode(msgs)
                    labels = [t if o == len(msgs) - 1 else IGNORE for t, o in zip(ids, owner)]
                    keep = backbone.window
                    ids, labels = ids[-keep:], labels[-keep:]
                    prompt = backbone.chat_ids(msgs[:-1])[-(keep - max_new_tokens):]
                else:
                    ids, labels = list(tok.read_ids), list(tok.labels)
                    prompt = backbone.chat_ids(list(ep.read[:-1]))
                ctx = contextlib.nullcontext()
                bare_logp = None
                if dm is not None:
                    dm.reset()
                    if kl:  # an empty state is inert: the bare backbone
                        with dm.writes(False):
                            bare_logp, _ = target_logp(model, ids, labels, device)
                    if online:  # no segment ids: the context protocol writes token by token, SSW included
                        ctx = dm.writes(True)
                    else:
                        if dm.config.write_granularity != "token":
                            dm.set_segment_ids(torch.tensor([list(written.write_message_ids)], device=device))
                        with dm.writes(True):
                            model(input_ids=torch.tensor([list(written.write_ids)], device=device),
                                  use_cache=False, logits_to_keep=1)
                        ctx = dm.writes(False)
                with ctx:
                    logp, target = target_logp(model, ids, labels, device)
                    res.ce.append(float(F.nll_loss(logp, target)))
                    if bare_logp is not None:
                        res.kl.append(_kl(bare_logp, logp))
                    if generate:
                        if online:  # the prompt alone, written as it is prefilled
                            dm.reset()
                        answer = backbone.decode(_greedy(model, prompt, device=device, max_new_tokens=max_new_tokens,
                                                         stop=stop)).strip()
                        res.answers.append(answer)
                        res.f1.append(_f1(answer, ep.metadata.get("references") or [ep.target]))
                        if isinstance(ep.metadata.get("evidence"), str):
                            res.evidence.append(evidence_hit(answer, ep.metadata["evidence"]))
        finally:
            if dm is not None:
                dm.detach()
    return summarise(results, episodes)


def _paired(better: ConditionResult, worse: ConditionResult, groups: Sequence[str]) -> dict[str, Any]:
    """Per-episode differences ``better − worse`` (CE as a drop: positive = ``better`` has the lower CE)."""
    drop = [w - b for b, w in zip(better.ce, worse.ce)]
    row: dict[str, Any] = {"ce_drop": mean(drop), "ce_drop_ci95": list(bootstrap_ci(drop, groups))}
    for metric in ("f1", "evidence"):
        b, w = getattr(better, metric), getattr(worse, metric)
        if b and w:
            d = [x - y for x, y in zip(b, w)]
            row.update({f"{metric}_gain": mean(d), f"{metric}_gain_ci95": list(bootstrap_ci(d, groups))})
    return row


def summarise(results: dict[str, ConditionResult], episodes: Sequence[Episode]) -> dict[str, Any]:
    groups = [f"{e.source}/{e.group}" for e in episodes]
    out: dict[str, Any] = {"n_episodes": len(episodes), "n_groups": len(set(groups)),
                           "sources": dict(statistics_by_source(episodes)), "conditions": {}, "vs_nocontext": {},
                           "vs_other_history": {}}
    for name, res in results.items():
        row: dict[str, Any] = {"ce": mean(res.ce), "ce_ci95": list(bootstrap_ci(res.ce, groups))}
        if res.kl:
            row.update(kl_to_bare=mean(res.kl), kl_to_bare_ci95=list(bootstrap_ci(res.kl, groups)))
        if res.f1:
            row.update(f1=mean(res.f1), f1_ci95=list(bootstrap_ci(res.f1, groups)))
        if res.evidence:
            row.update(evidence=mean(res.evidence), evidence_ci95=list(bootstrap_ci(res.evidence, groups)),
                       n_evidence=len(res.evidence))
        out["conditions"][name] = row
    floor = results.get("nocontext")
    if floor is not None:
        for name, res in results.items():
            if name == "nocontext":
                continue
            row = _paired(res, floor, groups)
            row["beats_nocontext"] = row["ce_drop_ci95"][0] > 0 and ("f1_gain_ci95" not in row
                                                                     or row["f1_gain_ci95"][0] > 0)
            out["vs_nocontext"][name] = row
    for name, res in results.items():
        control = results.get(f"{name}:other")
        if control is not None:
            row = _paired(res, control, groups)
            # Recall of *this* episode's history: better than the same adapter holding someone else's.
            row["recalls_own_history"] = row["ce_drop_ci95"][0] > 0 and ("evidence_gain_ci95" not in row
                                                                         or row["evidence_gain_ci95"][0] > 0)
            out["vs_other_history"][name] = row
    out["examples"] = [{"id": e.id, "question": e.question, "target": e.target,
                        "evidence": e.metadata.get("evidence"),
                        **{n: r.answers[i] for n, r in results.items() if r.answers}}
                       for i, e in enumerate(episodes[:5])]
    return out


def statistics_by_source(episodes: Sequence[Episode]):
    counts: dict[str, int] = {}
    for e in episodes:
        counts[e.source] = counts.get(e.source, 0) + 1
    return sorted(counts.items())

