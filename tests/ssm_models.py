"""Tiny state-space and hybrid models, each built once per test session.

Hugging Face models are made with transformers' own classes and `save_pretrained`, then
perturbed so the recurrence actually moves (larger Δ, varied A, D): with the stock
initialisation the SSM state stays small and a wrong state would hardly show in the logits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_TEXT

VOCAB = 300
HYBRID_PATTERN = "mamba,attention,mamba2,mamba"


@pytest.fixture(scope="session")
def ssm_tokenizer():  # type: ignore[no-untyped-def]
    from export.tokenizer import train_tokenizer

    return train_tokenizer(TINY_TEXT * 3, vocab_size=VOCAB)


def _stir(model: torch.nn.Module, seed: int) -> None:
    """Make the SSM dynamics non-trivial: Δ of order 0.1-1, A_log and D spread out."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
            elif name.endswith(("dt_proj.bias", "dt_bias")):
                p.add_(1.5)
            elif name.endswith("mixer.D"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)


def save_hf_mamba(root: Path, tokenizer, version: int = 1, seed: int = 0) -> Path:  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    common = dict(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=32,
        state_size=8,
        num_hidden_layers=2,
        conv_kernel=4,
        expand=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    if version == 1:
        hf = transformers.MambaForCausalLM(transformers.MambaConfig(**common))
    else:
        cfg = transformers.Mamba2Config(**common, num_heads=8, head_dim=8, n_groups=2, chunk_size=4)
        hf = transformers.Mamba2ForCausalLM(cfg)
    _stir(hf, seed)
    hf.eval().save_pretrained(root)
    tokenizer.save(str(root / "tokenizer.json"))
    return root


@pytest.fixture(scope="session")
def hf_mamba_dir(tmp_path_factory, ssm_tokenizer) -> Path:  # type: ignore[no-untyped-def]
    return save_hf_mamba(tmp_path_factory.mktemp("hf-mamba"), ssm_tokenizer, version=1)


@pytest.fixture(scope="session")
def hf_mamba2_dir(tmp_path_factory, ssm_tokenizer) -> Path:  # type: ignore[no-untyped-def]
    return save_hf_mamba(tmp_path_factory.mktemp("hf-mamba2"), ssm_tokenizer, version=2)


def tiny_hybrid(layers: str = HYBRID_PATTERN, seed: int = 0, **overrides):  # type: ignore[no-untyped-def]
    from export.models.hybrid import HybridConfig, HybridLM

    cfg = HybridConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        layers=layers,
        state_size=8,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        mamba2_heads=4,
        mamba2_groups=2,
        max_position_embeddings=128,
        **overrides,
    )
    torch.manual_seed(seed)
    model = HybridLM(cfg)
    with torch.no_grad():  # peaked logits: greedy choices are not decided by rounding
        for module in model.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
                module.weight.mul_(4.0)
    _stir(model, seed)
    return model.eval()


@pytest.fixture(scope="session")
def hybrid_checkpoint(tmp_path_factory, ssm_tokenizer) -> Path:  # type: ignore[no-untyped-def]
    """A Kiln "kiln-hybrid" checkpoint (Mamba, attention with RoPE, Mamba-2, Mamba)."""
    from export.checkpoint import save_checkpoint

    return save_checkpoint(tiny_hybrid(), ssm_tokenizer, tmp_path_factory.mktemp("hybrid") / "ckpt")


@pytest.fixture(scope="session")
def hybrid_entry(tmp_path_factory, hybrid_checkpoint) -> Path:
    """The hybrid checkpoint exported through the real pipeline: `repository/hybrid`."""
    from export.pipeline import export_checkpoint

    repo = tmp_path_factory.mktemp("hybrid-repo")
    export_checkpoint(hybrid_checkpoint, repo, "hybrid", val_texts=TINY_TEXT)
    return repo / "hybrid"


@pytest.fixture(scope="session")
def hf_mamba_entry(tmp_path_factory, hf_mamba_dir) -> Path:
    from export.pipeline import export_checkpoint

    repo = tmp_path_factory.mktemp("hf-mamba-repo")
    export_checkpoint(hf_mamba_dir, repo, "mamba", val_texts=TINY_TEXT)
    return repo / "mamba"
