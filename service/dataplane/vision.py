"""Image classification for every transport: option fields and image bytes in, a result out.

`/classify` (query string, JSON or form fields) and gRPC `Classify` (proto fields) hand their
options over as a plain dict; they are validated here once, with the same messages and codes,
against the model (its calibrators, its number of held-out calibration images), and resolved:
the options a model serves have every default filled in.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.aggregate import AGGREGATIONS
from contracts.conformal import METHODS
from service.dataplane.caller import Caller
from service.errors import InvalidRequest, NotSupported
from service.metrics import Metrics
from service.vision.model import ClassifyOptions, VisionModel

MAX_LAMBDA = 10.0
CONFORMAL_OPTIONS = ("conformal", "alpha", "k_reg", "lam", "randomized", "seed")


class ClassifyParams(BaseModel):
    """The options of a classification request."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str | None = Field(None, description="Model name; optional when one classifier is loaded.")
    views: str = Field("multi", description="`single` (the whole image) or `multi` (global + grid×grid tiles).")
    grid: int = Field(3, description="Tiles per side for `multi` (<= KILN_CLASSIFY_MAX_GRID).")
    overlap: float = Field(0.25, description="Fraction of a tile shared with its neighbour, 0-0.9.")
    tta_flip: bool = Field(False, description="Add the horizontal mirror of every view.")
    aggregate: str = Field("confidence_weighted", description="mean | max | topk_mean | confidence_weighted.")
    k: int = Field(3, description="k for topk_mean.")
    top_k: int = Field(5, description="Labels returned per image.")
    calibrated: bool | None = Field(None, description="Apply a calibrator (default: when the model has some).")
    calibrator: str | None = Field(
        None, description="none | temperature | vector | dirichlet | isotonic | beta (default: the model's choice)."
    )
    prediction_set: bool = Field(False, description="Return the split-conformal prediction set.")
    conformal: str | None = Field(None, description="Conformal method: lac | aps | raps (default: the model's).")
    alpha: float | None = Field(None, description="Miscoverage: the set holds the label with probability 1 - alpha.")
    k_reg: int | None = Field(None, description="RAPS: ranks up to k_reg are not penalised.")
    lam: float | None = Field(None, alias="lambda", description="RAPS: penalty per rank beyond k_reg.")
    randomized: bool | None = Field(None, description="APS/RAPS: randomised scores (exact coverage, not conservative).")
    seed: int | None = Field(None, description="Seed of a randomised set (default: fresh randomness).")
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


def _bad(message: str, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, code="invalid_parameter", param=param)


def check_options(model: VisionModel, opts: ClassifyOptions, n_images: int) -> ClassifyOptions:
    """Validate a request's options against the server's limits and the model; fill in defaults."""
    s = model.settings
    if n_images == 0:
        raise InvalidRequest("no image in the request", code="no_images")
    if n_images > s.classify_max_images:
        raise InvalidRequest(
            f"{n_images} images exceed the limit of {s.classify_max_images} per request (KILN_CLASSIFY_MAX_IMAGES)",
            code="too_many_images",
        )
    if opts.views not in ("single", "multi"):
        raise _bad("`views` must be `single` or `multi`", "views")
    if not 1 <= opts.grid <= s.classify_max_grid:
        raise _bad(f"`grid` must be between 1 and {s.classify_max_grid} (KILN_CLASSIFY_MAX_GRID)", "grid")
    if not 0.0 <= opts.overlap <= 0.9:
        raise _bad("`overlap` must be between 0 and 0.9", "overlap")
    if opts.aggregate not in AGGREGATIONS:
        raise _bad(f"`aggregate` must be one of {list(AGGREGATIONS)}", "aggregate")
    if opts.k < 1 or opts.top_k < 1:
        raise _bad("`k` and `top_k` must be >= 1")
    given = [name for name in CONFORMAL_OPTIONS if getattr(opts, name) is not None]
    if given and not opts.prediction_set:
        wire = "lambda" if given[0] == "lam" else given[0]
        raise _bad(f"`{wire}` applies to prediction sets: add prediction_set=true", wire)
    cal = model.calibration
    wants_calibration = opts.calibrated or opts.prediction_set or opts.calibrator not in (None, "none")
    if cal is None:
        if wants_calibration:
            raise InvalidRequest(
                f"model {model.name!r} has no calibration (export it with a calibration split)", code="not_calibrated"
            )
        return ClassifyOptions(**{**asdict(opts), "calibrated": False, "top_k": min(opts.top_k, len(model.labels))})
    pipeline = cal.pipelines[opts.pipeline]
    if opts.calibrator is not None and opts.calibrator not in pipeline.calibrators:
        raise _bad(f"`calibrator` must be one of {sorted(pipeline.calibrators)}", "calibrator")
    if opts.calibrated is False and opts.calibrator not in (None, "none"):
        raise _bad(f"calibrated=false contradicts calibrator={opts.calibrator}", "calibrator")
    calibrated = opts.calibrated is not False
    calibrator = "none" if not calibrated else (opts.calibrator or pipeline.default)
    resolved = {**asdict(opts), "calibrated": calibrated, "calibrator": calibrator}
    resolved["top_k"] = min(opts.top_k, len(model.labels))
    if opts.prediction_set:
        resolved |= _conformal_options(opts, cal.conformal, pipeline.n_holdout, pipeline.min_alpha, len(model.labels))
    return ClassifyOptions(**resolved)


def _conformal_options(opts: ClassifyOptions, defaults, n: int, min_alpha: float, classes: int) -> dict:  # type: ignore[no-untyped-def]
    method = opts.conformal or defaults.method
    if method not in METHODS:
        raise _bad(f"`conformal` must be one of {list(METHODS)}", "conformal")
    alpha = defaults.alpha if opts.alpha is None else opts.alpha
    if not min_alpha <= alpha < 1.0:
        raise _bad(
            f"`alpha` must be in [{min_alpha:.4g}, 1): with {n} held-out calibration images the smallest "
            f"miscoverage is 1/(n+1)",
            "alpha",
        )
    k_reg = defaults.k_reg if opts.k_reg is None else opts.k_reg
    lam = defaults.lam if opts.lam is None else opts.lam
    if method == "raps" and not 0 <= k_reg <= classes:
        raise _bad(f"`k_reg` must be between 0 and {classes}", "k_reg")
    if method == "raps" and not 0.0 <= lam <= MAX_LAMBDA:
        raise _bad(f"`lambda` must be between 0 and {MAX_LAMBDA:g}", "lambda")
    if method != "raps" and (opts.k_reg is not None or opts.lam is not None):
        raise _bad("`k_reg` and `lambda` apply to conformal=raps", "k_reg" if opts.k_reg is not None else "lambda")
    randomized = defaults.randomized if opts.randomized is None else opts.randomized
    if method == "lac" and opts.randomized:
        raise _bad("`randomized` applies to conformal=aps and raps (LAC scores need no randomisation)", "randomized")
    if opts.seed is not None and not (randomized and method != "lac"):
        raise _bad("`seed` applies to randomized=true", "seed")
    if opts.seed is not None and opts.seed < 0:
        raise _bad("`seed` must be >= 0", "seed")
    return {
        "conformal": method,
        "alpha": alpha,
        "k_reg": k_reg if method == "raps" else None,
        "lam": lam if method == "raps" else None,
        "randomized": randomized if method != "lac" else None,
    }


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
        opts = check_options(model, params.options(), len(images))
        return await model.classify(images, opts, protocol=caller.protocol)
