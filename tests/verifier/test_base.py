"""The shared pydantic base and validation-error line (verifier/base.py), and the JSON byte forms
(verifier/digests.py) that replaced the json.dumps calls spread over the tree."""

from __future__ import annotations

import json

import pytest
from pydantic import Field, ValidationError

from verifier.base import Frozen, parse_as
from verifier.digests import canonical_json, canonical_text, compact_json, compact_text
from verifier.errors import InputError, PackageError, SignatureInvalid
from verifier.manifest import Manifest
from verifier.oip import parse_request
from verifier.receipts import Receipt


class _Thing(Frozen):
    type_: str = Field(alias="_type")
    n: int


def test_frozen_types_refuse_changes_and_unknown_fields():
    t = _Thing.model_validate({"_type": "a", "n": 1})
    assert _Thing(type_="a", n=1) == t  # an aliased field also takes its Python name
    with pytest.raises(ValidationError):
        t.n = 2
    with pytest.raises(ValidationError, match="extra"):
        _Thing.model_validate({"_type": "a", "n": 1, "more": 0})


def test_a_bad_document_is_one_line_of_the_kind_asked_for(tmp_path):
    with pytest.raises(SignatureInvalid) as info:
        parse_as(_Thing, b'{"_type": "a", "n": "many"}', "bad thing", "thing", SignatureInvalid)
    assert str(info.value) == "bad thing: n: Input should be a valid integer, unable to parse string as an integer"
    with pytest.raises(InputError, match=r"^invalid receipt: receipt: Input should be an object$"):
        Receipt.parse(b"[]")
    with pytest.raises(InputError, match=r"^invalid receipt: envelope: Field required$"):
        Receipt.parse({"format": "verinfer.receipt/v1", "id": "0x" + "00" * 32})
    with pytest.raises(InputError, match=r"^request: inputs: Field required$"):
        parse_request({"id": "x"})
    (tmp_path / "manifest.json").write_text('{"format": "verinfer.circuit-package/v1"}')
    with pytest.raises(PackageError) as info:
        Manifest.load(tmp_path / "manifest.json")
    assert str(info.value).startswith(f"{tmp_path / 'manifest.json'}: invalid manifest: name: Field required")
    assert "\n" not in str(info.value)


# What the helpers replaced, byte for byte: canonical JSON is hashed and signed, so its bytes
# must never change; HTTP bodies escape non-ASCII as json.dumps does by default.
VALUES = [{"b": 1, "a": [1.5, -0.0, 1e-7, 2**70], "é": 'quote " \\ ✓', "z": None, "t": True},
          ["\ud800 lone surrogate", "\x00\x1f control", {"k": {"y": 1, "x": 2}}], "plain", 3, 0.1]


@pytest.mark.parametrize("value", VALUES)
def test_json_forms_are_the_bytes_json_dumps_wrote(value):
    sep = (",", ":")
    assert compact_json(value) == json.dumps(value, separators=sep).encode()
    assert compact_json(value, sort_keys=True) == json.dumps(value, sort_keys=True, separators=sep).encode()
    assert compact_text(value) == json.dumps(value, separators=sep, ensure_ascii=False)
    assert canonical_text(value) == json.dumps(value, sort_keys=True, separators=sep, ensure_ascii=False)
    if "\ud800" not in json.dumps(value, ensure_ascii=False):  # a lone surrogate has no UTF-8
        assert canonical_json(value) == json.dumps(value, sort_keys=True, separators=sep,
                                                   ensure_ascii=False).encode()


def test_canonical_json_test_vector():
    assert canonical_json({"b": [1, 2.5], "a": "ü"}) == b'{"a":"\xc3\xbc","b":[1,2.5]}'


def test_canonical_base64_accepts_exactly_binascii_strict_in_its_one_spelling():
    """b64decode_canonical (pybase64, SIMD) accepts and refuses what binascii's strict mode
    does, plus refuses set unused bits: a differential test over random texts near valid ones
    (padding anywhere, whitespace, URL-safe and non-ASCII letters, cut and extended texts)."""
    import base64
    import binascii
    import random

    from verifier.digests import b64decode_canonical

    rng = random.Random(5)
    noise = "=\n -_.é\x00A/+"
    tried = refused = 0
    for _ in range(20000):
        text = base64.b64encode(rng.randbytes(rng.randrange(0, 40))).decode()
        for _ in range(rng.randrange(0, 3)):
            i = rng.randrange(len(text) + 1)
            text = text[:i] + rng.choice(noise) * rng.randrange(1, 3) + text[i + rng.randrange(0, 2):]
        try:
            want = binascii.a2b_base64(text, strict_mode=True)
            want = want if base64.b64encode(want).decode() == text else None  # one spelling
        except (ValueError, binascii.Error):
            want = None
        try:
            got = b64decode_canonical(text)
        except ValueError:
            got = None
        assert got == want, text
        tried, refused = tried + 1, refused + (want is None)
    assert 0.2 < refused / tried < 0.8  # both kinds were tried
