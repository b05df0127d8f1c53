"""δ-mem speed on CPU, side by side with the bare backbone and a LoRA step, in one process.

    python -m benchmarks.deltamem_speed [--parts prefill,decode,overhead,scan,train,protocol] [--reps 3] [--json out.json]

On the embedded SmolLM2-135M (fp32, sdpa, 2 threads):
  prefill   2,048 tokens (``logits_to_keep=1``), bare vs δ-mem TSW vs MSW
  decode    64 greedy tokens after a 512-token prompt, token by token with a KV cache
  scan      the compiled scan and the chunked torch form (the CUDA path) vs the per-token torch loop
            at 512 / 2,048 / 8,192 tokens (fwd, fwd+bwd)
  overhead  the time spent inside δ-mem code within the same prefill / decode calls (load-independent)
  train     one step: write 1,024 + read 256 tokens, backward, AdamW — vs a rank-8 LoRA (peft, q_proj)
            step on the same 1,280 tokens
  protocol  answering 8 LoCoMo questions (32 new tokens each, batched) about a history of 1k / 4k / 8k
            tokens: δ-mem MSW with the history written into the state and only the question in the prompt
            (history-removed protocol) vs vanilla with the history as a reused KV-cache prefix
Targets (issue 3): prefill and decode speed ≥ 0.95× bare, training step ≤ 1.5× LoRA.

The machine is shared, so variants are interleaved at the finest grain the protocol allows (each round
times every variant once; decode alternates variants step by step) and the load from other processes
during each timing is read from /proc/stat and printed. Ratios of interleaved medians are far more
stable than absolute times under load; a figure measured with more than ~0.3 foreign cores is noisy.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from methods.deltamem import DeltaMemConfig, attach
from methods.deltamem.scan import scan_chunked, scan_naive, scan_numba, unit


# ------------------------------------------------------------------------------------------ timing
def _cpu_snapshot() -> tuple[float, float, float]:
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    busy = sum(vals[:8]) - idle
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system, time.perf_counter()


def _foreign(s0: tuple[float, float, float], s1: tuple[float, float, float]) -> float:
    """Average number of cores used by other processes between two snapshots."""
    return max(0.0, ((s1[0] - s0[0]) - (s1[1] - s0[1])) / max(s1[2] - s0[2], 1e-9))


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    s0 = _cpu_snapshot()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return dt, _foreign(s0, _cpu_snapshot())


class _TimedBase(torch.nn.Module):
    """Stands in for a wrapper's base projection and accumulates the time spent in it."""

    def __init__(self, base: torch.nn.Module, acc: list[float]) -> None:
        super().__init__()
        self.base, self.acc = base, acc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.base(x)
        self.acc[0] += time.perf_counter() - t0
        return out


