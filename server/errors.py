"""verinfer's errors as HTTP statuses: the one table (bodies are ``{"error": "..."}``)."""

from __future__ import annotations

from verifier.errors import InputError, NotFound, VerificationError, VerinferError


class PayloadTooLarge(InputError):
    """The request body is over ``max_body_bytes``."""


class NotReady(VerinferError):
    """The server is starting or stopping."""


# First match wins: subclasses before their bases.
HTTP_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (NotFound, 404),
    (PayloadTooLarge, 413),
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
