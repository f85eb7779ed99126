"""What the quantized variants are built from, and how much quality they may cost.

One frozen dataclass, validated on construction so a bad value is refused before any work
starts, with the key (and its `kiln export` flag) named in the message. `add_arguments` /
`from_args` keep the command line in this module, so `service/cli.py` only forwards.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields

ALGORITHMS = ("rtn", "gptq")
ACCURACY_LEVELS = (0, 1, 2, 3, 4)  # MatMulNBits: unset, fp32, fp16, bf16, int8 compute


class QuantConfigError(ValueError):
    """A quantization setting Kiln cannot honour; the message names the key and the flag."""


@dataclass(frozen=True)
class QuantConfig:
    """Settings of the `int8` and `int4` variants (defaults measured on the demo LM, docs/quantization.md).

    block_size: weights per scale (and zero point) along the input dimension; a power of two
        ≥ 16 dividing every projection's input size (hidden, heads x head_dim, intermediate).
    symmetric: codes centred on the fixed zero point 2^(bits-1) (no zero-point tensor), each
        block's scale searched for the least rounding error, rather than a fitted zero point per
        block. Symmetric is onnxruntime-genai's default too; ONNX Runtime's AVX2 int8 kernels
        spend about 9% of a batch-1 step on zero points (0-4% with AVX-512 VNNI), for which
        asymmetric codes buy some quality (docs/quantization.md: `kiln-gptq-asym`).
    accuracy_level: MatMulNBits' compute type for the activations; 4 quantizes each activation
        block to int8 (the AVX2/AVX-512 integer kernels), 0 dequantizes to fp32.
    int4_algorithm: "rtn" rounds each block to nearest; "gptq" chooses codes that minimise the
        layer's output error on calibration text (training split), compensating within a row.
    head_bits: the LM head (and the embedding table, which a tied head shares) in the int4
        variant. 4 reads the bytes per step onnxruntime-genai's int4 reads (on a vocab-32000
        model the head is a third of a 4-bit step); 8 keeps the one matrix that scores every
        token at 8 bits, for quality (docs/quantization.md measures both).
    int8_budget_pct / int4_budget_pct: the largest validation-perplexity increase over the fp32
        fused graph an export accepts; beyond it the export fails.
    calibration_tokens: tokens of training text GPTQ collects activation statistics from.
    gptq_damp: GPTQ's dampening, a fraction of the mean Hessian diagonal added to it.
    served_rtol: the served graph (int8 activations) may differ from the dequantized reference
        by this fraction of the reference's largest |logit| (the exact layout check is 1e-4 fp32).
    """

    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    int4_algorithm: str = "gptq"
    head_bits: int = 4
    int8_budget_pct: float = 0.5
    int4_budget_pct: float = 8.0
    calibration_tokens: int = 8192
    gptq_damp: float = 0.01
    served_rtol: float = 0.05

    def __post_init__(self) -> None:
        b = self.block_size
        if b < 16 or b & (b - 1):
            raise QuantConfigError(f"quant.block_size {b} (--quant-block-size): must be a power of two >= 16")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise QuantConfigError(
                f"quant.accuracy_level {self.accuracy_level} (--quant-accuracy-level): one of {ACCURACY_LEVELS}"
            )
        if self.int4_algorithm not in ALGORITHMS:
            raise QuantConfigError(
                f"quant.int4_algorithm {self.int4_algorithm!r} (--int4-algorithm): one of {', '.join(ALGORITHMS)}"
            )
        if self.head_bits not in (4, 8):
            raise QuantConfigError(f"quant.head_bits {self.head_bits} (--int4-head-bits): 4 or 8")
        if self.calibration_tokens < 1:
            raise QuantConfigError(f"quant.calibration_tokens {self.calibration_tokens}: must be positive")
        if not 0 < self.gptq_damp < 1:
            raise QuantConfigError(f"quant.gptq_damp {self.gptq_damp}: must lie in (0, 1)")
        if not 0 < self.served_rtol < 1:
            raise QuantConfigError(f"quant.served_rtol {self.served_rtol}: must lie in (0, 1)")

    def budget_pct(self, variant: str) -> float:
        return {"int8": self.int8_budget_pct, "int4": self.int4_budget_pct}[variant]

    def check_shapes(self, inputs: dict[str, int]) -> None:
        """Every quantized matrix is blocked along its input dimension (`inputs`: weight → size)."""
        bad = {name: k for name, k in inputs.items() if k % self.block_size}
        if bad:
            name, k = next(iter(bad.items()))
            raise QuantConfigError(
                f"quant.block_size {self.block_size} (--quant-block-size) does not divide the input dimension "
                f"{k} of {name} ({len(bad)} weight(s) alike); choose a block size dividing "
                f"{sorted(set(inputs.values()))}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


_FLAGS = {
    "block_size": ("--quant-block-size", int),
    "accuracy_level": ("--quant-accuracy-level", int),
    "int4_algorithm": ("--int4-algorithm", str),
    "head_bits": ("--int4-head-bits", int),
    "int8_budget_pct": ("--int8-ppl-budget", float),
    "int4_budget_pct": ("--int4-ppl-budget", float),
    "calibration_tokens": ("--calibration-tokens", int),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`kiln export` flags for the quantized variants (defaults: QuantConfig's)."""
    defaults = QuantConfig()
    group = parser.add_argument_group("quantized variants (int8, int4; docs/quantization.md)")
    for name, (flag, kind) in _FLAGS.items():
        group.add_argument(flag, type=kind, default=None, help=f"default {getattr(defaults, name)}")
    sym = group.add_mutually_exclusive_group()
    sym.add_argument("--quant-symmetric", dest="quant_symmetric", action="store_true", default=None)
    sym.add_argument("--quant-asymmetric", dest="quant_symmetric", action="store_false")


def from_args(args: argparse.Namespace) -> QuantConfig:
    given = {name: getattr(args, flag[2:].replace("-", "_")) for name, (flag, _) in _FLAGS.items()}
    given["symmetric"] = args.quant_symmetric
    known = {f.name for f in fields(QuantConfig)}
    return QuantConfig(**{k: v for k, v in given.items() if v is not None and k in known})
