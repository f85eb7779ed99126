"""Classifier checkpoints: `config.json` (+ `model.safetensors`), for our ViT or a timm model.

`config.json` carries everything export needs besides the weights: the architecture
(`kiln-vit` with its config, or `timm` with the model name and kwargs), the labels, the
preprocessing (input size, mean/std, resize mode) and, for the demo, which dataset and seed
to draw the calibration split from. timm models are always built with `pretrained=False`
and loaded from the local file: nothing is fetched from a hub.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from contracts.manifest import VISION_KIND
from contracts.vision import PreprocessContract
from export.vision.compat import import_timm
from export.vision.vit import ViT, ViTConfig

KIND = VISION_KIND  # a classifier checkpoint's config.json says so, like its kiln.json


class VisionCheckpointError(ValueError):
    """Not a classifier checkpoint Kiln can load; the message says why."""


@dataclass
class VisionCheckpoint:
    model: nn.Module
    contract: PreprocessContract
    path: Path
    arch: str
    meta: dict = field(default_factory=dict)


def build_model(arch: str, spec: dict) -> nn.Module:
    if arch == "kiln-vit":
        return ViT(ViTConfig.from_dict(spec))
    if arch == "timm":
        timm = import_timm()
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        return timm.create_model(spec["name"], pretrained=False, **kwargs)
    raise VisionCheckpointError(f"unknown architecture {arch!r} (supported: kiln-vit, timm)")


def save_vision_checkpoint(
    model: nn.Module, arch: str, spec: dict, contract: PreprocessContract, out: str | Path, **meta: object
) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {"kind": KIND, "arch": arch, "model": spec, "preprocess": contract.to_dict(), **meta}
    (out / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))
    return out


def is_vision_checkpoint(path: str | Path) -> bool:
    cfg = Path(path) / "config.json"
    return cfg.exists() and json.loads(cfg.read_text()).get("kind") == KIND


def load_vision_checkpoint(path: str | Path, weights: str | Path | None = None) -> VisionCheckpoint:
    """Build the architecture named in config.json and load weights (default model.safetensors;
    a timm checkpoint may point `weights` at a `.safetensors` or `.pth` file instead)."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError as exc:
        raise VisionCheckpointError(f"{path}: no config.json") from exc
    if config.get("kind") != KIND:
        raise VisionCheckpointError(f"{path}: kind is {config.get('kind')!r}, not {KIND!r}")
    model = build_model(config["arch"], config["model"])
    weights = Path(weights) if weights else path / config.get("weights", "model.safetensors")
    if weights.suffix == ".safetensors":
        state = load_file(str(weights))
    else:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise VisionCheckpointError(f"{weights}: weights do not match {config['arch']}: {exc}") from exc
    if missing or unexpected:
        raise VisionCheckpointError(
            f"{weights}: weights do not match {config['arch']} (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    meta = {k: v for k, v in config.items() if k not in ("kind", "arch", "model", "preprocess")}
    return VisionCheckpoint(
        model.eval(), PreprocessContract.from_dict(config["preprocess"]), path, config["arch"], meta
    )
