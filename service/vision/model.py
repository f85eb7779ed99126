"""A served classifier: contract + calibration + ONNX Runtime session + dynamic batcher.

With KILN_BACKEND=triton a `runner` (service/backends/triton_vision.py) replaces the session and
the batcher: the crops of a request go to Triton as one batched infer; everything else is the same.

`classify` serves one request with validated options; the data plane (service/dataplane/vision.py)
resolves the model and the options for REST and gRPC alike.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from contracts.aggregate import aggregate, confidence, softmax, view_weights
from contracts.calibration import Calibration
from contracts.conformal import ConformalMethod, sets
from contracts.manifest import VisionManifest, read_json
from contracts.vision import PreprocessContract, make_views, view_boxes
from service.backends.ort_session import cpu_session
from service.backends.triton_vision import TritonClassifierRunner
from service.errors import Unavailable
from service.metrics import Metrics
from service.settings import Settings
from service.vision.batcher import BatchObserver, DynamicBatcher
from service.vision.drift import DriftMonitor
from service.vision.preprocess import ImageLimits, decode_image
from service.vision.views import ViewsGraph

log = logging.getLogger("kiln.vision")
GIL_SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class ClassifyOptions:
    views: str = "multi"
    grid: int = 3
    overlap: float = 0.25
    tta_flip: bool = False
    aggregate: str = "confidence_weighted"
    k: int = 3  # for topk_mean
    top_k: int = 5
    calibrated: bool | None = None  # None: calibrated when the model has a calibration
    calibrator: str | None = None  # None: the calibration's default for the pipeline
    prediction_set: bool = False
    conformal: str | None = None  # lac | aps | raps (None: calibration.json's default)
    alpha: float | None = None
    k_reg: int | None = None  # RAPS
    lam: float | None = None  # RAPS λ (`lambda` on the wire)
    randomized: bool | None = None  # APS / RAPS
    seed: int | None = None  # the randomisation's seed (randomised sets only; None: fresh)
    return_views: bool = False

    @property
    def pipeline(self) -> str:
        """Which fitted calibrators and conformal holdout apply (see calibration.json)."""
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
            # No spinning: between runs the cores decode and cut the next requests' views.
            path = manifest.path(manifest.files["fp32"])
            self.session = cpu_session(path, settings.intra_op_threads, spinning=False)
        self.limits = ImageLimits(
            formats=frozenset(f.strip().upper() for f in settings.image_formats.split(",") if f.strip()),
            max_pixels=settings.max_image_pixels,
            max_side=settings.max_image_side,
        )
        self.views_graph: ViewsGraph | None = None
        if manifest.views:
            try:
                self.views_graph = ViewsGraph(manifest.path(manifest.views), contract)
            except ValueError as exc:  # a resize the graph does not implement: Pillow cuts the views
                log.warning("%s: views graph not used (%s); views are cut with Pillow", self.name, exc)
        self.drift: DriftMonitor | None = None
        if self.calibration is not None:
            self.drift = DriftMonitor(
                self.name,
                {p: c.reference for p, c in self.calibration.pipelines.items()},
                metrics,
                settings.classify_drift_window,
                settings.classify_drift_min_images,
                settings.classify_drift_period_s,
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
        if self.views_graph is not None:  # and the views graph, for the common square case
            self.views_graph.views(Image.new("RGB", (4 * w, 4 * h)), "multi", 3, 0.25, True)
        # When a run ends, the batcher thread needs the GIL back to hand out the logits and start
        # the next run; the event loop may hold it for many requests' worth of Python. Python's
        # default 5 ms switch interval would leave the cores idle that long after every run.
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
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

    # -- the data plane -----------------------------------------------------------------------
    def fitted_for(self, opts: ClassifyOptions) -> bool:
        """Whether the request's views and aggregation are the ones calibration.json was fitted on
        (otherwise the nearest pipeline's calibrators apply, approximately)."""
        fitted = self.calibration.fitted_on if self.calibration is not None else {}
        same_views = opts.views == "single" or (
            opts.grid == int(fitted.get("grid", 3)) and opts.overlap == float(fitted.get("overlap", 0.25))
        )
        return same_views and opts.aggregate == fitted.get("aggregate", "confidence_weighted")

    def _prepare(self, data: bytes, index: int, opts: ClassifyOptions) -> _Prepared:
        t0 = time.perf_counter()
        image = decode_image(data, self.limits, index)
        t1 = time.perf_counter()
        out = None
        if self.views_graph is not None:
            out = self.views_graph.views(image, opts.views, opts.grid, opts.overlap, opts.tta_flip)
        names, views = (
            out
            if out is not None
            else make_views(image, self.contract, opts.views, opts.grid, opts.overlap, opts.tta_flip)
        )
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
        """Serve one request whose options service/dataplane/vision.py has validated and resolved."""
        if self.draining:
            raise Unavailable("server is shutting down; retry on another replica", code="draining")
        if self.runner is None and self.batcher is None:
            raise Unavailable(f"model {self.name!r} is not ready", code="not_ready")
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
        views = np.concatenate([p.views for p in prepared]) if len(prepared) > 1 else prepared[0].views
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
        bounds = np.cumsum([0, *[len(p.names) for p in prepared]])
        view_probs = [softmax(logits[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        raw = np.stack([aggregate(v, opts.aggregate, opts.k) for v in view_probs])
        cal = self.calibration.pipelines[pipeline] if self.calibration is not None else None
        probs = cal.calibrators[opts.calibrator].apply(raw) if cal is not None and opts.calibrator else raw
        fitted = self.fitted_for(opts)
        if self.drift is not None and fitted:
            self.drift.record(pipeline, raw)
        calibration, members = self._conformal(cal, probs, opts, fitted)
        results = []
        for i, p in enumerate(prepared):
            order = np.argsort(-probs[i], kind="stable")
            result: dict = {
                "index": i,
                "width": p.width,
                "height": p.height,
                "num_views": len(p.names),
                "top": [
                    {"label": self.labels[j], "index": int(j), "probability": float(probs[i, j])}
                    for j in order[: opts.top_k]
                ],
            }
            if members is not None:
                result["prediction_set"] = [self.labels[j] for j in order if members[i, j]]
            if opts.return_views:
                result["views"] = self._views(p, view_probs[i], opts)
            result["timings"] = {"decode_ms": p.decode_s * 1000, "views_ms": p.views_s * 1000}
            results.append(result)
        total = time.perf_counter() - started
        timings = {
            "preprocess_ms": (t_prep - started) * 1000,
            "inference_ms": (t_infer - t_prep) * 1000,
            "total_ms": total * 1000,
        }
        options = asdict(opts)
        options["lambda"] = options.pop("lam")
        return {
            "model": self.name,
            "labels": self.labels,
            "options": options,
            "calibration": calibration,
            "results": results,
            "timings": timings,
        }

    def _conformal(self, cal, probs: np.ndarray, opts: ClassifyOptions, fitted: bool):  # type: ignore[no-untyped-def]
        """(the response's `calibration` block, set membership [B, C] or None)."""
        if cal is None or not (opts.calibrated or opts.prediction_set):
            return None, None
        block: dict = {"pipeline": opts.pipeline, "calibrator": opts.calibrator, "fitted_for_request": fitted}
        if not opts.prediction_set:
            return block, None
        assert self.calibration is not None and opts.conformal is not None and opts.alpha is not None
        rule = ConformalMethod(opts.conformal, bool(opts.randomized), int(opts.k_reg or 0), float(opts.lam or 0.0))
        qhat = cal.qhat(opts.calibrator or "none", rule, opts.alpha, self.calibration.conformal.seed)
        u = np.random.default_rng(opts.seed).random(len(probs)) if opts.randomized else None
        block |= {
            "method": rule.method,
            "alpha": opts.alpha,
            "coverage_target": 1.0 - opts.alpha,
            "threshold": qhat,
            "calibration_images": cal.n_holdout,
        }
        if rule.method == "raps":
            block |= {"k_reg": rule.k_reg, "lambda": rule.lam}
        if rule.method != "lac":
            block["randomized"] = rule.randomized
        return block, sets(probs, qhat, rule, u)
