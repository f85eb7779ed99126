"""Kiln's Llama loads Hugging Face Llama checkpoints and agrees with transformers to 1e-4."""

from __future__ import annotations

import json

import pytest
import torch

from export.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from export.models.llama import LlamaLM
from export.tokenizer import train_tokenizer
from tests.conftest import TINY_TEXT
from tests.models import save_tiny_hf_llama, tiny_llama_config


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return train_tokenizer(TINY_TEXT * 3, vocab_size=300)


def _hf_llama_dir(tmp_path, tokenizer, tie: bool = False):  # type: ignore[no-untyped-def]
    pytest.importorskip("transformers")
    return save_tiny_hf_llama(tmp_path, tokenizer, tie_word_embeddings=tie)


@pytest.mark.parametrize("tie", [False, True])
def test_hf_llama_gqa_logits_match_transformers(tmp_path, tokenizer, tie) -> None:  # type: ignore[no-untyped-def]
    hf = _hf_llama_dir(tmp_path, tokenizer, tie)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.source == "huggingface"
    assert (ckpt.config.num_heads, ckpt.config.num_kv_heads) == (6, 2)
    ids = torch.randint(3, tokenizer.get_vocab_size(), (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
        got = ckpt.model.logits_full(ids)
    assert (got - expected).abs().max().item() < 1e-4
    # The cached path agrees too: prefill 10 tokens, then feed the rest one at a time.
    with torch.no_grad():
        mask = torch.ones(2, 10, dtype=torch.int64)
        logits, kv = ckpt.model(ids[:, :10], torch.arange(10).expand(2, 10), mask, ckpt.model.empty_past(2))
        past = kv
        for t in range(10, 17):
            mask = torch.ones(2, t + 1, dtype=torch.int64)
            step, new = ckpt.model(ids[:, t : t + 1], torch.full((2, 1), t), mask, past)
            past = [(torch.cat([pk, k], 2), torch.cat([pv, v], 2)) for (pk, pv), (k, v) in zip(past, new, strict=True)]
            assert (step[:, 0] - expected[:, t]).abs().max().item() < 1e-4


def test_kiln_checkpoint_round_trips(tmp_path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    model = LlamaLM(tiny_llama_config(tokenizer.get_vocab_size(), num_layers=1, num_kv_heads=1))
    save_checkpoint(model, tokenizer, tmp_path)
    loaded = load_checkpoint(tmp_path)
    assert loaded.source == "kiln"
    ids = torch.randint(3, 300, (1, 8))
    with torch.no_grad():
        assert torch.equal(model.logits_full(ids), loaded.model.logits_full(ids))


def test_unsupported_checkpoints_are_refused_with_a_reason(tmp_path, tokenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CheckpointError, match="no config.json"):
        load_checkpoint(tmp_path)
    _hf_llama_dir(tmp_path, tokenizer)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0}
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="rope_type 'llama3' needs rope_scaling.low_freq_factor"):
        load_checkpoint(tmp_path)
    raw["model_type"], raw["architectures"] = "gpt2", ["GPT2LMHeadModel"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="unsupported model_type"):
        load_checkpoint(tmp_path)
