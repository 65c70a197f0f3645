"""Signing keys: generated on first start into the data dir, or loaded from a path/env.

Layout under ``<home>/keys/`` (directory 0700, files 0600)::

    ed25519/<kid>.pem   PKCS#8 PEM private keys, one per key ever made here
    ed25519/active      the kid that signs now (``verinfer keys rotate`` changes it)
    ed25519/revoked.json  public JWKs of revoked keys with ``revoked_at`` (``keys revoke``)
    eth.key             secp256k1 private key (hex) for EIP-712 signatures
    eth-retired/<address>.key  earlier EIP-712 keys (``verinfer keys rotate --eip712``)

Key ids are RFC 7638 thumbprints (``verifier.keys``). Old keys stay in
``ed25519/`` so their public halves stay in the JWKS after a rotation. A revoked
key's private file is deleted; its public JWK stays in the JWKS, marked ``revoked_at``.
A private key file that group or others may read is refused.

A running server follows these files (:class:`LiveKeys`): after ``keys rotate`` or ``keys
revoke`` its next checkpoint is signed with the new active key and its JWKS is the new one,
without a restart; after ``keys rotate --eip712`` its next EIP-712 signatures are the new key's.
A retired EIP-712 key stays: the oracle keeps the signer a request was made under, so the
relayer answers requests made before the contract's update with the old key.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.settings import ServerSettings
from verifier.errors import InputError, NotFound
from verifier.keys import ed25519_jwk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyRing:
    kid: str  # the active Ed25519 key's id
    ed25519: Ed25519PrivateKey
    jwks: dict  # {"keys": [...]} every public key this server knows, active first
    eth_key: bytes  # 32-byte secp256k1 secret
    eth_address: str  # checksummed
    eth_retired: tuple[str, ...] = ()  # earlier EIP-712 signers' addresses (keys rotate --eip712)


def check_private_file(path: Path) -> None:
    """Refuse a key file that group or others can read or write."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise InputError(
            f"refusing to use private key {path}: mode {stat.S_IMODE(mode):04o} lets others read it"
            f" (chmod 600 {path})"
        )


