"""`make bench-classify`: images/s for multi-view + flip (20 crops per image).

Kiln: a real `kiln serve` subprocess, clients POSTing PNGs to /classify?views=multi&tta_flip=true
(decode and crops in the gateway's threads, views of concurrent requests merged by the dynamic
batcher into ONNX Runtime runs). Naive: the same weights in PyTorch, each client thread decoding
and cropping with the same code and then running the 20 views one at a time. Both at 1 and 16
concurrent clients, in the same run, on the same machine; the table goes into docs/vision.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export.vision.evaluate import write_section  # noqa: E402
from tests.live_server import Server  # noqa: E402

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
QUERY = "views=multi&tta_flip=true"


def test_images(n: int, seed: int) -> list[bytes]:
    import io

    from PIL import Image

    from export.vision.data import make_scenes

    out = []
    for scene in make_scenes("test", 1, seed, limit=n):
        buf = io.BytesIO()
        Image.fromarray(scene.pixels).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def run_clients(clients: int, per_client: int, work) -> float:  # type: ignore[no-untyped-def]
    """images/s with `clients` threads each calling work(i) `per_client` times."""
    errors: list[BaseException] = []

    def loop(c: int) -> None:
        try:
            for i in range(per_client):
                work(c * per_client + i)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return clients * per_client / elapsed


class KilnServer:
    """`kiln serve` (tests/live_server.Server) on a repository holding only `model_dir`."""

    def __init__(self, model_dir: Path) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
        (self.tmp / model_dir.name).symlink_to(model_dir.resolve())
        self.server = Server(self.tmp, ready_timeout=120, capture_output=False, KILN_GRPC_PORT="0")
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repository", default="model_repository")
    ap.add_argument("--name", default="demo-vit")
    ap.add_argument("--checkpoint", default="checkpoints/demo-vision")
    ap.add_argument("--clients", default="1,16")
    ap.add_argument("--images", type=int, default=64, help="images per level (split across clients)")
    ap.add_argument("--out", default="docs/vision.md")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from contracts.aggregate import aggregate, softmax
    from contracts.vision import make_views
    from export.vision.checkpoint import load_vision_checkpoint

    model_dir = Path(args.repository) / args.name
    ckpt = load_vision_checkpoint(args.checkpoint)
    model, contract = ckpt.model.eval(), ckpt.contract
    images = test_images(args.images, seed=0)
    levels = [int(c) for c in args.clients.split(",")]

    def naive(i: int) -> int:
        import io

        img = Image.open(io.BytesIO(images[i % len(images)])).convert("RGB")
        _, views = make_views(img, contract, "multi", 3, 0.25, flip=True)
        with torch.no_grad():
            logits = [model(torch.from_numpy(v[None]))[0] for v in views]  # one view at a time
        return int(aggregate(softmax(torch.stack(logits).numpy()), "confidence_weighted").argmax())

    rows = []
    server = KilnServer(model_dir)
    try:
        client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=64))

        def kiln(i: int) -> str:
            r = client.post(
                f"{server.url}/classify?{QUERY}", files={"file": ("scene.png", images[i % len(images)], "image/png")}
            )
            r.raise_for_status()
            return r.json()["results"][0]["top"][0]["label"]

        kiln(0)  # warm up
        naive(0)
        agree = np.mean([kiln(i) == str(naive(i)) for i in range(8)])
        for clients in levels:
            per = max(1, args.images // clients)
            k = run_clients(clients, per, kiln)
            n = run_clients(clients, per, naive)
            rows.append((clients, k, n))
            print(f"{clients:>3} clients: kiln {k:7.1f} img/s, naive torch {n:7.1f} img/s, x{k / n:.1f}", flush=True)
        metrics = client.get(f"{server.url}/metrics").text
    finally:
        server.stop()

    count = sum_ = 0.0
    for line in metrics.splitlines():
        if line.startswith("kiln_classify_batch_size_count"):
            count = float(line.rsplit(" ", 1)[1])
        if line.startswith("kiln_classify_batch_size_sum"):
            sum_ = float(line.rsplit(" ", 1)[1])
    lines = [
        f"Multi-view + flip (global + 3×3 tiles, each mirrored: 20 crops per 128×128 PNG), `{args.name}`; "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads. Written by `make bench-classify`.",
        "",
        "| concurrent clients | Kiln /classify (batched ORT) img/s | naive PyTorch, view by view img/s | speed-up |",
        "|---|---|---|---|",
        *[f"| {c} | {k:.1f} | {n:.1f} | {k / n:.1f}× |" for c, k, n in rows],
        "",
        f"Kiln's batcher averaged {sum_ / max(count, 1):.1f} views per ONNX Runtime run over the whole benchmark. "
        f"Top-1 agreement between the two paths on 8 images: {100 * agree:.0f}%.",
    ]
    write_section(Path(args.out), BEGIN, END, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
