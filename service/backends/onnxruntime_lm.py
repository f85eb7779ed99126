"""Runs Kiln's decoder graph in-process with ONNX Runtime over a preallocated KV cache.

The cache is one numpy buffer per layer and per K/V, shaped
[max_batch, kv_heads, max_seq_len, head_dim], allocated once. Active sequences occupy rows
0..n-1 (the engine keeps them compacted), so the past handed to ONNX Runtime for a decode
step is the leading slice `cache[:n]`: contiguous, bound by pointer through IOBinding,
never copied. The graph returns only the new token's K/V, which is written into the
sequence's next column.

Attention does not run over all `max_seq_len` columns. The buffer is read with a row
*capacity* `cap` (a multiple of `CAPACITY_STEP` ≥ the longest active sequence + 1): the same
memory viewed as [max_batch, kv_heads, cap, head_dim], whose leading rows are contiguous.
When the longest sequence outgrows `cap` the rows are re-laid out in place at the next
capacity (one copy of the live columns every `CAPACITY_STEP` tokens, no allocation); when
the batch empties or shrinks to half the capacity, `cap` shrinks the same way. So a decode
step reads only about as many cache columns as the longest live sequence needs, instead of
the whole preallocated length (with 8 sequences the full buffer can outweigh the weights).

That is `OrtLMRunner`, for the traced standard graph. `FusedOrtLMRunner` serves the fused
graph (`export/fused_graph.py`, the default `KILN_LM_VARIANT`): its attention kernel writes
the new keys/values into the same buffer itself and reads each row only up to its length, so
it needs neither the write-back nor the capacity re-layouts. `make_runner` picks by the
manifest's `graphs` entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort


@dataclass(frozen=True)
class LMManifest:
    """The parts of `kiln.json` the runner and engine need."""

    name: str
    model_dir: Path
    onnx_file: Path
    tokenizer_file: Path
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    bos_token_id: int
    eos_token_id: int
    add_bos: bool
    generation_defaults: dict
    graph: str = "standard"  # graph contract of `onnx_file`: "standard" (traced) or "gqa" (fused)

    @classmethod
    def load(cls, model_dir: Path, variant: str = "fused") -> LMManifest:
        data = json.loads((model_dir / "kiln.json").read_text())
        files = data["files"]
        chosen = variant if variant in files else "fp32"
        onnx_rel = files[chosen]
        return cls(
            name=data.get("name", model_dir.name),
            model_dir=model_dir,
            onnx_file=model_dir / onnx_rel,
            tokenizer_file=model_dir / data.get("tokenizer", "tokenizer.json"),
            num_layers=int(data["num_layers"]),
            num_kv_heads=int(data["num_kv_heads"]),
            head_dim=int(data["head_dim"]),
            vocab_size=int(data["vocab_size"]),
            max_position_embeddings=int(data["max_position_embeddings"]),
            bos_token_id=int(data["bos_token_id"]),
            eos_token_id=int(data["eos_token_id"]),
            add_bos=bool(data.get("add_bos", True)),
            generation_defaults=dict(data.get("generation_defaults", {})),
            graph=data.get("graphs", {}).get(chosen, "standard"),
        )


CAPACITY_STEP = 32  # cache columns are attended in multiples of this (re-layout every 32 tokens)


def kv_cache_bytes(num_layers: int, num_kv_heads: int, head_dim: int, max_batch: int, max_seq_len: int) -> int:
    """Bytes of the preallocated cache: 2 (K and V) x layers x slots x kv_heads x len x dim x 4 (fp32)."""
    return 2 * num_layers * max_batch * num_kv_heads * max_seq_len * head_dim * 4


class OrtLMRunner:
    """Owns the ONNX Runtime session and the KV cache; knows nothing about requests."""

    def __init__(self, manifest: LMManifest, max_batch: int, max_seq_len: int, threads: int = 0) -> None:
        self.manifest = manifest
        self.max_batch = max_batch
        self.max_seq_len = min(max_seq_len, manifest.max_position_embeddings)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 0:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(manifest.onnx_file), opts, providers=["CPUExecutionProvider"])
        m = manifest
        shape = (max_batch, m.num_kv_heads, self.max_seq_len, m.head_dim)
        # np.full, not np.zeros: zeros come from calloc as untouched pages, and the first write
        # to each (a page fault per 4 KiB) would land in some request's prefill. Filling here
        # makes the whole cache resident at start-up, as the memory formula says.
        self.keys = [np.full(shape, 0.0, np.float32) for _ in range(m.num_layers)]
        self.values = [np.full(shape, 0.0, np.float32) for _ in range(m.num_layers)]
        self._buffers = [*self.keys, *self.values]
        self._flat = [buf.reshape(-1) for buf in self._buffers]  # views, never copies
        # Valid cache columns per row (logical positions, independent of the capacity).
        self.mask = np.zeros((max_batch, self.max_seq_len + 1), np.int64)
        self.mask[:, -1] = 1
        self.lengths = np.zeros(max_batch, np.int64)
        self._empty_past = np.zeros((1, m.num_kv_heads, 0, m.head_dim), np.float32)
        self._binding = self.session.io_binding()
        self._prefill_binding = self.session.io_binding()
        self._output_names = [out.name for out in self.session.get_outputs()]
        # Per-step inputs live in preallocated buffers; a step only takes views of them.
        self._mask_buf = np.zeros(max_batch * (self.max_seq_len + 1), np.int64)
        self._ids_buf = np.zeros((max_batch, 1), np.int64)
        self._pos_buf = np.zeros((max_batch, 1), np.int64)
        self._rows = np.arange(max_batch)
        self.cap = min(CAPACITY_STEP, self.max_seq_len)
        self._views = self._make_views(self.cap)

    @property
    def cache_bytes(self) -> int:
        return sum(a.nbytes for a in self.keys) + sum(a.nbytes for a in self.values)

    # ---- capacity (how many cache columns a step attends to) ---------------------------------
    def _make_views(self, cap: int) -> list[np.ndarray]:
        m = self.manifest
        size = self.max_batch * m.num_kv_heads * cap * m.head_dim
        return [flat[:size].reshape(self.max_batch, m.num_kv_heads, cap, m.head_dim) for flat in self._flat]

    def _capacity_for(self, needed: int) -> int:
        step = CAPACITY_STEP
        return min(self.max_seq_len, max(step, -(-needed // step) * step))

    def _set_capacity(self, cap: int) -> None:
        """Re-lay out the live columns of every row for row capacity `cap`, in place."""
        if cap == self.cap:
            return
        old = self._views
        new = self._make_views(cap)
        live = [r for r in range(self.max_batch) if self.lengths[r] > 0]
        # Growing moves rows up (dst >= src): last row first; shrinking moves them down: first
        # row first. Either way no row is overwritten before it has moved; numpy handles the
        # overlap of a row with its own old place.
        order = reversed(live) if cap > self.cap else live
        for r in order:
            n = int(self.lengths[r])
            for src, dst in zip(old, new, strict=True):
                np.copyto(dst[r, :, :n], src[r, :, :n])
        self.cap = cap
        self._views = new

    def _ensure_capacity(self, needed: int) -> None:
        if needed > self.cap:
            self._set_capacity(self._capacity_for(needed))

    # ---- model calls ---------------------------------------------------------------------------
    def prefill(self, row: int, token_ids: list[int]) -> np.ndarray:
        """Fill cache row `row` with the prompt's K/V; return logits of the last position."""
        self.lengths[row] = 0  # a reused row holds nothing live
        return self.extend(row, token_ids)

    def extend(self, row: int, token_ids: list[int]) -> np.ndarray:
        """Append `token_ids` to row `row` (one prefill chunk); return logits of the last one.

        A row holding nothing yet is prefilled with an empty past. Otherwise the chunk attends
        to the row's cached prefix (its valid columns at the current capacity, bound in place)
        and, causally, to itself; its K/V go into the row's next columns. Only this row runs,
        so the rows decoding around it are untouched.
        """
        n = len(token_ids)
        start = int(self.lengths[row])
        if start + n > self.max_seq_len:
            raise ValueError(f"row {row}: {start} + {n} tokens exceed max_seq_len {self.max_seq_len}")
        layers = self.manifest.num_layers
        ids = np.asarray(token_ids, np.int64)[None, :]
        positions = np.arange(start, start + n, dtype=np.int64)[None, :]
        if start == 0:
            feeds: dict[str, np.ndarray] = {
                "input_ids": ids,
                "position_ids": positions,
                "attention_mask": np.ones((1, n), np.int64),
            }
            for i in range(layers):
                feeds[f"past_key.{i}"] = self._empty_past
                feeds[f"past_value.{i}"] = self._empty_past
            outputs = self.session.run(None, feeds)
            self.mask[row, :-1] = 0
            self._ensure_capacity(n + 1)
        else:
            self._ensure_capacity(start + n + 1)
            cap = self.cap
            mask = np.ones((1, cap + n), np.int64)
            mask[0, :cap] = self.mask[row, :cap]
            b = self._prefill_binding
            b.clear_binding_inputs()
            b.clear_binding_outputs()
            b.bind_cpu_input("input_ids", ids)
            b.bind_cpu_input("position_ids", positions)
            b.bind_cpu_input("attention_mask", mask)
            shape = [1, self.manifest.num_kv_heads, cap, self.manifest.head_dim]
            for i in range(layers):
                b.bind_input(f"past_key.{i}", "cpu", 0, np.float32, shape, self._views[i][row].ctypes.data)
                b.bind_input(f"past_value.{i}", "cpu", 0, np.float32, shape, self._views[layers + i][row].ctypes.data)
            for name in self._output_names:
                b.bind_output(name, "cpu")
            self.session.run_with_iobinding(b)
            outputs = b.copy_outputs_to_cpu()
        end = start + n
        for i in range(layers):
            self._views[i][row, :, start:end] = outputs[1 + 2 * i][0]
            self._views[layers + i][row, :, start:end] = outputs[2 + 2 * i][0]
        self.mask[row, start:end] = 1
        self.lengths[row] = end
        return outputs[0][0, -1]

    def decode(self, last_tokens: np.ndarray) -> np.ndarray:
        """One token for each of rows 0..n-1; returns logits [n, vocab]."""
        n = last_tokens.shape[0]
        lengths = self.lengths[:n]
        self._ensure_capacity(int(lengths.max()) + 1)
        cap = self.cap
        b = self._binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        ids = self._ids_buf[:n]
        ids[:, 0] = last_tokens
        positions = self._pos_buf[:n]
        positions[:, 0] = lengths
        mask = self._mask_buf[: n * (cap + 1)].reshape(n, cap + 1)
        mask[:, :cap] = self.mask[:n, :cap]
        mask[:, cap] = 1
        b.bind_cpu_input("input_ids", ids)
        b.bind_cpu_input("position_ids", positions)
        b.bind_cpu_input("attention_mask", mask)
        layers = self.manifest.num_layers
        shape = [n, self.manifest.num_kv_heads, cap, self.manifest.head_dim]
        for i in range(layers):
            b.bind_input(f"past_key.{i}", "cpu", 0, np.float32, shape, self._views[i].ctypes.data)
            b.bind_input(f"past_value.{i}", "cpu", 0, np.float32, shape, self._views[layers + i].ctypes.data)
        for name in self._output_names:
            b.bind_output(name, "cpu")
        self.session.run_with_iobinding(b)
        outputs = b.copy_outputs_to_cpu()
        rows = self._rows[:n]
        cols = lengths.copy()
        for i in range(layers):
            self._views[i][rows, :, cols] = outputs[1 + 2 * i][:, :, 0]
            self._views[layers + i][rows, :, cols] = outputs[2 + 2 * i][:, :, 0]
        self.mask[rows, cols] = 1
        lengths += 1
        return outputs[0][:, 0]

    def move_row(self, src: int, dst: int) -> None:
        """Compact the cache: the sequence in row `src` continues in row `dst`."""
        if src == dst:
            return
        n = int(self.lengths[src])
        for view in self._views:
            view[dst, :, :n] = view[src, :, :n]
        self.mask[dst] = self.mask[src]
        self.lengths[dst] = n

    def release_row(self, row: int) -> None:
        self.lengths[row] = 0
        self.mask[row, :-1] = 0
        # Shrink once the longest live sequence fits in half the capacity (or nothing is live).
        target = self._capacity_for(int(self.lengths.max()) + 1)
        if target * 2 <= self.cap or not self.lengths.any():
            self._set_capacity(target)


