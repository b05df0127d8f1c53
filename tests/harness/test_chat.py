"""``python -m harness.chat``: the δ-mem conversation engine (tiny random model) and the saved state carrying
over between processes on the embedded SmolLM2-135M with the shipped adapter."""
from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.chat import run
from harness.chat_memory import ChatMemory, StateMismatch
from harness.deltamem_loading import attach_memory
from methods.deltamem.api import chat_segments
from tests.conftest import CHATML, make_backbone

ROOT = Path(__file__).resolve().parents[2]
TURNS = ["Caroline has a cat called Pixel.", "Melanie moved to Lisbon in May.", "What is the cat called?"]


def new_chat(seed: int = 0, model_seed: int = 0, variant: str = "tsw", window: int = 1) -> ChatMemory:
    bb = make_backbone(seed=model_seed)
    bb.model = copy.deepcopy(bb.model)
    memory = attach_memory(bb.model, None, variant=variant, output_init="random", seed=seed)
    return ChatMemory(bb, memory, window=window, max_new_tokens=6)


def states(chat: ChatMemory) -> dict[int, torch.Tensor]:
    return chat.dm.snapshot().layers


def test_window_holds_only_recent_exchanges():
    chat = new_chat(window=1)
    chat.write_exchange("a", "b")
    chat.write_exchange("c", "d")
    assert [m["content"] for m in chat.prompt_messages("e")] == ["c", "d", "e"]
    chat.set_window(0)
    assert chat.prompt_messages("e") == [{"role": "user", "content": "e"}]
    with pytest.raises(ValueError):
        chat.set_window(-1)


@pytest.mark.parametrize("variant", ["tsw", "ssw", "msw"])
def test_every_message_is_written_once_in_order(variant):
    """The exchanges written one by one add up to the rendered conversation, token for token."""
    chat = new_chat(variant=variant)
    r1 = chat.reply(TURNS[0])
    r2 = chat.reply(TURNS[1])
    ids, _ = chat_segments(chat.backbone.tokenizer, chat.messages(), granularity="token")
    assert r1.written + r2.written == chat.tokens_written == len(ids)
    assert all(s.abs().sum() > 0 for s in states(chat).values())
    assert r1.logits.shape[0] == len(r1.ids) or r1.logits.shape[0] == len(r1.ids) + 1


def test_template_that_is_not_prefix_stable_writes_exchanges_alone(monkeypatch, tmp_path):
    """When the whole conversation cannot be rendered as one piece, each exchange is written on its own — once —
    and a saved session keeps doing so after loading."""
    import harness.chat_memory as cm
    from harness.training.episodes import TemplateNotPrefixStable

    real = cm.chat_segments

    def picky(tokenizer, messages, **kw):
        if len(messages) > 2:
            raise TemplateNotPrefixStable("test")
        return real(tokenizer, messages, **kw)

    monkeypatch.setattr(cm, "chat_segments", picky)
    # a default system prompt, as SmolLM2's template injects: an exchange alone then differs from its suffix
    system = "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nHello<|im_end|>\n{% endif %}"
    chat = new_chat()
    chat.backbone.tokenizer.chat_template = system + CHATML
    chat.write_exchange("a", "b")
    second = chat.write_exchange("c", "d")
    alone = len(real(chat.backbone.tokenizer, chat.messages()[-2:], granularity="token")[0])
    assert second == alone and chat.tokens_written == 2 * alone
    chat.save(tmp_path / "m.safetensors")
    monkeypatch.undo()  # the whole chat renders now; the saved session must still not switch mode
    resumed = new_chat()
    resumed.backbone.tokenizer.chat_template = system + CHATML
    resumed.load(tmp_path / "m.safetensors")
    assert resumed.write_exchange("e", "f") == chat.write_exchange("e", "f")
    assert all(torch.equal(states(chat)[k], states(resumed)[k]) for k in states(chat))


def test_reply_reads_without_writing():
    chat = new_chat()
    chat.write_exchange(TURNS[0], "Nice.")
    before = {k: v.clone() for k, v in states(chat).items()}
    bb, dm = chat.backbone, chat.dm
    ids = torch.tensor([bb.chat_ids(chat.prompt_messages(TURNS[2]))])
    with torch.no_grad(), dm.writes(False):
        bb.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert all(torch.equal(before[k], v) for k, v in states(chat).items())


def test_save_load_continues_exactly(tmp_path):
    """A session saved and loaded into a fresh model continues exactly as the uninterrupted one."""
    a = new_chat()
    a.reply(TURNS[0])
    a.reply(TURNS[1])
    a.save(tmp_path / "m.safetensors")
    b = new_chat()
    b.load(tmp_path / "m.safetensors")
    assert b.history == a.history and b.tokens_written == a.tokens_written
    assert all(torch.equal(states(a)[k], states(b)[k]) for k in states(a))
    for chat in (a, b):
        chat.set_window(0)
    ra, rb = a.reply(TURNS[2]), b.reply(TURNS[2])
    assert torch.equal(ra.logits, rb.logits) and ra.text == rb.text
    assert all(torch.equal(states(a)[k], states(b)[k]) for k in states(a))  # and both wrote the same exchange
    assert not list(tmp_path.glob(".*tmp"))


