"""Token selection: small pure functions over one row of logits (numpy, no framework).

Each sequence carries its own parameters, its own token statistics and its own seeded
generator, so a request's samples do not depend on what else shares its batch.

The order follows vLLM's: logit bias, banned tokens (EOS before `min_tokens`) and the
structured-output mask, then the penalties (repetition over prompt and output, presence and
frequency over the output, OpenAI's formula), then temperature, top-k, top-p and min-p.
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
    min_p: float = 0.0  # 0 = off: keep tokens with p >= min_p * p(most likely)
    repetition_penalty: float = 1.0  # 1 = off (CTRL: prompt and output tokens)
    presence_penalty: float = 0.0  # OpenAI: minus this once for every token already in the output
    frequency_penalty: float = 0.0  # OpenAI: minus this times the token's count in the output
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit)
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        # Below 1e-5 dividing by the temperature overflows float64 for ordinary logits, and the
        # distribution is one-hot anyway: such temperatures mean greedy.
        return self.temperature < GREEDY_BELOW

    @property
    def shapes_logits(self) -> bool:
        """Whether anything but temperature and truncation changes the logits."""
        return (
            self.repetition_penalty != 1.0
            or self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or bool(self.logit_bias)
        )


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """CTRL-style penalty on tokens already present (prompt and output)."""
    if penalty == 1.0 or seen.size == 0:
        return logits
    out = logits.copy()
    vals = out[seen]
    out[seen] = np.where(vals > 0, vals / penalty, vals * penalty)
    return out


def adjust_logits(
    logits: np.ndarray,
    params: SamplingParams,
    seen: np.ndarray,
    counts: np.ndarray | None = None,
    banned: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> np.ndarray:
    """float64 logits with bias, bans, the allowed mask and the penalties applied (a new array).

    `seen`: token ids of prompt and output (repetition penalty); `counts`: per-token counts of
    the output (presence, frequency); `banned`: ids that may not come now; `allowed`: a boolean
    mask over the vocabulary (structured outputs), None = everything.
    """
    out = logits.astype(np.float64)  # always a copy: callers keep the model's logits for logprobs
    for token, bias in params.logit_bias:
        if 0 <= token < out.shape[-1]:
            out[token] += bias
    if banned is not None and banned.size:
        out[banned] = -np.inf
    if allowed is not None:
        out[~allowed] = -np.inf
    out = apply_repetition_penalty(out, seen, params.repetition_penalty)
    if counts is not None and (params.presence_penalty or params.frequency_penalty):
        out -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    return out


def allowed_mask(logits: np.ndarray, top_k: int, top_p: float, min_p: float = 0.0) -> np.ndarray:
    """Boolean mask of tokens that top-k, then top-p (nucleus), then min-p keep."""
    vocab = logits.shape[-1]
    keep = np.isfinite(logits)
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
    if min_p > 0.0:
        probs = softmax(np.where(keep, logits, -np.inf))
        keep &= probs >= min_p * probs.max()
    if not keep.any():  # everything banned or masked: the best of what is left of the model
        keep[int(np.argmax(logits))] = True
    return keep


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - np.max(x)
    e = np.exp(z)
    return e / e.sum()


def sample_token(
    logits: np.ndarray,
    params: SamplingParams,
    rng: np.random.Generator | None,
    seen: np.ndarray,
    counts: np.ndarray | None = None,
    banned: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
) -> int:
    adjusted = adjust_logits(logits, params, seen, counts, banned, allowed)
    if params.greedy:
        return int(np.argmax(adjusted))
    scaled = adjusted / params.temperature
    keep = allowed_mask(scaled, params.top_k, params.top_p, params.min_p)
    probs = softmax(np.where(keep, scaled, -np.inf))
    assert rng is not None, "sampling needs a generator"
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
