"""Records that cannot lie: data identity, one writer per record, repair only of a torn last line, corrupt
files with a way out, interrupted runs, strict JSON, refused settings. Each test fails on the code before
issue 23 was fixed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from harness.errors import ConfigError, DataError
from harness.records import RecordBusy, RecordError, RunRecord, config_hash
from harness.runner import RunInterrupted, run_experiment, semantic_config
from harness.types import SampleRecord
from methods.vanilla import Vanilla

ROOT = Path(__file__).resolve().parents[2]
CONF = str(ROOT / "conf")
LOCOMO = ROOT / "tasks" / "locomo" / "data" / "locomo10.json"


def cfg_for(tmp_path, *extra):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[
            "method=vanilla_nocontext", "method.batch_size=2", "task.episode_ids=[conv-30,conv-26]", "task.limit=6",
            "task.generation.max_new_tokens=3", f"run.results_dir={tmp_path / 'results'}", "run.progress=false",
            *extra])


def locomo_copy(folder: Path, change_gold: bool = False) -> Path:
    data = json.loads(LOCOMO.read_text())
    if change_gold:
        for conv in data:
            for qa in conv["qa"]:
                if "answer" in qa:
                    qa["answer"] = f"other {qa['answer']}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "locomo10.json"
    path.write_text(json.dumps(data) if change_gold else LOCOMO.read_text())
    return path


# ---------------------------------------------------------------- data identity
def test_data_read_through_an_environment_variable_decides_the_record(tmp_path, tiny_backbone, monkeypatch):
    first = run_experiment(cfg_for(tmp_path), load=lambda _: tiny_backbone)
    monkeypatch.setenv("HARNESS_LOCOMO", str(locomo_copy(tmp_path / "same")))
    same = run_experiment(cfg_for(tmp_path), load=lambda _: pytest.fail("same bytes: the record is complete"))
    assert same.status == "skipped" and same.path == first.path
    monkeypatch.setenv("HARNESS_LOCOMO", str(locomo_copy(tmp_path / "other", change_gold=True)))
    other = run_experiment(cfg_for(tmp_path), load=lambda _: tiny_backbone)
    assert other.status == "complete" and other.path != first.path
    golds = [json.loads(l)["gold"] for l in (other.path / "samples.jsonl").read_text().splitlines()]
    assert all(str(g).startswith("other ") for g in golds)


def test_a_record_made_before_data_identity_is_kept_when_its_data_matches(tmp_path, tiny_backbone):
    """Older records have a hash without the data digest: they still skip and resume, with their own data only."""
    cfg = cfg_for(tmp_path)
    made = run_experiment(cfg, load=lambda _: tiny_backbone)
    legacy = made.path.parent / f"seed-42-{config_hash(semantic_config(cfg))}"
    made.path.rename(legacy)
    again = run_experiment(cfg, load=lambda _: pytest.fail("the older record is complete"))
    assert again.status == "skipped" and again.path == legacy
    header = json.loads((legacy / "header.json").read_text())
    header["data"]["sha256"] = "0" * 64  # as if it had been made from other bytes
    (legacy / "header.json").write_text(json.dumps(header))
    fresh = run_experiment(cfg, load=lambda _: tiny_backbone)
    assert fresh.status == "complete" and fresh.path == made.path


# ---------------------------------------------------------------- one writer
def test_a_second_process_on_the_same_record_is_refused_and_a_killed_holder_frees_it(tmp_path, tiny_backbone):
    cfg = cfg_for(tmp_path)
    out = run_experiment(cfg, load=lambda _: tiny_backbone)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r)\n"
        "from harness.records import RecordLock\n"
        "with RecordLock(%r):\n    print('locked', flush=True); time.sleep(60)") % (str(ROOT), str(out.path))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RecordBusy, match=rf"being written by another process \(pid {holder.pid}\)"):
            run_experiment(cfg, load=lambda _: pytest.fail("a busy record must not load the model"))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert run_experiment(cfg, load=lambda _: tiny_backbone).status == "skipped"


def test_two_app_processes_started_together_write_every_sample_once(tmp_path):
    """The issue's scenario with the real app: the second process exits at once, naming the holder."""
    cmd = [sys.executable, "-m", "harness", "method=vanilla_nocontext", "task.episode_ids=[conv-26]", "task.limit=2",
           "task.generation.max_new_tokens=2", f"run.results_dir={tmp_path / 'results'}", "run.progress=false",
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((tmp_path / "results").glob("**/header.json")) and time.time() < deadline:
        time.sleep(0.2)
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    first_out = first.communicate(timeout=600)
    assert first.returncode == 0, first_out[1][-2000:]
    if second.returncode == 0:  # the first had already finished: then the second found it complete
        assert "skip:" in second.stderr
    else:
        assert second.returncode == 2 and "being written by another process (pid" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    lines = next((tmp_path / "results").glob("**/samples.jsonl")).read_text().splitlines()
    ids = [json.loads(l)["sample_id"] for l in lines]
    assert len(ids) == len(set(ids)) == 2


# ---------------------------------------------------------------- repair and corrupt files
def _row(sid: str) -> SampleRecord:
    return SampleRecord(sample_id=sid, episode_id="e", category=None, question="q", gold="g", prediction="p",
                        extracted="p", scores={"f1": 1.0}, prompt_tokens=1, new_tokens=1, context_tokens=0,
                        latency_s=0.1)


def test_only_a_torn_last_line_is_repaired(tmp_path):
    rec = RunRecord(tmp_path / "r")
    rec.append([_row("a"), _row("b")])
    with open(rec.samples_path, "a") as f:
        f.write('{"sample_id": "c", "episo\n')  # complete line end, broken JSON, and it is the last line
    assert list(rec.samples(repair=True)) == ["a", "b"]
    rec.append([_row("d")])
    assert list(rec.samples()) == ["a", "b", "d"]
    lines = rec.samples_path.read_bytes().splitlines(keepends=True)
    rec.samples_path.write_bytes(lines[0] + b"garbage in the middle\n" + b"".join(lines[1:]))
    with pytest.raises(RecordError, match=r"samples.jsonl: line 2 of 4 is not a sample record.*run.force=true"):
        rec.samples(repair=True)
    assert len(rec.samples_path.read_bytes().splitlines()) == 4  # nothing was cut


def test_corrupt_files_name_the_file_and_force_sets_them_aside(tmp_path, tiny_backbone):
    cfg = cfg_for(tmp_path)
    out = run_experiment(cfg, load=lambda _: tiny_backbone)
    (out.path / "header.json").write_text('{"status": "comp')
    with pytest.raises(RecordError, match=r"header.json: not valid JSON .*run.force=true"):
        run_experiment(cfg, load=lambda _: tiny_backbone)
    forced = run_experiment(cfg_for(tmp_path, "run.force=true"), load=lambda _: tiny_backbone)
    assert forced.status == "complete"
    kept = list(out.path.glob(".replaced-*/header.json"))
    assert len(kept) == 1 and kept[0].read_text() == '{"status": "comp'
    lines = (out.path / "samples.jsonl").read_bytes().splitlines(keepends=True)
    (out.path / "samples.jsonl").write_bytes(lines[0] + b"\xff\xfe not utf-8\n" + b"".join(lines[1:]))
    header = json.loads((out.path / "header.json").read_text())
    header["status"] = "running"
    (out.path / "header.json").write_text(json.dumps(header))
    with pytest.raises(RecordError, match=r"samples.jsonl: line 2 of 7 .*UnicodeDecodeError"):
        run_experiment(cfg, load=lambda _: tiny_backbone)
    assert run_experiment(cfg_for(tmp_path, "run.force=true"), load=lambda _: tiny_backbone).status == "complete"
    assert len(list(out.path.glob(".replaced-*"))) == 2


def test_the_app_says_corrupt_header_in_one_line(tmp_path):
    rec = tmp_path / "results"
    cmd = [sys.executable, "-m", "harness", "method=vanilla_nocontext", "task.episode_ids=[conv-26]", "task.limit=1",
           "task.generation.max_new_tokens=2", f"run.results_dir={rec}", "run.progress=false",
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600).returncode == 0
    header = next(rec.glob("**/header.json"))
    header.write_text("[]")
    bad = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"error: {header}: expected a JSON object, got list; move {header.parent} away, or rerun with run.force=true "
        f"to set it aside (kept under {header.parent}/.replaced-<time>) and start the record afresh"]


