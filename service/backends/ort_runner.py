"""What both ONNX Runtime LM runners share: the session, the slot state and row bookkeeping."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from contracts.manifest import GraphFile, LayerState, TextManifest
from service.backends.ort_session import cpu_session
from service.backends.slot_state import SlotState, copy_row


class OrtRunner:
    """What both runners share: the session, the slot state and the row bookkeeping."""

    prefix_reuse = "partial"  # attention KV: any prefix of a finished row serves a later prompt
    can_verify = False  # a graph whose every position's logits can be had in one call

    def __init__(
        self,
        manifest: TextManifest,
        graph: GraphFile,
        max_batch: int,
        max_seq_len: int,
        threads: int = 0,
        profile_prefix: str | None = None,
    ):
        self.manifest = manifest
        self.graph = graph
        self.max_batch = max_batch
        self.max_seq_len = min(max_seq_len, manifest.max_position_embeddings)
        self.threads = threads
        self.session = cpu_session(graph.path, threads, profile_prefix)
        self.state = SlotState(manifest.state, max_batch, self.max_seq_len)
        self.parking: SlotState | None = None  # host rows for evicted prefixes (reserve_parking)

    @property
    def lengths(self) -> np.ndarray:
        return self.state.lengths

    @property
    def cache_bytes(self) -> int:
        return self.state.nbytes

    def prefill(self, row: int, token_ids: Sequence[int]) -> np.ndarray:
        """Start row `row` afresh with a whole prompt; logits of its last token."""
        self.release_row(row)
        return self.extend(row, token_ids)

    def extend(self, row: int, token_ids: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def decode(self, last_tokens: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def verify(self, row: int, token_ids: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def move_row(self, src: int, dst: int) -> None:
        self.state.move_row(src, dst)

    def reserve_parking(self, budget_bytes: int) -> int:
        """Host rows beside the slots, where cached prefixes go when a new prompt takes their slot
        (KILN_PREFIX_CACHE_BYTES): as many whole rows as the budget holds, allocated (and
        resident) now, so parking and restoring only copy."""
        per_row = self.state.nbytes // self.max_batch
        rows = int(budget_bytes // per_row) if per_row else 0
        self.parking = SlotState(self.manifest.state, rows, self.max_seq_len) if rows else None
        return rows

    def park(self, row: int, slot: int, positions: int) -> None:
        assert self.parking is not None
        copy_row(self.state, row, self.parking, slot, positions)

    def unpark(self, slot: int, row: int, positions: int) -> None:
        assert self.parking is not None
        copy_row(self.parking, slot, self.state, row, positions)

    def release_row(self, row: int) -> None:
        self.state.release_row(row)

    def can_grow(self, row: int) -> bool:
        return self.state.can_grow(row)

    def length(self, row: int) -> int:
        return int(self.state.lengths[row])

    def swap_rows(self, a: int, b: int) -> None:
        self.state.swap_rows(a, b)

    def truncate(self, row: int, positions: int) -> None:
        self.state.truncate(row, positions)

    def _check_room(self, row: int, n: int) -> int:
        start = int(self.lengths[row])
        if not self.state.can_grow(row, n):
            raise ValueError(f"row {row}: {start} + {n} tokens exceed max_seq_len {self.max_seq_len}")
        return start


def state_bytes(layers: tuple[LayerState, ...], max_batch: int, positions: int) -> int:
    """Bytes of the preallocated slot state: every state tensor x slots, fp32."""
    return 4 * max_batch * sum(int(np.prod(layer.slot_shape(t, positions))) for layer in layers for t in layer.tensors)
