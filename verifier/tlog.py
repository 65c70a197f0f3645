"""Transparency log primitives: RFC 9162 Merkle trees and C2SP signed-note checkpoints.

Hashing (RFC 9162 section 2.1.1): a leaf is ``SHA-256(0x00 || data)``, an inner node
``SHA-256(0x01 || left || right)``; a tree of ``n`` leaves splits at the largest power of
two below ``n``. Inclusion and consistency proofs are verified with the iterative
algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2, and generated (for the server) from a
``get(level, index)`` function that returns the hash of the complete, aligned subtree of
``2**level`` leaves starting at leaf ``index * 2**level``: the only hashes a proof needs,
and the ones a log stores (Go's ``sumdb/tlog`` "stored hashes").

Checkpoints are C2SP ``tlog-checkpoint`` bodies (origin line, tree size, base64 root hash,
each ending in a newline) inside a C2SP ``signed-note``: the body, a blank line, then one
line per signature, ``— <key name> <base64(4-byte key id || Ed25519 signature)>``. The key
id is ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``; a verifier key is written
``<name>+<key id hex>+<base64(0x01 || public key)>`` (as Go's ``sumdb/note``).
No imports of ours beyond the error root, base64 and key decoding: the recipe in docs/formats.md
mirrors this file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from verifier.digests import b64decode_canonical
from verifier.errors import (
    ConsistencyInvalid,
    InclusionInvalid,
    InputError,
    KeyUnknown,
    OriginMismatch,
    SignatureInvalid,
)
from verifier.keys import ed25519_public_key

_sha256 = hashlib.sha256
EMPTY_ROOT = _sha256(b"").digest()
ALG_ED25519 = 0x01
MAX_PROOF = 64  # hashes; a tree of 2**63 leaves needs at most 63
SIG_PREFIX = "\u2014 "  # em dash, space: how a signed-note signature line starts


# --- hashing ----------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    return _sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def stored_index(level: int, n: int) -> int:
    """Where a log stores the hash of subtree ``n`` at ``level``: Go ``sumdb/tlog``'s
    ``StoredHashIndex`` (a leaf's hash, then the subtrees it completes; appends add at the end)."""
    n = ((n + 1) << level) - 1  # the subtree's last leaf's index, in Go's loop, before summing
    return 2 * n - n.bit_count() + level  # sum of n >> j over j >= 0, in closed form


# Complete, aligned subtree hash: get(level, index) covers leaves [index << level, (index + 1) << level).
NodeGetter = Callable[[int, int], bytes]


def subtree_hash(lo: int, hi: int, get: NodeGetter, memo: dict | None = None) -> bytes:
    """MTH of leaves ``[lo, hi)``, where ``lo`` is aligned as in RFC 9162's recursion.
    ``memo`` keeps the incomplete (right-edge) subtrees computed, for many proofs in one tree."""
    n = hi - lo
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0:  # complete subtree: stored
        level = n.bit_length() - 1
        return get(level, lo >> level)
    if memo is not None:
        h = memo.get((lo, hi))
        if h is None:
            k = _split(n)
            h = memo[(lo, hi)] = node_hash(get(k.bit_length() - 1, lo // k), subtree_hash(lo + k, hi, get, memo))
        return h
    k = _split(n)
    return node_hash(get(k.bit_length() - 1, lo // k), subtree_hash(lo + k, hi, get))


def root_hash(size: int, get: NodeGetter) -> bytes:
    return subtree_hash(0, size, get)


def inclusion_proof(index: int, size: int, get: NodeGetter, memo: dict | None = None) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 section 2.1.3.1, leaf side first (``memo``: as for
    :func:`subtree_hash`, one dict for the proofs of one tree)."""
    if not 0 <= index < size:
        raise InputError(f"leaf index {index} is not in a tree of size {size}")
    path: list[bytes] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index < lo + k:
            path.append(subtree_hash(lo + k, hi, get, memo))
            hi = lo + k
        else:
            path.append(subtree_hash(lo, lo + k, get, memo))
            lo += k
    path.reverse()
    return path


def consistency_proof(old: int, new: int, get: NodeGetter) -> list[bytes]:
    """PROOF(old, D[0:new]) of RFC 9162 section 2.1.4.1 (empty when ``old`` is 0 or ``new``)."""
    if not 0 <= old <= new:
        raise InputError(f"no consistency proof from size {old} to size {new}")
    if old == 0 or old == new:
        return []
    path: list[bytes] = []
    lo, hi, whole = 0, new, True  # SUBPROOF(m, D[lo:hi], whole)
    m = old
    while True:
        n = hi - lo
        if m == n:
            if not whole:
                path.append(subtree_hash(lo, hi, get))
            break
        k = _split(n)
        if m <= k:
            path.append(subtree_hash(lo + k, hi, get))
            hi = lo + k
        else:
            path.append(subtree_hash(lo, lo + k, get))
            lo, m, whole = lo + k, m - k, False
    path.reverse()
    return path


class MemoryTree:
    """All leaf hashes in memory: for tests, tools and docs (the server stores its nodes)."""

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        for data in leaves:
            self.append(data)

    def append_hash(self, h: bytes) -> int:
        index = len(self.levels[0])
        self.levels[0].append(h)
        level, i = 0, index
        while i & 1:  # completes the subtree on the left
            if len(self.levels) <= level + 1:
                self.levels.append([])
            h = node_hash(self.levels[level][i - 1], h)
            self.levels[level + 1].append(h)
            level, i = level + 1, i >> 1
        return index

    def append(self, data: bytes) -> int:
        return self.append_hash(leaf_hash(data))

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def get(self, level: int, index: int) -> bytes:
        return self.levels[level][index]

    def root(self, size: int | None = None) -> bytes:
        return root_hash(self.size if size is None else size, self.get)

    def inclusion(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, self.size if size is None else size, self.get)

    def consistency(self, old: int, new: int | None = None) -> list[bytes]:
        return consistency_proof(old, self.size if new is None else new, self.get)


# --- proof verification (RFC 9162 2.1.3.2 and 2.1.4.2), fail closed -----------------------


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` leads to from ``leaf`` at ``index``; raises if the path's
    shape does not fit a tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise InclusionInvalid(f"leaf index {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if len(p) != 32:
            raise InclusionInvalid("inclusion proof holds a hash that is not 32 bytes")
        if sn == 0:
            raise InclusionInvalid(f"inclusion proof is too long for leaf {index} of {size}")
        if fn & 1 or fn == sn:
            r = _sha256(b"\x01" + p + r).digest()
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InclusionInvalid(f"inclusion proof is too short for leaf {index} of {size}")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raises :class:`InclusionInvalid` unless ``leaf`` is leaf ``index`` of the tree with ``root``."""
    if root_from_inclusion(index, size, leaf, proof) != root:
        raise InclusionInvalid(f"inclusion proof for leaf {index} does not lead to the root of size {size}")


class ProvenNodes:
    """Inclusion checks of many leaves of one signed tree (an audit of a batch's receipts).

    Proofs are given as their hashes' canonical base64 text (a v2 receipt's spelling), so that
    most of a proof is compared as text, never decoded: each node an accepted proof proved is
    kept with its hash and the rest of that proof above it (its path's siblings up to the
    root). A later proof is hashed from its leaf only up to its first proven node, whose hash
    must match, and the rest of the proof must equal that node's proven rest. Receipts of one
    batch cost a hash or two each, not a whole path. Same verdicts as :func:`verify_inclusion`
    on the decoded hashes (``tests/verifier/test_tlog.py``), except that a hash in any other
    spelling of base64 is refused; a proof that fails adds nothing. Nodes are named (level,
    index) in the tree where a level's last node without a sibling moves up unchanged (the
    same hashes as RFC 9162's split). At most ``max_nodes`` nodes are kept (receipts refreshed
    to one big tree would otherwise keep ~0.5 KB per leaf): past that, proofs are checked
    against the nodes kept, and hashed further up."""

    max_nodes = 1 << 14

    def __init__(self, size: int, root: bytes) -> None:
        self.size = size
        # (level, index) -> (hash, the proof's hashes above it as text)
        self._known: dict[tuple[int, int], tuple[bytes, tuple[str, ...]]] = {
            ((size - 1).bit_length() if size else 0, 0): (root, ())}

    def verify(self, index: int, leaf: bytes, proof: Sequence[str]) -> None:
        size, known = self.size, self._known
        if not 0 <= index < size:
            raise InclusionInvalid(f"leaf index {index} is not in a tree of size {size}")
        proof = tuple(proof)
        path: list[tuple[int, int, bytes, int]] = []  # (level, index, hash, proof position)
        siblings: list[tuple[int, int, bytes, int, bytes]] = []  # (…, the path's node beside it)
        node, level, idx, count, used = leaf, 0, index, size, 0
        while (entry := known.get((level, idx))) is None:  # the root is known: this ends
            sibling = idx ^ 1
            path.append((level, idx, node, used))
            if sibling < count:
                if used == len(proof):
                    raise InclusionInvalid(f"inclusion proof is too short for leaf {index} of {size}")
                p = _proof_hash(proof[used])
                siblings.append((level, sibling, p, used, node))
                node = node_hash(p, node) if sibling < idx else node_hash(node, p)
                used += 1
            idx, count, level = idx >> 1, (count + 1) >> 1, level + 1
        proven, rest = entry
        if len(proof) - used != len(rest):
            raise InclusionInvalid(f"inclusion proof is too {'short' if len(proof) - used < len(rest) else 'long'} "
                                   f"for leaf {index} of {size}")
        if proven != node or proof[used:] != rest:
            raise InclusionInvalid(f"inclusion proof for leaf {index} does not lead to the root of size {size}")
        if len(known) >= self.max_nodes:
            return
        for level, i, h, k in path:
            known[(level, i)] = (h, proof[k:])
        for level, i, h, k, beside in siblings:
            known[(level, i)] = (h, (_b64(beside), *proof[k + 1:]))


def _proof_hash(text: str) -> bytes:
    """A proof's hash from its base64 text: 32 bytes in the one spelling; else InclusionInvalid."""
    try:
        h = b64decode_canonical(text)
    except (ValueError, TypeError, KeyError):
        h = b""
    if len(h) != 32:
        raise InclusionInvalid("inclusion proof holds a hash that is not 32 bytes in canonical base64")
    return h


def _b64(h: bytes) -> str:
    return binascii.b2a_base64(h, newline=False).decode("ascii")


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """Raises :class:`ConsistencyInvalid` unless the tree ``new_root`` (``new`` leaves)
    extends the tree ``old_root`` (``old`` leaves): an append-only history."""
    if not 0 <= old <= new:
        raise ConsistencyInvalid(f"tree size went from {old} down to {new}")
    if any(len(p) != 32 for p in proof):
        raise ConsistencyInvalid("consistency proof holds a hash that is not 32 bytes")
    if old == 0 and old_root != EMPTY_ROOT:
        raise ConsistencyInvalid("the empty tree's root is not SHA-256 of nothing")
    if old == new:
        if proof:
            raise ConsistencyInvalid("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ConsistencyInvalid(f"two different roots for tree size {old}")
        return
    if old == 0:
        if proof:
            raise ConsistencyInvalid("consistency proof from the empty tree must be empty")
        return
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is itself a node of the path
        path.insert(0, old_root)
    if not path:
        raise ConsistencyInvalid("consistency proof is empty")
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ConsistencyInvalid(f"consistency proof from {old} to {new} is too long")
        if fn & 1 or fn == sn:
            fr = _sha256(b"\x01" + c + fr).digest()
            sr = _sha256(b"\x01" + c + sr).digest()
            while not fn & 1 and fn:
                fn >>= 1
                sn >>= 1
        else:
            sr = _sha256(b"\x01" + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ConsistencyInvalid(f"consistency proof from {old} to {new} is too short")
    if fr != old_root or sr != new_root:
        raise ConsistencyInvalid(f"tree of size {new} does not extend the tree of size {old}")


# --- signed notes and checkpoints --------------------------------------------------------


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte key id of an Ed25519 note key (C2SP signed-note)."""
    return _sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def valid_note_name(name: str) -> bool:
    """A C2SP signed-note key name (a log's origin here): not empty, no whitespace, no ``+``."""
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


@dataclass(frozen=True)
class NoteVerifier:
    name: str
    key_id: bytes  # 4 bytes
    key: Ed25519PublicKey

    @classmethod
    def parse(cls, vkey: str) -> NoteVerifier:
        """A verifier key string ``<name>+<key id hex>+<base64(0x01 || key)>``."""
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3 or not valid_note_name(parts[0]) or len(parts[1]) != 8:
            raise InputError(f"not a note verifier key: {vkey!r}")
        name, hash_hex, key_b64 = parts
        try:
            kid = bytes.fromhex(hash_hex)
            raw = base64.b64decode(key_b64, validate=True)
        except (ValueError, binascii.Error):
            raise InputError(f"not a note verifier key: {vkey!r}") from None
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise InputError(f"note verifier key {name}: not an Ed25519 key")
        if key_id(name, raw[1:]) != kid:
            raise InputError(f"note verifier key {name}: key id {hash_hex} is not the key's")
        try:
            return cls(name, kid, ed25519_public_key(raw[1:]))
        except InputError as exc:
            raise InputError(f"note verifier key {name}: {exc}") from None

    @classmethod
    def from_key(cls, name: str, key: Ed25519PublicKey) -> NoteVerifier:
        return cls(name, key_id(name, key.public_bytes(Encoding.Raw, PublicFormat.Raw)), key)

    def encode(self) -> str:
        raw = self.key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(bytes([ALG_ED25519]) + raw).decode()}"


def note_verifier_key(name: str, key: Ed25519PublicKey) -> str:
    """The verifier key string a log publishes for its checkpoint key."""
    return NoteVerifier.from_key(name, key).encode()


def signature_line(name: str, key: Ed25519PrivateKey, text: bytes, sign: Callable[[bytes], bytes] | None = None) -> bytes:
    """One signed-note signature line over ``text`` (``sign``: a faster signer of the same key)."""
    kid = key_id(name, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    sig = (sign or key.sign)(text)
    return f"{SIG_PREFIX}{name} {base64.b64encode(kid + sig).decode()}\n".encode()


def sign_note(text: bytes, name: str, key: Ed25519PrivateKey) -> bytes:
    """A signed note: ``text`` (ending in a newline), a blank line, one signature."""
    if not text.endswith(b"\n"):
        raise InputError("note text must end with a newline")
    return text + b"\n" + signature_line(name, key, text)


def checkpoint_body(origin: str, size: int, root: bytes) -> bytes:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n".encode()


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    note: bytes  # the whole signed note as received


def parse_checkpoint(note: bytes | str) -> tuple[Checkpoint, bytes, list[tuple[str, bytes, bytes]]]:
    """Split a signed checkpoint: (checkpoint, signed text, [(name, key id, signature)]).
    Structure only; :func:`verify_checkpoint` checks the signatures."""
    try:  # (a str from JSON may hold a lone surrogate, which no UTF-8 spells)
        raw = note.encode() if isinstance(note, str) else bytes(note)
        text_str = raw.decode("utf-8")
    except UnicodeError:
        raise SignatureInvalid("checkpoint is not UTF-8") from None
    if any(ord(c) < 0x20 and c != "\n" for c in text_str):
        raise SignatureInvalid("checkpoint holds control characters")
    cut = raw.rfind(b"\n\n")
    if cut < 0 or not raw.endswith(b"\n"):
        raise SignatureInvalid("checkpoint is not a signed note (no blank line before the signatures)")
    text, sig_block = raw[: cut + 1], raw[cut + 2 :]
    sigs = []
    for line in sig_block.decode().split("\n")[:-1]:
        if not line.startswith(SIG_PREFIX):
            raise SignatureInvalid("checkpoint signature line does not start with an em dash")
        name, _, b64 = line[len(SIG_PREFIX) :].partition(" ")
        try:
            blob = b64decode_canonical(b64)  # the signature line is outside the signed body
        except ValueError:
            raise SignatureInvalid("checkpoint signature is not base64") from None
        if not valid_note_name(name) or len(blob) < 5:
            raise SignatureInvalid("malformed checkpoint signature line")
        sigs.append((name, blob[:4], blob[4:]))
    if not sigs:
        raise SignatureInvalid("checkpoint has no signatures")
    if len(sigs) > MAX_NOTE_SIGNATURES:  # as Go's note.Open: a bound on the work a note can ask for
        raise SignatureInvalid(f"checkpoint has more than {MAX_NOTE_SIGNATURES} signatures")
    lines = text.decode().split("\n")
    if len(lines) < 4 or not lines[0] or not _TREE_SIZE.fullmatch(lines[1]):
        raise SignatureInvalid("checkpoint body is not origin, tree size, root hash")
    if "" in lines[3:-1]:  # C2SP tlog-checkpoint: "Extension lines, if any, MUST be non-empty"
        raise SignatureInvalid("checkpoint holds an empty extension line")
    if len(lines[1]) > 20 or int(lines[1]) >= 1 << 64:  # as every other reader's uint64
        raise SignatureInvalid("checkpoint tree size does not fit in 64 bits")
    try:
        root = b64decode_canonical(lines[2])
    except ValueError:
        raise SignatureInvalid("checkpoint root hash is not base64") from None
    if len(root) != 32:
        raise SignatureInvalid("checkpoint root hash is not 32 bytes")
    if lines[1] == "0" and root != EMPTY_ROOT:
        raise SignatureInvalid("checkpoint of the empty tree with a root that is not SHA-256 of nothing")
    return Checkpoint(lines[0], int(lines[1]), root, raw), text, sigs


MAX_NOTE_SIGNATURES = 100


# ASCII decimal without leading zeros (str.isdigit also takes "²" and "①", which int() refuses)
_TREE_SIZE = re.compile(r"0|[1-9][0-9]*")


def verify_checkpoint(note: bytes | str, verifiers: Sequence[NoteVerifier], origin: str | None = None) -> Checkpoint:
    """Parse a signed checkpoint and check it: signed by one of ``verifiers`` (signatures by
    other keys are ignored, as in C2SP signed-note), and for ``origin`` when given.

    Raises :class:`KeyUnknown` when no signature is by a trusted key, :class:`SignatureInvalid`
    when a trusted key's signature does not verify or the note is malformed, and
    :class:`OriginMismatch` (a :class:`LinkBroken`) for another log's checkpoint."""
    cp, text, sigs = parse_checkpoint(note)
    trusted = {(v.name, v.key_id): v for v in verifiers}
    good = False
    seen: set[tuple[str, bytes]] = set()
    for name, kid, sig in sigs:
        v = trusted.get((name, kid))
        if v is None or name != cp.origin:  # a log's key is named by its origin (C2SP tlog-checkpoint)
            continue  # (C2SP signed-note: "Verifiers MUST ignore signatures from unknown keys")
        if (name, kid) in seen:  # one note, one spelling (an unknown key's lines are anyone's to add)
            raise SignatureInvalid("checkpoint holds two signatures by one key")
        seen.add((name, kid))
        try:
            v.key.verify(sig, text)
        except InvalidSignature:
            raise SignatureInvalid(f"checkpoint signature by {name} ({kid.hex()}) does not verify") from None
        good = True
    if not good:
        names = ", ".join(f"{n} ({k.hex()})" for n, k, _ in sigs)
        raise KeyUnknown(f"checkpoint is signed by no trusted note key (signed by: {names})")
    if origin is not None and cp.origin != origin:
        raise OriginMismatch(f"checkpoint is for log {cp.origin!r}, not {origin!r}")
    return cp
