"""A served classifier: contract + calibration + ONNX Runtime session + dynamic batcher.

With KILN_BACKEND=triton a `runner` (service/backends/triton_vision.py) replaces the session and
the batcher: the crops of a request go to Triton as one batched infer; everything else is the same.

`classify` serves one request with validated options; the data plane (service/dataplane/vision.py)
resolves the model and the options for REST and gRPC alike.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from contracts.aggregate import AGGREGATIONS, aggregate, confidence, prediction_set, softmax, temper, view_weights
from contracts.calibration import Calibration
from contracts.manifest import VisionManifest, read_json
from contracts.vision import PreprocessContract, make_views, view_boxes
from service.backends.ort_session import cpu_session
from service.backends.triton_vision import TritonClassifierRunner
from service.errors import InvalidRequest, Unavailable
from service.metrics import Metrics
from service.settings import Settings
from service.vision.batcher import BatchObserver, DynamicBatcher
from service.vision.preprocess import ImageLimits, decode_image


@dataclass(frozen=True)
class ClassifyOptions:
    views: str = "multi"
    grid: int = 3
    overlap: float = 0.25
    tta_flip: bool = False
    aggregate: str = "confidence_weighted"
    k: int = 3  # for topk_mean
    top_k: int = 5
    calibrated: bool | None = None  # None: calibrated when the model has a temperature
    prediction_set: bool = False
    return_views: bool = False

    @property
    def pipeline(self) -> str:
        """Which fitted temperature / conformal threshold applies (see calibration.json)."""
        if self.views == "single":
            return "single"
        return "multi_flip" if self.tta_flip else "multi"


@dataclass
class _Prepared:
    names: list[str]
    views: np.ndarray
    width: int
    height: int
    decode_s: float
    views_s: float


class _Observer(BatchObserver):
    def __init__(self, metrics: Metrics, model: str) -> None:
        self.batch_hist = metrics.classify_batch.labels(model)
        self.infer_hist = metrics.classify_inference_s.labels(model)
        self.queue_hist = metrics.classify_queue_s.labels(model)

    def batch(self, views: int, seconds: float) -> None:
        self.batch_hist.observe(views)
        self.infer_hist.observe(seconds)

    def queued(self, seconds: float) -> None:
        self.queue_hist.observe(seconds)


def load_contract(manifest: VisionManifest) -> PreprocessContract:
    """The entry's preprocessing contract (`preprocess.json`, versioned)."""
    path = manifest.path(manifest.preprocess)
    return PreprocessContract.from_dict(read_json(path), str(path))


