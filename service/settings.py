"""All runtime configuration, read once from `KILN_*` environment variables.

One table in the README documents every field here; keep them in sync.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts.engine import EngineConfig, Speculative, Variant

ENGINE = EngineConfig()  # the engine's defaults, shared with the Triton model and the benchmark


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KILN_", extra="ignore")

    model_repository: Path = Field(Path("model_repository"), description="Triton-layout model repository.")
    host: str = "0.0.0.0"
    port: int = 8000
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port (0 = gRPC off).")
    log_level: str = "info"
    backend: Literal["onnxruntime", "triton"] = Field(
        "onnxruntime", description="onnxruntime: in-process engine; triton: the engine runs in Triton (docs/triton.md)."
    )
    triton_url: str = Field("localhost:8001", description="Triton's gRPC address (KILN_BACKEND=triton).")
    triton_protocol: Literal["grpc", "http"] = Field(
        "grpc", description="Protocol to Triton; the decoupled LM streams over grpc only."
    )
    triton_retries: int = Field(3, ge=0, le=10, description="Retries (with backoff) before a request gives 503.")
    triton_backoff_s: float = Field(0.2, gt=0, description="First retry delay; doubles per retry.")
    triton_timeout_s: float = Field(30.0, gt=0, description="Longest wait for Triton's next response before 503.")
    lm_variant: Variant = Field(
        ENGINE.lm_variant, description="Which exported LM graph to run (falls back to fp32 if absent)."
    )
    intra_op_threads: int = Field(
        ENGINE.intra_op_threads, description="ONNX Runtime intra-op threads (0 = one per core)."
    )

    # Engine: preallocated state (KV cache) of max_batch slots x max_seq_len positions.
    max_batch: int = Field(ENGINE.max_batch, ge=1, le=256, description="Concurrent sequences (state slots).")
    max_seq_len: int = Field(ENGINE.max_seq_len, ge=16, description="Positions per slot (prompt + generated).")
    max_queue: int = Field(ENGINE.max_queue, ge=0, description="Requests waiting for a slot before 429.")
    prefill_chunk: int = Field(
        ENGINE.prefill_chunk,
        ge=1,
        description="Waiting requests admitted per engine step (an idle engine prefills a burst at once).",
    )
    prefill_chunk_tokens: int = Field(
        ENGINE.prefill_chunk_tokens,
        ge=1,
        description="Prompt tokens prefilled per engine step while others decode (chunked prefill).",
    )

    # Chat (POST /v1/chat/completions).
    chat_template: Path | None = Field(
        None, description="A Jinja chat template file that replaces every model's own template."
    )
    default_chat_template: str | None = Field(
        None, description="Template for models without one: a file, or `chatml` (built in). Unset: 400."
    )

    # Request limits.
    max_new_tokens_limit: int = Field(1024, ge=1, description="Largest accepted max_new_tokens.")
    max_prompt_chars: int = Field(32_768, ge=1, description="Largest accepted prompt, in characters.")
    max_stop_strings: int = Field(8, ge=0, description="Most stop strings per request.")
    max_stop_token_ids: int = Field(16, ge=0, description="Most stop token ids per request.")
    max_logit_bias: int = Field(300, ge=0, description="Most entries in a request's logit_bias.")
    max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest accepted request body.")
    max_header_bytes: int = Field(16_384, ge=1024, description="Largest accepted total size of request headers.")
    default_timeout_s: float | None = Field(None, description="Deadline for requests that give none.")

    # Access control (off when neither is set). Entries: KEY or KEY:model-a|model-b.
    api_keys: SecretStr | None = Field(None, description="Comma-separated API keys (never logged).")
    api_keys_file: Path | None = Field(None, description="File of API keys, one entry per line.")

    # Image classification (/classify and gRPC Classify).
    classify_max_batch: int = Field(64, ge=1, le=4096, description="Views per batched ONNX Runtime run.")
    classify_max_delay_ms: float = Field(
        2.0, ge=0, le=1000, description="How long the batcher waits for more views after the first."
    )
    classify_max_images: int = Field(16, ge=1, description="Most images in one request.")
    classify_max_body_bytes: int = Field(33_554_432, ge=1024, description="Largest /classify request body.")
    classify_max_grid: int = Field(6, ge=1, le=16, description="Largest multi-view grid N (N×N tiles).")
    classify_workers: int = Field(2, ge=1, description="Threads decoding and cropping images.")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Decoded pixels per image (decompression-bomb guard; 413 beyond)."
    )
    max_image_side: int = Field(16_384, ge=1, description="Largest image width or height.")
    image_formats: str = Field("PNG,JPEG,WEBP,BMP,GIF", description="Accepted image formats (415 otherwise).")
    classify_drift_window: int = Field(
        1000, ge=10, description="Images per view pipeline in the rolling window the drift gauges compare."
    )
    classify_drift_min_images: int = Field(
        200, ge=1, description="Images the window needs before the drift gauges are exported."
    )
    classify_drift_period_s: float = Field(
        15.0, ge=0, description="Seconds between drift recomputations (0: on every request)."
    )

    playground: bool = Field(True, description="Serve the browser playground at / (false: off, / is a 404).")

    drain_s: float = Field(30.0, ge=0, description="Grace period for in-flight requests on SIGTERM.")
    retry_after_s: int = Field(ENGINE.retry_after_s, ge=1, description="Retry-After sent with 429.")
    prefix_cache: bool = Field(
        ENGINE.prefix_cache, description="Reuse finished sequences' positions for prompts that share a prefix."
    )
    speculative: Speculative = Field(
        ENGINE.speculative, description="n-gram speculative decoding for a greedy sequence decoding alone (off: never)."
    )
    spec_tokens: int = Field(ENGINE.spec_tokens, ge=1, le=16, description="Most tokens guessed per step.")
    spec_ngram_max: int = Field(ENGINE.spec_ngram_max, ge=1, le=8, description="Longest suffix looked up.")
    spec_ngram_min: int = Field(ENGINE.spec_ngram_min, ge=1, le=8, description="Shortest suffix looked up.")
    prefix_cache_shared: bool = Field(
        ENGINE.prefix_cache_shared, description="Let a cached prefix serve other API keys too (timing leaks)."
    )
    prefix_cache_bytes: int = Field(
        ENGINE.prefix_cache_bytes,
        ge=0,
        description="Host memory for cached prefixes evicted from the slots, allocated at start (0: none).",
    )
    fault_step_delay_ms: float = Field(
        ENGINE.fault_step_delay_ms,
        ge=0,
        description="Fault injection: extra delay per engine step (tests, load drills). Keep 0.",
    )

    def engine_config(self) -> EngineConfig:
        """The engine's part of these settings (the same dataclass Triton's model is built from)."""
        return EngineConfig(**{name: getattr(self, name) for name in EngineConfig.__dataclass_fields__})


@lru_cache
def get_settings() -> Settings:
    return Settings()
