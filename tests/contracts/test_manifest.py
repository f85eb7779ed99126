"""kiln.json: what export writes is what the service reads, and an unknown version is refused."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from contracts.calibration import Calibration
from contracts.manifest import (
    ATTENTION_KV,
    POSITIONS,
    RECURRENT,
    LayerState,
    TextManifest,
    VisionManifest,
    attention_state,
    read_manifest,
)
from contracts.versions import ContractError
from service.app import create_app
from service.settings import Settings
from tests.conftest import wait_ready


def test_the_exported_text_manifest_round_trips(tiny_lm_repo: Path, tmp_path: Path) -> None:
    entry = tiny_lm_repo / "tiny-lm"
    manifest = TextManifest.read(entry)
    assert manifest.root == entry and manifest.name == "tiny-lm"
    assert manifest.graph("fused").contract == "gqa" and manifest.graph("fused").path.is_file()
    assert manifest.graph("int8").variant == "fp32"  # not exported: falls back to fp32
    assert all(layer.kind == ATTENTION_KV and layer.grows for layer in manifest.state)
    manifest.write(tmp_path)
    assert TextManifest.read(tmp_path) == manifest
    assert json.loads((tmp_path / "kiln.json").read_text()) == json.loads((entry / "kiln.json").read_text())


def test_the_exported_vision_manifest_and_calibration_round_trip(tiny_vision_repo: Path, tmp_path: Path) -> None:
    entry = tiny_vision_repo / "tiny-vit"
    manifest = read_manifest(entry)
    assert isinstance(manifest, VisionManifest) and manifest.calibration == "calibration.json"
    manifest.write(tmp_path)
    assert VisionManifest.read(tmp_path) == manifest
    calibration = Calibration.read(entry / "calibration.json")
    again = Calibration.from_dict(calibration.to_dict())
    assert json.dumps(again.to_dict(), sort_keys=True) == json.dumps(calibration.to_dict(), sort_keys=True)
    assert set(calibration.pipelines) == {"single", "multi", "multi_flip"}


def _text(**changes: object) -> TextManifest:
    base = TextManifest("m", {"fp32": "1/model.onnx"}, {"fp32": "standard"}, attention_state(2, 2, 8), 50, 64, 1, (2,))
    return replace(base, **changes)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("manifest_version"), "no `manifest_version`.*older Kiln.*re-export"),
        (lambda d: d.update(manifest_version=3), "manifest_version 3, but this Kiln reads version 2"),
        (lambda d: d.update(kind="speech"), "kind 'speech' is not 'text-generation'"),
        (lambda d: d.pop("eos_token_ids"), "required field 'eos_token_ids' is missing"),
        (lambda d: d["state"][0].update(kind="quantum"), "unknown state kind 'quantum'"),
        (lambda d: d["state"][0]["tensors"].update({"key.0": [2, "time", 8]}), "bad shape"),
        (lambda d: d["graphs"].update(fp32="mystery"), "unknown graph contract"),
    ],
)
def test_a_manifest_this_kiln_cannot_serve_is_refused_with_the_reason(edit, message: str) -> None:  # type: ignore[no-untyped-def]
    data = _text().to_dict()
    edit(data)
    with pytest.raises(ContractError, match=message):
        TextManifest.from_dict(data)


def test_state_shapes_grow_only_along_positions() -> None:
    kv = LayerState(ATTENTION_KV, {"key.0": (2, POSITIONS, 8)})
    ssm = LayerState(RECURRENT, {"ssm.1": (16, 4)})
    assert kv.grows and not ssm.grows
    assert kv.slot_shape("key.0", 100) == (2, 100, 8) and ssm.slot_shape("ssm.1", 100) == (16, 4)
    assert LayerState.from_dict(ssm.to_dict(), "x") == ssm


def test_the_gateway_lists_a_model_of_an_unknown_version_as_failed(tiny_lm_repo: Path, tmp_path: Path) -> None:
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(tiny_lm_repo / "tiny-lm", repo / "tiny-lm")
    shutil.copytree(tiny_lm_repo / "tiny-lm", repo / "future-lm")
    data = json.loads((repo / "future-lm/kiln.json").read_text())
    (repo / "future-lm/kiln.json").write_text(json.dumps({**data, "name": "future-lm", "manifest_version": 99}))
    with TestClient(create_app(Settings(model_repository=repo, grpc_port=0))) as client:
        wait_ready(client)
        ready = client.get("/readyz").json()
        assert ready["models"] == {"tiny-lm": "ready"}
        assert "manifest_version 99" in ready["failed"]["future-lm"]