def part_overhead(models: dict[str, torch.nn.Module], prefill_len: int, prompt_len: int,
                  new_tokens: int) -> list[Cell]:
    """Time spent in δ-mem code inside the same calls (wrapper time minus base projection time).

    Independent of run-to-run load: both terms come from one run. share = δ-mem time / call time, and
    1/(1+share/(1-share)) is the speed the bare model would have relative to it.
    """
    from transformers import DynamicCache

    from methods.deltamem.surgery import DeltaMemProjection

    cells = []
    for v, m in models.items():
        if v == "bare":
            continue
        wrappers = [mod for mod in m.modules() if isinstance(mod, DeltaMemProjection)]
        base_acc, wrap_acc = [0.0], [0.0]
        originals = [w.base_layer for w in wrappers]
        for w in wrappers:
            w.base_layer = _TimedBase(w.base_layer, base_acc)
        real_forward = DeltaMemProjection.forward

        def timed_forward(self, x, _real=real_forward):
            t0 = time.perf_counter()
            out = _real(self, x)
            wrap_acc[0] += time.perf_counter() - t0
            return out

        DeltaMemProjection.forward = timed_forward
        try:
            g = torch.Generator().manual_seed(5)
            for phase, length, steps in (("prefill", prefill_len, 0), ("decode", prompt_len, new_tokens)):
                ids = torch.randint(0, 49152, (1, length), generator=g)
                _reset(m)
                cache = DynamicCache()
                with torch.no_grad():
                    out = m(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache,
                            use_cache=True, logits_to_keep=1)
                    tok = out.logits[:, -1:].argmax(-1)
                    base_acc[0] = wrap_acc[0] = 0.0
                    t0 = time.perf_counter()
                    if steps == 0:
                        _reset(m)
                        m(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
                    for i in range(steps):
                        out = m(input_ids=tok, attention_mask=torch.ones(1, length + i + 1, dtype=torch.long),
                                past_key_values=cache, use_cache=True)
                        tok = out.logits[:, -1:].argmax(-1)
                    total = time.perf_counter() - t0
                extra = wrap_acc[0] - base_acc[0]
                cells.append(Cell("overhead", f"{v} {phase}", [total], [],
                                  {"deltamem_s": extra, "share": extra / total,
                                   "implied_speed_vs_bare": (total - extra) / total}))
        finally:
            DeltaMemProjection.forward = real_forward
            for w, b in zip(wrappers, originals):
                w.base_layer = b
    return cells


@dataclass
class Cell:
    part: str
    variant: str
    times_s: list[float] = field(default_factory=list)
    foreign_cores: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.times_s)

    def row(self, ref: "Cell | None", per: str = "s", scale: float = 1.0) -> str:
        ratio = ""
        if ref is not None and ref is not self:
            ratio = f"  speed vs {ref.variant}: {ref.median / self.median:.3f}×  (time {self.median / ref.median:.3f}×)"
            if len(ref.times_s) == len(self.times_s) > 1:
                # reps are interleaved, so each rep's ratio cancels the load drift between reps
                paired = statistics.median(r / t for r, t in zip(ref.times_s, self.times_s))
                ratio += f"  paired (median of per-rep ratios): {paired:.3f}×"
        fc = max(self.foreign_cores) if self.foreign_cores else 0.0
        return (f"  {self.variant:<22} {self.median * scale:10.4f} {per}  "
                f"[{', '.join(f'{t * scale:.4f}' for t in self.times_s)}]  foreign≤{fc:.2f}{ratio}")


# ------------------------------------------------------------------------------------------ models
def load_smollm2(attn: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from harness.embedded import ensure_embedded

    folder = ensure_embedded("smollm2-135m-instruct")
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation=attn)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def deltamem_models(bare: torch.nn.Module) -> dict[str, torch.nn.Module]:
    models = {"bare": bare}
    for name, cfg in (("deltamem_tsw", DeltaMemConfig.tsw(output_init="random")),
                      ("deltamem_msw", DeltaMemConfig.msw(output_init="random"))):
        m = copy.deepcopy(bare)
        torch.manual_seed(1)
        attach(m, cfg)
        models[name] = m.eval()
    return models


def _reset(model: torch.nn.Module) -> None:
    dm = getattr(model, "_deltamem", None)
    if dm is not None:
        dm.reset()


def _state_norm(model: torch.nn.Module) -> float | None:
    dm = getattr(model, "_deltamem", None)
    if dm is None:
        return None
    return sum(float(dm.state.layer_state(i).norm()) for i in dm.state.layer_ids
               if dm.state.layer_state(i) is not None)


# ------------------------------------------------------------------------------------------ parts
def part_prefill(models: dict[str, torch.nn.Module], length: int, reps: int) -> list[Cell]:
    ids = torch.randint(0, 49152, (1, length), generator=torch.Generator().manual_seed(123))
    mask = torch.ones_like(ids)

    def run(m: torch.nn.Module) -> torch.Tensor:
        _reset(m)
        with torch.no_grad():
            return m(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1).logits

    cells = {v: Cell("prefill", v, extra={"tokens": length}) for v in models}
    warm = {v: run(m) for v, m in models.items()}
    for v, m in models.items():  # the memory must really act, or the timing means nothing
        cells[v].extra.update(state_norm=_state_norm(m),
                              max_logit_diff_vs_bare=float((warm[v] - warm["bare"]).abs().max()))
    for rep in range(reps):
        for v, m in models.items():
            dt, fc = timed(lambda: run(m))
            cells[v].times_s.append(dt)
            cells[v].foreign_cores.append(fc)
        print(f"  # prefill rep {rep + 1}: " + ", ".join(f"{v} {c.times_s[-1]:.2f} s" for v, c in cells.items())
              + f", foreign {fc:.2f}", flush=True)
    return list(cells.values())


