"""Every HTTP error in Kiln's shape, mapped once: Kiln's own, FastAPI's and Starlette's.

The body is `{"error": {"code", "message", "type", "param"}}` whatever went wrong: a KilnError
from the data plane, a request FastAPI could not parse, a path or method no route serves, or a
bug (500 `internal_error`, logged with the request id).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.errors import InvalidRequest, KilnError

log = logging.getLogger("kiln.app")

HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def error_response(exc: KilnError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.http_status, headers=exc.headers)


def describe_validation_error(exc: RequestValidationError) -> InvalidRequest:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return InvalidRequest("request body is not valid JSON", code="invalid_json")
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    if first.get("type") == "extra_forbidden":
        return InvalidRequest(f"unknown parameter `{loc}`", code="unknown_parameter", param=loc)
    return InvalidRequest(f"`{loc}`: {first.get('msg', 'invalid value')}", code="invalid_parameter", param=loc)


def from_http_exception(exc: HTTPException, request: Request) -> KilnError:
    """Starlette's own errors (no route, wrong method...) as Kiln errors with a stable code."""
    code = HTTP_CODES.get(exc.status_code, "http_error")
    if exc.status_code == 404:
        message = f"no route {request.url.path!r}; see /docs for the API"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path!r}"
    else:
        message = str(exc.detail)
    err = KilnError(message, code=code, headers=dict(exc.headers or {}))
    err.http_status = exc.status_code
    return err


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KilnError)
    async def kiln_error(_: Request, exc: KilnError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(describe_validation_error(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(from_http_exception(exc, request))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(KilnError("internal error", code="internal_error"))
