"""Out-of-template recall: do the shipped δ-mem adapters name a fact's value from dialogues not made by their
training generator? (issue 32)

    python -m benchmarks.recall_out_of_template run [--per-bucket 24] [--conditions msw_own,...] [--threads 1]
    python -m benchmarks.recall_out_of_template report [--per-bucket 24]
    # a candidate adapter (e.g. a training checkpoint) in place of the shipped one, reported elsewhere:
    python -m benchmarks.recall_out_of_template run --conditions msw_own,msw_other --buckets 100,250 \
        --adapter msw=runs/train/recall_transfer/msw_recall_diverse
    python -m benchmarks.recall_out_of_template report --conditions ... --adapter msw=... --report-dir DIR

``run`` answers every condition through the harness runner (``harness.runner.run_experiment``: the real
δ-mem, vanilla, BM25 methods and the ``other_history`` control), one resumable record per condition under
``--results`` (default ``.cache/recall_oot``, git-ignored); an interrupted run continues where it stopped.
``report`` reads those records and writes ``reports/recall_out_of_template.md``,
``reports/benchmarks/recall_out_of_template.json`` (per-dialogue hits) and ``reports/recall_vs_length.png``.

Data: ``tasks.recall_oot`` (its own generator and wording; nothing from ``harness/training``), ``--per-bucket``
dialogues at each target history length (``--buckets``). The main table pools the buckets up to 1,000 tokens;
the curve shows every bucket. Conditions:

* ``<v>_own``: δ-mem ``<v>`` (msw, tsw, ssw) with the dialogue written into the state, only the question in
  the prompt (``method.protocol=memory``);
* ``<v>_other``: the same with the *next* dialogue's history written (``control=other_history``);
* ``<v>_none``: the same with nothing written (``task.history=none``);
* ``vanilla``: the bare backbone with the dialogue in the prompt as a transcript block before the question;
  ``vanilla_chat``: the dialogue as the chat turns themselves, the form δ-mem writes; ``nocontext``: question only;
* ``bm25``: BM25 RAG (``methods/bm25_rag.py``) over the dialogue's turns, top 10 turns in the prompt.

Greedy decoding, 32 new tokens. Intervals: 95 % bootstrap over dialogues (``harness.metrics.bootstrap_ci``);
differences are paired per dialogue.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
BUCKETS = (100, 250, 500, 1000, 2000)
MAIN_MAX_TOKENS = 1000
VARIANTS = ("msw", "tsw", "ssw")
BASE_CONDITIONS = ("nocontext", "vanilla", "bm25")
DEFAULT_CONDITIONS = ("nocontext", "vanilla", "bm25", "msw_own", "msw_other", "tsw_own", "tsw_other", "vanilla_chat",
                      "msw_none", "tsw_none")
LABELS = {"own": "own history written", "other": "another dialogue's history written", "none": "nothing written",
          "vanilla": "bare backbone, dialogue in the prompt as a transcript block",
          "vanilla_chat": "bare backbone, dialogue in the prompt as chat turns",
          "nocontext": "bare backbone, question only",
          "bm25": "BM25 RAG over the turns (top 10)"}


@dataclass(frozen=True)
class Condition:
    name: str
    method: str
    overrides: tuple[str, ...] = ()
    task: tuple[tuple[str, Any], ...] = ()


def condition(name: str) -> Condition:
    if name == "nocontext":
        return Condition(name, "vanilla_nocontext")
    if name == "vanilla":
        return Condition(name, "vanilla")
    if name == "vanilla_chat":
        return Condition(name, "vanilla", task=(("context_format", "chat"),))
    if name == "bm25":
        return Condition(name, "bm25_rag")
    variant, _, mode = name.partition("_")
    if variant in VARIANTS and mode in ("own", "other", "none"):
        extra = {"own": (), "other": ("control=other_history",), "none": ()}[mode]
        task = (("history", "none"),) if mode == "none" else ()
        return Condition(name, f"deltamem_{variant}", ("method.protocol=memory", *extra), task)
    raise ValueError(f"unknown condition {name!r}; expected nocontext, vanilla, vanilla_chat, bm25 or "
                     f"<msw|tsw|ssw>_<own|other|none>")


def task_node(seed: int, buckets: Sequence[int], per_bucket: int, **extra: Any) -> dict[str, Any]:
    return {"_target_": "tasks.recall_oot.task.RecallOOTTask", "name": "recall_oot", "seed": seed,
            "buckets": list(buckets), "per_bucket": per_bucket, "history": "own", "limit": None, "episode_ids": None,
            "seed_offset": 0, "generation": {"max_new_tokens": 32, "do_sample": False}, **extra}


def adapter_override(cond: Condition, adapters: dict[str, str]) -> tuple[str, ...]:
    """``method.adapter=<dir>`` for a δ-mem condition whose variant was given a candidate adapter; the record's
    semantic config then holds that adapter, so its results never mix with the shipped adapter's."""
    variant = cond.method.removeprefix("deltamem_") if cond.method.startswith("deltamem_") else None
    if variant in adapters:
        return (f"method.adapter={Path(adapters[variant]).resolve()}",)
    return ()


