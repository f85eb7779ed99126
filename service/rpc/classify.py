"""gRPC Classify: proto fields ⇄ the options and result of the vision data plane."""

from __future__ import annotations

from service.rpc import kiln_v1_pb2 as pb


def to_fields(req: pb.ClassifyRequest) -> dict:
    """Unset proto fields (empty strings, zeros) keep the REST defaults. proto3 booleans default
    to false, so `calibrated` is only applied when set."""
    fields: dict = {
        "tta_flip": req.tta_flip,
        "calibrated": req.calibrated,
        "prediction_set": req.prediction_set,
        "return_views": req.return_views,
    }
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
    return pb.ClassifyResponse(model=out["model"], results=results)
