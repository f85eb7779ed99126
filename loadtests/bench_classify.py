"""`make bench-classify`: images/s for multi-view + flip (20 crops per image), against the limit.

All rows in one run, on one machine:
- model only: the classifier alone on ONNX Runtime, every image's 20 views in batches of whole
  images (as Kiln's batcher forms them), measured before and after the servers run: the limit.
- Kiln: a real `kiln serve` subprocess, clients POSTing PNGs to /classify?views=multi&tta_flip=true
  (one decode per image, all views from the exported views graph in one ONNX Runtime run, views
  of concurrent requests merged by the dynamic batcher).
- Triton: tritonserver's dynamic batcher serving the same views (sent by the clients, so decoding
  and cropping are not in its numbers), when deploy/triton/install.sh has installed it.
- naive PyTorch: each client decodes, crops and runs the 20 views one at a time.
At 1 and 16 concurrent clients; the table goes into docs/vision.md, with where the Kiln run's CPU
went at the largest client count: the server's and the load generator's CPU time per image (from
/proc, every thread), and the server's own decode + views and model-run times (its metrics),
against the model-only limit's share of both cores.
"""

from __future__ import annotations

import argparse
import io
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
from loadtests.classify_peers import TritonPeer, model_only, run_clients, triton_reason  # noqa: E402
from tests.live_server import Server  # noqa: E402

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
QUERY = "views=multi&tta_flip=true"


