"""A real `kiln serve` with a classifier: REST and gRPC Classify agree; torch is never imported."""

from __future__ import annotations

import json
import subprocess
import sys

import grpc
import httpx
import pytest

from service.rpc import kiln_v1_pb2 as pb
from service.rpc import kiln_v1_pb2_grpc as pb_grpc
from tests.live_server import Server
from tests.service.vision.images import BAD, scene_png

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tiny_lm_vision_repo):  # type: ignore[no-untyped-def]
    srv = Server(tiny_lm_vision_repo, KILN_MAX_BATCH="2", KILN_MAX_SEQ_LEN="128")
    yield srv
    srv.stop()


def test_grpc_classify_matches_rest(live: Server) -> None:
    img = scene_png(11)
    rest = httpx.post(
        f"{live.url}/classify?tta_flip=true&prediction_set=true&calibrated=true&return_views=true",
        files={"file": ("s.png", img, "image/png")},
        timeout=30,
    ).json()["results"][0]
    stub = pb_grpc.KilnStub(grpc.insecure_channel(live.grpc_target))
    out = stub.Classify(
        pb.ClassifyRequest(images=[img], tta_flip=True, prediction_set=True, calibrated=True, return_views=True),
        timeout=30,
    )
    assert out.model == "tiny-vit"
    (res,) = out.results
    assert [t.label for t in res.top] == [t["label"] for t in rest["top"]]
    assert [t.probability for t in res.top] == pytest.approx([t["probability"] for t in rest["top"]], abs=1e-9)
    assert list(res.prediction_set) == rest["prediction_set"]
    assert len(res.views) == 20 and res.views[1].name == "global:flip"
    assert res.timings_ms["total_ms"] > 0
    models = {m.id: m.kind for m in stub.ListModels(pb.ListModelsRequest()).models}
    assert models == {"tiny-lm": "text-generation", "tiny-vit": "image-classification"}


def test_grpc_calibrator_and_conformal_options_match_rest(live: Server) -> None:
    img = scene_png(12)
    query = "grid=2&overlap=0.3&calibrator=temperature&prediction_set=true&conformal=raps&alpha=0.2&k_reg=1"
    rest = httpx.post(
        f"{live.url}/classify?{query}&lambda=0.1&randomized=true&seed=5&top_k=10",
        files={"file": ("s.png", img, "image/png")},
        timeout=30,
    ).json()
    stub = pb_grpc.KilnStub(grpc.insecure_channel(live.grpc_target))
    req = pb.ClassifyRequest(
        images=[img],
        grid=2,
        overlap=0.3,
        calibrator="temperature",
        prediction_set=True,
        conformal="raps",
        alpha=0.2,
        k_reg=1,
        raps_lambda=0.1,
        randomized=True,
        seed=5,
        top_k=10,
    )
    out = stub.Classify(req, timeout=30)
    (res,) = out.results
    assert list(res.prediction_set) == rest["results"][0]["prediction_set"]
    assert [t.probability for t in res.top] == pytest.approx([t["probability"] for t in rest["results"][0]["top"]])
    cal = rest["calibration"]
    assert (out.calibration.calibrator, out.calibration.method) == ("temperature", "raps")
    assert out.calibration.alpha == pytest.approx(cal["alpha"]) and out.calibration.threshold == pytest.approx(
        cal["threshold"]
    )
    assert out.calibration.calibration_images == cal["calibration_images"] and not out.calibration.fitted_for_request
    # Unset `calibrated` is calibrated, as over REST; the same validation and codes as REST.
    default = stub.Classify(pb.ClassifyRequest(images=[img]), timeout=30)
    assert default.calibration.calibrator and default.calibration.pipeline == "multi"
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(pb.ClassifyRequest(images=[img], prediction_set=True, alpha=0.0001), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "alpha" in err.value.details()


def test_grpc_classify_errors_use_the_rest_codes(live: Server) -> None:
    stub = pb_grpc.KilnStub(grpc.insecure_channel(live.grpc_target))
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(pb.ClassifyRequest(images=[BAD["truncated"][0]]), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "truncated_image" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(pb.ClassifyRequest(images=[scene_png()], aggregate="vote"), timeout=30)
    assert "invalid_parameter" in err.value.details()


def test_classifying_never_imports_torch(tiny_lm_vision_repo) -> None:  # type: ignore[no-untyped-def]
    code = f"""
import sys, time, base64
from fastapi.testclient import TestClient
from service.app import create_app
from service.settings import Settings
from tests.service.vision.images import scene_png
with TestClient(create_app(Settings(model_repository={str(tiny_lm_vision_repo)!r}, grpc_port=0))) as c:
    while c.get('/readyz').status_code != 200:
        time.sleep(0.05)
    r = c.post('/classify?tta_flip=true&prediction_set=true&calibrator=isotonic&conformal=raps',
               files={{'file': ('s.png', scene_png(), 'image/png')}})
    assert r.status_code == 200, r.text
heavy = ('torch', 'scipy', 'sklearn', 'matplotlib')  # export-only: calibrators are applied with numpy
print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"')) == []
