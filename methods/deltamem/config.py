"""δ-mem hyper-parameters, validated, with a versioned JSON form."""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

WriteGranularity = Literal["token", "message_mean", "sentence_mean"]
OutputInit = Literal["zero", "base_slice_fixed", "base_slice", "random"]

FORMAT_VERSION = 1
_HEADS = ("q", "k", "v", "o")


@dataclass(frozen=True)
class DeltaMemConfig:
    """What shapes and initialises the δ-mem parameters and how the state is written.

    Defaults are the reference training scripts' values (deltamem.md §7, §8) except ``output_init``,
    whose scripts value is ``base_slice_fixed`` as well.
    """

    rank: int = 8
    alpha: float = 16.0
    num_state_heads: int = 1  # 1: TSW/SSW, 4: MSW
    write_granularity: WriteGranularity = "token"
    delta_heads: tuple[str, ...] = ("q", "o")
    beta_bias_init: float = -1.5
    output_init: OutputInit = "base_slice_fixed"
    base_slice_ref_width: int = 8
    online_gain: float = 0.05
    target_layers: tuple[int, ...] = ()  # empty: every attention layer
    attention_name: str = "self_attn"  # attribute name of the attention module inside a decoder layer
    scan_impl: Literal["auto", "numba", "chunked", "naive"] = "auto"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # provenance; extra["backbone"] (a signature) is checked on load

    def __post_init__(self) -> None:
        object.__setattr__(self, "delta_heads", tuple(self.delta_heads))
        object.__setattr__(self, "target_layers", tuple(int(i) for i in self.target_layers))
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.num_state_heads < 1:
            raise ValueError(f"num_state_heads must be >= 1, got {self.num_state_heads}")
        if self.write_granularity not in ("token", "message_mean", "sentence_mean"):
            raise ValueError(f"write_granularity {self.write_granularity!r}: expected token, message_mean or sentence_mean")
        bad = [h for h in self.delta_heads if h not in _HEADS]
        if bad or not self.delta_heads or len(set(self.delta_heads)) != len(self.delta_heads):
            raise ValueError(f"delta_heads {self.delta_heads!r}: a non-empty subset of {_HEADS} without repeats")
        if self.output_init not in ("zero", "base_slice_fixed", "base_slice", "random"):
            raise ValueError(f"output_init {self.output_init!r}: expected zero, base_slice_fixed, base_slice or random")
        if self.scan_impl not in ("auto", "numba", "chunked", "naive"):
            raise ValueError(f"scan_impl {self.scan_impl!r}: expected auto, numba, chunked or naive")

    # ---- derived sizes
    @property
    def read_dim(self) -> int:
        """R: length of the concatenated read vector (r per state head)."""
        return self.rank * self.num_state_heads

    @property
    def scale(self) -> float:
        """α/r with the per-head rank, also for MSW (reference behaviour, deltamem.md §11.12)."""
        return self.alpha / self.rank

    @property
    def variant(self) -> str:
        if self.num_state_heads > 1:
            return "msw"
        return "tsw" if self.write_granularity == "token" else "ssw"

    # ---- JSON
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["delta_heads"] = list(self.delta_heads)
        data["target_layers"] = list(self.target_layers)
        return {"format": "deltamem", "format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DeltaMemConfig":
        data = dict(data)
        fmt = data.pop("format", "deltamem")
        version = int(data.pop("format_version", FORMAT_VERSION))
        if fmt != "deltamem":
            raise ValueError(f"not a δ-mem config (format={fmt!r})")
        if version > FORMAT_VERSION:
            raise ValueError(f"δ-mem config format_version {version} is newer than this code ({FORMAT_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            # PEFT's policy: a newer writer may add keys; dropping them loudly beats refusing to load.
            warnings.warn(f"δ-mem config: ignoring unknown keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "DeltaMemConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ---- presets
    @classmethod
    def tsw(cls, **kw: Any) -> "DeltaMemConfig":
        return cls(**{"num_state_heads": 1, "write_granularity": "token", **kw})

    @classmethod
    def ssw(cls, **kw: Any) -> "DeltaMemConfig":
        return cls(**{"num_state_heads": 1, "write_granularity": "message_mean", **kw})

    @classmethod
    def msw(cls, **kw: Any) -> "DeltaMemConfig":
        return cls(**{"num_state_heads": 4, "write_granularity": "token", **kw})


# Reference (declare-lab/delta-Mem) config keys whose values change the maths. Anything but these values
# describes a model this implementation does not compute, so loading it must fail rather than mislead.
_REFERENCE_REQUIRED = {
    "normalize_qk": True,
    "couple_lambda": True,
    "state_update_mode": "standard",
    "rankwise_gates": True,
    "memory_readout_mode": "delta",
    "memory_write_source": "learned_hidden",
    "delta_o_rmsnorm": False,
    "trainable_delta_scale": False,
    "num_memory_partitions": 1,
}


def from_reference_dict(data: dict[str, Any]) -> DeltaMemConfig:
    """Translate the official ``delta_mem_config.json`` (``HFDeltaMemConfig``) into a DeltaMemConfig."""
    for key, want in _REFERENCE_REQUIRED.items():
        if key in data and data[key] != want:
            raise ValueError(f"reference δ-mem config has {key}={data[key]!r}; only {want!r} is supported")
    scaling = data.get("delta_scale_parameterization", "alpha_over_rank")
    if scaling != "alpha_over_rank":
        raise ValueError(f"reference δ-mem config has delta_scale_parameterization={scaling!r}; "
                         "only 'alpha_over_rank' is supported")
    targets = tuple(data.get("target_modules") or ("self_attn",))
    if len(targets) != 1:
        raise ValueError(f"reference δ-mem config targets {targets}; exactly one attention attribute is supported")
    init = data.get("output_init", "zero")
    return DeltaMemConfig(
        rank=int(data.get("rank", 8)),
        alpha=float(data.get("alpha", 16.0)),
        num_state_heads=int(data.get("num_state_heads", 1)),
        write_granularity=data.get("memory_write_granularity", "token"),
        delta_heads=tuple(data.get("delta_heads", ("q", "k", "v", "o"))),
        beta_bias_init=float(data.get("beta_bias_init", -1.5)),
        output_init=init,
        base_slice_ref_width=int(data.get("base_slice_ref_width", 8)),
        online_gain=float(data.get("online_gain", 0.05)),
        target_layers=tuple(data.get("target_layers") or ()),
        attention_name=str(targets[0]),
        extra={"source": "reference", "reference_keys": sorted(data)},
    )