def part_decode(models: dict[str, torch.nn.Module], prompt_len: int, new_tokens: int, reps: int) -> list[Cell]:
    from transformers import DynamicCache

    ids = torch.randint(0, 49152, (1, prompt_len), generator=torch.Generator().manual_seed(321))
    cells = {v: Cell("decode", v, extra={"prompt": prompt_len, "new_tokens": new_tokens}) for v in models}
    for rep in range(reps + 1):  # rep 0 warms up
        caches, toks, per_step = {}, {}, {v: [] for v in models}
        with torch.no_grad():
            for v, m in models.items():
                _reset(m)
                caches[v] = DynamicCache()
                out = m(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=caches[v],
                        use_cache=True, logits_to_keep=1)
                toks[v] = out.logits[:, -1:].argmax(-1)
            fcs = []
            for i in range(new_tokens):  # variants alternate step by step: load hits all alike
                am = torch.ones(1, prompt_len + i + 1, dtype=torch.long)
                for v, m in models.items():
                    s0 = _cpu_snapshot()
                    t0 = time.perf_counter()
                    out = m(input_ids=toks[v], attention_mask=am, past_key_values=caches[v], use_cache=True)
                    toks[v] = out.logits[:, -1:].argmax(-1)
                    per_step[v].append(time.perf_counter() - t0)
                    fcs.append(_foreign(s0, _cpu_snapshot()))
        print(f"  # decode rep {rep}{' (warm-up)' if rep == 0 else ''}: " + ", ".join(
            f"{v} {1e3 * sum(per_step[v]) / new_tokens:.1f} ms/tok" for v in models)
            + f", foreign {statistics.mean(fcs):.2f}", flush=True)
        if rep == 0:
            continue
        for v in models:
            cells[v].times_s.append(sum(per_step[v]) / new_tokens)
            cells[v].foreign_cores.append(statistics.mean(fcs))
            cells[v].extra.setdefault("median_step_s", []).append(statistics.median(per_step[v]))
    return list(cells.values())


def part_scan(lengths: list[int], reps: int) -> list[Cell]:
    cells = []
    r = 8
    for t in lengths:
        g = torch.Generator().manual_seed(0)
        q = unit(torch.tanh(torch.randn(1, t, r, generator=g)))
        k = unit(torch.tanh(torch.randn(1, t, r, generator=g)))
        v = torch.randn(1, t, r, generator=g)
        beta = torch.sigmoid(torch.randn(1, t, r, generator=g) - 1.5)
        s0 = torch.zeros(1, r, r)
        for name, fn in (("numba", scan_numba), ("chunked", scan_chunked), ("per-token loop", scan_naive)):
            def fwd() -> None:
                with torch.no_grad():
                    fn(q, k, v, beta, state=s0)

            leaves = [x.clone().requires_grad_(True) for x in (q, k, v, beta, s0)]

            def fwd_bwd() -> None:
                reads, final = fn(*leaves[:4], state=leaves[4])
                (reads.square().sum() + final.square().sum()).backward()

            n = reps if (name != "per-token loop" or t <= 2048) else 1  # the loop at 8k takes seconds
            for mode, f in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                f()
                cell = Cell("scan", f"{name} {mode}", extra={"tokens": t})
                for _ in range(max(n, 1) if name == "per-token loop" else max(n, 5)):
                    dt, fc = timed(f)
                    cell.times_s.append(dt)
                    cell.foreign_cores.append(fc)
                cells.append(cell)
    return cells


