"""hf:// data settings: every task reads the official Hub dataset at a revision and validates it like its files.

``datasets.load_dataset`` is replaced by a fake that records what it was asked and serves rows in the
Hub's schema (written here, not downloaded), so these tests run offline.
"""
from __future__ import annotations

import json

import pytest

from harness.errors import DataError
from tasks.hub import HubSource, hub_fingerprint, parse_hub_uri, rows_sha256
from tests.tasks.test_gpqa_diamond import make_task as make_gpqa
from tests.tasks.test_gpqa_diamond import plain_zip
from tests.tasks.test_gpqa_diamond import row as gpqa_row
from tests.tasks.test_hotpotqa import make_task as make_hotpotqa
from tests.tasks.test_hotpotqa import record as hotpot_record
from tests.tasks.test_hotpotqa import write as write_jsonl


class FakeHub:
    """Stands in for ``datasets.load_dataset``: a dict split -> rows (or a callable that raises)."""

    def __init__(self, splits):
        self.splits, self.calls = splits, []

    def __call__(self, repo_id, name=None, *, split=None, revision=None):
        from datasets import Dataset

        self.calls.append((repo_id, name, split, revision))
        rows = self.splits[split]
        if isinstance(rows, Exception):
            raise rows
        return rows if isinstance(rows, Dataset) else Dataset.from_list(rows)


@pytest.fixture
def hub(monkeypatch):
    def install(splits):
        fake = FakeHub(splits)
        monkeypatch.setattr("datasets.load_dataset", fake)
        return fake
    return install


def test_parse_hub_uri():
    assert parse_hub_uri("hf://hotpotqa/hotpot_qa", name="distractor", split="validation") == \
        HubSource("hotpotqa/hotpot_qa", None, "distractor", "validation")
    src = parse_hub_uri("hf://Idavidrein/gpqa@0123abc?name=gpqa_main&split=train", name="gpqa_diamond")
    assert src == HubSource("Idavidrein/gpqa", "0123abc", "gpqa_main", "train")
    assert src.uri == "hf://Idavidrein/gpqa@0123abc?name=gpqa_main&split=train"
    assert parse_hub_uri(src.uri) == src  # the recorded URI reads back as the same source
    for bad, message in [("hf://justaname", "owner/dataset"), ("hf://a/b/c", "owner/dataset"),
                         ("hf://a/b?revision=x", "unknown query keys"), ("s3://a/b", "not an hf://")]:
        with pytest.raises(ValueError, match=message):
            parse_hub_uri(bad)


def test_rows_checksum_ignores_key_order_but_not_content():
    a = [{"x": 1, "y": [1, 2]}]
    assert rows_sha256(a) == rows_sha256([{"y": [1, 2], "x": 1}]) != rows_sha256([{"x": 1, "y": [2, 1]}])
    fp = hub_fingerprint(HubSource("o/d"), a)
    assert fp["revision"].startswith("unpinned") and fp["n_rows"] == 1


def test_hotpotqa_from_the_hub_equals_the_same_rows_from_a_file(tmp_path, hub):
    rows = [hotpot_record("q1", "bridge"), hotpot_record("q2", "comparison", answer="no")]
    fake = hub({"validation": rows})
    from_hub = make_hotpotqa(data_path="hf://hotpotqa/hotpot_qa@deadbeef")
    from_file = make_hotpotqa(write_jsonl(tmp_path / "h.jsonl", rows))
    assert from_hub.episodes(seed=0) == from_file.episodes(seed=0)
    assert fake.calls == [("hotpotqa/hotpot_qa", "distractor", "validation", "deadbeef")]
    fp = from_hub.data_fingerprint()
    assert fp["source"] == "hf://hotpotqa/hotpot_qa@deadbeef?name=distractor&split=validation"
    assert fp["revision"] == "deadbeef" and fp["n_questions"] == 2 and fp["subset"] is True
    assert len(fake.calls) == 1  # the rows are read once per task object


def test_hotpotqa_hub_rows_are_validated_by_row_and_field(hub, monkeypatch):
    bad = hotpot_record("q2", "bridge")
    bad["context"] = {"title": ["T0", "T1"], "sentences": [["a"]]}
    hub({"validation": [hotpot_record("q1", "bridge"), bad]})
    monkeypatch.setenv("HARNESS_HOTPOTQA", "hf://hotpotqa/hotpot_qa")  # the environment variable takes URIs too
    task = make_hotpotqa()
    with pytest.raises(DataError, match=r"hf://hotpotqa/hotpot_qa\?name=distractor&split=validation: row 1: "
                                        r"context.title and context.sentences must be lists of equal length"):
        task.episodes(seed=0)


