"""The vision preprocessing contract (`preprocess.json`) and the pixel pipeline it defines.

Views of an image: one global view plus an N×N grid of overlapping tiles, and their flips.
This module is the single definition of the geometry and the pixel pipeline. The gateway uses
it to serve, and the export side uses the very same functions to build training crops and to
evaluate, so a model never sees pixels prepared differently from how it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from contracts.versions import check_version

PREPROCESS_VERSION = 1
RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class PreprocessContract:
    """The preprocessing contract written beside the model (`preprocess.json`).

    Version 1 is also the layout written before the file carried a version, so a missing
    `contract_version` reads as 1; any other version is refused.
    """

    input_size: tuple[int, int]  # (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "bilinear"
    labels: tuple[str, ...] = ()
    input_name: str = "pixel_values"
    output_name: str = "logits"

    @classmethod
    def from_dict(cls, d: dict, source: str = "preprocess.json") -> PreprocessContract:
        check_version(d, "contract_version", PREPROCESS_VERSION, source, default=1)
        return cls(
            input_size=(int(d["input_size"][0]), int(d["input_size"][1])),
            mean=tuple(float(x) for x in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(x) for x in d["std"]),  # type: ignore[arg-type]
            resize=str(d.get("resize", "bilinear")),
            labels=tuple(str(x) for x in d.get("labels", ())),
            input_name=str(d.get("input_name", "pixel_values")),
            output_name=str(d.get("output_name", "logits")),
        )

    def to_dict(self) -> dict:
        return {
            "contract_version": PREPROCESS_VERSION,
            "input_name": self.input_name,
            "output_name": self.output_name,
            "input_size": list(self.input_size),
            "layout": "NCHW",
            "dtype": "float32",
            "color": "RGB",
            "scale": 1 / 255,
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "fit": "stretch",
            "labels": list(self.labels),
        }


Box = tuple[float, float, float, float]  # left, top, right, bottom (pixels, floats allowed)


def tile_boxes(width: int, height: int, grid: int, overlap: float) -> list[Box]:
    """grid×grid tiles covering the image; neighbours share `overlap` of a tile's side."""
    if grid < 1:
        raise ValueError("grid must be >= 1")
    if not 0.0 <= overlap < 1.0:
        raise ValueError("overlap must be in [0, 1)")
    span = grid - (grid - 1) * overlap
    tw, th = width / span, height / span
    sx, sy = tw * (1 - overlap), th * (1 - overlap)
    return [(c * sx, r * sy, c * sx + tw, r * sy + th) for r in range(grid) for c in range(grid)]


def view_boxes(width: int, height: int, mode: str, grid: int = 3, overlap: float = 0.25) -> list[tuple[str, Box]]:
    """Named boxes: `global` always; `tile_r_c` for each grid cell when mode is `multi`."""
    views: list[tuple[str, Box]] = [("global", (0.0, 0.0, float(width), float(height)))]
    if mode == "multi":
        boxes = tile_boxes(width, height, grid, overlap)
        views += [(f"tile_{i // grid}_{i % grid}", b) for i, b in enumerate(boxes)]
    elif mode != "single":
        raise ValueError(f"unknown views mode {mode!r}")
    return views


def crop_resize(image: Image.Image, box: Box, size: tuple[int, int], resample: str = "bilinear") -> np.ndarray:
    """Crop `box` and resize to size=(height, width) in one Pillow call; uint8 [H, W, 3]."""
    h, w = size
    out = image.resize((w, h), RESAMPLE[resample], box=box)
    return np.asarray(out, dtype=np.uint8)


def normalize(pixels: np.ndarray, contract: PreprocessContract) -> np.ndarray:
    """uint8 [..., H, W, 3] → float32 [..., 3, H, W], scaled to [0, 1], then (x - mean) / std."""
    scaled = pixels.astype(np.float32) * np.float32(1 / 255)
    x: np.ndarray = (scaled - np.asarray(contract.mean, np.float32)) / np.asarray(contract.std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def make_views(
    image: Image.Image,
    contract: PreprocessContract,
    mode: str = "multi",
    grid: int = 3,
    overlap: float = 0.25,
    flip: bool = False,
) -> tuple[list[str], np.ndarray]:
    """All views of one RGB image as a model-ready float32 batch [V, 3, H, W] and their names.

    With `flip`, each view is followed by its horizontal mirror (`<name>:flip`), so a 3×3
    multi-view request with flips is (1 + 9) × 2 = 20 views.
    """
    names: list[str] = []
    crops: list[np.ndarray] = []
    for name, box in view_boxes(image.width, image.height, mode, grid, overlap):
        crop = crop_resize(image, box, contract.input_size, contract.resize)
        names.append(name)
        crops.append(crop)
        if flip:
            names.append(f"{name}:flip")
            crops.append(crop[:, ::-1])
    return names, normalize(np.stack(crops), contract)
