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

import json
import math
import time
from pathlib import Path

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
) -> dict:
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r}: one of {', '.join(ARCHS)}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    corpus = load_corpus()
    tokenizer = train_tokenizer(corpus.train, vocab_size=vocab_size)
    base = HYBRID_DEMO_CONFIG if arch == "hybrid" else DEMO_CONFIG
    config_cls = HybridConfig if arch == "hybrid" else LlamaConfig
    cfg = config_cls(vocab_size=tokenizer.get_vocab_size(), **{**base, **(model_overrides or {})})
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
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))

    def val_loss() -> float:
        model.eval()
        with torch.no_grad():
            losses = [_loss(model, _batch(val, val_starts[i : i + 16], seq_len)).item() for i in range(0, 64, 16)]
        model.train()
        return float(np.mean(losses))

    log: list[dict] = []
    started = time.perf_counter()
    model.train()
    step = 0
    stopped_early = False
    progress = bar(steps, "train demo LM")
    for step in range(steps):
        progress.update()
        if (time.perf_counter() - started) / 60 > max_minutes:
            stopped_early = True
            print(f"time cap of {max_minutes} min reached at step {step}; stopping early", flush=True)
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        batch = _batch(train, rng.integers(0, len(train) - seq_len - 1, size=batch_size), seq_len)
        loss = _loss(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % eval_every == 0 or step == steps - 1:
            entry = {
                "step": step,
                "train_loss": round(loss.item(), 4),
                "val_loss": round(val_loss(), 4),
                "elapsed_s": round(time.perf_counter() - started, 1),
            }
            log.append(entry)
            note(json.dumps(entry))

    progress.close()
    model.eval()
    save_checkpoint(model, tokenizer, out)
    final_val = val_loss()
    done = step if stopped_early else step + 1  # a cap hit at `step` means that step never ran
    summary = {
        "arch": arch,
        "seed": seed,
        "steps": done,
        "planned_steps": steps,
        "stopped_early": stopped_early,
        "parameters": params,
        "tokens_seen": done * batch_size * seq_len,
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
