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
    r = c.post('/classify?tta_flip=true', files={{'file': ('s.png', scene_png(), 'image/png')}})
    assert r.status_code == 200, r.text
print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"')) == []
