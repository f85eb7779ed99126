"""Liveness, readiness, model listing and Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.schemas import CONTROL, ERRORS, ModelCard, ModelList

router = APIRouter(tags=[CONTROL])

# Probes and scrapes need no API key (everything else does when keys are configured).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


@router.get("/healthz")
async def healthz() -> dict:
    """Liveness: the process answers. Model state lives in /readyz."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "loading, draining or no model"}, 404: {"description": "no such model"}},
)
async def readyz(request: Request, model: str | None = None) -> JSONResponse:
    """Ready when loading is over and at least one model serves; a model that failed to load is
    listed under `failed` without taking the others down, one still being built (a `.pending`
    entry, service/registry.py) as `loading`. `?model=NAME` asks about one model."""
    reg = request.app.state.registry
    if model is not None:
        served = reg.models.get(model)
        ok = reg.loaded and served is not None and served.ready and not reg.draining
        if ok:
            state = "ready"
        elif served is not None:
            state = "draining" if reg.draining else "unavailable"
        elif model in reg.pending:
            state = "failed" if reg.pending[model] else "loading"
        else:
            state = "failed" if model in reg.failed else "loading" if not reg.loaded else "absent"
        detail = {"model": model, "ready": ok, "state": state, "error": reg.failed.get(model) or reg.pending.get(model)}
        return JSONResponse(detail, status_code=200 if ok else 404 if state == "absent" else 503)
    body = {
        "ready": reg.ready and not reg.draining,
        "draining": reg.draining,
        "models": {
            **{name: "failed" if why else "loading" for name, why in reg.pending.items()},
            **{name: "ready" if m.ready else "unavailable" for name, m in reg.models.items()},
        },
        "failed": reg.failed,
    }
    if not reg.loaded:
        body["reason"] = "loading models"
    elif not reg.models:
        body["reason"] = "no model loaded"
    elif reg.draining:
        body["reason"] = "draining"
    elif not body["ready"]:
        body["reason"] = "; ".join(f"{n}: {m.unavailable_reason}" for n, m in reg.models.items() if not m.ready)
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


@router.get("/v1/models", response_model=ModelList, responses={k: ERRORS[k] for k in (401, 403)})
async def list_models(request: Request) -> ModelList:
    reg = request.app.state.registry
    cards = [
        ModelCard(id=name, created=reg.created, kind=m.kind, ready=m.ready, context_length=m.context_length)
        for name, m in reg.models.items()
    ]
    return ModelList(data=cards)


@router.get("/metrics", responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
