"""What a circuit's rows go to, read from EZKL's ``settings.json`` (no proving).

A Halo2 circuit has 2^logrows rows, and calibration picks the smallest logrows
that holds all of: the layout (``num_rows``: the model's arithmetic, laid out in
``num_inner_cols`` columns), each lookup table (one per non-linear op such as
Sigmoid, spanning ``lookup_range``: it grows 2x per step of scale) and the
range-check tables (``decomp_base`` rows). EZKL 23 does not report rows per ONNX
op offline, so the parts named here are these three kinds; the biggest is the
one that sets logrows, and the preflight report names it.
"""

from __future__ import annotations

import math


def circuit_costs(settings: dict) -> dict:
    """The rows each part needs, the biggest one, and whether a settings search could help."""
    ra = settings["run_args"]
    logrows = int(ra["logrows"])
    capacity = 2 ** logrows
    parts = [{"part": "layout", "what": f"layout ({ra['num_inner_cols']} inner column"
              f"{'s' if ra['num_inner_cols'] != 1 else ''})", "rows": int(settings["num_rows"])}]
    lo, hi = ra.get("lookup_range") or (0, 0)
    for lookup in settings.get("required_lookups") or []:
        op = next(iter(lookup)) if isinstance(lookup, dict) else str(lookup)
        parts.append({"part": "lookup", "what": f"{op} lookup table", "rows": int(hi - lo + 1)})
    for lo_rc, hi_rc in settings.get("required_range_checks") or []:
        if hi_rc - lo_rc + 1 > 4:  # the tiny sign/bit tables are noise
            parts.append({"part": "range_check", "what": f"range-check table "
                          f"[{lo_rc}, {hi_rc}]", "rows": int(hi_rc - lo_rc + 1)})
    for p in parts:
        p["percent"] = round(100.0 * p["rows"] / capacity, 1)
    biggest = max(parts, key=lambda p: p["rows"])
    # EZKL's sorts (MaxPool, ArgMax): lookups into advice, degree 6 (prover/rewrite.py)
    sorts = {"shuffles": int(settings.get("num_shuffles") or 0),
             "dynamic_lookups": int(settings.get("num_dynamic_lookups") or 0)}
    return {"logrows": logrows, "capacity_rows": capacity,
            "scale": ra["input_scale"], "parts": parts, "biggest": biggest, "sorts": sorts,
            "suggest_tune": _suggest(biggest, parts, ra, logrows, sorts)}


def _suggest(biggest: dict, parts: list[dict], ra: dict, logrows: int,
             sorts: dict) -> str | None:
    """Why ``verinfer models tune`` would likely shrink this circuit, or None."""
    layout = parts[0]["rows"]
    if biggest["part"] == "lookup" and biggest["rows"] > 2 * max(layout, 1):
        steps = max(1, math.ceil(math.log2(biggest["rows"] / max(layout, 1))))
        return (f"the {biggest['what']} is {biggest['rows'] / max(layout, 1):,.0f}x the "
                f"layout's rows; each step down from scale 2^{ra['input_scale']} halves it "
                f"(~{steps} steps to the layout's size) if the labels survive")
    if sorts["shuffles"] or sorts["dynamic_lookups"]:
        return (f"MaxPool/ArgMax laid out as sorts ({sorts['shuffles']} shuffles, "
                f"{sorts['dynamic_lookups']} dynamic lookups) raise the circuit's degree to 6, "
                f"doubling every proof's extended domain; rewritten exactly from ReLU and "
                f"comparisons (--max-ops range-checks, which tune tries) they cost about half")
    if logrows >= 14:
        # (the layout's rows do not depend on the scale: digits_cnn at 2^0, 2^8, 2^13)
        return (f"{layout:,} rows in {ra['num_inner_cols']} inner columns at logrows "
                f"{logrows}: more columns (while the verifier fits EIP-170) or fewer "
                f"range-check legs may cut logrows (and proving time)")
    return None


def describe(costs: dict) -> str:
    """One line: the biggest part, then the others."""
    b = costs["biggest"]
    others = "; ".join(f"{p['what']} {p['rows']:,} ({p['percent']:.0f}%)"
                       for p in costs["parts"] if p is not b and p != b)
    return (f"{b['what']}: {b['rows']:,} of {costs['capacity_rows']:,} rows "
            f"({b['percent']:.0f}%)" + (f"; {others}" if others else ""))
