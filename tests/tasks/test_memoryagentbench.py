"""MemoryAgentBench on a fixture in the exact official parquet schema: loader, errors, prompts, scorers."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from harness.errors import DataError
from harness.types import SampleRecord
from tasks.memoryagentbench.scoring import (MovieCatalog, lenient_correct, lenient_f1, movie_name, official_scores,
                                            parse_output, recommendation_items)
from tasks.memoryagentbench.sources import settings_for
from tasks.memoryagentbench.task import CLIP_MARKER, MemoryAgentBenchTask, clip_head_tail, split_lossless
from tests.tasks.mab_fixture import ENTITY2ID, SCHEMA, SPLITS, rows_by_split, write_fixture

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mab_dir(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp("mab"))


@pytest.fixture(scope="module")
def entity2id(tmp_path_factory):
    path = tmp_path_factory.mktemp("redial") / "entity2id.json"
    path.write_text(json.dumps(ENTITY2ID))
    return path


def make_task(data_dir, **over):
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/task/memoryagentbench.yaml"))
    cfg.pop("_target_")
    cfg.update(over, data_dir=str(data_dir))
    return MemoryAgentBenchTask(**cfg)


def test_fixture_has_the_official_schema(mab_dir):
    for split in SPLITS:
        schema = pq.read_schema(mab_dir / "data" / f"{split}-00000-of-00001.parquet")
        assert schema.equals(SCHEMA, check_metadata=False)
        meta = schema.field("metadata").type
        names = [meta.field(i).name for i in range(meta.num_fields)]
        assert names == sorted(names) and all(meta.field(i).nullable for i in range(meta.num_fields))
        rows = pq.read_table(mab_dir / "data" / f"{split}-00000-of-00001.parquet").to_pylist()
        assert all(len(r["context"]) > 2000 for r in rows)


def test_one_row_is_one_episode_with_per_source_settings(mab_dir):
    task = make_task(mab_dir, chunk_chars=1000)
    eps = task.episodes(seed=42)
    assert [e.id for e in eps] == [
        "Accurate_Retrieval/longmemeval_s*/0", "Accurate_Retrieval/eventqa_65536/0",
        "Test_Time_Learning/icl_banking77_5900shot_balance/0", "Test_Time_Learning/recsys_redial_full/0",
        "Long_Range_Understanding/infbench_sum_eng_shots2/0", "Long_Range_Understanding/detective_qa/0",
        "Conflict_Resolution/factconsolidation_sh_6k/0", "Conflict_Resolution/factconsolidation_mh_6k/0"]
    assert sum(len(e.queries) for e in eps) == 15
    lme = eps[0]
    assert "".join(u.text for u in lme.units) == rows_by_split()["Accurate_Retrieval"][0]["context"]
    assert len(lme.units) >= 3 and all(len(u.text) <= 1000 for u in lme.units)
    q = lme.queries[1]
    assert q.gold == ["The information provided is not enough to answer this question."]
    assert (q.category, q.metadata["question_id"], q.metadata["question_type"]) == \
        ("accurate_retrieval", "q_0002_abs", "knowledge-update")
    lengths = {e.id.split("/")[1]: task.generation_for(e.queries[0]).max_new_tokens for e in eps}
    assert lengths == {"longmemeval_s*": 50, "eventqa_65536": 40, "icl_banking77_5900shot_balance": 20,
                       "recsys_redial_full": 300, "infbench_sum_eng_shots2": 1200, "detective_qa": 2000,
                       "factconsolidation_sh_6k": 10, "factconsolidation_mh_6k": 10}
    assert make_task(mab_dir, per_source_lengths=False).generation_for(q).max_new_tokens == 4096
    assert eps[4].metadata["keypoints"][0] == "Marguerite waits at the inn"


def test_source_filter_is_exact_and_rows_official(mab_dir):
    eps = make_task(mab_dir, sources=["longmemeval_s*", "factconsolidation_mh_6k"]).episodes(seed=0)
    assert [e.id.split("/")[1] for e in eps] == ["longmemeval_s*", "factconsolidation_mh_6k"]
    with pytest.raises(DataError, match=r"task.sources \['FactConsolidation_mh_6k'\] not in the data"):
        make_task(mab_dir, sources=["FactConsolidation_mh_6k"]).episodes(seed=0)
    rows = rows_by_split()
    rows["Conflict_Resolution"].append(dict(rows["Conflict_Resolution"][0]))  # a 2nd row of a 1-row source
    d = write_fixture(mab_dir.parent / "two_fc", rows)
    assert len(make_task(d, splits=["Conflict_Resolution"]).episodes(seed=0)) == 3
    official = make_task(d, splits=["Conflict_Resolution"], rows="official").episodes(seed=0)
    assert [e.id for e in official] == ["Conflict_Resolution/factconsolidation_sh_6k/0",
                                        "Conflict_Resolution/factconsolidation_mh_6k/0"]


def test_one_question_row_gets_the_flattened_answer_list(tmp_path):
    rows = {"Long_Range_Understanding": [{**rows_by_split()["Long_Range_Understanding"][0],
                                          "answers": [["summary one"], ["summary two"]]}]}
    d = write_fixture(tmp_path, rows)
    ep = make_task(d, splits=["Long_Range_Understanding"]).episodes(seed=0)[0]
    assert len(ep.queries) == 1 and ep.queries[0].gold == ["summary one", "summary two"]


def test_limit_is_stratified_by_category_and_deterministic(mab_dir):
    a = make_task(mab_dir, limit=8).episodes(seed=42)
    b = make_task(mab_dir, limit=8).episodes(seed=42)
    ids = [q.id for e in a for q in e.queries]
    assert ids == [q.id for e in b for q in e.queries] and len(ids) == 8
    cats = [q.category for e in a for q in e.queries]
    assert {c: cats.count(c) for c in set(cats)} == {"accurate_retrieval": 2, "test_time_learning": 2,
                                                     "long_range_understanding": 2, "conflict_resolution": 2}


def test_clip_is_head_third_tail_two_thirds():
    text = "".join(chr(65 + i % 26) for i in range(200000))
    out = clip_head_tail(text, 120000)
    assert len(out) == 120000 and len(CLIP_MARKER) == 31
    head, tail = out.split(CLIP_MARKER)
    assert (len(head), len(tail)) == (39989, 79980)
    assert head == text[:39989] and tail == text[-79980:]
    assert clip_head_tail("short", 120000) == "short"
    parts = split_lossless("One. Two three.\n\nFour five six seven. Eight nine ten.", 20)
    assert "".join(parts) == "One. Two three.\n\nFour five six seven. Eight nine ten." and max(map(len, parts)) <= 20


def test_unified_prompt_and_token_budget(mab_dir):
    task = make_task(mab_dir, max_context_chars=1000)
    ep = task.episodes(seed=0)[6]
    rc = task.render_context(ep)
    assert rc.truncated and len(rc.text) == 1000 and CLIP_MARKER in rc.text
    q = ep.queries[0]
    assert task.prompt_messages(q, rc.text) == [{"role": "user", "content":
        "Use only the memory context below to answer the question.\nReply with a short entity, phrase, number, or "
        "sentence only.\nIf the answer is not supported by the context, reply exactly: I don't know.\n\n"
        + rc.text + "\n\nQuestion: What is the capital of Vestria?\nAnswer:"}]
    tight = task.render_context(ep, count_tokens=lambda s: len(s) // 4, max_tokens=100)
    assert len(tight.text) // 4 <= 100 and CLIP_MARKER in tight.text
    assert tight.text.startswith(rc.text[:50]) and tight.text.endswith(rc.text[-50:])


def test_official_prompt_style(mab_dir):
    task = make_task(mab_dir, prompt_style="official", memorize_timestamp="2025-01-01 00:00:00", chunk_chars=1500)
    ep = task.episodes(seed=0)[6]
    msgs = task.prompt_messages(ep.queries[0], task.render_context(ep).text)
    assert msgs[0] == {"role": "system", "content": "You are a helpful assistant that can read the context and memorize it for future retrieval."}
    user = msgs[1]["content"]
    assert user.startswith("Dialogue between User and Assistant 2025-01-01 00:00:00 \\n<User> The following context is the facts I have learned: \n0. ")
    assert user.count("<Assistant> I have learned the facts") == len(ep.units) >= 2
    assert user.endswith("Now Answer the Question: Based on the provided Knowledge Pool, What is the capital of Vestria? \nAnswer:")
    icl = task.episodes(seed=0)[2]
    assert 'Only output "label: {label}" and nothing else.' in task.prompt_messages(icl.queries[0], None)[1]["content"]
    # MAB keeps the latest tokens when the memorised context is too long.
    rc = task.render_context(ep, count_tokens=lambda s: len(s), max_tokens=500)
    full = task.render_context(ep).text
    assert rc.truncated and rc.text == full[-500:]
    assert len(task.history_messages(ep)) == len(ep.units)


def test_lenient_scorer_hand_computed():
    assert lenient_correct("I don't know", ["no"]) == 1.0          # substring quirk of the reference
    assert lenient_correct("The answer is Oderzo.\nmore", ["Oderzo"]) == 1.0
    assert lenient_correct("Paris", ["London", "the london"]) == 0.0
    assert lenient_correct("anything", ["?"]) == 0.0                # empty alias ignored
    assert lenient_correct("label: 143", ["43"]) == 1.0             # "43" is a substring of "label 143"
    # f1: max over {full, first line} x aliases; first line "teodor brask" == gold -> 1.0
    assert lenient_f1("Teodor Brask\nHe leads Vestria.", ["Teodor Brask"]) == 1.0
    # full [the, capital, is, oderzo] -> [capital, is, oderzo] vs [oderzo]: P=1/3 R=1 -> 0.5
    assert lenient_f1("The capital is Oderzo", ["Oderzo"]) == pytest.approx(0.5)


def test_official_scorer_hand_computed():
    assert parse_output("blah\nAnswer: Oderzo.\nmore") == "Oderzo."
    assert parse_output("answer: answer: x") == "x"            # a repeated prefix is removed once more
    assert parse_output("\nsecond line") == ""
    assert parse_output("label: 12") == "label: 12"
    # ICL: parsed output only -> "label: 12" is not exactly "12" (MAB README's strictness)
    assert official_scores("label: 12", ["12"], "icl")["exact_match"] == 0.0
    assert official_scores("12", ["12"], "icl")["exact_match"] == 1.0
    # default family: max over raw and parsed
    s = official_scores("I think so.\nAnswer: Cricket", ["cricket", "Cricket (sport)"], "factconsolidation")
    assert s["exact_match"] == 1.0 and s["substring_exact_match"] == 1.0
    # eventqa: parsed (first line) only, plus eventqa_recall on the raw output
    s = official_scores("Something else.\nMarguerite counted the lamps.", ["Marguerite counted the lamps."], "eventqa")
    assert s["substring_exact_match"] == 0.0 and s["eventqa_recall"] == 1.0
    assert official_scores("yes indeed", ["yes"], "detective_qa")["f1_official"] == 0.0


def test_recsys_recall_hand_computed(entity2id):
    assert movie_name("<http://dbpedia.org/resource/Titanic_(1997_film)>") == "Titanic"
    cat = MovieCatalog(entity2id)
    assert recommendation_items("Here:\n1. Jaws (1975)\n2. Alien\n\n3. Up") == ["Jaws", "Alien", "", "Up"]
    assert recommendation_items("Jaws, Alien") == ["Jaws", "Alien"]
    assert cat.nearest("Jawz") == "Jaws" and cat.nearest("the matrx") == "The Matrix"
    # gold Jaws and Alien; list: Titanic, Jaws, (empty -> "Up", the nearest to ""), Up, Alien, Matrix
    pred = "1. Titanic\n2. Jaws\n\n3. Up\n4. Alien\n5. The Matrix"
    r = cat.recall(pred, ["906", "13950"])
    assert r == {"recall@1": 0.0, "recall@5": 1.0, "recall@10": 1.0}
    assert cat.recall("1. Jaws\n2. Titanic", [" 906 "]) == {"recall@1": 1.0, "recall@5": 1.0, "recall@10": 1.0}
    with pytest.raises(ValueError, match="not in"):
        cat.recall("1. Jaws", ["1"])


def test_task_scores_and_sample_weighted_aggregate(mab_dir, entity2id):
    task = make_task(mab_dir, entity2id_path=str(entity2id))
    eps = task.episodes(seed=0)
    preds = {"longmemeval_s*": ["Target", "I don't know"], "eventqa_65536": ["Marguerite counted the lamps.", "x"],
             "icl_banking77_5900shot_balance": ["label: 0", "label: 0"],
             "recsys_redial_full": ["1. Jaws\n2. Alien", "1. Titanic"],
             "infbench_sum_eng_shots2": ["Marguerite waits at the inn."], "detective_qa": ["B", "A"],
             "factconsolidation_sh_6k": ["Oderzo", "tennis"], "factconsolidation_mh_6k": ["Teodor Brask", "Gallin"]}
    recs = []
    for e in eps:
        for q, p in zip(e.queries, preds[e.id.split("/")[1]]):
            s = task.score(q, p)
            recs.append(SampleRecord(q.id, e.id, q.category, q.question, q.gold, p, s.extracted, s.values, 0, 0, 0, 0.0))
    by_id = {r.sample_id.split("/")[1] + "/" + r.sample_id[-1]: r.scores for r in recs}
    assert by_id["longmemeval_s*/0"]["score"] == 1.0
    assert by_id["longmemeval_s*/1"]["score"] == 0.0          # gold "…not enough…" vs "I don't know"
    assert by_id["recsys_redial_full/0"] == {"recall@1": 0.5, "recall@5": 1.0, "recall@10": 1.0, "score": 1.0}
    assert by_id["recsys_redial_full/1"]["score"] == 1.0
    assert by_id["detective_qa/0"]["score"] == 1.0 and by_id["detective_qa/1"]["score"] == 0.0
    # infbench: lenient F1 of [marguerite, waits, at, inn] vs 24-token reference summary
    assert 0 < by_id["infbench_sum_eng_shots2/0"]["score"] < 1
    agg = task.aggregate(recs)
    ar = [1, 0, 1, 0]                     # LME 1,0; EventQA 1,0
    ttl = [by_id["icl_banking77_5900shot_balance/0"]["score"], by_id["icl_banking77_5900shot_balance/1"]["score"], 1, 1]
    lru = [by_id["infbench_sum_eng_shots2/0"]["score"], 1, 0]
    cr = [1, 0, 1, 0]
    assert agg["by_category"]["accurate_retrieval"]["score"]["mean"] == pytest.approx(sum(ar) / 4)
    assert agg["by_category"]["test_time_learning"]["score"]["mean"] == pytest.approx(sum(ttl) / 4)
    assert agg["by_category"]["long_range_understanding"]["score"]["mean"] == pytest.approx(sum(lru) / 3)
    assert agg["by_category"]["conflict_resolution"]["score"]["mean"] == pytest.approx(0.5)
    # overall is sample-weighted (15 questions), not the mean of the four category means
    assert agg["overall"]["score"]["mean"] == pytest.approx((sum(ar) + sum(ttl) + sum(lru) + sum(cr)) / 15)
    assert agg["category_sample_weights"] == {"accurate_retrieval": 4, "conflict_resolution": 4,
                                              "long_range_understanding": 3, "test_time_learning": 4}
    assert agg["by_dataset"]["FactConsolidation-SH"] == {"metric": "correct", "score": pytest.approx(
        {"mean": 0.5, "stderr": 0.5, "n": 2})}
    assert agg["by_dataset"]["Movie Recommendation"]["metric"] == "recall@5"
    official = make_task(mab_dir, entity2id_path=str(entity2id), scoring="official")
    icl_q = eps[2].queries[0]
    assert official.score(icl_q, f"label: {icl_q.gold[0]}").values["score"] == 0.0
    assert official.score(icl_q, f"{icl_q.gold[0]}").values["score"] == 1.0
    assert official.describe()["official_metric_stand_ins"]["longmemeval"].startswith("official metric is a GPT-4o")


def test_unknown_source_gets_reference_defaults():
    st = settings_for("ruler_qa3_999K")
    assert (st.family, st.generation_max_length, st.dataset) == ("ruler_qa", 4096, "ruler_qa3_999K")


def _write_table(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_loader_errors_name_file_row_and_field(tmp_path):
    with pytest.raises(DataError, match="no parquet file for split Accurate_Retrieval"):
        make_task(tmp_path / "empty").episodes(seed=0)
    base = rows_by_split()["Conflict_Resolution"]
    bad_type = pa.table({"context": ["x" * 3000], "questions": [["q"]], "answers": [["a"]],
                         "metadata": [{"source": "factconsolidation_sh_6k"}]})
    _write_table(tmp_path / "t1" / "data" / "Conflict_Resolution-00000-of-00001.parquet", bad_type)
    with pytest.raises(DataError, match=r"column 'answers' has type list<\w+: string>, expected list<list<string>>"):
        make_task(tmp_path / "t1", splits=["Conflict_Resolution"]).episodes(seed=0)
    no_meta = pa.table({"context": ["x"], "questions": [["q"]], "answers": [[["a"]]]})
    _write_table(tmp_path / "t2" / "data" / "Conflict_Resolution-00000-of-00001.parquet", no_meta)
    with pytest.raises(DataError, match="missing column 'metadata'"):
        make_task(tmp_path / "t2", splits=["Conflict_Resolution"]).episodes(seed=0)
    rows = [base[0], {**base[1], "answers": [["only one"]]}]
    write_fixture(tmp_path / "t3", {"Conflict_Resolution": rows})
    with pytest.raises(DataError, match=r"Conflict_Resolution-00000-of-00001.parquet: row 1 \(source 'factconsolidation_mh_6k'\): 2 questions but 1 answer lists"):
        make_task(tmp_path / "t3", splits=["Conflict_Resolution"]).episodes(seed=0)
    rows = [{**base[0], "metadata": {**base[0]["metadata"], "qa_pair_ids": ["only_one"]}}]
    write_fixture(tmp_path / "t4", {"Conflict_Resolution": rows})
    with pytest.raises(DataError, match=r"row 0 .*metadata.qa_pair_ids has 1 entries for 2 questions"):
        make_task(tmp_path / "t4", splits=["Conflict_Resolution"]).episodes(seed=0)
    (tmp_path / "t5" / "data").mkdir(parents=True)
    (tmp_path / "t5" / "data" / "Conflict_Resolution-00000-of-00001.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        make_task(tmp_path / "t5", splits=["Conflict_Resolution"]).episodes(seed=0)
    with pytest.raises(ValueError, match="task.splits must be a non-empty subset"):
        make_task(tmp_path, splits=["Accurate_retrieval"])


def test_hf_cache_layout_and_env_var(tmp_path, monkeypatch):
    snap = tmp_path / "datasets--ai-hyz--MemoryAgentBench" / "snapshots" / "7ea0669"
    write_fixture(snap, {"Conflict_Resolution": rows_by_split()["Conflict_Resolution"]})
    monkeypatch.setenv("HARNESS_MAB", str(tmp_path))
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/task/memoryagentbench.yaml"))
    cfg.pop("_target_")
    task = MemoryAgentBenchTask(**{**cfg, "splits": ["Conflict_Resolution"]})
    assert len(task.episodes(seed=0)) == 2
    assert task.data_fingerprint()["files"]["Conflict_Resolution"]["path"].startswith(str(snap))


def test_end_to_end_with_a_tiny_model(tmp_path, mab_dir, entity2id, tiny_backbone):
    from hydra import compose, initialize_config_dir

    from harness.runner import run_experiment

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "task=memoryagentbench", f"task.data_dir={mab_dir}", f"task.entity2id_path={entity2id}",
            "task.per_source_lengths=false", "task.generation.max_new_tokens=3", "task.limit=6",
            f"run.results_dir={tmp_path}", "run.progress=false"])
    out = run_experiment(cfg, load=lambda _: tiny_backbone)
    assert out.status == "complete" and out.metrics["n_samples"] == 6
    assert set(out.metrics["by_category"]) == {"accurate_retrieval", "test_time_learning",
                                               "long_range_understanding", "conflict_resolution"}
    header = json.loads(next(tmp_path.glob("**/header.json")).read_text())
    assert header["task_info"]["prompt_style"] == "unified" and "files" in header["data"]


def test_context_budget_reserves_the_source_answer_length(mab_dir, tiny_backbone):
    from methods.prompting import context_budget

    task = make_task(mab_dir)
    ep = task.episodes(seed=0)[5]  # detective_qa: 2000 answer tokens
    overhead = max(len(tiny_backbone.chat_ids(task.prompt_messages(q, ""))) for q in ep.queries)
    assert context_budget(tiny_backbone, task, ep.queries) == tiny_backbone.window - 2000 - overhead - 8
