"""gRPC Classify: proto fields ⇄ the options and result of the vision data plane."""

from __future__ import annotations

from service.rpc import kiln_v1_pb2 as pb

OPTIONAL = {  # proto field -> option name, passed on only when set (proto3 `optional`)
    "calibrated": "calibrated",
    "grid": "grid",
    "overlap": "overlap",
    "alpha": "alpha",
    "k_reg": "k_reg",
    "raps_lambda": "lambda",
    "randomized": "randomized",
    "seed": "seed",
}


def to_fields(req: pb.ClassifyRequest) -> dict:
    """Unset proto fields (empty strings, zeros, absent optionals) keep the REST defaults; the
    data plane validates the result exactly as it validates a REST request."""
    fields: dict = {
        "tta_flip": req.tta_flip,
        "prediction_set": req.prediction_set,
        "return_views": req.return_views,
    }
    for proto_name, option in OPTIONAL.items():
        if req.HasField(proto_name):
            value = getattr(req, proto_name)
            fields[option] = round(value, 6) if isinstance(value, float) else value  # float32 on the wire
    for name in ("calibrator", "conformal"):
        if getattr(req, name):
            fields[name] = getattr(req, name)
    if req.model:
        fields["model"] = req.model
    if req.views:
        fields["views"] = req.views
    if req.aggregate:
        fields["aggregate"] = req.aggregate
    if req.topk_k:
        fields["k"] = req.topk_k
    if req.top_k:
        fields["top_k"] = req.top_k
    return fields


def to_response(out: dict) -> pb.ClassifyResponse:
    results = []
    for r in out["results"]:
        item = pb.ImageResult(
            top=[pb.LabelScore(label=t["label"], probability=t["probability"]) for t in r["top"]],
            prediction_set=r.get("prediction_set", []),
            views=[pb.ViewScores(name=v["name"], probabilities=v["probabilities"]) for v in r.get("views", [])],
        )
        item.timings_ms.update({**r["timings"], **out["timings"]})
        results.append(item)
    cal = out.get("calibration")
    calibration = None
    if cal:
        calibration = pb.ClassifyCalibration(
            pipeline=cal["pipeline"],
            calibrator=cal["calibrator"],
            fitted_for_request=cal["fitted_for_request"],
            method=cal.get("method", ""),
            alpha=cal.get("alpha", 0.0),
            coverage_target=cal.get("coverage_target", 0.0),
            threshold=cal.get("threshold", 0.0),
            calibration_images=cal.get("calibration_images", 0),
        )
    return pb.ClassifyResponse(model=out["model"], results=results, calibration=calibration)
