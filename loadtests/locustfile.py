"""Locust users for Kiln: realistic request mixes over REST (streaming and not), OpenAI and gRPC.

Shapes (env `KILN_LOAD_SHAPE`): `steady` (constant users), `ramp` (linear increase), `spike`
(a burst far past capacity, then back). A 429 is the deliberate answer to a full queue: users
count it under its own name, honour `Retry-After`, and it is not an error. Timings of
interest that locust does not measure itself (time to first token) are reported as their own
request type ("TTFT").

`KilnPrefixUser` is the shared-prefix mix (loadtests/prefix_mix.py): several API keys, long
system prompts, growing chats. With `KILN_LOAD_AUTH=1` every user sends one of those keys (the
server then runs with KILN_API_KEYS); `KILN_LOAD_SAMPLES` names a file that receives the greedy
shared-prefix responses, which run_load replays against a server without the cache.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time

import grpc.experimental.gevent as grpc_gevent
from locust import HttpUser, LoadTestShape, User, between, events, task

grpc_gevent.init_gevent()  # before any channel exists: grpc must cooperate with gevent

import grpc  # noqa: E402

from loadtests.prefix_mix import QUESTIONS, USER_KEYS, bearer, chat_system, parse_sse, system_prompt  # noqa: E402
from service.rpc import kiln_v1_pb2 as pb  # noqa: E402
from service.rpc import kiln_v1_pb2_grpc as pb_grpc  # noqa: E402

PROMPTS = [
    "def fib(n):",
    "import os\nimport sys\n\n",
    "class Config:\n    def __init__(self",
    "# Parse the command line\n",
    "for i in range(10):\n",
    "def read_file(path):\n    with open(path) as f:\n",
]
SHAPE = os.environ.get("KILN_LOAD_SHAPE", "steady")
CLASSIFIER = os.environ.get("KILN_LOAD_CLASSIFIER", "")  # empty: no /classify traffic
PEAK = int(os.environ.get("KILN_LOAD_USERS", "16"))
DURATION = float(os.environ.get("KILN_LOAD_SECONDS", "60"))
MODEL = os.environ.get("KILN_LOAD_MODEL", "demo-lm")
AUTH = os.environ.get("KILN_LOAD_AUTH") == "1"
SAMPLES = os.environ.get("KILN_LOAD_SAMPLES", "")
PREFIX_CHARS = int(os.environ.get("KILN_LOAD_PREFIX_CHARS", "800"))
_KEYS = itertools.count()  # users take the traffic keys round robin


def _next_key() -> str:
    return USER_KEYS[next(_KEYS) % len(USER_KEYS)]


def _record(sample: dict) -> None:
    """One greedy response, for the exactness replay (one line each: greenlets never interleave a write)."""
    if SAMPLES:
        with open(SAMPLES, "a") as f:
            f.write(json.dumps(sample) + "\n")


def _scene(seed: int) -> bytes:
    """A noisy 128x128 PNG with a bright stroke: what the demo classifier's inputs look like."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 60, (128, 128, 3), dtype=np.uint8)
    y, x = rng.integers(10, 100, size=2)
    img[y : y + 16, x : x + 3] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


SCENES = [_scene(i) for i in range(8)]


def _generate_body(stream: bool) -> dict:
    return {
        "prompt": random.choice(PROMPTS) * random.choice((1, 1, 2, 4)),
        "max_new_tokens": random.choice((8, 16, 32, 64)),
        "temperature": random.choice((0.0, 0.7)),
        "seed": random.randint(0, 2**31),
        "stream": stream,
    }


def shed(response) -> None:  # type: ignore[no-untyped-def]
    """A 429 is deliberate load shedding: reported under its own name, Retry-After honoured."""
    response.success()
    events.request.fire(request_type="SHED", name="429 queue_full", response_time=0, response_length=0, exception=None)
    time.sleep(float(response.headers.get("retry-after", "1")))


def accepted(response) -> bool:  # type: ignore[no-untyped-def]
    """A 200 goes on to be checked; a 429 is shed (see `shed`); anything else is a failure."""
    if response.status_code == 429:
        shed(response)
        return False
    if response.status_code != 200:
        response.failure(f"{response.status_code}: {response.text[:200]}")
        return False
    return True