class FusedOrtLMRunner(OrtLMRunner):
    """Runs the fused graph (`export/fused_graph.py`): GroupQueryAttention updates the cache itself.

    Each layer's past and present are bound to the same cache memory, so ONNX Runtime writes
    the new tokens' keys/values straight into their columns (rotary already applied) and the
    runner copies nothing back. Valid columns are always 0..length-1 of a row, so a row's
    state is its length alone (the standard runner's column mask is not kept up): `seqlens_k`
    (length after the call, minus 1) tells the kernel where the new tokens go and how far to
    attend. The graph returns logits of the last position only.

    The kernel reads each row only up to its own length, so a longer buffer costs nothing:
    the cache is bound whole (capacity = `max_seq_len`) and never re-laid out. The decode
    binding for a given batch size is made once, its inputs bound to preallocated arrays that
    each step overwrites in place (ONNX Runtime reads CPU inputs from the array's memory).
    """

    def __init__(self, manifest: LMManifest, max_batch: int, max_seq_len: int, threads: int = 0) -> None:
        super().__init__(manifest, max_batch, max_seq_len, threads)
        self._set_capacity(self.max_seq_len)  # nothing is live yet: no copy
        self._decode_bindings: dict[int, tuple[ort.IOBinding, np.ndarray, np.ndarray, np.ndarray]] = {}

    def _capacity_for(self, needed: int) -> int:
        return self.max_seq_len

    def _bind(self, binding: ort.IOBinding, ids: np.ndarray, seqlens: np.ndarray, total: np.ndarray, row: int) -> None:
        m = self.manifest
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("seqlens_k", seqlens)
        binding.bind_cpu_input("total_sequence_length", total)
        binding.bind_output("logits", "cpu")
        shape = [ids.shape[0], m.num_kv_heads, self.cap, m.head_dim]
        for i in range(m.num_layers):
            for kind, view in (("key", self._views[i]), ("value", self._views[m.num_layers + i])):
                ptr = view[row].ctypes.data  # rows row.. are contiguous in the buffer
                binding.bind_input(f"past_{kind}.{i}", "cpu", 0, np.float32, shape, ptr)
                binding.bind_output(f"present_{kind}.{i}", "cpu", 0, np.float32, shape, ptr)

    def _run(self, binding: ort.IOBinding) -> np.ndarray:
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()  # only the logits: the presents *are* the cache

    def extend(self, row: int, token_ids: list[int]) -> np.ndarray:
        n = len(token_ids)
        start = int(self.lengths[row])
        if start + n > self.max_seq_len:
            raise ValueError(f"row {row}: {start} + {n} tokens exceed max_seq_len {self.max_seq_len}")
        b = self._prefill_binding
        b.clear_binding_inputs()
        b.clear_binding_outputs()
        ids = np.asarray(token_ids, np.int64)[None, :]
        self._bind(b, ids, np.array([start + n - 1], np.int32), np.array(start + n, np.int32), row)
        logits = self._run(b)
        self.lengths[row] = start + n
        return logits[0]

    def decode(self, last_tokens: np.ndarray) -> np.ndarray:
        n = last_tokens.shape[0]
        if n not in self._decode_bindings:
            ids, seqlens, total = np.zeros((n, 1), np.int64), np.zeros(n, np.int32), np.zeros((), np.int32)
            binding = self.session.io_binding()
            self._bind(binding, ids, seqlens, total, 0)
            self._decode_bindings[n] = (binding, ids, seqlens, total)
        binding, ids, seqlens, total = self._decode_bindings[n]
        lengths = self.lengths[:n]
        ids[:, 0] = last_tokens
        seqlens[:] = lengths  # the new token lands at column `length`: total - 1 == length
        total[...] = int(lengths.max()) + 1
        logits = self._run(binding)
        lengths += 1
        return logits


def make_runner(manifest: LMManifest, max_batch: int, max_seq_len: int, threads: int = 0) -> OrtLMRunner:
    """The runner for the manifest's graph contract."""
    cls = FusedOrtLMRunner if manifest.graph == "gqa" else OrtLMRunner
    return cls(manifest, max_batch, max_seq_len, threads)
