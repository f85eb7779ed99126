"""Runs the traced standard graph (export/onnx_export.py) over the slot state.

The graph takes the past (`past_*`, [n, kv_heads, cap, head_dim] per tensor) and returns only
the new tokens' keys/values (`new_*`), which the runner writes into each row's next positions.
The past handed to ONNX Runtime for a decode step is the leading slice of the state buffers,
rows 0..n-1: contiguous, bound by pointer through IOBinding, never copied.

Attention does not run over all `max_seq_len` positions. The state is laid out with a row
*capacity* `cap` (a multiple of `CAPACITY_STEP` ≥ the longest live sequence + 1, see
SlotState.set_capacity). When the longest sequence outgrows `cap` the rows are re-laid out at
the next capacity (one copy of the live positions every `CAPACITY_STEP` tokens, no
allocation); when the batch empties or shrinks to half the capacity, `cap` shrinks the same
way. So a decode step reads only about as many positions as the longest live sequence needs,
instead of the whole preallocated length (with 8 sequences the full buffer can outweigh the
weights). The attention mask follows from the lengths: a row's valid positions are 0..len-1.

State that does not grow (a Mamba layer's recurrent tensors, the hybrid contract) is handled
here too: the graph reads a row's `past_*` and returns the state after the new tokens as
`present_*`, which replaces the row's. service/backends/ort_hybrid.py runs that contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from contracts.manifest import ATTENTION_KV, GraphFile, TextManifest, new_name, past_name, present_name
from service.backends.ort_runner import OrtRunner
from service.backends.ort_session import cpu_session

CAPACITY_STEP = 32  # positions are attended in multiples of this (re-layout every 32 tokens)


class StandardRunner(OrtRunner):
    # Its capacity follows the longest *held* row: finished rows kept for their prefixes would
    # keep every decode step attending over their length. Prefix caching is the fused runner's.
    prefix_reuse = "none"

    def __init__(self, manifest: TextManifest, graph: GraphFile, *args: Any, **kwargs: Any) -> None:
        super().__init__(manifest, graph, *args, **kwargs)
        self._check_state(manifest)
        names = self.state.names
        self._layer_axis = {n: axis for n in names if (axis := self.state.positions_axis(n)) is not None}
        self._fixed = [n for n in names if n not in self._layer_axis]  # recurrent: replaced every call
        # An empty past: no positions for growing tensors, zeros (the initial state) for the rest.
        self._empty_past = {name: np.zeros(self.state.shape(name, 1, 0), np.float32) for name in names}
        self._decode_session = self._open_decode_session(manifest, graph)
        self._binding = self._decode_session.io_binding()
        self._prefill_binding = self.session.io_binding()
        self._output_names = [out.name for out in self.session.get_outputs()]
        decode_outputs = [out.name for out in self._decode_session.get_outputs()]
        if decode_outputs != self._output_names:
            raise ValueError(f"{manifest.name}: the decode graph's outputs differ from the prefill graph's")
        self._out_index = {
            name: self._output_names.index(present_name(name) if name in self._fixed else new_name(name))
            for name in names
        }
        # Per-step inputs live in preallocated buffers; a step only takes views of them.
        self._mask_buf = np.zeros(self.max_batch * (self.max_seq_len + 1), np.int64)
        self._ids_buf = np.zeros((self.max_batch, 1), np.int64)
        self._pos_buf = np.zeros((self.max_batch, 1), np.int64)
        self._columns = np.arange(self.max_seq_len)
        self._rows = np.arange(self.max_batch)
        self.state.set_capacity(self.capacity_for(1))  # nothing is live yet: no copy

    def _check_state(self, manifest: TextManifest) -> None:
        if any(layer.kind != ATTENTION_KV for layer in manifest.state):
            raise ValueError(f"{manifest.name}: the standard graph contract carries attention state only")

    def _open_decode_session(self, manifest: TextManifest, graph: GraphFile) -> ort.InferenceSession:
        """The session decode steps run on: the same graph, unless a one-token twin was exported."""
        decode_file = manifest.decode_files.get(graph.variant)
        if decode_file is None:
            return self.session
        return cpu_session(manifest.path(decode_file), self.threads)

    @property
    def cap(self) -> int:
        return self.state.cap

    @property
    def _past_columns(self) -> int:
        """The past length P the graph's attention mask spans: the capacity, or 0 without attention."""
        return self.cap if self._layer_axis else 0

    # ---- capacity (how many positions a step attends to) ---------------------------------------
    def capacity_for(self, needed: int) -> int:
        """The layout capacity for rows needing `needed` positions (a multiple of CAPACITY_STEP)."""
        step = CAPACITY_STEP
        return min(self.max_seq_len, max(step, -(-needed // step) * step))

    def _set_capacity(self, cap: int) -> None:
        self.state.set_capacity(cap)

    def _ensure_capacity(self, needed: int) -> None:
        if needed > self.cap:
            self._set_capacity(self.capacity_for(needed))

    # ---- model calls ---------------------------------------------------------------------------
    can_verify = True  # the traced graph returns every position's logits anyway

    def verify(self, row: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens like `extend` and return every one's logits [n, vocab]."""
        return self._extend(row, token_ids)

    def extend(self, row: int, token_ids: Sequence[int]) -> np.ndarray:
        return self._extend(row, token_ids)[-1]

    def _extend(self, row: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append `token_ids` to row `row` (one prefill chunk); return the logits of each one.

        A row holding nothing yet is prefilled with an empty past. Otherwise the chunk attends
        to the row's cached prefix (its valid positions at the current capacity, bound in
        place) and, causally, to itself; its keys/values go into the row's next positions. Only
        this row runs, so the rows decoding around it are untouched.
        """
        n = len(token_ids)
        start = self._check_room(row, n)
        ids = np.asarray(token_ids, np.int64)[None, :]
        positions = np.arange(start, start + n, dtype=np.int64)[None, :]
        if start == 0:
            feeds: dict[str, np.ndarray] = {
                "input_ids": ids,
                "position_ids": positions,
                "attention_mask": np.ones((1, n), np.int64),
            }
            feeds.update({past_name(name): empty for name, empty in self._empty_past.items()})
            outputs = self.session.run(None, feeds)
            self._ensure_capacity(n + 1)
        else:
            self._ensure_capacity(start + n + 1)
            cap = self._past_columns
            mask = np.ones((1, cap + n), np.int64)
            mask[0, :cap] = self._columns[:cap] < start
            b = self._prefill_binding
            b.clear_binding_inputs()
            b.clear_binding_outputs()
            b.bind_cpu_input("input_ids", ids)
            b.bind_cpu_input("position_ids", positions)
            b.bind_cpu_input("attention_mask", mask)
            for name, view in self.state.views.items():
                shape = [1, *view.shape[1:]]
                b.bind_input(past_name(name), "cpu", 0, np.float32, shape, view[row].ctypes.data)
            for name in self._output_names:
                b.bind_output(name, "cpu")
            self.session.run_with_iobinding(b)
            outputs = b.copy_outputs_to_cpu()
        end = start + n
        views = self.state.views
        for name, layer_axis in self._layer_axis.items():
            index: list[slice] = [slice(None)] * (views[name].ndim - 1)
            index[layer_axis - 1] = slice(start, end)  # within one row
            views[name][row][tuple(index)] = outputs[self._out_index[name]][0]
        for name in self._fixed:
            views[name][row] = outputs[self._out_index[name]][0]
        self.lengths[row] = end
        return outputs[0][0]

    def decode(self, last_tokens: np.ndarray) -> np.ndarray:
        """One token for each of rows 0..n-1; returns logits [n, vocab]."""
        n = last_tokens.shape[0]
        lengths = self.lengths[:n]
        self._ensure_capacity(int(lengths.max()) + 1)
        cap = self._past_columns
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        ids = self._ids_buf[:n]
        ids[:, 0] = last_tokens
        positions = self._pos_buf[:n]
        positions[:, 0] = lengths
        mask = self._mask_buf[: n * (cap + 1)].reshape(n, cap + 1)
        np.less(self._columns[None, :cap], lengths[:, None], out=mask[:, :cap], casting="unsafe")
        mask[:, cap] = 1
        b.bind_cpu_input("input_ids", ids)
        b.bind_cpu_input("position_ids", positions)
        b.bind_cpu_input("attention_mask", mask)
        for name, view in self.state.views.items():
            b.bind_input(past_name(name), "cpu", 0, np.float32, [n, *view.shape[1:]], view.ctypes.data)
        for name in self._output_names:
            b.bind_output(name, "cpu")
        self._decode_session.run_with_iobinding(b)
        outputs = b.copy_outputs_to_cpu()
        rows = self._rows[:n]
        cols = lengths.copy()
        views = self.state.views
        for name, axis in self._layer_axis.items():
            index: list[Any] = [rows, *([slice(None)] * (views[name].ndim - 1))]
            index[axis] = cols
            views[name][tuple(index)] = np.take(outputs[self._out_index[name]], 0, axis=axis)
        for name in self._fixed:
            views[name][:n] = outputs[self._out_index[name]]
        lengths += 1
        return outputs[0][:, 0]

    def release_row(self, row: int) -> None:
        super().release_row(row)
        # Shrink once the longest live sequence fits in half the capacity (or nothing is live).
        target = self.capacity_for(int(self.lengths.max()) + 1)
        if target * 2 <= self.cap or not self.lengths.any():
            self._set_capacity(target)
