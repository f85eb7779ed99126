"""Runs Kiln's exported decoder graphs in-process with ONNX Runtime over preallocated slot state.

Both runners own a `SlotState` (the per-slot state the manifest declares, allocated once) and
an ONNX Runtime session; they differ in the graph contract they drive:

- `StandardRunner` (service/backends/ort_standard.py): the traced standard graph. It returns
  only the new tokens' keys/values, which the runner writes into the slot's next positions,
  and it attends over a capacity that follows the longest live sequence.
- `FusedRunner` (service/backends/ort_fused.py): the fused graph (GroupQueryAttention), the
  default `KILN_LM_VARIANT`. Its kernel writes the new keys/values into the bound buffers
  itself and reads each row only up to its length.
- `HybridRunner` (service/backends/ort_hybrid.py): Mamba / hybrid models, whose layers keep a
  fixed-size recurrent state per slot beside (or instead of) keys and values.

`make_runner` picks by the variant's graph contract in the manifest.
"""

from __future__ import annotations

from contracts.manifest import GQA, HYBRID, STANDARD, TextManifest
from contracts.versions import ContractError
from service.backends.ort_fused import FusedRunner
from service.backends.ort_hybrid import HybridRunner
from service.backends.ort_runner import OrtRunner
from service.backends.ort_standard import StandardRunner

RUNNERS: dict[str, type[OrtRunner]] = {GQA: FusedRunner, STANDARD: StandardRunner, HYBRID: HybridRunner}


def make_runner(
    manifest: TextManifest,
    variant: str,
    max_batch: int,
    max_seq_len: int,
    threads: int = 0,
    profile_prefix: str | None = None,
) -> OrtRunner:
    """The runner for the variant's graph contract."""
    graph = manifest.graph(variant)
    if graph.contract not in RUNNERS:  # a contract newer than this gateway
        raise ContractError(f"{manifest.name}: no in-process runner for graph contract {graph.contract!r} yet")
    return RUNNERS[graph.contract](manifest, graph, max_batch, max_seq_len, threads, profile_prefix)