def part_train(bare: torch.nn.Module, write_len: int, read_len: int, reps: int,
               variants: tuple[str, ...] = ("tsw", "msw")) -> list[Cell]:
    """One optimizer step of δ-mem (write pass, read pass with writes off, AdamW) against one of a rank-8 LoRA
    on q_proj over the same write + read tokens. Neither computes logits where nothing is supervised: the
    δ-mem write pass keeps one position, the LoRA forward keeps the read positions (its loss is taken by
    hand), so the LM head over the 49,152-token vocabulary costs both the same."""
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    g = torch.Generator().manual_seed(7)
    write_ids = torch.randint(0, 49152, (1, write_len), generator=g)
    read_ids = torch.randint(0, 49152, (1, read_len), generator=g)
    labels = read_ids.clone()
    labels[:, : read_len // 2] = -100  # supervise the "answer" half

    def loss_of(logits: torch.Tensor) -> torch.Tensor:  # next-token CE over the read positions
        return F.cross_entropy(logits[0, :-1].float(), labels[0, 1:], ignore_index=-100)

    def deltamem_step_fn(variant: str):
        model = copy.deepcopy(bare)
        torch.manual_seed(1)
        dm = attach(model, getattr(DeltaMemConfig, variant)())  # base_slice_fixed: the training default
        model.train()
        opt = torch.optim.AdamW(dm.parameters(), lr=2e-4, weight_decay=0.0)

        def step() -> float:
            dm.reset()
            model(input_ids=write_ids, attention_mask=torch.ones_like(write_ids), use_cache=False, logits_to_keep=1)
            with dm.writes(False):
                out = model(input_ids=read_ids, attention_mask=torch.ones_like(read_ids), use_cache=False)
            loss = loss_of(out.logits)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return float(loss.detach())

        return model, dm, opt, step

    lora_model = get_peft_model(copy.deepcopy(bare), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj"],
                                                                lora_dropout=0.0))
    lora_model.train()
    lora_opt = torch.optim.AdamW([p for p in lora_model.parameters() if p.requires_grad], lr=2e-4)
    full_ids = torch.cat([write_ids, read_ids], 1)

    def lora_step() -> float:
        out = lora_model(input_ids=full_ids, attention_mask=torch.ones_like(full_ids), use_cache=False,
                         logits_to_keep=read_len)
        loss = loss_of(out.logits)
        loss.backward()
        lora_opt.step()
        lora_opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    steps = {"lora": lora_step}
    cells = {"lora": Cell("train", "LoRA r8 q_proj", extra={"tokens": write_len + read_len,
                                                           "trainable": sum(p.numel() for p in lora_model.parameters()
                                                                            if p.requires_grad)})}
    for variant in variants:
        model, dm, opt, step = deltamem_step_fn(variant)
        step()  # warm-up (compiles the scan)
        # the gradient must really cross the state into the write pass
        dm.reset()
        model(input_ids=write_ids, use_cache=False, logits_to_keep=1)
        with dm.writes(False):
            loss_of(model(input_ids=read_ids, use_cache=False).logits).backward()
        k_grad = sum(float(lay.memory_k_proj.grad.norm()) for lay in dm.layers.values())
        opt.zero_grad(set_to_none=True)
        steps[variant] = step
        cells[variant] = Cell("train", f"deltamem_{variant}", extra={"write": write_len, "read": read_len,
                                                                     "trainable": dm.num_parameters(),
                                                                     "grad_norm_memory_k_proj": k_grad})
    lora_step()  # warm-up
    for _ in range(reps):  # interleaved, so drift hits every variant alike
        for key, step in steps.items():
            dt, fc = timed(step)
            cells[key].times_s.append(dt)
            cells[key].foreign_cores.append(fc)
    return list(cells.values())


