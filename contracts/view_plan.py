"""All views of an image as index and weight tensors: the in-graph twin of `make_views`.

The exported views graph (export/vision/views_graph.py, `views.onnx`) takes one decoded image
and a `ViewPlan` and returns every view, flips included, normalised and channels-first, in one
ONNX Runtime run: no per-view Python. The plan reproduces Pillow's resampling bit for bit
(libImaging/Resample.c): a horizontal then a vertical pass, each with Pillow's coefficients
(filter support scaled by the downscale factor, normalised, converted to 22-bit fixed point),
a rounding shift and a clip to uint8 after each pass, and the crop box in float32 as Pillow
reads it. So the graph's views equal `make_views`' exactly, which tests/export/vision checks
on many sizes, boxes and both filters.

Layout (horizontal pass first): the image [H, W, 3] is seen as columns [W, H·3]. J distinct
horizontal windows (the global view, and one per tile column: tiles in a column share their
x-range) each gather K1 columns per output column; the first pass's result [J·H, Wo·3] is then
gathered by rows, K2 per output row, for each of the V views. Vertical pass first (what
Pillow ≥ 13 does for images that shrink much more in height) is the same on the transposed
image. Padded taps carry weight 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import PIL

from contracts.vision import PreprocessContract, view_boxes

PRECISION_BITS = 22  # Pillow: 32 - 8 - 2
GRAPH_FILTERS = ("bilinear", "bicubic")
_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


def _bilinear(x: float) -> float:
    x = -x if x < 0.0 else x
    return 1.0 - x if x < 1.0 else 0.0


def _bicubic(x: float) -> float:
    a = -0.5
    x = -x if x < 0.0 else x
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


_FILTERS = {"bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}


def resample_coeffs(in_size: int, in0: float, in1: float, out_size: int, resample: str) -> tuple[list[int], np.ndarray]:
    """Pillow's precompute_coeffs + normalize_coeffs_8bpc for one axis: the first source index of
    every output pixel and its fixed-point coefficients [out_size, ksize] (zeros past its taps)."""
    if resample not in _FILTERS:
        raise ValueError(f"resize {resample!r} has no in-graph plan (supported: {list(GRAPH_FILTERS)})")
    filt, base_support = _FILTERS[resample]
    lo, hi = np.float32(in0), np.float32(in1)  # Pillow's box is float[4]
    scale = float(np.float32(hi - lo)) / out_size  # (double)(in1 - in0) / outSize, the difference in float
    filterscale = max(scale, 1.0)
    support = base_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    ss = 1.0 / filterscale
    starts: list[int] = []
    coeffs = np.zeros((out_size, ksize), np.int64)
    for xx in range(out_size):
        center = float(lo) + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C's cast
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [filt((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        total = 0.0
        for w in weights:  # sequential, as Pillow sums
            total += w
        for x, w in enumerate(weights):
            k = w / total if total != 0.0 else w
            coeffs[xx, x] = int(-0.5 + k * (1 << PRECISION_BITS)) if k < 0 else int(0.5 + k * (1 << PRECISION_BITS))
        starts.append(xmin)
    return starts, coeffs


def pillow_vertical_first(width: int, height: int, out_w: int, out_h: int) -> bool:
    """Pillow ≥ 13 runs the vertical pass first when the height shrinks more than twice as much as
    the width (ImagingResampleInner); older Pillow always starts horizontally. The rule looks at
    the whole image, not the box, and the installed Pillow decides which one the plan follows."""
    if _PILLOW_MAJOR < 13:
        return False
    return (height - out_h) > 0 and (height - out_h) > (width - out_w) * 2


@dataclass(frozen=True)
class ViewPlan:
    """Index/weight tensors for the views graph. With `vertical_first` false the first pass runs
    along the width (columns of the image seen as [W, H·3]) and the second along the height;
    with it true, the other way round (rows of [H, W·3] first)."""

    names: tuple[str, ...]
    height: int
    width: int
    vertical_first: bool
    first_index: np.ndarray  # int64 [J, out, K1]: source columns (rows when vertical_first)
    first_weight: np.ndarray  # int32 [J, out, 1, K1]: a row vector per output, for a batched MatMul
    second_index: np.ndarray  # int64 [V, out, K2]: rows (columns) of the stacked first-pass results
    second_weight: np.ndarray  # int32 [V, out, 1, K2]
    order: np.ndarray  # int64 [N]: rows of [V views, V mirrored views] in make_views' order

    @property
    def gathered_elements(self) -> int:
        """int32 elements the graph's two gathers materialise (its working memory is ~4× this in bytes)."""
        j, o1, k1 = self.first_index.shape
        v, o2, k2 = self.second_index.shape
        across = self.width if self.vertical_first else self.height
        return j * o1 * k1 * across * 3 + v * o2 * k2 * o1 * 3

    def feeds(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        return {
            "image": np.ascontiguousarray(pixels, np.uint8),
            "vertical_first": np.array(self.vertical_first),
            "first_index": self.first_index,
            "first_weight": self.first_weight,
            "second_index": self.second_index,
            "second_weight": self.second_weight,
            "order": self.order,
        }


def _taps(
    starts: list[int], coeffs: np.ndarray, in_size: int, k: int, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Index and weight rows padded to k taps (padding points at a valid index, weight 0)."""
    out, ks = coeffs.shape
    index = np.asarray(starts, np.int64)[:, None] + np.arange(k, dtype=np.int64)[None, :]
    weight = np.zeros((out, k), np.int64)
    weight[:, :ks] = coeffs
    index = np.where(weight != 0, index, np.asarray(starts, np.int64)[:, None])
    return np.minimum(index, in_size - 1) + offset, weight


def view_plan(
    width: int,
    height: int,
    contract: PreprocessContract,
    mode: str = "multi",
    grid: int = 3,
    overlap: float = 0.25,
    flip: bool = False,
) -> ViewPlan:
    """The plan for every view `make_views` would cut from a width×height image."""
    ho, wo = contract.input_size
    vertical_first = pillow_vertical_first(width, height, wo, ho)
    boxes = view_boxes(width, height, mode, grid, overlap)
    # (size along the axis, out size, box lo index, box hi index) for the first and second pass
    first = (height, ho, 1, 3) if vertical_first else (width, wo, 0, 2)
    second = (width, wo, 0, 2) if vertical_first else (height, ho, 1, 3)
    windows: dict[tuple[float, float], int] = {}
    first_rows: list[tuple[list[int], np.ndarray]] = []
    second_rows: list[tuple[int, list[int], np.ndarray]] = []
    for _, box in boxes:
        size, out, lo, hi = first
        key = (float(np.float32(box[lo])), float(np.float32(box[hi])))
        if key not in windows:
            windows[key] = len(windows)
            first_rows.append(resample_coeffs(size, box[lo], box[hi], out, contract.resize))
        size2, out2, lo2, hi2 = second
        second_rows.append((windows[key], *resample_coeffs(size2, box[lo2], box[hi2], out2, contract.resize)))
    k1 = max(c.shape[1] for _, c in first_rows)
    k2 = max(c.shape[1] for _, _, c in second_rows)
    f = [_taps(s, c, first[0], k1) for s, c in first_rows]
    g = [_taps(s, c, second[0], k2, offset=j * second[0]) for j, s, c in second_rows]
    n_views = len(boxes)
    order = [i for v_i in range(n_views) for i in ((v_i, v_i + n_views) if flip else (v_i,))]
    names = [n for name, _ in boxes for n in ((name, f"{name}:flip") if flip else (name,))]
    return ViewPlan(
        names=tuple(names),
        height=height,
        width=width,
        vertical_first=vertical_first,
        first_index=np.stack([i for i, _ in f]),
        first_weight=np.stack([w for _, w in f]).astype(np.int32)[:, :, None, :],
        second_index=np.stack([i for i, _ in g]),
        second_weight=np.stack([w for _, w in g]).astype(np.int32)[:, :, None, :],
        order=np.asarray(order, np.int64),
    )


def _pass(gathered: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """gathered [..., K, block], weight [..., 1, K] → [..., block]."""
    acc = (weight @ gathered)[..., 0, :] + (1 << (PRECISION_BITS - 1))
    return np.clip(acc >> PRECISION_BITS, 0, 255)


def views_uint8(pixels: np.ndarray, plan: ViewPlan) -> np.ndarray:
    """numpy reference of the graph's integer part: uint8 views [N, Ho, Wo, 3]."""
    x = pixels.astype(np.int64)
    if plan.vertical_first:
        x = x.transpose(1, 0, 2)  # the same two passes on the transposed image
    a, b, _ = x.shape  # a: the axis the second pass runs along, b: the first pass's
    lines = x.transpose(1, 0, 2).reshape(b, a * 3)  # [B, A·3]: one row per position along the first axis
    first = _pass(lines[plan.first_index], plan.first_weight.astype(np.int64))  # [J, O1, A·3]
    j, o1 = first.shape[:2]
    stacked = first.reshape(j, o1, a, 3).transpose(0, 2, 1, 3).reshape(j * a, o1 * 3)  # [J·A, O1·3]
    out = _pass(stacked[plan.second_index], plan.second_weight.astype(np.int64))  # [V, O2, O1·3]
    out = out.reshape(out.shape[0], out.shape[1], o1, 3)  # [V, O2, O1, 3]
    if plan.vertical_first:
        out = out.transpose(0, 2, 1, 3)  # back to [V, Ho, Wo, 3]
    both = np.concatenate([out, out[:, :, ::-1]])
    return both[plan.order].astype(np.uint8)
