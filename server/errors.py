"""verinfer's errors as HTTP statuses: the one table (bodies are ``{"error": "..."}``)."""

from __future__ import annotations

from verifier.errors import InputError, NotFound, VerificationError, VerinferError


class PayloadTooLarge(InputError):
    """The request body is over ``max_body_bytes``."""


class NotReady(VerinferError):
    """The server is starting or stopping."""


class NoCircuitPackage(InputError):
    """A proof was asked for a model with no (matching) registered circuit package."""


class QueueFull(VerinferError):
    """The proof queue is at its limit; ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class Conflict(InputError):
    """The request is valid but cannot be done in this state (e.g. no receipts kept)."""


# First match wins: subclasses before their bases.
HTTP_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (NotFound, 404),
    (PayloadTooLarge, 413),
    (NoCircuitPackage, 409),
    (Conflict, 409),
    (QueueFull, 429),
    (InputError, 400),
    (VerificationError, 400),
    (NotReady, 503),
    (VerinferError, 500),
)


def status_for(exc: BaseException) -> int:
    for kind, status in HTTP_STATUS:
        if isinstance(exc, kind):
            return status
    return 500
