"""Tensor names and types between the gateway and Kiln's models inside Triton.

The decoupled LM (`<name>-triton`, a python-backend model running Kiln's engine) takes prompt
token ids and sampling parameters and streams one response per generated token, then a final
one with FINISH_REASON and usage. Export renders these tables into `config.pbtxt`; the gateway
builds its requests from the same tables, so a renamed tensor cannot reach only one side.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # Triton's TYPE_* name
    dims: tuple[int, ...]
    optional: bool = False
    label_filename: str | None = None  # outputs only: Triton's classification labels

    @property
    def wire_dtype(self) -> str:
        """The datatype string tritonclient's InferInput wants (TYPE_STRING travels as BYTES)."""
        return "BYTES" if self.dtype == "TYPE_STRING" else self.dtype.removeprefix("TYPE_")

    def pbtxt(self) -> str:
        dims = ", ".join(map(str, self.dims))
        lines = [f'    name: "{self.name}"', f"    data_type: {self.dtype}", f"    dims: [ {dims} ]"]
        if self.optional:
            lines.append("    optional: true")
        if self.label_filename:
            lines.append(f'    label_filename: "{self.label_filename}"')
        return "  {\n" + "\n".join(lines) + "\n  }"


LM_INPUTS = (
    Tensor("INPUT_IDS", "TYPE_INT64", (-1,)),
    Tensor("MAX_NEW_TOKENS", "TYPE_INT32", (1,)),
    Tensor("TEMPERATURE", "TYPE_FP32", (1,), optional=True),
    Tensor("TOP_K", "TYPE_INT32", (1,), optional=True),
    Tensor("TOP_P", "TYPE_FP32", (1,), optional=True),
    Tensor("REPETITION_PENALTY", "TYPE_FP32", (1,), optional=True),
    Tensor("SEED", "TYPE_INT64", (1,), optional=True),
    Tensor("STOP", "TYPE_STRING", (-1,), optional=True),
    Tensor("IGNORE_EOS", "TYPE_BOOL", (1,), optional=True),
    Tensor("TIMEOUT_S", "TYPE_FP32", (1,), optional=True),
    Tensor("LOGPROBS", "TYPE_INT32", (1,), optional=True),
    Tensor("MIN_P", "TYPE_FP32", (1,), optional=True),
    Tensor("PRESENCE_PENALTY", "TYPE_FP32", (1,), optional=True),
    Tensor("FREQUENCY_PENALTY", "TYPE_FP32", (1,), optional=True),
    Tensor("LOGIT_BIAS_IDS", "TYPE_INT64", (-1,), optional=True),
    Tensor("LOGIT_BIAS_VALUES", "TYPE_FP32", (-1,), optional=True),
    Tensor("MIN_TOKENS", "TYPE_INT32", (1,), optional=True),
    Tensor("STOP_TOKEN_IDS", "TYPE_INT64", (-1,), optional=True),
    Tensor("TENANT", "TYPE_STRING", (1,), optional=True),  # whose cached prefixes it may reuse
)
LM_OUTPUTS = (
    Tensor("TOKEN_IDS", "TYPE_INT64", (-1,)),
    Tensor("LOGPROB", "TYPE_FP32", (-1,)),
    Tensor("TOP_IDS", "TYPE_INT64", (-1,)),
    Tensor("TOP_LOGPROBS", "TYPE_FP32", (-1,)),
    Tensor("FINISH_REASON", "TYPE_STRING", (1,)),
    Tensor("MESSAGE", "TYPE_STRING", (1,)),
    Tensor("PROMPT_TOKENS", "TYPE_INT32", (1,)),
    Tensor("COMPLETION_TOKENS", "TYPE_INT32", (1,)),
    Tensor("QUEUE_MS", "TYPE_FP32", (1,)),
)
LM_INPUT = {t.name: t for t in LM_INPUTS}


def triton_lm_name(name: str) -> str:
    """The decoupled Triton entry that serves text model `name`."""
    return f"{name}-triton"
