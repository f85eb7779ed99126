"""Who is asking, and over which transport: what the data plane needs from a transport."""

from __future__ import annotations

from dataclasses import dataclass

from service.auth import Forbidden, Principal


@dataclass(frozen=True)
class Caller:
    protocol: str  # metrics label: "http" | "openai" | "grpc"
    principal: Principal | None = None  # None: API keys are off
    request_id: str = ""

    def authorize(self, model: str) -> None:
        """Raise Forbidden when this caller's key may not use `model`."""
        if self.principal is not None and not self.principal.may_use(model):
            raise Forbidden(f"this API key may not use model {model!r}")

    @property
    def tenant(self) -> str:
        """Whose data this request may see (a key's fingerprint; "" when keys are off)."""
        return self.principal.fingerprint if self.principal is not None else ""
