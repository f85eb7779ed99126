"""What a route handler takes from the app: the data planes and who the caller is."""

from __future__ import annotations

from fastapi import Request

from service.auth import current_principal
from service.dataplane.caller import Caller
from service.dataplane.chat import ChatDataPlane
from service.dataplane.text import TextDataPlane
from service.dataplane.vision import VisionDataPlane


def caller_of(request: Request, protocol: str) -> Caller:
    """The caller as the HTTP middleware identified it (request id, API key's principal)."""
    return Caller(protocol, current_principal.get(), getattr(request.state, "request_id", ""))


def text_plane(request: Request) -> TextDataPlane:
    return request.app.state.text


def chat_plane(request: Request) -> ChatDataPlane:
    return request.app.state.chat


def vision_plane(request: Request) -> VisionDataPlane:
    return request.app.state.vision
