"""δ-mem as a harness method and the notebook API, on the tiny Llama + tiny BPE backbone."""
from __future__ import annotations

import copy

import pytest
import torch

from methods.deltamem import DeltaMemConfig, attach
from methods.deltamem.api import ask, chat_segments, write_history
from methods.deltamem.method import DeltaMemMethod
from tests.conftest import make_backbone
from tests.methods.toy import ToyTask, dialogue_episode

QUESTIONS = (("What is the name of Caroline's cat?", "Pixel"), ("Where did Melanie's sister move?", "Lisbon"),
             ("Who likes Frida Kahlo?", "Caroline"))


@pytest.fixture(scope="module")
def backbone():
    return make_backbone()


def run_method(backbone, batch_size, **kw):
    bb = copy.copy(backbone)
    bb.model = copy.deepcopy(backbone.model)
    task = ToyTask(generation={"max_new_tokens": 5})
    m = DeltaMemMethod(name="deltamem_tsw", batch_size=batch_size, output_init="random", **kw)
    m.setup(bb, task, seed=0)
    ep = dialogue_episode(QUESTIONS)
    info = m.ingest(ep)
    preds = []
    for i in range(0, len(ep.queries), batch_size):
        preds += m.answer(ep, ep.queries[i:i + batch_size])
    snap = m.dm.snapshot()
    m.close()
    assert not hasattr(bb.model, "_deltamem")
    return info, [p.text for p in preds], snap


@pytest.mark.parametrize("protocol", ["memory", "context"])
@pytest.mark.parametrize("variant", [dict(), dict(num_state_heads=4), dict(write_granularity="message_mean")],
                         ids=["tsw", "msw", "ssw"])
def test_batched_answers_equal_one_by_one(backbone, protocol, variant):
    """One ingest, then a snapshot serves every question: batching does not change any answer."""
    info, batched, snap = run_method(backbone, 3, protocol=protocol, **variant)
    _, single, _ = run_method(backbone, 1, protocol=protocol, **variant)
    assert batched == single
    assert info["protocol"] == protocol and info["tokens_written"] > 0
    assert snap.batch_size == 1 and all(s.abs().sum() > 0 for s in snap.layers.values())


def test_memory_protocol_chunks_carry_the_state(backbone):
    """A history written in 16-token chunks: every chunk is a call, and the state after them is not what the
    last chunk alone writes from zero (it was carried), nor, beyond the first layer, what one call over everything
    writes (chunks do not attend to each other)."""
    from methods.deltamem.api import write_tokens

    info, _, snap = run_method(backbone, 3, protocol="memory", chunk_tokens=16)
    n = info["tokens_written"]
    assert info["chunks"] == -(-n // 16) > 1
    ep = dialogue_episode(QUESTIONS)
    ids, _ = chat_segments(backbone.tokenizer, ToyTask().history_messages(ep), granularity="token",
                           chat_kwargs=backbone.chat_kwargs)
    assert len(ids) == n
    bb = copy.copy(backbone)
    bb.model = copy.deepcopy(backbone.model)
    m = DeltaMemMethod(name="deltamem_tsw", output_init="random")
    m.setup(bb, ToyTask(generation={"max_new_tokens": 5}), seed=0)  # the same seeded initialisation
    dm = m.dm
    last = (n - 1) // 16 * 16
    write_tokens(dm, ids[last:])
    alone = dm.snapshot()
    dm.reset()
    write_tokens(dm, ids, chunk_tokens=16)
    carried = dm.snapshot()
    dm.reset()
    write_tokens(dm, ids)
    whole = dm.snapshot()
    m.close()
    first = min(snap.layers)
    for i, s in snap.layers.items():
        assert torch.allclose(carried.layers[i], s, atol=1e-6)
        assert (s - alone.layers[i]).abs().max() > 1e-4
        # the first layer's input is the token embedding, context-free: chunking cannot change what it writes
        if i == first:
            assert torch.allclose(whole.layers[i], s, atol=1e-6)
        else:
            assert (s - whole.layers[i]).abs().max() > 1e-4


def test_memory_protocol_answers_do_not_write(backbone, monkeypatch):
    """History removed: the questions are read with writes off, so the state the answers leave behind is the
    ingested one, row for row (checked before the method restores its snapshot)."""
    import methods.deltamem.method as method_module

    after: list = []
    real = method_module.answer_batch

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        after.append(method_module_dm[0].snapshot())
        return out

    method_module_dm: list = []
    monkeypatch.setattr(method_module, "answer_batch", spy)
    bb = copy.copy(backbone)
    bb.model = copy.deepcopy(backbone.model)
    m = DeltaMemMethod(name="deltamem_msw", num_state_heads=4, output_init="random", protocol="memory")
    m.setup(bb, ToyTask(generation={"max_new_tokens": 4}), seed=0)
    method_module_dm.append(m.dm)
    ep = dialogue_episode(QUESTIONS)
    m.ingest(ep)
    ingested = m.dm.snapshot()
    m.answer(ep, ep.queries)
    m.close()
    (state,) = after
    assert state.batch_size == len(ep.queries)
    for i, s in ingested.layers.items():
        assert torch.equal(state.layers[i], s.expand_as(state.layers[i]))


def test_chat_segments_and_api(backbone):
    tok = backbone.tokenizer
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "I adopted a cat. It is grey!"},
            {"role": "assistant", "content": "Nice: a grey cat."}]
    ids, seg = chat_segments(tok, msgs, granularity="message_mean")
    assert ids == backbone.chat_ids(msgs, add_generation_prompt=False)
    assert seg[0] == -1 and set(seg) == {-1, 0, 1}
    assert seg.index(1) > max(i for i, s in enumerate(seg) if s == 0)
    _, sent = chat_segments(tok, msgs, granularity="sentence_mean")
    assert set(sent) == {-1, 0, 1, 2, 3}  # two sentences per non-system message
    model = copy.deepcopy(backbone.model)
    dm = attach(model, DeltaMemConfig.ssw(output_init="random"))
    info = write_history(dm, tok, msgs[1:])
    assert info["tokens_written"] > 0
    before = dm.snapshot()
    answer = ask(dm, tok, [{"role": "user", "content": "What colour is the cat?"}], max_new_tokens=4)
    assert isinstance(answer, str)
    assert all(torch.equal(before.layers[i], dm.snapshot().layers[i]) for i in before.layers)


