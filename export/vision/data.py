"""Demo data every machine has: scikit-learn's 8×8 handwritten digits, pasted small into scenes.

Each scene is a noisy 128×128 RGB image with distractor strokes and one digit, upscaled to
`digit_px` pixels, at a random position. Downscaled to the model's 32×32 input the digit is
3-6 pixels tall and mostly lost; a tile of a 3×3 grid keeps it legible. That is the
small-object problem multi-view inference exists for.

Splits are made by *source image*: every 8×8 digit belongs to exactly one of train / val /
calib / test, so no digit (however re-pasted) is ever seen by two splits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SPLITS = {"train": 0.6, "val": 0.1, "calib": 0.15, "test": 0.15}
LABELS = tuple(str(i) for i in range(10))
SCENE_SIZE = 128
DIGIT_PX = (13, 22)


@dataclass
class Scene:
    pixels: np.ndarray  # uint8 [H, W, 3]
    label: int
    source: int  # index into load_digits()
    box: tuple[int, int, int, int]  # digit's left, top, right, bottom


def load_sources() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def split_sources(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Disjoint, seeded index sets over the n source images."""
    order = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    names = list(SPLITS)
    for i, name in enumerate(names):
        stop = n if i == len(names) - 1 else start + round(SPLITS[name] * n)
        out[name] = np.sort(order[start:stop])
        start = stop
    return out


def render_scene(digit: np.ndarray, label: int, source: int, rng: np.random.Generator, size: int = SCENE_SIZE) -> Scene:
    """One scene: noisy tinted background, 4-8 distractor strokes and blobs, one small digit."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    gx, gy = rng.uniform(-25, 25, size=2)
    gray = rng.uniform(35, 80) + gx * xx + gy * yy + rng.normal(0, rng.uniform(8, 18), (size, size))
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(4, 9))):
        x0, y0 = rng.uniform(0, size, 2)
        length, angle = rng.uniform(6, 30), rng.uniform(0, np.pi)
        x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
        draw.line([(x0, y0), (x1, y1)], fill=int(rng.integers(110, 230)), width=int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(1, 3))):
        cx, cy, r = *rng.uniform(0, size, 2), rng.uniform(2, 6)
        draw.arc([cx - r, cy - r, cx + r, cy + r], 0, float(rng.uniform(120, 360)), fill=int(rng.integers(110, 230)))
    strokes = np.asarray(layer, np.float32)

    px = int(rng.integers(DIGIT_PX[0], DIGIT_PX[1] + 1))
    glyph = Image.fromarray((digit * 255).astype(np.uint8)).resize((px, px), Image.Resampling.BILINEAR)
    x, y = (int(v) for v in rng.integers(0, size - px + 1, size=2))
    ink = np.zeros((size, size), np.float32)
    ink[y : y + px, x : x + px] = np.asarray(glyph, np.float32) / 255 * rng.uniform(170, 250)

    gray = np.maximum(np.maximum(gray, strokes), ink) + rng.normal(0, 6, (size, size))
    tint = rng.uniform(0.75, 1.0, size=3)
    rgb = np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8)
    return Scene(rgb, int(label), int(source), (x, y, x + px, y + px))


def make_scenes(split: str, per_source: int = 1, seed: int = 0, limit: int | None = None) -> list[Scene]:
    """Scenes for one split, deterministic in (split, seed): `per_source` placements per digit."""
    images, targets = load_sources()
    idx = split_sources(len(images), seed)[split]
    if limit is not None:
        idx = idx[:limit]
    rng = np.random.default_rng([seed, list(SPLITS).index(split), per_source])
    return [render_scene(images[i], targets[i], int(i), rng) for i in idx for _ in range(per_source)]