def _locomo_history_and_questions(tokenizer: Any, n_questions: int) -> tuple[list[int], list[list[int]]]:
    """A long real dialogue (LoCoMo conversations joined as ``speaker: text`` lines) and chat-rendered
    questions about its start."""
    from tasks.locomo.task import PACKAGED_DATA

    with open(PACKAGED_DATA) as f:
        data = json.load(f)
    lines, questions = [], []
    for sample in data:
        conv = sample["conversation"]
        sessions = sorted((k for k in conv if k.startswith("session_") and k.count("_") == 1),
                          key=lambda k: int(k.split("_")[1]))
        for key in sessions:
            lines += [f"{turn['speaker']}: {turn['text']}" for turn in conv[key]]
        questions += [q["question"] for q in sample["qa"] if q.get("category") in (1, 2, 3, 4)]
    history = tokenizer("\n".join(lines), add_special_tokens=False)["input_ids"]
    asked = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                           tokenize=True) for q in questions[:n_questions]]
    asked = [list(a["input_ids"]) if isinstance(a, dict) or hasattr(a, "keys") else list(a) for a in asked]
    return history, asked


def part_protocol(models: dict[str, torch.nn.Module], tokenizer: Any, lengths: list[int], n_questions: int,
                  new_tokens: int, reps: int) -> list[Cell]:
    """Ingest once, then answer a batch of questions; exactly ``new_tokens`` per answer (no stop token), so
    both methods decode the same amount of text."""
    from harness.generation import generate_batch, prefill_prefix
    from harness.types import GenerationSettings
    from methods.deltamem.api import write_tokens
    from methods.deltamem.method import _StateRows

    history, asked = _locomo_history_and_questions(tokenizer, n_questions)
    if len(history) < max(lengths):
        raise ValueError(f"the LoCoMo dialogue has only {len(history)} tokens, fewer than {max(lengths)}")
    settings = GenerationSettings(max_new_tokens=new_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    dm_model = models["deltamem_msw"]
    dm = dm_model._deltamem

    def vanilla(hist: list[int]) -> tuple[float, float]:
        t0 = time.perf_counter()
        with torch.no_grad():
            prefix = prefill_prefix(models["bare"], hist)
        t1 = time.perf_counter()
        generate_batch(models["bare"], asked, settings, stop_ids=set(), pad_id=pad, prefix=prefix)
        return t1 - t0, time.perf_counter() - t1

    def memory(hist: list[int]) -> tuple[float, float]:
        t0 = time.perf_counter()
        dm.reset()
        with torch.no_grad():
            write_tokens(dm, hist)
        snap = dm.snapshot()
        t1 = time.perf_counter()
        with dm.writes(False):
            generate_batch(dm_model, asked, settings, stop_ids=set(), pad_id=pad, hooks=[_StateRows(dm)])
        dm.restore(snap)
        return t1 - t0, time.perf_counter() - t1

    cells: dict[tuple[str, int], Cell] = {}
    runs = (("vanilla, history in prompt", vanilla), ("δ-mem MSW, history in state", memory))
    for rep in range(reps + 1):  # rep 0 warms up
        for length in lengths:
            hist = history[:length]
            for name, fn in runs:
                s0 = _cpu_snapshot()
                ingest_s, answer_s = fn(hist)
                fc = _foreign(s0, _cpu_snapshot())
                if rep == 0:
                    continue
                cell = cells.setdefault((name, length), Cell("protocol", name, extra={
                    "history_tokens": length, "questions": len(asked), "new_tokens": new_tokens,
                    "ingest_s": []}))
                cell.times_s.append(answer_s / len(asked))
                cell.extra["ingest_s"].append(ingest_s)
                cell.foreign_cores.append(fc)
        print(f"  # protocol rep {rep}{' (warm-up)' if rep == 0 else ''} done", flush=True)
    return list(cells.values())


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="prefill,decode,overhead,scan,train")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    ap.add_argument("--prefill-len", type=int, default=2048)
    ap.add_argument("--decode-prompt", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=64)
    ap.add_argument("--scan-lens", default="512,2048,8192")
    ap.add_argument("--write-len", type=int, default=1024)
    ap.add_argument("--read-len", type=int, default=256)
    ap.add_argument("--history-lens", default="1024,4096,8000", help="protocol part (8,000 leaves the "
                    "vanilla prompt room for the question and answer in SmolLM2's 8,192 window)")
    ap.add_argument("--questions", type=int, default=8)
    ap.add_argument("--answer-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="write every cell as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    parts = args.parts.split(",")
    import transformers

    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, threads "
          f"{torch.get_num_threads()}, attn {args.attn}", flush=True)
    all_cells: list[Cell] = []
    bare = load_smollm2(args.attn) if {"prefill", "decode", "overhead", "train", "protocol"} & set(parts) else None
    if {"prefill", "decode", "overhead", "protocol"} & set(parts):
        models = deltamem_models(bare)
        if "prefill" in parts:
            cells = part_prefill(models, args.prefill_len, args.reps)
            print(f"\nprefill {args.prefill_len} tokens (s, median of {args.reps}):")
            for c in cells:
                print(c.row(cells[0]))
            all_cells += cells
        if "decode" in parts:
            cells = part_decode(models, args.decode_prompt, args.decode_tokens, args.reps)
            print(f"\ndecode {args.decode_tokens} tokens after {args.decode_prompt} (ms/token, median of {args.reps}):")
            for c in cells:
                print(c.row(cells[0], per="ms/tok", scale=1e3))
            all_cells += cells
        if "overhead" in parts:
            cells = part_overhead(models, args.prefill_len, args.decode_prompt, args.decode_tokens)
            print("\nδ-mem share of the same calls (wrapper time minus base projections; load-independent):")
            for c in cells:
                print(f"  {c.variant:<22} total {c.median:8.3f} s   δ-mem {c.extra['deltamem_s']:7.4f} s   "
                      f"share {100 * c.extra['share']:5.2f} %   implied speed vs bare "
                      f"{c.extra['implied_speed_vs_bare']:.3f}×")
            all_cells += cells
        if "protocol" in parts:
            from transformers import AutoTokenizer

            from harness.embedded import ensure_embedded

            tok = AutoTokenizer.from_pretrained(str(ensure_embedded("smollm2-135m-instruct")))
            lengths = [int(x) for x in args.history_lens.split(",")]
            cells = part_protocol(models, tok, lengths, args.questions, args.answer_tokens, args.reps)
            print(f"\nanswer time per question ({args.questions} questions batched, {args.answer_tokens} new tokens "
                  f"each; median of {args.reps}; ingest = one-off per history):")
            for length in lengths:
                pair = [c for c in cells if c.extra["history_tokens"] == length]
                for c in pair:
                    print(f"  history {length:>5}  {c.variant:<28} {c.median:8.3f} s/question   ingest "
                          f"{statistics.median(c.extra['ingest_s']):7.2f} s   foreign≤{max(c.foreign_cores):.2f}")
                print(f"  history {length:>5}  δ-mem answer speed vs vanilla: {pair[0].median / pair[1].median:.2f}×")
            all_cells += cells
        del models
    if "scan" in parts:
        cells = part_scan([int(x) for x in args.scan_lens.split(",")], args.reps)
        print("\nscan, one layer, B=1, r=8, fp32 (ms):")
        for t in sorted({c.extra["tokens"] for c in cells}):
            for mode in ("fwd", "fwd+bwd"):
                fast, chunked, slow = (next(c for c in cells if c.extra["tokens"] == t and c.variant == f"{v} {mode}")
                                       for v in ("numba", "chunked", "per-token loop"))
                print(f"  T={t:<5} {mode:<8} numba {fast.median * 1e3:9.3f}   chunked {chunked.median * 1e3:9.2f}   "
                      f"loop {slow.median * 1e3:10.1f}   numba speed-up {slow.median / fast.median:8.0f}×   "
                      f"chunked speed-up {slow.median / chunked.median:6.1f}×")
        all_cells += cells
    if "train" in parts:
        cells = part_train(bare, args.write_len, args.read_len, args.reps)
        print(f"\ntraining step (s, median of {args.reps}): write {args.write_len} + read {args.read_len}")
        print(cells[0].row(None))
        for cell in cells[1:]:
            print(cell.row(None) + f"  time vs LoRA: {cell.median / cells[0].median:.3f}×")
        all_cells += cells
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(c) for c in all_cells], f, indent=1)


if __name__ == "__main__":
    main()