def _context_run(backbone, max_new_tokens, **kw):
    """The context protocol on the dialogue episode: predictions, the state the answers left behind (before
    the method restores its snapshot), and the method itself (closed)."""
    import methods.deltamem.method as method_module

    bb = copy.copy(backbone)
    bb.model = copy.deepcopy(backbone.model)
    m = DeltaMemMethod(name="deltamem_tsw", output_init="random", protocol="context", batch_size=3, **kw)
    m.setup(bb, ToyTask(generation={"max_new_tokens": max_new_tokens, "do_sample": False}), seed=0)
    after = []
    real = method_module.answer_batch

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        after.append(m.dm.snapshot())
        return out

    method_module.answer_batch = spy
    try:
        ep = dialogue_episode(QUESTIONS)
        m.ingest(ep)
        prompts = {q.id: list(m._prompts.ids[q.id]) for q in ep.queries}
        preds = m.answer(ep, ep.queries)
    finally:
        method_module.answer_batch = real
    return preds, after[0], prompts, m, bb


def test_context_protocol_without_writing_the_answer(backbone):
    """write_generated=False writes the prompt and not a generated token: the state after five new tokens is the
    state after the prompt alone (one new token needs no decode step), while the reference setting moves on.
    Its answers equal a plain one-question loop: prefill with writes on, then greedy decode with writes off."""
    _, prompt_only, _, _, _ = _context_run(backbone, 1)
    _, written, _, _, _ = _context_run(backbone, 5)
    preds, unwritten, prompts, m, bb = _context_run(backbone, 5, write_generated=False)
    for i, s in prompt_only.layers.items():
        assert torch.equal(unwritten.layers[i], s)
        assert (written.layers[i] - s).abs().max() > 1e-6
    dm, model = m.dm, bb.model
    with torch.inference_mode():
        for q, pred in zip(QUESTIONS, preds):
            qid = f"q{QUESTIONS.index(q)}"
            dm.reset()
            with dm.writes(True):
                out = model(input_ids=torch.tensor([prompts[qid]]), use_cache=True)
            new, cache = [], out.past_key_values
            with dm.writes(False):
                for _ in range(5):
                    tok = int(out.logits[0, -1].argmax())
                    if tok in bb.stop_ids:
                        break
                    new.append(tok)
                    out = model(input_ids=torch.tensor([[tok]]), past_key_values=cache, use_cache=True)
            assert pred.text == bb.decode(new).strip()
    m.close()


@pytest.mark.parametrize("write_generated", [True, False])
def test_sliding_window_backbone_batched_answers_equal_one_by_one(write_generated):
    """A sliding-window backbone decodes each group of equal-length questions separately (no padding inside a
    window); every group must start from the ingested state with prompt writes on, not from the rows the group
    before it left behind."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from harness.backbone import Backbone
    from tests.conftest import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(3)
    cfg = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                           layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
                           tie_word_embeddings=False, attn_implementation="sdpa")
    model = Gemma3ForCausalLM(cfg).eval()
    bb = Backbone(name="tiny_gemma3", model=model, tokenizer=tok, device=torch.device("cpu"), dtype=torch.float32,
                  window=512)
    with torch.no_grad():  # answers that never stop early, so that every group decodes
        model.lm_head.weight.mul_(4.0)
        model.lm_head.weight[sorted(bb.stop_ids)] = 0.0
    questions = (("Who?", "x"), ("What did Caroline adopt last week?", "y"), ("Where?", "z"),
                 ("Which painter does Caroline like the most of all?", "w"))

    def answers(batch_size, gain=5.0):
        b = copy.copy(bb)
        b.model = copy.deepcopy(model)
        # a strong memory (large gain) so that a wrong starting state changes the greedy answers
        m = DeltaMemMethod(name="deltamem_tsw", output_init="random", protocol="context", batch_size=batch_size,
                           write_generated=write_generated, online_gain=gain, alpha=64.0)
        m.setup(b, ToyTask(generation={"max_new_tokens": 8, "do_sample": False}), seed=0)
        ep = dialogue_episode(questions)
        m.ingest(ep)
        out = []
        for i in range(0, len(ep.queries), batch_size):
            out += [p.text for p in m.answer(ep, ep.queries[i:i + batch_size])]
        m.close()
        return out

    one_by_one = answers(1)
    assert all(one_by_one) and answers(4) == one_by_one
    assert one_by_one != answers(1, gain=0.0)  # the memory does change these answers
