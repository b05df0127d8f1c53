"""The GPU check, prepared to run in one short go on a lent accelerator (no weights, no network needed).

    python -m benchmarks.gpu_check [--out DIR] [--shapes qwen3_4b,smollm2_135m] [--tiny]

With random-initialised models of real shapes built from configs (Qwen3-4B, SmolLM2-135M), bf16 and sdpa on CUDA:
  * prefill tokens/s at 2k / 8k / 32k tokens (``logits_to_keep=1``) and peak memory, bare vs δ-mem TSW vs MSW;
  * decode tokens/s at batch 1 and 32 (32 new tokens after a 512-token prompt), bare vs δ-mem TSW vs MSW;
  * one training step of δ-mem (write 8,192 + read 512, backward, AdamW) vs a rank-8 LoRA step on the same tokens;
  * the chunked scan (δ-mem's CUDA path) against the per-token loop in fp32: outputs, state and every gradient.
Variants are timed in interleaved rounds after a warm-up, with CUDA synchronised around each timing. One JSON
with the ratios is printed and written to ``$OUT/gpu_check.json`` (or ``--out``). ``--tiny`` runs the same code on
a 2-layer model on CPU in seconds: the test suite runs it so the script is known to work before a GPU is at hand.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

SHAPES = {
    "qwen3_4b": dict(kind="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                     max_position_embeddings=40960),
    "smollm2_135m": dict(kind="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                         max_position_embeddings=40960),
    "tiny": dict(kind="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=4096),
}


def build(shape: str, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    spec = dict(SHAPES[shape])
    kind = spec.pop("kind")
    cfg = (Qwen3Config if kind == "qwen3" else LlamaConfig)(**spec, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device(device):
        model = (Qwen3ForCausalLM if kind == "qwen3" else LlamaForCausalLM)(cfg).to(dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


class Variants:
    """The bare model and δ-mem TSW / MSW attached to it in turn (one copy of the weights)."""

    def __init__(self, model):
        self.model = model

    def run(self, variant: str, fn: Callable[[], Any]):
        from methods.deltamem import DeltaMemConfig, attach

        if variant == "bare":
            return fn()
        torch.manual_seed(1)
        cfg = getattr(DeltaMemConfig, variant.split("_")[1])(output_init="random")
        dm = attach(self.model, cfg)
        for p in dm.parameters(trainable_only=False):
            p.data = p.data.to(next(self.model.parameters()).dtype)
        try:
            return fn()
        finally:
            dm.detach()


VARIANTS = ("bare", "deltamem_tsw", "deltamem_msw")


def prefill(var: Variants, device, lengths: list[int], rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    vocab = var.model.config.vocab_size
    for n in lengths:
        ids = torch.randint(0, vocab, (1, n), device=device, generator=torch.Generator(device).manual_seed(n))

        def step():
            with torch.no_grad():
                var.model(input_ids=ids, use_cache=False, logits_to_keep=1)

        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        peaks: dict[str, float | None] = {}
        for r in range(rounds + 1):
            for v in VARIANTS:
                peak_reset(device)
                dt = var.run(v, lambda: timed(step, device))
                peaks[v] = peak_gb(device)
                if r:  # round 0 warms up (kernels, the compiled scan)
                    times[v].append(dt)
        med = {v: statistics.median(t) for v, t in times.items()}
        out[str(n)] = {"tokens_per_s": {v: round(n / t, 1) for v, t in med.items()},
                       "speed_vs_bare": {v: round(med["bare"] / t, 3) for v, t in med.items()}, "peak_gb": peaks}
    return out


def decode(var: Variants, device, batches: list[int], prompt: int, new: int, rounds: int) -> dict[str, Any]:
    from transformers import DynamicCache

    out: dict[str, Any] = {}
    vocab = var.model.config.vocab_size
    for b in batches:
        ids = torch.randint(0, vocab, (b, prompt), device=device, generator=torch.Generator(device).manual_seed(b))

        def gen():
            with torch.no_grad():
                cache = DynamicCache(config=var.model.config)
                tok = var.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1:]
                sync(device)
                t0 = time.perf_counter()
                for _ in range(new):
                    tok = var.model(input_ids=tok.argmax(-1), past_key_values=cache, use_cache=True).logits[:, -1:]
                sync(device)
                return time.perf_counter() - t0

        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(rounds + 1):
            for v in VARIANTS:
                dt = var.run(v, gen)
                if r:
                    times[v].append(dt)
        med = {v: statistics.median(t) for v, t in times.items()}
        out[str(b)] = {"tokens_per_s": {v: round(b * new / t, 1) for v, t in med.items()},
                       "speed_vs_bare": {v: round(med["bare"] / t, 3) for v, t in med.items()}}
    return out


def train_step(model, device, write: int, read: int, rounds: int) -> dict[str, Any]:
    """δ-mem (write pass, read pass with writes off, AdamW) against a rank-8 LoRA on q_proj, same tokens."""
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    from methods.deltamem import DeltaMemConfig, attach

    vocab = model.config.vocab_size
    g = torch.Generator(device).manual_seed(7)
    write_ids = torch.randint(0, vocab, (1, write), device=device, generator=g)
    read_ids = torch.randint(0, vocab, (1, read), device=device, generator=g)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else \
        (lambda: torch.autocast("cpu", enabled=False))

    def loss_of(logits):
        return F.cross_entropy(logits[0, :-1].float(), read_ids[0, 1:])

    out: dict[str, Any] = {}
    times: dict[str, list[float]] = {}
    for variant in ("tsw", "msw"):
        torch.manual_seed(1)
        dm = attach(model, getattr(DeltaMemConfig, variant)())
        for p in dm.parameters(trainable_only=False):
            p.data = p.data.float()  # fp32 master weights, bf16 autocast: the trainer's recipe
        opt = torch.optim.AdamW(dm.parameters(), lr=2e-4)

        def step():
            dm.reset()
            with autocast():
                model(input_ids=write_ids, use_cache=False, logits_to_keep=1)
                with dm.writes(False):
                    loss = loss_of(model(input_ids=read_ids, use_cache=False, logits_to_keep=read).logits)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            dm.reset()

        peak_reset(device)
        times[variant] = [timed(step, device) for _ in range(rounds + 1)][1:]
        out[f"deltamem_{variant}_peak_gb"] = peak_gb(device)
        out[f"deltamem_{variant}_trainable"] = dm.num_parameters()
        dm.detach()
    lora = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj"], lora_dropout=0.0))
    for p in lora.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=2e-4)
    full = torch.cat([write_ids, read_ids], 1)

    def lora_step():
        with autocast():
            loss = loss_of(lora(input_ids=full, use_cache=False, logits_to_keep=read).logits)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    peak_reset(device)
    times["lora_r8"] = [timed(lora_step, device) for _ in range(rounds + 1)][1:]
    out["lora_r8_peak_gb"] = peak_gb(device)
    lora.unload()
    med = {k: statistics.median(v) for k, v in times.items()}
    out.update({"seconds": {k: round(v, 4) for k, v in med.items()},
                "time_vs_lora": {k: round(v / med["lora_r8"], 3) for k, v in med.items()},
                "write": write, "read": read})
    return out


def scan_equivalence(device, lengths: list[int]) -> dict[str, Any]:
    """The chunked scan against the per-token loop on ``device``, fp32: outputs, final state and all gradients."""
    from methods.deltamem.scan import scan_chunked, scan_naive, unit

    worst = 0.0
    for t in lengths:
        g = torch.Generator().manual_seed(t)
        q = unit(torch.tanh(torch.randn(3, t, 8, generator=g)))
        k = unit(torch.tanh(torch.randn(3, t, 8, generator=g)))
        v = torch.randn(3, t, 8, generator=g)
        beta = torch.sigmoid(torch.randn(3, t, 8, generator=g) - 1.0)
        state = 0.3 * torch.randn(3, 8, 8, generator=g)
        weights = (torch.randn(3, t, 8, generator=g), torch.randn(3, 8, 8, generator=g))
        results = []
        for fn in (scan_chunked, scan_naive):
            leaves = [x.to(device).clone().requires_grad_(True) for x in (q, k, v, beta, state)]
            reads, final = fn(*leaves[:4], state=leaves[4])
            ((reads * weights[0].to(device)).sum() + (final * weights[1].to(device)).sum()).backward()
            results.append([reads.detach(), final.detach(), *[x.grad for x in leaves]])
        worst = max(worst, max(float((a.double() - b.double()).abs().max()) for a, b in zip(*results)))
    return {"lengths": lengths, "fp32_max_abs_diff": worst, "device": str(device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="qwen3_4b,smollm2_135m")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model on CPU: checks the script in seconds")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = ["tiny"] if args.tiny else args.shapes.split(",")
    lengths = [64, 256] if args.tiny else [2048, 8192, 32768]
    batches = [1, 4] if args.tiny else [1, 32]
    write, read = (64, 32) if args.tiny else (8192, 512)
    started = time.time()
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                              "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__, "models": {}}
    result["scan"] = scan_equivalence(device, [1, 7, 64, 200, 1000] if not args.tiny else [1, 7, 64])
    print(json.dumps({"scan": result["scan"]}), flush=True)
    for shape in shapes:
        model = build(shape, device, dtype)
        var = Variants(model)
        part: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters())}
        part["prefill"] = prefill(var, device, lengths, args.rounds)
        part["decode"] = decode(var, device, batches, 64 if args.tiny else 512, 8 if args.tiny else 32, args.rounds)
        part["train_step"] = train_step(model, device, write, read, args.rounds)
        result["models"][shape] = part
        print(json.dumps({shape: part}), flush=True)
        del model, var
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["wall_s"] = round(time.time() - started, 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
