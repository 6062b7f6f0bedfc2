"""podman 4.3 with the CNI network backend and runc, as a lab node's container runtime.

`Podman(node_netns).setup()` makes a private temp dir with storage (--root/--runroot, vfs), a
containers.conf (CONTAINERS_CONF points at it) whose every path is in that dir, a CNI bin dir
(podnet's plugin and loopback), a CNI config dir holding podnet's conflist, and a busybox-static rootfs.
`run(...)` executes `nsenter --net=/run/netns/<node> podman ... run --network k8s-pod-network --rootfs
<copy of the rootfs> ...`: podman, conmon and the CNI plugins run in the node's network namespace,
where the podnet agent listens; the container gets a fresh namespace that podman creates as
/run/netns/netns-<uuid> (a shared mount, visible to the agent's mount namespace).

`teardown()` removes every container through podman (`rm --force`, so the plugin sees its DEL), then
whatever is left: conmon processes found by our private paths (stopped by PID), runc containers whose
rootfs is in our dir, their network namespaces and libcni cache entries, mounts under the temp dir,
the cgroup parent, the temp dir. Safe after a failed setup and safe to repeat.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid

from tests.runtimes import images
from tests.runtimes.runtime_util import (
    RuntimeDirs,
    LibcniCache,
    RuntimeSetupError,
    install_call_recorder,
    kill_pid,
    pids_with_arg,
    podnet_conflist,
    prepare_cni_dirs,
    remove_cgroup_tree,
    remove_netns_file,
    require_binaries,
    rmdir_if_empty,
    runc_containers,
    runc_delete,
    scratch_parent,
    unmount_all_under,
    write_conflist,
    write_owner,
)

INSTALL_HINT = "apt-get install -y podman runc containernetworking-plugins busybox-static"
PODMAN_RUNC_ROOT = "/run/runc"  # podman 4.3 as root runs runc with runc's default state root


def _toml_str(value: str) -> str:
    return json.dumps(value)


class Podman(RuntimeDirs):
    def __init__(self, node_netns: str, base_dir: str | None = None, conflist: dict | None = None,
                 record_calls: bool = False):
        self.node_netns = node_netns
        self.record_calls = record_calls
        self.libcni = LibcniCache()
        self._runc_root_existed = os.path.isdir(PODMAN_RUNC_ROOT)
        self.base_dir = base_dir
        self.conflist = conflist or podnet_conflist()
        self.dir = ""
        self.cgroup_parent = f"/podnet-test-{uuid.uuid4().hex[:10]}"
        self.containers: set[str] = set()  # names we created

    def _adopted(self) -> None:
        self._runc_root_existed = True

    @property
    def network(self) -> str:
        return self.conflist["name"]

    @property
    def rootfs(self) -> str:
        return self.path("rootfs")

    def config_text(self) -> str:
        p = {k: _toml_str(v) for k, v in {
            "bin": self.cni_bin_dir, "conf": self.cni_conf_dir, "tmp": self.path("tmp"),
            "events": self.path("events.log"), "static": self.path("root", "libpod"),
            "volumes": self.path("root", "volumes"),
        }.items()}
        return f"""[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
log_driver = "k8s-file"

[network]
network_backend = "cni"
cni_plugin_dirs = [{p['bin']}]
network_config_dir = {p['conf']}
default_network = {_toml_str(self.network)}

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = {p['events']}
tmp_dir = {p['tmp']}
static_dir = {p['static']}
volume_path = {p['volumes']}
lock_type = "file"
image_copy_tmp_dir = {p['tmp']}
"""

    def setup(self) -> "Podman":
        require_binaries("podman", "conmon", "runc", "nsenter", hint=INSTALL_HINT)
        if not os.path.exists(f"/run/netns/{self.node_netns}"):
            raise RuntimeSetupError(f"no network namespace {self.node_netns}")
        self.dir = tempfile.mkdtemp(prefix="podnet-podman-", dir=self.base_dir or scratch_parent())
        try:
            write_owner(self.dir, node_netns=self.node_netns, cgroup_parent=self.cgroup_parent)
            for d in ("root", "runroot", "tmp"):
                os.makedirs(self.path(d))
            prepare_cni_dirs(self.cni_bin_dir, self.cni_conf_dir, extra_plugins=("loopback",))
            if self.record_calls:
                install_call_recorder(self.cni_bin_dir, self.calls_log)
            write_conflist(self.cni_conf_dir, self.conflist, f"10-{self.network}.conflist")
            images.build_rootfs(self.rootfs)
            with open(self.path("containers.conf"), "w") as f:
                f.write(self.config_text())
        except BaseException:
            self.teardown()
            raise
        return self

    def env(self) -> dict:
        return {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "CONTAINERS_CONF": self.path("containers.conf"), "TMPDIR": self.path("tmp"),
                "HOME": self.path("tmp")}

    def launcher(self) -> list[str]:
        """How podman is started in the node: nsenter enters only the network namespace; with
        `self.private_mounts`, it also gets a mount namespace of its own, a slave of the machine's, as
        `ip netns exec` gives one: the container's namespace is mounted there out of the agent's sight.
        (Not `ip netns exec` itself: it also mounts a fresh /sys, which on a host with cgroup v1
        hierarchies under /sys/fs/cgroup hides them, and runc then cannot start any container.)"""
        if getattr(self, "private_mounts", False):
            return ["nsenter", f"--net=/run/netns/{self.node_netns}", "unshare", "--mount", "--propagation", "slave"]
        return ["nsenter", f"--net=/run/netns/{self.node_netns}"]

    def podman(self, *args: str, timeout: float = 60.0, check: bool = False) -> subprocess.CompletedProcess:
        cmd = [*self.launcher(), "podman",
               "--root", self.path("root"), "--runroot", self.path("runroot"), "--storage-driver", "vfs",
               "--cgroup-manager", "cgroupfs", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env(),
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeSetupError(f"podman {' '.join(args)} failed (exit {proc.returncode})",
                                    proc.stderr + proc.stdout)
        return proc

    def run(self, name: str, *command: str, rm: bool = False, extra: tuple = (), timeout: float = 60.0
            ) -> subprocess.CompletedProcess:
        """`podman run` a busybox container on the podnet network (a private copy of the rootfs each)."""
        rootfs = self.path(f"rootfs-{name}")
        if not os.path.exists(rootfs):
            shutil.copytree(self.rootfs, rootfs, symlinks=True)
        self.containers.add(name)
        args = ["run", "--name", name, "--network", self.network, "--cgroup-parent", self.cgroup_parent,
                "--cap-add", "NET_RAW", *(["--rm"] if rm else []), *extra, "--rootfs", rootfs, *command]
        return self.podman(*args, timeout=timeout)

    def rm(self, name: str) -> subprocess.CompletedProcess:
        proc = self.podman("rm", "--force", "--time", "0", "--ignore", name)
        if proc.returncode == 0:
            self.containers.discard(name)
            shutil.rmtree(self.path(f"rootfs-{name}"), ignore_errors=True)
        return proc

    def inspect(self, name: str) -> dict | None:
        proc = self.podman("container", "inspect", name)
        if proc.returncode != 0:
            return None
        data = json.loads(proc.stdout)
        return data[0] if data else None

    def container_names(self) -> list[str]:
        proc = self.podman("ps", "--all", "--format", "{{.Names}}")
        return proc.stdout.split() if proc.returncode == 0 else []

    def teardown(self) -> list[str]:
        """Remove everything this instance made; returns what needed forcing."""
        forced: list[str] = []
        if not self.dir:
            return forced
        netns_paths, ids = [], []
        node_there = os.path.exists(f"/run/netns/{self.node_netns}")
        if os.path.exists(self.path("containers.conf")) and node_there:
            for name in set(self.container_names()) | self.containers:
                info = self.inspect(name)
                if info:
                    netns_paths.append(info.get("NetworkSettings", {}).get("SandboxKey", ""))
                    ids.append(info.get("Id", ""))
                    forced.append(f"container {name}")
                self.rm(name)
        # What outlived podman: conmon carries our private paths in argv; runc (podman runs it with its
        # default state root, shared with others) knows our containers by their rootfs in our dir.
        for pid, started in pids_with_arg("conmon", self.dir):
            kill_pid(pid, started)
            forced.append(f"conmon pid {pid}")
        for container in runc_containers(PODMAN_RUNC_ROOT):
            if container["rootfs"].startswith(self.dir + "/"):
                runc_delete(PODMAN_RUNC_ROOT, container["id"])
                forced.append(f"runc container {container['id']}")
                ids.append(container["id"])
                netns_paths.append(container["netns"])
        for path in set(netns_paths):
            if path and remove_netns_file(path):
                forced.append(f"netns {path}")
        for cid in filter(None, ids):
            for entry in self.libcni.entries(cid):
                os.unlink(os.path.join(LibcniCache.ROOT, "results", entry))
                forced.append(f"libcni cache {entry}")
        forced += [f"mount {m}" for m in unmount_all_under(self.dir)]
        remove_cgroup_tree(self.cgroup_parent)
        self.libcni.cleanup()
        if not self._runc_root_existed:  # only if this run made it, and only when empty
            rmdir_if_empty(PODMAN_RUNC_ROOT)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = ""
        return forced
