"""/v1/chat/completions with the official `openai` client, over the real app.

The client is the real `openai` package; its HTTP transport is FastAPI's TestClient (the app
in-process, no socket), so every request goes through the gateway's middleware, routes and
engine exactly as over the network. Models: a tiny Qwen2 checkpoint with its own ChatML
template, Kiln's tiny LM with the demo template, and a tiny Llama with no template.
"""

from __future__ import annotations

import json

import openai
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.chat_models import IM_END
from tests.conftest import wait_ready

HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "def fib(n):"}]


@pytest.fixture(scope="module")
def app_client(chat_repo):  # type: ignore[no-untyped-def]
    settings = Settings(model_repository=chat_repo, grpc_port=0, max_batch=4, max_seq_len=128)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="module")
def client(app_client: TestClient) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=app_client, max_retries=0)


def rendered_ids(app_client: TestClient, model: str, messages: list[dict]) -> list[int]:
    r = app_client.post("/tokenize", json={"model": model, "messages": messages})
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def test_the_template_renders_as_transformers_renders_it(app_client: TestClient, chat_repo) -> None:  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(chat_repo.parent / "hf" / "tiny-qwen")
    for messages in (
        HELLO,
        HELLO[1:],
        [*HELLO, {"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}],
    ):
        want = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        want = want["input_ids"] if hasattr(want, "keys") else list(want)  # transformers 5: a BatchEncoding
        assert rendered_ids(app_client, "tiny-qwen", messages) == want
    plain = app_client.post("/tokenize", json={"model": "tiny-qwen", "prompt": "def fib(n):"}).json()
    assert plain["tokens"] == hf("def fib(n):")["input_ids"] and plain["max_model_len"] == 128


def test_chat_is_generation_over_the_rendered_prompt(client: openai.OpenAI, app_client: TestClient) -> None:
    out = client.chat.completions.create(model="tiny-qwen", messages=HELLO, max_tokens=12, temperature=0)
    choice = out.choices[0]
    assert out.object == "chat.completion" and choice.message.role == "assistant"
    ids = rendered_ids(app_client, "tiny-qwen", HELLO)
    assert out.usage.prompt_tokens == len(ids)
    # The same tokens through /generate on the rendered text (it already holds its special tokens).
    text = app_client.post("/detokenize", json={"model": "tiny-qwen", "tokens": ids}).json()["prompt"]
    assert app_client.post("/tokenize", json={"model": "tiny-qwen", "prompt": text}).json()["tokens"] == ids
    native = app_client.post(
        "/generate", json={"model": "tiny-qwen", "prompt": text, "max_new_tokens": 12, "temperature": 0}
    ).json()
    assert choice.message.content == native["text"]


def test_streaming_chunks_come_in_openais_shape(client: openai.OpenAI) -> None:
    kwargs = {"model": "tiny-qwen", "messages": HELLO, "max_tokens": 10, "temperature": 0}
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason in ("length", "stop")
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({c.id for c in chunks}) == 1


def test_n_choices_seeds_and_logprobs(client: openai.OpenAI, app_client: TestClient) -> None:
    kwargs = {"model": "tiny-qwen", "messages": HELLO, "max_tokens": 6, "temperature": 1.0, "seed": 3, "n": 2}
    out = client.chat.completions.create(**kwargs, logprobs=True, top_logprobs=3)
    again = client.chat.completions.create(**kwargs, logprobs=True, top_logprobs=3)
    assert [c.index for c in out.choices] == [0, 1]
    assert [c.message.content for c in out.choices] == [c.message.content for c in again.choices]
    assert out.usage.completion_tokens == sum(len(c.logprobs.content) for c in out.choices)
    for entry in out.choices[0].logprobs.content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob >= entry.logprob - 1e-6  # the best alternative is at least as likely
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token or "\ufffd" in entry.token
    streamed = list(client.chat.completions.create(**kwargs, logprobs=True, top_logprobs=1, stream=True))
    tokens = [e.token for c in streamed if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(tokens) == out.usage.completion_tokens


def test_a_turn_ends_at_the_templates_end_of_turn_token(client: openai.OpenAI, app_client: TestClient) -> None:
    im_end = app_client.post("/tokenize", json={"model": "tiny-qwen", "prompt": IM_END}).json()["tokens"]
    assert len(im_end) == 1
    out = client.chat.completions.create(
        model="tiny-qwen",
        messages=HELLO,
        max_tokens=20,
        temperature=0,
        logit_bias={str(im_end[0]): 100},
        extra_body={"min_tokens": 3},
    )
    assert out.choices[0].finish_reason == "stop" and out.usage.completion_tokens == 4  # 3, then <|im_end|>
    assert IM_END not in out.choices[0].message.content


def schema_answers(client: openai.OpenAI, model: str, messages: list[dict], name: str, schema: dict, seeds, **kw):  # type: ignore[no-untyped-def]
    """One answer per seed under a strict `json_schema` response format: each must end by `stop`
    (the grammar closed the object), parsed."""
    fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
    values = []
    for seed in seeds:
        out = client.chat.completions.create(model=model, messages=messages, seed=seed, response_format=fmt, **kw)
        choice = out.choices[0]
        assert choice.finish_reason == "stop", choice
        values.append(json.loads(choice.message.content))
    return values


def test_json_schema_outputs_parse_and_validate(client: openai.OpenAI) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 6},
            "age": {"type": "integer", "minimum": 0, "maximum": 99},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    }
    for value in schema_answers(client, "tiny-qwen", HELLO, "person", schema, range(4), max_tokens=60, temperature=1.0):
        jsonschema.validate(value, schema)
    anything = client.chat.completions.create(
        model="tiny-lm", messages=HELLO, max_tokens=40, temperature=0, response_format={"type": "json_object"}
    )
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(anything.choices[0].message.content), dict)


