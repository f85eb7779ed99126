"""Image classification for every transport: option fields and image bytes in, a result out.

`/classify` (query string, JSON or form fields) and gRPC `Classify` (proto fields) hand their
options over as a plain dict; they are validated here once, with the same messages and codes.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.dataplane.caller import Caller
from service.errors import InvalidRequest, NotSupported
from service.metrics import Metrics
from service.vision.model import ClassifyOptions, VisionModel


class ClassifyParams(BaseModel):
    """The options of a classification request."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="Model name; optional when one classifier is loaded.")
    views: str = Field("multi", description="`single` (the whole image) or `multi` (global + grid×grid tiles).")
    grid: int = Field(3, description="Tiles per side for `multi` (<= KILN_CLASSIFY_MAX_GRID).")
    overlap: float = Field(0.25, description="Fraction of a tile shared with its neighbour, 0-0.9.")
    tta_flip: bool = Field(False, description="Add the horizontal mirror of every view.")
    aggregate: str = Field("confidence_weighted", description="mean | max | topk_mean | confidence_weighted.")
    k: int = Field(3, description="k for topk_mean.")
    top_k: int = Field(5, description="Labels returned per image.")
    calibrated: bool | None = Field(None, description="Apply the fitted temperature (default: when available).")
    prediction_set: bool = Field(False, description="Return the split-conformal prediction set.")
    return_views: bool = Field(
        False, description="Return every view: probabilities, box, confidence and weight in the aggregate."
    )

    def options(self) -> ClassifyOptions:
        return ClassifyOptions(**self.model_dump(exclude={"model"}))


def parse_params(fields: dict) -> ClassifyParams:
    try:
        return ClassifyParams(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise InvalidRequest(f"unknown parameter `{loc}`", code="unknown_parameter", param=loc) from exc
        raise InvalidRequest(f"`{loc}`: {first['msg']}", code="invalid_parameter", param=loc) from exc


class VisionRegistry(Protocol):
    loaded: bool
    draining: bool
    vision: dict[str, VisionModel]
    pending: dict[str, str]
    failed: dict[str, str]

    def vision_model(self, name: str | None) -> VisionModel: ...


class VisionDataPlane:
    def __init__(self, registry: VisionRegistry, metrics: Metrics) -> None:
        self.registry = registry
        self.metrics = metrics

    def model(self, caller: Caller, name: str | None) -> VisionModel:
        reg = self.registry
        coming = reg.pending or (name and name in reg.failed)  # 503 with the reason, not "no classifier"
        if reg.loaded and not reg.vision and not coming and not reg.draining:
            raise NotSupported("image classification is not available on this server (no classifier loaded)")
        model = reg.vision_model(name or None)  # an empty name (proto3's unset string) means "the only one"
        caller.authorize(model.name)
        return model

    async def classify(self, caller: Caller, images: list[bytes], fields: dict) -> dict:
        params = parse_params(fields)
        model = self.model(caller, params.model)
        return await model.classify(images, params.options(), protocol=caller.protocol)
