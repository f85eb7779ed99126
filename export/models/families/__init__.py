"""Hugging Face model families Kiln exports, each a small module mapping its `config.json` and
weight names onto `DecoderConfig` and the shared blocks (`export/models/decoder.py`).

A family is picked by `model_type` (or, failing that, a known `architectures` entry). Anything a
family cannot represent is refused by the family, naming the config key and value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from export.models.config import CheckpointError, DecoderConfig

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    architectures: tuple[str, ...]
    from_hf_config: Callable[[dict], DecoderConfig]
    map_weights: Callable[[StateDict, DecoderConfig], StateDict]


def _registry() -> list[Family]:
    from export.models.families import gemma, llama, mistral, phi3, qwen

    return [llama.FAMILY, mistral.FAMILY, qwen.QWEN2, qwen.QWEN3, phi3.FAMILY, gemma.GEMMA, gemma.GEMMA2]


def family_for(raw: dict) -> Family:
    families = _registry()
    model_type = raw.get("model_type")
    for family in families:
        if model_type in family.model_types:
            return family
    for family in families:
        if any(arch in family.architectures for arch in raw.get("architectures") or []):
            return family
    supported = sorted(t for f in families for t in f.model_types)
    raise CheckpointError(f"unsupported model_type {model_type!r} (supported: kiln-llama, {', '.join(supported)})")