def compose(cond: Condition, *, seed: int, buckets: Sequence[int], per_bucket: int, results: Path, threads: int,
            adapters: dict[str, str] | None = None):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    extra = adapter_override(cond, adapters or {})
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"method={cond.method}", *cond.overrides, *extra,
                                                 f"run.results_dir={results}", f"run.threads={threads}",
                                                 "run.progress=false"])
    with open_dict(cfg):  # the task is not in conf/task (it would add an empty column to the main report)
        cfg.task = OmegaConf.create(task_node(seed, buckets, per_bucket, **dict(cond.task)))
    return cfg


def run(args: argparse.Namespace) -> None:
    import torch

    from harness.backbone import load_backbone
    from harness.runner import run_experiment

    torch.set_num_threads(args.threads)
    cache: dict[str, Any] = {}

    def load_once(cfg):  # one backbone for every condition: δ-mem detaches itself when its run closes
        if "bb" not in cache:
            cache["bb"] = load_backbone(cfg)
        return cache["bb"]

    for name in args.conditions:
        cond = condition(name)
        cfg = compose(cond, seed=args.seed, buckets=args.buckets, per_bucket=args.per_bucket,
                      results=Path(args.results), threads=args.threads, adapters=args.adapters)
        t0 = time.time()
        outcome = run_experiment(cfg, load=load_once)
        overall = outcome.metrics.get("overall", {}).get("key_value", {})
        print(f"[recall_oot] {name}: {outcome.status} in {time.time() - t0:.0f} s, key value "
              f"{overall.get('mean', float('nan')):.3f}  ({outcome.path})", flush=True)


