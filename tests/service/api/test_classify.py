"""POST /classify on the real app, over a repository serving a tiny LM and a tiny classifier."""

from __future__ import annotations

import base64
import re
import threading

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import wait_ready
from tests.service.vision.images import BAD, scene_png

MAX_BODY = 300_000


@pytest.fixture(scope="module")
def client(tiny_lm_vision_repo):  # type: ignore[no-untyped-def]
    settings = Settings(
        model_repository=tiny_lm_vision_repo,
        grpc_port=0,
        max_batch=2,
        max_seq_len=128,
        classify_max_images=4,
        classify_max_body_bytes=MAX_BODY,
        max_image_pixels=4_000_000,
        max_image_side=8192,
        classify_max_delay_ms=20,
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def post_files(client: TestClient, query: str = "", *images: bytes):  # type: ignore[no-untyped-def]
    files = [("file", (f"img{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return client.post(f"/classify{query}", files=files)


def test_multipart_multi_view_flip_prediction_set(client: TestClient) -> None:
    r = post_files(client, "?views=multi&tta_flip=true&prediction_set=true", scene_png(1))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny-vit" and body["labels"] == [str(i) for i in range(10)]
    (res,) = body["results"]
    assert res["num_views"] == 20 and (res["width"], res["height"]) == (128, 128)
    probs = [t["probability"] for t in res["top"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    assert res["prediction_set"] and set(res["prediction_set"]) <= set(body["labels"])
    assert res["prediction_set"][0] == res["top"][0]["label"]
    assert body["calibration"]["pipeline"] == "multi_flip" and body["calibration"]["coverage_target"] == 0.9
    assert body["options"]["calibrated"] is True  # calibrated by default when the model has T
    assert body["timings"]["total_ms"] >= body["timings"]["inference_ms"] > 0
    assert {"decode_ms", "views_ms"} <= set(res["timings"])


def test_json_base64_many_images_and_return_views(client: TestClient) -> None:
    imgs = [base64.b64encode(scene_png(i)).decode() for i in range(3)]
    imgs[1] = "data:image/png;base64," + imgs[1]
    r = client.post("/classify", json={"images": imgs, "return_views": True, "grid": 2, "top_k": 2})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == [0, 1, 2]
    for x in results:
        assert len(x["top"]) == 2 and x["num_views"] == 5
        assert [v["name"] for v in x["views"]] == ["global", "tile_0_0", "tile_0_1", "tile_1_0", "tile_1_1"]
        assert all(abs(sum(v["probabilities"]) - 1) < 1e-4 for v in x["views"])
    # Different images, different answers; the same image twice, the same answer.
    again = client.post("/classify", json={"image": imgs[0], "grid": 2, "top_k": 2}).json()["results"][0]
    assert again["top"] == results[0]["top"]


def test_options_change_the_answer_as_specified(client: TestClient) -> None:
    img = scene_png(7)
    single = post_files(client, "?views=single&return_views=true", img).json()["results"][0]
    assert single["num_views"] == 1
    raw = post_files(client, "?calibrated=false&top_k=10", img).json()["results"][0]["top"]
    cal = post_files(client, "?calibrated=true&top_k=10", img).json()["results"][0]["top"]
    assert [t["label"] for t in raw] == [t["label"] for t in cal]  # T keeps the ranking
    assert raw[0]["probability"] != pytest.approx(cal[0]["probability"], abs=1e-6)
    tops = {
        agg: post_files(client, f"?aggregate={agg}&k=2&top_k=10", img).json()["results"][0]["top"]
        for agg in ("mean", "max", "topk_mean", "confidence_weighted")
    }
    assert len({tuple(round(t["probability"], 6) for t in v) for v in tops.values()}) == 4
    # Raw image body (content-type image/png) works too.
    r = client.post("/classify?views=single", content=img, headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.json()["results"][0]["num_views"] == 1


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_images_get_clear_codes(client: TestClient, name: str) -> None:
    data, status, code = BAD[name]
    r = post_files(client, "", scene_png(0), data)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert "image 1" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"files": [("file", ("x.png", scene_png(size=(32, 32)), "image/png"))] * 5}, 400, "too_many_images"),
        ({"json": {"images": [base64.b64encode(scene_png(size=(32, 32))).decode()] * 5}}, 400, "too_many_images"),
        ({"content": b"\0" * (MAX_BODY + 1), "headers": {"content-type": "image/png"}}, 413, "payload_too_large"),
        ({"json": {"images": ["!!not base64!!"]}}, 400, "invalid_base64"),
        ({"json": {"images": []}}, 400, "no_images"),
        ({"json": {"image": base64.b64encode(scene_png()).decode(), "grid": 99}}, 400, "invalid_parameter"),
        ({"json": {"image": base64.b64encode(scene_png()).decode(), "aggregate": "vote"}}, 400, "invalid_parameter"),
        ({"json": {"image": base64.b64encode(scene_png()).decode(), "color": "red"}}, 400, "unknown_parameter"),
        ({"json": {"image": base64.b64encode(scene_png()).decode(), "model": "nope"}}, 404, "model_not_found"),
        ({"content": b"x", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
        ({"content": b"{", "headers": {"content-type": "application/json"}}, 400, "invalid_json"),
    ],
)
def test_request_errors(client: TestClient, kwargs: dict, status: int, code: str) -> None:
    r = client.post("/classify", **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_the_generation_routes_still_work_beside_the_classifier(client: TestClient) -> None:
    r = client.post("/generate", json={"prompt": "def", "max_new_tokens": 3})
    assert r.status_code == 200, r.text
    models = {m["id"]: m["kind"] for m in client.get("/v1/models").json()["data"]}
    assert models == {"tiny-lm": "text-generation", "tiny-vit": "image-classification"}
    assert client.get("/readyz").json()["models"] == {"tiny-lm": "ready", "tiny-vit": "ready"}


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if re.match(rf"{re.escape(name)}(\{{.*\}})? ", line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_concurrent_requests_are_batched_together_and_counted(client: TestClient) -> None:
    before = client.get("/metrics").text
    img = scene_png(3)
    statuses: list[int] = []

    def call() -> None:
        statuses.append(post_files(client, "?tta_flip=true", img).status_code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    after = client.get("/metrics").text
    assert statuses == [200] * 8
    assert metric(after, "kiln_classify_images_total") - metric(before, "kiln_classify_images_total") == 8
    assert metric(after, "kiln_classify_views_total") - metric(before, "kiln_classify_views_total") == 160
    runs = metric(after, "kiln_classify_batch_size_count") - metric(before, "kiln_classify_batch_size_count")
    views = metric(after, "kiln_classify_batch_size_sum") - metric(before, "kiln_classify_batch_size_sum")
    assert views == 160 and runs < 8, "concurrent requests should share ONNX Runtime runs"
    for name in ("kiln_classify_preprocess_seconds_count", "kiln_classify_inference_seconds_count"):
        assert metric(after, name) > metric(before, name)


def test_per_model_readiness_knows_the_classifier(client: TestClient) -> None:
    assert client.get("/readyz", params={"model": "tiny-vit"}).json()["state"] == "ready"
    assert client.get("/readyz", params={"model": "tiny-lm"}).status_code == 200
    assert client.get("/readyz", params={"model": "nope"}).status_code == 404


def test_views_carry_their_box_confidence_and_weight_in_the_aggregate(client: TestClient) -> None:
    import numpy as np

    from contracts.aggregate import aggregate
    from contracts.vision import view_boxes

    img = scene_png(3)
    body = post_files(client, "?return_views=true&tta_flip=true&calibrated=false&top_k=10", img).json()
    res = body["results"][0]
    views = res["views"]
    assert len(views) == 20 and views[1]["name"] == "global:flip"
    boxes = dict(view_boxes(res["width"], res["height"], "multi", 3, 0.25))
    for v in views:
        assert v["box"] == pytest.approx(list(boxes[v["name"].split(":")[0]]), abs=0.01)
    probs = np.array([v["probabilities"] for v in views])
    c = probs.shape[1]
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1))).sum(1)
    assert [v["confidence"] for v in views] == pytest.approx(np.clip(1 - entropy / np.log(c), 0, 1), abs=1e-5)
    weights = np.array([v["weight"] for v in views])
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    # The weights reproduce the served (uncalibrated) aggregate.
    mixed = (weights[:, None] * probs).sum(0)
    assert mixed / mixed.sum() == pytest.approx(aggregate(probs, "confidence_weighted"), abs=1e-4)
    top = {t["index"]: t["probability"] for t in res["top"]}
    assert [top[j] for j in top] == pytest.approx([float(mixed[j] / mixed.sum()) for j in top], abs=1e-4)
    mean = post_files(client, "?return_views=true&aggregate=mean", img).json()["results"][0]["views"]
    assert [v["weight"] for v in mean] == pytest.approx([0.1] * 10)
    picked = post_files(client, "?return_views=true&aggregate=max", img).json()["results"][0]["views"]
    assert all(v["weight"] is None for v in picked)
