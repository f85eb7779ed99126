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
from dataclasses import dataclass
from pathlib import Path

LM_MODEL_PY = Path(__file__).parent / "triton_models" / "kiln_lm" / "model.py"
# Kiln's engine, copied into the python-backend model so the repository is self-contained: the
# stub's environment needs only numpy<2, onnxruntime and tokenizers (never fastapi or torch).
SERVICE_DIR = Path(__file__).resolve().parent.parent / "service"
VENDORED_MODULES = (
    "__init__.py",
    "errors.py",
    "engine/__init__.py",
    "engine/engine.py",
    "engine/request.py",
    "engine/sampling.py",
    "engine/detokenize.py",
    "engine/observer.py",
    "backends/__init__.py",
    "backends/onnxruntime_lm.py",
)
# Defaults for the engine inside Triton; edit `parameters` in config.pbtxt to change them.
LM_ENGINE_PARAMETERS = {
    "KILN_MAX_BATCH": "8",
    "KILN_MAX_SEQ_LEN": "512",
    "KILN_MAX_QUEUE": "64",
    "KILN_PREFILL_CHUNK": "4",
    "KILN_PREFILL_CHUNK_TOKENS": "16",
    "KILN_INTRA_OP_THREADS": "0",
    "KILN_LM_VARIANT": "fp32",
}


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton's TYPE_* name
    dims: tuple[int, ...]
    optional: bool = False
    label_filename: str | None = None  # outputs only: Triton's classification labels

    def pbtxt(self) -> str:
        dims = ", ".join(map(str, self.dims))
        lines = [f'    name: "{self.name}"', f"    data_type: {self.dtype}", f"    dims: [ {dims} ]"]
        if self.optional:
            lines.append("    optional: true")
        if self.label_filename:
            lines.append(f'    label_filename: "{self.label_filename}"')
        return "  {\n" + "\n".join(lines) + "\n  }"


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


def lm_onnx_config(name: str, num_layers: int, num_kv_heads: int, head_dim: int, vocab_size: int) -> str:
    """The LM graph as a plain ONNX Runtime model. Batch is an explicit dimension of the KV
    contract (max_batch_size 0), so Triton's own batcher stays out of the way; KV-cached
    generation on Triton runs through the python-backend entry instead (see docs/triton.md)."""
    inputs = [Tensor(n, "TYPE_INT64", (-1, -1)) for n in ("input_ids", "position_ids", "attention_mask")]
    outputs = [Tensor("logits", "TYPE_FP32", (-1, -1, vocab_size))]
    for i in range(num_layers):
        for kind in ("key", "value"):
            inputs.append(Tensor(f"past_{kind}.{i}", "TYPE_FP32", (-1, num_kv_heads, -1, head_dim)))
            outputs.append(Tensor(f"new_{kind}.{i}", "TYPE_FP32", (-1, num_kv_heads, -1, head_dim)))
    return model_config(name, inputs, outputs, platform="onnxruntime_onnx", default_model_filename="model.onnx")


# The decoupled LM's wire contract: prompt token ids and sampling parameters in; one response
# per generated token (TOKEN_IDS) and a last one with FINISH_REASON and usage. The gateway
# tokenizes and detokenizes; the KV cache stays inside the model.
LM_INPUTS = [
    Tensor("INPUT_IDS", "TYPE_INT64", (-1,)),
    Tensor("MAX_NEW_TOKENS", "TYPE_INT32", (1,)),
    Tensor("TEMPERATURE", "TYPE_FP32", (1,), optional=True),
    Tensor("TOP_K", "TYPE_INT32", (1,), optional=True),
    Tensor("TOP_P", "TYPE_FP32", (1,), optional=True),
    Tensor("REPETITION_PENALTY", "TYPE_FP32", (1,), optional=True),
    Tensor("SEED", "TYPE_INT64", (1,), optional=True),
    Tensor("STOP", "TYPE_STRING", (-1,), optional=True),
    Tensor("IGNORE_EOS", "TYPE_BOOL", (1,), optional=True),
    Tensor("TIMEOUT_S", "TYPE_FP32", (1,), optional=True),
    Tensor("LOGPROBS", "TYPE_INT32", (1,), optional=True),
]
LM_OUTPUTS = [
    Tensor("TOKEN_IDS", "TYPE_INT64", (-1,)),
    Tensor("LOGPROB", "TYPE_FP32", (-1,)),
    Tensor("TOP_IDS", "TYPE_INT64", (-1,)),
    Tensor("TOP_LOGPROBS", "TYPE_FP32", (-1,)),
    Tensor("FINISH_REASON", "TYPE_STRING", (1,)),
    Tensor("MESSAGE", "TYPE_STRING", (1,)),
    Tensor("PROMPT_TOKENS", "TYPE_INT32", (1,)),
    Tensor("COMPLETION_TOKENS", "TYPE_INT32", (1,)),
    Tensor("QUEUE_MS", "TYPE_FP32", (1,)),
]


def lm_python_config(name: str, parameters: dict[str, str] | None = None) -> str:
    """Decoupled python-backend model running Kiln's engine (one instance: the engine batches)."""
    params = {**LM_ENGINE_PARAMETERS, **(parameters or {})}
    return model_config(name, LM_INPUTS, LM_OUTPUTS, backend="python", decoupled=True, parameters=params)


def triton_lm_name(name: str) -> str:
    return f"{name}-triton"


def write_lm_python_entry(entry: Path, repository: Path, parameters: dict[str, str] | None = None) -> Path:
    """Write `repository/<name>-triton/` from the in-process entry `entry` (atomic, like export).

    Layout: config.pbtxt; 1/model.py; 1/kiln_vendor/service/... (Kiln's engine); 1/lm/ (kiln.json
    with paths relative to it, tokenizer.json, the ONNX variants, hard-linked when possible).
    """
    manifest = json.loads((entry / "kiln.json").read_text())
    name = triton_lm_name(manifest.get("name", entry.name))
    with staged_entry(repository, name) as staging:
        version = staging / "1"
        lm = version / "lm"
        lm.mkdir(parents=True)
        files = {}
        for variant, rel in manifest["files"].items():
            target = lm / Path(rel).name
            _link_or_copy(entry / rel, target)
            weights = (entry / rel).with_name(Path(rel).name + ".data")  # external data of a >2 GB graph
            if weights.exists():
                _link_or_copy(weights, lm / weights.name)
            files[variant] = target.name
        _link_or_copy(entry / manifest.get("tokenizer", "tokenizer.json"), lm / "tokenizer.json")
        (lm / "kiln.json").write_text(json.dumps({**manifest, "files": files, "tokenizer": "tokenizer.json"}, indent=2))
        for rel in VENDORED_MODULES:
            dst = version / "kiln_vendor" / "service" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SERVICE_DIR / rel, dst)
        shutil.copyfile(LM_MODEL_PY, version / "model.py")
        write_config(staging, lm_python_config(name, parameters))
    return repository / name


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
