"""The FastAPI application: wiring only. Routes live in service/api, logic in service/dataplane."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from service.api import health, playground
from service.api.routes import ROUTERS
from service.auth import ApiKeys
from service.dataplane.chat import ChatDataPlane
from service.dataplane.text import TextDataPlane
from service.dataplane.vision import VisionDataPlane
from service.http.errors import install_error_handlers
from service.http.middleware import AuthMiddleware, ObservabilityMiddleware
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.settings import Settings, get_settings


def route_tasks(routers: tuple[APIRouter, ...]) -> dict[str, str]:
    """Every route's path → its task (first OpenAPI tag): the `route` and `task` metric labels."""
    return {
        r.path: str(r.tags[0]) if r.tags else "none"
        for router in routers
        for r in router.routes
        if isinstance(r, APIRoute)
    }


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()
    registry = ModelRegistry(settings, metrics)
    text, vision = TextDataPlane(registry, metrics), VisionDataPlane(registry, metrics)
    chat = ChatDataPlane(text)
    keys = ApiKeys.from_settings(
        settings.api_keys.get_secret_value() if settings.api_keys else None, settings.api_keys_file
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        # Load in the background: /healthz answers at once, /readyz turns 200 when warm.
        loader = asyncio.get_running_loop().run_in_executor(None, registry.load_all)
        loader.add_done_callback(lambda _: playground.announce(settings))
        grpc_server = None
        if settings.grpc_port:
            from service.rpc.server import GrpcServer

            grpc_server = GrpcServer(registry, text, vision, metrics, settings.host, settings.grpc_port, keys)
            await grpc_server.start()
        app.state.grpc = grpc_server
        yield
        registry.draining = True
        if grpc_server is not None:
            await grpc_server.stop(grace=1.0)
        await loader  # never close models that are still loading
        registry.close()

    app = FastAPI(title="Kiln", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.registry = registry
    app.state.text = text
    app.state.chat = chat
    app.state.vision = vision
    app.state.api_keys = keys
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    tasks = route_tasks(ROUTERS)
    # Added first = runs inside the observability middleware, so 401s are counted and carry a request id.
    app.add_middleware(AuthMiddleware, keys=keys, exempt=health.PUBLIC_PATHS | playground.PUBLIC_PATHS)
    app.add_middleware(
        ObservabilityMiddleware,
        metrics=metrics,
        routes=tasks,
        max_body_bytes=settings.max_body_bytes,
        max_header_bytes=settings.max_header_bytes,
        path_limits={"/classify": (settings.classify_max_body_bytes, "KILN_CLASSIFY_MAX_BODY_BYTES")},
    )
    return app
