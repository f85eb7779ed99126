"""Kiln's error table: every failure a client can see is defined here once.

Transports map a `KilnError` to their own status codes (HTTP here; gRPC later) so the
same machine-readable `code` and human message reach every client.
"""

from __future__ import annotations


class KilnError(Exception):
    """A client-visible failure with a stable machine-readable code."""

    code: str = "internal_error"
    http_status: int = 500

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.headers = headers or {}
        self.param = param

    def body(self) -> dict:
        """Kiln's `code` + `message`, plus OpenAI's `type` + `param` so OpenAI clients parse it too."""
        return {"error": {"code": self.code, "message": self.message, "type": self.error_type, "param": self.param}}

    @property
    def error_type(self) -> str:
        return OPENAI_ERROR_TYPES.get(
            self.http_status, "server_error" if self.http_status >= 500 else "invalid_request_error"
        )


OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class InvalidRequest(KilnError):
    code = "invalid_request"
    http_status = 400


class PromptTooLong(InvalidRequest):
    code = "prompt_too_long"


class ModelNotFound(KilnError):
    code = "model_not_found"
    http_status = 404


class PayloadTooLarge(KilnError):
    code = "payload_too_large"
    http_status = 413


class HeadersTooLarge(KilnError):
    code = "headers_too_large"
    http_status = 431


class QueueFull(KilnError):
    code = "queue_full"
    http_status = 429


class NotSupported(KilnError):
    code = "not_implemented"
    http_status = 501


class Unavailable(KilnError):
    code = "unavailable"
    http_status = 503


class DeadlineExceeded(KilnError):
    code = "timeout"
    http_status = 504
