"""ONNX Runtime sessions as Kiln runs them: every graph optimization, CPU, one inter-op thread.

ONNX Runtime's own log is kept to errors. At warning level it prints, for every session of a
fused LM graph, that `logits_from` is an initializer listed among the graph inputs: true and
deliberate (an input with a default, so decode calls need not bind it), and the kind of line
that teaches operators to ignore a server's log. Errors still print.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

ORT_LOG_ERROR = 3  # onnxruntime severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


def cpu_session(
    path: Path, threads: int = 0, profile_prefix: str | None = None, spinning: bool = True
) -> ort.InferenceSession:
    """`threads` intra-op threads (0 = ONNX Runtime's default, one per core); with `profile_prefix`,
    ONNX Runtime's profiler records every kernel (the benchmark's step breakdown). `spinning=False`
    makes idle intra-op threads sleep instead of busy-waiting between runs: for sessions that share
    the cores with Python work between runs (the classifier, whose requests are decoded meanwhile)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = ORT_LOG_ERROR
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads > 0:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    check_runtime(session, path)
    return session


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("+")[0].split(".")[:3] if part.isdigit())


def check_runtime(session: ort.InferenceSession, path: Path) -> None:
    """Refuse a graph whose semantics need a newer ONNX Runtime than this one (export records the
    floor as `kiln.min_onnxruntime`, e.g. for GroupQueryAttention's sliding window)."""
    needed = session.get_modelmeta().custom_metadata_map.get("kiln.min_onnxruntime")
    if needed and version_tuple(ort.__version__) < version_tuple(needed):
        raise RuntimeError(f"{path.name} needs onnxruntime>={needed}; this gateway has {ort.__version__}")