# ------------------------------------------------------------------------------------------ report
def load_results(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """condition -> {dialogue id: sample record dict}, and condition -> wall seconds of its record; a condition
    without a complete record is left out. The record is found as the runner finds it (same hash)."""
    from hydra.utils import instantiate

    from harness.adapters import resolve_adapter
    from harness.records import data_digest
    from harness.runner import find_record, semantic_config

    out: dict[str, dict[str, Any]] = {}
    walls: dict[str, float] = {}
    for name in args.conditions:
        cfg = compose(condition(name), seed=args.seed, buckets=args.buckets, per_bucket=args.per_bucket,
                      results=Path(args.results), threads=args.threads, adapters=args.adapters)
        adapter = resolve_adapter(cfg)  # in place, before the semantic config, as the runner does
        semantic = semantic_config(cfg)
        if adapter:
            semantic["method"].update(adapter)
        task = instantiate(cfg.task, _convert_="all")
        names = {"task": "recall_oot", "method": str(cfg.method.name), "backbone": str(cfg.backbone.name)}
        record, _ = find_record(str(args.results), names, args.seed_run, semantic, data_digest(task.data_fingerprint()))
        if not record.is_complete():
            print(f"[recall_oot] {name}: no complete record at {record.path}; left out", file=sys.stderr)
            continue
        out[name] = {sid: s.to_dict() for sid, s in record.samples().items()}
        walls[name] = float((record.header() or {}).get("timings", {}).get("wall_s_total") or 0.0)
    return out, walls


def _rate(values: list[float], groups: list[str]) -> dict[str, Any]:
    from harness.metrics import bootstrap_ci, mean

    lo, hi = bootstrap_ci(values, groups)
    return {"rate": mean(values), "ci95": [lo, hi], "n": len(values)}


def report(args: argparse.Namespace) -> None:
    from tasks.recall_oot.generator import generate_set

    dialogues = {d.id: d for d in generate_set(args.seed, args.buckets, args.per_bucket)}
    results, walls = load_results(args)
    if not results:
        sys.exit("error: no complete record; run `python -m benchmarks.recall_out_of_template run` first")
    tokens = _history_tokens(list(dialogues.values()))
    main_ids = [i for i, d in dialogues.items() if d.target_tokens <= MAIN_MAX_TOKENS]
    rows: dict[str, Any] = {}
    for name, samples in results.items():
        ids = [i for i in main_ids if i in samples]
        hits = [samples[i]["scores"]["key_value"] for i in ids]
        rows[name] = {**_rate(hits, ids), "distractor": _rate([samples[i]["scores"]["distractor_value"] for i in ids],
                                                                 ids),
                      # hits whose answer replays transcript lines ("User: ...") rather than answering
                      "hits_echoing_transcript": sum(bool(samples[i]["scores"]["key_value"]) and
                                                     _echoes(samples[i]["prediction"]) for i in ids),
                      "answers_naming_training_value": sum(_names_training_value(samples[i]["prediction"])
                                                           for i in ids)}
    paired: dict[str, Any] = {}
    for v in VARIANTS:
        for a, b in ((f"{v}_own", f"{v}_other"), (f"{v}_own", f"{v}_none"), (f"{v}_own", "nocontext")):
            if a in results and b in results:
                ids = [i for i in main_ids if i in results[a] and i in results[b]]
                d = [results[a][i]["scores"]["key_value"] - results[b][i]["scores"]["key_value"] for i in ids]
                paired[f"{a} - {b}"] = _rate(d, ids)
    curve: dict[str, dict[str, Any]] = {}
    for name, samples in results.items():
        curve[name] = {}
        for b in args.buckets:
            ids = [i for i, d in dialogues.items() if d.target_tokens == b and i in samples]
            if ids:
                curve[name][str(b)] = _rate([samples[i]["scores"]["key_value"] for i in ids], ids)
    lengths = {str(b): _summary([tokens[i] for i, d in dialogues.items() if d.target_tokens == b])
               for b in args.buckets}
    per_dialogue = [{"id": i, "target_tokens": d.target_tokens, "history_tokens": tokens[i], "family": d.asked.family,
                     "kind": d.asked.kind, "value": d.asked.value, "n_facts": d.metadata["n_facts"],
                     "depth": round(d.metadata["depth"], 3), "question": d.question,
                     "hit": {n: results[n][i]["scores"]["key_value"] for n in results if i in results[n]},
                     "answer": {n: results[n][i]["prediction"] for n in results if i in results[n]}}
                    for i, d in dialogues.items()]
    blob = {"seed": args.seed, "buckets": list(args.buckets), "per_bucket": args.per_bucket,
            "main_table_max_target_tokens": MAIN_MAX_TOKENS, "n_main": len(main_ids), "history_tokens": lengths,
            "conditions": rows, "paired": paired, "curve": curve, "per_dialogue": per_dialogue,
            "wall_s": walls, "wall_s_total": round(sum(walls.values()), 1),
            "donor_holds_asked_value": _donor_collisions(list(dialogues.values()))}
    if args.adapters:
        blob["adapters"] = {v: str(Path(d)) for v, d in args.adapters.items()}
    out = Path(args.report_dir)
    out_json = out / "benchmarks" / "recall_out_of_template.json"
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(blob, indent=1) + "\n")
    _figure(curve, lengths, args.buckets, out / "recall_vs_length.png")
    shown = out_json.resolve().relative_to(ROOT) if out_json.resolve().is_relative_to(ROOT) else out_json
    (out / "recall_out_of_template.md").write_text(_markdown(blob, dialogues, results, str(shown)))
    print(f"[recall_oot] wrote {out_json}, {out / 'recall_out_of_template.md'}, {out / 'recall_vs_length.png'}")


