"""Numerical verification of the hybrid graphs (export/hybrid_graph.py) against PyTorch.

The graphs are driven the way an engine drives them: three rows sharing per-layer state
buffers, a KV buffer with garbage past each row's length, rows of different lengths in one
call (right-padded), a chunked prefill continuing from the previous chunk's state, a row
prefilling while the others decode, idle rows (no real token in the call), then decode steps
through the S = 1 graph. Every call is checked three ways:

- the graph against the PyTorch model on the same inputs (logits at real positions, every
  recurrent state, the real tokens' new K/V);
- each row against that row run alone from scratch over its whole history (no padding, no
  batch): last-token logits, recurrent state, cached K/V — so padding and batching cannot
  leak between rows or into the state;
- idle rows: their recurrent state comes back bit for bit.

`verify_against_transformers` checks an imported checkpoint against transformers' own
PyTorch implementation (its slow path on CPU), step by step: logits and both states.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.hybrid_graph import state_io
from export.models.hybrid import HybridLM
from export.verify import VerificationError

# (graph, new tokens per row) for each call; 0 = the row is idle in that call.
PLAN = [
    ("prefill", "prefill_chunk_1", [6, 5, 0]),
    ("prefill", "prefill_chunk_2", [3, 0, 4]),
    ("prefill", "mixed_prefill_decode", [1, 1, 5]),
    ("prefill", "decode_via_prefill_graph", [1, 1, 1]),
    ("decode", "decode_0", [1, 1, 1]),
    ("decode", "decode_1", [1, 1, 1]),
    ("decode", "decode_idle_row", [1, 0, 1]),
]
CAPACITY = 32


def session(onnx_file: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])


class _Rows:
    """Per-row history and the state buffers (numpy) the graphs read and the checks compare."""

    def __init__(self, model: HybridLM, batch: int, rng: np.random.Generator) -> None:
        self.io = state_io(model)
        self.history: list[list[int]] = [[] for _ in range(batch)]
        self.state: dict[str, np.ndarray] = {}
        for entry in model.state_spec():
            for name, shape in entry["tensors"].items():
                dims = [batch, *(CAPACITY if d == "positions" else d for d in shape)]
                # Recurrent state starts at zero (a fresh row); KV columns hold garbage.
                fresh = entry["kind"] == "recurrent"
                self.state[name] = np.zeros(dims, np.float32) if fresh else rng.standard_normal(dims, np.float32)

    def feeds(self, new: list[list[int]]) -> dict[str, np.ndarray]:
        batch, seq = len(new), max(1, max(len(t) for t in new))
        ids = np.zeros((batch, seq), np.int64)
        mask = np.zeros((batch, CAPACITY + seq), np.int64)
        pos = np.zeros((batch, seq), np.int64)
        for b, toks in enumerate(new):
            n = len(self.history[b])
            ids[b, : len(toks)] = toks
            mask[b, :n] = 1
            mask[b, CAPACITY : CAPACITY + len(toks)] = 1
            pos[b] = n + np.arange(seq)
        feeds = {"input_ids": ids, "position_ids": pos, "attention_mask": mask}
        for _, in_name, _ in self.io:
            feeds[in_name] = self.state[in_name[len("past_") :]]
        return feeds

    def advance(self, new: list[list[int]], outs: dict[str, np.ndarray]) -> None:
        for kind, _, out_name in self.io:
            name = out_name.split("_", 1)[1]
            if kind == "recurrent":
                self.state[name] = outs[out_name].copy()
                continue
            for b, toks in enumerate(new):
                n = len(self.history[b])
                self.state[name][b, :, n : n + len(toks)] = outs[out_name][b, :, : len(toks)]
        for b, toks in enumerate(new):
            self.history[b] += toks


def _torch_call(model: HybridLM, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    t = {k: torch.from_numpy(v) for k, v in feeds.items()}
    past = [(t[names[2 * i]], t[names[2 * i + 1]]) for i in range(len(names) // 2)]
    with torch.no_grad():
        logits, present = model(t["input_ids"], t["position_ids"], t["attention_mask"], past)
    flat = {f"#{i}.{j}": x.numpy() for i, pair in enumerate(present) for j, x in enumerate(pair)}
    return {"logits": logits.numpy(), **flat}


def _alone(model: HybridLM, tokens: list[int]) -> tuple[np.ndarray, list[tuple[torch.Tensor, torch.Tensor]]]:
    ids = torch.tensor([tokens])
    with torch.no_grad():
        logits, present = model(ids, torch.arange(len(tokens))[None], torch.ones_like(ids), model.empty_state(1))
    return logits[0, -1].numpy(), present


def _max(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def verify_hybrid(
    model: HybridLM, prefill_file: Path, decode_file: Path, tolerance: float = 1e-4, seed: int = 0
) -> dict:
    """Max |Δ| per call; raises VerificationError when anything differs by more than `tolerance`."""
    model = model.eval()
    cfg = model.config
    sessions = {"prefill": session(prefill_file), "decode": session(decode_file)}
    rng = np.random.default_rng(seed)
    rows = _Rows(model, 3, rng)
    in_names = [i for _, i, _ in rows.io]
    phases: dict[str, dict] = {}
    for graph, phase, counts in PLAN:
        new = [rng.integers(3, cfg.vocab_size, n).tolist() for n in counts]
        feeds = rows.feeds(new)
        sess = sessions[graph]
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
        ref = _torch_call(model, feeds, in_names)
        err = {"logits": 0.0, "state": 0.0, "alone_logits": 0.0, "alone_state": 0.0}
        for b, toks in enumerate(new):
            if toks:
                err["logits"] = max(err["logits"], _max(outs["logits"][b, : len(toks)], ref["logits"][b, : len(toks)]))
        for j, (kind, in_name, out_name) in enumerate(rows.io):
            got, want = outs[out_name], ref[f"#{j // 2}.{j % 2}"]
            if kind == "recurrent":
                err["state"] = max(err["state"], _max(got, want))
                idle = [b for b, toks in enumerate(new) if not toks]
                if idle and not np.array_equal(got[idle], feeds[in_name][idle]):
                    raise VerificationError(f"{phase}: an idle row's {out_name} changed")
            else:
                for b, toks in enumerate(new):
                    err["state"] = max(err["state"], _max(got[b, :, : len(toks)], want[b, :, : len(toks)]))
        rows.advance(new, outs)
        for b, toks in enumerate(new):
            if not toks:
                continue
            last, alone = _alone(model, rows.history[b])
            err["alone_logits"] = max(err["alone_logits"], _max(outs["logits"][b, len(toks) - 1], last))
            n = len(rows.history[b])
            for j, (kind, in_name, _) in enumerate(rows.io):
                mine = rows.state[in_name[len("past_") :]][b]
                want = alone[j // 2][j % 2][0].numpy()
                err["alone_state"] = max(err["alone_state"], _max(mine if kind == "recurrent" else mine[:, :n], want))
        phases[phase] = {"graph": graph, "new_tokens": counts, **{f"max_abs_{k}": v for k, v in err.items()}}
    worst = max(max(v for k, v in ph.items() if k.startswith("max_abs")) for ph in phases.values())
    recurrent = [np.abs(v).max() for k, v in rows.state.items() if not k.startswith(("key", "value"))]
    magnitude = float(max(recurrent, default=0.0))
    report = {
        "tolerance": tolerance,
        "max_abs": worst,
        "max_abs_logits": max(max(ph["max_abs_logits"], ph["max_abs_alone_logits"]) for ph in phases.values()),
        "max_abs_recurrent_state_value": magnitude,  # the states checked are not all zero
        "passed": worst <= tolerance,
        "phases": phases,
    }
    if worst > tolerance:
        raise VerificationError(f"hybrid graphs: max |Δ| {worst:.3g} exceeds {tolerance:g}: {phases}")
    return report


def verify_against_transformers(
    checkpoint: Path, prefill_file: Path, decode_file: Path, tolerance: float = 1e-4, steps: int = 6, seed: int = 0
) -> dict:
    """The graphs against transformers' model loaded from the same directory, at every step.

    Prefill of a 2-row prompt through the prefill graph, then `steps` single tokens through the
    decode graph; each call's logits and every layer's conv and SSM state are compared with
    transformers' (its conv state keeps k inputs where Kiln keeps k-1: the oldest is unused).
    Skipped, with the reason, when transformers is not installed.
    """
    try:
        import transformers
    except ImportError as exc:  # transformers is a dev dependency, not an export one
        return {"skipped": f"transformers is not installed ({exc})"}
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    layers = hf.config.num_hidden_layers
    sessions = {"prefill": session(prefill_file), "decode": session(decode_file)}
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, hf.config.vocab_size, (2, 7 + steps), generator=gen)
    state = {}
    for i in range(layers):
        conv_dim, kernel = hf.backbone.layers[i].mixer.conv1d.weight.shape[0], hf.config.conv_kernel
        state[f"past_conv.{i}"] = np.zeros((2, conv_dim, kernel - 1), np.float32)
    phases: dict[str, dict] = {}
    cache = None
    for step, (lo, hi) in enumerate([(0, 7), *((t, t + 1) for t in range(7, 7 + steps))]):
        graph = "prefill" if step == 0 else "decode"
        with torch.no_grad():
            out = hf(ids[:, lo:hi], cache=cache, use_cache=True)
        cache = out.cache
        feeds = {
            "input_ids": ids[:, lo:hi].numpy(),
            "position_ids": np.tile(np.arange(lo, hi), (2, 1)),
            "attention_mask": np.ones((2, hi - lo), np.int64),
            **state,
        }
        for i in range(layers):
            if f"past_ssm.{i}" not in feeds:
                feeds[f"past_ssm.{i}"] = np.zeros_like(cache.get_recurrent_state(i).numpy())
        sess = sessions[graph]
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
        err_state = 0.0
        for i in range(layers):
            err_state = max(err_state, _max(outs[f"present_conv.{i}"], cache.get_conv_state(i)[..., 1:].numpy()))
            err_state = max(err_state, _max(outs[f"present_ssm.{i}"], cache.get_recurrent_state(i).numpy()))
            state[f"past_conv.{i}"], state[f"past_ssm.{i}"] = outs[f"present_conv.{i}"], outs[f"present_ssm.{i}"]
        err_logits = _max(outs["logits"], out.logits.numpy())
        phases["prefill" if step == 0 else f"decode_{step - 1}"] = {
            "graph": graph,
            "max_abs_logits": err_logits,
            "max_abs_state": err_state,
        }
    worst = max(max(ph["max_abs_logits"], ph["max_abs_state"]) for ph in phases.values())
    report = {
        "reference": f"transformers {transformers.__version__} {type(hf).__name__} (PyTorch path)",
        "tolerance": tolerance,
        "max_abs": worst,
        "passed": worst <= tolerance,
        "phases": phases,
    }
    if worst > tolerance:
        raise VerificationError(f"hybrid graphs vs transformers: max |Δ| {worst:.3g} exceeds {tolerance:g}: {phases}")
    return report