class KilnHttpUser(HttpUser):
    wait_time = between(0.05, 0.3)
    weight = 3

    def on_start(self) -> None:
        if AUTH:
            self.client.headers.update(bearer(_next_key()))

    @task(3)
    def generate(self) -> None:
        with self.client.post("/generate", json=_generate_body(False), catch_response=True) as r:
            if r.status_code == 429:
                shed(r)
            elif r.status_code != 200 or "finish_reason" not in r.json():
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(4)
    def generate_stream(self) -> None:
        started = time.perf_counter()
        first = None
        finished = False
        with self.client.post(
            "/generate", json=_generate_body(True), stream=True, catch_response=True, name="/generate [stream]"
        ) as r:
            if not accepted(r):
                return
            for line in r.iter_lines():
                if line.startswith(b"data:") and first is None:
                    first = time.perf_counter()
                if line.startswith(b"event: finish"):
                    finished = True
            if not finished:
                r.failure("stream ended without a finish event")
        if first is not None:
            events.request.fire(
                request_type="TTFT",
                name="/generate [stream]",
                response_time=1000 * (first - started),
                response_length=0,
                exception=None,
            )

    @task(2)
    def classify(self) -> None:
        if not CLASSIFIER:
            return
        views = random.choice(("single", "multi"))
        query = f"?model={CLASSIFIER}&views={views}&tta_flip={str(random.random() < 0.5).lower()}"
        files = [("file", ("scene.png", random.choice(SCENES), "image/png"))]
        name = f"/classify [{views}]"
        with self.client.post(f"/classify{query}", files=files, catch_response=True, name=name) as r:
            if r.status_code == 429:
                shed(r)
            elif r.status_code != 200 or not r.json()["results"][0]["top"]:
                r.failure(f"{r.status_code}: {r.text[:200]}")

    @task(1)
    def openai_completion(self) -> None:
        body = {
            "model": MODEL,
            "prompt": random.choice(PROMPTS),
            "max_tokens": 16,
        }
        with self.client.post("/v1/completions", json=body, catch_response=True) as r:
            if r.status_code == 429:
                shed(r)
            elif r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")


# A small bounded schema: every answer must parse and validate (checked below, per request).
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
CHAT_MESSAGES = [
    [{"role": "user", "content": "a function that reverses a list"}],
    [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "read a CSV file"}],
]


class KilnChatUser(HttpUser):
    """OpenAI chat traffic: streaming and not, a share of it under a JSON schema."""

    wait_time = between(0.05, 0.3)
    weight = 1

    def on_start(self) -> None:
        if AUTH:
            self.client.headers.update(bearer(_next_key()))

    def _body(self, stream: bool, schema: bool) -> dict:
        body: dict = {
            "model": MODEL,
            "messages": random.choice(CHAT_MESSAGES),
            "max_tokens": 48 if schema else random.choice((16, 32)),
            "temperature": random.choice((0.0, 0.7)),
            "seed": random.randint(0, 2**31),
            "stream": stream,
        }
        if schema:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
        return body

    @task(2)
    def chat(self) -> None:
        schema = random.random() < 0.3
        name = "/v1/chat/completions [json_schema]" if schema else "/v1/chat/completions"
        with self.client.post(
            "/v1/chat/completions", json=self._body(False, schema), catch_response=True, name=name
        ) as r:
            if not accepted(r):
                return
            choice = r.json()["choices"][0]
            if schema and choice["finish_reason"] == "stop":
                document = json.loads(choice["message"]["content"])
                if set(document) != {"name", "age"} or not 0 <= document["age"] <= 120:
                    r.failure(f"output does not match the schema: {document}")

    @task(2)
    def chat_stream(self) -> None:
        done = False
        with self.client.post(
            "/v1/chat/completions",
            json=self._body(True, False),
            stream=True,
            catch_response=True,
            name="/v1/chat/completions [stream]",
        ) as r:
            if r.status_code == 429:
                shed(r)
                return
            for line in r.iter_lines():
                done = done or line == b"data: [DONE]"
            if r.status_code != 200 or not done:
                r.failure(f"{r.status_code}: stream ended without [DONE]")


