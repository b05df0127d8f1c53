"""A run split across processes (RANK / WORLD_SIZE, as torchrun and accelerate set them) merges into the record a
single process makes, sample for sample; a killed rank resumes, with another number of processes too."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.sharding import assign
from harness.types import Episode, Query

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import os, sys
sys.path.insert(0, {root!r})
from hydra import compose, initialize_config_dir
from harness.runner import run_experiment
from tests.conftest import make_backbone
with initialize_config_dir(config_dir={conf!r}, version_base="1.3"):
    cfg = compose("config", overrides={overrides!r})
if os.environ.get("STOP_AFTER"):  # a rank killed after its first answers
    import methods.vanilla as v
    real, calls = v.Vanilla.answer, []
    def stop(self, e, qs):
        calls.append(1)
        if len(calls) > int(os.environ["STOP_AFTER"]):
            os._exit(9)
        return real(self, e, qs)
    v.Vanilla.answer = stop
out = run_experiment(cfg, load=lambda _: make_backbone())
print("STATUS", out.status)
"""


def overrides(results, sampled: bool):
    return ["method=vanilla_nocontext", "method.batch_size=2", "task=locomo", "task.limit=14",
            "task.generation.max_new_tokens=4", f"task.generation.do_sample={str(sampled).lower()}",
            f"run.results_dir={results}", "run.progress=false"]


def launch(tmp_path, results, world: int, sampled: bool, stop_after: dict[int, int] | None = None):
    script = SCRIPT.format(root=str(ROOT), conf=str(ROOT / "conf"), overrides=overrides(results, sampled))
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "OMP_NUM_THREADS": "1"}
        if stop_after and rank in stop_after:
            env["STOP_AFTER"] = str(stop_after[rank])
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return [(p.wait(timeout=600), *p.communicate()) for p in procs]


def samples(results) -> list[dict]:
    path = next(Path(results).glob("**/samples.jsonl"))
    return [{k: v for k, v in json.loads(l).items() if k != "latency_s"} for l in path.read_text().splitlines()]


def test_assignment_is_deterministic_balanced_and_keeps_order():
    eps = [Episode(f"e{i}", (), tuple(Query(f"e{i}/q{j}", "q", "a") for j in range(n)))
           for i, n in enumerate([5, 1, 3, 3, 2])]
    parts = assign(eps, 2)
    assert [[e.id for e in p] for p in parts] == [["e0", "e4"], ["e1", "e2", "e3"]] == \
        [[e.id for e in p] for p in assign(eps, 2)]
    assert sorted(e.id for p in parts for e in p) == sorted(e.id for e in eps)
    assert [len(p) for p in assign(eps, 8)].count(0) == 3


@pytest.mark.parametrize("sampled", [False, True])
def test_two_processes_make_the_single_process_record(tmp_path, sampled):
    single = launch(tmp_path, tmp_path / "one", 1, sampled)
    assert single[0][0] == 0, single[0][2][-2000:]
    double = launch(tmp_path, tmp_path / "two", 2, sampled)
    assert all(rc == 0 for rc, _, _ in double), [e[-2000:] for _, _, e in double]
    assert samples(tmp_path / "one") == samples(tmp_path / "two")
    header = json.loads(next((tmp_path / "two").glob("**/header.json")).read_text())
    assert header["status"] == "complete" and len(header["timings"]["sessions"]) == 2
    assert not list((tmp_path / "two").glob("**/samples.rank-*")) and not list((tmp_path / "two").glob("**/header.rank-*"))


def test_a_killed_rank_resumes_with_another_number_of_processes(tmp_path):
    single = launch(tmp_path, tmp_path / "one", 1, False)
    assert single[0][0] == 0
    broken = launch(tmp_path, tmp_path / "two", 2, False, stop_after={1: 1})
    assert broken[1][0] == 9 and broken[0][0] == 0
    record = next((tmp_path / "two").glob("**/header.json")).parent
    header = json.loads((record / "header.json").read_text())
    assert header["status"] in ("running", "interrupted")
    resumed = launch(tmp_path, tmp_path / "two", 3, False)
    assert all(rc == 0 for rc, _, _ in resumed), [e[-2000:] for _, _, e in resumed]
    assert samples(tmp_path / "one") == samples(tmp_path / "two")
    assert json.loads((record / "header.json").read_text())["status"] == "complete"


@pytest.mark.real_model
def test_torchrun_on_the_embedded_backbone_makes_the_single_process_record(tmp_path):
    """The app itself under torchrun (2 CPU processes) on SmolLM2-135M, LoCoMo's sampled answers."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["-m", "harness", "method=vanilla_nocontext", "task=locomo", "task.limit=12", "run.progress=false",
            "run.threads=1", "task.generation.max_new_tokens=12"]
    one = subprocess.run([sys.executable, *args, f"run.results_dir={tmp_path / 'one'}",
                          f"hydra.run.dir={tmp_path / 'h1'}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                          *args, f"run.results_dir={tmp_path / 'two'}", f"hydra.run.dir={tmp_path / 'h2'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr[-2000:]
    assert samples(tmp_path / "one") == samples(tmp_path / "two")
    assert "complete" in two.stderr
