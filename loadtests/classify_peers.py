"""The rows of `make bench-classify` other than Kiln's own: the model alone on ONNX Runtime (the
limit), Triton's dynamic batcher serving the same views, and naive PyTorch view by view."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run_clients(clients: int, per_client: int, work: Callable[[int], object]) -> float:
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


def model_only(model_file: Path, views: list[np.ndarray], batch_views: int, rounds: int, input_name: str) -> float:
    """images/s of the classifier alone: every image's views, in batches of whole images of at most
    `batch_views` views (the batches Kiln's batcher forms under load), on every core: the better of
    ONNX Runtime's spinning threads (its default) and sleeping ones (what the gateway uses). On a
    machine other processes load, spinning threads can lose most of their time to descheduling, so
    taking only the default understates the limit."""
    from service.backends.ort_session import cpu_session

    per = max(1, batch_views // len(views[0]))
    batches = [np.concatenate(views[i : i + per]) for i in range(0, len(views), per)]
    rates = []
    for spinning in (True, False):
        sess = cpu_session(model_file, spinning=spinning)
        for b in batches[:3]:
            sess.run(None, {input_name: b})
        started = time.perf_counter()
        for _ in range(rounds):
            for b in batches:
                sess.run(None, {input_name: b})
        rates.append(rounds * len(views) / (time.perf_counter() - started))
    return max(rates)


def triton_reason() -> str | None:
    spec = importlib.util.spec_from_file_location("kiln_triton_launch", ROOT / "deploy/triton/launch.py")
    launch = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(launch)  # type: ignore[union-attr]
    return launch.installed_reason()


class TritonPeer:
    """tritonserver (CPU build, deploy/triton/install.sh) serving the classifier's own repository entry
    (`onnxruntime_onnx` + dynamic_batching, as exported) through the ONNX Runtime stand-in that the
    integration tests use (tests/integration/onnxruntime_standin.py: the CPU build has no ONNX
    Runtime backend). Clients send each image's views as one request; Triton's dynamic batcher
    merges concurrent requests into one execution."""

    def __init__(self, model_dir: Path) -> None:
        spec = importlib.util.spec_from_file_location("kiln_triton_launch", ROOT / "deploy/triton/launch.py")
        launch = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(launch)  # type: ignore[union-attr]
        self.tmp = Path(tempfile.mkdtemp(prefix="kiln-bench-triton-"))
        repo, backends = self.tmp / "repo", self.tmp / "backends"
        repo.mkdir()
        (repo / model_dir.name).symlink_to(model_dir.resolve())
        backends.mkdir()
        (backends / "python").symlink_to(launch.TRITON_HOME / "backends" / "python")
        (backends / "onnxruntime").mkdir()
        shutil.copyfile(ROOT / "tests/integration/onnxruntime_standin.py", backends / "onnxruntime" / "model.py")
        self.name = model_dir.name
        self.server = launch.TritonServer(
            repo, models=[self.name], backend_directory=backends, log_file=self.tmp / "tritonserver.log"
        )
        self.server.start()
        self.metrics_url = self.server.metrics_url

    def client(self):  # type: ignore[no-untyped-def]
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.server.grpc_url)

    def infer(self, client, views: np.ndarray, input_name: str, output_name: str) -> np.ndarray:  # type: ignore[no-untyped-def]
        import tritonclient.grpc as grpcclient

        inp = grpcclient.InferInput(input_name, list(views.shape), "FP32")
        inp.set_data_from_numpy(views)
        out = client.infer(self.name, [inp], outputs=[grpcclient.InferRequestedOutput(output_name)])
        return out.as_numpy(output_name)

    def batches(self) -> tuple[float, float]:
        """(inferences, executions) so far, from Triton's metrics."""
        import re
        import urllib.request

        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            text = resp.read().decode()

        def metric(name: str) -> float:
            m = re.search(rf'^{name}{{[^}}]*model="{self.name}"[^}}]*}} (\S+)$', text, re.M)
            return float(m[1]) if m else 0.0

        return metric("nv_inference_count"), metric("nv_inference_exec_count")

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
