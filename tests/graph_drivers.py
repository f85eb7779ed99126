"""Drive an exported LM graph the way a serving engine does, from its contract alone.

Both drivers keep one preallocated cache for all rows (unused columns hold garbage, so a graph
that reads past a row's length shows up), prefill a row in one call or in chunks on top of its
cached prefix, and decode all rows together at their different lengths. They depend only on
the graph contracts (docstrings of export/models/decoder.py and export/fused_graph.py), not on
the service's runners, so the same checks hold whatever the engine looks like.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from contracts.manifest import TextManifest


def session(onnx_file: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as served
    return ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])


class _Driver:
    def __init__(self, entry: Path, variant: str, rows: int = 2, capacity: int = 48, seed: int = 0) -> None:
        manifest = TextManifest.read(entry)
        graph = manifest.graph(variant)
        assert graph.variant == variant, f"{entry.name} has no {variant} graph"
        self.sess = session(graph.path)
        self.layers = manifest.num_layers
        shape = (rows, *manifest.state[0].slot_shape("key.0", capacity))
        rng = np.random.default_rng(seed)
        self.cache = [rng.standard_normal(shape).astype(np.float32) for _ in range(2 * self.layers)]
        self.lengths = [0] * rows
        self.capacity = capacity

    def extend(self, row: int, tokens: list[int]) -> np.ndarray:
        """Append tokens to `row`; logits of its last new position [V]."""
        raise NotImplementedError

    def decode(self, tokens: list[int]) -> np.ndarray:
        """One token for every row; logits [rows, V]."""
        raise NotImplementedError


class StandardDriver(_Driver):
    """The traced graph: the past is the whole buffer, masked; new K/V are written back here."""

    def _run(self, ids: np.ndarray, pos: np.ndarray, mask: np.ndarray, rows: slice, past_len: int) -> np.ndarray:
        feeds = {"input_ids": ids, "position_ids": pos, "attention_mask": mask}
        for i in range(self.layers):
            feeds[f"past_key.{i}"] = np.ascontiguousarray(self.cache[2 * i][rows, :, :past_len])
            feeds[f"past_value.{i}"] = np.ascontiguousarray(self.cache[2 * i + 1][rows, :, :past_len])
        outs = self.sess.run(None, feeds)
        for r, row in enumerate(range(rows.start, rows.stop)):
            n, start = ids.shape[1], self.lengths[row]
            for j in range(2 * self.layers):
                self.cache[j][row, :, start : start + n] = outs[1 + j][r]
        return outs[0]

    def extend(self, row: int, tokens: list[int]) -> np.ndarray:
        start, n = self.lengths[row], len(tokens)
        past = 0 if start == 0 else self.capacity  # an empty past for a fresh row, else the buffer
        mask = np.zeros((1, past + n), np.int64)
        mask[0, :start] = 1
        mask[0, past:] = 1
        pos = np.arange(start, start + n, dtype=np.int64)[None]
        logits = self._run(np.array([tokens], np.int64), pos, mask, slice(row, row + 1), past)
        self.lengths[row] += n
        return logits[0, -1]

    def decode(self, tokens: list[int]) -> np.ndarray:
        rows = len(tokens)
        mask = np.zeros((rows, self.capacity + 1), np.int64)
        for r in range(rows):
            mask[r, : self.lengths[r]] = 1
        mask[:, -1] = 1
        pos = np.array(self.lengths, np.int64)[:, None]
        logits = self._run(np.array(tokens, np.int64)[:, None], pos, mask, slice(0, rows), self.capacity)
        self.lengths = [n + 1 for n in self.lengths]
        return logits[:, 0]


class FusedDriver(_Driver):
    """The GroupQueryAttention graph: past and present bound to the same buffer (updated in place)."""

    def _run(self, ids: np.ndarray, seqlens: np.ndarray, first_row: int) -> np.ndarray:
        b = self.sess.io_binding()
        b.bind_cpu_input("input_ids", ids)
        b.bind_cpu_input("seqlens_k", seqlens.astype(np.int32))
        b.bind_cpu_input("total_sequence_length", np.array(int(seqlens.max()) + 1, np.int32))
        b.bind_output("logits", "cpu")
        for i in range(self.layers):
            for kind, buf in (("key", self.cache[2 * i]), ("value", self.cache[2 * i + 1])):
                view = buf[first_row : first_row + ids.shape[0]]  # leading rows: contiguous
                b.bind_input(f"past_{kind}.{i}", "cpu", 0, np.float32, list(view.shape), view.ctypes.data)
                b.bind_output(f"present_{kind}.{i}", "cpu", 0, np.float32, list(view.shape), view.ctypes.data)
        self.sess.run_with_iobinding(b)
        return b.get_outputs()[0].numpy()

    def extend(self, row: int, tokens: list[int]) -> np.ndarray:
        self.lengths[row] += len(tokens)
        return self._run(np.array([tokens], np.int64), np.array([self.lengths[row] - 1]), row)[0]

    def decode(self, tokens: list[int]) -> np.ndarray:
        logits = self._run(np.array(tokens, np.int64)[:, None], np.array(self.lengths), 0)
        self.lengths = [n + 1 for n in self.lengths]
        return logits


DRIVERS = {"fp32": StandardDriver, "fused": FusedDriver}
