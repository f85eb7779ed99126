"""Runs the "hybrid" graph contract (export/hybrid_graph.py): Mamba, Mamba-2 and attention layers.

The contract is the standard one plus recurrent state: every Mamba layer reads its row's
`past_conv.i` / `past_ssm.i` and returns the state after the new tokens as `present_*`, which
replaces the row's; attention layers return their new keys/values as the standard graph does.
So this runner is `StandardRunner` with recurrent tensors allowed (it already binds and writes
back state that does not grow, service/backends/ort_standard.py) and decode steps on the
one-token twin the export writes (`decode_files`: the recurrence as a single step, no Loop).

What a recurrent state cannot do shapes the rest:
- prefix caching reuses a finished row only whole (`prefix_reuse = "whole"`): the state after
  N tokens cannot be turned back into the state after fewer. A multi-turn chat, whose next
  prompt starts with everything the last turn fed, is the case that hits.
- no speculative decoding (`can_verify = False`): a rejected guess would have to be undone.
A model with no attention layer has no positions axis at all: its attention mask covers the
new tokens only (P = 0), and a row costs the same memory at any length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contracts.manifest import TextManifest
from service.backends.ort_standard import StandardRunner


class HybridRunner(StandardRunner):
    prefix_reuse = "whole"
    can_verify = False

    def _check_state(self, manifest: TextManifest) -> None:
        return None  # any mix of recurrent and attention layers

    def verify(self, row: int, token_ids: Sequence[int]) -> np.ndarray:
        raise NotImplementedError("a recurrent state cannot be rolled back: no speculative verification")
