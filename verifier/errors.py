"""One error root for all of verinfer; no framework imports here.

``InputError`` and its kin are the caller's fault (CLI exit 2, HTTP 4xx);
``VerificationError`` means something was checked and found wrong (CLI exit 1).
Verifiers never return a bool: they return ``None`` or raise one of these.
The mapping to exit codes lives only in the CLI, to HTTP only in the server.
"""

from __future__ import annotations


class VerinferError(Exception):
    """Root of every error verinfer raises on purpose."""


# --- the caller's input is wrong or unusable (exit 2, HTTP 4xx) ---------------


class InputError(VerinferError):
    """Bad input: a file that does not parse, a wrong shape, a bad option."""


class NotFound(InputError):
    """A named thing (model, receipt, job) does not exist."""


class PackageError(InputError):
    """A circuit package is incomplete, altered, or made by another version."""


class UnsupportedModel(InputError):
    """The ONNX model cannot be turned into a circuit (e.g. an op EZKL lacks)."""


# --- something was checked and found wrong (exit 1) --------------------------


class VerificationError(VerinferError):
    """A check failed. Subclasses say which kind."""


class SignatureInvalid(VerificationError):
    """A signature does not verify under the expected key."""


class KeyUnknown(VerificationError):
    """The signing key is not among the trusted keys."""


class ProofInvalid(VerificationError):
    """The zero-knowledge proof does not verify against the verifying key."""


class DigestMismatch(VerificationError):
    """A hash does not match what it should (artifact, tensor, model)."""


class LinkBroken(VerificationError):
    """Two items that should describe the same thing do not (e.g. labels differ)."""


class InclusionInvalid(VerificationError):
    """A transparency-log inclusion proof does not show the entry in the signed tree."""


class ConsistencyInvalid(VerificationError):
    """Two checkpoints of one log are not one append-only history (a fork, or a rewrite)."""


class OriginMismatch(LinkBroken):
    """A checkpoint is from another log than the one expected."""


class InsecureSRS(VerificationError):
    """A circuit package's SRS is not the public ceremony's: its proofs could be forged."""


class PackageAltered(PackageError, DigestMismatch):
    """A circuit package's files are not what its id and manifest say (its manifest does not
    hash to the id it is found by, an artifact does not hash as recorded): a tampered package,
    so a failed check (exit 1), refused wherever an unusable package is (a ``PackageError``).
    A package file that is missing or does not parse stays a plain ``PackageError`` (exit 2)."""


class KeyRevoked(VerificationError):
    """The signing key was revoked before the time the item says it was signed."""
