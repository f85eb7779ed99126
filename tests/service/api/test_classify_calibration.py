"""/classify's calibrator and conformal options: what the gateway returns is what contracts/ computes
from calibration.json, and bad options get the data plane's codes."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from contracts.aggregate import aggregate, softmax
from contracts.calibration import Calibration
from contracts.conformal import ConformalMethod, sets
from contracts.manifest import VisionManifest
from contracts.vision import make_views
from service.app import create_app
from service.settings import Settings
from tests.conftest import wait_ready
from tests.service.vision.images import scene_png

KINDS = ("none", "temperature", "vector", "dirichlet", "isotonic", "beta")


@pytest.fixture(scope="module")
def entry(tiny_vision_repo):  # type: ignore[no-untyped-def]
    return tiny_vision_repo / "tiny-vit"


@pytest.fixture(scope="module")
def client(tiny_vision_repo):  # type: ignore[no-untyped-def]
    with TestClient(create_app(Settings(model_repository=tiny_vision_repo, grpc_port=0))) as c:
        wait_ready(c)
        yield c


def post(client: TestClient, query: str, *images: bytes):  # type: ignore[no-untyped-def]
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return client.post(f"/classify{query}", files=files)


def reference(entry, image: bytes, pipeline: str, calibrator: str) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The export side's computation: Pillow views, ONNX Runtime, aggregation, the stored calibrator."""
    import io

    import onnxruntime as ort

    from service.vision.model import load_contract

    manifest = VisionManifest.read(entry)
    contract = load_contract(manifest)
    sess = ort.InferenceSession(str(manifest.path(manifest.files["fp32"])), providers=["CPUExecutionProvider"])
    flip = pipeline == "multi_flip"
    _, views = make_views(Image.open(io.BytesIO(image)).convert("RGB"), contract, "multi", 3, 0.25, flip)
    raw = aggregate(softmax(sess.run(None, {contract.input_name: views})[0]), "confidence_weighted")
    cal = Calibration.read(manifest.path(manifest.calibration))
    return cal.pipelines[pipeline].calibrators[calibrator].apply(raw)


@pytest.mark.parametrize("calibrator", KINDS)
def test_each_calibrator_gives_what_contracts_computes(client: TestClient, entry, calibrator: str) -> None:  # type: ignore[no-untyped-def]
    img = scene_png(21)
    body = post(client, f"?tta_flip=true&top_k=10&calibrator={calibrator}", img).json()
    assert body["calibration"]["calibrator"] == calibrator and body["options"]["calibrator"] == calibrator
    got = {t["index"]: t["probability"] for t in body["results"][0]["top"]}
    want = reference(entry, img, "multi_flip", calibrator)
    assert max(abs(got[i] - want[i]) for i in range(10)) < 1e-6


def test_defaults_come_from_the_file(client: TestClient, entry) -> None:  # type: ignore[no-untyped-def]
    cal = Calibration.read(entry / "calibration.json")
    body = post(client, "?prediction_set=true", scene_png(3)).json()
    c = body["calibration"]
    assert c["calibrator"] == cal.pipelines["multi"].default and c["fitted_for_request"] is True
    assert c["method"] == cal.conformal.method and c["alpha"] == cal.conformal.alpha == 0.1
    assert c["calibration_images"] == cal.pipelines["multi"].n_holdout
    uncal = post(client, "?calibrated=false&top_k=10", scene_png(3)).json()
    none = post(client, "?calibrator=none&top_k=10", scene_png(3)).json()
    assert uncal["results"][0]["top"] == none["results"][0]["top"]
    assert post(client, "?aggregate=mean", scene_png(3)).json()["calibration"]["fitted_for_request"] is False


@pytest.mark.parametrize(
    "query",
    [
        "?prediction_set=true&conformal=lac&alpha=0.2",
        "?prediction_set=true&conformal=aps&alpha=0.1&calibrator=temperature",
        "?prediction_set=true&conformal=raps&alpha=0.15&k_reg=1&lambda=0.3&tta_flip=true",
        "?prediction_set=true&conformal=raps&alpha=0.3&randomized=true&seed=7",
        "?prediction_set=true&conformal=aps&alpha=0.05&randomized=true&seed=1&views=single",
    ],
)
def test_prediction_sets_follow_the_requested_method_and_alpha(client: TestClient, entry, query: str) -> None:  # type: ignore[no-untyped-def]
    images = [scene_png(30), scene_png(31), scene_png(32)]
    body = post(client, query + "&top_k=10", *images).json()
    c, opts = body["calibration"], body["options"]
    cal = Calibration.read(entry / "calibration.json")
    pc = cal.pipelines[c["pipeline"]]
    rule = ConformalMethod(c["method"], bool(opts["randomized"]), opts["k_reg"] or 0, opts["lambda"] or 0.0)
    qhat = pc.qhat(c["calibrator"], rule, c["alpha"], cal.conformal.seed)
    assert c["threshold"] == pytest.approx(qhat) and c["coverage_target"] == pytest.approx(1 - c["alpha"])
    u = np.random.default_rng(opts["seed"]).random(3) if opts["randomized"] else None
    probs = np.array(
        [[next(t["probability"] for t in r["top"] if t["index"] == j) for j in range(10)] for r in body["results"]]
    )
    want = sets(probs, qhat, rule, u)
    for r, inside in zip(body["results"], want, strict=True):
        assert r["prediction_set"] == [t["label"] for t in r["top"] if inside[t["index"]]]
        assert r["prediction_set"][0] == r["top"][0]["label"]  # never empty, top class first
    if opts["randomized"]:  # a seeded randomised request is reproducible
        assert [r["prediction_set"] for r in post(client, query + "&top_k=10", *images).json()["results"]] == [
            r["prediction_set"] for r in body["results"]
        ]


def test_any_alpha_works_and_smaller_alpha_gives_bigger_sets(client: TestClient) -> None:
    img = scene_png(40)
    sizes = [
        len(post(client, f"?prediction_set=true&alpha={a}", img).json()["results"][0]["prediction_set"])
        for a in (0.5, 0.3, 0.2, 0.1, 0.05)
    ]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize(
    ("query", "param", "fragment"),
    [
        ("?calibrator=platt", "calibrator", "must be one of"),
        ("?calibrated=false&calibrator=beta", "calibrator", "contradicts"),
        ("?alpha=0.1", "alpha", "add prediction_set=true"),
        ("?conformal=aps", "conformal", "add prediction_set=true"),
        ("?prediction_set=true&conformal=vote", "conformal", "must be one of"),
        ("?prediction_set=true&alpha=0.001", "alpha", "held-out calibration images"),
        ("?prediction_set=true&alpha=1.5", "alpha", "must be in"),
        ("?prediction_set=true&conformal=lac&k_reg=2", "k_reg", "conformal=raps"),
        ("?prediction_set=true&conformal=raps&lambda=-1", "lambda", "between 0"),
        ("?prediction_set=true&conformal=raps&k_reg=99", "k_reg", "between 0"),
        ("?prediction_set=true&conformal=lac&randomized=true", "randomized", "applies to conformal=aps"),
        ("?prediction_set=true&conformal=aps&seed=3", "seed", "randomized=true"),
        ("?prediction_set=true&alpha=abc", "alpha", "valid number"),
    ],
)
def test_bad_options_are_refused_with_the_parameter_named(
    client: TestClient, query: str, param: str, fragment: str
) -> None:
    r = post(client, query, scene_png(1))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_parameter" and err.get("param") == param, err
    assert fragment in err["message"]