def test_load_refuses_another_adapter_or_backbone(tmp_path):
    a = new_chat()
    a.reply(TURNS[0])
    path = a.save(tmp_path / "m.safetensors")
    other_adapter = new_chat(seed=1)
    with pytest.raises(StateMismatch, match="written with adapter") as err:
        other_adapter.load(path)
    assert "backbone" not in str(err.value)
    other_backbone = new_chat(model_seed=5)
    with pytest.raises(StateMismatch, match="written on backbone tiny") as err:
        other_backbone.load(path)
    other_variant = new_chat(variant="msw")
    with pytest.raises(StateMismatch, match="adapter"):
        other_variant.load(path)
    for refused in (other_adapter, other_backbone, other_variant):  # nothing changed
        assert refused.history == [] and refused.dm.state.batch_size is None
    (tmp_path / "junk").write_bytes(b"not a state")
    with pytest.raises(StateMismatch, match="not a δ-mem chat state"):
        new_chat().load(tmp_path / "junk")


def test_save_is_atomic(tmp_path, monkeypatch):
    """A failure while saving leaves the previous file whole and no temporary file behind."""
    chat = new_chat()
    chat.reply(TURNS[0])
    path = chat.save(tmp_path / "m.safetensors")
    good = path.read_bytes()
    chat.reply(TURNS[1])

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        chat.save(path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_reset_forgets_everything():
    chat = new_chat()
    chat.reply(TURNS[0])
    chat.reset()
    assert chat.history == [] and chat.tokens_written == 0 and chat.dm.state.batch_size is None
    assert set(chat.layer_norms().values()) == {0.0}


def test_command_loop(tmp_path):
    """The loop as piped input drives it: messages, every command, save to the --memory file by default."""
    chat = new_chat()
    lines = io.StringIO(f"{TURNS[0]}\n/stats\n/window 0\n/window x\n/save\n/bogus\n/reset\n/load\n"
                        f"/load {tmp_path / 'missing'}\n{TURNS[2]}\n/quit\nnever read\n")
    out = io.StringIO()
    logits: list[torch.Tensor] = []
    run(chat, lines, out, memory_file=str(tmp_path / "m.safetensors"), echo=True, logits=logits)
    text = out.getvalue()
    assert text.count("bot> ") == 2 and len(logits) == 2
    assert "tokens written:" in text and "state norm per layer" in text
    assert "window: the last 0 exchange(s)" in text and "usage: /window N" in text
    assert f"saved to {tmp_path / 'm.safetensors'}" in text and "unknown command /bogus" in text
    assert "loaded" in text and "load failed" in text
    assert "never read" not in text
    assert chat.window == 0 and len(chat.history) == 2  # the loaded exchange plus the last one


@pytest.mark.real_model
def test_state_carries_over_between_processes(tmp_path):
    """Embedded SmolLM2-135M + shipped MSW adapter: a conversation piped in and saved, a NEW process that loads the
    state and asks with the window at 0 gets the same logits, bit for bit, as the first process continuing."""
    state, first, second = tmp_path / "chat.safetensors", tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    base = [sys.executable, "-m", "harness.chat", "--threads", "1", "--max-new-tokens", "12"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    question = "What is my cat called?"
    a = subprocess.run(base + ["--save-logits", str(first)], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600, input=f"My cat is called Pixel and she is grey.\nI live in Lisbon.\n"
                                         f"/save {state}\n/window 0\n{question}\n/stats\n")
    assert a.returncode == 0, a.stderr[-3000:]
    b = subprocess.run(base + ["--memory", str(state), "--window", "0", "--save-logits", str(second)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600, input=f"{question}\n")
    assert b.returncode == 0, b.stderr[-3000:]
    assert "resumed" in b.stdout and "2 exchanges" in b.stdout
    from safetensors.torch import load_file

    la, lb = load_file(str(first)), load_file(str(second))
    assert len(la) == 3 and len(lb) == 1
    assert torch.equal(la["reply.2"], lb["reply.0"])
    reply = lambda out: out.split(f"you> {question}\nbot> ")[1].split("\n")[0]  # noqa: E731
    assert reply(a.stdout) == reply(b.stdout)
    # another adapter is refused at start, naming it
    c = subprocess.run(base + ["--memory", str(state), "--variant", "tsw"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600, input="")
    assert c.returncode == 2 and "deltamem_msw" in c.stderr and "deltamem_tsw" in c.stderr
