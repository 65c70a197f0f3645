"""Offline audit of many receipts and proof bundles: the core behind ``verinfer audit``.

No network, no server: everything is checked from files. An audit is

1. **collect** (:func:`collect`): walk the given paths into items. A bundle is a
   ``bundle.json`` (or a folder holding one, or any ``*.json`` whose ``format``
   is the bundle format); a receipt is a ``*.json`` holding one receipt (or a
   list of them), or one line of a ``*.jsonl`` file; a response is an inference
   response with its receipt (``parameters.receipt``: the receipt, then the answer
   against it), in a ``*.json`` (alone or in a list) or one line of a ``*.jsonl``. Inside folders, JSON
   files of other known kinds (a JWK Set, a circuit manifest, a corpus index)
   are skipped; a file given by name is always an item.
2. **check** (:class:`Auditor`): each item, fail closed, into a :class:`Result`
   with outcome ``ok``, ``fail`` (a :class:`VerificationError`, by kind) or
   ``error`` (unreadable or malformed: an :class:`InputError`).
3. **run** (:func:`run_audit`): in a process pool (EZKL's verify is CPU-bound;
   receipts go in batches, since one signature check costs ~0.1 ms), results
   as they come, in the items' order at the end.

Receipts are checked against trusted Ed25519 keys (a JWK Set, one JWK, or a
PEM public key: :func:`load_trusted_keys`); bundles against the circuit
packages found under ``--models`` (by package id: the manifest's hash, not the
folder name). Each worker hashes a package's artifacts once, not per bundle.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from verifier.bundle import BUNDLE_FILE, BUNDLE_FORMAT, ProofBundle
from verifier.errors import (
    DigestMismatch,
    InputError,
    KeyRevoked,
    KeyUnknown,
    LinkBroken,
    OriginMismatch,
    VerificationError,
)
from verifier.keys import ed25519_jwk, jwk_thumbprint, public_key_from_jwk
from verifier.limits import (
    MAX_KEYS_BYTES,
    MAX_RECEIPTS_FILE_BYTES,
    read_answer_at_most,
    read_at_most,
    read_bounded,
)
from verifier.manifest import MANIFEST_FILE, MANIFEST_FORMAT, Manifest
from verifier.packages import is_package_id
from verifier.receipts import RECEIPT_FORMAT
from verifier.receipts_v2 import (
    RECEIPT_V2_FORMAT,
    OriginKeys,
    ReceiptV2,
    checked_checkpoint,
    parse_any_receipt,
    verify_any_receipt,
)
from verifier.responses import (
    check_proof_of_answer,
    check_request,
    check_response,
    is_response,
    parse_response,
    proof_bundle_of,
    receipt_of,
)
from verifier.tlog import NoteVerifier

if TYPE_CHECKING:
    from verifier.logcheck import Log

STDIN = "-"  # a PATH that names standard input
ItemKind = Literal["receipt", "response", "bundle", "unreadable", "log"]
Outcome = Literal["ok", "fail", "error"]

# JSON files with these "format"s (or a JWK Set) are not audit items when met inside a folder.
SKIP_FORMATS = {MANIFEST_FORMAT, "verinfer.corpus/v1"}
RECEIPT_BATCH = 512  # receipts per task: signature checks are cheap, IPC is not
BUNDLE_BATCH = 2  # bundles per task: one EZKL verify is 10-30 ms
# Starting a spawned worker (Python + EZKL imports) costs ~1 s: use the pool only when
# the audit would take longer than POOL_WORTH_S in one process (rough per-item costs).
SERIAL_S_PER_BUNDLE, SERIAL_S_PER_RECEIPT, POOL_WORTH_S = 0.015, 0.0005, 3.0


@dataclass(frozen=True)
class Item:
    """One thing to audit. ``data`` is the receipt's JSON text, or a bundle file's path."""

    name: str
    kind: ItemKind
    data: str = ""
    problem: str = ""  # for kind "unreadable": why


@dataclass(slots=True)  # (not frozen: a frozen dataclass's __init__ is a third of a microsecond per field)
class Result:
    item: str
    kind: ItemKind
    outcome: Outcome
    error: str | None = None  # the error class, e.g. "SignatureInvalid"
    reason: str | None = None
    model: str | None = None
    label: int | list[int] | None = None
    dev_srs: bool | None = None  # bundles: passed with a non-ceremony SRS (--allow-dev-srs)
    checkpoint: str | None = None  # v2 receipts: the log checkpoint it carries (for --log)

    def line(self) -> str:
        if self.outcome == "ok":
            what = f" ({self.kind}" + (f", {self.model}" if self.model else "") + (
                f", label {self.label}" if self.label is not None else "") + (
                ", and its proof" if self.kind == "response" and self.dev_srs is not None else "") + ")"
            return f"OK: {self.item}{what}"
        tag = "FAIL" if self.outcome == "fail" else "ERROR"
        return f"{tag}: {self.item}: {self.error}: {self.reason}"


# --- trusted keys and packages -----------------------------------------------------


def load_trusted_keys(*paths: Path | str) -> dict[str, Any]:
    """The trusted Ed25519 keys of one or more ``--keys`` files or URLs (a JWK Set each, see
    :func:`read_keys_file`). Keys given with their log's origin are bound to it: a
    :class:`OriginKeys` (checkpoints of each origin only by that origin's keys); with no
    origin anywhere, a plain JWK Set whose keys may sign any log's checkpoints."""
    by_origin: dict[str, dict[str, Any]] = {}
    unbound: list[dict] = []
    for path in paths:
        origin, jwks = read_keys_file(path)
        keys = unbound if origin is None else by_origin.setdefault(origin, {"keys": []})["keys"]
        keys.extend(k for k in jwks["keys"] if k not in keys)
    if not by_origin:
        return {"keys": unbound}
    return OriginKeys(by_origin, {"keys": unbound} if unbound else None)


def read_keys_file(path: Path | str) -> tuple[str | None, dict[str, Any]]:
    """(origin or None, JWK Set) of one keys file: a JWK Set (``/.well-known/jwks.json``), a
    single (pinned) JWK, a PEM Ed25519 public key (no origin), or a server's key document with
    its log's origin: ``/v1/keys`` (``jwks`` and ``log.origin``) or
    ``/.well-known/verinfer-log.json`` (``origin`` and ``note_keys``). An ``http(s)://`` URL
    is fetched now (trusting what that server answers today; a saved copy pins it).

    Every key must be an OKP/Ed25519 key whose ``kid``, if present, is its RFC 7638
    thumbprint; a bare JWK or PEM key gets its thumbprint as ``kid``.
    """
    raw = _read_keys(path)
    if raw.lstrip().startswith(b"-----BEGIN"):
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            key = load_pem_public_key(raw)
        except ValueError as exc:
            raise InputError(f"{path}: not a PEM public key ({exc})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise InputError(f"{path}: not an Ed25519 public key")
        return None, _checked_jwks(path, {"keys": [ed25519_jwk(key)]})
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise InputError(f"{path}: keys file is neither JSON nor PEM: {exc}") from None
    if isinstance(doc, dict) and isinstance(doc.get("jwks"), dict) and isinstance(doc.get("log"), dict):
        return _origin(path, doc["log"].get("origin")), _checked_jwks(path, doc["jwks"])
    if isinstance(doc, dict) and "note_keys" in doc and "origin" in doc:
        return _note_keys(path, _origin(path, doc["origin"]), doc["note_keys"], doc.get("revoked", {}))
    return None, _checked_jwks(path, doc if isinstance(doc, dict) and "keys" in doc else {"keys": [doc]})


def _read_keys(path: Path | str) -> bytes:
    if isinstance(path, str) and path.startswith(("http://", "https://")):
        import http.client
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(path, timeout=30) as r:
                return read_answer_at_most(r, MAX_KEYS_BYTES, path, "the keys document")
        except urllib.error.HTTPError as exc:
            raise InputError(f"{path}: cannot fetch keys: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            raise InputError(f"{path}: cannot fetch keys: {getattr(exc, 'reason', exc)!s:.200}") from None
    try:
        return read_bounded(path, MAX_KEYS_BYTES, "a keys file")
    except OSError as exc:
        raise InputError(f"{path}: cannot read keys: {exc.strerror}") from None


def _origin(path: Path, origin: Any) -> str | None:
    if origin is not None and (not isinstance(origin, str) or not origin or "\n" in origin):
        raise InputError(f"{path}: the log origin is not a one-line string")
    return origin


def _note_keys(path: Path, origin: str | None, note_keys: Any, revoked: Any) -> tuple[str | None, dict[str, Any]]:
    """A ``verinfer-log.json`` document's keys as JWKs; a note key named in ``revoked`` (note key
    -> RFC 3339 time) gets that ``revoked_at``, so it vouches only for statements before it."""
    if origin is None or not isinstance(note_keys, list) or not note_keys:
        raise InputError(f"{path}: no log origin or no note keys")
    if not isinstance(revoked, dict) or not all(isinstance(t, str) for t in revoked.values()):
        raise InputError(f"{path}: 'revoked' is not an object of note keys and times")
    if stray := [k for k in revoked if k not in note_keys]:
        raise InputError(f"{path}: revoked note key {stray[0]!r} is not among its note keys")
    keys = []
    for vkey in note_keys:
        v = NoteVerifier.parse(vkey) if isinstance(vkey, str) else None
        if v is None or v.name != origin:
            raise InputError(f"{path}: note key {vkey!r} is not a key of log {origin!r}")
        jwk = ed25519_jwk(v.key)
        keys.append({**jwk, "revoked_at": revoked[vkey]} if vkey in revoked else jwk)
    return origin, {"keys": keys}


def _checked_jwks(path: Path, jwks: dict[str, Any]) -> dict[str, Any]:
    keys = jwks.get("keys")
    if not isinstance(keys, list) or not keys:
        raise InputError(f"{path}: no keys in the JWK Set")
    out = []
    for jwk in keys:
        if not isinstance(jwk, dict):
            raise InputError(f"{path}: a JWK is not a JSON object")
        try:
            public_key_from_jwk(jwk)  # InputError unless OKP/Ed25519 with a 32-byte x
        except InputError as exc:
            raise InputError(f"{path}: {exc} (a keys file is a JWK Set, a JWK or a PEM public key)") from None
        kid = jwk_thumbprint(jwk)
        if jwk.get("kid", kid) != kid:
            raise InputError(f"{path}: JWK kid {jwk['kid']!r} is not its RFC 7638 thumbprint")
        if "d" in jwk:
            raise InputError(f"{path}: holds a private key; give the public JWK Set")
        out.append({**jwk, "kid": kid})
    return {"keys": out}


def find_packages(models: Path) -> dict[str, Path]:
    """Circuit packages under ``models``: a package folder, a data dir (``packages/``
    inside), or a folder of packages. Keyed by package id (the manifest's hash)."""
    models = Path(models)
    if not models.is_dir():
        raise InputError(f"{models}: no such models folder")
    if (models / MANIFEST_FILE).is_file():
        candidates = [models]
    else:
        base = models / "packages" if (models / "packages").is_dir() else models
        candidates = sorted(p for p in base.iterdir() if (p / MANIFEST_FILE).is_file())
    found: dict[str, Path] = {}
    for folder in candidates:
        # a folder named by a package id is found by it: an altered manifest in it then fails
        # the bundles and receipts of that package (load_manifest_checked), not 'not audited'
        pid = folder.name if is_package_id(folder.name) else None
        found[pid or Manifest.load(folder / MANIFEST_FILE).package_id] = folder
    return found


# --- collecting items ------------------------------------------------------------------


def collect(paths: Iterable[Path]) -> list[Item]:
    """Items from files and folders (see the module doc). A path that does not exist
    raises :class:`InputError`; a file that cannot be parsed becomes an ``unreadable`` item."""
    items: list[Item] = []
    for path in map(Path, paths):
        if str(path) == STDIN:
            items.extend(_items_of_stdin())
        elif path.is_dir():
            if (path / BUNDLE_FILE).is_file():
                items.append(Item(str(path), "bundle", str(path / BUNDLE_FILE)))
                continue
            for f in sorted(_walk(path)):
                items.extend(_items_of_file(f, explicit=False))
        elif path.is_file():
            items.extend(_items_of_file(path, explicit=True))
        elif path.exists():  # a device, a FIFO: /dev/zero would be read for ever
            raise InputError(f"{path}: not a file or folder")
        else:
            raise InputError(f"{path}: no such file or folder")
    return items


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        if MANIFEST_FILE in files:  # a circuit package: not audit items
            dirs.clear()
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            if name.endswith((".json", ".jsonl")) and not name.startswith("."):
                yield Path(root) / name


def _items_of_file(path: Path, *, explicit: bool) -> list[Item]:
    name = str(path)
    try:
        text = read_bounded(path, MAX_RECEIPTS_FILE_BYTES, "a receipts file").decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [Item(name, "unreadable", problem=f"cannot read: {exc}")]
    except InputError as exc:  # over the bound
        return [Item(name, "unreadable", problem=str(exc).removeprefix(f"{name}: "))]
    if path.suffix == ".jsonl":
        return _items_of_lines(name, text)
    if path.name == BUNDLE_FILE:
        return [Item(name, "bundle", name)]
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return [Item(name, "unreadable", problem=f"not JSON: {exc}")]
    return _items_of_json(name, text, doc, explicit=explicit)


def _items_of_stdin() -> list[Item]:
    """``-``: what is piped in (``curl ... | verinfer audit - --keys K``): one JSON document
    (a receipt, a response, a list of them), else JSON lines."""
    name = "<stdin>"
    try:
        text = read_at_most(sys.stdin.buffer, MAX_RECEIPTS_FILE_BYTES, name, "standard input").decode("utf-8")
    except UnicodeDecodeError as exc:
        return [Item(name, "unreadable", problem=f"cannot read: {exc}")]
    except InputError as exc:  # over the bound
        return [Item(name, "unreadable", problem=str(exc).removeprefix(f"{name}: "))]
    try:
        doc = json.loads(text)
    except ValueError:
        return _items_of_lines(name, text)
    if isinstance(doc, dict) and doc.get("format") == BUNDLE_FORMAT:  # checked from its file
        return [Item(name, "unreadable", problem="a proof bundle: give its bundle.json as a PATH")]
    return _items_of_json(name, text, doc, explicit=True)


def _items_of_lines(name: str, text: str) -> list[Item]:
    return [Item(f"{name}:{n}", _line_kind(line), line)
            for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _items_of_json(name: str, text: str, doc: Any, *, explicit: bool) -> list[Item]:
    """The items of one parsed JSON document (``text``), read from ``name``."""
    if isinstance(doc, list):
        return [Item(f"{name}[{i}]", "response" if is_response(r) else "receipt", json.dumps(r))
                for i, r in enumerate(doc)]
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt == BUNDLE_FORMAT:
        return [Item(name, "bundle", name)]
    if fmt in (RECEIPT_FORMAT, RECEIPT_V2_FORMAT):
        return [Item(name, "receipt", text)]
    if is_response(doc):
        return [Item(name, "response", text)]
    if not explicit and (fmt in SKIP_FORMATS or (isinstance(doc, dict) and "keys" in doc)):
        return []
    return [Item(name, "unreadable",
                 problem=f"neither a receipt ({RECEIPT_FORMAT}, {RECEIPT_V2_FORMAT}), an inference "
                         f"response holding one (parameters.receipt) nor a proof bundle ({BUNDLE_FORMAT})")]


def _line_kind(line: str) -> ItemKind:
    """A ``*.jsonl`` line: a receipt, or a response holding one (``curl ... >> answers.jsonl``).
    No receipt has a ``"parameters"`` member (its statement is base64): only lines with one are
    parsed here, so a file of receipts costs nothing more."""
    if '"parameters"' in line:
        try:
            if is_response(json.loads(line)):
                return "response"
        except ValueError:
            pass  # checked (and reported) as a receipt
    return "receipt"


# --- checking items --------------------------------------------------------------------


@dataclass
class Auditor:
    """Checks items; holds the trusted keys and packages, and per-process caches."""

    jwks: dict[str, Any] | None = None
    packages: dict[str, Path] = field(default_factory=dict)
    trusted_eth_signers: set[str] | None = None
    # receipts must be for one of ``packages``' models (when --models was given)
    require_known_model: bool = False
    origins: frozenset[str] | None = None  # v2 receipts must be of these logs (else: any a trusted key signs)
    _checkpoints: dict = field(default_factory=dict, repr=False)  # notes already checked
    _proven: dict = field(default_factory=dict, repr=False)  # per checkpoint: nodes proven so far
    # accept bundles whose package has a development (insecure) SRS
    allow_dev_srs: bool = False
    _manifests: dict[str, Manifest] = field(default_factory=dict, repr=False)
    _carried: str | None = field(default=None, repr=False)  # the checkpoint of the item being checked
    _by_model: dict[str, list[str]] | None = field(default=None, repr=False)
    # the request a saved response answered (--request: the audit holds one response)
    request: dict[str, Any] | None = None

    def check(self, item: Item) -> Result:
        self._carried = None
        try:
            if item.kind == "unreadable":
                raise InputError(item.problem)
            check = {"bundle": self._bundle, "response": self._response}.get(item.kind, self._receipt)
            model, label, dev, *cp = check(item)
        except VerificationError as exc:
            # a failed v2 receipt's checkpoint is still the log's word if its signature checks
            # (check_log): a fork shown only to it is still a fork (not so for a revoked key's,
            # nor one of a log not audited: --origin)
            return Result(item.name, item.kind, "fail", type(exc).__name__, str(exc),
                          checkpoint=None if isinstance(exc, (KeyRevoked, OriginMismatch)) else self._carried)
        except InputError as exc:
            return Result(item.name, item.kind, "error", type(exc).__name__, str(exc))
        except Exception as exc:  # a bug, or a library refusing odd input: never an OK  # noqa: BLE001
            return Result(item.name, item.kind, "error", "InternalError",
                          f"{type(exc).__name__}: {str(exc)[:300]}")
        return Result(item.name, item.kind, "ok", model=model, label=label, dev_srs=dev,
                      checkpoint=cp[0] if cp else None)

    def manifest(self, package_id: str) -> Manifest:
        if package_id not in self._manifests:
            from verifier.proofs import load_manifest_checked

            self._manifests[package_id] = load_manifest_checked(self.packages[package_id])
        return self._manifests[package_id]

    def _response(self, item: Item) -> tuple[str, Any, bool | None, str | None]:
        """A saved inference response: its receipt, then that the response is the answer the
        receipt attests (:mod:`verifier.responses`), then the proof bundle of a sync proof
        (``parameters.proof_bundle``), which must be this answer's."""
        doc = parse_response(item.data)
        st, checkpoint = self._verified(parse_any_receipt(receipt_of(doc)))
        check_response(doc, st)
        if self.request is not None:
            check_request(self.request, st)
        dev = None
        if (bundle := proof_bundle_of(doc)) is not None:
            manifest, proven, dev = self._checked_bundle(bundle)
            check_proof_of_answer(st, manifest, bundle, proven)
        return st.predicate.model.name, st.predicate.label, dev, checkpoint

    def _receipt(self, item: Item) -> tuple[str, Any, None, str | None]:
        st, checkpoint = self._verified(parse_any_receipt(item.data))
        return st.predicate.model.name, st.predicate.label, None, checkpoint

    def _verified(self, receipt: Any) -> tuple[Any, str | None]:
        """A receipt's verified statement (against the trusted keys, and the audited models when
        asked to), and the checkpoint it carries."""
        self._carried = _checkpoint_of(receipt)
        if self.jwks is None:
            raise KeyUnknown("no trusted keys given (--keys JWKS)")
        self._check_origin(receipt)
        st = verify_any_receipt(receipt, self.jwks, trusted_eth_signers=self.trusted_eth_signers,
                                checkpoints=self._checkpoints, proven=self._proven)
        p = st.predicate
        if self.require_known_model:
            if self._by_model is None:
                self._by_model = {}
                for pid in self.packages:
                    self._by_model.setdefault(self.manifest(pid).model_sha256, []).append(pid)
            pids = self._by_model.get(p.model.sha256)
            if not pids:
                raise DigestMismatch(f"receipt's model digest {p.model.sha256[:16]}… is not "
                                     f"the digest of any audited model")
            if all(self.manifest(pid).input.scale != p.input.scale for pid in pids):
                raise LinkBroken(f"receipt commits to the input at scale {p.input.scale}, "
                                 f"not the circuit's")
        return st, _checkpoint_of(receipt)

    def _check_origin(self, receipt: Any) -> None:
        """A v2 receipt's log must be one of ``origins`` when given (the keys checked are then
        that origin's)."""
        if isinstance(receipt, ReceiptV2) and self.origins is not None:
            origin = receipt.checkpoint.split("\n", 1)[0]
            if origin not in self.origins:
                raise OriginMismatch(f"checkpoint is for log {origin!r}, not "
                                     f"{' or '.join(repr(o) for o in sorted(self.origins))}")

    def _bundle(self, item: Item) -> tuple[str, Any, bool, str | None]:
        bundle = ProofBundle.load(Path(item.data))
        manifest, _, dev = self._checked_bundle(bundle)
        return manifest.name, bundle.outputs.label, dev, self._carried

    def _checked_bundle(self, bundle: ProofBundle) -> tuple[Manifest, Any, bool]:
        """A bundle against its circuit package (among ``packages``) and the trusted keys: its
        manifest, its receipt's statement (None without one), whether its SRS is a development
        one."""
        from verifier.proofs import verify_signed_bundle

        pid = bundle.model.package_id
        if pid not in self.packages:
            raise InputError(f"circuit package {pid[:16]}… ({bundle.model.name}) is not among "
                             f"the audited models (--models DIR)")
        # a bundle's receipt is held to what a receipt alone is: its log's origin, and (its
        # checkpoint returned) the --log history check
        receipt = parse_any_receipt(bundle.receipt) if bundle.receipt is not None else None
        self._carried = _checkpoint_of(receipt)
        self._check_origin(receipt)
        manifest, statement = verify_signed_bundle(
            bundle, self.packages[pid], self.jwks,
            trusted_eth_signers=self.trusted_eth_signers, manifest=self.manifest(pid),
            allow_dev_srs=self.allow_dev_srs)
        from verifier.srs import is_ceremony_srs

        return manifest, statement, not is_ceremony_srs(manifest)


def _checkpoint_of(receipt: Any) -> str | None:
    return receipt.checkpoint if isinstance(receipt, ReceiptV2) else None


# --- running ---------------------------------------------------------------------------

_WORKER: Auditor | None = None


def _init_worker(auditor: Auditor) -> None:
    global _WORKER
    _WORKER = auditor


def _check_batch(items: list[Item]) -> list[Result]:
    assert _WORKER is not None
    return [_WORKER.check(i) for i in items]


def batches(items: list[Item]) -> list[list[Item]]:
    """Receipts (and responses) in batches of RECEIPT_BATCH, bundles in batches of BUNDLE_BATCH."""
    out: list[list[Item]] = []
    for kind, size in (("bundle", BUNDLE_BATCH), ("receipt", RECEIPT_BATCH), ("response", RECEIPT_BATCH),
                       ("unreadable", 512)):
        these = [i for i in items if i.kind == kind]
        out.extend(these[n:n + size] for n in range(0, len(these), size))
    return out


def run_audit(
    items: list[Item],
    auditor: Auditor,
    *,
    jobs: int | None = None,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Check every item; ``jobs`` worker processes (default: one per core; 1 runs here,
    and so does an audit too small to pay for starting workers, ~3 s of work). Results
    come back in the items' order; ``on_result`` sees each as it is done."""
    jobs = jobs or os.cpu_count() or 1
    chunks = batches(items)
    done: dict[str, list[Result]] = {}
    emit = on_result or (lambda r: None)

    def record(results: list[Result]) -> None:
        for r in results:
            done.setdefault(r.item, []).append(r)
            emit(r)

    n_bundles = sum(i.kind == "bundle" for i in items)
    serial_s = n_bundles * SERIAL_S_PER_BUNDLE + (len(items) - n_bundles) * SERIAL_S_PER_RECEIPT
    left = list(chunks)
    if jobs > 1 and len(chunks) > 1 and serial_s > POOL_WORTH_S:
        import multiprocessing
        from concurrent.futures.process import BrokenProcessPool

        # spawn, not fork: the parent may hold EZKL's (rayon) threads, which fork would break
        ctx = multiprocessing.get_context("spawn")
        try:
            with ProcessPoolExecutor(max_workers=min(jobs, len(chunks)), mp_context=ctx,
                                     initializer=_init_worker, initargs=(auditor,)) as pool:
                pending = {pool.submit(_check_batch, c): c for c in chunks}
                while pending:
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        record(fut.result())
                        left.remove(pending.pop(fut))
        except BrokenProcessPool:  # a worker died (e.g. killed for memory): finish here
            pass
    for chunk in left:
        record([auditor.check(item) for item in chunk])
    return [done[i.name].pop(0) for i in items]


def check_log(results: list[Result], auditor: Auditor, logs: Iterable[Log] = ()) -> list[Result]:
    """The append-only check over every checkpoint the audited receipts carry, per log origin
    (and, with ``logs`` opened by :func:`verifier.logcheck.open_log`, against the log of each
    origin: :mod:`verifier.logcheck`); a fork is a failed ``log`` item naming both checkpoints."""
    from verifier.logcheck import check_histories

    seen: dict[str, str] = {}
    for r in results:
        if r.checkpoint is not None and r.outcome == "ok":
            seen.setdefault(r.checkpoint, r.item)
    for r in results:  # a failed item's checkpoint counts if it is the log's (else its failure says why)
        if r.checkpoint is not None and r.outcome == "fail" and r.checkpoint not in seen and auditor.jwks is not None:
            try:
                checked_checkpoint(r.checkpoint, auditor.jwks, None, auditor._checkpoints)
            except VerificationError:
                continue
            seen[r.checkpoint] = r.item
    logs = list(logs)
    if not seen and not logs:
        return []
    if auditor.jwks is None:
        raise KeyUnknown("no trusted keys given (--keys JWKS)")
    # the checkpoints the receipts checked here carry need no second signature check
    problems, checked = check_histories(seen, auditor.jwks, logs, auditor.origins, auditor._checkpoints)
    out = [Result(p.where, "log", "fail", p.error, p.reason) for p in problems]
    failed = {p.log for p in problems}
    for source, origin in checked:
        if str(source) not in failed:
            n = sum(note.split("\n", 1)[0] == origin for note in seen)
            out.append(Result(f"log {source}", "log", "ok",
                              reason=f"origin {origin}: {n} checkpoint(s) seen, one history"))
    return out


# --- the report ------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    total: int
    counts: dict[str, int]  # outcome -> count
    failures_by_kind: dict[str, int]  # error class -> count (fail and error outcomes)
    by_item_kind: dict[str, dict[str, int]]  # receipt/bundle -> outcome -> count
    elapsed_s: float

    @property
    def exit_code(self) -> int:
        """0 all passed; 1 any item failed verification; else 2 if any was unreadable."""
        if self.counts.get("fail"):
            return 1
        if self.counts.get("error"):
            return 2
        return 0

    def table(self) -> str:
        rows = [f"audit: {self.total} item(s) in {self.elapsed_s:.2f} s",
                f"  {'':10} {'ok':>7} {'fail':>7} {'error':>7}"]
        for kind in ("receipt", "response", "bundle", "unreadable", "log"):
            c = self.by_item_kind.get(kind)
            if c:
                rows.append(f"  {kind:10} {c.get('ok', 0):7} {c.get('fail', 0):7} "
                            f"{c.get('error', 0):7}")
        rows.append(f"  {'total':10} {self.counts.get('ok', 0):7} {self.counts.get('fail', 0):7} "
                    f"{self.counts.get('error', 0):7}")
        if self.failures_by_kind:
            rows.append("  failures by kind:")
            for kind, n in sorted(self.failures_by_kind.items(), key=lambda kv: (-kv[1], kv[0])):
                rows.append(f"    {kind:22} {n:6}")
        return "\n".join(rows)


def summarize(results: list[Result], elapsed_s: float) -> Summary:
    by_kind: dict[str, Counter] = {}
    for r in results:
        by_kind.setdefault(r.kind, Counter())[r.outcome] += 1
    return Summary(
        total=len(results),
        counts=dict(Counter(r.outcome for r in results)),
        failures_by_kind=dict(Counter(r.error for r in results if r.outcome != "ok")),
        by_item_kind={k: dict(v) for k, v in by_kind.items()},
        elapsed_s=round(elapsed_s, 3),
    )


def report_json(results: list[Result], summary: Summary) -> dict[str, Any]:
    return {
        "ok": summary.exit_code == 0,
        "exit_code": summary.exit_code,
        "total": summary.total,
        "counts": {k: summary.counts.get(k, 0) for k in ("ok", "fail", "error")},
        "failures_by_kind": summary.failures_by_kind,
        "by_item_kind": summary.by_item_kind,
        "elapsed_s": summary.elapsed_s,
        "items": [{k: v for k, v in asdict(r).items() if v is not None and k != "checkpoint"} for r in results],
    }


class Progress:
    """``audited i/n`` on stderr every ``every`` seconds, once an audit has run that long."""

    def __init__(self, total: int, write: Callable[[str], None], every: float = 2.0) -> None:
        self.total, self.write, self.every = total, write, every
        self.n = 0
        self.start = self.last = time.monotonic()

    def tick(self) -> None:
        self.n += 1
        now = time.monotonic()
        if now - self.last >= self.every and self.n < self.total:
            self.last = now
            rate = self.n / (now - self.start)
            self.write(f"progress: {self.n}/{self.total} items ({rate:,.0f}/s, "
                       f"~{(self.total - self.n) / rate:.0f} s left)")
