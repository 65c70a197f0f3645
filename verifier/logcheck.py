"""The append-only check behind ``verinfer audit --log URL|DIR`` (repeatable: one log per origin).

Every checkpoint the audit has seen (those carried by v2 receipts, and for a DIR the ones the
log stored) must be one history with the latest checkpoint of the log of its origin: each is joined to it by a
consistency proof (RFC 9162 2.1.4) the log gives. Two checkpoints that no proof joins are a
fork: the operator showed different histories, or rewrote one. Two checkpoints of one size
with different roots are a fork even without a log to ask.

A log is read from a server (``GET /v1/log/checkpoint``, ``/v1/log/proof/consistency``) or
from a folder: a server's data dir, or a copy of its ``log.sqlite3`` (read only; the tree's
stored hashes are what the server writes, :func:`verifier.tlog.stored_index`).
"""

from __future__ import annotations

import base64
import http.client
import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from verifier.digests import b64decode_canonical
from verifier.errors import (
    ConsistencyInvalid,
    InputError,
    OriginMismatch,
    SignatureInvalid,
    VerificationError,
)
from verifier.limits import MAX_LOG_ANSWER_BYTES, MAX_LOG_ERROR_BYTES, read_answer_at_most
from verifier.receipts_v2 import TrustedLogKeys, checked_checkpoint
from verifier.tlog import Checkpoint, consistency_proof, stored_index, verify_consistency


