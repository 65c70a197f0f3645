"""The Ray executor's parts that need no cluster: a late result never replaces the job's
bundle; packages reach a node by content address and are hash-checked before use (real
iris_mlp package); proof resources from the package's measured figures."""

from __future__ import annotations

import shutil

import pytest

from server.proofs.ray_node import (
    PROCESS_BASE_BYTES,
    open_package,
    package_files,
    proof_resources,
)
from server.proofs.store import JobStore
from verifier.errors import PackageError


def _job(store: JobStore, digest: str = "1" * 64):
    store.submit(model="m", package_id="p" * 64, model_sha256="a" * 64, input_digest=digest,
                 input_json="{}", receipt_id=None, callback_url=None, max_active=8)


def test_late_result_of_a_given_up_attempt_is_dropped(tmp_path):
    store = JobStore(tmp_path / "db.sqlite3")
    _job(store)
    job, _ = store.claim("ray.1.1", lease_s=30)
    assert store.reassign(job.id, "ray.1.1", "ray.1.1@node2")
    assert not store.reassign(job.id, "ray.1.1", "ray.1.1@head")  # no longer that name
    # node2 is lost: the attempt counts, the job goes back to the queue and out again
    assert store.retry_or_fail(job.id, "node died", 3, expect_worker="ray.1.1@node2") == "queued"
    again, _ = store.claim("ray.1.2", lease_s=30)
    assert again.id == job.id and again.attempts == 2
    # the first attempt's answer arrives late: refused; the live attempt's is stored, once
    assert not store.finish(job.id, "proven", '{"from": "node2"}', worker="ray.1.1@node2")
    assert store.finish(job.id, "proven", '{"from": "head"}', worker="ray.1.2")
    assert not store.finish(job.id, "proven", '{"again": 1}', worker="ray.1.2")
    assert store.bundle(job.id) == '{"from": "head"}'
    assert store.get(job.id).status == "done"
    store.close()


class _Pkg:  # the two manifest fields proof_resources reads
    def __init__(self, preflight, pk_bytes):
        from verifier.manifest import Artifact

        self.preflight = preflight
        self.artifacts = {"pk.key": Artifact(sha256="0" * 64, bytes=pk_bytes)}


def test_proof_resources_from_the_measured_figures():
    mb = 1024 * 1024
    measured = _Pkg({"pk_bytes": 350 * mb, "prove_rss_growth_bytes": 900 * mb}, 350 * mb)
    assert proof_resources(measured, 2, None) == {"num_cpus": 2,
                                                   "memory": PROCESS_BASE_BYTES + 900 * mb}
    small_growth = _Pkg({"pk_bytes": 32 * mb, "prove_rss_growth_bytes": 10 * mb}, 32 * mb)
    assert proof_resources(small_growth, 1, None)["memory"] == PROCESS_BASE_BYTES + 64 * mb
    unmeasured = _Pkg({"pk_bytes": 32 * mb}, 32 * mb)  # made before growth was recorded
    assert proof_resources(unmeasured, 1, None)["memory"] == PROCESS_BASE_BYTES + 96 * mb
    assert proof_resources(measured, 1, 2048)["memory"] == 2048 * mb  # the setting wins


@pytest.mark.ezkl
def test_packages_by_content_address_checked_before_use(iris_home, tmp_path):
    from jobs_support import package_dir

    src = package_dir(iris_home)
    pid = src.name
    shared, cache = tmp_path / "shared", tmp_path / "cache"
    # on the shared path: used there, checked
    shutil.copytree(src, shared / pid)
    pkg = open_package(pid, shared, cache)
    assert pkg.dir == shared / pid
    # models add measured what a proof adds to a process's memory; the reservation uses it
    growth = pkg.manifest.preflight["prove_rss_growth_bytes"]
    assert isinstance(growth, int) and growth > 0
    pk = pkg.manifest.artifacts["pk.key"].bytes
    assert proof_resources(pkg.manifest, 1, None)["memory"] == PROCESS_BASE_BYTES + max(growth,
                                                                                       2 * pk)
    # a shared copy whose pk was altered is refused, never used
    pk = shared / pid / "pk.key"
    data = bytearray(pk.read_bytes())
    data[len(data) // 2] ^= 1
    pk.write_bytes(bytes(data))
    with pytest.raises(PackageError, match="pk.key"):
        open_package(pid, shared, cache)
    # not on this node: fetched once, checked, cached under its id
    calls = []

    def fetch():
        calls.append(1)
        return package_files(src)

    pkg = open_package(pid, tmp_path / "nowhere", cache, fetch)
    assert pkg.dir == cache / pid and pkg.manifest.package_id == pid and len(calls) == 1
    assert open_package(pid, tmp_path / "nowhere", cache, fetch).dir == cache / pid
    assert len(calls) == 1
    # shipped files that do not match the manifest, or a manifest of another package
    bad = package_files(src)
    bad["pk.key"] = bytes(data)
    with pytest.raises(PackageError, match="pk.key"):
        open_package(pid, None, tmp_path / "c2", lambda: bad)
    other = package_files(src)
    other["manifest.json"] = other["manifest.json"].replace(b'"iris_mlp"', b'"iris_mlq"')
    with pytest.raises(PackageError, match="does not hash to its id"):
        open_package(pid, None, tmp_path / "c3", lambda: other)
    assert not any((tmp_path / "c2").iterdir()) and not any((tmp_path / "c3").iterdir())
    with pytest.raises(PackageError, match="not under"):
        open_package(pid, tmp_path / "nowhere", tmp_path / "c4")
    with pytest.raises(PackageError, match="not a package id"):
        open_package("../" + pid[3:], shared, cache)
