"""The quantized cases of the generation benchmark (issue 14), kept beside `bench_generate.py`.

  kiln-int8        Kiln's engine on the `int8` fused graph (MatMulNBits 8-bit, docs/quantization.md)
  kiln-int4        Kiln's engine on the `int4` fused graph (GPTQ 4-bit projections, 4-bit head):
                   the bytes per step onnxruntime-genai's int4 reads
  kiln-int4-head8  the same with the LM head and embedding at 8 bits (`--int4-head-bits 8`): the
                   quality docs/quantization.md measures for it, at the speed this run measures
  ort-genai-int4   onnxruntime-genai on its model builder's `-p int4 -e cpu` graph, same block size
  kiln-http-int4   `kiln serve` on the int4 graph (its worker is in bench_http.py)

`bench_generate.py` imports this module for three things: the case names (`BACKENDS`), the
extra model preparation (`prepare`: a Kiln export with variants, the builder's int4 folder, the
bytes each case's decode step reads), and the workers (`workers`: the fp32 workers pointed at
the quantized models). Random weights make the quantized variants' perplexity meaningless, so
the export's perplexity budgets are lifted here; quality is measured on the demo LM instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

BACKENDS = ("kiln-int8", "kiln-int4", "kiln-int4-head8", "ort-genai-int4", "kiln-http-int4")
KILN_VARIANTS = {"kiln-int8": "int8", "kiln-int4": "int4", "kiln-http-int4": "int4"}
HEAD8 = "kiln-int4-head8"


def prepare(model: dict, workdir: Path, threads: int, backends: list[str], log: Callable[[str], None]) -> dict:
    """Extra keys for `model` (bench_generate.prepare_model's dict) that the selected quantized cases need."""
    from export.quant.config import QuantConfig

    wanted = [b for b in backends if b in BACKENDS]
    if not wanted:
        return {}
    name, hf = model["name"], Path(model["hf"])
    base = workdir / name
    default = QuantConfig()
    block = default.block_size
    extra: dict = {"step_bytes": {}}
    if any(b in KILN_VARIANTS for b in wanted):
        entry, files = quant_export(hf, base / "kiln_quant_repo", f"bench-{name.lower()}", default, log)
        extra["kiln_quant_model"] = str(entry)
        extra["kiln_quant_codes"] = f"{'symmetric' if default.symmetric else 'asymmetric'} codes, block {block}"
        # kiln-int4 and kiln-http-int4 serve the same graph: read each variant's file once.
        per_variant = {v: step_weight_bytes(entry / files[v]) for v in dict.fromkeys(KILN_VARIANTS.values())}
        for backend, variant in KILN_VARIANTS.items():
            extra["step_bytes"][backend] = per_variant[variant]
    if HEAD8 in wanted:
        head8 = QuantConfig(head_bits=8)
        entry, files = quant_export(hf, base / "kiln_head8_repo", f"bench-{name.lower()}", head8, log)
        extra["kiln_head8_model"] = str(entry)
        extra["step_bytes"][HEAD8] = step_weight_bytes(entry / files["int4"])
    if "ort-genai-int4" in wanted:
        og_dir = base / "ort-genai-int4"
        if not (og_dir / "genai_config.json").exists():
            log(f"[{name}] onnxruntime-genai model builder, int4")
            cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(og_dir)]
            cmd += ["-p", "int4", "-e", "cpu", "-c", str(base / "og_int4_cache")]
            cmd += ["--extra_options", f"block_size={block}", "accuracy_level=4"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
                raise SystemExit(f"onnxruntime-genai int4 builder failed:\n{tail}")
            shutil.rmtree(base / "og_int4_cache", ignore_errors=True)
        cfg_path = og_dir / "genai_config.json"
        gcfg = json.loads(cfg_path.read_text())
        gcfg["model"]["decoder"]["session_options"].update(intra_op_num_threads=threads, inter_op_num_threads=1)
        cfg_path.write_text(json.dumps(gcfg, indent=2))
        extra["ort_genai_int4"] = str(og_dir)
        extra["step_bytes"]["ort-genai-int4"] = step_weight_bytes(og_dir / gcfg["model"]["decoder"]["filename"])
    return extra


def quant_export(hf: Path, repo: Path, name: str, quant, log: Callable[[str], None]) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    """A Kiln export with the int8/int4 variants under `quant`'s settings, kept between runs while
    its report's quantization settings are these: (its entry, its manifest's files)."""
    from dataclasses import replace

    from export.pipeline import export_checkpoint

    inf = float("inf")  # random weights: no perplexity budget means anything
    quant = replace(quant, int8_budget_pct=inf, int4_budget_pct=inf, calibration_tokens=2048)
    entry = repo / name
    manifest, report = entry / "kiln.json", entry / "export_report.json"
    if manifest.exists() and report.exists():
        files = json.loads(manifest.read_text())["files"]
        made_with = json.loads(report.read_text()).get("quantization", {}).get("config")
        if "int4" in files and made_with == json.loads(json.dumps(quant.to_dict())):
            return entry, files
    log(f"[{hf.name}] Kiln export with the int8/int4 variants (int4 head {quant.head_bits}-bit)")
    export_checkpoint(
        hf, repo, name, variants=True, val_texts=["def f(x):\n    return x + 1\n"], ppl_tokens=64, quant=quant
    )
    return entry, json.loads(manifest.read_text())["files"]


def step_weight_bytes(onnx_file: Path) -> int:
    """Bytes of the weights a decode step streams: every MatMul / MatMulNBits / Gemm constant input
    (packed codes, scales, zero points), not the embedding table, from which a step reads one row."""
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    sizes = {t.name: int(np.prod(t.dims)) * _itemsize(t.data_type) for t in graph.initializer}
    used = {
        name
        for node in graph.node
        if node.op_type in ("MatMul", "MatMulNBits", "Gemm")
        for name in node.input[1:]
        if name in sizes
    }
    return sum(sizes[name] for name in used)


def _itemsize(data_type: int) -> int:
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize


def workers(worker_kiln: Callable[..., dict], worker_ort_genai: Callable[..., dict]) -> dict[str, Callable[..., dict]]:
    """The quantized cases as bench_generate workers: the fp32 workers on the quantized models."""

    def kiln(variant: str, key: str = "kiln_quant_model") -> Callable[..., dict]:
        def run(model: dict, prompts: list[dict], batches: list[int], new: int, threads: int) -> dict:
            os.environ["KILN_LM_VARIANT"] = variant  # worker_kiln serves Settings().lm_variant, as `kiln serve`
            out = worker_kiln({**model, "kiln_model": model[key]}, prompts, batches, new, threads)
            from contracts.manifest import TextManifest

            chosen = TextManifest.read(Path(model[key])).graph(variant).path.name
            return {**out, "graph": chosen}

        return run

    def ort_genai_int4(model: dict, prompts: list[dict], batches: list[int], new: int, threads: int) -> dict:
        return worker_ort_genai({**model, "ort_genai": model["ort_genai_int4"]}, prompts, batches, new, threads)

    return {
        "kiln-int8": kiln("int8"),
        "kiln-int4": kiln("int4"),
        HEAD8: kiln("int4", key="kiln_head8_model"),
        "ort-genai-int4": ort_genai_int4,
    }
