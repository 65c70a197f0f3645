"""The preflight report, as text for people (``models add`` / ``models show``)."""

from __future__ import annotations

import json
from pathlib import Path

from prover.costs import circuit_costs, describe
from verifier.manifest import Manifest


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def render(manifest: Manifest, package_dir) -> str:
    p = manifest.preflight
    a = p["agreement"]
    ops = ", ".join(f"{o['op']}×{o['count']}" + ("" if o["supported"] == "yes" else " (unknown)")
                    for o in p["ops"])
    lines = [
        f"model       {manifest.name}  (package {manifest.package_id[:16]}…)",
        f"folder      {package_dir}",
        f"model hash  sha256:{manifest.model_sha256}" + (
            f"  (maxima rewritten from sha256:{p['rewritten_from_sha256'][:16]}…)"
            if p.get("rewritten_from_sha256") else ""),
        f"ONNX ops    {ops}" + ("  + ArgMax label added" if p.get("label_output_added") else ""),
        f"input       {manifest.input.datatype}{list(manifest.input.shape)} at scale "
        f"2^{manifest.input.scale}, {manifest.input_visibility}",
        "public out  " + ("the label only (logits private)" if manifest.public_output == "label"
                           else ", ".join(o.name for o in manifest.outputs)),
        f"circuit     logrows {p['logrows']} ({p['num_rows']} rows used), EZKL "
        f"{manifest.ezkl_version}",
        f"keys        pk {_mb(p['pk_bytes'])}, vk {_mb(p['vk_bytes'])}; setup {p['setup_seconds']:.1f}s",
        f"proof       prove {p['prove_seconds']:.1f}s, verify {p['verify_seconds'] * 1000:.0f} ms "
        f"({p['machine']['cpus']} CPUs)",
        f"verifier    {p['verifier_runtime_bytes']:,} bytes of {p['verifier_size_limit']:,} "
        f"allowed (EIP-170): " + ("fits" if p["verifier_fits"] else "TOO LARGE to deploy" + (
            ", proofs checked offline (tuned with --verifier offline)"
            if (manifest.tuning or {}).get("verifier") == "offline" else "")),
        f"agreement   {a['agree']}/{a['samples']} labels identical, float vs circuit "
        f"({a['percent']:.1f}%)"
        + (f"; accuracy float {a['float_accuracy']:.4f}, circuit {a['circuit_accuracy']:.4f}"
           if "float_accuracy" in a else ""),
        f"SRS         logrows {manifest.srs.logrows}, {manifest.srs.source}, "
        f"sha256:{manifest.srs.sha256[:16]}…",
    ]
    costs = p.get("costs") or _costs_from_settings(package_dir)
    if costs:
        lines.append(f"biggest     {describe(costs)}")
    if manifest.tuning:
        t = manifest.tuning
        measured = sum(c["status"] == "ok" for c in t["candidates"])
        lines.append(f"tuned       for {t['objective']}"
                     f"{', verified offline' if t.get('verifier') == 'offline' else ''}: "
                     f"{t['chosen']['label']} "
                     f"({measured} of {len(t['candidates'])} candidates measured, "
                     f"{t['elapsed_s']:.0f}s; 'models show --json' has them all)")
    elif costs and costs.get("suggest_tune"):
        lines.append(f"suggest     verinfer models tune {manifest.name}: "
                     f"{costs['suggest_tune']}")
    if manifest.srs.insecure:
        lines.append("WARNING     development SRS generated on this machine: INSECURE, "
                     "for development only (anyone holding its secret can forge proofs)")
    return "\n".join(lines)


def _costs_from_settings(package_dir) -> dict | None:
    """For packages made before the preflight recorded its costs."""
    try:
        return circuit_costs(json.loads((Path(package_dir) / "settings.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
