"""Triton model-repository entries (`config.pbtxt`) for exported models.

The text is written by hand (the export side does not need tritonclient); tests parse every
file with Triton's own protobuf schema, so a typo cannot ship. `model_config` is generic: the
LM entries below use it, and so can the classifier (onnxruntime_onnx + dynamic batching) and
TensorRT (`tensorrt_plan`) entries.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from contracts.engine import EngineConfig
from contracts.manifest import LayerState, TextManifest, new_name, past_name
from contracts.triton import LM_INPUTS, LM_OUTPUTS, Tensor, triton_lm_name
from export.vendor import ROOT, closure, imports_of

LM_MODEL_PY = ROOT / "service" / "triton_model" / "model.py"  # a file to copy: it runs inside Triton
# Kiln's engine is copied into the python-backend model so the repository is self-contained: the
# stub's environment needs only numpy<2, onnxruntime and tokenizers (never fastapi or torch).
VENDORED_PACKAGES = ("service", "contracts")

__all__ = ["Tensor", "model_config", "lm_onnx_config", "lm_python_config", "triton_lm_name", "vendored_files"]


def model_config(
    name: str,
    inputs: list[Tensor],
    outputs: list[Tensor],
    *,
    platform: str | None = None,
    backend: str | None = None,
    max_batch_size: int = 0,
    kind: str = "KIND_CPU",
    count: int = 1,
    default_model_filename: str | None = None,
    dynamic_batching_delay_us: int | None = None,
    preferred_batch_sizes: list[int] | None = None,
    decoupled: bool = False,
    parameters: dict[str, str] | None = None,
    optimization: str | None = None,
) -> str:
    """One `config.pbtxt`. Exactly one of `platform` (onnxruntime_onnx, tensorrt_plan) or `backend` (python)."""
    if (platform is None) == (backend is None):
        raise ValueError("give exactly one of platform or backend")
    sep = ",\n"
    out = [f'name: "{name}"', f'platform: "{platform}"' if platform else f'backend: "{backend}"']
    out.append(f"max_batch_size: {max_batch_size}")
    if default_model_filename:
        out.append(f'default_model_filename: "{default_model_filename}"')
    if decoupled:
        out.append("model_transaction_policy {\n  decoupled: true\n}")
    out.append(f"input [\n{sep.join(t.pbtxt() for t in inputs)}\n]")
    out.append(f"output [\n{sep.join(t.pbtxt() for t in outputs)}\n]")
    out.append(f"instance_group [\n  {{\n    count: {count}\n    kind: {kind}\n  }}\n]")
    if dynamic_batching_delay_us is not None:
        preferred = ""
        if preferred_batch_sizes:
            preferred = f"\n  preferred_batch_size: [ {', '.join(map(str, preferred_batch_sizes))} ]"
        out.append(f"dynamic_batching {{{preferred}\n  max_queue_delay_microseconds: {dynamic_batching_delay_us}\n}}")
    if optimization:
        out.append(optimization)
    for key, value in (parameters or {}).items():
        out.append(f'parameters {{\n  key: "{key}"\n  value: {{ string_value: {json.dumps(str(value))} }}\n}}')
    return "\n".join(out) + "\n"


def lm_onnx_config(name: str, state: tuple[LayerState, ...], vocab_size: int) -> str:
    """The standard LM graph as a plain ONNX Runtime model. Batch is an explicit dimension of the
    state contract (max_batch_size 0), so Triton's own batcher stays out of the way; KV-cached
    generation on Triton runs through the python-backend entry instead (see docs/triton.md)."""
    inputs = [Tensor(n, "TYPE_INT64", (-1, -1)) for n in ("input_ids", "position_ids", "attention_mask")]
    outputs = [Tensor("logits", "TYPE_FP32", (-1, -1, vocab_size))]
    for layer in state:
        for tensor, shape in layer.tensors.items():
            dims = (-1, *(-1 if isinstance(d, str) else d for d in shape))
            inputs.append(Tensor(past_name(tensor), "TYPE_FP32", dims))
            outputs.append(Tensor(new_name(tensor), "TYPE_FP32", dims))
    return model_config(name, inputs, outputs, platform="onnxruntime_onnx", default_model_filename="model.onnx")


def lm_python_config(name: str, parameters: dict[str, str] | None = None) -> str:
    """Decoupled python-backend model running Kiln's engine (one instance: the engine batches).
    Its `parameters` are the gateway's engine defaults (EngineConfig), overridable per entry."""
    params = {**EngineConfig().to_parameters(), **(parameters or {})}
    return model_config(name, list(LM_INPUTS), list(LM_OUTPUTS), backend="python", decoupled=True, parameters=params)


