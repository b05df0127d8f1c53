"""Training data: §7.2 episodes, template-exact tokenisation, converters and their errors, held-out split."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from harness.errors import ConfigError, DataError
from harness.training.data import EpisodeOrder, build_training_data, heldout_groups, split_episodes
from harness.training.episodes import (IGNORE, ChatRenderer, Conversation, make_episode, make_episodes,
                                       tokenize_episode)
from harness.training.sources import (ChatJsonl, LevalQasper, QasperHF, Squality, chunk_paragraphs, paragraphs,
                                      qasper_answer_text, refuse_benchmark_data)
from harness.training.synthetic import SyntheticMemory, generate_conversation

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SMOL_TEMPLATE = (  # SmolLM2-Instruct's template: injects a default system prompt when there is none
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def msg(role, content):
    return {"role": role, "content": content}


def conv(*messages, cid="c", group="g"):
    return Conversation(id=cid, source="s", group=group, messages=tuple(messages))


DIALOGUE = conv(msg("system", "Be brief."), msg("user", "My dog is Rex."), msg("assistant", "Noted."),
                msg("user", "I live in Oslo."), msg("assistant", "Okay."), msg("user", "Where do I live?"),
                msg("assistant", "In Oslo."))


# ------------------------------------------------------------------------------------------ §7.2
def test_episode_split_follows_the_reference():
    ep, reason = make_episode(DIALOGUE)
    assert reason is None
    assert [m["content"] for m in ep.write] == ["Be brief.", "My dog is Rex.", "Noted.", "I live in Oslo.", "Okay."]
    assert [m["content"] for m in ep.read] == ["Be brief.", "Where do I live?", "In Oslo."]
    assert (ep.target, ep.question, len(ep.system)) == ("In Oslo.", "Where do I live?", 1)


def test_target_is_the_last_assistant_and_later_or_middle_system_messages_are_dropped():
    c = conv(msg("user", "a"), msg("system", "mid"), msg("assistant", "b"), msg("user", "c"), msg("assistant", "d"),
             msg("user", "trailing question with no answer"))
    ep, _ = make_episode(c)
    assert [m["content"] for m in ep.write] == ["a", "b"]
    assert [m["content"] for m in ep.read] == ["c", "d"]


def test_episodes_without_history_or_target_are_counted_and_warned():
    convs = [DIALOGUE, conv(msg("user", "q"), msg("assistant", "a")), conv(msg("user", "only a user turn")),
             conv(msg("system", "s"), msg("user", "q"), msg("assistant", "a"))]
    with pytest.warns(UserWarning, match=r"skipped 3 of 4 conversations \(2 with no history, 1 with no target\)"):
        episodes, stats = make_episodes(convs, source="demo")
    assert len(episodes) == 1 and stats.skipped == {"no_history": 2, "no_target": 1}


# ------------------------------------------------------------------------------------------ tokenisation
def test_tokens_equal_the_backbone_chat_rendering(tiny_backbone):
    ep, _ = make_episode(DIALOGUE)
    t = tokenize_episode(ep, ChatRenderer.for_backbone(tiny_backbone), write_length=10_000, read_length=10_000)
    assert list(t.write_ids) == tiny_backbone.chat_ids(ep.write, add_generation_prompt=False)
    assert list(t.read_ids) == tiny_backbone.chat_ids(ep.read, add_generation_prompt=False)
    assert (t.write_dropped, t.read_dropped) == (0, 0)


def test_labels_cover_exactly_the_target_template_span(tiny_backbone):
    ep, _ = make_episode(DIALOGUE)
    t = tokenize_episode(ep, ChatRenderer.for_backbone(tiny_backbone), write_length=10_000, read_length=10_000)
    first = next(i for i, x in enumerate(t.labels) if x != IGNORE)
    assert all(x != IGNORE for x in t.labels[first:])
    assert list(t.labels[first:]) == list(t.read_ids[first:])
    tok = tiny_backbone.tokenizer
    assert tok.decode(list(t.read_ids[first:])) == "<|im_start|>assistant\nIn Oslo.<|im_end|>\n"
    assert t.num_target_tokens == len(t.read_ids) - first


def test_message_ids_mark_each_written_message_and_system_as_minus_one(tiny_backbone):
    ep, _ = make_episode(DIALOGUE)
    t = tokenize_episode(ep, ChatRenderer.for_backbone(tiny_backbone), write_length=10_000, read_length=10_000)
    tok = tiny_backbone.tokenizer
    spans: dict[int, list[int]] = {}
    for token, mid in zip(t.write_ids, t.write_message_ids):
        spans.setdefault(mid, []).append(token)
    assert sorted(spans) == [-1, 1, 2, 3, 4]  # write index 0 is the system message
    assert tok.decode(spans[-1]) == "<|im_start|>system\nBe brief.<|im_end|>\n"
    assert tok.decode(spans[3]) == "<|im_start|>user\nI live in Oslo.<|im_end|>\n"


def test_template_injected_system_prompt_is_never_written():
    from tests.conftest import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = SMOL_TEMPLATE
    c = conv(msg("user", "My dog is Rex."), msg("assistant", "Noted."), msg("user", "Dog?"), msg("assistant", "Rex."))
    ep, _ = make_episode(c)
    renderer = ChatRenderer(tok)
    t = tokenize_episode(ep, renderer, write_length=10_000, read_length=10_000)
    injected = [tok_id for tok_id, mid in zip(t.write_ids, t.write_message_ids) if mid == -1]
    assert tok.decode(injected) == "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
    assert tok.decode([x for x, m in zip(t.write_ids, t.write_message_ids) if m == 0]) == \
        "<|im_start|>user\nMy dog is Rex.<|im_end|>\n"
    assert list(t.read_ids) == list(tok.apply_chat_template([dict(m) for m in ep.read], tokenize=True,
                                                            return_dict=True)["input_ids"])


def test_the_content_start_is_the_generation_prompt_or_a_clear_error():
    from harness.training.episodes import TemplateNotPrefixStable
    from tests.conftest import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = SMOL_TEMPLATE
    renderer = ChatRenderer(tok)
    messages = (msg("user", "Dog?"), msg("assistant", "Rex."))
    ids, _ = renderer.encode(messages)
    start = renderer.content_start(messages, ids)
    assert tok.decode(ids[start:]) == "Rex.<|im_end|>\n"
    assert ids[:start] == list(tok.apply_chat_template([dict(messages[0])], tokenize=True, add_generation_prompt=True,
                                                       return_dict=True)["input_ids"])
    # a generation prompt the finished turn does not begin with (e.g. an empty thinking block) is refused
    tok.chat_template = SMOL_TEMPLATE.replace("'<|im_start|>assistant\n' }}", "'<|im_start|>assistant\n<think></think>' }}")
    with pytest.raises(TemplateNotPrefixStable, match="generation header"):
        ChatRenderer(tok).content_start(messages, ChatRenderer(tok).encode(messages)[0])


def test_left_truncation_keeps_the_end_and_its_ids(tiny_backbone):
    ep, _ = make_episode(DIALOGUE)
    renderer = ChatRenderer.for_backbone(tiny_backbone)
    full = tokenize_episode(ep, renderer, write_length=10_000, read_length=10_000)
    cut = tokenize_episode(ep, renderer, write_length=7, read_length=5)
    assert cut.write_ids == full.write_ids[-7:] and cut.write_message_ids == full.write_message_ids[-7:]
    assert cut.read_ids == full.read_ids[-5:] and cut.labels == full.labels[-5:]
    assert cut.write_dropped == len(full.write_ids) - 7 and cut.read_dropped == len(full.read_ids) - 5


def test_base_models_without_template_use_the_plain_layout(tiny_backbone):
    from harness.backbone import Backbone
    from tests.conftest import tiny_tokenizer

    tok = tiny_tokenizer()
    tok.chat_template = None
    bb = Backbone(name="base", model=tiny_backbone.model, tokenizer=tok, device=tiny_backbone.device,
                  dtype=tiny_backbone.dtype, window=512)
    ep, _ = make_episode(DIALOGUE)
    t = tokenize_episode(ep, ChatRenderer.for_backbone(bb), write_length=10_000, read_length=10_000)
    assert list(t.read_ids) == bb.chat_ids(ep.read, add_generation_prompt=False)
    assert tok.decode([x for x in t.labels if x != IGNORE]).startswith("Assistant: In Oslo.")


# ------------------------------------------------------------------------------------------ chat JSONL
def write_lines(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_chat_jsonl_reads_messages_ids_and_groups(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [
        {"id": "a", "group": "doc1", "messages": DIALOGUE.messages},
        "",
        {"messages": [msg("user", "x"), msg("assistant", "y"), msg("user", "z"), msg("assistant", "w")]},
        {"prompt": "hi", "response": "hello"},
    ])
    convs = ChatJsonl(str(p)).conversations()
    assert [c.id for c in convs] == ["chat_jsonl/a", "chat_jsonl/line3", "chat_jsonl/line4"]
    assert [c.group for c in convs] == ["doc1", "line3", "line4"]
    with pytest.warns(UserWarning, match="1 with no history"):
        episodes, _ = make_episodes(convs)
    assert len(episodes) == 2


@pytest.mark.parametrize("line, message", [
    ('{"messages": [', "line 2: not valid JSON"),
    ('{"conversation": []}', "line 2: missing field 'messages'"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant"}]}',
     "line 2, messages[1]: missing field 'content'"),
    ('{"messages": [{"content": "a"}]}', "line 2, messages[0]: missing field 'role'"),
    ('{"messages": [{"role": "tool", "content": "a"}]}', "line 2, messages[0]: role 'tool' is not one of"),
    ('{"messages": [{"role": "user", "content": 3}]}', "line 2, messages[0]: field 'content' must be str"),
    ('{"prompt": "only a prompt"}', "line 2: missing field 'response'"),
    ('[1, 2]', "line 2: expected a JSON object"),
])
def test_chat_jsonl_errors_name_the_line_and_the_field(tmp_path, line, message):
    p = write_lines(tmp_path / "bad.jsonl", [{"messages": DIALOGUE.messages}, line])
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ChatJsonl(str(p)).conversations()


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        ChatJsonl(str(tmp_path / "nope.jsonl")).conversations()


# ------------------------------------------------------------------------------------------ documents
def test_paragraphs_and_chunks():
    text = "Title\n\n  First   paragraph\nwraps here.\n\n\n\nSecond one. " + "x" * 50
    paras = paragraphs(text)
    assert paras[:2] == ["Title", "First paragraph wraps here."]
    chunks = chunk_paragraphs(paras, chunk_chars=40)
    assert chunks[0] == "Title\n\nFirst paragraph wraps here."
    assert all(len(c) <= 40 for c in chunks)
    assert "".join(chunks).replace("\n\n", "").replace(" ", "") == "".join(paras).replace(" ", "")


QASPER_ANSWER = {"unanswerable": False, "extractive_spans": [], "yes_no": None, "free_form_answer": "",
                 "evidence": [], "highlighted_evidence": []}


def test_qasper_answer_precedence():
    assert qasper_answer_text({**QASPER_ANSWER, "unanswerable": True}) == "Unanswerable"
    assert qasper_answer_text({**QASPER_ANSWER, "yes_no": False}) == "No"
    assert qasper_answer_text({**QASPER_ANSWER, "free_form_answer": " A CNN "}) == "A CNN"
    assert qasper_answer_text({**QASPER_ANSWER, "extractive_spans": ["BERT", "ELMo"]}) == "BERT, ELMo"
    assert qasper_answer_text(QASPER_ANSWER) is None


def hf_qasper_row(pid="1909.00001"):
    """One paper in the HF ``allenai/qasper`` layout (sequences of structs are dicts of lists)."""
    return {
        "id": pid, "title": "A Paper", "abstract": "We study things.",
        "full_text": {"section_name": ["Introduction", "Method"],
                      "paragraphs": [["Intro text."], ["We use a CNN.", "It has 3 layers."]]},
        "qas": {"question": ["What model?", "Is it deep?"], "question_id": ["q1", "q2"],
                "nlp_background": ["", ""], "topic_background": ["", ""], "paper_read": ["", ""],
                "search_query": ["", ""], "question_writer": ["", ""],
                "answers": [
                    {"answer": [{**QASPER_ANSWER, "free_form_answer": "A CNN"},
                                {**QASPER_ANSWER, "extractive_spans": ["CNN"]}],
                     "annotation_id": ["a1", "a2"], "worker_id": ["w1", "w2"]},
                    {"answer": [{**QASPER_ANSWER, "yes_no": True}], "annotation_id": ["a3"], "worker_id": ["w3"]},
                ]},
        "figures_and_tables": {"caption": [], "file": []},
    }


def test_qasper_hf_rows_and_original_json_give_the_same_conversations(tmp_path):
    hf = write_lines(tmp_path / "qasper.jsonl", [hf_qasper_row()])
    row = hf_qasper_row()
    original = {row["id"]: {
        "title": row["title"], "abstract": row["abstract"],
        "full_text": [{"section_name": s, "paragraphs": p}
                      for s, p in zip(row["full_text"]["section_name"], row["full_text"]["paragraphs"])],
        "qas": [{"question": q, "question_id": qid,
                 "answers": [{"answer": a, "annotation_id": i, "worker_id": w}
                             for a, i, w in zip(ans["answer"], ans["annotation_id"], ans["worker_id"])]}
                for q, qid, ans in zip(row["qas"]["question"], row["qas"]["question_id"], row["qas"]["answers"])]}}
    orig = tmp_path / "qasper-train-v0.3.json"
    orig.write_text(json.dumps(original))
    a = QasperHF(path=str(hf)).conversations()
    b = QasperHF(path=str(orig)).conversations()
    assert [c.messages for c in a] == [c.messages for c in b]
    assert [c.messages[-1]["content"] for c in a] == ["A CNN", "CNN", "Yes"]
    assert {c.group for c in a} == {"1909.00001"}
    assert a[0].messages[0]["content"].startswith("Document, part 1 of 1:\nA Paper\n\nWe study things.\n\nIntroduction")
    assert a[0].messages[-2]["content"] == "Question about the document: What model?"
    assert len(QasperHF(path=str(hf), answers="first").conversations()) == 2


def test_qasper_rows_in_another_schema_are_refused(tmp_path):
    p = write_lines(tmp_path / "x.jsonl", [{"id": "1", "text": "..."}])
    with pytest.raises(DataError, match="row 0: missing field 'full_text'"):
        QasperHF(path=str(p)).conversations()


def test_leval_and_squality_converters(tmp_path):
    lev = write_lines(tmp_path / "scientific_qa.jsonl", [
        {"input": "Intro\n\nBody text.", "instructions": ["Q1?", "Q2?"], "outputs": ["A1", "A2"], "source": "x"}])
    convs = LevalQasper(str(lev)).conversations()
    assert [c.messages[-1]["content"] for c in convs] == ["A1", "A2"] and len({c.group for c in convs}) == 1
    bad = write_lines(tmp_path / "bad.jsonl", [{"input": "x", "instructions": ["q"], "outputs": []}])
    with pytest.raises(DataError, match="line 1: 1 instructions but 0 outputs"):
        LevalQasper(str(bad)).conversations()
    sq = write_lines(tmp_path / "train.jsonl", [{
        "metadata": {"passage_id": "61263", "uid": "u"}, "document": "Story.\n\nMore story.",
        "questions": [{"question_text": "What happens?", "question_number": 1,
                       "responses": [{"response_text": "R1"}, {"response_text": "R2"}]}]}])
    convs = Squality([str(sq)]).conversations()
    assert [c.id for c in convs] == ["squality/61263/q1/a0", "squality/61263/q1/a1"]
    assert convs[0].metadata["references"] == ["R1", "R2"]
    assert len(Squality([str(sq)], answers="first").conversations()) == 1
    missing = write_lines(tmp_path / "m.jsonl", [{"metadata": {"passage_id": "1"}, "document": "d",
                                                  "questions": [{"question_text": "q", "responses": [{}]}]}])
    with pytest.raises(DataError, match=r"line 1, questions\[0\], responses\[0\]: missing field 'response_text'"):
        Squality([str(missing)]).conversations()


@pytest.mark.skipif(not (SHARED / "qasper").is_dir(), reason="shared data not staged")
def test_staged_files_convert():
    lev = LevalQasper(str(SHARED / "qasper" / "leval_scientific_qa.jsonl")).conversations()
    assert len(lev) == 184 and len({c.group for c in lev}) == 20  # 3 papers appear twice in the file
    with pytest.warns(UserWarning, match="23 duplicates"):
        episodes, _ = make_episodes(lev)
    assert len(episodes) == 161
    sq = Squality([str(SHARED / "squality" / "dev.jsonl")], answers="first").conversations()
    assert len(sq) == 125 and len({c.group for c in sq}) == 25


@pytest.mark.parametrize("path", ["/data/locomo/locomo10.json", "../shared/data/hotpotqa/x.jsonl",
                                  "tasks/locomo/data/locomo10.json", "/d/gpqa/dataset.zip"])
def test_benchmark_data_is_refused(path):
    with pytest.raises(ConfigError, match="must never be used for training"):
        refuse_benchmark_data(path)


def test_benchmark_hub_ids_are_refused_and_others_pass():
    for hub in ("snap-research/locomo", "hotpot_qa", "google/IFEval", "Idavidrein/gpqa", "ai-hyz/MemoryAgentBench"):
        with pytest.raises(ConfigError):
            refuse_benchmark_data(hub_id=hub)
    refuse_benchmark_data("/work/shared/data/squality/train.jsonl", hub_id="allenai/qasper")
    with pytest.raises(ConfigError):
        ChatJsonl("/x/locomo/converted.jsonl")


# ------------------------------------------------------------------------------------------ synthetic
def test_synthetic_is_seeded_and_prefix_stable():
    a = SyntheticMemory(conversations=5, seed=3).conversations()
    b = SyntheticMemory(conversations=8, seed=3).conversations()
    c = SyntheticMemory(conversations=5, seed=4).conversations()
    assert [x.messages for x in a] == [x.messages for x in b[:len(a)]]
    assert [x.messages for x in a] != [x.messages for x in c]


def test_synthetic_questions_need_the_history():
    kinds = set()
    for i in range(60):
        for messages, meta in generate_conversation(0, i):
            kinds.add(meta["kind"])
            history = [m["content"] for m in messages[:-2] if m["role"] == "user"]
            assert messages[-2]["content"] == meta["question"] and messages[-1]["content"] == meta["references"][0]
            assert meta["question"] not in history
            assert any(meta["evidence"] in turn for turn in history), (meta, history)
    assert kinds == {"fact", "event", "preference", "update"}


def test_synthetic_updates_come_after_what_they_update():
    seen = 0
    for i in range(60):
        for messages, meta in generate_conversation(1, i):
            if meta["superseded"]:
                turns = [m["content"] for m in messages[:-2] if m["role"] == "user"]
                first_old = min(j for j, t in enumerate(turns) if meta["superseded"] in t)
                first_new = min(j for j, t in enumerate(turns) if meta["evidence"] in t)
                assert first_old < first_new, (meta, turns)
                seen += 1
    assert seen > 5


def test_synthetic_episodes_have_history():
    convs = SyntheticMemory(conversations=20, questions=2).conversations()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        episodes, stats = make_episodes(convs)
    assert len(episodes) == 40 and len(episodes[0].write) > 10


# ------------------------------------------------------------------------------------------ split, order
def test_heldout_split_is_by_group_deterministic_and_order_free():
    convs = SyntheticMemory(conversations=30, questions=3).conversations()
    episodes, _ = make_episodes(convs)
    train, held = split_episodes(episodes, fraction=0.2, seed=7)
    assert {e.group for e in train}.isdisjoint({e.group for e in held})
    assert len({e.group for e in held}) == 6 and len(train) + len(held) == 90
    train2, held2 = split_episodes(list(reversed(episodes)), fraction=0.2, seed=7)
    assert {e.id for e in held2} == {e.id for e in held}
    _, held3 = split_episodes(episodes, fraction=0.2, seed=8)
    assert {e.group for e in held3} != {e.group for e in held}


def test_heldout_groups_edge_cases():
    assert heldout_groups(["a"], fraction=0.5, seed=0, source="s") == set()
    assert len(heldout_groups(["a", "b"], fraction=0.01, seed=0, source="s")) == 1
    assert len(heldout_groups(["a", "b", "c"], fraction=0.9, seed=0, source="s")) == 2
    with pytest.raises(ConfigError):
        heldout_groups(["a"], fraction=1.0, seed=0, source="s")


def test_build_training_data_describes_each_source(tmp_path):
    p = write_lines(tmp_path / "d.jsonl", [{"messages": DIALOGUE.messages, "group": f"g{i}"} for i in range(10)])
    data = build_training_data([ChatJsonl(str(p)), SyntheticMemory(conversations=10, questions=1)],
                               heldout_fraction=0.2, split_seed=1)
    assert len(data.train) + len(data.heldout) == 20
    assert [s["heldout_groups"] for s in data.sources] == [2, 2]
    same = build_training_data([ChatJsonl(str(p)), SyntheticMemory(conversations=10, questions=1)],
                               heldout_fraction=0.2, split_seed=1)
    assert same.fingerprint == data.fingerprint
    with pytest.raises(ConfigError, match="unique"):
        build_training_data([ChatJsonl(str(p)), ChatJsonl(str(p))], heldout_fraction=0.2, split_seed=1)


def test_episode_order_is_a_pure_function_of_position():
    order = EpisodeOrder(5, seed=3)
    first = [order[i] for i in range(15)]
    assert sorted(first[:5]) == sorted(first[5:10]) == list(range(5)) and first[:5] != first[5:10]
    again = EpisodeOrder(5, seed=3)
    assert [again[i] for i in (12, 3, 7)] == [first[12], first[3], first[7]]
