"""The MLP Memory network, the hook that feeds it, the decoding mixture and the artefact folder.

Wei et al., "MLP Memory: A Retriever-Pretrained Memory for Large Language Models" (ICLR 2026, arXiv 2508.01832;
``../shared/spec/baselines.md`` §7). The memory is an all-MLP network: ``blocks`` pre-norm residual SwiGLU blocks
at the backbone's width and intermediate size, a final RMSNorm and a vocabulary head. Its input is the backbone's
hidden state entering the **last decoder layer's MLP** (after that layer's post-attention norm), read by a forward
hook on that module, as the reference's ``_ActivationCapturer`` does (``layer_position=-1``); its output is a
next-token distribution, mixed with the backbone's:

    log p = logaddexp(log(1 − λ) + log p_LM, log λ + log p_MLP)

:class:`MLPMemoryMixer` applies the mixture inside the backbone's own ``forward`` (a forward hook on the causal-LM
module rewrites ``output.logits``), at exactly the positions whose logits the call keeps (``logits_to_keep``), so
every caller (``harness.generation.generate_batch`` with its shared-prefix KV reuse, batching, greedy and seeded
sampling) decodes from the mixed distribution without knowing about it. λ = 0 leaves the logits untouched (the
bare backbone bit for bit); λ = 1 returns the MLP's own log-distribution.

Artefact folder (``adapters/<backbone>/mlp_memory/``): ``mlp_memory.safetensors`` (the stored weights in the
storage dtype) and ``mlp_memory.json`` (shapes, head mode, backbone signature, the pre-training recipe and its
evidence). With ``head: frozen_backbone`` the vocabulary head is the backbone's own output embedding, frozen,
and not stored (a labelled reduction); ``head: trained`` is the reference's untied, trained head.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import ConfigError, HarnessError

KIND = "mlp_memory"
WEIGHTS_FILE = "mlp_memory.safetensors"
CONFIG_FILE = "mlp_memory.json"
HEAD_MODES = ("frozen_backbone", "trained")
STORAGE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# The paper's Table 3 size of MLP Memory on Qwen3-4B-Instruct (76.40 % of the backbone).
PAPER_PARAMETERS = 3_078_000_000
LAMBDA_NAMES = {"default": 0.25, "qa": 0.5}  # the reference default; the official QA script's value


class ArtefactError(HarnessError):
    """An MLP Memory artefact folder that cannot be used."""


# ------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class MLPMemoryConfig:
    """Shapes of an MLP Memory network (everything needed to rebuild it before loading weights)."""

    hidden_size: int
    intermediate_size: int
    vocab_size: int
    blocks: int
    rms_norm_eps: float = 1e-5
    head: str = "frozen_backbone"

    def __post_init__(self) -> None:
        for key in ("hidden_size", "intermediate_size", "vocab_size", "blocks"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "blocks" else 1):
                raise ConfigError(f"mlp_memory: {key} must be a {'non-negative' if key == 'blocks' else 'positive'} "
                                  f"integer, got {value!r}")
        if self.head not in HEAD_MODES:
            raise ConfigError(f"mlp_memory: head must be one of {HEAD_MODES}, got {self.head!r}")

    @classmethod
    def for_backbone(cls, model: Any, *, blocks: int | None, head: str) -> "MLPMemoryConfig":
        """At the backbone's width and intermediate size; ``blocks=None``: the backbone's depth (full size)."""
        cfg = _text_config(model)
        return cls(hidden_size=int(cfg.hidden_size), intermediate_size=int(cfg.intermediate_size),
                   vocab_size=int(model.get_output_embeddings().weight.shape[0]),
                   blocks=int(cfg.num_hidden_layers if blocks is None else blocks),
                   rms_norm_eps=float(getattr(cfg, "rms_norm_eps", 1e-6) or 1e-6), head=head)

    def parameters(self) -> dict[str, int]:
        """Parameter counts by part; ``stored`` leaves out a frozen backbone head."""
        h, i, v = self.hidden_size, self.intermediate_size, self.vocab_size
        block = 3 * h * i + h  # gate, up, down (no bias) + the block's RMSNorm
        out = {"blocks": self.blocks * block, "per_block": block, "final_norm": h, "head": h * v}
        out["total"] = out["blocks"] + out["final_norm"] + out["head"]
        out["stored"] = out["total"] - (out["head"] if self.head == "frozen_backbone" else 0)
        out["trainable"] = out["stored"]
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def full_size_parameters(hidden_size: int, intermediate_size: int, vocab_size: int, blocks: int) -> int:
    """The reference design's parameter count: ``blocks`` SwiGLU blocks + final norm + an untied head."""
    return MLPMemoryConfig(hidden_size, intermediate_size, vocab_size, blocks, head="trained").parameters()["total"]


