"""Token selection: small pure functions over one row of logits (numpy, no framework).

Each sequence carries its own parameters and its own seeded generator, so a request's
samples do not depend on what else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        # Below 1e-5 dividing by the temperature overflows float64 for ordinary logits, and the
        # distribution is one-hot anyway: such temperatures mean greedy.
        return self.temperature < GREEDY_BELOW


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL-style penalty on tokens already present (prompt and output)."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    out = logits.copy()
    vals = out[seen]
    out[seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def allowed_mask(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Boolean mask of tokens that top-k and then top-p (nucleus) keep."""
    vocab = logits.shape[-1]
    keep = np.ones(vocab, dtype=bool)
    if 0 < top_k < vocab:
        kth = np.partition(logits, vocab - top_k)[vocab - top_k]
        keep &= logits >= kth
    if top_p < 1.0:
        masked = np.where(keep, logits, -np.inf)
        order = np.argsort(-masked, kind="stable")
        probs = softmax(masked[order])
        cum = np.cumsum(probs)
        # Keep the smallest prefix whose mass reaches top_p (always at least one token).
        cutoff = int(np.searchsorted(cum, top_p, side="left")) + 1
        nucleus = np.zeros(vocab, dtype=bool)
        nucleus[order[:cutoff]] = True
        keep &= nucleus
    return keep


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - np.max(x)
    e = np.exp(z)
    return e / e.sum()


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator, seen: np.ndarray) -> int:
    logits = apply_repetition_penalty(logits.astype(np.float64, copy=False), seen, params.repetition_penalty)
    if params.greedy:
        return int(np.argmax(logits))
    scaled = logits / params.temperature
    keep = allowed_mask(scaled, params.top_k, params.top_p)
    probs = softmax(np.where(keep, scaled, -np.inf))
    return int(rng.choice(probs.shape[0], p=probs))


def token_logprobs(logits: np.ndarray, token: int, top_n: int) -> tuple[float, list[tuple[int, float]]]:
    """Log-probability of the chosen token and the top_n alternatives, from the model's distribution."""
    z = logits.astype(np.float64) - np.max(logits)
    logp = z - np.log(np.exp(z).sum())
    top: list[tuple[int, float]] = []
    if top_n > 0:
        idx = np.argpartition(-logp, top_n - 1)[:top_n]
        idx = idx[np.argsort(-logp[idx], kind="stable")]
        top = [(int(i), float(logp[i])) for i in idx]
    return float(logp[token]), top