@pytest.mark.parametrize(
    ("kwargs", "code", "param"),
    [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            "unsupported_parameter",
            "tools",
        ),
        ({"tool_choice": "required"}, "unsupported_parameter", "tool_choice"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "invalid_messages", "messages"),
        ({"messages": []}, "empty_messages", "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "unsupported_parameter",
            "messages",
        ),
        ({"max_tokens": 10**6}, "max_new_tokens_too_large", "max_tokens"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object", "not": {}}, "strict": True},
                }
            },
            "invalid_response_format",
            "response_format",
        ),
        ({"response_format": {"type": "regex", "regex": "(unclosed"}}, "invalid_response_format", "response_format"),
        ({"logit_bias": {"999999": 1}}, "invalid_parameter", "logit_bias"),
        ({"model": "tiny-llama"}, "chat_template_missing", "model"),
    ],
)
def test_bad_chat_requests_are_refused_openai_style(client: openai.OpenAI, kwargs: dict, code: str, param: str) -> None:
    args = {"model": "tiny-qwen", "messages": HELLO, "max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**args)
    body = err.value.body
    assert body["code"] == code and body["param"] == param and body["type"] == "invalid_request_error", body


def test_the_demo_template_lets_kilns_own_lm_chat(client: openai.OpenAI) -> None:
    out = client.chat.completions.create(model="tiny-lm", messages=HELLO, max_tokens=8, temperature=0)
    assert out.choices[0].finish_reason in ("length", "stop") and out.usage.prompt_tokens > 5


def test_a_default_template_serves_models_without_one(chat_repo) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(model_repository=chat_repo, grpc_port=0, default_chat_template="chatml")
    with TestClient(create_app(settings)) as app_client:
        wait_ready(app_client)
        r = app_client.post("/v1/chat/completions", json={"model": "tiny-llama", "messages": HELLO, "max_tokens": 3})
        assert r.status_code == 200, r.text
        ids = app_client.post("/tokenize", json={"model": "tiny-llama", "messages": HELLO}).json()["token_strs"] or []
        assert ids == []  # token_strs only on request
        text = app_client.post(
            "/tokenize", json={"model": "tiny-llama", "messages": HELLO, "return_token_strs": True}
        ).json()["token_strs"]
        assert "".join(text).startswith("<|im_start|>system")


def test_a_repeated_conversation_reports_its_cached_prefix(client: openai.OpenAI, app_client: TestClient) -> None:
    messages = [{"role": "system", "content": "You are a terse assistant. " * 4}, {"role": "user", "content": "hi"}]
    before = app_client.get("/metrics").text
    first = client.chat.completions.create(model="tiny-qwen", messages=messages, max_tokens=4, temperature=0)
    second = client.chat.completions.create(model="tiny-qwen", messages=messages, max_tokens=4, temperature=0)
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens - 1
    streamed = list(
        client.chat.completions.create(
            model="tiny-qwen",
            messages=messages,
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert streamed[-1].usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens - 1
    after = app_client.get("/metrics").text

    def value(text: str, name: str) -> float:
        line = next((x for x in text.splitlines() if x.startswith(f'{name}{{model="tiny-qwen"}}')), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    hits = value(after, "kiln_prefix_cache_hits_total") - value(before, "kiln_prefix_cache_hits_total")
    queries = value(after, "kiln_prefix_cache_queries_total") - value(before, "kiln_prefix_cache_queries_total")
    assert queries == 3 * second.usage.prompt_tokens and hits >= 2 * (second.usage.prompt_tokens - 1)