def vendored_files() -> list[Path]:
    """Kiln's modules the python model imports, directly or not (relative to the project root)."""
    entries = {m for m in imports_of(LM_MODEL_PY, "model") if m.split(".")[0] in VENDORED_PACKAGES}
    return closure(sorted(entries), VENDORED_PACKAGES)


def write_lm_python_entry(entry: Path, repository: Path, parameters: dict[str, str] | None = None) -> Path:
    """Write `repository/<name>-triton/` from the in-process entry `entry` (atomic, like export).

    Layout: config.pbtxt; 1/model.py; 1/kiln_vendor/{service,contracts}/... (the modules of Kiln's
    engine it imports); 1/lm/ (kiln.json with paths relative to it, tokenizer.json, the ONNX
    variants, hard-linked when possible).
    """
    manifest = TextManifest.read(entry)
    name = triton_lm_name(manifest.name)
    with staged_entry(repository, name) as staging:
        version = staging / "1"
        lm = version / "lm"
        lm.mkdir(parents=True)
        files = {variant: _link_graph(entry / rel, lm) for variant, rel in manifest.files.items()}
        decode_files = {variant: _link_graph(entry / rel, lm) for variant, rel in manifest.decode_files.items()}
        _link_or_copy(manifest.path(manifest.tokenizer), lm / "tokenizer.json")
        replace(
            manifest,
            files=files,
            decode_files=decode_files,
            tokenizer="tokenizer.json",
            triton_model=None,
            chat_template=None,
        ).write(lm)
        for module in vendored_files():
            dst = version / "kiln_vendor" / module
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / module, dst)
        shutil.copyfile(LM_MODEL_PY, version / "model.py")
        write_config(staging, lm_python_config(name, parameters))
    return repository / name


def _link_graph(graph: Path, directory: Path) -> str:
    """Link one ONNX graph (and its external data, for a >2 GB graph) into `directory`; its name."""
    _link_or_copy(graph, directory / graph.name)
    weights = graph.with_name(graph.name + ".data")
    if weights.exists():
        _link_or_copy(weights, directory / weights.name)
    return graph.name


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@contextmanager
def staged_entry(repository: Path, name: str) -> Iterator[Path]:
    """A temporary sibling of `repository/name` that replaces it only when the block completes, so
    a failed or interrupted export never leaves a half-written model where a server would load it."""
    repository.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=repository))
    try:
        yield staging
        swap_in(staging, repository / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def swap_in(staging: Path, target: Path) -> None:
    """Replace `target` with `staging` using renames only (atomic on one filesystem)."""
    os.chmod(staging, 0o755)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_config(model_dir: Path, text: str) -> Path:
    path = model_dir / "config.pbtxt"
    path.write_text(text)
    return path


def classifier_onnx_config(
    name: str,
    input_name: str,
    output_name: str,
    image_size: tuple[int, int],
    num_classes: int,
    max_batch_size: int = 64,
    preferred_batch_sizes: tuple[int, ...] = (20, 40, 60),
    max_queue_delay_us: int = 2000,
    instances: int = 1,
    label_filename: str | None = "labels.txt",
) -> str:
    """An image classifier with Triton's dynamic batcher. Dims exclude the batch axis (Triton adds
    it up to max_batch_size); preferred sizes are multiples of 20 = one image's multi-view + flip
    crops (global + 3×3 tiles, each mirrored)."""
    h, w = image_size
    preferred = [b for b in preferred_batch_sizes if b <= max_batch_size] or [max_batch_size]
    return model_config(
        name,
        [Tensor(input_name, "TYPE_FP32", (3, h, w))],
        [Tensor(output_name, "TYPE_FP32", (num_classes,), label_filename=label_filename)],
        platform="onnxruntime_onnx",
        max_batch_size=max_batch_size,
        count=instances,
        default_model_filename="model.onnx",
        dynamic_batching_delay_us=max_queue_delay_us,
        preferred_batch_sizes=preferred,
    )