def test_images(n: int, seed: int) -> list[bytes]:
    from PIL import Image

    from export.vision.data import make_scenes

    out = []
    for scene in make_scenes("test", 2, seed, limit=(n + 1) // 2):
        buf = io.BytesIO()
        Image.fromarray(scene.pixels).save(buf, "PNG")
        out.append(buf.getvalue())
    return out[:n]


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


def levels_run(levels: list[int], images: int, work) -> dict[int, float]:  # type: ignore[no-untyped-def]
    return {c: run_clients(c, max(1, images // c), work) for c in levels}


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time of a process, all its threads (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric_sums(text: str, *names: str) -> dict[str, float]:
    """`<name>` sample values summed over labels, from a Prometheus text page."""
    out = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def cpu_split(server_pid: int, clients: int, images: int, work) -> tuple[float, dict[str, float]]:  # type: ignore[no-untyped-def]
    """One client level's img/s, and its CPU per image in ms: the server's and this process's."""
    server0, own0 = cpu_seconds(server_pid), cpu_seconds()
    per_client = max(1, images // clients)
    rate = run_clients(clients, per_client, work)
    done = clients * per_client
    split = {"server": 1e3 * (cpu_seconds(server_pid) - server0) / done, "client": 1e3 * (cpu_seconds() - own0) / done}
    return rate, split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repository", default="model_repository")
    ap.add_argument("--name", default="demo-vit")
    ap.add_argument("--checkpoint", default="checkpoints/demo-vision")
    ap.add_argument("--clients", default="1,16")
    ap.add_argument("--images", type=int, default=640, help="images per level (split across clients)")
    ap.add_argument("--naive-images", type=int, default=64, help="images per level for naive PyTorch")
    ap.add_argument("--no-triton", action="store_true")
    ap.add_argument("--out", default="docs/vision.md")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from contracts.aggregate import aggregate, softmax
    from contracts.manifest import VisionManifest
    from contracts.vision import make_views
    from export.vision.checkpoint import load_vision_checkpoint
    from service.vision.model import load_contract

    load_before = os.getloadavg()
    model_dir = Path(args.repository) / args.name
    manifest = VisionManifest.read(model_dir)
    contract = load_contract(manifest)
    model_file = manifest.path(manifest.files["fp32"])
    ckpt = load_vision_checkpoint(args.checkpoint)
    model = ckpt.model.eval()
    images = test_images(min(args.images, 256), seed=0)
    decoded = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    views = [make_views(img, contract, "multi", 3, 0.25, flip=True)[1] for img in decoded]
    levels = [int(c) for c in args.clients.split(",")]
    rounds = max(1, args.images // len(views))
    limit_before = model_only(model_file, views, 64, rounds, contract.input_name)
    print(f"model only: {limit_before:.1f} img/s", flush=True)

    def naive(i: int) -> int:
        img = Image.open(io.BytesIO(images[i % len(images)])).convert("RGB")
        _, v = make_views(img, contract, "multi", 3, 0.25, flip=True)
        with torch.no_grad():
            logits = [model(torch.from_numpy(x[None]))[0] for x in v]  # one view at a time
        return int(aggregate(softmax(torch.stack(logits).numpy()), "confidence_weighted").argmax())

    server = KilnServer(model_dir)
    try:
        client = httpx.Client(timeout=120, limits=httpx.Limits(max_connections=64))

        def kiln(i: int) -> str:
            r = client.post(
                f"{server.url}/classify?{QUERY}", files={"file": ("scene.png", images[i % len(images)], "image/png")}
            )
            r.raise_for_status()
            return r.json()["results"][0]["top"][0]["label"]

        for i in range(8):  # warm up: plans cached, sessions hot
            kiln(i)
        agree = np.mean([kiln(i) == str(naive(i)) for i in range(8)])
        kiln_rates, splits = {}, {}
        for c in levels:
            kiln_rates[c], splits[c] = cpu_split(server.server.proc.pid, c, args.images, kiln)
            print(f"kiln {c:>3} clients: {kiln_rates[c]:7.1f} img/s, CPU ms per image {splits[c]}", flush=True)
        metrics = client.get(f"{server.url}/metrics").text
    finally:
        server.stop()

    triton_rates: dict[int, float] = {}
    triton_note = "not run (--no-triton)" if args.no_triton else triton_reason()
    if triton_note is None:
        peer = TritonPeer(model_dir)
        try:
            clients = {}

            def triton(i: int) -> int:
                key = threading.get_ident()
                if key not in clients:
                    clients[key] = peer.client()
                out = peer.infer(clients[key], views[i % len(views)], contract.input_name, contract.output_name)
                return int(aggregate(softmax(out), "confidence_weighted").argmax())

            for i in range(4):
                triton(i)
            before = peer.batches()
            triton_rates = levels_run(levels, args.images, triton)
            after = peer.batches()
            inferences, executions = after[0] - before[0], after[1] - before[1]
            triton_note = f"{inferences / max(executions, 1):.1f} views per execution"
            for c, r in triton_rates.items():
                print(f"triton {c:>3} clients: {r:7.1f} img/s", flush=True)
        finally:
            peer.stop()

    naive_rates = levels_run(levels, args.naive_images, naive)
    limit_after = model_only(model_file, views, 64, rounds, contract.input_name)
    limit = max(limit_before, limit_after)
    load_after = os.getloadavg()
    m = metric_sums(
        metrics,
        "kiln_classify_batch_size_count",
        "kiln_classify_batch_size_sum",
        "kiln_classify_images_total",
        "kiln_classify_preprocess_seconds_sum",
        "kiln_classify_inference_seconds_sum",
    )
    count, sum_ = m["kiln_classify_batch_size_count"], m["kiln_classify_batch_size_sum"]
    served = max(m["kiln_classify_images_total"], 1)
    top = max(levels)
    cores = os.cpu_count() or 1
    model_ms = 1e3 * cores / limit  # the limit's CPU per image: the model alone on every core
    budget = 1e3 * cores / (0.8 * limit) - model_ms

    def row(name: str, rates: dict[int, float]) -> list[str]:
        return [f"| {name} | {c} | {r:.1f} | {r / limit:.2f}× |" for c, r in rates.items()]

    lines = [
        f"Multi-view + flip (global + 3×3 tiles, each mirrored: 20 crops per 128×128 PNG), `{args.name}`; "
        f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads; load average {load_before[0]:.2f} before, {load_after[0]:.2f} "
        f"after (1 min). Written by `make bench-classify` on {time.strftime('%Y-%m-%d')}, one run.",
        "",
        "| path | concurrent clients | img/s | of the model-only limit |",
        "|---|---|---|---|",
        f"| **model only** (ONNX Runtime, batches of 3 images = 60 views) | – | {limit:.1f} | 1.00× |",
        *row("Kiln `/classify` (decode, views graph, batcher, HTTP)", kiln_rates),
        *row("Triton dynamic batcher, views sent by the client", triton_rates),
        *row("naive PyTorch, view by view", naive_rates),
        "",
        f"Model only: {limit_before:.1f} img/s before the servers ran, {limit_after:.1f} after; the limit is the "
        f"higher. Kiln's batcher averaged {sum_ / max(count, 1):.1f} views per ONNX Runtime run. Triton: "
        f"{triton_note}. Top-1 agreement between Kiln and naive PyTorch on 8 images: {100 * agree:.0f}%.",
        "",
        f"Where Kiln's CPU went at {top} clients, per image (/proc, every thread): the server "
        f"{splits[top]['server']:.2f} core-ms, the load generator (this process: HTTP client, multipart "
        f"encoding, JSON) {splits[top]['client']:.2f}; the server's metrics put "
        f"{1e3 * m['kiln_classify_preprocess_seconds_sum'] / served:.2f} ms per image into decoding and the "
        f"views graph and {1e3 * m['kiln_classify_inference_seconds_sum'] / served:.2f} ms into batched model "
        f"runs (wall time, over the whole run). The model-only limit is {model_ms:.2f} core-ms per image "
        f"({cores} cores ÷ {limit:.0f} img/s), so 0.8× of it leaves {budget:.2f} core-ms per image for "
        "everything around the model on the same cores, the load generator included.",
    ]
    write_section(Path(args.out), BEGIN, END, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
