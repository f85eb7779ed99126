"""`kiln export --tensorrt`: a serialized TensorRT engine built from the verified ONNX graph.

Uses the `tensorrt` Python API: optimization profiles (batch and sequence for the LM; the same
`profiles` argument takes min/opt/max batch for a classifier), an optional FP16 flag, and a
timing cache reused across builds. The engine's outputs are compared with ONNX Runtime's on
the same inputs before the plan is written. Without TensorRT or a CUDA GPU the build is
skipped with the reason (`unavailable_reason`), never silently.

Not exercised on the CPU machines this project is tested on; see docs/triton.md.
"""

from __future__ import annotations

import ctypes
import os
import time
from pathlib import Path

import numpy as np

DEFAULT_TIMING_CACHE = Path(os.environ.get("KILN_TRT_TIMING_CACHE", "~/.cache/kiln/tensorrt-timing.cache")).expanduser()
# Shapes are {input name: (min, opt, max)}; one dict per optimization profile.
Profile = dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing; the message says which."""


def unavailable_reason() -> str | None:
    """None when an engine can be built and verified here, else why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"the `tensorrt` Python package is not installed ({exc}); pip install tensorrt on a CUDA machine"
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no CUDA driver on this machine (libcuda.so.1 not found)"
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return "no CUDA GPU visible (cuInit/cuDeviceGetCount failed or found 0 devices)"
    try:
        _cudart()
    except ImportError:
        return "cuda-python is not installed (pip install cuda-python); it is used to verify the engine"
    return None


