"""Run an exported classifier over scenes exactly as the gateway does (views → ORT → logits)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from contracts.vision import PreprocessContract, make_views
from export.vision.data import Scene

PIPELINES = {  # name → (views mode, flip)
    "single": ("single", False),
    "multi": ("multi", False),
    "multi_flip": ("multi", True),
}


def session(onnx_file: Path, threads: int = 0) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])


def view_logits(
    sess: ort.InferenceSession,
    contract: PreprocessContract,
    scenes: Sequence[Scene],
    pipeline: str,
    grid: int = 3,
    overlap: float = 0.25,
    batch: int = 512,
) -> list[np.ndarray]:
    """Per scene, the logits of all its views [V, C] for one pipeline."""
    mode, flip = PIPELINES[pipeline]
    stacks = [make_views(Image.fromarray(s.pixels), contract, mode, grid, overlap, flip)[1] for s in scenes]
    flat = np.concatenate(stacks)
    out = np.concatenate(
        [
            sess.run([contract.output_name], {contract.input_name: flat[i : i + batch]})[0]
            for i in range(0, len(flat), batch)
        ]
    )
    bounds = np.cumsum([0, *[len(s) for s in stacks]])
    return [out[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
