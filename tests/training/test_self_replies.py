"""Self-replies source: instructions are seeded and distinct, the episode writes and reads the instruction, and
a reply cut at the token limit carries no end-of-turn label."""
from __future__ import annotations

import gzip
import json

import pytest

from harness.errors import DataError
from harness.training.episodes import IGNORE, ChatRenderer, make_episodes, tokenize_episode
from harness.training.self_replies import SelfReplies, instructions


def write_replies(path, rows):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def test_instructions_are_seeded_and_distinct():
    a = instructions(300, seed=1)
    assert a == instructions(300, seed=1) and a != instructions(300, seed=2)
    assert len(set(a)) == 300


def test_episode_writes_the_instruction_and_reads_it_with_the_reply(tmp_path):
    p = write_replies(tmp_path / "r.jsonl.gz", [{"id": "r1", "instruction": "Describe rain.", "reply": "Wet."}])
    (ep,), stats = make_episodes(SelfReplies(str(p)).conversations())
    assert [m["content"] for m in ep.write] == ["Describe rain."]
    assert [(m["role"], m["content"]) for m in ep.read] == [("user", "Describe rain."), ("assistant", "Wet.")]
    assert stats.skipped == {}


def test_a_reply_cut_at_the_limit_has_no_end_of_turn_label(tmp_path, tiny_backbone):
    rows = [{"id": "done", "instruction": "Name a colour.", "reply": "Teal, a blue green.", "stopped": True},
            {"id": "cut", "instruction": "Name a colour.", "reply": "Teal, a blue green.", "stopped": False}]
    episodes, _ = make_episodes(SelfReplies(str(write_replies(tmp_path / "r.jsonl", rows))).conversations())
    renderer = ChatRenderer.for_backbone(tiny_backbone)
    done, cut = (tokenize_episode(e, renderer, write_length=512, read_length=512) for e in episodes)
    assert done.read_ids == cut.read_ids
    labelled = {name: tiny_backbone.tokenizer.decode([t for t in t.labels if t != IGNORE])
                for name, t in (("done", done), ("cut", cut))}
    assert labelled["done"] == "<|im_start|>assistant\nTeal, a blue green.<|im_end|>\n"
    assert labelled["cut"] == "<|im_start|>assistant\nTeal, a blue green."


@pytest.mark.parametrize("line, message", [
    ("{", "line 2: not valid JSON"),
    ('{"id": "x", "instruction": "a"}', "line 2: missing field 'reply'"),
    ('{"id": 3, "instruction": "a", "reply": "b"}', "line 2: field 'id' must be str, got int"),
    ('[1]', "line 2: expected a JSON object"),
])
def test_bad_lines_name_the_line_and_field(tmp_path, line, message):
    p = write_replies(tmp_path / "r.jsonl", [{"id": "a", "instruction": "b", "reply": "c"}, line])
    with pytest.raises(DataError, match=message):
        SelfReplies(str(p)).conversations()


def test_a_plain_file_named_gz_is_a_clear_data_error(tmp_path):
    p = tmp_path / "r.jsonl.gz"
    p.write_text(json.dumps({"id": "a", "instruction": "b", "reply": "c"}) + "\n")
    with pytest.raises(DataError, match="not a readable gzip file"):
        SelfReplies(str(p)).conversations()


def test_distill_objective_marks_the_episodes_and_a_bad_one_is_refused(tmp_path, tiny_backbone):
    from harness.errors import ConfigError

    p = write_replies(tmp_path / "r.jsonl", [{"id": "r1", "instruction": "Describe rain.", "reply": "Wet."}])
    renderer = ChatRenderer.for_backbone(tiny_backbone)
    for objective, distill in (("tokens", False), ("distill", True)):
        (ep,), _ = make_episodes(SelfReplies(str(p), objective=objective).conversations())
        assert tokenize_episode(ep, renderer, write_length=64, read_length=64).distill is distill
    with pytest.raises(ConfigError, match="objective must be one of tokens, distill, got 'kl'"):
        SelfReplies(str(p), objective="kl")


def test_online_protocol_marks_the_episodes_and_a_bad_one_is_refused(tmp_path, tiny_backbone):
    from harness.errors import ConfigError

    p = write_replies(tmp_path / "r.jsonl", [{"id": "r1", "instruction": "Describe rain.", "reply": "Wet."}])
    renderer = ChatRenderer.for_backbone(tiny_backbone)
    for protocol, online in (("written", False), ("online", True)):
        (ep,), _ = make_episodes(SelfReplies(str(p), objective="distill", protocol=protocol).conversations())
        tok = tokenize_episode(ep, renderer, write_length=64, read_length=64)
        assert tok.online is online and tok.distill
    with pytest.raises(ConfigError, match="protocol must be one of written, online, got 'live'"):
        SelfReplies(str(p), protocol="live")