class KilnPrefixUser(HttpUser):
    """The shared-prefix mix: one traffic key per user (round robin), that key's system prompt with
    a new question, and a chat that grows by a turn per request until it nears the context."""

    wait_time = between(0.05, 0.3)
    weight = 5

    def on_start(self) -> None:
        self.index = next(_KEYS) % len(USER_KEYS)
        self.key = USER_KEYS[self.index]
        self.client.headers.update(bearer(self.key))
        self.context_tokens = 512
        r = self.client.get("/v1/models")
        for card in r.json().get("data", []) if r.status_code == 200 else []:
            if card["id"] == MODEL and card.get("context_length"):
                self.context_tokens = int(card["context_length"])
        self.messages, self.last_prompt = self._new_chat(), 0

    def _new_chat(self) -> list[dict]:
        return [{"role": "system", "content": chat_system(self.index, PREFIX_CHARS)}]

    @staticmethod
    def _sampling() -> tuple[bool, dict]:
        greedy = random.random() < 0.75
        return greedy, {"temperature": 0.0 if greedy else 0.7, "seed": random.randint(0, 2**31)}

    @task(3)
    def shared_system_prompt(self) -> None:
        greedy, sampling = self._sampling()
        prompt = system_prompt(self.index, PREFIX_CHARS) + random.choice(QUESTIONS)
        body = {"prompt": prompt, "max_new_tokens": 16, **sampling, "stream": True}
        name = "/generate [shared prefix]"
        with self.client.post("/generate", json=body, stream=True, catch_response=True, name=name) as r:
            if not accepted(r):
                return
            out = parse_sse(line.decode() for line in r.iter_lines())
            if out["cached"] < 0:
                r.failure("stream ended without a finish event")
                return
        if greedy:
            _record({"kind": "generate", "key": self.key, "body": body, **out})

    @task(2)
    def growing_chat(self) -> None:
        greedy, sampling = self._sampling()
        self.messages.append({"role": "user", "content": random.choice(QUESTIONS).strip()})
        body = {"model": MODEL, "messages": list(self.messages), "max_tokens": 16, **sampling}
        name = "/v1/chat/completions [growing history]"
        with self.client.post("/v1/chat/completions", json=body, catch_response=True, name=name) as r:
            if r.status_code == 429:
                self.messages.pop()
                shed(r)
                return
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                self.messages, self.last_prompt = self._new_chat(), 0
                return
            data = r.json()
        content, usage = data["choices"][0]["message"]["content"], data["usage"]
        cached = usage["prompt_tokens_details"]["cached_tokens"]
        if greedy:
            _record({"kind": "chat", "key": self.key, "body": body, "content": content, "cached": cached})
        self.messages.append({"role": "assistant", "content": content})
        turn = usage["prompt_tokens"] - self.last_prompt  # what a turn adds (the first: the whole prompt)
        self.last_prompt = usage["prompt_tokens"]
        if len(self.messages) > 12 or usage["prompt_tokens"] + 2 * turn + 16 > self.context_tokens:
            self.messages, self.last_prompt = self._new_chat(), 0  # the next turn might not fit


class KilnGrpcUser(User):
    """gRPC GenerateStream users; the target comes from KILN_LOAD_GRPC (host:port)."""

    wait_time = between(0.1, 0.5)
    weight = 1

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(os.environ.get("KILN_LOAD_GRPC", "127.0.0.1:50051"))
        self.stub = pb_grpc.KilnStub(self.channel)
        self.metadata = (("authorization", f"Bearer {_next_key()}"),) if AUTH else ()

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def generate_stream(self) -> None:
        body = _generate_body(True)
        req = pb.GenerateRequest(prompt=body["prompt"], max_new_tokens=body["max_new_tokens"])
        started = time.perf_counter()
        exc: Exception | None = None
        tokens = 0
        try:
            for msg in self.stub.GenerateStream(req, timeout=60, metadata=self.metadata):
                if msg.HasField("chunk"):
                    tokens += len(msg.chunk.token_ids)
                elif not msg.finish.finish_reason:
                    exc = RuntimeError("finish without a reason")
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                events.request.fire(
                    request_type="SHED",
                    name="grpc RESOURCE_EXHAUSTED",
                    response_time=0,
                    response_length=0,
                    exception=None,
                )
                time.sleep(1)
                return
            exc = err
        events.request.fire(
            request_type="grpc",
            name="GenerateStream",
            response_time=1000 * (time.perf_counter() - started),
            response_length=tokens,
            exception=exc,
        )


class Shape(LoadTestShape):
    """steady: PEAK users throughout; ramp: 1 → PEAK linearly; spike: PEAK/4, then 4×PEAK for a
    third of the run, then PEAK/4 again."""

    def tick(self):  # type: ignore[no-untyped-def]
        t = self.get_run_time()
        if t > DURATION:
            return None
        if SHAPE == "ramp":
            users = max(1, round(PEAK * t / DURATION))
        elif SHAPE == "spike":
            users = 4 * PEAK if DURATION / 3 <= t < 2 * DURATION / 3 else max(1, PEAK // 4)
        else:
            users = PEAK
        return users, max(1, users)


@events.quitting.add_listener
def _summary(environment, **_):  # type: ignore[no-untyped-def]
    stats = environment.stats.total
    print(json.dumps({"requests": stats.num_requests, "failures": stats.num_failures}))
