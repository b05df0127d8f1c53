"""``python -m harness.train method=deltamem_tsw train_data=synthetic [backbone=...] [resume=true]``.

Trains δ-mem on history-removed episodes (see ``harness/training/trainer.py``); the adapter, its training
log, loss curve, config and summary are written to ``out_dir``.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from harness.errors import HarnessError


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> None:
    from harness.training.trainer import run_training

    try:
        summary = run_training(cfg)
    except (HarnessError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    if summary.get("message"):  # a method's own pipeline (MLP Memory) says what it built
        print(summary["message"])
    elif summary["status"] == "complete":
        print(f"[train] complete: {summary['adapter']} ({summary['steps']} steps, {summary['episodes']} episodes, "
              f"{summary['train_seconds']:.0f} s, last loss {summary['last_loss_mean10']:.4f})")
    else:
        print(f"[train] paused at step {summary['step']}/{summary['total_steps']}; continue with resume=true")


if __name__ == "__main__":
    main()
