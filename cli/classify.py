"""`kiln classify IMAGE...`: top labels and the prediction set per image, in-process or from a server.

In-process it runs the gateway's own `VisionModel` (the same views, batching, calibration and
option checks as `/classify`); with `--url` it posts the images to `/classify`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

import httpx


def options(args: argparse.Namespace) -> dict:
    fields: dict = {"views": args.views, "grid": args.grid, "top_k": args.top_k, "tta_flip": args.tta_flip}
    fields["prediction_set"] = not args.no_prediction_set
    return fields


def classify_local(args: argparse.Namespace, images: list[bytes]) -> dict:
    from cli.textclient import pick_entry, quiet_onnxruntime
    from contracts.manifest import VisionManifest, read_manifest
    from service.dataplane.vision import check_options, parse_params
    from service.metrics import Metrics
    from service.settings import Settings
    from service.vision.model import VisionModel, load_contract

    repository = Path(args.repository)
    quiet_onnxruntime()
    manifest = read_manifest(pick_entry(repository, args.model, VisionManifest.kind))
    assert isinstance(manifest, VisionManifest)
    settings = Settings(model_repository=repository, classify_max_batch=32)
    model = VisionModel(manifest, load_contract(manifest), settings, Metrics())
    model.start()
    try:
        fields = options(args)
        if model.calibration is None and fields["prediction_set"]:
            fields["prediction_set"] = False  # an uncalibrated model has no conformal threshold
        opts = check_options(model, parse_params(fields).options(), len(images))  # as the data plane does
        return asyncio.run(model.classify(images, opts, protocol="cli"))
    finally:
        model.close()


def classify_remote(args: argparse.Namespace, paths: list[Path]) -> dict:
    from cli.textclient import raise_for_error

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    params = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options(args).items()}
    if args.model:
        params["model"] = args.model
    files = [("file", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    response = httpx.post(args.url.rstrip("/") + "/classify", params=params, files=files, headers=headers, timeout=120)
    raise_for_error(response)
    return response.json()


def cmd_classify(args: argparse.Namespace) -> None:
    paths = [Path(p) for p in args.images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such image: {', '.join(missing)}")
    out = classify_remote(args, paths) if args.url else classify_local(args, [p.read_bytes() for p in paths])
    if args.json:
        print(json.dumps(out, indent=2))
        return
    for path, result in zip(paths, out["results"], strict=True):
        top = ", ".join(f"{t['label']} {t['probability']:.1%}" for t in result["top"])
        print(f"{path}: {top}")
        if "prediction_set" in result:
            cal = out.get("calibration") or {}
            target = f" ({cal['coverage_target']:.0%} coverage)" if cal.get("coverage_target") else ""
            print(f"  prediction set{target}: {{{', '.join(result['prediction_set'])}}}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify images: top labels and the prediction set")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--repository", default="model_repository", help="model repository (in-process)")
    p.add_argument("--model", help="classifier name (default: the only one)")
    p.add_argument("--url", help="a Kiln server instead of loading the model here")
    p.add_argument("--api-key", default=os.environ.get("KILN_API_KEY"), help="with --url (default $KILN_API_KEY)")
    p.add_argument("--views", choices=("single", "multi"), default="multi")
    p.add_argument("--grid", type=int, default=3, help="tiles per side for multi-view")
    p.add_argument("--tta-flip", action="store_true", help="also classify every view's mirror image")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--no-prediction-set", action="store_true")
    p.add_argument("--json", action="store_true", help="print the full /classify response")
    p.set_defaults(func=cmd_classify)
