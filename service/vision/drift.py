"""Is live traffic still what the classifier was calibrated on? A rolling window per pipeline.

Each classified image adds its predicted class and top-1 confidence (of the uncalibrated
aggregated distribution) to a window of the last `window` images of its view pipeline. At most
every `period_s` seconds the window is compared with the calibration split's reference
(contracts/drift.py) and the gauges `kiln_classify_drift_psi{model, pipeline}` and
`kiln_classify_drift_ks{model, pipeline}` are set; they appear once the window holds `min_images`.

Only requests made the way the reference was (the fitted aggregation, grid and overlap) are
recorded: another aggregation has a different confidence distribution and would read as drift.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from contracts.drift import DriftReference, drift
from service.metrics import Metrics


class _Window:
    def __init__(self, size: int) -> None:
        self.classes: deque[int] = deque(maxlen=size)
        self.confidences: deque[float] = deque(maxlen=size)
        self.updated = -float("inf")


class DriftMonitor:
    def __init__(
        self,
        model: str,
        references: dict[str, DriftReference],
        metrics: Metrics,
        window: int = 1000,
        min_images: int = 200,
        period_s: float = 15.0,
    ) -> None:
        self.model = model
        self.references = references
        self.metrics = metrics
        self.min_images = min(min_images, window)
        self.period_s = period_s
        self.windows = {p: _Window(window) for p in references}
        self.lock = threading.Lock()
        self.last: dict[str, tuple[float, float]] = {}  # pipeline -> (psi, ks) last exported

    def record(self, pipeline: str, probs: np.ndarray, now: float | None = None) -> None:
        """probs [B, C]: the uncalibrated aggregated distributions of a request's images."""
        w = self.windows.get(pipeline)
        if w is None:
            return
        now = time.monotonic() if now is None else now
        with self.lock:
            w.classes.extend(int(c) for c in probs.argmax(axis=1))
            w.confidences.extend(float(c) for c in probs.max(axis=1))
            if len(w.classes) < self.min_images or now - w.updated < self.period_s:
                return
            w.updated = now
            classes, confidences = np.fromiter(w.classes, np.int64), np.fromiter(w.confidences, np.float64)
        psi, ks = drift(self.references[pipeline], classes, confidences)
        self.last[pipeline] = (psi, ks)
        self.metrics.classify_drift_psi.labels(self.model, pipeline).set(psi)
        self.metrics.classify_drift_ks.labels(self.model, pipeline).set(ks)
        self.metrics.classify_drift_images.labels(self.model, pipeline).set(len(classes))