def write_private(path: Path, data: bytes) -> None:
    for d in (path.parent.parent, path.parent) if path.parent.name == "ed25519" else (path.parent,):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ed25519(data: bytes, where: str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{where}: not an Ed25519 key")
    return key


def _ed_dir(settings: ServerSettings) -> Path:
    return settings.keys_dir / "ed25519"


def new_ed25519(settings: ServerSettings) -> str:
    """Make a new Ed25519 key in the data dir, make it active; return its kid."""
    key = Ed25519PrivateKey.generate()
    kid = ed25519_jwk(key.public_key())["kid"]
    d = _ed_dir(settings)
    write_private(d / f"{kid}.pem", _pem(key))
    tmp = d / "active.tmp"
    tmp.write_text(kid + "\n")
    os.replace(tmp, d / "active")
    return kid


def stored_keys(settings: ServerSettings, skip: frozenset[str] | dict = frozenset()) -> dict[str, Ed25519PrivateKey]:
    """kid -> private key of every key file in the data dir, but those named in ``skip`` (a
    revoked key's file is being overwritten and deleted by ``keys revoke``: not read)."""
    out = {}
    d = _ed_dir(settings)
    for path in sorted(d.glob("*.pem")) if d.is_dir() else ():
        if path.stem in skip:
            continue
        check_private_file(path)
        key = _load_ed25519(path.read_bytes(), str(path))
        out[ed25519_jwk(key.public_key())["kid"]] = key
    return out


def revoked_keys(settings: ServerSettings) -> dict[str, dict]:
    """kid -> public JWK with ``revoked_at``, for every key revoked here."""
    path = _ed_dir(settings) / "revoked.json"
    if not path.is_file():
        return {}
    return {jwk["kid"]: jwk for jwk in json.loads(path.read_text())["keys"]}


def revoke_ed25519(settings: ServerSettings, kid: str, now: datetime | None = None) -> dict:
    """Revoke a key of the data dir: its public JWK is recorded with the time (it stays in
    the JWKS, so receipts it signed before then still verify), then its private key file is
    overwritten and deleted. Revoking the active key first makes a new one active. Returns
    ``{"kid", "revoked_at", "active"}``."""
    d = _ed_dir(settings)
    revoked = revoked_keys(settings)
    if kid in revoked:
        raise InputError(f"key {kid} is already revoked (at {revoked[kid]['revoked_at']})")
    keys = stored_keys(settings)
    if kid not in keys:
        raise NotFound(f"no signing key {kid!r} in {d}")
    active_file = d / "active"
    active = active_file.read_text().strip() if active_file.exists() else None
    if active == kid:
        active = new_ed25519(settings)
    when = (now or datetime.now(UTC)).isoformat(timespec="milliseconds")
    revoked[kid] = {**ed25519_jwk(keys[kid].public_key()), "revoked_at": when}
    tmp = d / "revoked.json.tmp"
    tmp.write_text(json.dumps({"keys": list(revoked.values())}, indent=2) + "\n")
    os.replace(tmp, d / "revoked.json")  # recorded before the key goes: a crash keeps it revoked
    pem = d / f"{kid}.pem"
    size = pem.stat().st_size
    with open(pem, "r+b") as f:
        f.write(b"\0" * size)
        f.flush()
        os.fsync(f.fileno())
    pem.unlink()
    return {"kid": kid, "revoked_at": when, "active": active}


def _eth_key(settings: ServerSettings, create: bool) -> bytes:
    if settings.eth_key is not None:
        text, where = settings.eth_key.get_secret_value(), "VERINFER_ETH_KEY"
    else:
        path = settings.eth_key_path or settings.keys_dir / "eth.key"
        if not path.exists():
            if not create or settings.eth_key_path is not None:
                raise InputError(f"EIP-712 key file {path} does not exist")
            write_private(path, os.urandom(32).hex().encode() + b"\n")
        check_private_file(path)
        text, where = path.read_text(), str(path)
    return _from_hex(text, where)


def eth_address(key: bytes) -> str:
    """The checksummed address of a secp256k1 secret."""
    from eth_keys import keys as eth_keys

    return eth_keys.PrivateKey(key).public_key.to_checksum_address()


def _from_hex(text: str, where: str) -> bytes:
    try:
        raw = bytes.fromhex(text.strip().removeprefix("0x"))
    except ValueError:
        raise InputError(f"{where}: not a hex secp256k1 key") from None
    if len(raw) != 32:
        raise InputError(f"{where}: a secp256k1 key is 32 bytes")
    return raw


def _eth_retired_dir(settings: ServerSettings) -> Path:
    return settings.keys_dir / "eth-retired"


def retired_eth_keys(settings: ServerSettings) -> dict[str, bytes]:
    """Checksummed address -> secret of every EIP-712 key retired here."""
    out = {}
    d = _eth_retired_dir(settings)
    for path in sorted(d.glob("*.key")) if d.is_dir() else ():
        check_private_file(path)
        key = _from_hex(path.read_text(), str(path))
        out[eth_address(key)] = key
    return out


def eth_signing_keys(settings: ServerSettings) -> list[bytes]:
    """The EIP-712 keys a relayer may answer with: the active one first, then the retired ones
    (requests made before the oracle learnt of a rotation name the old signer)."""
    active = _eth_key(settings, create=False)
    return [active, *(k for k in retired_eth_keys(settings).values() if k != active)]


def rotate_eth(settings: ServerSettings) -> tuple[str, str]:
    """Make a new EIP-712 key active in the data dir; the old one is kept, first, under
    ``eth-retired/<address>.key``. Returns (new address, old address)."""
    if settings.eth_key is not None or settings.eth_key_path is not None:
        raise InputError("the EIP-712 key comes from VERINFER_ETH_KEY(_PATH), not the data dir: "
                         "rotate it where it is kept")
    old = _eth_key(settings, create=False)
    old_address = eth_address(old)
    kept = _eth_retired_dir(settings) / f"{old_address}.key"
    if not kept.exists():
        write_private(kept, old.hex().encode() + b"\n")
        _fsync(kept)
    new = os.urandom(32)
    tmp = settings.keys_dir / "eth.key.tmp"
    tmp.unlink(missing_ok=True)  # from a rotation that crashed before its replace
    write_private(tmp, new.hex().encode() + b"\n")
    _fsync(tmp)
    os.replace(tmp, settings.keys_dir / "eth.key")  # the old key is on disk in eth-retired/ first
    return eth_address(new), old_address


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def load_keys(settings: ServerSettings, *, create: bool = True) -> KeyRing:
    """The server's keys; generates missing ones in the data dir when ``create``."""
    revoked = revoked_keys(settings)
    if settings.signing_key is not None:
        active = _load_ed25519(settings.signing_key.get_secret_value().encode(), "VERINFER_SIGNING_KEY")
    elif settings.signing_key_path is not None:
        path = settings.signing_key_path
        if not path.is_file():
            raise InputError(f"signing key file {path} does not exist")
        check_private_file(path)
        active = _load_ed25519(path.read_bytes(), str(path))
    else:
        active_file = _ed_dir(settings) / "active"
        if not active_file.exists():
            if not create:
                raise InputError(f"no signing key in {settings.keys_dir} (run `verinfer serve` once)")
            new_ed25519(settings)
        kid = active_file.read_text().strip()
        keys = stored_keys(settings, skip=revoked.keys() - {kid})
        if kid not in keys:
            raise InputError(f"{active_file} names key {kid!r}, which is not in {_ed_dir(settings)}")
        active = keys[kid]
    active_jwk = ed25519_jwk(active.public_key())
    if active_jwk["kid"] in revoked:
        raise InputError(f"the signing key {active_jwk['kid']} was revoked at "
                         f"{revoked[active_jwk['kid']]['revoked_at']}; refusing to sign with it")
    jwks = [active_jwk] + [
        ed25519_jwk(k.public_key())
        for kid, k in stored_keys(settings, skip=revoked).items()
        if kid != active_jwk["kid"]
    ] + list(revoked.values())
    eth = _eth_key(settings, create)
    address = eth_address(eth)
    retired = tuple(a for a in retired_eth_keys(settings) if a != address)
    return KeyRing(active_jwk["kid"], active, {"keys": jwks}, eth, address, retired)


class LiveKeys:
    """The keys as the data dir holds them now, for a process that runs on while ``verinfer
    keys rotate`` or ``keys revoke`` change them. :meth:`current` looks at the key folder (its
    file names, and the inodes of ``active``, ``revoked.json`` and ``eth.key``, which those
    commands replace; not times, which the file system keeps to a clock tick) and loads the
    keys again when it changed: a listing and a few ``stat`` calls a look. Each process that
    signs or publishes keys asks it at each use (the HTTP app, the receipt log's writer per
    group, the prover workers per job)."""

    def __init__(self, settings: ServerSettings, keys: KeyRing | None = None) -> None:
        self.settings = settings
        self._dir = _ed_dir(settings)
        self._eth = settings.keys_dir / "eth.key"  # `keys rotate --eip712` replaces it
        self._stamp = self._look()
        self._keys = keys if keys is not None else load_keys(settings, create=False)

    def _look(self) -> tuple:
        try:
            names = tuple(sorted(os.listdir(self._dir)))
            ed = names, *(os.stat(self._dir / n).st_ino if n in names else None for n in ("active", "revoked.json"))
        except OSError:  # no key folder (a key from VERINFER_SIGNING_KEY), or it is being changed
            ed = None
        try:
            eth = os.stat(self._eth).st_ino
        except OSError:  # a key from VERINFER_ETH_KEY(_PATH)
            eth = None
        return ed, eth

    def current(self) -> KeyRing:
        stamp = self._look()
        if stamp == self._stamp:
            return self._keys
        try:
            keys = load_keys(self.settings, create=False)
        except (InputError, OSError, ValueError) as exc:
            # read while `keys rotate` writes a key, or a file broken by hand: the keys held so
            # far, and another try at the next use; never a key revoked meanwhile
            try:
                revoked = self._keys.kid in revoked_keys(self.settings)
            except (OSError, ValueError):
                revoked = True
            if revoked:
                raise InputError(f"the signing key {self._keys.kid} was revoked, and the keys could not be "
                                 f"loaded again: {exc}") from None
            log.warning("the signing keys changed and could not be loaded again (%s); signing with %s",
                        exc, self._keys.kid)
            return self._keys
        if keys.kid != self._keys.kid:
            log.warning("signing key %s is active now (was %s)", keys.kid, self._keys.kid)
        if keys.eth_address != self._keys.eth_address:
            log.warning("EIP-712 signer %s is active now (was %s)", keys.eth_address, self._keys.eth_address)
        self._keys, self._stamp = keys, stamp
        return keys
