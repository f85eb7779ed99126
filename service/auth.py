"""Optional API keys: who may call Kiln, and which models each key may use.

Keys come from `KILN_API_KEYS` (comma-separated) and/or `KILN_API_KEYS_FILE` (one per line,
`#` comments), each `KEY` (every model) or `KEY:model-a|model-b`. With no keys configured the
gateway is open. Keys are compared in constant time and never logged: the only thing that
identifies a caller in logs and metrics is a short SHA-256 fingerprint.

Transports authenticate (service/http/middleware.py, service/rpc/interceptor.py) and keep the
principal in a context variable for the request; the data plane's `Caller` carries it to the
entitlement check.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from service.errors import KilnError


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
