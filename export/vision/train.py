"""Train the demo classifier on digit scenes for a few CPU minutes (`kiln train-demo --task vision`).

The model runs at tile resolution (32×32). Training samples are made with the gateway's own
crop-and-resize code (service/vision/views.py) from train-split scenes:

- a crop around the digit at about a 3×3 tile's size (target: the digit),
- one of the 3×3 grid tiles, which may hold the digit, part of it or nothing (target: the
  digit mixed with the uniform distribution by how much of it is visible, so empty tiles
  learn to say "no idea" and barely move a multi-view average),
- the whole scene downscaled (target: the digit; mostly too small to read, which is why
  multi-view exists),

each mirrored with probability 1/2 so that flip test-time augmentation is meaningful.
Determinism: the seed fixes the scenes, crops, initial weights and batch order, and training
runs a fixed number of steps; `max_minutes` is a safety cap only.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from contracts.vision import PreprocessContract, crop_resize, normalize, tile_boxes
from export.progress import bar, note
from export.vision.checkpoint import save_vision_checkpoint
from export.vision.data import LABELS, SCENE_SIZE, Scene, make_scenes
from export.vision.vit import ViT, ViTConfig

DEMO_VIT = dict(image_size=32, patch_size=8, dim=64, depth=4, heads=4, mlp_ratio=2.0, stem="conv")
MEAN, STD = (0.22, 0.2, 0.2), (0.1, 0.1, 0.1)  # the scenes are dark, low-contrast
GRID, OVERLAP = 3, 0.25
DATASET = "kiln-digit-scenes"


def demo_contract(image_size: int = 32) -> PreprocessContract:
    return PreprocessContract((image_size, image_size), MEAN, STD, "bilinear", LABELS)


def _visible(box: tuple[float, float, float, float], digit: tuple[int, int, int, int]) -> float:
    ix = max(0.0, min(box[2], digit[2]) - max(box[0], digit[0]))
    iy = max(0.0, min(box[3], digit[3]) - max(box[1], digit[1]))
    return ix * iy / ((digit[2] - digit[0]) * (digit[3] - digit[1]))


def _target(label: int, visible: float, classes: int = 10) -> np.ndarray:
    w = float(np.clip((visible - 0.3) / 0.6, 0.0, 1.0))
    t = np.full(classes, (1 - w) / classes, np.float32)
    t[label] += w
    return t


def make_samples(
    scenes: list[Scene], contract: PreprocessContract, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 crops [N, H, W, 3] and soft targets [N, 10]; 4 per scene: 2 digit crops, a tile, the scene."""
    tiles = tile_boxes(SCENE_SIZE, SCENE_SIZE, GRID, OVERLAP)
    side = tiles[0][2] - tiles[0][0]
    crops, targets = [], []
    for scene in scenes:
        img = Image.fromarray(scene.pixels)
        x0, y0, x1, y1 = scene.box
        boxes = []
        for _ in range(2):
            s = float(np.clip(side * rng.uniform(0.8, 1.2), x1 - x0 + 2, SCENE_SIZE))
            left = rng.uniform(max(0.0, x1 - s), min(float(x0), SCENE_SIZE - s))
            top = rng.uniform(max(0.0, y1 - s), min(float(y0), SCENE_SIZE - s))
            boxes.append((left, top, left + s, top + s))
        boxes += [tiles[int(rng.integers(len(tiles)))], (0.0, 0.0, float(SCENE_SIZE), float(SCENE_SIZE))]
        for box in boxes:
            crop = crop_resize(img, box, contract.input_size, contract.resize)
            crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
            targets.append(_target(scene.label, _visible(box, scene.box)))
    return np.stack(crops), np.stack(targets)


def train_demo_vision(
    out: Path,
    seed: int = 0,
    steps: int = 1500,
    max_minutes: float = 8.0,
    batch_size: int = 128,
    lr: float = 1e-3,
    scenes_per_source: int = 4,
    eval_every: int = 100,
    model_overrides: dict | None = None,
    source_limit: int | None = None,
    threads: int = 1,
) -> dict:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)  # fixed: results do not depend on the machine's core count
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    cfg = ViTConfig(**{**DEMO_VIT, **(model_overrides or {}), "num_classes": len(LABELS)})
    contract = demo_contract(cfg.image_size)
    train_scenes = make_scenes("train", scenes_per_source, seed, limit=source_limit)
    x_u8, y_np = make_samples(train_scenes, contract, rng)
    x = torch.from_numpy(normalize(x_u8, contract))
    y = torch.from_numpy(y_np)
    val_scenes = make_scenes("val", 1, seed, limit=None if source_limit is None else max(8, source_limit // 4))
    vx_u8, vy_np = make_samples(val_scenes, contract, np.random.default_rng(seed + 1))
    vx, vy = torch.from_numpy(normalize(vx_u8, contract)), torch.from_numpy(vy_np)
    print(f"data: {len(train_scenes)} train scenes -> {len(x)} crops; {time.perf_counter() - t0:.1f}s", flush=True)

    model = ViT(cfg)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    def evaluate() -> dict:
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(vx[i : i + 512]) for i in range(0, len(vx), 512)])
        model.train()
        loss = -(vy * F.log_softmax(logits, -1)).sum(-1).mean().item()
        hit = logits.argmax(-1) == vy.argmax(-1)
        return {
            "val_loss": round(loss, 4),
            "val_acc_digit_crop": round(hit[0::4].float().mean().item(), 4),
            "val_acc_global": round(hit[3::4].float().mean().item(), 4),
        }

    log: list[dict] = []
    started = time.perf_counter()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    pos, step, stopped_early = 0, 0, False
    model.train()
    progress = bar(steps, "train demo classifier")
    for step in range(steps):
        progress.update()
        if (time.perf_counter() - started) / 60 > max_minutes:
            stopped_early = True
            print(f"time cap of {max_minutes} min reached at step {step}; stopping early", flush=True)
            break
        if pos + batch_size > len(order):
            order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + step))
            pos = 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = -(y[idx] * F.log_softmax(model(x[idx]), -1)).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % eval_every == 0 or step == steps - 1:
            entry = {"step": step, "train_loss": round(loss.item(), 4), **evaluate()}
            entry["elapsed_s"] = round(time.perf_counter() - started, 1)
            log.append(entry)
            note(json.dumps(entry))

    progress.close()
    model.eval()
    save_vision_checkpoint(model, "kiln-vit", cfg.to_dict(), contract, out, dataset={"name": DATASET, "seed": seed})
    summary = {
        "seed": seed,
        "steps": step + 1,
        "planned_steps": steps,
        "stopped_early": stopped_early,
        "parameters": params,
        "train_scenes": len(train_scenes),
        "train_crops": len(x),
        "final": evaluate(),
        "log": log,
    }
    (out / "train_log.json").write_text(json.dumps(summary, indent=2))
    print(f"saved {out} ({params / 1e6:.2f}M parameters): {summary['final']}", flush=True)
    return summary
