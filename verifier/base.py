"""The base of verinfer's pydantic types, and how a validation error becomes one line.

Types are frozen and refuse unknown fields (design.md, "Conventions"); a document that does not
validate is refused with one line naming the first bad field, never pydantic's multi-line report.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from verifier.errors import InputError, VerinferError


class Frozen(BaseModel):
    """Immutable, no unknown fields; fields with an alias also take their Python name."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


M = TypeVar("M", bound=BaseModel)

# 32 bytes as 0x and 64 lower-case hex digits: one spelling, so equal values compare equal as text
Bytes32Hex = Annotated[str, StringConstraints(pattern=r"^0x[0-9a-f]{64}$")]
# A JSON integer >= 0 (a tensor dimension, a class label): not true, not 3.0, not -1. A shape
# [-1, 3] hashed as numpy's [1, 3]; pydantic's lax int took true as 1 and 3.0 as 3.
Count = Annotated[int, Field(ge=0, strict=True)]
# RFC 3339 date-time as the server writes it (UTC "Z" or an offset, fraction optional)
Rfc3339 = Annotated[str, StringConstraints(
    pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")]


def first_error(exc: ValidationError, where: str) -> str:
    """``exc``'s first error as ``field.path: why`` (``where`` for the path of the whole document)."""
    first = exc.errors()[0]
    return f"{'.'.join(str(p) for p in first['loc']) or where}: {first['msg']}"


def parse_as(cls: type[M], raw: str | bytes | dict[str, Any], what: str, where: str,
             error: type[VerinferError] = InputError) -> M:
    """``cls`` from JSON text or a dict; if it does not validate, ``error("{what}: {field}: {why}")``."""
    try:
        return cls.model_validate(raw) if isinstance(raw, dict) else cls.model_validate_json(raw)
    except ValidationError as exc:
        raise error(f"{what}: {first_error(exc, where)}") from None