class HttpLog:
    """A log read from a server. The server is not trusted: whatever it answers is a checked
    value or a failed check (``VerificationError``), never a crash; one it cannot be reached at
    (or that does not speak HTTP) is an ``InputError``."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        self.base = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str) -> bytes:
        try:
            with urllib.request.urlopen(self.base + path, timeout=self.timeout) as r:
                return read_answer_at_most(r, MAX_LOG_ANSWER_BYTES, self.base + path, "the log's answer")
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read(MAX_LOG_ERROR_BYTES))
                why = body.get("error", "") if isinstance(body, dict) else ""
            except (ValueError, OSError, http.client.HTTPException):
                why = ""
            raise ConsistencyInvalid(f"the log at {self.base} refused {path}: HTTP {exc.code} {str(why)[:200]}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise InputError(f"cannot reach the log at {self.base}: {type(exc).__name__}: {exc}") from None

    def latest(self) -> str:
        try:
            return self._get("/v1/log/checkpoint").decode()
        except UnicodeDecodeError:
            raise SignatureInvalid(f"the log at {self.base} answered a checkpoint that is not UTF-8") from None

    def stored(self) -> list[str]:
        return []

    def consistency(self, old: int, new: int) -> list[bytes]:
        body = self._get(f"/v1/log/proof/consistency?{urllib.parse.urlencode({'from': old, 'to': new})}")
        try:  # the log is not trusted: a malformed answer is a failed check, not a crash
            proof = json.loads(body)["proof"]
            return [b64decode_canonical(h) for h in proof]
        except (ValueError, KeyError, TypeError):
            raise ConsistencyInvalid(f"the log at {self.base} answered a consistency proof that is not "
                                     '{"proof": [base64, ...]}') from None

    def __str__(self) -> str:
        return self.base


def _note_text(value: object) -> str:
    """A stored note as text: a tampered row (a BLOB, a number) becomes text that fails its
    signature check, never a crash."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class DirLog:
    """A log read from a server's data dir (or its ``log.sqlite3``), read only. The file is not
    trusted either: a tampered row fails a check; a file that is not a readable log is an
    ``InputError``."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        file = path / "log.sqlite3" if path.is_dir() else path
        if not file.is_file():
            raise InputError(f"{path}: no receipt log here (a server data dir or its log.sqlite3, "
                             "or a server's http(s):// URL)")
        self.file = file
        try:
            self._db = sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True)
            self._db.execute("SELECT 1 FROM checkpoints LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise InputError(f"{file}: not a receipt log ({exc})") from None

    def _rows(self, sql: str, *args) -> list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise InputError(f"{self.file}: cannot read the receipt log ({exc})") from None

    def latest(self) -> str:
        rows = self._rows("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1")
        if not rows:
            raise InputError(f"{self.file}: the log has no checkpoint")
        return _note_text(rows[0][0])

    def stored(self) -> list[str]:
        return [_note_text(r[0]) for r in self._rows("SELECT note FROM checkpoints ORDER BY size")]

    def _node(self, level: int, n: int) -> bytes:
        try:
            row = self._db.execute("SELECT h FROM nodes WHERE i = ?", (stored_index(level, n),)).fetchone()
        except sqlite3.Error as exc:
            raise ConsistencyInvalid(f"{self.file}: cannot read the log's hashes ({exc})") from None
        if row is None:
            raise ConsistencyInvalid(f"{self.file}: the log lacks the hash of subtree ({level}, {n})")
        if not isinstance(row[0], bytes) or len(row[0]) != 32:
            raise ConsistencyInvalid(f"{self.file}: the hash of subtree ({level}, {n}) is not 32 bytes")
        return row[0]

    def consistency(self, old: int, new: int) -> list[bytes]:
        return consistency_proof(old, new, self._node)

    def __str__(self) -> str:
        return str(self.file)


def open_log(where: str) -> HttpLog | DirLog:
    if where.startswith(("http://", "https://")):
        return HttpLog(where)
    return DirLog(Path(where))


@dataclass(frozen=True)
class LogProblem:
    """A failed check of a log's history: ``where`` names both checkpoints; ``log``: the log
    given whose check failed, if any."""

    where: str
    error: str
    reason: str
    log: str | None = None


def _name(cp: Checkpoint, seen_in: str) -> str:
    return f"checkpoint {cp.origin} size {cp.size} root {base64.b64encode(cp.root).decode()} ({seen_in})"


Log = HttpLog | DirLog


def check_histories(seen: dict[str, str], trusted: TrustedLogKeys, logs: Sequence[Log],
                    origins: Collection[str] | None = None, cache: dict[str, Checkpoint] | None = None,
                    ) -> tuple[list[LogProblem], list[tuple[Log, str]]]:
    """``seen``: checkpoint note -> where it was seen (an item name); ``logs``: at most one per
    origin (each log's origin is its latest checkpoint's, signed by a key trusted for it).
    Every checkpoint is checked against the log of its origin; with ``logs`` given, a
    checkpoint of an origin none of them is fails (:class:`OriginMismatch`), as does a log not
    of ``origins``. Returns the problems (forks, logs that fail) and the (log, origin) pairs
    checked. Raises :class:`InputError` if a log cannot be read or two are of one origin.
    ``cache``: checkpoints already checked against ``trusted`` (the audit's), by note."""
    problems: list[LogProblem] = []
    cache = {} if cache is None else cache
    latest_of: dict[str, tuple[Log, Checkpoint]] = {}  # origin -> its log and the log's latest
    for log in logs:
        try:
            latest = checked_checkpoint(log.latest(), trusted, None, cache)
            if origins is not None and latest.origin not in origins:
                raise OriginMismatch(f"the log is of origin {latest.origin!r}, not "
                                     f"{' or '.join(repr(o) for o in sorted(origins))} (--origin)")
        except VerificationError as exc:
            problems.append(LogProblem(str(log), type(exc).__name__, f"the log's latest checkpoint: {exc}", str(log)))
            continue
        if latest.origin in latest_of:
            raise InputError(f"{latest_of[latest.origin][0]} and {log} are both logs of origin "
                             f"{latest.origin!r}: give one log per origin")
        latest_of[latest.origin] = (log, latest)
    notes = dict(seen)
    for log, _ in latest_of.values():
        for note in log.stored():
            notes.setdefault(note, f"stored in {log}")
    checked: list[tuple[Checkpoint, str]] = []
    for note, where in notes.items():
        try:
            checked.append((checked_checkpoint(note, trusted, None, cache), where))
        except VerificationError as exc:
            problems.append(LogProblem(where, type(exc).__name__, f"checkpoint: {exc}"))
    by_size: dict[tuple[str, int], tuple[Checkpoint, str]] = {}
    for cp, where in checked:
        other = by_size.setdefault((cp.origin, cp.size), (cp, where))
        if other[0].root != cp.root:
            problems.append(LogProblem(f"{other[1]} / {where}", "ConsistencyInvalid",
                                       f"fork: {_name(other[0], other[1])} and {_name(cp, where)} have the same "
                                       "size and different roots"))
    unlogged: set[str] = set()
    for cp, where in checked:
        if cp.origin not in latest_of:
            if logs and cp.origin not in unlogged:
                unlogged.add(cp.origin)
                given = ", ".join(f"{o!r} ({lg})" for o, (lg, _) in sorted(latest_of.items())) or "none readable"
                problems.append(LogProblem(where, "OriginMismatch",
                                           f"a checkpoint of log {cp.origin!r} and no --log of that origin "
                                           f"(the logs given are of {given})"))
            continue
        log, latest = latest_of[cp.origin]
        here = f"latest of {log}"
        try:
            if cp.size > latest.size:
                raise ConsistencyInvalid("the log's latest is smaller than a checkpoint it signed before")
            verify_consistency(cp.size, latest.size, cp.root, latest.root, log.consistency(cp.size, latest.size))
        except ConsistencyInvalid as exc:
            problems.append(LogProblem(f"{where} / {here}", "ConsistencyInvalid",
                                       f"fork: no consistency proof joins {_name(cp, where)} and "
                                       f"{_name(latest, here)}: {exc}", str(log)))
    return problems, [(log, origin) for origin, (log, _) in latest_of.items()]
