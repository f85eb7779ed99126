"""The generation engine's settings: one definition for the gateway, Triton and the benchmark.

The gateway builds an `EngineConfig` from its `KILN_*` settings; export renders the same
dataclass into the `parameters` of the decoupled Triton model's `config.pbtxt`, and the python
model parses them back, so the engine inside Triton starts with exactly the gateway's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Literal

PREFIX = "KILN_"
Speculative = Literal["off", "ngram"]
Variant = Literal["fused", "fp32", "optimized", "int8", "int4"]  # the exported graphs a text model can run


@dataclass(frozen=True)
class EngineConfig:
    max_batch: int = 8  # concurrent sequences (state slots)
    max_seq_len: int = 512  # positions per slot (prompt + generated)
    max_queue: int = 64  # requests waiting for a slot before 429
    prefill_chunk: int = 8  # waiting requests admitted per engine step
    prefill_chunk_tokens: int = 16  # prompt tokens prefilled per step while others decode
    intra_op_threads: int = 0  # ONNX Runtime intra-op threads (0 = one per core)
    lm_variant: Variant = "fused"  # which exported graph to run (fp32 when absent)
    retry_after_s: int = 1  # Retry-After with 429
    prefix_cache: bool = True  # finished sequences' positions serve later prompts that share a prefix
    prefix_cache_shared: bool = False  # across API keys too (else each key reuses only its own)
    prefix_cache_bytes: int = 0  # host memory for prefixes evicted from the slots (0: none)
    speculative: Speculative = "ngram"  # prompt-lookup drafts for a greedy sequence decoding alone
    spec_tokens: int = 4  # the most tokens guessed per step
    spec_ngram_max: int = 3
    spec_ngram_min: int = 2
    fault_step_delay_ms: float = 0.0  # fault injection only: extra delay per engine step

    def to_parameters(self) -> dict[str, str]:
        """`KILN_MAX_BATCH`-style names, the same as the gateway's environment variables."""
        return {PREFIX + k.upper(): str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> EngineConfig:
        """Parse `to_parameters` output; names this dataclass does not have are ignored."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = params.get(PREFIX + f.name.upper())
            if raw is not None:
                kind = type(getattr(cls, f.name))
                if kind is bool:
                    values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
                else:
                    values[f.name] = kind(float(raw)) if kind is int else kind(raw)
        return cls(**values)  # type: ignore[arg-type]
