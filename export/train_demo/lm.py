"""Train the demo LM on the Python standard library for a few CPU minutes.

Small on purpose (about 2M parameters, 2048-token BPE) so that a 2-core machine sees enough
tokens in a few minutes for completions to look like Python. `arch="hybrid"` trains a hybrid of
the same size instead (Mamba-2 layers beside one attention layer, export/models/hybrid.py) on
the same corpus, tokenizer, batches and step budget, so the two validation losses compare.
Determinism: the seed fixes the tokenizer, initial weights and batch order, and training runs a
fixed number of steps; `max_minutes` is only a safety cap (hitting it is logged, and then the
result depends on speed).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from export.checkpoint import save_checkpoint
from export.models.hybrid import HybridConfig, HybridLM
from export.models.llama import LlamaConfig, LlamaLM
from export.progress import bar, note
from export.tokenizer import train_tokenizer
from export.train_demo.corpus import load_corpus

DEMO_CONFIG = dict(
    hidden_size=192,
    num_layers=4,
    num_heads=6,
    num_kv_heads=2,
    intermediate_size=512,
    max_position_embeddings=512,
)
# About the demo LM's parameter count (1.94M vs 1.97M). Mamba-2 rather than Mamba-1 layers: their
# parallel SSD form trains in about a second a step here, Mamba-1's sequential scan is far slower
# on a CPU.
HYBRID_DEMO_CONFIG = dict(
    hidden_size=192,
    layers="mamba2,mamba2,attention,mamba2,mamba2,mamba2",
    norm="rmsnorm",
    positions="rotary",
    state_size=16,
    mamba2_heads=6,
    mamba2_groups=1,
    num_heads=6,
    num_kv_heads=2,
    intermediate_size=512,
    max_position_embeddings=512,
)
ARCHS = ("llama", "hybrid")
NO_DECAY = ("A_log", "D", "dt_bias")  # Mamba's recurrence parameters are not weight-decayed


def _stream(tokenizer, texts: list[str], bos: int, eos: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    ids: list[int] = []
    for enc in tokenizer.encode_batch(texts, add_special_tokens=False):
        ids += [bos, *enc.ids, eos]
    return np.asarray(ids, dtype=np.int64)


def _batch(data: np.ndarray, starts: np.ndarray, seq: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([data[s : s + seq + 1] for s in starts]))


def _loss(model: LlamaLM | HybridLM, batch: torch.Tensor) -> torch.Tensor:
    logits = model.logits_full(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


@dataclass(frozen=True)
class Phase:
    """One stretch of training with its own AdamW (fresh moments), linear warmup over 5% of its
    steps, cosine decay to 0.1x, batch shape and batch order (numpy rng `seed + seed_offset`)."""

    steps: int
    batch_size: int
    seq_len: int
    lr: float
    seed_offset: int = 0

    def lr_at(self, step: int) -> float:
        warmup = max(1, self.steps // 20)
        if step < warmup:
            return self.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, self.steps - warmup)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# The demo LM's second phase: full-length windows. Trained on 128-token windows only, its loss
# rose past them (2.56 at positions 64-128, 3.21 at 384-512 on 24 held-out windows: `python -m
# export.train_demo.positions`) and it rarely copied from far back in its prompt; 320 steps at
# 8 x 512 bring 384-512 to 2.46, lower every position's loss, and make it copy a function it
# was shown (README, the demo model; docs/benchmarks.md, speculative decoding).
LONG_PHASE: dict[str, Any] = dict(batch_size=8, seq_len=512, lr=1e-3, seed_offset=11)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes: the log records it, so a retrain can be checked step by step."""
    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_demo_lm(
    out: Path,
    seed: int = 0,
    steps: int = 320,
    max_minutes: float = 30.0,
    vocab_size: int = 2048,
    batch_size: int = 32,
    seq_len: int = 128,
    lr: float = 2e-3,
    eval_every: int = 40,
    model_overrides: dict | None = None,
    arch: str = "llama",
    long_steps: int = 0,
    stop_after: int | None = None,
) -> dict:
    """`steps` at `batch_size` x `seq_len`, then `long_steps` of LONG_PHASE. `stop_after` ends
    training after that many steps of the planned schedule (a retrain check of its beginning)."""
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r}: one of {', '.join(ARCHS)}")
    phases = [Phase(steps, batch_size, seq_len, lr)] + ([Phase(long_steps, **LONG_PHASE)] if long_steps else [])
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    corpus = load_corpus()
    tokenizer = train_tokenizer(corpus.train, vocab_size=vocab_size)
    base = HYBRID_DEMO_CONFIG if arch == "hybrid" else DEMO_CONFIG
    config_cls = HybridConfig if arch == "hybrid" else LlamaConfig
    cfg = config_cls(vocab_size=tokenizer.get_vocab_size(), **{**base, **(model_overrides or {})})
    longest = max(p.seq_len for p in phases)
    if longest > cfg.max_position_embeddings:
        raise ValueError(f"a {longest}-token training window exceeds {cfg.max_position_embeddings} positions")
    train = _stream(tokenizer, corpus.train, cfg.bos_token_id, cfg.eos_token_id)
    val = _stream(tokenizer, corpus.val, cfg.bos_token_id, cfg.eos_token_id)
    val_starts = np.random.default_rng(seed + 1).integers(0, len(val) - seq_len - 1, size=64)
    print(
        f"corpus: {len(corpus.train_files)} train files ({len(train):,} tokens), "
        f"{len(corpus.val_files)} val files ({len(val):,} tokens); tokenizer {time.perf_counter() - t0:.1f}s",
        flush=True,
    )

    model = HybridLM(cfg) if isinstance(cfg, HybridConfig) else LlamaLM(cfg)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] not in NO_DECAY]
    no_decay = [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in NO_DECAY]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]

    def val_loss() -> float:  # always on `seq_len` windows, so every entry of the log compares
        model.eval()
        with torch.no_grad():
            losses = [_loss(model, _batch(val, val_starts[i : i + 16], seq_len)).item() for i in range(0, 64, 16)]
        model.train()
        return float(np.mean(losses))

    log: list[dict] = []
    started = time.perf_counter()
    model.train()
    done, tokens_seen, planned = 0, 0, sum(p.steps for p in phases)
    budget = planned if stop_after is None else min(stop_after, planned)
    stopped_early = False
    progress = bar(budget, "train demo LM")
    for index, phase in enumerate(phases):
        if done >= budget or stopped_early:
            break
        rng = np.random.default_rng(seed + phase.seed_offset)
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=phase.lr, betas=(0.9, 0.95))
        for step in range(phase.steps):
            if done >= budget:
                break
            if (time.perf_counter() - started) / 60 > max_minutes:
                stopped_early = True
                print(f"time cap of {max_minutes} min reached after {done} steps; stopping early", flush=True)
                break
            progress.update()
            for group in opt.param_groups:
                group["lr"] = phase.lr_at(step)
            starts = rng.integers(0, len(train) - phase.seq_len - 1, size=phase.batch_size)
            loss = _loss(model, _batch(train, starts, phase.seq_len))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            done += 1
            tokens_seen += phase.batch_size * phase.seq_len
            if step % eval_every == 0 or step == phase.steps - 1:
                entry = {
                    "phase": index,
                    "step": step,
                    "train_loss": round(loss.item(), 4),
                    "val_loss": round(val_loss(), 4),
                    "weights_sha256": weights_digest(model),
                    "elapsed_s": round(time.perf_counter() - started, 1),
                }
                log.append(entry)
                note(json.dumps({k: v for k, v in entry.items() if k != "weights_sha256"}))

    progress.close()
    model.eval()
    save_checkpoint(model, tokenizer, out)
    final_val = val_loss()
    summary = {
        "arch": arch,
        "seed": seed,
        "steps": done,
        "planned_steps": planned,
        "stopped_early": stopped_early,
        "phases": [asdict(p) for p in phases],
        "parameters": params,
        "tokens_seen": tokens_seen,
        "final_val_loss": final_val,
        "final_val_perplexity": math.exp(final_val),
        "train_seconds": round(time.perf_counter() - started, 1),
        "train_files": len(corpus.train_files),
        "val_files": len(corpus.val_files),
        "log": log,
    }
    (out / "train_log.json").write_text(json.dumps(summary, indent=2))
    print(
        f"saved {out} ({arch}, {params / 1e6:.2f}M parameters, val loss {final_val:.3f}, "
        f"perplexity {summary['final_val_perplexity']:.2f}, {summary['train_seconds']:.0f}s of training)",
        flush=True,
    )
    print("sample:", repr(greedy_sample(model, tokenizer, "def fib(n):", 40)), flush=True)
    return summary


def reproducible(log: list[dict]) -> list[dict]:
    """A training log without its wall-clock field: what a retrain with the same seed must repeat."""
    return [{k: v for k, v in entry.items() if k != "elapsed_s"} for entry in log]


def greedy_sample(model: LlamaLM | HybridLM, tokenizer, prompt: str, n: int) -> str:  # type: ignore[no-untyped-def]
    ids = torch.tensor([[model.config.bos_token_id, *tokenizer.encode(prompt, add_special_tokens=False).ids]])
    start = ids.shape[1]
    with torch.no_grad():
        for _ in range(n):
            nxt = model.logits_full(ids)[0, -1].argmax().view(1, 1)
            if nxt.item() == model.config.eos_token_id:
                break
            ids = torch.cat([ids, nxt], dim=1)
    return prompt + tokenizer.decode(ids[0, start:].tolist())
