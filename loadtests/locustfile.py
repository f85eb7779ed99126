"""Locust users for Kiln: realistic request mixes over REST (streaming and not), OpenAI and gRPC.

Shapes (env `KILN_LOAD_SHAPE`): `steady` (constant users), `ramp` (linear increase), `spike`
(a burst far past capacity, then back). A 429 is the deliberate answer to a full queue: users
count it under its own name, honour `Retry-After`, and it is not an error. Timings of
interest that locust does not measure itself (time to first token) are reported as their own
request type ("TTFT").
"""

from __future__ import annotations

import json
import os
import random
import time

import grpc.experimental.gevent as grpc_gevent
from locust import HttpUser, LoadTestShape, User, between, events, task

grpc_gevent.init_gevent()  # before any channel exists: grpc must cooperate with gevent

import grpc  # noqa: E402

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


class KilnHttpUser(HttpUser):
    wait_time = between(0.05, 0.3)
    weight = 3

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
            if r.status_code == 429:
                shed(r)
                return
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
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
            "model": os.environ.get("KILN_LOAD_MODEL", "demo-lm"),
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

    def _body(self, stream: bool, schema: bool) -> dict:
        body = {
            "model": os.environ.get("KILN_LOAD_MODEL", "demo-lm"),
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
            if r.status_code == 429:
                shed(r)
                return
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
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


class KilnGrpcUser(User):
    """gRPC GenerateStream users; the target comes from KILN_LOAD_GRPC (host:port)."""

    wait_time = between(0.1, 0.5)
    weight = 1

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(os.environ.get("KILN_LOAD_GRPC", "127.0.0.1:50051"))
        self.stub = pb_grpc.KilnStub(self.channel)

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
            for msg in self.stub.GenerateStream(req, timeout=60):
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
