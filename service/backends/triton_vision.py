"""A classifier whose network runs in Triton (KILN_BACKEND=triton).

The gateway keeps decoding, tiling, TTA, aggregation, calibration and prediction sets (the
in-process VisionModel code, unchanged); only the ONNX Runtime session is replaced: the crops
of one request go to Triton as ONE batched unary infer on the shared gRPC channel, addressed
to the classifier's repository entry (platform onnxruntime_onnx + dynamic_batching, written by
`kiln export`). Triton's dynamic batcher merges concurrent requests, so the gateway's own
DynamicBatcher is not used. A request with more crops than the entry's `max_batch_size` is
sent as several infers of at most that size, concurrently.
"""

from __future__ import annotations

import asyncio

import numpy as np

from service.backends.triton_client import TritonConnection, TritonModelHandle
from service.errors import KilnError


class TritonClassifierRunner(TritonModelHandle):
    def __init__(
        self, connection: TritonConnection, triton_model: str, input_name: str, output_name: str, max_batch: int
    ) -> None:
        super().__init__(connection, triton_model)
        self.input_name = input_name
        self.output_name = output_name
        self.default_max_batch = max_batch

    @property
    def max_batch(self) -> int:
        """Triton's max_batch_size for the entry (read once by the readiness monitor)."""
        return int(self.triton_config.get("max_batch_size") or 0) or self.default_max_batch

    async def run(self, views: np.ndarray) -> np.ndarray:
        """Logits [V, classes] for crops [V, 3, H, W]; 503 with a code when Triton cannot answer."""
        self.connection.check(self.triton_model)
        views = np.ascontiguousarray(views, np.float32)
        step = self.max_batch
        chunks = [views[i : i + step] for i in range(0, len(views), step)]
        try:
            outs = await asyncio.gather(
                *(self.connection.infer(self.triton_model, {self.input_name: c}, [self.output_name]) for c in chunks)
            )
        except KilnError as exc:
            self.connection.mark_unavailable(self.triton_model, exc)
            raise
        logits = [o[self.output_name] for o in outs]
        return logits[0] if len(logits) == 1 else np.concatenate(logits)
