"""Train the demo LM on the Python standard library for a few CPU minutes.

Small on purpose (about 2M parameters, 2048-token BPE) so that a 2-core machine sees enough
tokens in a few minutes for completions to look like Python. Determinism: the seed fixes the
tokenizer, initial weights and batch order, and training runs a fixed number of steps;
`max_minutes` is only a safety cap (hitting it is logged, and then the result depends on speed).
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


def _stream(tokenizer, texts: list[str], bos: int, eos: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    ids: list[int] = []
    for enc in tokenizer.encode_batch(texts, add_special_tokens=False):
        ids += [bos, *enc.ids, eos]
    return np.asarray(ids, dtype=np.int64)


def _batch(data: np.ndarray, starts: np.ndarray, seq: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([data[s : s + seq + 1] for s in starts]))


def _loss(model: LlamaLM, batch: torch.Tensor) -> torch.Tensor:
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
) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    corpus = load_corpus()
    tokenizer = train_tokenizer(corpus.train, vocab_size=vocab_size)
    cfg = LlamaConfig(vocab_size=tokenizer.get_vocab_size(), **{**DEMO_CONFIG, **(model_overrides or {})})
    train = _stream(tokenizer, corpus.train, cfg.bos_token_id, cfg.eos_token_id)
    val = _stream(tokenizer, corpus.val, cfg.bos_token_id, cfg.eos_token_id)
    val_starts = np.random.default_rng(seed + 1).integers(0, len(val) - seq_len - 1, size=64)
    print(
        f"corpus: {len(corpus.train_files)} train files ({len(train):,} tokens), "
        f"{len(corpus.val_files)} val files ({len(val):,} tokens); tokenizer {time.perf_counter() - t0:.1f}s",
        flush=True,
    )

    model = LlamaLM(cfg)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
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
    summary = {
        "seed": seed,
        "steps": step + 1,
        "planned_steps": steps,
        "stopped_early": stopped_early,
        "parameters": params,
        "tokens_seen": (step + 1) * batch_size * seq_len,
        "final_val_loss": val_loss(),
        "train_files": len(corpus.train_files),
        "val_files": len(corpus.val_files),
        "log": log,
    }
    (out / "train_log.json").write_text(json.dumps(summary, indent=2))
    print(f"saved {out} ({params / 1e6:.2f}M parameters, val loss {summary['final_val_loss']:.3f})", flush=True)
    print("sample:", repr(greedy_sample(model, tokenizer, "def fib(n):", 40)), flush=True)
    return summary


def greedy_sample(model: LlamaLM, tokenizer, prompt: str, n: int) -> str:  # type: ignore[no-untyped-def]
    ids = torch.tensor([[model.config.bos_token_id, *tokenizer.encode(prompt, add_special_tokens=False).ids]])
    start = ids.shape[1]
    with torch.no_grad():
        for _ in range(n):
            nxt = model.logits_full(ids)[0, -1].argmax().view(1, 1)
            if nxt.item() == model.config.eos_token_id:
                break
            ids = torch.cat([ids, nxt], dim=1)
    return prompt + tokenizer.decode(ids[0, start:].tolist())
