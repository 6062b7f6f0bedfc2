"""The by-hand guides, followed to the letter: every ```sh block of the guide, in order, in one shell.

The test only chooses the names the guide leaves to the reader (lab, work directory, cgroup parent), so
that it cannot meet another run's; it then checks what the guide says happens, and that the guide's own
clean-up left nothing. Whatever a failed run left is removed here, by the paths only this run used.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import uuid

from podnet.lab.lab import Lab
from tests.runtimes.containerd import shim_socket
from tests.runtimes.runtime_util import (
    LibcniCache,
    cgroup_hierarchies,
    kill_pid,
    mounts_under,
    pids_with_arg,
    remove_cgroup_tree,
    rmdir_if_empty,
    runc_containers,
    runc_delete,
    unmount_all_under,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shell_blocks(guide: str) -> list[str]:
    with open(os.path.join(REPO, "docs", guide)) as f:
        return re.findall(r"^```sh\n(.*?)^```$", f.read(), flags=re.S | re.M)


def follow(guide: str, private_dirs: tuple[str, ...] = (), **names: str) -> subprocess.CompletedProcess:
    """Run the guide's commands as a reader would, with podnet on PATH (the environment's own).

    private_dirs: machine directories the guide writes (fixed by the runtime), each replaced for this run
    by an empty tmpfs in a mount namespace of its own (see private_mounts)."""
    script = "set -euxo pipefail\n" + private_mounts(private_dirs) + "\n".join(shell_blocks(guide))
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/root"), **names}
    if os.environ.get("PYTHONPATH"):  # a source tree run without installing it: its podnet, not another
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    argv = ["bash", "-c", script]
    if private_dirs:
        argv = ["unshare", "--mount", "--propagation", "unchanged", *argv]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def private_mounts(dirs: tuple[str, ...]) -> str:
    """Shell lines that put an empty tmpfs over each of `dirs`, seen only in the guide's mount namespace.

    The namespace keeps the host's propagation (`unshare --propagation unchanged`), so the network
    namespaces the guide names in /run/netns (a shared mount) are the host's; only the mounts that
    hold `dirs` are made private in it first, so the tmpfs mounts never reach the host. (In a chroot
    whose root is no mount point the holding mount is out of sight: the test then checks afterwards
    that nothing reached the host.)
    """
    lines = []
    for d in dirs:
        lines.append(f'holder=$(findmnt -n -o TARGET --target {d} || true)')
        lines.append('[ -z "$holder" ] || mount --make-private "$holder"')
        lines.append(f"mount -t tmpfs -o mode=0755 podnet-guide {d}")
    return "".join(line + "\n" for line in lines)


def netns_dir_shared() -> None:
    """/run/netns a shared mount, as `ip netns add` makes it, before a guide runs in a mount namespace of
    its own: the namespaces it names there are then seen outside (and removed from outside on failure)."""
    os.makedirs("/run/netns", exist_ok=True)
    if subprocess.run(["mount", "--make-shared", "/run/netns"], capture_output=True).returncode != 0:
        subprocess.run(["mount", "--bind", "/run/netns", "/run/netns"], check=True)
        subprocess.run(["mount", "--make-shared", "/run/netns"], check=True)


def make_dirs(*paths: str) -> list[str]:
    """mkdir -p each path; returns the directories this made (deepest first), to remove afterwards."""
    made = []
    for path in paths:
        missing = []
        while path and path != "/" and not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for d in reversed(missing):
            os.mkdir(d, 0o755)
        made = missing + made
    return made


def test_the_podman_guide_has_every_step():
    blocks = shell_blocks("guide-podman.md")
    assert len(blocks) == 5 and "nsenter --net=" in blocks[3] and "lab down" in blocks[4]


def test_the_podman_guide_works_as_written():
    tag = uuid.uuid4().hex[:6]
    lab, cgroup = f"pnt-gp{tag}", f"/pnt-guide-{tag}"
    work = tempfile.mkdtemp(prefix="pnt-guide-podman-")
    try:
        proc = follow("guide-podman.md", LAB=lab, WORK=work, CGROUP_PARENT=cgroup)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        address = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/(\d+)", proc.stdout)
        assert address and address.group(2) == "32", out[-4000:]
        assert "default via 169.254.1.1 dev eth0" in proc.stdout
        assert "2 packets received" in proc.stdout and "ttl=62" in proc.stdout
        # The guide's clean-up: the lab, the work directory and the cgroup parent are gone.
        assert not Lab(lab).exists()
        assert not os.path.exists(work)
        assert not [h for h in cgroup_hierarchies() if os.path.isdir(h + cgroup)]
        assert not [n for n in os.listdir("/run/netns") if n.startswith(lab)]
    finally:
        for pid, started in pids_with_arg("conmon", work):
            kill_pid(pid, started)
        for container in runc_containers("/run/runc"):
            if container["rootfs"].startswith(work + "/"):
                runc_delete("/run/runc", container["id"])
        unmount_all_under(work)
        remove_cgroup_tree(cgroup)
        Lab(lab).down()
        subprocess.run(["rm", "-rf", "--one-file-system", work], check=False)


# containerd ---------------------------------------------------------------------------------------------
# `ctr run --cni` in containerd 1.6 reads the CNI plugins and config from fixed directories: the guide
# writes them as a real node's reader would, and the test gives its run a private, empty copy of each.

CONTAINERD_CNI_DIRS = ("/opt/cni/bin", "/etc/cni/net.d")


def host_files(dirs: tuple[str, ...]) -> dict[str, list[str]]:
    return {d: sorted(os.listdir(d)) for d in dirs}


def test_the_containerd_guide_has_every_step():
    blocks = shell_blocks("guide-containerd.md")
    assert len(blocks) == 7
    assert "install-cni" in blocks[1] and "nsenter --net=" in blocks[2] and "containerd --config" in blocks[2]
    assert "run --rm --cni" in blocks[4] and "ipam show --ip" in blocks[5] and "lab down" in blocks[6]


def test_the_containerd_guide_works_as_written():
    tag = uuid.uuid4().hex[:6]
    lab, cgroup = f"pnt-gc{tag}", f"/pnt-guide-{tag}"
    work = tempfile.mkdtemp(prefix="pnt-guide-containerd-")
    address = os.path.join(work, "containerd.sock")
    shim = shim_socket(address, "guide", "web")
    libcni = LibcniCache()
    netns_dir_shared()
    made = make_dirs(*CONTAINERD_CNI_DIRS)
    before = host_files(CONTAINERD_CNI_DIRS)
    mounted_before = {d: mounts_under(d) for d in CONTAINERD_CNI_DIRS}
    try:
        proc = follow("guide-containerd.md", private_dirs=CONTAINERD_CNI_DIRS, LAB=lab, WORK=work,
                      CGROUP_PARENT=cgroup)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out[-4000:]
        assert "Server:" in proc.stdout  # containerd answered
        # The container: a /32, the default route podnet programs, the pod on node-2 across the tunnel.
        address_line = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/(\d+)", proc.stdout)
        assert address_line and address_line.group(2) == "32", out[-4000:]
        assert "default via 169.254.1.1 dev eth0" in proc.stdout
        assert "2 packets received" in proc.stdout and "ttl=62" in proc.stdout
        # After --rm: the plugin's DEL gave the address back and removed the container's veth on node-1.
        assert f"IP {address_line.group(1)} is not assigned" in proc.stdout, out[-4000:]
        veths = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("cali")]
        assert len(veths) == 1, veths  # the lab pod's only
        assert re.search(r"^CONTAINER\s+IMAGE\s+RUNTIME\s*$", proc.stdout, flags=re.M)  # ctr lists none
        assert not re.search(r"^web\s", proc.stdout, flags=re.M)
        # The guide's clean-up: containerd and its shim ended, the lab, cgroup parent and work dir gone,
        # the shim's socket and libcni's cache entry removed, nothing mounted on the host's CNI dirs.
        assert not pids_with_arg("containerd", work)
        assert not pids_with_arg("containerd-shim-runc-v2", address)
        assert not Lab(lab).exists()
        assert not [n for n in os.listdir("/run/netns") if n.startswith(lab)]
        assert not os.path.exists(work)
        assert not [h for h in cgroup_hierarchies() if os.path.isdir(h + cgroup)]
        assert not os.path.exists(shim)
        assert libcni.entries("guide-web") == []
        assert {d: mounts_under(d) for d in CONTAINERD_CNI_DIRS} == mounted_before
        assert host_files(CONTAINERD_CNI_DIRS) == before  # the host's own dirs were never written
    finally:
        for pid, started in pids_with_arg("containerd", work) + pids_with_arg("containerd-shim-runc-v2", address):
            kill_pid(pid, started)
        runc_root = os.path.join(work, "runc", "guide")
        for container in runc_containers(runc_root):
            runc_delete(runc_root, container["id"])
        unmount_all_under(work)
        remove_cgroup_tree(cgroup)
        Lab(lab).down()
        if os.path.exists(shim):
            os.unlink(shim)
        for entry in libcni.entries("guide-web"):
            os.unlink(os.path.join(LibcniCache.ROOT, "results", entry))
        subprocess.run(["rm", "-rf", "--one-file-system", work], check=False)
        for d in CONTAINERD_CNI_DIRS:  # a tmpfs that reached the host after all
            for point in set(mounts_under(d)) - set(mounted_before[d]):
                subprocess.run(["umount", "-l", point], check=False)
        for d in made:
            rmdir_if_empty(d, wait=0)
