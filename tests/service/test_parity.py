"""One data plane under every transport: REST and gRPC give the same tokens and the same error
codes for the same requests, and a failure after a stream has started means the same everywhere."""

from __future__ import annotations

import json
import logging

import grpc
import pytest
from fastapi.testclient import TestClient

from service.rpc import kiln_v1_pb2 as pb
from service.rpc import kiln_v1_pb2_grpc as pb_grpc
from tests.service.inprocess import serving


@pytest.fixture(scope="module")
def both(tiny_lm_repo):  # type: ignore[no-untyped-def]
    with serving(tiny_lm_repo, max_batch=4, max_seq_len=128, max_stop_strings=2) as pair:
        yield pair


def grpc_code(stub: pb_grpc.KilnStub, request: pb.GenerateRequest) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        stub.Generate(request)
    return err.value.code(), err.value.details().split(":", 1)[0]


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": "def fib(n):", "max_new_tokens": 12, "temperature": 0.0},
        {"prompt": "class Point:", "max_new_tokens": 9, "temperature": 0.0, "stop": [")"]},
        {"prompt": "import os", "max_new_tokens": 10, "temperature": 1.0, "top_p": 0.9, "seed": 7, "ignore_eos": True},
        {"prompt": "hello wörld 🙂", "max_new_tokens": 6, "top_k": 5, "temperature": 0.8, "seed": 1},
    ],
)
def test_rest_and_grpc_give_the_same_tokens(both, fields: dict) -> None:  # type: ignore[no-untyped-def]
    client, stub = both
    rest = client.post("/generate", json=fields).json()
    rpc = stub.Generate(pb.GenerateRequest(**fields))
    assert rpc.text == rest["text"] and rpc.finish_reason == rest["finish_reason"]
    assert rpc.usage.completion_tokens == rest["usage"]["completion_tokens"]
    assert rpc.usage.prompt_tokens == rest["usage"]["prompt_tokens"]
    streamed = "".join(m.chunk.text for m in stub.GenerateStream(pb.GenerateRequest(**fields)) if m.HasField("chunk"))
    assert streamed == rest["text"]


@pytest.mark.parametrize(
    ("fields", "http", "status"),
    [
        ({"prompt": ""}, 400, grpc.StatusCode.INVALID_ARGUMENT),
        ({"prompt": "x", "top_p": 2.0}, 400, grpc.StatusCode.INVALID_ARGUMENT),
        ({"prompt": "x", "temperature": 9.0}, 400, grpc.StatusCode.INVALID_ARGUMENT),
        ({"prompt": "x", "max_new_tokens": 99999}, 400, grpc.StatusCode.INVALID_ARGUMENT),
        ({"prompt": "x", "top_k": 10**6}, 400, grpc.StatusCode.INVALID_ARGUMENT),
        ({"prompt": "x", "stop": ["a", "b", "c"]}, 400, grpc.StatusCode.INVALID_ARGUMENT),
        ({"prompt": "x", "stop": ["y" * 300]}, 400, grpc.StatusCode.INVALID_ARGUMENT),
        ({"prompt": "word " * 200, "max_new_tokens": 64}, 400, grpc.StatusCode.INVALID_ARGUMENT),
        ({"prompt": "x", "model": "nope"}, 404, grpc.StatusCode.NOT_FOUND),
    ],
)
def test_rest_and_grpc_refuse_the_same_requests_with_the_same_code(both, fields: dict, http: int, status) -> None:  # type: ignore[no-untyped-def]
    client, stub = both
    r = client.post("/generate", json=fields)
    assert r.status_code == http, r.text
    code, kiln_code = grpc_code(stub, pb.GenerateRequest(**fields))
    assert code == status and kiln_code == r.json()["error"]["code"]


