"""The seam between the engine and a model: rows of per-slot state that can be extended.

The engine keeps its live sequences in rows 0..n-1 and drives a runner through this protocol
only; it never sees the state's shapes, so a KV cache, a recurrent state or both fit behind it
(service/backends/slot_state.py, the runners in service/backends/).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class ModelRunner(Protocol):
    max_batch: int  # rows (slots)
    max_seq_len: int  # positions a row can hold
    # How a finished row's state can serve a later prompt: "partial" (any prefix of it: attention
    # KV), "whole" (all of it or nothing: a recurrent state cannot be rolled back), "none".
    prefix_reuse: str
    can_verify: bool  # `verify` works: speculative decoding can check drafts in one call

    def extend(self, row: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens to the row's state (a prompt chunk); the last token's logits [vocab]."""
        ...

    def verify(self, row: int, token_ids: Sequence[int]) -> np.ndarray:
        """Like `extend`, but the logits of every token [len(token_ids), vocab]."""
        ...

    def decode(self, last_tokens: np.ndarray) -> np.ndarray:
        """One token for each of rows 0..n-1 (n = len(last_tokens)); logits [n, vocab]."""
        ...

    def move_row(self, src: int, dst: int) -> None:
        """The sequence in row `src` continues in row `dst`."""
        ...

    def release_row(self, row: int) -> None:
        """The row holds nothing any more."""
        ...

    def can_grow(self, row: int) -> bool:
        """Whether the row has room for one more token."""
        ...

    def length(self, row: int) -> int:
        """Positions the row holds."""
        ...

    def swap_rows(self, a: int, b: int) -> None:
        """Exchange two rows' state (prefix caching keeps finished rows' positions)."""
        ...

    def truncate(self, row: int, positions: int) -> None:
        """Keep only the row's first `positions` positions (a cached prefix a new prompt reuses)."""
        ...

    def reserve_parking(self, budget_bytes: int) -> int:
        """Allocate host rows for evicted cached prefixes within the budget; how many."""
        ...

    def park(self, row: int, slot: int, positions: int) -> None:
        """Copy a row's first `positions` positions into host row `slot`."""
        ...

    def unpark(self, slot: int, row: int, positions: int) -> None:
        """Copy host row `slot`'s first `positions` positions into a row, which then holds them."""
        ...
