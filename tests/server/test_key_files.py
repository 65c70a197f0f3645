"""The server's private key files (docs/server.md, "Keys"): any one that group or others can
read or write is refused, whichever of the three it is; 0600 is used. In process."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from server.receipts.keys import load_keys
from server.settings import ServerSettings
from verifier.errors import InputError


def _pem(path):
    key = Ed25519PrivateKey.generate()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    return path


def _stored_ed25519(tmp_path) -> tuple[ServerSettings, object]:
    settings = ServerSettings(home=tmp_path / "home")
    load_keys(settings)  # made on first use, 0600
    (pem,) = (settings.keys_dir / "ed25519").glob("*.pem")
    return settings, pem


def _stored_eth(tmp_path) -> tuple[ServerSettings, object]:
    settings = ServerSettings(home=tmp_path / "home")
    load_keys(settings)
    return settings, settings.keys_dir / "eth.key"


def _signing_key_path(tmp_path) -> tuple[ServerSettings, object]:
    path = _pem(tmp_path / "signing.pem")
    return ServerSettings(home=tmp_path / "home", signing_key_path=path), path


def _eth_key_path(tmp_path) -> tuple[ServerSettings, object]:
    path = tmp_path / "eth.hex"
    path.write_text("0x" + "42" * 32 + "\n")
    os.chmod(path, 0o600)
    return ServerSettings(home=tmp_path / "home", eth_key_path=path), path


@pytest.mark.parametrize("where", [_stored_ed25519, _stored_eth, _signing_key_path, _eth_key_path],
                         ids=["stored-ed25519", "stored-eth", "signing-key-path", "eth-key-path"])
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o610, 0o601])
def test_a_key_file_others_can_read_or_write_is_refused(tmp_path, where, mode):
    settings, path = where(tmp_path)
    load_keys(settings)  # 0600: used (the other keys made in the data dir)
    os.chmod(path, mode)
    with pytest.raises(InputError, match=f"refusing to use private key {path}: mode {mode:04o}"):
        load_keys(settings)
