"""``python -m harness method=M task=T backbone=B``: one run (or a sweep with ``-m``)."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from harness.errors import HarnessError


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from harness.runner import RunInterrupted, run_experiment

    try:
        outcome = run_experiment(cfg)
    except RunInterrupted as exc:
        print(f"[harness] {exc}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:  # before a record existed: nothing to resume
        print("[harness] interrupted before the run started", file=sys.stderr)
        sys.exit(130)
    except (HarnessError, ValueError, TypeError, FileNotFoundError) as exc:
        # Bad input: one line that names the problem, a non-zero exit, no stack trace. In a sweep the other jobs
        # still run: the line names the job, and the sweep's failures are what its log says.
        print(f"error: {cfg.method.name} x {cfg.task.name}: {exc}" if _in_sweep() else f"error: {exc}", file=sys.stderr)
        if _in_sweep():
            return
        sys.exit(2)
    if outcome.path is None:
        return
    primary = outcome.metrics.get("overall", {})
    summary = ", ".join(f"{k}={v['mean']:.4f}" for k, v in primary.items())
    print(f"[harness] {outcome.status}: {outcome.path} {summary}")


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


if __name__ == "__main__":
    main()
