"""A tiny Qwen2-style chat checkpoint: ChatML special tokens and the checkpoint's own template.

Built once per session with transformers' classes (random weights), saved as a Hugging Face
directory whose tokenizer_config.json carries the template, and exported through Kiln's
pipeline into a repository beside Kiln's own tiny LM (which gets the demo template) and a tiny
Llama without any template.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# Qwen2's ChatML template (the default system message when none is given).
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


def build_chat_checkpoint(out: Path, seed: int = 0) -> Path:
    import torch
    import transformers
    from tokenizers import AddedToken

    from tests.families import BASE, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tokenizer.add_special_tokens([AddedToken(IM_START, special=True), AddedToken(IM_END, special=True)])
    config = transformers.Qwen2Config(**{**BASE, "vocab_size": tokenizer.get_vocab_size(), "tie_word_embeddings": True})
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(config).eval()
    model.save_pretrained(out)
    tokenizer.save(str(out / "tokenizer.json"))
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": QWEN_TEMPLATE,
        "eos_token": IM_END,
        "pad_token": "<pad>",
        "bos_token": None,
        "add_bos_token": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return out


def build_plain_llama(out: Path) -> Path:
    """A Hugging Face Llama with no chat template at all."""
    from tests.families import tiny_tokenizer
    from tests.models import save_tiny_hf_llama

    save_tiny_hf_llama(out, tiny_tokenizer())
    return out


@pytest.fixture(scope="session")
def chat_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-lm (Kiln's, demo template), tiny-qwen (its own ChatML template), tiny-llama (none)."""
    pytest.importorskip("transformers")
    from export.pipeline import export_checkpoint
    from tests.conftest import TINY_TEXT, build_tiny_lm_repo

    root = tmp_path_factory.mktemp("chat")
    repo = build_tiny_lm_repo(root)
    for name, build in (("tiny-qwen", build_chat_checkpoint), ("tiny-llama", build_plain_llama)):
        export_checkpoint(build(root / "hf" / name), repo, name, variants=False, val_texts=TINY_TEXT)
    return repo
