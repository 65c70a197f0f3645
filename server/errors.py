"""verinfer's errors as HTTP answers: the one table and the one function that applies it.

Both the FastAPI exception handlers (``server/http/app.py``) and the bare infer route
(``server/http/infer_route.py``) answer through :func:`error_response`, so an error looks the
same whichever path served it. No framework imports here.
"""

from __future__ import annotations

from verifier.digests import compact_json
from verifier.errors import InputError, NotFound, VerificationError, VerinferError


class PayloadTooLarge(InputError):
    """The request body is over ``max_body_bytes``."""


class NotReady(VerinferError):
    """The server is starting or stopping."""


class Overloaded(VerinferError):
    """A model's queue of requests waiting for a batch is full: try again in ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class NoCircuitPackage(InputError):
    """A proof was asked for a model with no (matching) registered circuit package."""


class QueueFull(VerinferError):
    """The proof queue is at its limit; ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class Unauthenticated(InputError):
    """No API key, or one the server does not know (``WWW-Authenticate`` says how to send one)."""

    headers = {"WWW-Authenticate": 'Bearer realm="verinfer"'}


class Forbidden(InputError):
    """A known API key that may not do this: revoked, or past its tier (proofs, rows)."""


class RateLimited(InputError):
    """An API key over its tier's request rate; ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class Gone(NotFound):
    """What was asked for existed and was forgotten on purpose (retention pruned a proof job)."""


class Conflict(InputError):
    """The request is valid but cannot be done in this state (e.g. no receipts kept)."""


class ClientGone(VerinferError):
    """The client disconnected before its request body was complete: there is no one to answer."""

    def __init__(self, message: str = "the client disconnected before its request body was complete") -> None:
        super().__init__(message)


class StoreError(VerinferError):
    """A store file cannot be used: made by a newer or unknown version, or used wrongly by our code."""


# First match wins: subclasses before their bases.
HTTP_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (Gone, 410),
    (NotFound, 404),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (RateLimited, 429),
    (PayloadTooLarge, 413),
    (NoCircuitPackage, 409),
    (Conflict, 409),
    (QueueFull, 429),
    (InputError, 400),
    (VerificationError, 400),
    (NotReady, 503),
    (Overloaded, 503),
    (VerinferError, 500),
)


def status_for(exc: BaseException) -> int:
    for kind, status in HTTP_STATUS:
        if isinstance(exc, kind):
            return status
    return 500


INTERNAL = "internal server error"


def error_body(message: str) -> bytes:
    """The ``{"error": message}`` body, as bytes."""
    return compact_json({"error": message})


def error_response(exc: BaseException) -> tuple[int, bytes, dict[str, str]]:
    """``exc`` as (HTTP status, body, extra headers such as Retry-After). An exception that is not
    one of ours is a 500 whose body says nothing of it (the caller logs it)."""
    if not isinstance(exc, VerinferError):
        return 500, error_body(INTERNAL), {}
    return status_for(exc), error_body(str(exc)), dict(getattr(exc, "headers", None) or {})
