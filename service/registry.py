"""Finds and loads every model in the repository; a broken model never blocks the others."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from service.auth import authorize_model
from service.backends.onnxruntime_lm import LMManifest
from service.engine.textgen import BaseTextModel, TextModel
from service.errors import InvalidRequest, ModelNotFound, NotSupported, Unavailable
from service.metrics import Metrics
from service.settings import Settings
from service.vision.model import VisionModel

log = logging.getLogger("kiln.registry")


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
        self.triton = None  # TritonConnection, shared by every model, when KILN_BACKEND=triton

    def discover(self) -> list[Path]:
        root = self.settings.model_repository
        if not root.is_dir():
            return []
        return sorted(p.parent for p in root.glob("*/kiln.json"))

    def load_all(self) -> None:
        """Blocking: load and warm every model. Called off the event loop at start-up."""
        dirs = self.discover()
        if not dirs:
            log.error("no models found in %s (run `make export`)", self.settings.model_repository)
        for model_dir in dirs:
            name = model_dir.name
            try:
                kind = json.loads((model_dir / "kiln.json").read_text()).get("kind")
                if kind == VisionModel.kind:
                    self._load_vision(model_dir)
                    continue
                if kind != "text-generation":
                    log.warning("skipping %s: unsupported kind %r", name, kind)
                    continue
                if self.settings.backend == "triton":
                    self._load_triton(model_dir)
                    continue
                manifest = LMManifest.load(model_dir, self.settings.lm_variant)
                model = TextModel(manifest, self.settings, self.metrics)
                model.start()
                self.text[manifest.name] = model
                self.metrics.model_ready.labels(manifest.name).set(1)
                self.metrics.slots(manifest.name, 0, self.settings.max_batch)
                self.metrics.queue_depth(manifest.name, 0)
                log.info("loaded %s (%s, %d KV slots)", manifest.name, manifest.onnx_file.name, self.settings.max_batch)
            except Exception as exc:  # keep serving the models that do load
                self.failed[name] = f"{type(exc).__name__}: {exc}"
                self.metrics.model_ready.labels(name).set(0)
                log.error("model %s failed to load: %s", name, self.failed[name])
        self.loaded = True

    def _load_triton(self, model_dir: Path) -> None:
        """The gateway keeps the tokenizer and manifest; Triton runs `<name>-triton` (docs/triton.md)."""
        from service.backends.triton_lm import TritonTextModel

        s = self.settings
        model = TritonTextModel.from_repository(model_dir, s, self.connection(), self.metrics)
        gauge = self.metrics.model_ready.labels(model.name)
        model.start(on_change=lambda ready: gauge.set(int(ready)))
        gauge.set(int(model.ready))
        self.text[model.name] = model
        log.info(
            "%s served by Triton model %s at %s (%s)",
            model.name,
            model.triton_model,
            s.triton_url,
            "ready" if model.ready else model.unavailable_reason,
        )

    def connection(self):  # type: ignore[no-untyped-def]
        """The TritonConnection every Triton-served model shares (one channel, one monitor)."""
        from service.backends.triton_client import TritonConnection

        s = self.settings
        if self.triton is None:
            self.triton = TritonConnection(
                s.triton_url, s.triton_protocol, s.triton_retries, s.triton_backoff_s, s.triton_timeout_s
            )
        return self.triton

    def _load_vision(self, model_dir: Path) -> None:
        if self.settings.backend == "triton":
            self._load_triton_vision(model_dir)
            return
        model = VisionModel(model_dir, self.settings, self.metrics)
        model.start()
        self.vision[model.name] = model
        self.metrics.model_ready.labels(model.name).set(1)
        log.info("loaded %s (image classification, %d labels)", model.name, len(model.labels))

    def _load_triton_vision(self, model_dir: Path) -> None:
        """The gateway keeps preprocessing and calibration; Triton runs the classifier's own
        repository entry (onnxruntime_onnx + dynamic_batching) on the batched crops."""
        from service.backends.triton_vision import TritonClassifierRunner
        from service.vision.views import Contract

        raw = json.loads((model_dir / "kiln.json").read_text())
        contract = Contract.from_dict(json.loads((model_dir / raw.get("preprocess", "preprocess.json")).read_text()))
        triton_model = raw.get("triton_model", model_dir.name)
        runner = TritonClassifierRunner(
            self.connection(),
            triton_model,
            contract.input_name,
            contract.output_name,
            self.settings.classify_max_batch,
        )
        model = VisionModel(model_dir, self.settings, self.metrics, runner=runner)
        gauge = self.metrics.model_ready.labels(model.name)
        model.start(on_change=lambda ready: gauge.set(int(ready)))
        gauge.set(int(model.ready))
        self.vision[model.name] = model
        log.info(
            "%s (image classification) served by Triton model %s at %s (%s)",
            model.name,
            triton_model,
            self.settings.triton_url,
            "ready" if model.ready else model.unavailable_reason,
        )

    @property
    def models(self) -> dict[str, TextModel | VisionModel]:
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
        return self._resolve(
            self.text, name, none_loaded="no text model is loaded", several="text models", listed="available"
        )

    def vision_model(self, name: str | None) -> VisionModel:
        # gRPC's proto3 strings cannot be unset: an empty model name means "the only classifier".
        return self._resolve(
            self.vision,
            name or None,
            none_loaded="no image classification model is loaded",
            several="classifiers",
            listed="classifiers",
        )

    def _resolve(self, pool: dict, name: str | None, *, none_loaded: str, several: str, listed: str):  # type: ignore[no-untyped-def]
        """The model a request names (or the only one of its kind), after the caller's API key is checked."""
        if self.draining:
            raise Unavailable("server is shutting down; retry on another replica", code="draining")
        if not self.loaded:
            raise Unavailable("models are still loading", code="not_ready")
        if name is None:
            if not pool:
                raise Unavailable(none_loaded, code="no_model")
            if len(pool) > 1:
                raise InvalidRequest(
                    f"several {several} are loaded; name one in `model`: {sorted(pool)}", code="model_required"
                )
            name = next(iter(pool))
        if name in pool:
            authorize_model(name)
            return pool[name]
        if name in self.failed:
            raise Unavailable(f"model {name!r} failed to load: {self.failed[name]}", code="model_unavailable")
        raise ModelNotFound(f"model {name!r} not found; {listed}: {sorted(pool)}")

    async def classify_grpc(self, request):  # type: ignore[no-untyped-def]
        """gRPC Classify over the same data plane as POST /classify (UNIMPLEMENTED without a classifier)."""
        if self.loaded and not self.vision and not self.draining:
            raise NotSupported("image classification is not available on this server (no classifier loaded)")
        from service.rpc.classify import classify

        return await classify(self, request)

    def close(self) -> None:
        for model in self.text.values():
            model.close()
        for vision in self.vision.values():
            vision.close()
        if self.triton is not None:
            self.triton.close()