def _cudart():  # type: ignore[no-untyped-def]
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def lm_profiles(num_layers: int, num_kv_heads: int, head_dim: int, max_batch: int, max_seq_len: int) -> list[Profile]:
    """Two profiles, matching how the engine calls the graph: prefill (empty past, S tokens) and
    decode (S = 1 over a past of P columns; the mask covers P + 1)."""
    opt_b = max(1, max_batch // 2)
    prefill: Profile = {
        "input_ids": ((1, 1), (1, 64), (max_batch, max_seq_len)),
        "position_ids": ((1, 1), (1, 64), (max_batch, max_seq_len)),
        "attention_mask": ((1, 1), (1, 64), (max_batch, max_seq_len)),
    }
    decode: Profile = {
        "input_ids": ((1, 1), (opt_b, 1), (max_batch, 1)),
        "position_ids": ((1, 1), (opt_b, 1), (max_batch, 1)),
        "attention_mask": ((1, 2), (opt_b, max_seq_len // 2 + 1), (max_batch, max_seq_len + 1)),
    }
    for i in range(num_layers):
        for kind in ("key", "value"):
            name = f"past_{kind}.{i}"
            empty = (1, num_kv_heads, 0, head_dim)
            prefill[name] = (empty, (1, num_kv_heads, 0, head_dim), (max_batch, num_kv_heads, 0, head_dim))
            decode[name] = (
                (1, num_kv_heads, 1, head_dim),
                (opt_b, num_kv_heads, max_seq_len // 2, head_dim),
                (max_batch, num_kv_heads, max_seq_len, head_dim),
            )
    return [prefill, decode]


def build_engine(
    onnx_file: Path,
    out_file: Path,
    profiles: list[Profile],
    fp16: bool = False,
    timing_cache: Path = DEFAULT_TIMING_CACHE,
    workspace_bytes: int = 1 << 30,
    verify_feeds: list[dict[str, np.ndarray]] | None = None,
    tolerance: float | None = None,
) -> dict:
    """Build, verify against ONNX Runtime, then write `out_file`. Raises TensorRTUnavailable."""
    reason = unavailable_reason()
    if reason:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit_batch = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else explicit_batch  # TensorRT 10: always explicit
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_file)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_file}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    cache_bytes = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    timing_cache.parent.mkdir(parents=True, exist_ok=True)
    timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    report: dict = {"fp16": fp16, "profiles": len(profiles), "timing_cache": str(timing_cache)}
    report["build_s"] = time.perf_counter() - started
    if verify_feeds:
        tol = tolerance if tolerance is not None else (5e-2 if fp16 else 1e-3)
        report["verification"] = _verify(bytes(plan), onnx_file, verify_feeds, tol, logger)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    out_file.write_bytes(bytes(plan))
    report["path"] = str(out_file)
    report["size_bytes"] = out_file.stat().st_size
    return report


def build_lm_engine(  # type: ignore[no-untyped-def]
    onnx_file: Path, out_file: Path, cfg, fp16: bool = False, max_batch: int = 8, max_seq_len: int = 512
) -> dict:
    """The LM graph: profiles for prefill and decode, verified on one feed of each. Returns the
    report entry; `{"skipped": reason}` when TensorRT or CUDA is absent."""
    seq = min(max_seq_len, cfg.max_position_embeddings)
    try:
        return build_engine(
            onnx_file,
            out_file,
            lm_profiles(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, max_batch, seq),
            fp16=fp16,
            verify_feeds=_lm_feeds(cfg),
        )
    except TensorRTUnavailable as exc:
        return {"skipped": str(exc)}


def _lm_feeds(cfg) -> list[dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    b, s, p = 2, 7, 5
    prefill = {
        "input_ids": rng.integers(3, cfg.vocab_size, (b, s)).astype(np.int64),
        "position_ids": np.tile(np.arange(s, dtype=np.int64), (b, 1)),
        "attention_mask": np.ones((b, s), np.int64),
    }
    decode = {
        "input_ids": rng.integers(3, cfg.vocab_size, (b, 1)).astype(np.int64),
        "position_ids": np.full((b, 1), p, np.int64),
        "attention_mask": np.ones((b, p + 1), np.int64),
    }
    for i in range(cfg.num_layers):
        for kind in ("key", "value"):
            prefill[f"past_{kind}.{i}"] = np.zeros((b, cfg.num_kv_heads, 0, cfg.head_dim), np.float32)
            decode[f"past_{kind}.{i}"] = rng.standard_normal((b, cfg.num_kv_heads, p, cfg.head_dim)).astype(np.float32)
    return [prefill, decode]


def _verify(plan: bytes, onnx_file: Path, feeds: list[dict[str, np.ndarray]], tol: float, logger) -> dict:  # type: ignore[no-untyped-def]
    """Run each feed through the engine (profile i for feed i) and ONNX Runtime; max |Δ| per output."""
    import onnxruntime as ort
    import tensorrt as trt

    cudart = _cudart()
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    _, stream = cudart.cudaStreamCreate()
    results = []
    for index, feed in enumerate(feeds):
        expected = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed), strict=True))
        context.set_optimization_profile_async(min(index, engine.num_optimization_profiles - 1), stream)
        buffers = []
        for name, array in feed.items():
            context.set_input_shape(name, array.shape)
            ptr = _to_device(cudart, array)
            buffers.append(ptr)
            context.set_tensor_address(name, ptr)
        outputs = {}
        for name in expected:
            shape = tuple(context.get_tensor_shape(name))
            dtype = trt.nptype(engine.get_tensor_dtype(name))
            host = np.empty(shape, dtype)
            _, ptr = cudart.cudaMalloc(max(host.nbytes, 1))
            buffers.append(ptr)
            context.set_tensor_address(name, ptr)
            outputs[name] = (host, ptr)
        if not context.execute_async_v3(stream):
            raise RuntimeError("TensorRT execution failed")
        cudart.cudaStreamSynchronize(stream)
        errors = {}
        for name, (host, ptr) in outputs.items():
            if host.nbytes:
                cudart.cudaMemcpy(host.ctypes.data, ptr, host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
            errors[name] = float(np.max(np.abs(host.astype(np.float32) - expected[name]))) if host.size else 0.0
        for ptr in buffers:
            cudart.cudaFree(ptr)
        results.append(errors)
    worst = max(e["logits"] for e in results)
    if worst > tol:
        raise RuntimeError(f"TensorRT engine disagrees with ONNX Runtime: max |Δlogits| {worst:.3g} > {tol}")
    return {"max_abs_logits": worst, "tolerance": tol, "per_feed": results}


def _to_device(cudart, array: np.ndarray) -> int:  # type: ignore[no-untyped-def]
    array = np.ascontiguousarray(array)
    _, ptr = cudart.cudaMalloc(max(array.nbytes, 1))
    if array.nbytes:
        cudart.cudaMemcpy(ptr, array.ctypes.data, array.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
    return ptr
