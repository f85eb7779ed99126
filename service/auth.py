"""Optional API keys: who may call Kiln, and which models each key may use.

Keys come from `KILN_API_KEYS` (comma-separated) and/or `KILN_API_KEYS_FILE` (one per line,
`#` comments), each `KEY` (every model) or `KEY:model-a|model-b`. With no keys configured the
gateway is open. Keys are compared in constant time and never logged: the only thing that
identifies a caller in logs and metrics is a short SHA-256 fingerprint.

The caller is kept in a context variable set by the HTTP middleware (or the gRPC handler
wrapper), so the registry can refuse a model the key may not use without every route having
to pass the caller along.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from service.errors import KilnError

EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class Unauthenticated(KilnError):
    code = "invalid_api_key"
    http_status = 401

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": 'Bearer realm="kiln"'})


class Forbidden(KilnError):
    code = "model_forbidden"
    http_status = 403


@dataclass(frozen=True)
class Principal:
    fingerprint: str  # sha256(key)[:12]: safe to log
    models: frozenset[str] | None  # None = every model

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar("kiln_principal", default=None)


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def parse_entries(lines: Iterable[str]) -> dict[str, frozenset[str] | None]:
    keys: dict[str, frozenset[str] | None] = {}
    for raw in lines:
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        key, _, models = entry.partition(":")
        key = key.strip()
        if len(key) < 8:
            raise ValueError(f"API key {fingerprint(key)} is shorter than 8 characters")
        names = frozenset(m.strip() for m in models.split("|") if m.strip())
        keys[key] = names or None
    return keys


class ApiKeys:
    def __init__(self, keys: dict[str, frozenset[str] | None]) -> None:
        self._keys = keys

    @classmethod
    def from_settings(cls, inline: str | None, file: Path | None) -> ApiKeys:
        keys = parse_entries((inline or "").split(","))
        if file is not None:
            keys.update(parse_entries(Path(file).read_text().splitlines()))
        return cls(keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, authorization: str | None, api_key: str | None) -> Principal:
        """From an `Authorization: Bearer KEY` or `X-API-Key: KEY` header; raises Unauthenticated."""
        token = api_key
        if token is None and authorization:
            scheme, _, value = authorization.partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        if not token:
            raise Unauthenticated(
                "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key`", code="missing_api_key"
            )
        found = None
        for key, models in self._keys.items():  # constant-time compare against every key
            if hmac.compare_digest(key.encode(), token.encode()):
                found = Principal(fingerprint(key), models)
        if found is None:
            raise Unauthenticated("the API key is not valid", code="invalid_api_key")
        return found


def authorize_model(name: str) -> None:
    """Raise Forbidden when the current caller's key may not use `name`."""
    principal = current_principal.get()
    if principal is not None and not principal.may_use(name):
        raise Forbidden(f"this API key may not use model {name!r}")


class AuthMiddleware:
    """Pure ASGI: authenticate every HTTP request except health and metrics."""

    def __init__(self, app, keys: ApiKeys) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http" or not self.keys.enabled or scope["path"] in EXEMPT_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            principal = self.keys.authenticate(_header(headers, b"authorization"), _header(headers, b"x-api-key"))
        except Unauthenticated as exc:
            from service.app import error_response

            return await error_response(exc)(scope, receive, send)
        token = current_principal.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            current_principal.reset(token)


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return value.decode("latin-1") if value is not None else None