class VisionModel:
    kind = "image-classification"
    context_length = None

    def __init__(
        self,
        manifest: VisionManifest,
        contract: PreprocessContract,
        settings: Settings,
        metrics: Metrics,
        runner: TritonClassifierRunner | None = None,
    ) -> None:
        self.name = manifest.name
        self.settings = settings
        self.metrics = metrics
        self.contract = contract
        self.calibration = Calibration.read(manifest.path(manifest.calibration)) if manifest.calibration else None
        self.labels = list(self.contract.labels)
        self.runner = runner  # TritonClassifierRunner when the network runs in Triton
        self.session = None
        if runner is None:
            self.session = cpu_session(manifest.path(manifest.files["fp32"]), settings.intra_op_threads)
        self.limits = ImageLimits(
            formats=frozenset(f.strip().upper() for f in settings.image_formats.split(",") if f.strip()),
            max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side,
        )
        self.pool = ThreadPoolExecutor(settings.classify_workers, thread_name_prefix=f"kiln-decode-{self.name}")
        self.batcher: DynamicBatcher | None = None
        self.busy = 0
        self.draining = False

    @property
    def ready(self) -> bool:
        return self.runner.ready if self.runner is not None else self.batcher is not None

    @property
    def unavailable_reason(self) -> str | None:
        if self.runner is not None:
            return self.runner.unavailable_reason
        return None if self.batcher is not None else "not started"

    def _run(self, x: np.ndarray) -> np.ndarray:
        assert self.session is not None
        return self.session.run([self.contract.output_name], {self.contract.input_name: x})[0]

    def start(self, on_change=None) -> None:  # type: ignore[no-untyped-def]
        if self.runner is not None:  # Triton batches; readiness follows the model there
            self.runner.start(on_change)
            return
        h, w = self.contract.input_size
        for n in (1, self.settings.classify_max_batch):  # warm up both ends of the batch axis
            self._run(np.zeros((n, 3, h, w), np.float32))
        self.batcher = DynamicBatcher(
            self._run,
            self.settings.classify_max_batch,
            self.settings.classify_max_delay_ms / 1000,
            _Observer(self.metrics, self.name),
            self.name,
        )

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- request validation -------------------------------------------------------------------
    def check(self, opts: ClassifyOptions, n_images: int) -> ClassifyOptions:
        s = self.settings
        if n_images == 0:
            raise InvalidRequest("no image in the request", code="no_images")
        if n_images > s.classify_max_images:
            raise InvalidRequest(
                f"{n_images} images exceed the limit of {s.classify_max_images} per request (KILN_CLASSIFY_MAX_IMAGES)",
                code="too_many_images",
            )
        if opts.views not in ("single", "multi"):
            raise InvalidRequest("`views` must be `single` or `multi`", code="invalid_parameter", param="views")
        if not 1 <= opts.grid <= s.classify_max_grid:
            raise InvalidRequest(
                f"`grid` must be between 1 and {s.classify_max_grid} (KILN_CLASSIFY_MAX_GRID)",
                code="invalid_parameter",
                param="grid",
            )
        if not 0.0 <= opts.overlap <= 0.9:
            raise InvalidRequest("`overlap` must be between 0 and 0.9", code="invalid_parameter", param="overlap")
        if opts.aggregate not in AGGREGATIONS:
            raise InvalidRequest(
                f"`aggregate` must be one of {list(AGGREGATIONS)}", code="invalid_parameter", param="aggregate"
            )
        if opts.k < 1 or opts.top_k < 1:
            raise InvalidRequest("`k` and `top_k` must be >= 1", code="invalid_parameter")
        has_cal = self.calibration is not None
        if (opts.calibrated or opts.prediction_set) and not has_cal:
            raise InvalidRequest(
                f"model {self.name!r} has no calibration (export it with a calibration split)", code="not_calibrated"
            )
        calibrated = has_cal if opts.calibrated is None else opts.calibrated
        return ClassifyOptions(**{**asdict(opts), "calibrated": calibrated, "top_k": min(opts.top_k, len(self.labels))})

    # -- the data plane -----------------------------------------------------------------------
    def _prepare(self, data: bytes, index: int, opts: ClassifyOptions) -> _Prepared:
        t0 = time.perf_counter()
        image = decode_image(data, self.limits, index)
        t1 = time.perf_counter()
        names, views = make_views(image, self.contract, opts.views, opts.grid, opts.overlap, opts.tta_flip)
        t2 = time.perf_counter()
        self.metrics.classify_preprocess_s.labels(self.name).observe(t2 - t0)
        return _Prepared(names, views, image.width, image.height, t1 - t0, t2 - t1)

    def _views(self, p: _Prepared, probs_v: np.ndarray, opts: ClassifyOptions) -> list[dict]:
        """Each view's probabilities, its box in the image ([left, top, right, bottom] pixels; a
        mirrored view shares its original's), its confidence 1 - H(p)/log C and its weight in the
        aggregate (None where the aggregation does not weigh views)."""
        boxes = dict(view_boxes(p.width, p.height, opts.views, opts.grid, opts.overlap))
        weights = view_weights(probs_v, opts.aggregate)
        return [
            {
                "name": name,
                "probabilities": [round(float(x), 6) for x in row],
                "box": [round(v, 2) for v in boxes[name.split(":")[0]]],
                "confidence": round(float(conf), 6),
                "weight": None if weights is None else round(float(weights[i]), 6),
            }
            for i, (name, row, conf) in enumerate(zip(p.names, probs_v, confidence(probs_v), strict=True))
        ]

    async def classify(self, images: list[bytes], opts: ClassifyOptions, protocol: str = "http") -> dict:
        if self.draining:
            raise Unavailable("server is shutting down; retry on another replica", code="draining")
        if self.runner is None and self.batcher is None:
            raise Unavailable(f"model {self.name!r} is not ready", code="not_ready")
        opts = self.check(opts, len(images))
        self.busy += 1
        try:
            return await self._classify(images, opts, protocol)
        finally:
            self.busy -= 1

    async def _classify(self, images: list[bytes], opts: ClassifyOptions, protocol: str) -> dict:
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        prepared: list[_Prepared] = await asyncio.gather(
            *(loop.run_in_executor(self.pool, self._prepare, data, i, opts) for i, data in enumerate(images))
        )
        t_prep = time.perf_counter()
        views = np.concatenate([p.views for p in prepared])
        if self.runner is not None:
            logits = await self.runner.run(views)
            self.metrics.classify_batch.labels(self.name).observe(len(views))
            self.metrics.classify_inference_s.labels(self.name).observe(time.perf_counter() - t_prep)
        else:
            assert self.batcher is not None
            logits = await asyncio.wrap_future(self.batcher.submit(views))
        t_infer = time.perf_counter()
        self.metrics.classify_images.labels(self.name, protocol).inc(len(images))
        self.metrics.classify_views.labels(self.name, protocol).inc(len(views))

        pipeline = opts.pipeline
        cal = self.calibration
        temperature = cal.temperature[pipeline] if cal is not None and opts.calibrated else 1.0
        results, offset = [], 0
        for i, p in enumerate(prepared):
            v = len(p.names)
            probs_v = softmax(logits[offset : offset + v])
            offset += v
            probs = temper(aggregate(probs_v, opts.aggregate, opts.k), temperature)
            order = np.argsort(-probs, kind="stable")[: opts.top_k]
            result: dict = {
                "index": i,
                "width": p.width,
                "height": p.height,
                "num_views": v,
                "top": [{"label": self.labels[j], "index": int(j), "probability": float(probs[j])} for j in order],
            }
            if opts.prediction_set and cal is not None:
                conformal = cal.conformal
                members = prediction_set(probs, conformal.thresholds[pipeline], conformal.method)
                result["prediction_set"] = [self.labels[j] for j in members]
            if opts.return_views:
                result["views"] = self._views(p, probs_v, opts)
            result["timings"] = {"decode_ms": p.decode_s * 1000, "views_ms": p.views_s * 1000}
            results.append(result)
        total = time.perf_counter() - started
        timings = {
            "preprocess_ms": (t_prep - started) * 1000,
            "inference_ms": (t_infer - t_prep) * 1000,
            "total_ms": total * 1000,
        }
        calibration = None
        if cal is not None and (opts.calibrated or opts.prediction_set):
            calibration = {"pipeline": pipeline, "temperature": temperature}
            if opts.prediction_set:
                calibration |= {"method": cal.conformal.method, "coverage_target": cal.conformal.coverage_target}
        return {
            "model": self.name,
            "labels": self.labels,
            "options": asdict(opts),
            "calibration": calibration,
            "results": results,
            "timings": timings,
        }
