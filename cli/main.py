"""`kiln` command line. Export subcommands import torch lazily; `serve` never does.

`generate`, `chat`, `evaluate` and `classify` live in their own modules (cli/generate.py,
cli/evaluate.py, cli/classify.py) and register themselves here.

A command that fails for a reason the user can act on (a checkpoint Kiln cannot read, a graph
that fails verification, a manifest of another version) prints one line, `kiln <command>:
error: <reason>`, and exits 1; `KILN_DEBUG=1` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cli import classify, evaluate, generate

DEMO_LM_CHECKPOINT = Path("checkpoints/demo-lm")
DEMO_HYBRID_CHECKPOINT = Path("checkpoints/demo-hybrid")
DEMO_LM_NAME = "demo-lm"
DEMO_VISION_CHECKPOINT = Path("checkpoints/demo-vision")
DEMO_VISION_NAME = "demo-vit"


def cmd_serve(args: argparse.Namespace) -> None:
    from service.server import serve
    from service.settings import Settings

    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    serve(Settings(**overrides))


def cmd_train_demo(args: argparse.Namespace) -> None:
    vision = args.task == "vision"
    default = DEMO_HYBRID_CHECKPOINT if args.arch == "hybrid" else DEMO_LM_CHECKPOINT
    out = Path(args.out or (DEMO_VISION_CHECKPOINT if vision else default))
    if (out / "model.safetensors").exists() and not args.force:
        print(f"{out} already holds a trained model (use --force to retrain)")
        return
    if vision:
        from export.vision.train import train_demo_vision

        kwargs = {"steps": args.steps} if args.steps else {}
        train_demo_vision(out, seed=args.seed, max_minutes=args.minutes, **kwargs)
        return
    from export.train_demo.lm import train_demo_lm

    train_demo_lm(
        out,
        seed=args.seed,
        steps=args.steps or 320,
        long_steps=args.long_steps,
        max_minutes=args.minutes,
        arch=args.arch,
    )


def cmd_export(args: argparse.Namespace) -> None:
    from export.vision.checkpoint import is_vision_checkpoint

    if is_vision_checkpoint(args.checkpoint):
        from export.vision.pipeline import export_classifier

        name = args.name or (DEMO_VISION_NAME if Path(args.checkpoint) == DEMO_VISION_CHECKPOINT else None)
        name = name or Path(args.checkpoint).name
        report = export_classifier(
            Path(args.checkpoint), Path(args.repository), name, weights=Path(args.weights) if args.weights else None
        )
        print(json.dumps(report["summary"], indent=2, default=str)[:4000])
        return
    from export.pipeline import export_checkpoint
    from export.quant.config import from_args

    report = export_checkpoint(
        Path(args.checkpoint),
        Path(args.repository),
        args.name or DEMO_LM_NAME,
        variants=not args.fp32_only,
        target=args.target,
        tensorrt=args.tensorrt,
        fp16=args.fp16,
        quant=from_args(args),  # a bad flag or a missed perplexity budget: one line, like every error
    )
    print(json.dumps(report.get("summary", report), indent=2, default=str)[:4000])
    if "triton" in report:
        print(f"Triton model (decoupled python backend running Kiln's engine): {report['triton']['path']}")
    trt = report.get("tensorrt")
    if trt is not None and "skipped" in trt:
        print(f"TensorRT engine skipped: {trt['skipped']}", file=sys.stderr)
    elif trt is not None:
        err = trt["verification"]["max_abs_logits"]
        print(f"TensorRT engine: {trt['path']} (max |Δlogits| vs ONNX Runtime {err:.3g})")


def cmd_demo_scene(args: argparse.Namespace) -> None:
    """Write test-split digit scenes as PNGs to try /classify with (labels in the file names)."""
    from PIL import Image

    from export.vision.data import make_scenes

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(make_scenes("test", seed=args.seed, limit=args.count)):
        path = out / f"scene-{i}-label-{scene.label}.png"
        Image.fromarray(scene.pixels).save(path)
        print(path)


def main(argv: list[str] | None = None) -> int:
    from export.quant.config import add_arguments as add_quant_arguments  # torch-free

    parser = argparse.ArgumentParser(prog="kiln", description="Kiln: export and serve models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start the gateway (settings from KILN_* variables)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("train-demo", help="train a demo model: the LM (Python stdlib) or the digit-scene classifier")
    p.add_argument("--task", choices=["lm", "vision"], default="lm")
    p.add_argument(
        "--arch",
        choices=["llama", "hybrid"],
        default="llama",
        help="LM only: hybrid = Mamba-2 layers beside attention, same corpus, tokenizer and step budget",
    )
    p.add_argument("--out", help=f"default {DEMO_LM_CHECKPOINT}, {DEMO_HYBRID_CHECKPOINT} or {DEMO_VISION_CHECKPOINT}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, help="optimizer steps (fixed, for determinism; default 320 LM, 1500 vision)")
    p.add_argument(
        "--long-steps",
        type=int,
        default=0,
        help="LM only: then this many steps on 8 x 512-token windows (the committed demo LM: 320)",
    )
    p.add_argument("--minutes", type=float, default=30.0, help="safety cap on training time (a hit is logged)")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_train_demo)

    p = sub.add_parser("demo-scenes", help="write test-split digit scenes (PNG) to try /classify")
    p.add_argument("--out", default="scenes")
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo_scene)

    p = sub.add_parser("export", help="checkpoint -> verified ONNX variants -> Triton model repository")
    p.add_argument(
        "--checkpoint",
        default=str(DEMO_LM_CHECKPOINT),
        help="Kiln or Hugging Face decoder directory (docs/models.md), "
        "or a classifier checkpoint (config.json kind image-classification)",
    )
    p.add_argument("--weights", help="classifiers: a weights file other than model.safetensors (.safetensors or .pth)")
    p.add_argument("--repository", default="model_repository")
    p.add_argument("--name", help=f"default {DEMO_LM_NAME}, {DEMO_VISION_NAME} or the checkpoint's directory name")
    p.add_argument("--fp32-only", action="store_true", help="skip the optimized, int8 and int4 variants")
    p.add_argument(
        "--target",
        choices=("inprocess", "triton"),
        default="inprocess",
        help="triton: also write <name>-triton/, a decoupled python-backend model running Kiln's engine",
    )
    p.add_argument("--tensorrt", action="store_true", help="also build a verified TensorRT engine (needs CUDA)")
    p.add_argument("--fp16", action="store_true", help="with --tensorrt: allow FP16 kernels")
    add_quant_arguments(p)
    p.set_defaults(func=cmd_export)

    for module in (generate, evaluate, classify):  # one module per newer command
        module.register(sub)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("KILN_DEBUG"):
            raise
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"kiln {args.command}: error: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
