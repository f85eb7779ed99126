"""Validation loss by position within long windows: how much of its context a demo LM uses.

The demo LM's first phase sees 128-token windows only; this measures what that leaves past
position 128, which the server's 512 positions and n-gram speculation (copying from far back
in a prompt) rely on. Held-out windows of the validation split, the same for every checkpoint.

    python -m export.train_demo.positions checkpoints/demo-lm /path/to/other-checkpoint
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from export.checkpoint import load_checkpoint
from export.train_demo.corpus import load_corpus
from export.train_demo.lm import _stream

BANDS = ((0, 64), (64, 128), (128, 192), (192, 256), (256, 384), (384, 512))


def loss_by_position(checkpoint: Path, windows: int = 24, seq_len: int = 512, seed: int = 2) -> list[float]:
    """Mean next-token loss in each of BANDS (positions of the predicted token's context)."""
    ckpt = load_checkpoint(checkpoint)
    model, cfg = ckpt.model.eval(), ckpt.model.config
    val = _stream(ckpt.tokenizer, load_corpus().val, cfg.bos_token_id, cfg.eos_token_id)
    starts = np.random.default_rng(seed).integers(0, len(val) - seq_len - 1, size=windows)
    per_position = np.zeros(seq_len)
    with torch.no_grad():
        for start in starts:
            ids = torch.from_numpy(val[start : start + seq_len + 1]).view(1, -1)
            logits = model.logits_full(ids[:, :-1])[0]
            per_position += F.cross_entropy(logits, ids[0, 1:], reduction="none").numpy()
    per_position /= windows
    return [float(per_position[lo:hi].mean()) for lo, hi in BANDS if hi <= seq_len]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--windows", type=int, default=24, help="held-out 512-token windows")
    args = ap.parse_args(argv)
    print("| checkpoint | " + " | ".join(f"{lo}-{hi}" for lo, hi in BANDS) + " |")
    print("|---|" + "---:|" * len(BANDS))
    for path in args.checkpoints:
        losses = loss_by_position(path, args.windows)
        print(f"| {path} | " + " | ".join(f"{x:.3f}" for x in losses) + " |")


if __name__ == "__main__":
    main()
