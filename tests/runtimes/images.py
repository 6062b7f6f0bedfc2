"""Root filesystems and image archives built locally from Debian's busybox-static.

No registry is reachable, so the runtimes get what they need from here:

- `build_rootfs(dir)`: a directory with /bin/busybox and one symlink per applet (sh, sleep, ping,
  ip, ...), the empty mount points a runtime expects and a minimal /etc. podman runs it with
  `--rootfs`.
- `write_image_archive(path, rootfs, name, entrypoint)`: that directory packed as an OCI image
  layout tar (one uncompressed layer, an image config, a manifest, an index naming the image), the
  format `ctr images import` takes. containerd's sandbox ("pause") image is this with an entrypoint
  that sleeps.

Everything is deterministic (fixed mtimes, owner root) so the same input gives the same digests.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import tarfile

BUSYBOX = "/bin/busybox"
PAUSE_IMAGE = "localhost/podnet-test/pause:1"
SLEEP_FOREVER = ["/bin/sleep", "inf"]

_DIRS = ("bin", "dev", "etc", "proc", "sys", "tmp", "run", "var", "root")


def busybox_path() -> str:
    for path in (BUSYBOX, "/usr/bin/busybox"):
        if os.path.exists(path):
            return path
    raise FileNotFoundError("busybox is not installed (apt-get install -y busybox-static)")


def _is_static(path: str) -> bool:
    """A static ELF has no PT_INTERP program header (no dynamic loader)."""
    import struct

    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only; that is every Debian 12 machine here
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


PAUSE_APPLETS = ("sh", "sleep")


def build_rootfs(directory: str, applets: tuple[str, ...] | None = None) -> str:
    """A busybox root filesystem in `directory` (created). Returns the directory.

    applets: the commands to link to busybox (default: every applet). A pause image needs only
    PAUSE_APPLETS; fewer files make containerd's native snapshotter (a copy per sandbox) cheaper.
    """
    busybox = busybox_path()
    if not _is_static(busybox):
        raise RuntimeError(f"{busybox} is dynamically linked; install busybox-static (not busybox)")
    os.makedirs(directory, exist_ok=True)
    for d in _DIRS:
        os.makedirs(os.path.join(directory, d), exist_ok=True)
    os.chmod(os.path.join(directory, "tmp"), 0o1777)
    target = os.path.join(directory, "bin", "busybox")
    shutil.copyfile(busybox, target)
    os.chmod(target, 0o755)
    if applets is None:
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        if applet in ("busybox", "[", "[[") or "/" in applet:
            continue
        link = os.path.join(directory, "bin", applet)
        if not os.path.lexists(link):
            os.symlink("busybox", link)
    etc = os.path.join(directory, "etc")
    files = {
        "passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        "group": "root:x:0:\nnogroup:x:65534:\n",
        "hostname": "podnet-test\n",
        "hosts": "127.0.0.1 localhost\n",
        "resolv.conf": "",
    }
    for name, text in files.items():
        with open(os.path.join(etc, name), "w") as f:
            f.write(text)
    return directory


def _layer_tar(rootfs: str) -> bytes:
    """The root filesystem as an uncompressed tar, paths relative, sorted, mtime 0, owner root."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for top, dirs, files in os.walk(rootfs):
            dirs.sort()
            for name in sorted(dirs + files):
                path = os.path.join(top, name)
                info = tar.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
                if info.isfile():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    return buf.getvalue()


def oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}.get(machine, machine)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_image_archive(path: str, rootfs: str, name: str = PAUSE_IMAGE, entrypoint: list[str] | None = None) -> str:
    """An OCI image layout tar of `rootfs` named `name`; returns the manifest digest."""
    layer = _layer_tar(rootfs)
    config = json.dumps({
        "architecture": oci_arch(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Entrypoint": entrypoint or SLEEP_FOREVER, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "podnet tests: busybox-static rootfs"}],
    }, sort_keys=True).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": _digest(config),
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": _digest(layer),
                    "size": len(layer)}],
    }, sort_keys=True).encode()
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _digest(manifest),
                       "size": len(manifest),
                       "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}}],
    }, sort_keys=True).encode()
    members = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)]
    members += [(f"blobs/sha256/{_digest(b)[7:]}", b) for b in (layer, config, manifest)]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for member, data in members:
            info = tarfile.TarInfo(member)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return _digest(manifest)
