"""The harness's own pieces, without a runtime: the CRI subset, the image archive, the statistics."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import tarfile
import tempfile

from tests.runtimes import cri, images
from tests.runtimes.bench_sandbox import percentile, summarize
from tests.runtimes.runtime_util import cgroup_mount_plan, kernel_cgroup_hierarchies


def test_cri_subset_compiles_with_upstream_field_numbers():
    pb = cri.api()
    fields = {
        ("RunPodSandboxRequest", "config"): 1, ("RunPodSandboxRequest", "runtime_handler"): 2,
        ("PodSandboxConfig", "metadata"): 1, ("PodSandboxConfig", "linux"): 8,
        ("PodSandboxMetadata", "attempt"): 4, ("LinuxPodSandboxConfig", "security_context"): 2,
        ("LinuxSandboxSecurityContext", "privileged"): 6, ("PodSandboxStatus", "network"): 5,
        ("PodSandboxStatusResponse", "info"): 2, ("PodSandboxNetworkStatus", "additional_ips"): 2,
        ("StatusResponse", "info"): 2, ("PodSandbox", "runtime_handler"): 7,
    }
    for (message, field), number in fields.items():
        assert pb.DESCRIPTOR.message_types_by_name[message].fields_by_name[field].number == number
    service = pb.DESCRIPTOR.services_by_name["RuntimeService"]
    assert service.full_name == "runtime.v1.RuntimeService"
    assert {"Version", "RunPodSandbox", "PodSandboxStatus", "StopPodSandbox", "RemovePodSandbox"} <= {
        m.name for m in service.methods}
    # A message with fields left out round-trips what it has.
    req = pb.RunPodSandboxRequest(config=pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="a", uid="u")))
    assert pb.RunPodSandboxRequest.FromString(req.SerializeToString()) == req


def test_image_archive_is_a_consistent_oci_layout():
    with tempfile.TemporaryDirectory(prefix="podnet-image-test-") as tmp:
        _check_image_archive(pathlib.Path(tmp))


def _check_image_archive(tmp_path):
    rootfs = images.build_rootfs(str(tmp_path / "rootfs"), images.PAUSE_APPLETS)
    archive = str(tmp_path / "image.tar")
    digest = images.write_image_archive(archive, rootfs, "localhost/x/y:2", ["/bin/sleep", "inf"])
    with tarfile.open(archive) as tar:
        def blob(digest_: str) -> bytes:
            return tar.extractfile(f"blobs/sha256/{digest_.split(':')[1]}").read()

        index = json.loads(tar.extractfile("index.json").read())
        entry, = index["manifests"]
        assert entry["digest"] == digest
        assert entry["annotations"]["io.containerd.image.name"] == "localhost/x/y:2"
        manifest_bytes = blob(digest)
        assert "sha256:" + hashlib.sha256(manifest_bytes).hexdigest() == digest
        manifest = json.loads(manifest_bytes)
        config = json.loads(blob(manifest["config"]["digest"]))
        layer = blob(manifest["layers"][0]["digest"])
        assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]
        assert config["config"]["Entrypoint"] == ["/bin/sleep", "inf"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as fs:
        names = set(fs.getnames())
        assert {"bin/busybox", "bin/sleep", "bin/sh", "etc/passwd", "proc", "dev"} <= names
        assert fs.getmember("bin/sleep").issym() and fs.getmember("bin/sleep").linkname == "busybox"
    # Deterministic: the same rootfs gives the same digest.
    assert images.write_image_archive(str(tmp_path / "again.tar"), rootfs, "localhost/x/y:2",
                                      ["/bin/sleep", "inf"]) == digest


def test_percentiles_are_nearest_rank():
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 50) == 50.0 and percentile(samples, 99) == 99.0 and percentile(samples, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    s = summarize([0.010, 0.020, 0.030])
    assert s["p50_ms"] == 20.0 and s["n"] == 3 and s["max_ms"] == 30.0


def test_cgroup_layout_is_the_kernels_own_as_systemd_mounts_it():
    with tempfile.TemporaryDirectory(prefix="podnet-cgroup-test-") as tmp:
        hybrid, pure_v2 = pathlib.Path(tmp, "hybrid"), pathlib.Path(tmp, "v2")
        hybrid.write_text("9:name=systemd:/\n8:pids:/\n2:cpu,cpuacct:/x\n0::/\n")
        pure_v2.write_text("0::/user.slice\n")
        assert kernel_cgroup_hierarchies(str(hybrid)) == (["name=systemd", "pids", "cpu,cpuacct"], True)
        assert kernel_cgroup_hierarchies(str(pure_v2)) == ([], True)
    assert cgroup_mount_plan(["name=systemd", "pids", "cpu,cpuacct"], True, "/c") == [
        ("tmpfs", "mode=0755", "/c"), ("cgroup", "none,name=systemd", "/c/systemd"), ("cgroup", "pids", "/c/pids"),
        ("cgroup", "cpu,cpuacct", "/c/cpu,cpuacct"), ("cgroup2", "rw", "/c/unified")]
    assert cgroup_mount_plan([], True, "/c") == [("cgroup2", "rw", "/c")]
