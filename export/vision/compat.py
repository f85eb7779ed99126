"""Importing timm on a CPU-only torch.

timm imports torchvision, and the torchvision wheels on PyPI for Linux are CUDA builds whose
C++ ops cannot load next to the CPU torch wheel Kiln pins. torchvision 0.28 then fails at
import time (it registers a fake kernel for `torchvision::nms`, an op that was never
defined), which also breaks anything else that imports it (transformers does). Kiln uses
none of torchvision's ops, so when the extension cannot load we declare the two op schemas
its import needs; calling them still fails loudly (they have no kernel).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_fragment = None  # keeps the schema registrations alive for the process


def ensure_torchvision_importable() -> None:
    global _fragment
    if _fragment is not None or "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    import torch

    lib_files = sorted(Path(spec.origin).parent.glob("_C*.so"))
    try:
        for f in lib_files:
            torch.ops.load_library(str(f))
        return  # a matching torchvision: nothing to do
    except (OSError, RuntimeError):
        pass
    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        name = schema.split("(", 1)[0]
        if not hasattr(torch.ops.torchvision, name):
            _fragment.define(schema)


def import_timm():  # type: ignore[no-untyped-def]
    """`import timm`, or ImportError with the reason (timm is the optional `timm` extra)."""
    ensure_torchvision_importable()
    try:
        import timm
    except Exception as exc:  # noqa: BLE001 - any failure means "timm is not usable here"
        raise ImportError(f"timm is not importable (install the `timm` extra): {type(exc).__name__}: {exc}") from exc
    return timm
