"""The δ-mem training loop (deltamem.md §7.3–7.4): history-removed episodes, frozen backbone.

One step = ``grad_accum`` episodes, each:

    reset state → write pass (writes on, SSW message ids, autograd) → read pass (writes off)
    → cross-entropy on the target tokens → backward through the read pass, the state and the write pass

The loss of an accumulation group is normalised by the group's total number of target tokens (the HF
causal-LM loss with ``num_items_in_batch``), plus an optional β-sparsity term computed, as in the
reference, from the read pass's gates: ``w · mean_layers((mean_{t,i} β − target)²)``.
AdamW (β 0.9/0.999, ε 1e-8, weight decay 0), cosine schedule to 0 with ``ceil(0.1·steps)`` warm-up steps,
clipping at 1.0, bf16 autocast on CUDA with fp32 δ-mem weights (the reference's ZeRO-2 fp32 master copy).

Everything a step depends on is either in a checkpoint (adapter, optimizer, scheduler, position, RNG) or
a pure function of the config (episode order), so ``resume=true`` continues bit-exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pickle
import random
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from harness.errors import ConfigError, HarnessError
from harness.training.data import EpisodeOrder, TrainingData
from harness.training.episodes import IGNORE, Episode, TokenizedEpisode

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.pt"
LOG_FILE = "train_log.jsonl"
CURVE_FILE = "loss_curve.png"
SUMMARY_FILE = "training.json"
CONFIG_FILE = "train_config.yaml"


@dataclass(frozen=True)
class TrainSettings:
    """What a run computes (all of it is checked on resume)."""

    write_length: int = 8192
    read_length: int = 512
    write_chunk: int | None = None   # write-pass tokens per model call (state carried); None: the backbone window
    epochs: float = 1.0
    max_steps: int | None = None     # overrides epochs when set
    grad_accum: int = 4
    lr: float = 2e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    sparsity_weight: float = 0.0
    sparsity_target: float = 0.05
    precision: str = "auto"          # auto: bf16 autocast on CUDA, fp32 on CPU | fp32 | bf16
    shuffle: bool = True

    def __post_init__(self) -> None:
        if self.write_length < 1 or self.read_length < 2:
            raise ConfigError(f"train.write_length >= 1 and train.read_length >= 2 required "
                              f"(got {self.write_length}, {self.read_length})")
        if self.grad_accum < 1:
            raise ConfigError(f"train.grad_accum must be >= 1, got {self.grad_accum}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"train.max_steps must be >= 1 or null, got {self.max_steps}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"train.precision={self.precision!r}: expected auto, fp32 or bf16")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any]) -> "TrainSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(node) - known)
        if unknown:
            raise ConfigError(f"train: unknown keys {unknown}; known: {sorted(known)}")
        kw = dict(node)
        if "adam_betas" in kw:
            kw["adam_betas"] = tuple(float(x) for x in kw["adam_betas"])
        return cls(**kw)

    def total_steps(self, n_episodes: int, world_size: int = 1) -> int:
        """Optimizer steps; one step takes ``grad_accum`` episodes on each of ``world_size`` processes."""
        if self.max_steps is not None:
            return int(self.max_steps)
        return max(1, math.ceil(n_episodes * self.epochs / (self.grad_accum * world_size)))

    def warmup_steps(self, total: int) -> int:
        return math.ceil(self.warmup_ratio * total)


@dataclass(frozen=True)
class RunControls:
    """How this invocation runs; never changes what is computed."""

    save_every: int = 50
    keep_checkpoints: int = 2
    stop_after_steps: int | None = None  # steps in this invocation, then checkpoint and exit (resume later)
    time_limit_min: float | None = None  # same, by wall clock
    progress: bool = True
    log_every: int = 1
    threads: int | None = None           # torch intra-op threads; None keeps torch's default
    eval_every: int | None = 50          # held-out target CE (memory vs no memory) every N steps and at the end
    eval_episodes: int = 32              # fixed held-out subset for that (proportional per source)


# ------------------------------------------------------------------------------------------ δ-mem setup
def deltamem_config_from_method(method: Mapping[str, Any]):
    """The :class:`DeltaMemConfig` a ``method`` config describes.

    Reads ``variant`` (tsw | ssw | msw; default: the suffix of ``name``) and any DeltaMemConfig field, from a
    ``deltamem`` sub-node if the method has one, else from the method node itself.
    """
    from methods.deltamem import DeltaMemConfig

    node = dict(method.get("deltamem") or method)
    name = str(method.get("name", ""))
    variant = str(node.get("variant") or method.get("variant") or name.rsplit("_", 1)[-1]).lower()
    presets = {"tsw": DeltaMemConfig.tsw, "ssw": DeltaMemConfig.ssw, "msw": DeltaMemConfig.msw}
    if variant not in presets:
        raise ConfigError(f"method={name or '?'} is not a δ-mem method (variant {variant!r}; expected tsw, ssw or msw)")
    fields = {f.name for f in dataclasses.fields(DeltaMemConfig)} - {"extra"}
    kw = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in node.items()
          if k in fields and v is not None}
    try:
        return presets[variant](**kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"method={name}: {exc}") from exc


def _autocast(device: torch.device, precision: str, model_dtype: torch.dtype):
    use_bf16 = precision == "bf16" or (precision == "auto" and (device.type == "cuda" or model_dtype != torch.float32))
    if not use_bf16:
        if model_dtype != torch.float32:
            raise ConfigError(f"train.precision=fp32 needs an fp32 backbone (backbone.dtype is {model_dtype})")
        return contextlib.nullcontext, "fp32"
    return (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)), "bf16"


class BetaProbe:
    """Mean write gate β of each δ-mem layer on the last forward (for the sparsity regulariser)."""

    def __init__(self, model: torch.nn.Module) -> None:
        from methods.deltamem.surgery import DeltaMemProjection

        self.means: list[torch.Tensor] = []
        self.active = False
        self._handles = []
        for module in model.modules():
            if isinstance(module, DeltaMemProjection) and module.head == "q":
                self._handles.append(module.register_forward_hook(self._hook(module.deltamem_layer)))

    def _hook(self, layer):
        def fn(module, args, output):
            if self.active:
                x = args[0]
                beta = torch.sigmoid(F.linear(x.float(), layer.beta_proj.float()) + layer.beta_bias.float())
                self.means.append(beta.mean())
        return fn

    @contextlib.contextmanager
    def collect(self, enabled: bool):
        self.means = []
        self.active = enabled
        try:
            yield
        finally:
            self.active = False

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


# ------------------------------------------------------------------------------------------ one episode
@dataclass
class EpisodeResult:
    ce_sum: float
    sparsity: float
    target_tokens: int
    write_tokens: int
    read_tokens: int
    kl_sum: float | None = None  # distilled episodes: KL(bare backbone ‖ model) summed over the target positions

    @property
    def objective_sum(self) -> float:
        return self.ce_sum if self.kl_sum is None else self.kl_sum


def _model_call(model, ids: torch.Tensor, keep):
    try:
        return model(input_ids=ids, use_cache=False, logits_to_keep=keep)
    except TypeError:  # families without logits_to_keep: full logits
        out = model(input_ids=ids, use_cache=False)
        if isinstance(keep, torch.Tensor):
            out.logits = out.logits[:, keep]
        return out


@contextlib.contextmanager
def _detached_memory_inputs(model):
    """Cut the autograd graph between the backbone and δ-mem's write projections for one call.

    Used for an SSW write pass made in a single call from an empty state: its reads are S₀q = 0, so the
    backbone's hidden states do not depend on any δ-mem parameter and the loss reaches the parameters only
    through ``W·h`` of the written segment means. Detaching ``h`` gives exactly the same gradients without
    back-propagating through (or keeping the activations of) the backbone's write pass.
    """
    from methods.deltamem.surgery import DeltaMemProjection

    handles = [m.register_forward_pre_hook(lambda mod, args: (args[0].detach(), *args[1:]))
               for m in model.modules() if isinstance(m, DeltaMemProjection) and m.head == "q"]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def episode_backward(model, dm, ep: TokenizedEpisode, *, device: torch.device, write_chunk: int,
                     group_target_tokens: int, group_size: int, sparsity_weight: float, sparsity_target: float,
                     probe: BetaProbe | None, autocast: Callable[[], Any]) -> EpisodeResult:
    """Write, read, loss, backward for one episode; gradients accumulate into the δ-mem parameters.

    The loss is the CE of the target tokens, or for a distilled episode (``ep.distill``) the KL divergence
    from the bare backbone's next-token distribution at the same positions: the adapter is taught to leave
    the backbone's whole distribution alone there, not to sharpen it onto one reply. An online episode
    (``ep.online``) has no write pass: its read runs with writes on from the empty state, token by token for
    every variant, because the context protocol sets no segment ids (SSW falls back to token writes there,
    as in the reference suite)."""
    segmented = dm.config.write_granularity != "token"
    dm.reset()
    write = torch.tensor(ep.write_ids, dtype=torch.long, device=device).unsqueeze(0)
    seg = torch.tensor(ep.write_message_ids, dtype=torch.long, device=device).unsqueeze(0)
    # SSW in one call reads only the empty state: the backbone's write pass needs no backward (see above)
    shortcut = segmented and write.shape[1] <= write_chunk
    bare_logp = None
    if ep.distill:  # an empty state is inert: this read is the bare backbone's
        labels = torch.tensor(ep.labels, dtype=torch.long, device=device)
        positions = (labels[1:] != IGNORE).nonzero().squeeze(-1)
        read = torch.tensor(ep.read_ids, dtype=torch.long, device=device).unsqueeze(0)
        with torch.no_grad(), autocast(), dm.writes(False):
            bare_logp = F.log_softmax(_model_call(model, read, positions).logits[0].float(), dim=-1)
    with autocast():
        if not ep.online:
            with dm.writes(True), (_detached_memory_inputs(model) if shortcut else contextlib.nullcontext()):
                for start in range(0, write.shape[1], write_chunk):
                    if segmented:
                        dm.set_segment_ids(seg[:, start:start + write_chunk])
                    _model_call(model, write[:, start:start + write_chunk], 1)
        labels = torch.tensor(ep.labels, dtype=torch.long, device=device)
        positions = (labels[1:] != IGNORE).nonzero().squeeze(-1)  # logits at t predict token t+1
        read = torch.tensor(ep.read_ids, dtype=torch.long, device=device).unsqueeze(0)
        # an online episode is read as the context protocol prefills: each position reads what its prefix wrote
        with dm.writes(ep.online), (probe.collect(sparsity_weight > 0) if probe else contextlib.nullcontext()):
            out = _model_call(model, read, positions)
        logits = out.logits[0].float()
        ce_sum = F.cross_entropy(logits, labels[positions + 1], reduction="sum")
        kl_sum = None
        if bare_logp is not None:
            kl_sum = F.kl_div(F.log_softmax(logits, dim=-1), bare_logp, log_target=True, reduction="sum")
        loss = (ce_sum if kl_sum is None else kl_sum) / max(1, group_target_tokens)
        sparsity = torch.zeros((), device=device)
        if sparsity_weight > 0 and probe is not None and probe.means:
            sparsity = torch.stack([(m - sparsity_target) ** 2 for m in probe.means]).mean()
            loss = loss + sparsity_weight * sparsity / group_size
    loss.backward()
    dm.reset()  # drop the graph-holding state tensors
    return EpisodeResult(ce_sum=float(ce_sum.detach()), sparsity=float(sparsity.detach()),
                         target_tokens=int(positions.numel()), write_tokens=0 if ep.online else len(ep.write_ids),
                         read_tokens=len(ep.read_ids), kl_sum=None if kl_sum is None else float(kl_sum.detach()))


# ------------------------------------------------------------------------------------------ checkpoints
def _rng_state() -> dict[str, Any]:
    """The RNG streams as tensors and plain ints/floats, so the state file loads with ``weights_only=True``."""
    import numpy as np

    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state = {"python": [int(version), list(mt), gauss],
             "numpy": [str(kind), torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_state(path: Path) -> dict[str, Any]:
    """A checkpoint's trainer state, unpickled with ``weights_only=True`` (a full unpickle could run any code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise HarnessError(f"{path}: written by an older version of the harness (or not by it) as a full pickle, "
                           f"which cannot be loaded safely; delete {path.parent.parent} and train again, or resume "
                           "with the harness version that wrote it") from exc


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    root = out_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ------------------------------------------------------------------------------------------ the trainer
class Trainer:
    def __init__(self, *, backbone, method_cfg: Mapping[str, Any], data: TrainingData, settings: TrainSettings,
                 controls: RunControls, out_dir: Path, seed: int, semantic_config: dict[str, Any],
                 data_name: str = "") -> None:
        from harness.training.learner import make_learner

        self.backbone = backbone
        self.model = backbone.model
        self.device = backbone.device
        self.data = data
        self.settings = settings
        self.controls = controls
        self.out_dir = Path(out_dir)
        self.seed = seed
        self.semantic = semantic_config
        self.data_name = data_name
        from harness.training.data_parallel import DataParallel

        self.dp = DataParallel()
        self.learner = make_learner(backbone, method_cfg, settings)
        self.params = self.learner.parameters()
        self.autocast, self.precision = _autocast(self.device, settings.precision, backbone.dtype)
        self.learner.autocast = self.autocast
        self.order = EpisodeOrder(len(data.train), seed=seed, shuffle=settings.shuffle)
        self.total_steps = settings.total_steps(len(data.train), self.dp.world)
        self.warmup = settings.warmup_steps(self.total_steps)
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.lr, betas=settings.adam_betas,
                                           eps=settings.adam_eps, weight_decay=settings.weight_decay,
                                           **({"fused": True} if fused else {}))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.eval_donors: list[int] | None = None
        self.eval_set = self._eval_set()
        self.eval_floor: list[float] | None = None
        self.step = 0
        self.position = 0
        self.elapsed = 0.0
        self.tokens = 0

    def _lr_factor(self, step: int) -> float:
        """Linear warm-up then cosine to 0 (transformers' get_cosine_schedule_with_warmup)."""
        if step < self.warmup:
            return step / max(1, self.warmup)
        progress = (step - self.warmup) / max(1, self.total_steps - self.warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    # -------------------------------------------------------------------------------- held-out loss
    def _eval_set(self) -> list[Episode]:
        from harness.training.heldout import other_history_donors, select

        if not self.controls.eval_every or not self.data.heldout:
            return []
        picked = select(self.data.heldout, self.controls.eval_episodes, seed=self.seed)
        groups = {f"{e.source}/{e.group}" for e in picked}
        self.eval_donors = other_history_donors(picked) if len(groups) > 1 else None
        return picked

    def heldout_ces(self, *, bare: bool = False, other_history: bool = False) -> list[float]:
        """Target CE of every episode of the fixed held-out subset: as trained, ``bare`` (the backbone without
        what is trained: for δ-mem an empty state, i.e. the question only), or with ``other_history``, the
        history of another held-out document in place of the episode's own: the gap between the first and the
        last is what the method recalls, as opposed to what it learned of the answers' form."""
        was_training = self.model.training
        self.model.eval()
        try:
            return [self.learner.heldout_ce(ep, bare=bare,
                                            history_from=self.eval_set[self.eval_donors[i]] if other_history else None)
                    for i, ep in enumerate(self.eval_set)]
        finally:
            self.model.train(was_training)

    def heldout_ce(self, with_memory: bool = True, other_history: bool = False) -> float:
        values = self.heldout_ces(bare=not with_memory, other_history=other_history)
        return sum(values) / len(values)

    def eval_row(self) -> dict[str, Any]:
        if self.eval_floor is None:
            self.eval_floor = self.heldout_ces(bare=True)
        t0 = time.perf_counter()
        ces = self.heldout_ces()
        other = self.heldout_ce(other_history=True) if self.eval_donors is not None else None
        return {"kind": "eval", "step": self.step, "heldout_ce": sum(ces) / len(ces),
                "heldout_ce_nocontext": sum(self.eval_floor) / len(self.eval_floor),
                "heldout_ce_other_history": other, "heldout_episodes": len(self.eval_set),
                "heldout_ce_per_episode": [round(x, 5) for x in ces],
                "heldout_ce_bare_per_episode": [round(x, 5) for x in self.eval_floor],
                "seconds": round(time.perf_counter() - t0, 2)}

    # -------------------------------------------------------------------------------- state
    def _state(self) -> dict[str, Any]:
        return {"step": self.step, "position": self.position, "elapsed_s": self.elapsed, "tokens": self.tokens,
                "total_steps": self.total_steps, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": _rng_state(),
                "data_fingerprint": self.data.fingerprint, "config": self.semantic}

    def save_checkpoint(self) -> Path:
        root = self.out_dir / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{self.step:06d}"
        tmp = root / f".tmp-step-{self.step:06d}"
        if tmp.exists():
            shutil.rmtree(tmp)
        self.learner.save(tmp / "adapter")
        torch.save(self._state(), tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)  # a checkpoint is either complete or absent
        for old in checkpoint_dirs(self.out_dir)[:-max(1, self.controls.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: Path) -> None:
        state = read_state(path / STATE_FILE)
        if state["data_fingerprint"] != self.data.fingerprint:
            raise HarnessError(f"{path}: the training data changed since this checkpoint (fingerprint "
                               f"{state['data_fingerprint']} then, {self.data.fingerprint} now); cannot resume exactly")
        diff = _config_diff(state["config"], self.semantic)
        if diff:
            raise HarnessError(f"{path}: the config changed since this checkpoint ({'; '.join(diff[:5])}); "
                               "resume needs the same config (only run.* may change)")
        self.learner.load(path / "adapter")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step, self.position = int(state["step"]), int(state["position"])
        self.elapsed, self.tokens = float(state["elapsed_s"]), int(state["tokens"])

    # -------------------------------------------------------------------------------- loop
    def _episode(self, position: int) -> TokenizedEpisode:
        return self.learner.tokenize(self.data.train[self.order[position]])

    def train_step(self) -> dict[str, Any]:
        s = self.settings
        t0 = time.perf_counter()
        c0 = time.process_time()
        # the global group, as one process would take it; this process trains on its slice of it
        group = [self._episode(self.position + i) for i in range(s.grad_accum * self.dp.world)]
        n_target = sum(max(0, sum(1 for x in ep.labels[1:] if x != IGNORE)) for ep in group)
        mine = group[self.dp.rank * s.grad_accum:(self.dp.rank + 1) * s.grad_accum]
        results = [self.learner.backward(ep, group_target_tokens=n_target, group_size=len(group)) for ep in mine]
        self.dp.sum_gradients(self.params)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, s.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.position += len(group)
        seconds = time.perf_counter() - t0
        self.elapsed += seconds
        tokens = sum(r.write_tokens + r.read_tokens for r in results)
        ce_sum, objective_sum, tokens = self.dp.sum([sum(r.ce_sum for r in results),
                                                     sum(r.objective_sum for r in results), float(tokens)])
        tokens = int(tokens)
        self.tokens += tokens
        ce = ce_sum / max(1, n_target)
        objective = objective_sum / max(1, n_target)
        distilled = [r for r in results if r.kl_sum is not None]
        kl = sum(r.kl_sum for r in distilled) / max(1, sum(r.target_tokens for r in distilled)) if distilled else None
        sparsity = sum(r.sparsity for r in results) / len(results)
        return {"kind": "train", "step": self.step, "position": self.position, "epoch": round(self.position / len(self.data.train), 4),
                "loss": objective + s.sparsity_weight * sparsity, "ce": ce, "kl_distilled": kl,
                "distilled_episodes": len(distilled), "sparsity": sparsity, "lr": lr,
                "grad_norm": float(grad_norm), "target_tokens": n_target, "tokens": tokens,
                "processes": self.dp.world, "write_tokens": sum(r.write_tokens for r in results),
                "write_dropped": sum(ep.write_dropped for ep in group),
                "read_dropped": sum(ep.read_dropped for ep in group),
                "seconds": round(seconds, 4), "cpu_seconds": round(time.process_time() - c0, 4),
                "tokens_per_s": round(tokens / seconds, 1),
                "elapsed_s": round(self.elapsed, 2), "peak_mem_mb": round(_peak_memory_mb(self.device), 1)}

    def run(self, *, resume: bool) -> dict[str, Any]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.out_dir / LOG_FILE
        resume_or_start(self, log_path, resume=resume, say=lambda m: print(f"[train] {m}", file=sys.stderr))
        main = self.dp.main
        started = time.time()
        limit = self.controls.time_limit_min
        stopped = train_steps(
            self, log_path, module=self.model, desc=f"train {self.learner.label}", writes=main,
            eval_every=self.controls.eval_every if self.eval_set and main else None,
            eval_message=lambda ev: (f"[train] step {self.step}: held-out CE {ev['heldout_ce']:.4f} "
                                     f"(another's history {ev['heldout_ce_other_history'] or float('nan'):.4f}, "
                                     f"no memory {ev['heldout_ce_nocontext']:.4f}, {ev['heldout_episodes']} episodes)"),
            # every rank asks on every step: the answer is a collective, so all ranks pause together
            time_up=lambda: self.dp.any(bool(limit) and time.time() - started > 60 * (limit or 0)))
        if stopped:
            if not main:
                return {"status": "paused", "step": self.step, "total_steps": self.total_steps}
            path = self.save_checkpoint()
            plot_loss_curve(log_path, self.out_dir / CURVE_FILE)
            print(f"[train] paused at step {self.step}/{self.total_steps} ({stopped}); checkpoint {path}; "
                  "continue with resume=true", file=sys.stderr)
            return {"status": "paused", "step": self.step, "total_steps": self.total_steps}
        return self.finish()

    def finish(self) -> dict[str, Any]:
        if not self.dp.main:  # process 0 writes the weights; the others hold the same ones
            return {"status": "complete", "adapter": str(self.out_dir), "steps": self.step, "episodes": self.position,
                    "train_seconds": round(self.elapsed, 1), "last_loss_mean10": float("nan"), "rank": self.dp.rank}
        self.save_checkpoint()  # the final state, so a finished run can be extended or audited
        self.learner.save(self.out_dir)
        logged = read_log(self.out_dir / LOG_FILE)
        rows = [r for r in logged if r.get("kind", "train") == "train"]
        evals = [r for r in logged if r.get("kind") == "eval"]
        plot_loss_curve(self.out_dir / LOG_FILE, self.out_dir / CURVE_FILE)
        episodes = self.position
        summary = {
            "status": "complete",
            "adapter": str(self.out_dir),
            **{k: v for k, v in self.learner.describe().items() if k != "label"},
            "method": self.semantic.get("method", {}).get("name"),
            "steps": self.step, "episodes": episodes, "epochs": round(episodes / len(self.data.train), 4),
            "trainable_parameters": self.learner.num_parameters(),
            "precision": self.precision, "device": str(self.device), "processes": self.dp.world,
            "global_batch_episodes": self.settings.grad_accum * self.dp.world,
            "train_seconds": round(self.elapsed, 1),
            "seconds_per_episode": round(self.elapsed / max(1, episodes), 3),
            "tokens": self.tokens, "tokens_per_s": round(self.tokens / max(1e-9, self.elapsed), 1),
            "peak_mem_mb": max((r.get("peak_mem_mb", 0.0) for r in rows), default=0.0),
            "first_loss": rows[0]["loss"] if rows else None,
            "last_loss_mean10": (sum(r["loss"] for r in rows[-10:]) / len(rows[-10:])) if rows else None,
            "heldout_ce_first": evals[0]["heldout_ce"] if evals else None,
            "heldout_ce_last": evals[-1]["heldout_ce"] if evals else None,
            "heldout_ce_nocontext": evals[-1]["heldout_ce_nocontext"] if evals else None,
            "heldout_ce_other_history_last": evals[-1].get("heldout_ce_other_history") if evals else None,
            "heldout_paired": heldout_paired(evals, self.eval_set),
            "data": self.data.describe(),
            "data_name": self.data_name,
            "heldout_ids": [e.id for e in self.data.heldout],
        }
        (self.out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def close(self) -> None:
        self.learner.close()
        self.dp.close()


def heldout_paired(evals: list[dict[str, Any]], episodes: Sequence[Episode]) -> dict[str, Any] | None:
    """Held-out CE at the end against the start of training and against the bare backbone, paired per episode,
    with 95 % intervals that resample whole documents."""
    from harness.metrics import bootstrap_ci

    rows = [r for r in evals if r.get("heldout_ce_per_episode")]
    if len(rows) < 1 or not episodes:
        return None
    first, last = rows[0], rows[-1]
    groups = [f"{e.source}/{e.group}" for e in episodes]
    out: dict[str, Any] = {"episodes": len(episodes), "documents": len(set(groups)), "step_first": first["step"],
                           "step_last": last["step"]}
    for name, base in (("vs_start", first["heldout_ce_per_episode"]), ("vs_bare", last["heldout_ce_bare_per_episode"])):
        diff = [a - b for a, b in zip(last["heldout_ce_per_episode"], base)]
        lo, hi = bootstrap_ci(diff, groups)
        out[name] = {"mean_diff": sum(diff) / len(diff), "ci95": [lo, hi]}
    return out


def _config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _config_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} then, {b!r} now"]


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash
            break
    return rows


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps the checkpoint covers (a crash may have logged a few more)."""
    rows = [r for r in read_log(path) if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def plot_loss_curve(log_path: Path, png_path: Path) -> None:
    logged = read_log(log_path)
    rows = [r for r in logged if r.get("kind", "train") == "train"]
    evals = [r for r in logged if r.get("kind") == "eval"]
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    smooth, ema = [], None
    for x in loss:
        ema = x if ema is None else 0.9 * ema + 0.1 * x
        smooth.append(ema)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, loss, color="tab:blue", alpha=0.35, linewidth=1, label="loss (per step)")
    ax.plot(steps, smooth, color="tab:blue", linewidth=2, label="EMA 0.9")
    if evals:
        ax.plot([r["step"] for r in evals], [r["heldout_ce"] for r in evals], "o-", color="tab:green",
                markersize=3, label="held-out, memory")
        others = [(r["step"], r["heldout_ce_other_history"]) for r in evals if r.get("heldout_ce_other_history")]
        if others:
            ax.plot(*zip(*others), "s--", color="tab:purple", markersize=3, label="held-out, another's history")
        ax.axhline(evals[-1]["heldout_ce_nocontext"], color="tab:red", linestyle="--", linewidth=1,
                   label="held-out, no memory")
    ax.set_xlabel("optimizer step")
    distilled = any(r.get("kl_distilled") is not None for r in rows)
    ax.set_ylabel("target-token CE (distilled episodes: KL to the backbone)" if distilled
                  else "target-token cross-entropy")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_ax.plot(steps, [r["lr"] for r in rows], color="tab:orange", linewidth=1, label="learning rate")
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_legend_handles_labels()
    lr_lines = lr_ax.get_legend_handles_labels()
    ax.legend(lines[0] + lr_lines[0], lines[1] + lr_lines[1], loc="upper right", fontsize=8)
    ax.set_title("/".join(png_path.parent.parts[-3:]), fontsize=9)
    fig.tight_layout()
    tmp = png_path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, png_path)


def check_method(method: Mapping[str, Any]) -> None:
    """Refuse a method config that cannot be trained before any data or model loads: δ-mem's settings, or the
    method class's own ``check_training_config``."""
    target = str(method.get("_target_") or "")
    if not target or target.startswith("methods.deltamem."):
        deltamem_config_from_method(method)
        return
    import importlib

    module, _, name = target.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if getattr(cls, "LEARNER", None) is None:
        raise ConfigError(f"method={method.get('name')}: {name} has nothing to train")
    check = getattr(cls, "check_training_config", None)
    if check is not None:
        check(method)


def build_sources(node: Mapping[str, Any]) -> list:
    """Instantiate ``train_data.sources`` (a mapping name → source config with ``_target_``)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    sources = node.get("sources") or {}
    if not isinstance(sources, Mapping) or not sources:
        raise ConfigError("train_data.sources must be a non-empty mapping of name -> source config")
    out = []
    for name, spec in sources.items():
        if spec is None:  # a mixture entry switched off with train_data.sources.NAME=null
            continue
        spec = dict(spec)
        # repeat: how many times the source's training episodes enter an epoch (a mixture weight that
        # leaves its held-out split alone)
        repeat = spec.pop("repeat", 1)
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise ConfigError(f"train_data.sources.{name}.repeat must be an integer >= 1, got {repeat!r}")
        try:
            src = instantiate(spec, _convert_="all")
        except InstantiationException as exc:
            cause = exc.__cause__ or exc
            if isinstance(cause, HarnessError):
                raise cause from exc
            raise ConfigError(f"train_data.sources.{name}: {cause}") from exc
        src.name = str(name)
        src.repeat = repeat
        out.append(src)
    if not out:
        raise ConfigError("train_data.sources: every source is switched off")
    return out


def own_pipeline(method: Mapping[str, Any]) -> Callable | None:
    """A method class's own training pipeline (``TRAIN_PIPELINE``: a dotted path to ``fn(cfg, load=...)``) for
    methods that do not learn from episodes (MLP Memory pre-trains on a datastore); None for the episode loop."""
    import importlib

    target = str(method.get("_target_") or "")
    if not target:
        return None
    module, _, name = target.rpartition(".")
    try:
        path = getattr(getattr(importlib.import_module(module), name), "TRAIN_PIPELINE", None)
    except (ImportError, AttributeError):
        return None
    if path is None:
        return None
    mod, _, attr = str(path).rpartition(".")
    return getattr(importlib.import_module(mod), attr)


def run_training(cfg, *, load: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """``python -m harness.train``: compose → data → backbone → learner → train (or resume)."""
    from omegaconf import OmegaConf

    pipeline = own_pipeline(OmegaConf.to_container(cfg.method, resolve=True))
    if pipeline is not None:
        return pipeline(cfg, load=load)

    from harness.adapters import resolve_adapter
    from harness.backbone import load_backbone, resolve_device
    from harness.runner import seed_everything
    from harness.training.data import build_training_data

    run = cfg.get("run") or {}
    if run.get("threads"):
        torch.set_num_threads(int(run.threads))
    settings = TrainSettings.from_mapping(OmegaConf.to_container(cfg.train, resolve=True))
    run_node = OmegaConf.to_container(run, resolve=True) if run else {}
    unknown = sorted(set(run_node) - {f.name for f in dataclasses.fields(RunControls)})
    if unknown:
        raise ConfigError(f"run: unknown keys {unknown}")
    controls = RunControls(**run_node)
    if controls.save_every < 1:
        raise ConfigError(f"run.save_every must be >= 1, got {controls.save_every}")
    check_method(OmegaConf.to_container(cfg.method, resolve=True))  # fail before any loading
    resolve_device(str(cfg.backbone.get("device", "auto")))
    warm_start = resolve_adapter(cfg)
    td = cfg.train_data
    data = build_training_data(build_sources(td), heldout_fraction=float(td.get("heldout_fraction", 0.1)),
                               split_seed=int(td.get("split_seed", 42)))
    semantic = OmegaConf.to_container(cfg, resolve=True)
    for key in ("run", "resume", "out_dir"):
        semantic.pop(key, None)
    if warm_start:
        semantic["method"].update(warm_start)
    from harness.sharding import world_position

    rank, world, local_rank = world_position()
    if world > 1:  # the global batch is grad_accum x processes: another count is another training
        semantic["processes"] = world
        if str(cfg.backbone.get("device", "auto")) == "auto" and torch.cuda.is_available():
            from omegaconf import open_dict

            with open_dict(cfg):  # after the semantic config: every rank resumes the same checkpoint config
                cfg.backbone.device = f"cuda:{local_rank % torch.cuda.device_count()}"
    out_dir = Path(str(cfg.out_dir))
    seed = int(cfg.seed)
    seed_everything(seed)
    backbone = (load or load_backbone)(cfg.backbone)
    trainer = Trainer(backbone=backbone, method_cfg=OmegaConf.to_container(cfg.method, resolve=True), data=data,
                      settings=settings, controls=controls, out_dir=out_dir, seed=seed, semantic_config=semantic,
                      data_name=str(td.get("name", "")))
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    print(f"[train] {trainer.learner!r} on {backbone.name}; {len(data.train)} training episodes "
          f"({len(data.heldout)} held out); {trainer.total_steps} steps × {settings.grad_accum} episodes"
          f"{f' × {world} processes' if world > 1 else ''}; {trainer.precision} on {backbone.device}", file=sys.stderr)
    try:
        return trainer.run(resume=bool(cfg.get("resume", False)))
    finally:
        trainer.close()


def resume_or_start(trainer: Any, log_path: Path, *, resume: bool, say: Callable[[str], None]) -> None:
    """Load ``trainer``'s last checkpoint (``resume``) and cut its log back to that step, refuse to overwrite
    checkpoints without ``resume``, or start afresh. Shared by every trainer with ``out_dir``, ``step``,
    ``total_steps`` and ``load_checkpoint``."""
    existing = checkpoint_dirs(trainer.out_dir)
    if resume and existing:
        trainer.load_checkpoint(existing[-1])
        _truncate_log(log_path, trainer.step)
        say(f"resumed from {existing[-1]} (step {trainer.step}/{trainer.total_steps})")
    elif existing:
        raise HarnessError(f"{trainer.out_dir} already has checkpoints (last: {existing[-1].name}); pass resume=true "
                           "to continue, or choose another out_dir")
    else:
        if resume:
            say(f"resume=true but no checkpoint in {trainer.out_dir}: starting from step 0")
        log_path.unlink(missing_ok=True)


def train_steps(trainer: Any, log_path: Path, *, module: Any, desc: str, writes: bool, eval_every: int | None,
                eval_message: Callable[[dict[str, Any]], str], time_up: Callable[[], bool]) -> str | None:
    """Step ``trainer`` (``train_step``, ``eval_row``, ``save_checkpoint``, ``controls``) to the end (None) or
    to a pause (its reason): the log, progress bar, periodic held-out rows and checkpoints every trainer shares.
    ``writes``: this process writes the log and checkpoints (data-parallel process 0)."""
    from tqdm import tqdm

    c = trainer.controls
    module.train()
    steps_here, stopped, ema = 0, None, None
    bar = tqdm(total=trainer.total_steps, initial=trainer.step, desc=desc, unit="step", disable=not c.progress,
               dynamic_ncols=True, file=sys.stderr)
    try:
        with open(log_path if writes else os.devnull, "a", encoding="utf-8") as log:
            if eval_every and trainer.step == 0:
                log.write(json.dumps(trainer.eval_row()) + "\n")
                log.flush()
            while trainer.step < trainer.total_steps:
                row = trainer.train_step()
                steps_here += 1
                if not math.isfinite(row["loss"]):
                    raise HarnessError(f"step {trainer.step}: the loss is {row['loss']}; stopping (last checkpoint "
                                       "is intact)")
                if trainer.step % c.log_every == 0 or trainer.step == trainer.total_steps:
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                ema = row["loss"] if ema is None else 0.9 * ema + 0.1 * row["loss"]
                bar.set_postfix(loss=f"{ema:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
                bar.update(1)
                if eval_every and (trainer.step % eval_every == 0 or trainer.step == trainer.total_steps):
                    ev = trainer.eval_row()
                    log.write(json.dumps(ev) + "\n")
                    log.flush()
                    bar.write(eval_message(ev))
                if trainer.step % c.save_every == 0 and trainer.step < trainer.total_steps and writes:
                    trainer.save_checkpoint()
                    plot_loss_curve(log_path, trainer.out_dir / CURVE_FILE)
                if c.stop_after_steps and steps_here >= c.stop_after_steps:
                    stopped = f"stop_after_steps={c.stop_after_steps}"
                elif time_up():
                    stopped = f"time_limit_min={c.time_limit_min}"
                if stopped and trainer.step < trainer.total_steps:
                    break
                stopped = None
    finally:
        bar.close()
        module.eval()
    return stopped
