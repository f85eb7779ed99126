"""Runs the fused graph (export/fused_graph.py): GroupQueryAttention updates the cache itself.

Each state tensor's `past_*` input and `present_*` output are bound to the same slot memory,
so ONNX Runtime writes the new tokens' keys/values straight into their positions (rotary
already applied) and the runner copies nothing back. A row's valid positions are always
0..length-1, so `seqlens_k` (its length after the call, minus 1) tells the kernel where the
new tokens go and how far to attend. The graph returns logits of the last position only.

The kernel reads each row only up to its own length, so a longer buffer costs nothing: the
state is bound at its full capacity and never re-laid out. The decode binding for a given
batch size is made once, its inputs bound to preallocated arrays that each step overwrites in
place (ONNX Runtime reads CPU inputs from the array's memory) and its logits bound to an array
of their own: asking the binding for its outputs instead wraps every bound output, the whole
state included, in a fresh OrtValue each step (about 0.09 ms of a 4.5 ms 110M int4 step). So
the logits a step returns are valid until the next call; the engine reads them within the
step. Verify calls (speculative decoding: a few tokens at once, every position's logits) get
the same treatment per row and length: rebinding every state tensor per call cost about a
quarter of a small model's decode step, which a guess then had to win back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from contracts.manifest import GraphFile, TextManifest, past_name, present_name
from service.backends.ort_runner import OrtRunner

# binding, ids, seqlens, total, logits
Binding = tuple[ort.IOBinding, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
VERIFY_BINDINGS = 64  # (row, length) pairs kept; the engine verifies row 0 with k + 1 tokens


class FusedRunner(OrtRunner):
    def __init__(self, manifest: TextManifest, graph: GraphFile, *args: Any, **kwargs: Any) -> None:
        super().__init__(manifest, graph, *args, **kwargs)
        self._prefill_binding = self.session.io_binding()
        self._from_start = np.zeros(1, np.int64)  # logits_from = 0: every position of a verify call
        output_dims = {o.name: o.shape for o in self.session.get_outputs()}
        self.can_verify = "logits_all" in output_dims
        width = output_dims["logits"][-1]
        self.vocab = width if isinstance(width, int) else manifest.vocab_size
        self._decode_bindings: dict[int, Binding] = {}
        self._verify_bindings: dict[tuple[int, int], Binding] = {}

    def _bind(
        self,
        binding: ort.IOBinding,
        ids: np.ndarray,
        seqlens: np.ndarray,
        total: np.ndarray,
        row: int,
        logits: np.ndarray | None = None,
    ) -> None:
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("seqlens_k", seqlens)
        binding.bind_cpu_input("total_sequence_length", total)
        if logits is None:
            binding.bind_output("logits", "cpu")
        else:
            binding.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        for name, view in self.state.views.items():
            shape = [ids.shape[0], *view.shape[1:]]
            ptr = view[row].ctypes.data  # rows row.. are contiguous in the buffer
            binding.bind_input(past_name(name), "cpu", 0, np.float32, shape, ptr)
            binding.bind_output(present_name(name), "cpu", 0, np.float32, shape, ptr)

    def _run(self, binding: ort.IOBinding) -> np.ndarray:
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()  # only the logits: the presents *are* the state

    def extend(self, row: int, token_ids: Sequence[int]) -> np.ndarray:
        """A prompt chunk (any length): bound afresh, its cost spread over the chunk's tokens."""
        n = len(token_ids)
        start = self._check_room(row, n)
        b = self._prefill_binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        ids = np.asarray(token_ids, np.int64)[None, :]
        self._bind(b, ids, np.array([start + n - 1], np.int32), np.array(start + n, np.int32), row)
        logits = self._run(b)[0]
        self.lengths[row] = start + n
        return logits

    def verify(self, row: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens like `extend` and return every one's logits [n, vocab] (`logits_all`)."""
        n = len(token_ids)
        start = self._check_room(row, n)
        binding, ids, seqlens, total, logits = self._verify_binding(row, n)
        ids[0, :] = token_ids
        seqlens[0] = start + n - 1
        total[...] = start + n
        self.session.run_with_iobinding(binding)
        self.lengths[row] = start + n
        return logits[0]

    def _verify_binding(self, row: int, n: int) -> Binding:
        cached = self._verify_bindings.get((row, n))
        if cached is not None:
            return cached
        ids, seqlens, total = np.zeros((1, n), np.int64), np.zeros(1, np.int32), np.zeros((), np.int32)
        logits = np.zeros((1, n, self.vocab), np.float32)
        binding = self.session.io_binding()
        # Every position's logits, into their own array; `logits_from` is an overridable
        # initializer, so it is bound by pointer. The last position's `logits` go where ONNX
        # Runtime puts them: nothing reads them.
        binding.bind_output("logits_all", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        binding.bind_input("logits_from", "cpu", 0, np.int64, [1], self._from_start.ctypes.data)
        self._bind(binding, ids, seqlens, total, row)
        made = (binding, ids, seqlens, total, logits)
        if len(self._verify_bindings) < VERIFY_BINDINGS:
            self._verify_bindings[(row, n)] = made
        return made

    def decode(self, last_tokens: np.ndarray) -> np.ndarray:
        n = last_tokens.shape[0]
        if n not in self._decode_bindings:
            ids, seqlens, total = np.zeros((n, 1), np.int64), np.zeros(n, np.int32), np.zeros((), np.int32)
            logits = np.zeros((n, self.vocab), np.float32)
            binding = self.session.io_binding()
            self._bind(binding, ids, seqlens, total, 0, logits)
            self._decode_bindings[n] = (binding, ids, seqlens, total, logits)
        binding, ids, seqlens, total, logits = self._decode_bindings[n]
        lengths = self.lengths[:n]
        ids[:, 0] = last_tokens
        seqlens[:] = lengths  # the new token lands at position `length`: total - 1 == length
        total[...] = int(lengths.max()) + 1
        self.session.run_with_iobinding(binding)
        lengths += 1
        return logits