def test_a_failure_mid_stream_is_one_error_on_every_transport(both, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The model breaks after the first tokens: /generate SSE, OpenAI SSE and gRPC all end with
    `inference_failed`, and the engine serves the next request."""
    client, stub = both
    runner = client.app.state.registry.text["tiny-lm"].runner
    decode, verify = runner.decode, runner.verify
    calls = {"n": 0}

    def breaking(call):  # type: ignore[no-untyped-def]
        def breaks_after_three(*args):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] > 3:
                raise RuntimeError("the graph broke")
            return call(*args)

        return breaks_after_three

    def late_error(path: str, body: dict) -> dict:
        calls["n"] = 0
        with client.stream("POST", path, json={**body, "stream": True}) as r:
            assert r.status_code == 200
            lines = [line for line in r.iter_lines() if line]
        assert lines[-1] == "data: [DONE]" and lines[-3] == "event: error", lines[-4:]
        assert len([x for x in lines if x.startswith("data: {")]) >= 3  # tokens had been sent
        return json.loads(lines[-2][5:])["error"]

    # Both ways a decoding step can call the model: one token per row, or a speculative guess checked.
    monkeypatch.setattr(runner, "decode", breaking(decode))
    monkeypatch.setattr(runner, "verify", breaking(verify))
    generate = late_error("/generate", {"prompt": "def", "max_new_tokens": 30, "ignore_eos": True})
    openai = late_error("/v1/completions", {"model": "tiny-lm", "prompt": "def", "max_tokens": 30, "temperature": 0})
    calls["n"] = 0
    with pytest.raises(grpc.RpcError) as err:
        list(stub.GenerateStream(pb.GenerateRequest(prompt="def", max_new_tokens=30, ignore_eos=True)))
    assert generate["code"] == openai["code"] == "inference_failed" == err.value.details().split(":", 1)[0]
    assert generate["message"] == openai["message"] and "the graph broke" in generate["message"]
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert dict(err.value.trailing_metadata())["kiln-error-code"] == "inference_failed"
    monkeypatch.setattr(runner, "decode", decode)
    monkeypatch.setattr(runner, "verify", verify)
    assert client.post("/generate", json={"prompt": "x", "max_new_tokens": 3}).status_code == 200


def test_an_unexpected_grpc_error_is_internal_logged_and_counted(both, monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    client, stub = both
    plane = client.app.state.text

    async def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(plane, "complete", broken)
    with caplog.at_level(logging.ERROR, logger="kiln.grpc"), pytest.raises(grpc.RpcError) as err:
        stub.Generate(pb.GenerateRequest(prompt="x"), metadata=(("x-request-id", "req-parity-1"),))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "internal_error: internal error"  # no internals leak to the client
    assert dict(err.value.trailing_metadata())["x-request-id"] == "req-parity-1"
    logged = [r for r in caplog.records if r.exc_info and "req-parity-1" in r.getMessage()]
    assert logged and "ZeroDivisionError" in caplog.text
    metrics = client.get("/metrics").text
    assert 'route="/kiln.v1.Kiln/Generate",status="INTERNAL",task="text-generation"' in metrics


def test_frameworks_own_errors_come_in_kilns_shape(both) -> None:  # type: ignore[no-untyped-def]
    client: TestClient = both[0]
    for method, path, status, code in (
        ("GET", "/no/such/route", 404, "not_found"),
        ("GET", "/generate", 405, "method_not_allowed"),
        ("DELETE", "/v1/completions", 405, "method_not_allowed"),
    ):
        r = client.request(method, path)
        assert r.status_code == status
        assert set(r.json()) == {"error"} and r.json()["error"]["code"] == code and r.json()["error"]["message"]
        assert r.headers["x-request-id"]
    r = client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_chat_over_rest_and_grpc_is_the_same_turn(both) -> None:  # type: ignore[no-untyped-def]
    client, stub = both
    messages = [{"role": "system", "content": "Write Python."}, {"role": "user", "content": "a fib function"}]
    sampling = {"max_tokens": 10, "temperature": 0.7, "seed": 11, "presence_penalty": 0.5, "logit_bias": {"40": 2.0}}
    rest = client.post("/v1/chat/completions", json={"model": "tiny-lm", "messages": messages, **sampling}).json()
    request = pb.ChatRequest(
        model="tiny-lm",
        messages=[pb.ChatMessage(**m) for m in messages],
        max_new_tokens=10,
        temperature=0.7,
        seed=11,
        presence_penalty=0.5,
        logit_bias={40: 2.0},
    )
    rpc = stub.Chat(request)
    assert rpc.message.content == rest["choices"][0]["message"]["content"] and rpc.message.role == "assistant"
    assert rpc.usage.completion_tokens == rest["usage"]["completion_tokens"]
    streamed = "".join(m.chunk.text for m in stub.ChatStream(request) if m.HasField("chunk"))
    assert streamed == rpc.message.content
    bad = pb.ChatRequest(model="tiny-lm", messages=[pb.ChatMessage(role="wizard", content="x")])
    code, kiln_code = grpc_code_of(stub.Chat, bad)
    r = client.post("/v1/chat/completions", json={"model": "tiny-lm", "messages": [{"role": "wizard", "content": "x"}]})
    assert code == grpc.StatusCode.INVALID_ARGUMENT and kiln_code == r.json()["error"]["code"] == "invalid_messages"


def grpc_code_of(method, request) -> tuple[grpc.StatusCode, str]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        method(request)
    return err.value.code(), err.value.details().split(":", 1)[0]
