"""Finds and loads every model in the repository; a broken model never blocks the others.

After start-up a watcher thread keeps looking: an entry that appears later (export swaps a
finished entry in atomically) is loaded and served without a restart, and an entry that failed
is retried once its `kiln.json` changes. `<repository>/<name>.pending` announces an entry that is
still being built (trained, exported): it is listed as loading and its requests get 503
`model_unavailable` until it appears; text in that file is the reason of a build that failed.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Protocol, TypeVar

from contracts.manifest import MANIFEST_FILE, TextManifest, VisionManifest, read_manifest
from contracts.triton import triton_lm_name
from service.backends.triton_client import TritonConnection
from service.engine.textgen import BaseTextModel, TextModel
from service.errors import InvalidRequest, ModelNotFound, Unavailable
from service.metrics import Metrics
from service.settings import Settings
from service.vision.model import VisionModel, load_contract

log = logging.getLogger("kiln.registry")


class Served(Protocol):
    name: str
    kind: str

    @property
    def ready(self) -> bool: ...

    @property
    def unavailable_reason(self) -> str | None: ...


M = TypeVar("M", bound=Served)

PENDING_SUFFIX = ".pending"
WATCH_INTERVAL_S = 1.0


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.text: dict[str, BaseTextModel] = {}
        self.vision: dict[str, VisionModel] = {}
        self.failed: dict[str, str] = {}
        self.loaded = False
        self.draining = False
        self.created = int(time.time())
        self.triton: TritonConnection | None = None  # shared by every model when KILN_BACKEND=triton
        self.pending: dict[str, str] = {}  # entries being built -> "" or the reason their build failed
        self._tried: dict[str, float] = {}  # entry -> mtime of the kiln.json last loaded (or tried)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def discover(self) -> list[Path]:
        """Entry directories with a manifest (hidden ones are exports still being staged)."""
        root = self.settings.model_repository
        if not root.is_dir():
            return []
        return sorted(p.parent for p in root.glob(f"*/{MANIFEST_FILE}") if not p.parent.name.startswith("."))

    def load_all(self) -> None:
        """Blocking: load and warm every model, then watch for new ones. Called off the event loop."""
        if not self.refresh() and not self.pending:
            log.error("no models found in %s (run `make export`)", self.settings.model_repository)
        self.loaded = True
        if not self._stop.is_set():
            self._watcher = threading.Thread(target=self._watch, name="kiln-registry-watch", daemon=True)
            self._watcher.start()

    def refresh(self) -> list[str]:
        """Load the entries that are new (or failed and re-exported) since the last look."""
        self.pending = self._read_pending()
        loaded = []
        for model_dir in self.discover():
            name = model_dir.name
            try:
                mtime = (model_dir / MANIFEST_FILE).stat().st_mtime
            except FileNotFoundError:  # swapped out between the glob and now; next look
                continue
            if self._stop.is_set() or self.draining:
                break
            if name in self.models or self._tried.get(name) == mtime:
                continue
            self._tried[name] = mtime
            try:
                manifest = read_manifest(model_dir)
                if isinstance(manifest, TextManifest):
                    self._load_text(manifest)
                else:
                    self._load_vision(manifest)
                self.failed = {k: v for k, v in self.failed.items() if k != name}
                loaded.append(name)
            except Exception as exc:  # keep serving the models that do load
                self.failed = {**self.failed, name: f"{type(exc).__name__}: {exc}"}
                self.metrics.model_ready.labels(name).set(0)
                log.error("model %s failed to load: %s", name, self.failed[name])
        return loaded

    def _read_pending(self) -> dict[str, str]:
        root = self.settings.model_repository
        if not root.is_dir():
            return {}
        marks = {p.name.removesuffix(PENDING_SUFFIX): p for p in root.glob(f"*{PENDING_SUFFIX}") if p.is_file()}
        out = {}
        for name, path in marks.items():
            if name not in self.models:
                try:
                    out[name] = path.read_text().strip()
                except OSError:
                    continue
        return out

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                self.refresh()
            except Exception:  # never let a bad look stop the watcher
                log.exception("watching %s failed", self.settings.model_repository)

    def _load_text(self, manifest: TextManifest) -> None:
        if self.settings.backend == "triton":
            from service.backends.triton_lm import TritonTextModel

            triton_model = manifest.triton_model or triton_lm_name(manifest.name)
            model: BaseTextModel = TritonTextModel(
                manifest, self.settings, self.connection(), triton_model, self.metrics
            )
            self._follow_triton(model, triton_model)
        else:
            in_process = TextModel(manifest, self.settings, self.metrics)
            in_process.start()
            self.metrics.model_ready.labels(manifest.name).set(1)
            self.metrics.slots(manifest.name, 0, self.settings.max_batch)
            self.metrics.queue_depth(manifest.name, 0)
            log.info("loaded %s (%s, %d slots)", manifest.name, in_process.graph.path.name, self.settings.max_batch)
            model = in_process
        self.text = {**self.text, manifest.name: model}

    def _load_vision(self, manifest: VisionManifest) -> None:
        contract = load_contract(manifest)
        runner = None
        if self.settings.backend == "triton":
            from service.backends.triton_vision import TritonClassifierRunner

            triton_model = manifest.triton_model or manifest.name
            max_batch = self.settings.classify_max_batch
            conn = self.connection()
            runner = TritonClassifierRunner(conn, triton_model, contract.input_name, contract.output_name, max_batch)
        model = VisionModel(manifest, contract, self.settings, self.metrics, runner=runner)
        if runner is None:
            model.start()
            self.metrics.model_ready.labels(model.name).set(1)
            log.info("loaded %s (image classification, %d labels)", model.name, len(model.labels))
        else:
            self._follow_triton(model, runner.triton_model)
        self.vision = {**self.vision, model.name: model}

    def _follow_triton(self, model: BaseTextModel | VisionModel, triton_model: str) -> None:
        """Start a Triton-served model; its readiness gauge follows Triton's monitor."""
        gauge = self.metrics.model_ready.labels(model.name)
        model.start(on_change=lambda ready: gauge.set(int(ready)))  # type: ignore[call-arg]
        gauge.set(int(model.ready))
        state = "ready" if model.ready else model.unavailable_reason
        log.info(
            "%s (%s) served by Triton model %s at %s (%s)",
            model.name,
            model.kind,
            triton_model,
            self.settings.triton_url,
            state,
        )

    def connection(self) -> TritonConnection:
        """The TritonConnection every Triton-served model shares (one channel, one monitor)."""
        s = self.settings
        if self.triton is None:
            self.triton = TritonConnection(
                s.triton_url, s.triton_protocol, s.triton_retries, s.triton_backoff_s, s.triton_timeout_s
            )
        return self.triton

    @property
    def models(self) -> dict[str, BaseTextModel | VisionModel]:
        return {**self.text, **self.vision}

    @property
    def ready(self) -> bool:
        """Loading is over and every loaded model can serve (Triton models: ready there, per the monitor)."""
        return self.loaded and bool(self.text or self.vision) and all(m.ready for m in self.models.values())

    def begin_drain(self) -> None:
        """Refuse new work everywhere; in-flight sequences run to completion."""
        self.draining = True
        for model in self.text.values():
            model.begin_drain()
        for vision in self.vision.values():
            vision.draining = True

    @property
    def busy(self) -> int:
        return sum(m.busy for m in self.text.values()) + sum(v.busy for v in self.vision.values())

    def text_model(self, name: str | None) -> BaseTextModel:
        return self._resolve(self.text, name, "text model", "text models")

    def vision_model(self, name: str | None) -> VisionModel:
        return self._resolve(self.vision, name, "image classification model", "classifiers")

    def _resolve(self, pool: dict[str, M], name: str | None, kind: str, plural: str) -> M:
        """The model a request names, or the only one of its kind."""
        if self.draining:
            raise Unavailable("server is shutting down; retry on another replica", code="draining")
        if not self.loaded:
            raise Unavailable("models are still loading", code="not_ready")
        if name is None:
            if not pool and self.pending:
                raise Unavailable(self._pending_message(sorted(self.pending)), code="model_unavailable")
            if not pool:
                raise Unavailable(f"no {kind} is loaded", code="no_model")
            if len(pool) > 1:
                raise InvalidRequest(
                    f"several {plural} are loaded; name one in `model`: {sorted(pool)}",
                    code="model_required",
                    param="model",
                )
            name = next(iter(pool))
        if name in pool:
            return pool[name]
        if name in self.pending:
            raise Unavailable(self._pending_message([name]), code="model_unavailable")
        if name in self.failed:
            raise Unavailable(f"model {name!r} failed to load: {self.failed[name]}", code="model_unavailable")
        raise ModelNotFound(f"model {name!r} not found; available {plural}: {sorted(pool)}")

    def _pending_message(self, names: list[str]) -> str:
        failed = {n: self.pending[n] for n in names if self.pending.get(n)}
        if failed:
            return "; ".join(f"model {n!r} failed to build: {why}" for n, why in failed.items())
        return f"model(s) {names} are still being built (trained or exported); retry shortly"

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=30)  # a load in progress finishes; nothing starts after it
        for model in self.text.values():
            model.close()
        for vision in self.vision.values():
            vision.close()
        if self.triton is not None:
            self.triton.close()