def _text_config(model: Any) -> Any:
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


# ------------------------------------------------------------------------------------------ network
class RMSNorm(nn.Module):
    """Llama's RMSNorm: the variance in fp32, the weight applied in the input dtype."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class SwiGLUBlock(nn.Module):
    """Pre-norm residual SwiGLU block: ``x + down(silu(gate(n(x))) · up(n(x)))``."""

    def __init__(self, hidden: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.norm = RMSNorm(hidden, eps)
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class MLPMemoryNet(nn.Module):
    """hidden state entering the last layer's MLP → next-token logits."""

    def __init__(self, cfg: MLPMemoryConfig, *, head_weight: torch.Tensor | None = None,
                 init_std: float = 0.02) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(SwiGLUBlock(cfg.hidden_size, cfg.intermediate_size, cfg.rms_norm_eps)
                                    for _ in range(cfg.blocks))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if init_std and next(self.parameters()).device.type != "meta":
            # the reference's Llama initialisation: N(0, 0.02) linear weights, unit norm weights
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=init_std)
        if cfg.head == "frozen_backbone":
            if head_weight is not None:
                if tuple(head_weight.shape) != (cfg.vocab_size, cfg.hidden_size):
                    raise ArtefactError(f"mlp_memory: the backbone's output embedding is {tuple(head_weight.shape)}, "
                                        f"the memory expects {(cfg.vocab_size, cfg.hidden_size)}")
                self.lm_head.weight = nn.Parameter(head_weight, requires_grad=False)
            self.lm_head.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            x = block(x)
        return self.lm_head(self.norm(x))

    def stored_names(self) -> list[str]:
        return [n for n, _ in self.named_parameters() if not (n == "lm_head.weight" and self.cfg.head == "frozen_backbone")]

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = dict(self.named_parameters())
        return [params[n] for n in self.stored_names()]

    def stored_state(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        params = dict(self.named_parameters())
        return {n: (params[n].detach().to(dtype) if dtype else params[n].detach()).contiguous().cpu()
                for n in self.stored_names()}

    def load_stored_state(self, state: Mapping[str, torch.Tensor]) -> None:
        expected = set(self.stored_names())
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or extra:
            raise ArtefactError(f"mlp_memory weights do not match the network (missing {missing[:4]}, "
                                f"unexpected {extra[:4]})")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for n in expected:
                if tuple(state[n].shape) != tuple(params[n].shape):
                    raise ArtefactError(f"mlp_memory weight {n}: shape {tuple(state[n].shape)} in the file, "
                                        f"{tuple(params[n].shape)} expected")
                params[n].copy_(state[n].to(params[n].dtype))


# ------------------------------------------------------------------------------------------ hook + mixture
def last_mlp(model: Any) -> nn.Module:
    """The last decoder layer's MLP module of a causal LM (Llama, Qwen2/3, Mistral, Gemma 3 layouts)."""
    base = getattr(model, "base_model", None) or model
    layers = getattr(base, "layers", None)
    if layers is None and hasattr(model, "get_decoder"):
        layers = getattr(model.get_decoder(), "layers", None)
    if not layers or not hasattr(layers[-1], "mlp"):
        raise HarnessError(f"mlp_memory: cannot find the last decoder layer's MLP in {type(model).__name__}")
    return layers[-1].mlp


class HiddenCapture:
    """Keeps the input of the last layer's MLP of the most recent forward call."""

    def __init__(self, model: Any) -> None:
        self.value: torch.Tensor | None = None
        self._handle = last_mlp(model).register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        self.value = x.detach()

    def take(self) -> torch.Tensor:
        if self.value is None:
            raise HarnessError("mlp_memory: the hook on the last layer's MLP saw no input in this forward call")
        x, self.value = self.value, None
        return x

    def remove(self) -> None:
        self._handle.remove()


def keep_positions(hidden: torch.Tensor, logits_to_keep: Any) -> torch.Tensor:
    """The rows of ``hidden`` (batch, time, dim) whose logits a call with ``logits_to_keep`` computes."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep
    except ImportError:  # older transformers: the int form only
        slice_logits_to_keep = None
    if slice_logits_to_keep is not None:
        return slice_logits_to_keep(hidden, logits_to_keep)
    if isinstance(logits_to_keep, int):
        return hidden[:, -logits_to_keep:] if logits_to_keep else hidden
    return hidden[:, logits_to_keep]


def mix_logprobs(lm_logits: torch.Tensor, mlp_logits: torch.Tensor, lam: float) -> torch.Tensor:
    """``logaddexp(log(1−λ) + log p_LM, log λ + log p_MLP)`` in fp32 (λ = 1: the MLP's log-distribution)."""
    lp_mlp = F.log_softmax(mlp_logits.float(), dim=-1)
    if lam >= 1.0:
        return lp_mlp
    lp_lm = F.log_softmax(lm_logits.float(), dim=-1)
    if lam <= 0.0:
        return lp_lm
    return torch.logaddexp(lp_lm + math.log1p(-lam), lp_mlp + math.log(lam))


class MLPMemoryMixer:
    """Makes every forward call of ``model`` return the mixed log-distribution as its ``logits``."""

    def __init__(self, model: Any, net: MLPMemoryNet, lam: float) -> None:
        if not 0.0 <= lam <= 1.0:
            raise ConfigError(f"mlp_memory: lambda must be in [0, 1], got {lam}")
        self.net, self.lam = net, float(lam)
        self.capture = HiddenCapture(model)
        self._handle = model.register_forward_hook(self._mix, with_kwargs=True)
        self.calls = 0

    def _mix(self, module, args, kwargs, output):
        hidden = self.capture.take()
        if self.lam == 0.0:
            return output  # the bare backbone exactly (and no MLP cost)
        logits = getattr(output, "logits", None)
        if logits is None:
            raise HarnessError("mlp_memory: the backbone's forward returned no logits (return_dict=False?)")
        kept = keep_positions(hidden, kwargs.get("logits_to_keep", 0))
        if kept.shape[:-1] != logits.shape[:-1]:
            raise HarnessError(f"mlp_memory: kept hidden states {tuple(kept.shape)} do not line up with the logits "
                               f"{tuple(logits.shape)}")
        w = self.net.lm_head.weight
        mlp_logits = self.net(kept.to(device=w.device, dtype=w.dtype))
        output.logits = mix_logprobs(logits, mlp_logits, self.lam).to(logits.device)
        self.calls += 1
        return output

    def remove(self) -> None:
        self._handle.remove()
        self.capture.remove()


def resolve_lambda(value: Any) -> tuple[float, str | None]:
    """``lam`` as a number in [0, 1] or a name (``default`` 0.25, ``qa`` 0.5)."""
    if isinstance(value, str):
        if value not in LAMBDA_NAMES:
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"method mlp_memory: lam must be a number in [0, 1] or one of "
                                  f"{sorted(LAMBDA_NAMES)}, got {value!r}") from None
        else:
            return LAMBDA_NAMES[value], value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"method mlp_memory: lam must be a number in [0, 1] or one of {sorted(LAMBDA_NAMES)}, "
                          f"got {value!r}")
    value = float(value)
    name = next((k for k, v in LAMBDA_NAMES.items() if v == value), None)
    return value, name


