"""Byte-level BPE tokenizer for Kiln's own models.

Byte-level means every UTF-8 string maps to tokens and back exactly, whatever the script or
emoji, so the tokenizer never meets an "unknown" character. Special tokens are fixed at the
lowest ids so that model configs and the serving manifest can name them without looking
them up. No post-processor: the gateway adds BOS itself (`add_bos` in `kiln.json`), which keeps
one rule for Kiln's and Hugging Face tokenizers alike.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
SPECIAL_TOKENS = (PAD, BOS, EOS)  # ids 0, 1, 2


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096) -> Tokenizer:
    """Train a byte-level BPE on `texts`; the 256 byte symbols are always in the vocabulary."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for i, tok in enumerate(SPECIAL_TOKENS):
        assert tokenizer.token_to_id(tok) == i, f"{tok} must have id {i}"
    return tokenizer


def special_ids(tokenizer: Tokenizer) -> dict[str, int | None]:
    """BOS/EOS/PAD ids of a tokenizer that uses Kiln's or Llama's usual special-token names."""

    def first(*names: str) -> int | None:
        for name in names:
            tid = tokenizer.token_to_id(name)
            if tid is not None:
                return tid
        return None

    return {
        "bos_token_id": first(BOS, "<|begin_of_text|>"),
        "eos_token_id": first(EOS, "<|end_of_text|>", "<|eot_id|>"),
        "pad_token_id": first(PAD, "<unk>"),
    }
