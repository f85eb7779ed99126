"""A reference driver for the "hybrid" graphs: how the engine will run them (numpy + ONNX Runtime).

Everything it knows comes from `kiln.json` (read through `contracts.manifest.TextManifest`): the
files, and the per-slot `state` of each layer,
from which it allocates one buffer per state tensor shaped [max_batch, *shape] ("positions" =
the KV capacity). Active sequences occupy rows 0..n-1; a call feeds the leading slice
`buf[:n]` of every buffer, so slots stay contiguous. A finished row's hole is filled by moving
the last row's state into it (every tensor, recurrent and KV alike, plus its length). A call
may mix rows: a prefill chunk for one row beside single decode tokens for others, and rows
with nothing to do (idle, mask 0) whose state the graph hands back unchanged. Calls where
every row has at most one token go to the S = 1 decode graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contracts.manifest import HYBRID, POSITIONS, TextManifest


@dataclass
class Request:
    prompt: list[int]
    max_new: int
    generated: list[int] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)  # the logits each token was chosen from
    fed: int = 0  # prompt tokens already through the graph

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.prompt)


@dataclass
class Stats:
    calls: dict[str, int] = field(default_factory=lambda: {"prefill": 0, "decode": 0})
    mixed_calls: int = 0  # a prefill chunk beside decode tokens in one call
    idle_rows: int = 0
    moves: int = 0  # holes filled by moving the last row


class HybridDriver:
    def __init__(self, entry: Path, max_batch: int, capacity: int, chunk: int) -> None:
        manifest = TextManifest.read(entry)
        graph = manifest.graph("fp32")
        assert graph.contract == HYBRID
        opts = ort.SessionOptions()
        self.prefill = ort.InferenceSession(str(graph.path), opts)
        self.decode = ort.InferenceSession(str(manifest.path(manifest.decode_files[graph.variant])), opts)
        self.max_batch, self.capacity, self.chunk = max_batch, capacity, chunk
        self.kinds: dict[str, str] = {}
        self.buffers: dict[str, np.ndarray] = {}
        for layer in manifest.state:
            for name, shape in layer.tensors.items():
                self.kinds[name] = layer.kind
                dims = [max_batch, *(capacity if d == POSITIONS else int(d) for d in shape)]
                self.buffers[name] = np.zeros(dims, np.float32)
        self.lengths = np.zeros(max_batch, np.int64)
        self.rows: list[Request] = []
        self.stats = Stats()

    def admit(self, request: Request) -> None:
        row = len(self.rows)
        assert row < self.max_batch
        for name, kind in self.kinds.items():
            if kind == "recurrent":
                self.buffers[name][row] = 0.0  # a fresh slot (KV columns are masked instead)
        self.lengths[row] = 0
        self.rows.append(request)

    def finish(self, row: int) -> Request:
        """Free `row`; the last row's state moves into the hole so rows 0..n-1 stay contiguous."""
        req, last = self.rows[row], len(self.rows) - 1
        if row != last:
            for buf in self.buffers.values():
                buf[row] = buf[last]
            self.lengths[row] = self.lengths[last]
            self.rows[row] = self.rows[last]
            self.stats.moves += 1
        self.rows.pop()
        return req

    def step(self, idle: frozenset[int] = frozenset()) -> None:
        """One call: every prefilling row feeds up to `chunk` prompt tokens, the others one token."""
        n = len(self.rows)
        new: list[list[int]] = []
        for row, req in enumerate(self.rows):
            if row in idle:
                new.append([])
            elif req.prefilling:
                new.append(req.prompt[req.fed : req.fed + self.chunk])
            else:
                new.append([req.generated[-1]])
        seq = max(1, max(len(t) for t in new))
        graph = "decode" if seq == 1 else "prefill"
        past = int(self.lengths[:n].max())
        ids = np.zeros((n, seq), np.int64)
        mask = np.zeros((n, past + seq), np.int64)
        for row, toks in enumerate(new):
            ids[row, : len(toks)] = toks
            mask[row, : self.lengths[row]] = 1
            mask[row, past : past + len(toks)] = 1
        feeds = {
            "input_ids": ids,
            "position_ids": self.lengths[:n, None] + np.arange(seq)[None],
            "attention_mask": mask,
        }
        for name, kind in self.kinds.items():
            buf = self.buffers[name]
            feeds[f"past_{name}"] = buf[:n] if kind == "recurrent" else buf[:n, :, :past]
        sess = self.decode if graph == "decode" else self.prefill
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
        self.stats.calls[graph] += 1
        counts = [len(t) for t in new]
        self.stats.mixed_calls += int(max(counts) > 1 and 1 in counts)
        self.stats.idle_rows += counts.count(0)
        for name, kind in self.kinds.items():
            if kind == "recurrent":
                self.buffers[name][:n] = outs[f"present_{name}"]
                continue
            for row, toks in enumerate(new):
                start = self.lengths[row]
                self.buffers[name][row, :, start : start + len(toks)] = outs[f"new_{name}"][row, :, : len(toks)]
        for row, (req, toks) in enumerate(zip(self.rows, new, strict=True)):
            if not toks:
                continue
            self.lengths[row] += len(toks)
            if req.prefilling:
                req.fed += len(toks)
                if req.prefilling:
                    continue  # more prompt to go: no token from this chunk
            req.logits.append(outs["logits"][row, len(toks) - 1].copy())
            req.generated.append(int(req.logits[-1].argmax()))

    def run(self, waiting: list[Request], idle_every: int = 0) -> list[Request]:
        """Serve every request to completion, admitting as slots free up."""
        queue, done, call = list(waiting), [], 0
        while queue or self.rows:
            while queue and len(self.rows) < self.max_batch:
                self.admit(queue.pop(0))
            pause = idle_every and call % idle_every == idle_every - 1  # one row sits this call out
            self.step(frozenset({call % len(self.rows)}) if pause else frozenset())
            call += 1
            for row in reversed(range(len(self.rows))):
                if len(self.rows[row].generated) >= self.rows[row].max_new:
                    done.append(self.finish(row))
        return done
