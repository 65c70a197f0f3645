"""RFC 8785 (JCS) text for the values a v2 statement holds, fast; the ``rfc8785`` package
(what verifiers use) gives the same bytes (``tests/server/test_jcs.py``, random outputs and
FP32 edge values).

JCS writes a number as ECMAScript's ``Number.prototype.toString``: the shortest digits that
round-trip (Python's ``repr`` has the same digits), in decimal notation for exponents from
-7 to 20 and ``1e+21`` / ``1e-7`` style beyond; integral values have no ``.0``; ``-0`` is
``0``. Strings: JSON escapes for ``"``, ``\\`` and control characters only (``\\u00XX``
lowercase), everything else as UTF-8: ``json`` with ``ensure_ascii=False`` writes the same.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import orjson

jcs_string = json.JSONEncoder(ensure_ascii=False).encode


def jcs_float(v: float) -> str:
    if not math.isfinite(v):
        raise ValueError("JSON (RFC 8785) has no NaN or infinity")
    if v == 0:
        return "0"
    r = repr(v)
    if "e" not in r:  # Python uses decimal notation for 1e-4 <= |v| < 1e16: so does JCS
        return r[:-2] if r.endswith(".0") else r
    mantissa, exp = r.split("e")
    neg = mantissa.startswith("-")
    digits = mantissa.lstrip("-").replace(".", "")
    k, n = len(digits), int(exp) + 1  # value = 0.digits * 10**n
    if k <= n <= 21:
        s = digits + "0" * (n - k)
    elif 0 < n <= 21:
        s = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        s = "0." + "0" * -n + digits
    else:
        e = n - 1
        s = digits[0] + ("." + digits[1:] if k > 1 else "") + ("e+" if e >= 0 else "e-") + str(abs(e))
    return "-" + s if neg else s


# "-0" as a whole number in a (nested) list, not the start of "-0.5"
_NEGATIVE_ZERO = re.compile(r"(?<=[\[,])-0(?=[,\]])")


def _plain_floats(values: list) -> str | None:
    """``values`` (floats, or lists of them) as JCS text, or None when any needs the slow path
    (an exponent, NaN or infinity). orjson writes each double's shortest round-trip digits, as
    repr does (~15x faster than joining reprs), NaN and infinities as null; only ".0" and "-0"
    differ from JCS."""
    text = orjson.dumps(values).decode()
    if "e" in text or "n" in text:
        return None
    text = text.replace(".0,", ",").replace(".0]", "]")
    if "-0," in text or "-0]" in text:  # every one, also side by side (a replace skips every other)
        text = _NEGATIVE_ZERO.sub("0", text)
    return text


def jcs_numbers(array: np.ndarray) -> str:
    """``array.ravel()`` as a JCS array of numbers (ints as ints, floats as JCS doubles)."""
    values = array.ravel().tolist()
    kind = array.dtype.kind
    if kind == "f":
        text = _plain_floats(values)
        return text if text is not None else "[" + ",".join(map(jcs_float, values)) + "]"
    if kind in "iu":
        if values and max(abs(min(values)), abs(max(values))) > 2**53 - 1:
            raise ValueError("JSON (RFC 8785) numbers are IEEE doubles: an integer beyond 2**53 - 1 does not fit")
        return "[" + ",".join(map(int.__repr__, values)) + "]"
    if kind == "b":
        return "[" + ",".join("true" if v else "false" for v in values) + "]"
    raise ValueError(f"no JCS form for dtype {array.dtype}")


def jcs_number_rows(array: np.ndarray, rows: list[int]) -> list[str]:
    """:func:`jcs_numbers` of each of a batch's answers (``rows[i]`` rows of ``array`` on axis 0
    for answer i), written as one text and cut at its commas (no number holds a comma)."""
    if len(rows) == 1:
        return [jcs_numbers(array)]
    if array.dtype.kind == "f" and array.size and len(set(rows)) == 1:  # the server's usual batch
        # the answers as nested lists, cut between them ("],[" is in no number)
        text = _plain_floats(array.reshape(len(rows), -1).tolist())
        if text is not None:
            return ["[" + t + "]" for t in text[2:-2].split("],[")]
    per = array[:1].size
    tokens = jcs_numbers(array)[1:-1].split(",") if array.size else []
    out, start = [], 0
    for n in rows:
        out.append("[" + ",".join(tokens[start * per : (start + n) * per]) + "]")
        start += n
    return out