# ---------------------------------------------------------------- interrupted runs
@pytest.mark.parametrize("how", ["sigint", "sigterm"])
def test_a_signal_leaves_an_interrupted_record_that_resumes(tmp_path, tiny_backbone, monkeypatch, capsys, how):
    cfg = cfg_for(tmp_path)
    real = Vanilla.answer
    calls = []

    def stopped(self, episode, queries):
        calls.append(1)
        if len(calls) == 2:
            if how == "sigint":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, episode, queries)

    monkeypatch.setattr(Vanilla, "answer", stopped)
    with pytest.raises(RunInterrupted, match=r"holds 2/6 samples; rerun the same command to resume"):
        run_experiment(cfg, load=lambda _: tiny_backbone)
    record = RunRecord(next((tmp_path / "results").glob("**/header.json")).parent)
    assert record.header()["status"] == "interrupted" and len(record.samples()) == 2
    monkeypatch.setattr(Vanilla, "answer", real)
    capsys.readouterr()
    assert run_experiment(cfg, load=lambda _: tiny_backbone).status == "complete"
    assert f"resuming {record.path} at 2/6" in capsys.readouterr().err


def test_the_report_shows_an_interrupted_record(tmp_path):
    from harness.report import build_report

    rec = RunRecord(tmp_path / "results" / "locomo" / "vanilla" / "tiny" / "seed-42-x")
    rec.write_header({"status": "interrupted", "task": "locomo", "method": "vanilla", "backbone": "tiny",
                      "protocol": "context", "n_samples_expected": 6, "config": {}})
    rec.append([_row("a"), _row("b")])
    build_report(tmp_path / "results", tmp_path / "reports")
    assert "interrupted (2/6)" in (tmp_path / "reports" / "main.md").read_text()