# ------------------------------------------------------------------------------------------ artefact
def read_artefact_config(folder: Path) -> dict[str, Any]:
    """The artefact's JSON after checking the folder is an MLP Memory artefact (no model needed)."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise ArtefactError(f"mlp_memory artefact {folder}: not a directory")
    if not path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise ArtefactError(f"mlp_memory artefact {folder}: expected {CONFIG_FILE} and {WEIGHTS_FILE} (build one with "
                            "`python -m harness.train method=mlp_memory train_data=mix run.threads=1`)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtefactError(f"{path}: not valid JSON ({exc.msg})") from None
    if info.get("kind") != KIND:
        raise ArtefactError(f"{path}: not an MLP Memory artefact (kind {info.get('kind')!r})")
    if not info.get("backbone"):
        raise ArtefactError(f"{path}: no backbone signature; an MLP Memory artefact is tied to the backbone whose "
                            "hidden states it was trained on")
    MLPMemoryConfig(**info["network"])  # shapes are sane
    if info.get("storage_dtype") not in STORAGE_DTYPES:
        raise ArtefactError(f"{path}: storage_dtype {info.get('storage_dtype')!r} is not one of {sorted(STORAGE_DTYPES)}")
    return info


def save_artefact(folder: Path, net: MLPMemoryNet, *, backbone_signature: dict[str, Any], storage_dtype: str,
                  extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the weights (in ``storage_dtype``) and the JSON; returns the JSON written."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = net.stored_state(STORAGE_DTYPES[storage_dtype])
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    # no safetensors metadata: its map is written in a per-process random order, and the file's bytes are the
    # weights' identity in run records (the JSON says what the file is)
    save_file(state, str(tmp))
    tmp.replace(folder / WEIGHTS_FILE)
    info = {"kind": KIND, "network": net.cfg.as_dict(), "storage_dtype": storage_dtype,
            "parameters": net.cfg.parameters(),
            "head_note": ("the backbone's own output embedding, frozen and not stored (a reduction: the reference "
                          "trains an untied head)") if net.cfg.head == "frozen_backbone" else
                         "untied and trained, as the reference",
            "input": "hidden state entering the last decoder layer's MLP (forward hook on layers[-1].mlp)",
            "backbone": backbone_signature, **dict(extra or {})}
    (folder / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


def load_artefact(folder: Path, model: Any) -> tuple[MLPMemoryNet, dict[str, Any]]:
    """The network of an artefact folder on ``model``'s device and dtype, after refusing another backbone's."""
    from safetensors.torch import load_file

    from methods.deltamem.signature import check_backbone_signature

    info = read_artefact_config(folder)
    check_backbone_signature(info["backbone"], model, what=f"mlp_memory artefact {folder}")
    cfg = MLPMemoryConfig(**info["network"])
    here = MLPMemoryConfig.for_backbone(model, blocks=cfg.blocks, head=cfg.head)
    if (here.hidden_size, here.intermediate_size, here.vocab_size) != (cfg.hidden_size, cfg.intermediate_size,
                                                                        cfg.vocab_size):
        raise ArtefactError(f"mlp_memory artefact {folder}: built for hidden {cfg.hidden_size} / intermediate "
                            f"{cfg.intermediate_size} / vocabulary {cfg.vocab_size}, the backbone has {here.hidden_size} "
                            f"/ {here.intermediate_size} / {here.vocab_size}")
    head = model.get_output_embeddings().weight
    with torch.device("meta"):
        net = MLPMemoryNet(cfg, init_std=0.0)
    net = net.to_empty(device=head.device).to(head.dtype)
    if cfg.head == "frozen_backbone":
        net.lm_head.weight = nn.Parameter(head.detach(), requires_grad=False)  # shared, not copied
    net.load_stored_state(load_file(str(Path(folder) / WEIGHTS_FILE)))
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval(), info
