"""How much of a user's file verinfer reads: every file ``verify`` and ``audit`` are given (or
find), and each answer of a log server they ask, is read whole into memory, so each read is bounded; past the bound the file is refused
with one line (exit 2), not read on (``verinfer verify /dev/zero`` read until memory ran out).
The figures are documented in docs/audit.md; each is far above what verinfer writes."""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import BinaryIO

from verifier.errors import InputError

MiB = 1 << 20
# a proof bundle (bundle.json); the proof and instances grow with the public input
MAX_BUNDLE_BYTES = 64 * MiB
# a receipts file (*.json: one receipt or a list; *.jsonl: one per line); split larger exports
MAX_RECEIPTS_FILE_BYTES = 256 * MiB
# an inference request's JSON body (audit --request)
MAX_REQUEST_BYTES = 64 * MiB
# a --keys file or URL (a JWK Set, a JWK, a PEM key, a server's key document)
MAX_KEYS_BYTES = 1 * MiB
# a circuit package's manifest.json (with a models tune record, if any)
MAX_MANIFEST_BYTES = 16 * MiB
# one answer of a log server (audit --log URL): a checkpoint, or a consistency proof (at most
# 2 x 64 hashes); an HTTP error's body is read to MAX_LOG_ERROR_BYTES for its reason, no further
MAX_LOG_ANSWER_BYTES = 1 * MiB
MAX_LOG_ERROR_BYTES = 4096


def read_at_most(f: BinaryIO, limit: int, name: str | Path, what: str,
                 error: type[InputError] = InputError) -> bytes:
    """All of ``f`` if it is at most ``limit`` bytes, else ``error`` (having read ``limit + 1``
    bytes, never more)."""
    data = f.read(limit + 1)
    if len(data) > limit:
        raise error(f"{name}: {what} is over {limit / MiB:g} MiB, the most verinfer reads "
                    f"(docs/audit.md)")
    return data


def read_answer_at_most(r: http.client.HTTPResponse, limit: int, name: str, what: str,
                        error: type[InputError] = InputError) -> bytes:
    """An HTTP answer's body, at most ``limit`` bytes (:func:`read_at_most`); one cut short of
    its Content-Length raises ``http.client.IncompleteRead``, as an unbounded ``read()`` does
    (a bounded read returns what came)."""
    data = read_at_most(r, limit, name, what, error)
    if r.length:
        raise http.client.IncompleteRead(data, r.length)
    return data


def read_bounded(path: str | Path, limit: int, what: str,
                 error: type[InputError] = InputError) -> bytes:
    """A file's bytes, at most ``limit`` (:func:`read_at_most`); ``OSError`` as ``open`` raises."""
    with open(path, "rb") as f:
        return read_at_most(f, limit, path, what, error)
