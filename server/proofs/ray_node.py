"""What runs on a Ray node for a proof: the resources it reserves, the package opened by
content address (hash-checked), and the prover (:mod:`server.proofs.ray_executor` dispatches).

A node gets the package id, the input and the receipt's signed label; it opens the package
from a shared folder, or from files shipped through Ray's object store into a cache, in both
cases checked against the manifest's hashes (whose own hash is the package id), and returns
the bundle. No signing key reaches a node.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from pathlib import Path

# A prover process before its first proof (Python, EZKL, onnxruntime, numpy): what a
# package's own figures are added to when a proof's memory is reserved.
PROCESS_BASE_BYTES = 400 * 1024 * 1024


def proof_resources(manifest, cpus: float, memory_mb: int | None) -> dict:
    """The Ray resources one proof of this package reserves: ``num_cpus`` and ``memory``
    (bytes). Memory: ``memory_mb`` if set; else the process base plus the larger of the
    preflight's measured RSS growth while proving and twice the proving key (packages made
    before the growth was measured: three times the proving key)."""
    if memory_mb:
        return {"num_cpus": cpus, "memory": memory_mb * 1024 * 1024}
    pf = manifest.preflight
    pk = int(pf.get("pk_bytes") or manifest.artifacts["pk.key"].bytes)
    growth = pf.get("prove_rss_growth_bytes")
    need = max(int(growth), 2 * pk) if growth else 3 * pk
    return {"num_cpus": cpus, "memory": PROCESS_BASE_BYTES + need}


def threads_for(cpus: float) -> int:
    return max(1, math.ceil(cpus))


def package_files(folder: Path) -> dict[str, bytes]:
    """What a node needs to prove with a package: its manifest and the proving artifacts."""
    from prover.package import PROVE_ARTIFACTS
    from verifier.manifest import MANIFEST_FILE

    return {n: (folder / n).read_bytes() for n in (MANIFEST_FILE, *PROVE_ARTIFACTS)}


def _manifest_matches(folder: Path, package_id: str) -> bool:
    from verifier.manifest import MANIFEST_FILE

    try:
        raw = (folder / MANIFEST_FILE).read_bytes()
    except OSError:
        return False
    return hashlib.sha256(raw).hexdigest() == package_id


def open_package(package_id: str, shared: Path | None, cache: Path, files=None):
    """The :class:`prover.package.CircuitPackage` with id ``package_id``, proving artifacts
    hash-checked: from ``shared/<id>`` if there, else ``cache/<id>``, else written into the
    cache from ``files()`` (name -> bytes). The manifest must hash to the id and every file
    as the manifest says (:class:`verifier.errors.PackageError` otherwise): nothing a node
    is given or finds is used unchecked."""
    from prover.package import PROVE_ARTIFACTS, CircuitPackage
    from verifier.errors import PackageError
    from verifier.manifest import MANIFEST_FILE

    if not package_id or set(package_id) - set("0123456789abcdef") or len(package_id) != 64:
        raise PackageError(f"not a package id: {package_id!r}")
    for root in (shared, cache):
        if root is None:
            continue
        folder = Path(root) / package_id
        if (folder / MANIFEST_FILE).is_file():
            if not _manifest_matches(folder, package_id):
                raise PackageError(f"{folder}: manifest.json does not hash to the package id")
            return CircuitPackage.open(folder, check=PROVE_ARTIFACTS)
    if files is None:
        raise PackageError(f"package {package_id[:16]}… is not under {shared} on this node "
                           "(share the packages folder, or set VERINFER_RAY_SHIP_PACKAGES)")
    got = files()
    cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
    try:
        for name, data in got.items():
            if "/" in name or name.startswith("."):
                raise PackageError(f"package file name {name!r} refused")
            (work / name).write_bytes(data)
        if not _manifest_matches(work, package_id):
            raise PackageError(f"the manifest sent for package {package_id[:16]}… does not "
                               "hash to its id")
        pkg = CircuitPackage.open(work, check=PROVE_ARTIFACTS)  # every file as the manifest says
        final = cache / package_id
        try:
            os.rename(work, final)
        except OSError:  # another process on this node placed it first
            shutil.rmtree(work, ignore_errors=True)
        return CircuitPackage.open(final, check=PROVE_ARTIFACTS) if final != pkg.dir else pkg
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _cache_dir() -> Path:
    return Path(os.environ.get("VERINFER_RAY_CACHE")
                or Path(tempfile.gettempdir()) / f"verinfer-packages-{os.getuid()}")


class PackageProver:
    """Proves for one package on one node (the body of the Ray actor, and of the stateless
    task when ``ray_actors`` is off)."""

    def __init__(self, package_id: str, shared: str | None, files_box: list | None) -> None:
        from prover.proving import Prover

        def fetch():
            import ray

            return ray.get(files_box[0])

        pkg = open_package(package_id, Path(shared) if shared else None, _cache_dir(),
                           fetch if files_box else None)
        self.prover = Prover(pkg)

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def prove(self, spec: dict, receipt: dict | None, float_label: int | None) -> str:
        from server.proofs.worker import decode_input
        from verifier.tensors import numpy_dtype

        m = self.prover.package.manifest
        x = decode_input(spec).astype(numpy_dtype(m.input.datatype), copy=False)
        bundle = self.prover.prove(x, receipt=receipt, float_label=float_label)  # re-verified
        return bundle.model_dump_json()


def prove_once(package_id, shared, files_box, spec, receipt, float_label) -> str:
    """One proof in a Ray task: opens (and hash-checks) the package every time."""
    return PackageProver(package_id, shared, files_box).prove(spec, receipt, float_label)
