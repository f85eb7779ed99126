"""Family modules: how each reads its config.json, and what it refuses (naming key and value)."""

from __future__ import annotations

import json

import pytest
import torch

from export.checkpoint import _hf_add_bos, hf_config_to_kiln, load_checkpoint
from export.models.config import FULL, SLIDING, CheckpointError
from tests.families import BASE, tiny_tokenizer

SIZES = {**BASE, "vocab_size": 320}


def kiln(model_type: str, generation: dict | None = None, **raw: object):  # type: ignore[no-untyped-def]
    return hf_config_to_kiln({"model_type": model_type, **SIZES, **raw}, None, generation)


def test_qwen_windows_only_with_use_sliding_window_and_from_max_window_layers() -> None:
    hub_style = kiln("qwen2", use_sliding_window=False, sliding_window=131072, max_window_layers=28)
    assert hub_style.sliding_window == 0 and hub_style.attention_bias and not hub_style.o_proj_bias
    windowed = kiln("qwen2", use_sliding_window=True, sliding_window=16, max_window_layers=1)
    assert windowed.layer_types == [FULL, SLIDING] and [windowed.window(i) for i in range(2)] == [0, 16]
    saved = kiln("qwen3", use_sliding_window=True, sliding_window=16, layer_types=[SLIDING, FULL])
    assert [saved.window(i) for i in range(2)] == [16, 0] and saved.qk_norm


def test_missing_keys_mean_the_familys_transformers_defaults() -> None:
    raw = {k: v for k, v in SIZES.items() if k != "max_position_embeddings"}
    mistral = hf_config_to_kiln({"model_type": "mistral", **raw})
    assert mistral.sliding_window == 4096 and mistral.max_position_embeddings == 131072
    assert kiln("mistral", sliding_window=None).sliding_window == 0
    gemma2 = hf_config_to_kiln({"model_type": "gemma2", **{k: v for k, v in raw.items() if k != "head_dim"}})
    assert (gemma2.head_dim, gemma2.attn_softcap, gemma2.final_softcap) == (256, 50.0, 30.0)
    assert gemma2.layer_types == [SLIDING, FULL] and gemma2.tie_word_embeddings
    assert gemma2.attention_scale == 256**-0.5 and gemma2.embed_scale == 64**0.5
    assert kiln("gemma", hidden_act="gelu").hidden_act == "gelu_tanh"  # Gemma's legacy value
    assert kiln("llama", hidden_act="gelu").hidden_act == "gelu"  # elsewhere it is the erf GELU


def test_llama_attention_bias_covers_o_proj_and_phi3_legacy_rope_names_read_as_longrope() -> None:
    cfg = kiln("llama", attention_bias=True, mlp_bias=True, head_dim=32)
    assert (cfg.attention_bias, cfg.o_proj_bias, cfg.mlp_bias, cfg.head_dim) == (True, True, True, 32)
    phi = kiln("phi3", rope_scaling={"type": "su", "short_factor": [1.0] * 8, "long_factor": [2.0] * 8})
    assert phi.rope_scaling["rope_type"] == "longrope"


def test_every_eos_id_is_kept_config_first_then_generation_config() -> None:
    cfg = kiln("llama", {"eos_token_id": [7, 2, 9]}, eos_token_id=[2, 5])
    assert (cfg.eos_token_id, cfg.eos_token_ids) == (2, [2, 5, 7, 9])
    assert kiln("qwen2", eos_token_id=4).eos_token_ids == [4]


@pytest.mark.parametrize(
    ("model_type", "raw", "message"),
    [
        ("llama", {"quantization_config": {"quant_method": "gptq"}}, "quantization_config .quant_method 'gptq'"),
        ("llama", {"hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
        ("qwen2", {"use_sliding_window": True, "layer_types": ["chunked_attention", FULL]}, "'chunked_attention'"),
        ("gemma", {"use_bidirectional_attention": True}, "use_bidirectional_attention=True is not supported"),
        ("gemma2", {"hidden_activation": "gelu_tiny"}, "hidden_activation 'gelu_tiny'"),
        ("llama", {"num_key_value_heads": 3}, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
        ("gemma3_text", {}, "unsupported model_type 'gemma3_text'"),
        ("gpt2", {}, "unsupported model_type 'gpt2'"),
    ],
)
def test_unsupported_configs_are_refused_naming_the_key(model_type: str, raw: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        kiln(model_type, **raw)


def test_architectures_pick_a_family_when_model_type_is_unknown() -> None:
    cfg = hf_config_to_kiln({"model_type": "my-llama", "architectures": ["LlamaForCausalLM"], **SIZES})
    assert cfg.family == "llama"


def test_refusals_at_load_name_the_directory(family_zoo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = family_zoo.checkpoint("mistral")
    for f in src.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "rope_scaling": {"rope_type": "mrope"}}))
    with pytest.raises(CheckpointError, match=f"{tmp_path}: rope_scaling.rope_type 'mrope' is not supported"):
        load_checkpoint(tmp_path)


def test_dynamic_rope_is_the_default_rope_over_the_served_context(tmp_path) -> None:
    """transformers rescales dynamic NTK only past max_position_embeddings, which Kiln never serves."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(**SIZES, rope_scaling={"rope_type": "dynamic", "factor": 4.0})
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    tiny_tokenizer().save(str(tmp_path / "tokenizer.json"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.randint(3, 320, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (load_checkpoint(tmp_path).model.logits_full(ids) - hf(ids).logits).abs().max() < 1e-4


def test_bos_is_added_as_the_tokenizer_would(tmp_path) -> None:
    from tokenizers import processors

    tok = tiny_tokenizer()
    assert _hf_add_bos(tmp_path, tok)  # Kiln's tokenizer has no post-processor: Kiln adds BOS
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # Qwen's: nothing in front
    assert not _hf_add_bos(tmp_path, tok)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])  # Llama 3's
    assert _hf_add_bos(tmp_path, tok)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False}))
    assert not _hf_add_bos(tmp_path, tok)  # the explicit setting wins
