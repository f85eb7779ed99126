"""GET /: the playground, a page that talks to this gateway's own API from the browser.

Its files are fixed at import time (one route each, so request metrics label them by path) and
need no API key: the page holds a key the user types and sends it only with API calls.
`KILN_PLAYGROUND=false` turns every one of these routes into a 404.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from service.api.schemas import CONTROL
from service.errors import KilnError
from service.playground import STATIC
from service.settings import Settings

log = logging.getLogger("kiln.playground")

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
FILES = tuple(sorted(p.name for p in STATIC.iterdir() if p.suffix in MEDIA_TYPES and p.name != "index.html"))
CONFIG_PATH = "/playground/config.json"
PUBLIC_PATHS = frozenset({"/", CONFIG_PATH, *(f"/playground/{name}" for name in FILES)})
CHAT_PATH = "/v1/chat/completions"

router = APIRouter(tags=[CONTROL])


class PageNotFound(KilnError):
    code = "not_found"
    http_status = 404


def _check_enabled(request: Request) -> None:
    if not request.app.state.settings.playground:
        raise PageNotFound("the playground is off on this server (KILN_PLAYGROUND=false)")


def _file(name: str) -> FileResponse:
    return FileResponse(
        STATIC / name, media_type=MEDIA_TYPES[(STATIC / name).suffix], headers={"Cache-Control": "no-cache"}
    )


@router.get("/", include_in_schema=False)
async def index(request: Request) -> FileResponse:
    _check_enabled(request)
    return _file("index.html")


@router.get(CONFIG_PATH, include_in_schema=False)
async def config(request: Request) -> dict:
    """What the page adapts to: whether it must ask for a key, and which text routes exist."""
    _check_enabled(request)
    paths = request.app.openapi().get("paths", {})  # built once, then cached by FastAPI
    return {"api_keys": request.app.state.api_keys.enabled, "chat": CHAT_PATH in paths}


def _static_route(name: str) -> Callable[[Request], Awaitable[FileResponse]]:
    async def serve_file(request: Request) -> FileResponse:
        _check_enabled(request)
        return _file(name)

    return serve_file


for _name in FILES:
    router.add_api_route(f"/playground/{_name}", _static_route(_name), methods=["GET"], include_in_schema=False)


def announce(settings: Settings) -> None:
    """Say where the page is once the gateway is up (a person starting `make serve` opens it)."""
    if settings.playground:
        host = "localhost" if settings.host in ("0.0.0.0", "::", "") else settings.host
        log.info("playground: http://%s:%d/", host, settings.port)
