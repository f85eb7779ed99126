"""Our ViT, timm models by name from a local checkpoint, and classifier checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from export.vision.checkpoint import (
    VisionCheckpointError,
    is_vision_checkpoint,
    load_vision_checkpoint,
    save_vision_checkpoint,
)
from export.vision.compat import import_timm
from export.vision.onnx_export import export_classifier_onnx, verify_classifier
from export.vision.train import demo_contract
from export.vision.vit import ViT, ViTConfig


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_vit_shapes_and_cls_readout(stem: str) -> None:
    torch.manual_seed(0)
    model = ViT(ViTConfig(image_size=16, patch_size=4, dim=32, depth=2, heads=4, stem=stem, num_classes=7)).eval()
    x = torch.randn(3, 3, 16, 16)
    assert model(x).shape == (3, 7)
    assert model.pos_embed.shape == (1, 1 + 16, 32)  # CLS + a 4×4 grid of patches
    # The head reads the CLS token only: changing it changes every output.
    with torch.no_grad():
        before = model(x)
        model.cls_token.add_(torch.randn_like(model.cls_token))
        assert not torch.allclose(before, model(x))


def test_vit_rejects_inconsistent_configs() -> None:
    with pytest.raises(ValueError):
        ViT(ViTConfig(image_size=30, patch_size=8))
    with pytest.raises(ValueError):
        ViT(ViTConfig(patch_size=6, stem="conv"))


def test_kiln_vit_checkpoint_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    cfg = ViTConfig(image_size=16, patch_size=8, dim=32, depth=1, heads=2, stem="conv")
    model = ViT(cfg).eval()
    path = save_vision_checkpoint(model, "kiln-vit", cfg.to_dict(), demo_contract(16), tmp_path / "ck", note="x")
    assert is_vision_checkpoint(path)
    loaded = load_vision_checkpoint(path)
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), loaded.model(x))
    assert loaded.contract == demo_contract(16) and loaded.meta == {"note": "x"}
    cfg_file = path / "config.json"
    bad = json.loads(cfg_file.read_text()) | {"model": {**cfg.to_dict(), "dim": 64, "heads": 2}}
    cfg_file.write_text(json.dumps(bad))
    with pytest.raises(VisionCheckpointError, match="do not match"):
        load_vision_checkpoint(path)


def test_timm_model_by_name_from_a_local_checkpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    try:
        timm = import_timm()
    except ImportError as exc:
        pytest.skip(str(exc))
    spec = {"name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 8, "num_classes": 10, "depth": 2}
    torch.manual_seed(0)
    model = timm.create_model(spec["name"], pretrained=False, **{k: v for k, v in spec.items() if k != "name"})
    model.eval()
    contract = demo_contract(32)
    path = save_vision_checkpoint(model, "timm", spec, contract, tmp_path / "timm-ck")
    # The weights may also be a plain torch state dict (.pth), as timm training scripts save them.
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    for weights in (None, tmp_path / "weights.pth"):
        loaded = load_vision_checkpoint(path, weights).model
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(model(x), loaded(x))
    onnx_file = export_classifier_onnx(loaded, contract, tmp_path / "timm.onnx")
    assert verify_classifier(loaded, onnx_file, contract)["passed"]
