"""Prometheus metrics: one registry per app instance (tests build many apps per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service.engine.observer import EngineObserver

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class Metrics(EngineObserver):
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._children: dict[tuple[object, tuple[str, ...]], object] = {}
        self.requests = Counter(
            "kiln_requests_total",
            "Requests by route, status, protocol and task (text-generation, image-classification, control).",
            ["route", "status", "protocol", "task"],
            registry=r,
        )
        self.latency = Histogram(
            "kiln_request_duration_seconds",
            "End-to-end request latency.",
            ["route", "task"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("kiln_requests_in_flight", "Requests being served.", registry=r)
        self.ttft_s = Histogram(
            "kiln_time_to_first_token_seconds",
            "Arrival to first token.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.itl_s = Histogram(
            "kiln_inter_token_latency_seconds", "Time between tokens.", ["model"], buckets=TOKEN_BUCKETS, registry=r
        )
        self.prompt_tokens = Counter("kiln_prompt_tokens_total", "Prompt tokens.", ["model", "protocol"], registry=r)
        self.generated_tokens = Counter(
            "kiln_generation_tokens_total", "Generated tokens.", ["model", "protocol"], registry=r
        )
        self.queue = Gauge("kiln_queue_depth", "Requests waiting for a KV slot.", ["model"], registry=r)
        self.queue_s = Histogram(
            "kiln_queue_time_seconds", "Time waiting for a KV slot.", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.slots_used = Gauge("kiln_kv_slots_in_use", "KV cache slots holding a sequence.", ["model"], registry=r)
        self.slots_total = Gauge("kiln_kv_slots_total", "KV cache slots allocated.", ["model"], registry=r)
        self.batch = Histogram(
            "kiln_batch_size", "Sequences per batched decode step.", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.rejections = Counter(
            "kiln_rejected_requests_total", "Requests refused before running.", ["model", "reason"], registry=r
        )
        self.classify_batch = Histogram(
            "kiln_classify_batch_size",
            "Views per batched classifier run.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.classify_images = Counter(
            "kiln_classify_images_total", "Images classified.", ["model", "protocol"], registry=r
        )
        self.classify_views = Counter(
            "kiln_classify_views_total", "Views (crops) classified.", ["model", "protocol"], registry=r
        )
        self.classify_preprocess_s = Histogram(
            "kiln_classify_preprocess_seconds",
            "Decode and crop time per image.",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.classify_inference_s = Histogram(
            "kiln_classify_inference_seconds",
            "Time per batched classifier run.",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.classify_queue_s = Histogram(
            "kiln_classify_queue_seconds",
            "Time a request's views waited for the batcher.",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.classify_drift_psi = Gauge(
            "kiln_classify_drift_psi",
            "Population-stability index of the predicted classes in the rolling window against the calibration split.",
            ["model", "pipeline"],
            registry=r,
        )
        self.classify_drift_ks = Gauge(
            "kiln_classify_drift_ks",
            "Kolmogorov-Smirnov statistic of the window's top-1 confidences against the calibration split.",
            ["model", "pipeline"],
            registry=r,
        )
        self.classify_drift_images = Gauge(
            "kiln_classify_drift_window_images",
            "Images in the drift window the last statistics were computed on.",
            ["model", "pipeline"],
            registry=r,
        )
        self.model_ready = Gauge("kiln_model_ready", "1 when the model is loaded and warm.", ["model"], registry=r)
        self.prefix_queries = Counter(
            "kiln_prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", ["model"], registry=r
        )
        self.spec_proposed = Counter(
            "kiln_spec_draft_tokens_total", "Tokens guessed by n-gram speculation.", ["model"], registry=r
        )
        self.spec_accepted = Counter(
            "kiln_spec_accepted_tokens_total", "Guessed tokens the model confirmed.", ["model"], registry=r
        )
        self.spec_steps = Counter(
            "kiln_spec_verify_steps_total", "Speculative steps (one forward pass each).", ["model"], registry=r
        )
        self.prefix_hits = Counter(
            "kiln_prefix_cache_hits_total", "Prompt tokens served from the prefix cache.", ["model"], registry=r
        )
        self.prefix_host_tokens = Counter(
            "kiln_prefix_cache_host_tokens_total",
            "Cached positions copied to host memory (parked) and back into a slot (restored).",
            ["model", "direction"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def _child(self, metric: Counter | Gauge | Histogram, *labels: str):  # type: ignore[no-untyped-def]
        """A labelled child, looked up once: the engine observes every token and every step, and
        prometheus_client's `labels()` (validation and a lock) costs several times the observation
        itself (17.7 µs per streamed token in bench-generate's py-spy profile at 32 clients)."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # EngineObserver
    def queue_depth(self, model: str, depth: int) -> None:
        self._child(self.queue, model).set(depth)

    def queue_time(self, model: str, seconds: float) -> None:
        self._child(self.queue_s, model).observe(seconds)

    def slots(self, model: str, in_use: int, total: int) -> None:
        self._child(self.slots_used, model).set(in_use)
        self._child(self.slots_total, model).set(total)

    def batch_size(self, model: str, size: int) -> None:
        self._child(self.batch, model).observe(size)

    def ttft(self, model: str, seconds: float) -> None:
        self._child(self.ttft_s, model).observe(seconds)

    def inter_token(self, model: str, seconds: float) -> None:
        self._child(self.itl_s, model).observe(seconds)

    def tokens(self, model: str, protocol: str, count: int) -> None:
        self._child(self.generated_tokens, model, protocol).inc(count)

    def rejected(self, model: str, reason: str) -> None:
        self._child(self.rejections, model, reason).inc()

    def speculation(self, model: str, proposed: int, accepted: int) -> None:
        self._child(self.spec_proposed, model).inc(proposed)
        self._child(self.spec_accepted, model).inc(accepted)
        self._child(self.spec_steps, model).inc()

    def prefix_cache(self, model: str, queried: int, hit: int) -> None:
        self._child(self.prefix_queries, model).inc(queried)
        self._child(self.prefix_hits, model).inc(hit)

    def prefix_host(self, model: str, direction: str, tokens: int) -> None:
        self._child(self.prefix_host_tokens, model, direction).inc(tokens)
