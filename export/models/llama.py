"""Kiln's Llama: the names the demo trainer, Kiln checkpoints and older code import.

Every family, Llama included, is now one `DecoderConfig` run by one `DecoderLM`
(`export/models/decoder.py`, where the standard graph contract is documented); Kiln's own
checkpoints are that model with its defaults (model_type "kiln-llama").
"""

from __future__ import annotations

from export.models.config import DecoderConfig as LlamaConfig
from export.models.decoder import DecoderLM as LlamaLM
from export.models.decoder import OnnxWrapper, RMSNorm, rotate_half

__all__ = ["LlamaConfig", "LlamaLM", "OnnxWrapper", "RMSNorm", "rotate_half"]
