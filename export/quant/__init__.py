"""Weight-only block quantization of the fused decoder graph (variants `int8` and `int4`).

`config` (what to build, the quality budget), `blocks` (MatMulNBits block format: quantize,
pack, dequantize), `gptq` (calibrated 4-bit codes), `graph` (rewrite the fused graph onto
MatMulNBits / GatherBlockQuantized), `quality` (perplexity and KL on the served contract),
`variants` (build, verify and judge both variants for an export), `docs` (the docs page).
"""
