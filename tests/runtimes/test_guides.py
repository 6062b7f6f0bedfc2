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
from tests.runtimes.runtime_util import (
    cgroup_hierarchies,
    kill_pid,
    pids_with_arg,
    remove_cgroup_tree,
    runc_containers,
    runc_delete,
    unmount_all_under,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def shell_blocks(guide: str) -> list[str]:
    with open(os.path.join(REPO, "docs", guide)) as f:
        return re.findall(r"^```sh\n(.*?)^```$", f.read(), flags=re.S | re.M)


def follow(guide: str, **names: str) -> subprocess.CompletedProcess:
    """Run the guide's commands as a reader would, with podnet on PATH (the environment's own)."""
    script = "set -euxo pipefail\n" + "\n".join(shell_blocks(guide))
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env = {"PATH": path, "HOME": os.environ.get("HOME", "/root"), **names}
    if os.environ.get("PYTHONPATH"):  # a source tree run without installing it: its podnet, not another
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)


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