def test_offline_hub_is_a_clear_data_error(hub):
    hub({"validation": ConnectionError("Couldn't reach 'hotpotqa/hotpot_qa' on the Hub (LocalEntryNotFoundError)")})
    with pytest.raises(DataError, match=r"cannot load split 'validation' from the Hugging Face Hub "
                                        r"\(ConnectionError: Couldn't reach.*Without network access"):
        make_hotpotqa(data_path="hf://hotpotqa/hotpot_qa").episodes(seed=0)


def test_ifeval_hub_rows_with_the_hubs_null_filled_kwargs(hub):
    from tasks.ifeval.task import IFEvalTask

    # the Hub's google/IFEval lists every kwarg name in every kwargs struct, null where unused
    null_kw = {"num_words": None, "relation": None, "capital_frequency": None}
    rows = [{"key": 1000, "prompt": "Write about cats without commas.",
             "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
             "kwargs": [dict(null_kw), {**null_kw, "num_words": 5, "relation": "at least"}]},
            {"key": 1001, "prompt": "Answer in lowercase.", "instruction_id_list": ["change_case:english_lowercase"],
             "kwargs": [dict(null_kw)]}]
    fake = hub({"train": rows})
    task = IFEvalTask(data_path="hf://google/IFEval")
    qs = task.episodes(seed=0)[0].queries
    assert fake.calls == [("google/IFEval", None, "train", None)]
    # hand-checked: 6 words, no comma -> both kept; 3 words -> the word count fails; upper case -> lowercase fails
    assert task.score(qs[0], "cats purr and sleep all day").values["prompt_level_strict_acc"] == 1.0
    assert task.score(qs[0], "cats purr loudly").values["inst_level_strict_acc"] == 0.5
    assert task.score(qs[1], "Hello there").values["prompt_level_strict_acc"] == 0.0
    assert task.data_fingerprint()["source"] == "hf://google/IFEval?split=train"


def test_gpqa_hub_rows_equal_the_zip_and_nothing_is_written(tmp_path, hub):
    rows = [gpqa_row("rec1"), gpqa_row("rec2", domain="Chemistry", q="Which gas?")]
    fake = hub({"train": [{**r, "Explanation": None} for r in rows]})
    from_hub = make_gpqa(data_path="hf://Idavidrein/gpqa@v1")
    from_zip = make_gpqa(data_path=str(plain_zip(tmp_path / "dataset.zip", rows)))
    assert from_hub.episodes(seed=42) == from_zip.episodes(seed=42)
    assert fake.calls == [("Idavidrein/gpqa", "gpqa_diamond", "train", "v1")]
    fp = from_hub.data_fingerprint()
    assert "Which gas" not in json.dumps(fp) and fp["shuffle_seed"] == 42
    hub({"train": [{k: v for k, v in rows[0].items() if k != "Subdomain"}]})
    with pytest.raises(DataError, match=r"missing columns \['Subdomain'\]"):
        make_gpqa(data_path="hf://Idavidrein/gpqa").episodes(seed=42)


def test_memoryagentbench_splits_from_the_hub_equal_the_parquet_files(tmp_path, hub):
    from datasets import Dataset

    from tests.tasks.mab_fixture import SPLITS, write_fixture
    from tests.tasks.test_memoryagentbench import make_task as make_mab

    local = write_fixture(tmp_path / "mab")
    fake = hub({s: Dataset.from_parquet(str(local / "data" / f"{s}-00000-of-00001.parquet")) for s in SPLITS})
    from_hub = make_mab("hf://ai-hyz/MemoryAgentBench@main")
    assert from_hub.episodes(seed=0) == make_mab(local).episodes(seed=0)
    assert sorted(c[2] for c in fake.calls) == sorted(SPLITS) and {c[3] for c in fake.calls} == {"main"}
    fp = from_hub.data_fingerprint()
    assert fp["source"] == "hf://ai-hyz/MemoryAgentBench@main" and set(fp["splits"]) == set(SPLITS)
    # a Hub split without the official columns is refused like a parquet file would be
    hub({s: [{"context": "x", "questions": ["q"]}] for s in SPLITS})
    with pytest.raises(DataError, match=r"split Accurate_Retrieval: missing column 'answers'"):
        make_mab("hf://ai-hyz/MemoryAgentBench").episodes(seed=0)
