"""Per-slot model state: whatever the manifest says each layer keeps between calls, allocated once.

A slot is one row of every state buffer. Attention layers keep keys and values that grow
along a *positions* axis; recurrent layers (Mamba) keep tensors of a fixed size. This object
owns all of them: it allocates `max_batch` rows up front (resident at once: `np.full`, not
`np.zeros`, whose untouched pages would fault inside some request's prefill), moves a row when
the engine compacts the batch, clears a released row and says whether a row can grow. Runners
bind its buffers to their graphs; the engine only ever asks `can_grow`.

Growing tensors can be *laid out* at a capacity smaller than `max_positions`: the same memory
viewed as [max_batch, ..., cap, ...], whose leading rows are contiguous. The standard runner
attends over `cap` columns only and raises it as sequences grow (`set_capacity` moves the live
columns in place, no allocation); the fused runner keeps the full capacity.
"""

from __future__ import annotations

import numpy as np

from contracts.manifest import POSITIONS, LayerState


class SlotState:
    def __init__(self, layers: tuple[LayerState, ...], max_batch: int, max_positions: int) -> None:
        self.layers = layers
        self.max_batch = max_batch
        self.max_positions = max_positions
        self.lengths = np.zeros(max_batch, np.int64)  # positions each row holds
        self._flat: dict[str, np.ndarray] = {}
        self._axis: dict[str, int] = {}  # growing tensor -> its positions axis (batch axis = 0)
        self._slot_shapes: dict[str, tuple[int | str, ...]] = {}
        for layer in layers:
            for name, shape in layer.tensors.items():
                full = (max_batch, *layer.slot_shape(name, max_positions))
                self._flat[name] = np.full(int(np.prod(full)), 0.0, np.float32)
                self._slot_shapes[name] = shape
                if POSITIONS in shape:
                    self._axis[name] = 1 + shape.index(POSITIONS)
        self.cap = max_positions
        self.views: dict[str, np.ndarray] = self._make_views(max_positions)
        # One row of the largest tensor: swaps go through it, one tensor at a time (resident now).
        largest = max((int(np.prod(self._shape(n, max_positions)[1:])) for n in self._flat), default=0)
        self._scratch_flat = np.full(largest, 0.0, np.float32)

    @property
    def names(self) -> list[str]:
        return list(self._flat)

    @property
    def nbytes(self) -> int:
        return sum(buf.nbytes for buf in self._flat.values())

    def positions_axis(self, name: str) -> int | None:
        """The axis of a state view along which positions run (batch axis = 0), if it grows."""
        return self._axis.get(name)

    def shape(self, name: str, rows: int, positions: int) -> tuple[int, ...]:
        """The shape of `rows` rows of a tensor laid out with `positions` positions."""
        return (rows, *self._shape(name, positions)[1:])

    def can_grow(self, row: int, tokens: int = 1) -> bool:
        """Whether row `row` has room for `tokens` more positions."""
        return int(self.lengths[row]) + tokens <= self.max_positions

    # ---- layout ----------------------------------------------------------------------------------
    def _shape(self, name: str, cap: int) -> tuple[int, ...]:
        dims = (cap if d == POSITIONS else int(d) for d in self._slot_shapes[name])
        return (self.max_batch, *dims)

    def _make_views(self, cap: int) -> dict[str, np.ndarray]:
        views = {}
        for name, flat in self._flat.items():
            shape = self._shape(name, cap if name in self._axis else self.max_positions)
            views[name] = flat[: int(np.prod(shape))].reshape(shape)
        return views

    def set_capacity(self, cap: int) -> None:
        """Lay growing tensors out with `cap` positions per row, moving live positions in place."""
        cap = min(cap, self.max_positions)
        if cap == self.cap:
            return
        new = self._make_views(cap)
        live = [r for r in range(self.max_batch) if self.lengths[r] > 0]
        # Growing moves rows up (dst >= src): last row first; shrinking moves them down: first
        # row first. Either way no row is overwritten before it has moved; numpy handles the
        # overlap of a row with its own old place.
        order = reversed(live) if cap > self.cap else live
        for r in order:
            n = int(self.lengths[r])
            for name, axis in self._axis.items():
                np.copyto(_positions(new[name][r], axis - 1, n), _positions(self.views[name][r], axis - 1, n))
        self.cap = cap
        self.views = new

    # ---- rows ------------------------------------------------------------------------------------
    def move_row(self, src: int, dst: int) -> None:
        """The sequence in row `src` continues in row `dst` (the engine compacts the batch)."""
        if src == dst:
            return
        n = int(self.lengths[src])
        for name, view in self.views.items():
            axis = self._axis.get(name)
            if axis is None:
                view[dst] = view[src]
            else:
                _positions(view[dst], axis - 1, n)[...] = _positions(view[src], axis - 1, n)
        self.lengths[dst] = n

    def swap_rows(self, a: int, b: int) -> None:
        """Exchange rows `a` and `b` (their live positions), through a one-row scratch buffer."""
        if a == b:
            return
        n = int(max(self.lengths[a], self.lengths[b]))
        for name, view in self.views.items():
            axis = self._axis.get(name)
            scratch = self._scratch(name)
            if axis is None:
                src_a, src_b, tmp = view[a], view[b], scratch
            else:
                src_a, src_b = _positions(view[a], axis - 1, n), _positions(view[b], axis - 1, n)
                tmp = _positions(scratch, axis - 1, n)
            np.copyto(tmp, src_a)
            np.copyto(src_a, src_b)
            np.copyto(src_b, tmp)
        self.lengths[[a, b]] = self.lengths[[b, a]]

    def _scratch(self, name: str) -> np.ndarray:
        """One row of `name` at full capacity, a view of the one shared scratch buffer."""
        shape = self._shape(name, self.max_positions)[1:]
        return self._scratch_flat[: int(np.prod(shape))].reshape(shape)

    def truncate(self, row: int, positions: int) -> None:
        """Keep the row's first `positions` positions; a recurrent state keeps all or nothing."""
        if positions == 0:
            self.release_row(row)
            return
        if any(name not in self._axis for name in self.views) and positions != int(self.lengths[row]):
            raise ValueError("a recurrent state cannot be rolled back to an earlier position")
        self.lengths[row] = positions

    def release_row(self, row: int) -> None:
        """The row holds nothing now; a recurrent state starts again from zeros."""
        self.lengths[row] = 0
        for name, view in self.views.items():
            if name not in self._axis:
                view[row] = 0.0


def copy_row(src: SlotState, src_row: int, dst: SlotState, dst_row: int, positions: int) -> None:
    """The first `positions` positions of `src`'s row (a recurrent tensor: all of it) into `dst`'s
    row, which then holds exactly those: between the slots and the host rows that keep prefixes."""
    for name, view in src.views.items():
        target = dst.views[name][dst_row]
        axis = src.positions_axis(name)
        if axis is None:
            np.copyto(target, view[src_row])
        else:
            np.copyto(_positions(target, axis - 1, positions), _positions(view[src_row], axis - 1, positions))
    dst.lengths[dst_row] = positions


def _positions(row_view: np.ndarray, axis: int, n: int) -> np.ndarray:
    """The first `n` positions of one row's tensor along its positions axis."""
    index: list[slice] = [slice(None)] * row_view.ndim
    index[axis] = slice(0, n)
    return row_view[tuple(index)]
