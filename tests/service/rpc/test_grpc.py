"""kiln.v1.Kiln over a real gRPC channel to a live `kiln serve`."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.rpc import kiln_v1_pb2 as pb
from service.rpc import kiln_v1_pb2_grpc as pb_grpc
from tests.live_server import Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tiny_lm_repo):  # type: ignore[no-untyped-def]
    srv = Server(tiny_lm_repo, KILN_MAX_BATCH="2", KILN_MAX_QUEUE="1", KILN_MAX_SEQ_LEN="256")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def stub(live: Server) -> pb_grpc.KilnStub:
    channel = grpc.insecure_channel(live.grpc_target)
    grpc.channel_ready_future(channel).result(timeout=10)
    return pb_grpc.KilnStub(channel)


def test_generate_matches_rest(stub: pb_grpc.KilnStub, live: Server) -> None:
    out = stub.Generate(pb.GenerateRequest(prompt="def fib(n):", max_new_tokens=10, temperature=0))
    rest = httpx.post(f"{live.url}/generate", json={"prompt": "def fib(n):", "max_new_tokens": 10, "temperature": 0})
    assert out.text == rest.json()["text"]
    assert out.finish_reason == rest.json()["finish_reason"]
    assert out.usage.completion_tokens == rest.json()["usage"]["completion_tokens"]
    assert out.timings.total_ms > 0


def test_generate_stream_chunks_then_finish(stub: pb_grpc.KilnStub) -> None:
    req = pb.GenerateRequest(prompt="import os", max_new_tokens=12, temperature=0, ignore_eos=True)
    whole = stub.Generate(req).text
    messages = list(stub.GenerateStream(req))
    assert messages[-1].WhichOneof("event") == "finish"
    assert all(m.WhichOneof("event") == "chunk" for m in messages[:-1])
    assert "".join(m.chunk.text for m in messages[:-1]) == whole
    assert messages[-1].finish.usage.completion_tokens == 12
    assert messages[-1].finish.finish_reason == "length"


def test_list_models(stub: pb_grpc.KilnStub) -> None:
    models = stub.ListModels(pb.ListModelsRequest()).models
    assert [(m.id, m.kind, m.ready) for m in models] == [("tiny-lm", "text-generation", True)]


@pytest.mark.parametrize(
    ("request_", "code", "fragment"),
    [
        (pb.GenerateRequest(prompt=""), grpc.StatusCode.INVALID_ARGUMENT, "empty_prompt"),
        (pb.GenerateRequest(prompt="x", top_p=2.0), grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
        (pb.GenerateRequest(prompt="x", max_new_tokens=99999), grpc.StatusCode.INVALID_ARGUMENT, "KILN_MAX_NEW"),
        (pb.GenerateRequest(prompt="x", model="nope"), grpc.StatusCode.NOT_FOUND, "model_not_found"),
    ],
)
def test_errors_map_to_status_codes_with_the_rest_message(
    stub: pb_grpc.KilnStub, request_: pb.GenerateRequest, code: grpc.StatusCode, fragment: str
) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(request_)
    assert err.value.code() == code
    assert fragment in err.value.details()


def test_classify_without_a_vision_model_is_unimplemented(stub: pb_grpc.KilnStub) -> None:
    with pytest.raises(grpc.RpcError) as err:
        stub.Classify(pb.ClassifyRequest(images=[b"x"]))
    assert err.value.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.NOT_FOUND)


def test_health_service_and_reflection(live: Server) -> None:
    channel = grpc.insecure_channel(live.grpc_target)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "kiln.v1.Kiln"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert {"kiln.v1.Kiln", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_grpc_traffic_is_counted_with_a_protocol_label(stub: pb_grpc.KilnStub, live: Server) -> None:
    stub.Generate(pb.GenerateRequest(prompt="x", max_new_tokens=2))
    text = httpx.get(f"{live.url}/metrics").text
    labels = 'protocol="grpc",route="/kiln.v1.Kiln/Generate",status="OK",task="text-generation"'
    assert f"kiln_requests_total{{{labels}}}" in text
    assert 'kiln_generation_tokens_total{model="tiny-lm",protocol="grpc"}' in text


def test_deadline_queue_full_cancellation_and_draining(tiny_lm_repo) -> None:
    srv = Server(tiny_lm_repo, KILN_MAX_BATCH="1", KILN_MAX_QUEUE="1", KILN_FAULT_STEP_DELAY_MS="20")
    try:
        channel = grpc.insecure_channel(srv.grpc_target)
        stub = pb_grpc.KilnStub(channel)
        long = pb.GenerateRequest(prompt="x", max_new_tokens=200, ignore_eos=True)
        # DEADLINE_EXCEEDED: 200 steps x 20 ms cannot fit in 0.3 s.
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(long, timeout=0.3)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # Cancellation: a cancelled stream frees its slot.
        stream = stub.GenerateStream(long)
        next(stream)
        assert srv.metric("kiln_kv_slots_in_use") == 1
        stream.cancel()
        deadline = time.monotonic() + 5
        while srv.metric("kiln_kv_slots_in_use") != 0:
            assert time.monotonic() < deadline, "slot still held after cancel"
            time.sleep(0.02)
        # RESOURCE_EXHAUSTED: one running, one queued, the third is refused.
        running = stub.GenerateStream(long)
        next(running)
        queued = stub.Generate.future(long)
        deadline = time.monotonic() + 5
        while srv.metric("kiln_queue_depth") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(long)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "KILN_MAX_QUEUE" in err.value.details()
        # UNAVAILABLE while draining (SIGTERM), and the health service says NOT_SERVING.
        srv.proc.terminate()
        time.sleep(0.3)
        with pytest.raises(grpc.RpcError) as err:
            stub.Generate(pb.GenerateRequest(prompt="x", max_new_tokens=1))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        running.cancel()
        queued.cancel()
    finally:
        srv.stop()


def test_checked_in_stubs_match_the_proto(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            "service/rpc/kiln_v1.proto",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    for name in ("kiln_v1_pb2.py", "kiln_v1_pb2_grpc.py"):
        generated = (tmp_path / "service" / "rpc" / name).read_text()
        assert generated == (__import__("pathlib").Path("service/rpc") / name).read_text(), f"{name} is stale"
