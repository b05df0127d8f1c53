"""Evidence that a δ-mem adapter learned: its held-out episodes, trained vs untrained vs no context vs context.

    python -m benchmarks.deltamem_heldout ADAPTER_DIR [--limit 100] [--generate] [--no-untrained]
        [--no-context] [--other-history] [--kl] [--online] [--source NAME] [--vs DIR] [--json out.json]

ADAPTER_DIR is a ``python -m harness.train`` output: its ``train_config.yaml`` rebuilds exactly the held-out
split of every training source (checked against the ids in ``training.json``) and names the backbone.
Reports, per condition, the mean target-token cross-entropy (and greedy-answer token F1 with ``--generate``)
with bootstrap 95% intervals over documents, and the paired gain of each δ-mem condition over ``nocontext``.
``--other-history`` adds the control that writes another document's history into the same adapter: the gap
to it (CE, and with ``--generate`` the share of answers holding the episode's key value) is what the memory
recalls, as opposed to what the adapter learned about the answers' form. ``--kl`` adds each adapter's KL
divergence from the bare backbone's next-token distributions on the target positions (e.g. on the
self-replies, where it should stay at the backbone: near 0). ``--online`` runs the δ-mem conditions as the
context protocol does at evaluation time (the read sequence prefilled with writes on, from an empty state)
instead of the training protocol (history written first, then read with writes off).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapter")
    ap.add_argument("--limit", type=int, default=None, help="held-out episodes (proportional per source)")
    ap.add_argument("--generate", action="store_true", help="also greedy answers and token F1")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--no-untrained", action="store_true")
    ap.add_argument("--no-context", action="store_true", help="skip the full-context condition")
    ap.add_argument("--other-history", action="store_true",
                    help="add the control that writes another document's history (recall vs answer form)")
    ap.add_argument("--kl", action="store_true",
                    help="add each adapter's KL divergence from the bare backbone on the target positions")
    ap.add_argument("--online", action="store_true",
                    help="memory conditions in the context protocol: the read prefilled with writes on, no write pass")
    ap.add_argument("--source", action="append", default=None,
                    help="only this training source's held-out episodes (repeatable; default: every source)")
    ap.add_argument("--vs", action="append", default=None, metavar="DIR",
                    help="also run this adapter (e.g. the shipped default) on the same episodes (repeatable)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from omegaconf import OmegaConf

    from harness.backbone import load_backbone
    from harness.training.data import build_training_data
    from harness.training.heldout import evaluate, select
    from harness.training.trainer import CONFIG_FILE, SUMMARY_FILE, build_sources

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.adapter)
    cfg = OmegaConf.load(root / CONFIG_FILE)
    data = build_training_data(build_sources(cfg.train_data), heldout_fraction=float(cfg.train_data.heldout_fraction),
                               split_seed=int(cfg.train_data.split_seed))
    summary_path = root / SUMMARY_FILE
    if summary_path.is_file():
        expected = set(json.loads(summary_path.read_text())["heldout_ids"])
        if expected != {e.id for e in data.heldout}:
            sys.exit(f"error: the rebuilt held-out split differs from the one recorded in {summary_path}")
    heldout = data.heldout
    if args.source:
        unknown = sorted(set(args.source) - {e.source for e in heldout})
        if unknown:
            sys.exit(f"error: --source {', '.join(unknown)}: no held-out episodes of that source in {root} "
                     f"(sources: {', '.join(sorted({e.source for e in heldout}))})")
        heldout = [e for e in heldout if e.source in args.source]
    episodes = select(heldout, args.limit)
    backbone = load_backbone(cfg.backbone)
    adapters = {"trained": str(root)}
    for other in args.vs or []:
        adapters[Path(other).name] = other
    if not args.no_untrained:
        adapters["untrained"] = None
    out = evaluate(backbone, episodes, adapters=adapters, write_length=int(cfg.train.write_length),
                   read_length=int(cfg.train.read_length),
                   conditions=("nocontext",) if args.no_context else ("nocontext", "context"),
                   generate=args.generate, max_new_tokens=args.max_new_tokens, other_history=args.other_history, kl=args.kl,
                   online=args.online)
    out["adapter"] = str(root)
    for name, row in out["conditions"].items():
        extra = "".join(f"  {label} {row[m]:.3f} [{row[m + '_ci95'][0]:.3f}, {row[m + '_ci95'][1]:.3f}]"
                        for m, label in (("kl_to_bare", "KL to bare"), ("f1", "F1"), ("evidence", "key value"))
                        if m in row)
        print(f"{name:<24} CE {row['ce']:.3f} [{row['ce_ci95'][0]:.3f}, {row['ce_ci95'][1]:.3f}]{extra}")
    for name, row in out["vs_nocontext"].items():
        verdict = "BEATS" if row["beats_nocontext"] else "does not beat"
        print(f"{name:<24} vs nocontext: {_gains(row)}  {verdict} nocontext")
    for name, row in out["vs_other_history"].items():
        verdict = "RECALLS its own history" if row["recalls_own_history"] else "no recall of its own history shown"
        print(f"{name:<24} vs another document's history: {_gains(row)}  {verdict}")
    print(f"({out['n_episodes']} held-out episodes from {out['n_groups']} documents: {out['sources']})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def _gains(row: dict) -> str:
    parts = [f"CE drop {row['ce_drop']:+.3f} [{row['ce_drop_ci95'][0]:+.3f}, {row['ce_drop_ci95'][1]:+.3f}]"]
    for m, label in (("f1", "F1"), ("evidence", "key value")):
        if f"{m}_gain" in row:
            lo, hi = row[f"{m}_gain_ci95"]
            parts.append(f"{label} gain {row[m + '_gain']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
    return "  ".join(parts)


if __name__ == "__main__":
    main()
