"""/v1/completions checked with the official `openai` client against a live Kiln."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.live_server import Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tiny_lm_repo):  # type: ignore[no-untyped-def]
    srv = Server(tiny_lm_repo, KILN_MAX_BATCH="4", KILN_MAX_SEQ_LEN="128")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(live: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def test_models_list_in_openai_shape(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-lm"]


def test_completion_matches_kiln_generate(client: openai.OpenAI, live: Server) -> None:
    out = client.completions.create(model="tiny-lm", prompt="def fib(n):", max_tokens=12, temperature=0)
    native = httpx.post(
        f"{live.url}/generate", json={"prompt": "def fib(n):", "max_new_tokens": 12, "temperature": 0}
    ).json()
    assert out.object == "text_completion"
    assert out.choices[0].text == native["text"]
    assert out.choices[0].finish_reason in ("length", "stop")
    assert out.usage.completion_tokens == native["usage"]["completion_tokens"]
    assert out.usage.prompt_tokens == native["usage"]["prompt_tokens"]


def test_streaming_completion_concatenates_to_the_same_text(client: openai.OpenAI) -> None:
    kwargs = {"model": "tiny-lm", "prompt": "import os", "max_tokens": 16, "temperature": 0}
    whole = client.completions.create(**kwargs).choices[0].text
    chunks = list(client.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals and finals[-1] in ("length", "stop")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_n_seed_stop_and_logprobs(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="tiny-lm", prompt="class Point:", max_tokens=8, temperature=1.0, n=3, seed=5, logprobs=2
    )
    assert [c.index for c in out.choices] == [0, 1, 2]
    again = client.completions.create(
        model="tiny-lm", prompt="class Point:", max_tokens=8, temperature=1.0, n=3, seed=5, logprobs=2
    )
    assert [c.text for c in out.choices] == [c.text for c in again.choices]
    lp = out.choices[0].logprobs
    assert lp is not None and len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert all(lp_value <= 0.0 for lp_value in lp.token_logprobs)
    assert all(len(top) <= 2 for top in lp.top_logprobs)


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"echo": True}, "echo"),
        ({"suffix": "x"}, "suffix"),
        ({"prompt": [1, 2, 3]}, "prompt"),
    ],
)
def test_unsupported_parameters_are_refused_openai_style(client: openai.OpenAI, kwargs: dict, param: str) -> None:
    args = {"model": "tiny-lm", "prompt": "x", "max_tokens": 2, **kwargs}
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(**args)
    body = err.value.body
    assert (
        body["code"] == "unsupported_parameter" and body["param"] == param and body["type"] == "invalid_request_error"
    )


def test_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="x", max_tokens=2)


def test_chat_over_a_real_socket_streaming_and_not(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "def fib(n):"}]
    whole = client.chat.completions.create(model="tiny-lm", messages=messages, max_tokens=8, temperature=0, n=2)
    assert [c.message.content for c in whole.choices][0] == whole.choices[1].message.content  # greedy: equal
    chunks = list(
        client.chat.completions.create(
            model="tiny-lm", messages=messages, max_tokens=8, temperature=0, stream=True, logprobs=True, top_logprobs=1
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert any(c.choices and c.choices[0].logprobs for c in chunks)