def _history_tokens(dialogues) -> dict[str, int]:
    """Tokens of each history as δ-mem writes it (the backbone's chat template), via the tokenizer only."""
    from transformers import AutoTokenizer

    from harness.backbone import chat_kwargs_for, resolve_location
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "conf" / "backbone" / "smollm2_135m.yaml")
    location, _ = resolve_location(cfg)
    tok = AutoTokenizer.from_pretrained(location)
    kw = chat_kwargs_for(str(cfg.name), tok, None)
    def count(d) -> int:
        ids = tok.apply_chat_template([{"role": t.role, "content": t.text} for t in d.turns], tokenize=True, **kw)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)  # newer transformers return a mapping

    return {d.id: count(d) for d in dialogues}


def _summary(xs: list[int]) -> dict[str, float]:
    xs = sorted(xs)
    return {"mean": sum(xs) / len(xs), "min": xs[0], "max": xs[-1], "n": len(xs)} if xs else {}


def _names_training_value(prediction: str) -> bool:
    """The answer names a value of the training generator's pools (a name, pet, city, company): the adapters'
    learned guess, never right here (the evaluation's pools are disjoint from these)."""
    from harness.training import synthetic as tr
    from tasks.recall_oot.scoring import occurrences

    pool = (*tr.NAMES, *tr.PET_NAMES, *tr.CITIES, *tr.COMPANIES)
    return bool(occurrences(prediction, pool))


def _echoes(prediction: str) -> bool:
    return any(tag in prediction for tag in ("User:", "Assistant:"))


def _donor_collisions(dialogues) -> int:
    """Dialogues whose other-history donor (the next one, cyclic, as ``control=other_history`` picks it) happens
    to state the asked value too: there the control can name it without recall."""
    from tasks.recall_oot.scoring import occurrences

    return sum(bool(occurrences(dialogues[(i + 1) % len(dialogues)].history_text, d.asked.aliases))
               for i, d in enumerate(dialogues))


STYLE = {"msw_own": ("s", 11, "-"), "tsw_own": ("^", 9, "-"), "vanilla": ("o", 7, "-"), "vanilla_chat": ("D", 7, "-"),
         "bm25": ("v", 7, "-"), "nocontext": ("x", 6, "--")}


