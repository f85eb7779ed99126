"""The one way to assemble a text engine: runner for the manifest's graph, warm-up, engine.

The gateway (service/engine/textgen.py), the decoupled Triton model and the benchmark all
call `build_text_engine` with an `EngineConfig`, so they cannot drift apart in defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from contracts.engine import EngineConfig
from contracts.manifest import TextManifest
from service.backends.onnxruntime_lm import make_runner
from service.backends.ort_runner import OrtRunner
from service.engine.engine import GenerationEngine
from service.engine.observer import EngineObserver
from service.engine.speculative import SpecConfig


def warm_up(runner: OrtRunner, token_id: int) -> None:
    """One prefill and decode, so the first real request pays no first-call costs."""
    runner.prefill(0, [token_id] * 4)
    runner.decode(np.array([token_id], dtype=np.int64))
    runner.release_row(0)


def build_text_engine(
    manifest: TextManifest,
    config: EngineConfig,
    decode: Callable[[Sequence[int]], str],
    observer: EngineObserver | None = None,
    name: str | None = None,
) -> GenerationEngine:
    """A warmed-up, not yet started engine over the variant `config.lm_variant` of `manifest`."""
    runner = make_runner(manifest, config.lm_variant, config.max_batch, config.max_seq_len, config.intra_op_threads)
    warm_up(runner, manifest.bos_token_id)  # before the engine thread owns the runner
    return GenerationEngine(
        runner,
        decode=decode,
        eos_token_ids=manifest.eos_token_ids,
        vocab_size=manifest.vocab_size,
        max_queue=config.max_queue,
        prefill_chunk=config.prefill_chunk,
        prefill_tokens=config.prefill_chunk_tokens,
        observer=observer,
        retry_after_s=config.retry_after_s,
        name=name or manifest.name,
        step_delay_s=config.fault_step_delay_ms / 1000.0,
        prefix_cache=config.prefix_cache,
        prefix_cache_shared=config.prefix_cache_shared,
        prefix_cache_bytes=config.prefix_cache_bytes,
        speculative=spec_config(config),
    )


def spec_config(config: EngineConfig) -> SpecConfig | None:
    if config.speculative == "off":
        return None
    if config.speculative != "ngram":
        raise ValueError(f"KILN_SPECULATIVE={config.speculative!r}: use `ngram` or `off`")
    return SpecConfig(tokens=config.spec_tokens, ngram_max=config.spec_ngram_max, ngram_min=config.spec_ngram_min)
