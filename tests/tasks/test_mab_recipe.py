"""MAB-recipe data (tasks/memoryagentbench/recipe.py): built from the staged BANKING77, CLINC150 and HotpotQA
copies with a tiny offline tokenizer at small lengths; deterministic, complete, to length, loadable by the
MemoryAgentBench task, and never reported as MemoryAgentBench."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from harness.errors import DataError
from harness.records import RunRecord, data_digest
from harness.report import build_report
from harness.types import SampleRecord
from tasks.memoryagentbench import recipe
from tasks.memoryagentbench.task import MemoryAgentBenchTask
from tests.conftest import tiny_tokenizer
from tests.tasks.mab_fixture import write_fixture

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
LENGTHS = (2048, 4096)  # the tiny test BPE spends about one token per three characters
QUESTIONS = 8
SPLIT_FILES = ("Accurate_Retrieval", "Test_Time_Learning")

pytestmark = pytest.mark.skipif(
    not (SHARED / "memoryagentbench_sources" / "banking77" / "train.csv").is_file()
    or not (SHARED / "hotpotqa" / "hotpotqa_dev_distractor_subset.jsonl").is_file(),
    reason="the staged BANKING77 / CLINC150 / HotpotQA copies are not beside this checkout")


@pytest.fixture(scope="module")
def counter():
    return recipe.TokenCounter(tiny_tokenizer(), {"spec": "tiny test BPE (tests/conftest.py)"})


def _build(path: Path, counter, seed: int) -> Path:
    recipe.build(path, lengths=LENGTHS, seed=seed, counter=counter, questions=QUESTIONS, data_root=SHARED)
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory, counter):
    return _build(tmp_path_factory.mktemp("recipe0"), counter, 0)


def rows(folder: Path, split: str) -> list[dict]:
    return pq.read_table(folder / "data" / f"{split}-00000-of-00001.parquet").to_pylist()


def make_task(data_dir, config="memoryagentbench_recipe", **over):
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "task" / f"{config}.yaml"))
    cfg.pop("_target_")
    cfg.update(over, data_dir=str(data_dir))
    return MemoryAgentBenchTask(**cfg)


def test_same_seed_gives_the_same_bytes_and_another_seed_another_order(built, counter, tmp_path):
    again = _build(tmp_path / "again", counter, 0)
    for split in SPLIT_FILES:
        name = f"data/{split}-00000-of-00001.parquet"
        assert (built / name).read_bytes() == (again / name).read_bytes()
    assert (built / recipe.MANIFEST).read_bytes() == (again / recipe.MANIFEST).read_bytes()
    other = _build(tmp_path / "other", counter, 1)
    for split in SPLIT_FILES:
        a, b = rows(built, split), rows(other, split)
        assert [r["context"] for r in a] != [r["context"] for r in b]
        assert [r["questions"] for r in a] != [r["questions"] for r in b]
    m0, m1 = (json.loads((f / recipe.MANIFEST).read_text()) for f in (built, other))
    assert m0["label_maps"]["banking77"] != m1["label_maps"]["banking77"]


def test_every_question_has_its_evidence_in_its_context(built):
    hotpot = {q.id: q for q in recipe.load_hotpotqa(SHARED / "hotpotqa" / "hotpotqa_dev_distractor_subset.jsonl")}
    ar = rows(built, "Accurate_Retrieval")
    for length in LENGTHS:
        mine = [r for r in ar if r["metadata"]["source"] == f"recipe_mhqa_hotpotqa_{length}"]
        asked = [i for r in mine for i in r["metadata"]["qa_pair_ids"]]
        assert len(asked) == len(set(asked)) == QUESTIONS
        for r in mine:
            for qid, question, answer in zip(r["metadata"]["qa_pair_ids"], r["questions"], r["answers"]):
                q = hotpot[qid.removeprefix("recipe_hotpotqa_")]
                assert (question, answer) == (q.question, [q.answer])
                for title, text in q.gold:
                    assert f"\n{title}\n{text}" in r["context"], (qid, title)
            titles = [block.split("\n")[1] for block in r["context"].split("\n\n") if block.startswith("Document ")]
            assert len(titles) == len(set(titles))  # distractors de-duplicated
    # the same questions at every length: a longer context only adds history
    ids = {length: sorted(i for r in ar if r["metadata"]["source"].endswith(f"_{length}")
                          for i in r["metadata"]["qa_pair_ids"]) for length in LENGTHS}
    assert ids[2048] == ids[4096]

    manifest = json.loads((built / recipe.MANIFEST).read_text())
    data = {"banking77": recipe.load_banking77(SHARED / "memoryagentbench_sources"),
            "clinc150": recipe.load_clinc150(SHARED / "memoryagentbench_sources")}
    for r in rows(built, "Test_Time_Learning"):
        name = r["metadata"]["source"].split("_")[2]
        labels = manifest["label_maps"][name]
        assert sorted(labels.values()) == list(range(len(labels)))
        truth = dict(data[name].test)
        assert len(r["questions"]) == QUESTIONS
        for question, (answer,) in zip(r["questions"], r["answers"]):
            assert answer == str(labels[truth[question]])
            assert f" \n Label: {answer} \n" in r["context"]  # an example of the asked label
            assert f"{question} \n Label:" not in r["context"]  # but never the test sentence itself
        lines = r["context"].split(" \n Label: ")
        assert len(lines) > 20 and r["context"].endswith(" \n")


def test_contexts_meet_their_length(built, counter):
    for split in SPLIT_FILES:
        for r in rows(built, split):
            length = int(r["metadata"]["source"].rsplit("_", 1)[1])
            n = counter.one(r["context"])
            assert length * 0.97 <= n <= length, (r["metadata"]["source"], n)
            assert len(r["context"]) > 2000  # MAB's own floor for a context
    manifest = json.loads((built / recipe.MANIFEST).read_text())
    assert manifest["sources"]["recipe_icl_banking77_4096"]["context_tokens"] == \
        counter.one(rows(built, "Test_Time_Learning")[2]["context"])


def test_files_pass_the_loader_and_score_with_the_official_rules(built):
    schema = recipe.official_schema()
    for split in SPLIT_FILES:
        assert pq.read_schema(built / "data" / f"{split}-00000-of-00001.parquet").equals(schema, check_metadata=False)
    task = make_task(built)
    assert task.name == "memoryagentbench_recipe" and task.scoring == "official"
    eps = task.episodes(seed=0)
    sources = {e.id.split("/")[1] for e in eps}
    assert sources == {f"recipe_{c}_{n}" for c in ("mhqa_hotpotqa", "icl_banking77", "icl_clinc150") for n in LENGTHS}
    assert sum(len(e.queries) for e in eps) == 3 * QUESTIONS * len(LENGTHS)
    icl = next(e for e in eps if "icl_banking77_2048" in e.id).queries[0]
    qa = next(e for e in eps if "mhqa" in e.id).queries[0]
    assert (icl.metadata["family"], qa.metadata["family"]) == ("icl", "ruler_qa")
    assert (task.generation_for(icl).max_new_tokens, task.generation_for(qa).max_new_tokens) == (20, 50)
    gold = icl.gold[0]
    assert task.score(icl, gold).values["score"] == 1.0
    assert task.score(icl, f"label: {gold}").values["score"] == 0.0  # MAB's strict ICL exact match, unchanged
    assert task.score(qa, f"It is {qa.gold[0]}.").values["score"] == 1.0  # substring exact match
    messages = task.prompt_messages(icl, "CONTEXT")
    assert "numerical label" in messages[-1]["content"]


def test_the_two_kinds_of_data_never_mix(built, tmp_path):
    with pytest.raises(DataError, match="MAB-recipe data.*not MemoryAgentBench.*task=memoryagentbench_recipe"):
        make_task(built, config="memoryagentbench").load_episodes()
    mab = write_fixture(tmp_path / "mab")
    with pytest.raises(DataError, match="no recipe.json: not MAB-recipe data"):
        make_task(mab).load_episodes()
    with pytest.raises(ValueError, match="needs a task name of its own"):
        make_task(built, name="memoryagentbench")
    with pytest.raises(DataError, match="no MAB-recipe data here; build it"):
        make_task(tmp_path / "nothing").load_episodes()
    # recipe rows copied into a MAB folder without their manifest are still refused as MAB
    stray = tmp_path / "stray"
    shutil.copytree(built / "data", stray / "data")
    with pytest.raises(DataError, match="'recipe_mhqa_hotpotqa_2048': a MAB-recipe source"):
        make_task(stray, config="memoryagentbench").load_episodes()
    # a split file replaced after the build is refused: its manifest no longer describes it
    tampered = tmp_path / "tampered"
    shutil.copytree(built, tampered)
    table = pq.read_table(tampered / "data" / "Test_Time_Learning-00000-of-00001.parquet")
    pq.write_table(table.slice(0, 1), tampered / "data" / "Test_Time_Learning-00000-of-00001.parquet")
    with pytest.raises(DataError, match="differs from the one in recipe.json"):
        make_task(tampered).load_episodes()


def test_the_fingerprint_carries_the_construction_and_its_digest_covers_it(built, counter, tmp_path):
    task = make_task(built)
    task.load_episodes()
    fp = task.data_fingerprint()
    assert fp["not_mab"] is True and "NOT MemoryAgentBench" in fp["note"]
    r = fp["recipe"]
    assert (r["seed"], r["lengths"], r["questions_per_competency"]) == (0, list(LENGTHS), QUESTIONS)
    assert len(r["label_maps"]["banking77"]) == 77 and len(r["label_maps"]["clinc150"]) == 151
    sha = hashlib.sha256((SHARED / "memoryagentbench_sources" / "banking77" / "train.csv").read_bytes()).hexdigest()
    assert r["source_files"]["memoryagentbench_sources/banking77/train.csv"]["sha256"] == sha
    assert r["tokenizer"]["spec"].startswith("tiny test BPE")
    digest = data_digest(fp)
    # a construction parameter alone changes the digest, even with the same split files
    edited = json.loads(json.dumps(fp))
    edited["recipe"]["gold_share"] = 0.25
    assert data_digest(edited) != digest
    # fingerprints without a recipe block keep the digest they always had
    plain = {"files": {"a": {"sha256": "x"}}}
    old = hashlib.sha256(json.dumps([("/files/a/sha256", "x"), ("shuffle_seed", None)]).encode()).hexdigest()
    assert data_digest(plain) == old


def test_cli_refuses_bad_input_clearly(tmp_path, counter):
    folder = tmp_path / "tok"
    counter.tokenizer.save_pretrained(folder)
    with pytest.raises(SystemExit, match="every length must be at least 1024"):
        recipe.main(["--out", str(tmp_path / "o"), "--length", "100", "--tokenizer", str(folder)])
    with pytest.raises(SystemExit, match="neither a folder nor a backbone config"):
        recipe.main(["--out", str(tmp_path / "o"), "--tokenizer", "no_such_backbone"])
    mab = write_fixture(tmp_path / "mab")
    with pytest.raises(SystemExit, match="no recipe.json; it may be real MAB data"):
        recipe.main(["--out", str(mab), "--tokenizer", str(folder)])
    broken = tmp_path / "broken"
    shutil.copytree(SHARED / "memoryagentbench_sources", broken / "memoryagentbench_sources")
    (broken / "hotpotqa").mkdir()
    (broken / "hotpotqa" / "hotpotqa_dev_distractor_subset.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(SystemExit, match=r"hotpotqa_dev_distractor_subset.jsonl.*line 1: not a HotpotQA"):
        recipe.main(["--out", str(tmp_path / "o"), "--tokenizer", str(folder), "--data", str(broken)])


def test_recipe_config_keeps_the_mab_prompts():
    mab = OmegaConf.load(ROOT / "conf" / "task" / "memoryagentbench.yaml")
    rec = OmegaConf.load(ROOT / "conf" / "task" / "memoryagentbench_recipe.yaml")
    assert OmegaConf.to_container(rec.prompts) == OmegaConf.to_container(mab.prompts)
    assert rec.name == "memoryagentbench_recipe" and rec.recipe is True


def _record(res: Path, task: str, method: str, data: dict, value: float) -> None:
    from harness.report_main import default_protocol

    rec = RunRecord(res / task / method / "tiny" / f"seed-42-{task}")
    rec.write_header({"status": "complete", "task": task, "method": method, "backbone": "tiny",
                      "protocol": default_protocol(method), "primary_metric": "score", "config": {"task": {}}, "data": data,
                      "n_samples_expected": 2,
                      "metrics": {"overall": {"score": {"mean": value, "stderr": 0.0, "n": 2}},
                                  "by_category": {"test_time_learning": {"score": {"mean": value, "stderr": 0.0,
                                                                                   "n": 2}}}}})
    rec.append([SampleRecord(f"Test_Time_Learning/recipe_icl_banking77_2048/0/q{i:03d}",
                             "Test_Time_Learning/recipe_icl_banking77_2048/0", "test_time_learning", None, "x", "7",
                             None, {"score": value}, prompt_tokens=10, new_tokens=2, context_tokens=5, latency_s=0.1)
                for i in range(2)])


def test_recipe_scores_never_reach_the_mab_column(built, tmp_path, monkeypatch):
    monkeypatch.delenv("HARNESS_MAB", raising=False)
    task = make_task(built)
    task.load_episodes()
    fp = json.loads(json.dumps(task.data_fingerprint()))
    res, out = tmp_path / "results", tmp_path / "reports"
    _record(res, "memoryagentbench_recipe", "vanilla", fp, 0.75)
    # a record that claims the benchmark's name while it read recipe data (the task refuses to make one)
    _record(res, "memoryagentbench", "bm25_rag", fp, 0.5)
    build_report(res, out)
    main = list(csv.DictReader(open(out / "main.csv")))
    mab = [r for r in main if r["column"] == "MAB"]
    assert mab and all(r["status"] != "complete" and r["value"] == "" for r in mab)
    assert {r["status"] for r in mab if r["method"] == "bm25_rag"} == {"not benchmark data"}
    assert "not MemoryAgentBench" in (out / "main.md").read_text()
    ablations = (out / "ablations.md").read_text()
    assert "`memoryagentbench_recipe`: **not MemoryAgentBench.**" in ablations and "75.00" in ablations
    assert "not MemoryAgentBench" in (out / "memoryagentbench_recipe.md").read_text()  # no length in its sources
    assert "not MemoryAgentBench" in (out / "costs.md").read_text()


def _length_record(res: Path, method: str, length: int, values: list[float]) -> None:
    """A complete recipe record of one context length whose config names its task class, as the runner writes."""
    from harness.metrics import aggregate_scores
    from harness.report_main import default_protocol

    source = f"recipe_icl_banking77_{length}"
    samples = [SampleRecord(f"Test_Time_Learning/{source}/{i // 2}/q{i:03d}", f"Test_Time_Learning/{source}/{i // 2}",
                            "test_time_learning", None, "x", "7", None, {"score": v}, prompt_tokens=10, new_tokens=2,
                            context_tokens=5, latency_s=0.1) for i, v in enumerate(values)]
    rec = RunRecord(res / "memoryagentbench_recipe" / method / "tiny" / f"seed-42-{length}")
    rec.write_header({"status": "complete", "task": "memoryagentbench_recipe", "method": method, "backbone": "tiny",
                      "protocol": default_protocol(method), "primary_metric": "score", "n_samples_expected": len(values),
                      "config": {"task": {"_target_": "tasks.memoryagentbench.task.MemoryAgentBenchTask",
                                          "recipe": True, "sources": [source]}},
                      "data": {"recipe": {"seed": 0}, "note": "recipe data"},
                      "metrics": aggregate_scores(samples)})
    rec.append(samples)


def test_each_recipe_length_is_its_own_column_paired_with_the_question_only_floor(tmp_path):
    res, out = tmp_path / "results", tmp_path / "reports"
    _length_record(res, "vanilla_nocontext", 2048, [0.0, 0.0, 1.0, 0.0])
    _length_record(res, "vanilla", 2048, [1.0, 1.0, 1.0, 0.0])
    _length_record(res, "vanilla_nocontext", 4096, [0.0, 0.0, 0.0, 0.0])
    _length_record(res, "vanilla", 4096, [0.0, 1.0, 0.0, 0.0])
    summary = build_report(res, out)
    assert {"memoryagentbench_recipe_2k", "memoryagentbench_recipe_4k"} <= set(summary["tasks"])
    assert "memoryagentbench_recipe" not in summary["tasks"]  # no third, empty column for the split-up config
    assert not (out / "memoryagentbench_recipe.md").exists()
    rows = {(r["method"], r["task"]): r for r in csv.DictReader(open(out / "ablations.csv"))}
    assert float(rows[("vanilla", "memoryagentbench_recipe_2k")]["value"]) == pytest.approx(0.75)
    assert float(rows[("vanilla", "memoryagentbench_recipe_4k")]["value"]) == pytest.approx(0.25)
    short = (out / "memoryagentbench_recipe_2k.md").read_text()
    assert "not MemoryAgentBench" in short and "paired against vanilla_nocontext" in short
    # vanilla − floor at 2K: +1, +1, 0, 0 over two episodes (e0: +1 mean, e1: 0), so the interval is [0, +1]
    assert "| vanilla | +50.00 [+0.00, +100.00] (4) | +50.00 [+0.00, +100.00] (4) |" in short
    assert "+25.00 [+0.00, +50.00] (4)" in (out / "memoryagentbench_recipe_4k.md").read_text()


def test_report_name_reads_the_length_from_the_sources():
    def header(sources, recipe=True):
        return {"task": "memoryagentbench_recipe", "config": {"task": {"recipe": recipe, "sources": sources}}}

    name = MemoryAgentBenchTask.report_name
    assert name(header(["recipe_icl_banking77_8192", "recipe_mhqa_hotpotqa_8192"])) == "memoryagentbench_recipe_8k"
    assert name(header(["recipe_icl_clinc150_32768"])) == "memoryagentbench_recipe_32k"
    assert name(header(["recipe_icl_clinc150_5000"])) == "memoryagentbench_recipe_5000"
    # several lengths, all lengths (sources unset) or not recipe data: the task's own name
    assert name(header(["recipe_icl_banking77_8192", "recipe_icl_banking77_32768"])) == "memoryagentbench_recipe"
    assert name(header(None)) == "memoryagentbench_recipe"
    assert name(header(["recipe_icl_banking77_8192"], recipe=False)) == "memoryagentbench_recipe"