def _figure(curve, lengths, buckets, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    show = [("msw_own", "δ-mem MSW, history written (removed from prompt)"),
            ("tsw_own", "δ-mem TSW, history written (removed from prompt)"),
            ("vanilla", "vanilla, history in the prompt (transcript block)"),
            ("vanilla_chat", "vanilla, history in the prompt (chat turns)"), ("bm25", "BM25 RAG (top-10 turns)"),
            ("nocontext", "question only")]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, label in show:
        if name not in curve:
            continue
        xs = [lengths[str(b)]["mean"] for b in buckets if str(b) in curve[name]]
        ys = [100 * curve[name][str(b)]["rate"] for b in buckets if str(b) in curve[name]]
        lo = [100 * curve[name][str(b)]["ci95"][0] for b in buckets if str(b) in curve[name]]
        hi = [100 * curve[name][str(b)]["ci95"][1] for b in buckets if str(b) in curve[name]]
        marker, size, style = STYLE[name]
        # hollow markers of decreasing size keep lines that coincide (several sit at 0 %) visible
        ax.plot(xs, ys, marker=marker, markersize=size, markerfacecolor="none", linestyle=style, label=label)
        ax.fill_between(xs, lo, hi, alpha=0.12)
    ax.set_xscale("log")
    ax.set_xticks([lengths[str(b)]["mean"] for b in buckets])
    ax.set_xticklabels([f"{lengths[str(b)]['mean']:.0f}" for b in buckets])
    ax.set_xlabel("history length (tokens, SmolLM2 chat template; bucket mean)")
    ax.set_ylabel("answers naming the key value (%)")
    n = next(iter(curve.values()))
    ax.set_title(f"Out-of-template recall vs history length, SmolLM2-135M "
                 f"({next(iter(n.values()))['n']} dialogues per bucket, 95 % bootstrap)", fontsize=9)
    ax.set_ylim(-2, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _pct(r: dict[str, Any]) -> str:
    return f"{100 * r['rate']:.1f} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"


def _diff(r: dict[str, Any]) -> str:
    return f"{100 * r['rate']:+.1f} [{100 * r['ci95'][0]:+.1f}, {100 * r['ci95'][1]:+.1f}]"


def _adapters_line(candidates: dict[str, str]) -> str:
    if not candidates:
        return "shipped adapters"
    named = ", ".join(f"{v.upper()} candidate adapter `{d}`" for v, d in candidates.items())
    return f"{named} (not the shipped one; other variants shipped)"


def _markdown(blob: dict[str, Any], dialogues, results, json_path: str) -> str:
    rows, paired, curve = blob["conditions"], blob["paired"], blob["curve"]
    lines = ["# Out-of-template recall (issue 32)", "",
             "Generated by `python -m benchmarks.recall_out_of_template report` from the records of "
             "`python -m benchmarks.recall_out_of_template run`; raw per-dialogue results in "
             f"`{json_path}`.", "",
             f"Dialogues: `tasks/recall_oot` (its own generator and wording, checked against the training templates by "
             f"`tests/tasks/test_recall_oot.py`), seed {blob['seed']}, {blob['per_bucket']} per target length. Main "
             f"table: the {blob['n_main']} dialogues with target ≤ {MAIN_MAX_TOKENS} tokens. Backbone SmolLM2-135M-"
             f"Instruct, {_adapters_line(blob.get('adapters', {}))}, greedy, 32 new tokens, one CPU thread. Metric: the "
             "answer names the asked value (normalised whole-word match, `tasks/recall_oot/scoring.py`). 95 % "
             "bootstrap intervals over dialogues; differences paired per dialogue.", "",
             "| condition | key value, % [95 % CI] | distractor's value named, % | hits echoing transcript lines | "
             "answers naming a training-pool value |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        variant, _, mode = name.partition("_")
        label = LABELS[name] if name in LABELS else f"δ-mem {variant.upper()}, {LABELS[mode]}"
        lines.append(f"| {label} (`{name}`) | {_pct(r)} | {100 * r['distractor']['rate']:.1f} | "
                     f"{r['hits_echoing_transcript']} | {r['answers_naming_training_value']} |")
    zero = [n for n, r in rows.items() if r["rate"] == 0]
    if zero:
        n = rows[zero[0]]["n"]
        lines += ["", f"With no hit the bootstrap interval collapses to [0, 0]; the exact one-sided 95 % upper bound "
                  f"for 0 of {n} is {100 * (1 - 0.05 ** (1 / n)):.1f} % ({', '.join(f'`{z}`' for z in zero)})."]
    lines += ["", "| paired difference | points [95 % CI] |", "|---|---|"]
    for name, r in paired.items():
        lines.append(f"| {name} | {_diff(r)} |")
    lines += ["", "## Recall vs history length", "", "![recall vs length](recall_vs_length.png)", "",
              "| condition | " + " | ".join(f"≈{b} (mean {blob['history_tokens'][str(b)]['mean']:.0f})"
                                            for b in blob["buckets"]) + " |",
              "|---|" + "---|" * len(blob["buckets"])]
    for name, per in curve.items():
        lines.append(f"| `{name}` | " + " | ".join(_pct(per[str(b)]) if str(b) in per else "–"
                                                  for b in blob["buckets"]) + " |")
    lines += ["", "History tokens per bucket (chat template, as written into δ-mem): " + "; ".join(
        f"{b}: {v['min']}–{v['max']}" for b, v in blob["history_tokens"].items()) + ".", ""]
    kinds = sorted({d.asked.kind for d in dialogues.values()})
    main = [d for d in dialogues.values() if d.target_tokens <= MAIN_MAX_TOKENS]
    lines += ["## By value kind (main-table dialogues)", "",
              "| condition | " + " | ".join(f"{k} (n={sum(d.asked.kind == k for d in main)})" for k in kinds) + " |",
              "|---|" + "---|" * len(kinds)]
    for name, samples in results.items():
        cells = []
        for k in kinds:
            ids = [d.id for d in main if d.asked.kind == k and d.id in samples]
            rate = sum(samples[i]["scores"]["key_value"] for i in ids) / len(ids) if ids else None
            cells.append(f"{100 * rate:.0f}" if rate is not None else "–")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    for v in VARIANTS:
        none = results.get(f"{v}_none")
        if none and "nocontext" in results:
            base = results["nocontext"]
            same = sum(none[i]["prediction"] == base[i]["prediction"] for i in none if i in base)
            lines += ["", f"`{v}_none` (empty state) gives the question-only backbone's answer word for word in "
                      f"{same} of {len(none)} dialogues (an empty state reads zero, so the corrections vanish)."]
    lines += ["", f"Other-history control: the donor is the next dialogue in length-then-index order (cyclic, the "
              f"harness's `control=other_history`); {blob['donor_holds_asked_value']} of {len(dialogues)} donors "
              "happen to state the asked value as well.", "",
              f"Wall time of the records: {blob['wall_s_total']:.0f} s in all (" + ", ".join(
                  f"{k} {v:.0f} s" for k, v in blob["wall_s"].items()) + "), one torch thread on a 2-core machine "
              "shared with other jobs.", ""]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=("run", "report"))
    ap.add_argument("--per-bucket", type=int, default=24)
    ap.add_argument("--buckets", default=",".join(map(str, BUCKETS)))
    ap.add_argument("--conditions", default=",".join(DEFAULT_CONDITIONS))
    ap.add_argument("--seed", type=int, default=0, help="the generator's seed")
    ap.add_argument("--results", default=str(ROOT / ".cache" / "recall_oot"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--adapter", action="append", default=[], metavar="VARIANT=DIR",
                    help="evaluate this δ-mem adapter folder for msw/tsw/ssw instead of the shipped one (repeatable)")
    ap.add_argument("--report-dir", default=str(ROOT / "reports"),
                    help="where `report` writes; give another folder for a candidate adapter")
    args = ap.parse_args(argv)
    args.adapters = {}
    for item in args.adapter:
        variant, sep, folder = item.partition("=")
        if not sep or variant not in VARIANTS:
            ap.error(f"--adapter expects VARIANT=DIR with VARIANT one of {', '.join(VARIANTS)}; got {item!r}")
        from methods.deltamem.adapter import adapter_format  # the loader's own test of a folder (both formats)

        try:
            adapter_format(folder)
        except FileNotFoundError as exc:
            ap.error(f"--adapter {item}: {exc}")
        args.adapters[variant] = folder
    if args.command == "report" and args.adapters and Path(args.report_dir).resolve() == (ROOT / "reports").resolve():
        ap.error("--adapter with `report` needs --report-dir: reports/ holds the shipped adapters' evaluation")
    args.seed_run = 42  # the harness's default run seed (greedy: it seeds nothing that matters)
    try:
        args.buckets = [int(b) for b in args.buckets.split(",") if b.strip()]
    except ValueError:
        ap.error(f"--buckets must be comma-separated integers, got {args.buckets!r}")
    args.conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    for c in args.conditions:
        try:
            condition(c)
        except ValueError as exc:
            ap.error(str(exc))
    if args.per_bucket < 1:
        ap.error("--per-bucket must be >= 1")
    (run if args.command == "run" else report)(args)


if __name__ == "__main__":
    main()