# ---------------------------------------------------------------- strict JSON and refused settings
def test_headers_are_strict_json(tmp_path, tiny_backbone):
    out = run_experiment(cfg_for(tmp_path, "task.limit=5"), load=lambda _: tiny_backbone)

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    header = json.loads((out.path / "header.json").read_text(), parse_constant=refuse)
    singles = [c for c, m in header["metrics"]["by_category"].items() if m["f1"]["n"] == 1]
    assert singles and all(header["metrics"]["by_category"][c]["f1"]["stderr"] is None for c in singles)


@pytest.mark.parametrize("override, message", [
    ("seed=1.5", "seed must be an integer, got 1.5"),
    ("seed=abc", "seed must be an integer, got 'abc'"),
    ("run.threads=0", "run.threads must be a positive integer or null"),
    ("run.threads=-2", "run.threads must be a positive integer or null"),
])
def test_bad_run_settings_are_refused(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        run_experiment(cfg_for(tmp_path, override), load=lambda _: pytest.fail("refused before loading"))
    assert not (tmp_path / "results").exists()


def test_a_null_gold_answer_is_a_data_error_naming_the_question(tmp_path, monkeypatch):
    data = json.loads(LOCOMO.read_text())
    data[0]["qa"][3]["answer"] = None
    (tmp_path / "locomo10.json").write_text(json.dumps(data))
    monkeypatch.setenv("HARNESS_LOCOMO", str(tmp_path / "locomo10.json"))
    with pytest.raises(DataError, match=r"question conv-26/q0003: the gold answer is missing or null"):
        run_experiment(cfg_for(tmp_path), load=lambda _: pytest.fail("refused before loading"))


# ---------------------------------------------------------------- the report survives bad records
def test_the_report_labels_unreadable_records_and_names_them(tmp_path, capsys):
    from harness.report import build_report

    res = tmp_path / "results"

    def folder(task, method):
        path = res / task / method / "tiny" / "seed-42-x"
        path.mkdir(parents=True)
        return path

    folder("locomo", "vanilla").joinpath("header.json").write_text("not json at all")
    folder("locomo", "bm25_rag").joinpath("header.json").write_text("")
    folder("hotpotqa", "vanilla").joinpath("header.json").write_text("[1, 2]")
    folder("hotpotqa", "bm25_rag").joinpath("header.json").write_text(json.dumps(
        {"status": "complete", "task": "hotpotqa", "method": "bm25_rag", "backbone": "tiny", "protocol": "memory",
         "primary_metric": "f1", "config": {}}))
    binary = RunRecord(folder("ifeval", "vanilla"))
    binary.write_header({"status": "complete", "task": "ifeval", "method": "vanilla", "backbone": "tiny",
                         "protocol": "context", "primary_metric": "f1", "config": {}, "n_samples_expected": 2,
                         "metrics": {"overall": {"f1": {"mean": 0.5, "stderr": None, "n": 2}}, "by_category": {}}})
    binary.samples_path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary\n")
    build_report(res, tmp_path / "reports")
    err = capsys.readouterr().err
    md = (tmp_path / "reports" / "ablations.md").read_text()
    assert md.count("unreadable record") == 5
    for bad in ("locomo/vanilla", "locomo/bm25_rag", "hotpotqa/vanilla", "hotpotqa/bm25_rag", "ifeval/vanilla"):
        assert f"[report] unreadable record {res / bad}/tiny/seed-42-x" in err


def test_report_from_a_missing_results_folder_writes_nothing(tmp_path):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "main.md").write_text("the committed table\n")
    run = subprocess.run([sys.executable, "-m", "harness.report", "--results", str(tmp_path / "nope"), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "no such folder" in run.stderr
    assert (out / "main.md").read_text() == "the committed table\n" and len(list(out.iterdir())) == 1
