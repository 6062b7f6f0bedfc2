"""containerd 1.6 as a lab node's container runtime, driven over the CRI like kubelet drives it.

`Containerd(node_netns).start()`:
- makes a private temp dir with root, state, the gRPC socket, runc's state root, a CNI bin dir
  (podnet's plugin, loopback, ptp, host-local) and a CNI conf dir (podnet's conflist);
- writes a config (version 2) that points every path there, sets the CRI plugin's snapshotter to
  `native`, `restrict_oom_score_adj = true` (root here lacks CAP_SYS_RESOURCE) and `sandbox_image` to
  a pause image built from busybox-static;
- starts `nsenter --net=/run/netns/<node> containerd --config ...`: only the network namespace is the
  node's. (`ip netns exec` would also remount /sys, hiding the cgroup mounts runc needs.) The CNI
  plugins containerd runs are therefore in the node's namespace, where the podnet agent listens;
- imports the pause image with `ctr -n k8s.io images import --snapshotter native`;
- waits until the CRI reports RuntimeReady and NetworkReady and knows the image.

`stop()` removes every sandbox through the CRI (so the plugin sees its DELs), stops containerd by PID,
then removes whatever is still there: runc containers in our runc root, shims started with our
socket, network namespaces of our sandboxes, mounts under the temp dir, the sandboxes' cgroup parent,
the temp dir. Safe to call after a failed start and safe to repeat.

Paths containerd 1.6 does not let us move: the shim sockets (/run/containerd/s/<hash>, removed when
the shim exits), the sandbox network namespaces (/run/netns/cni-<uuid>, removed by RemovePodSandbox;
they must live in /run/netns, which `ip netns` made a shared mount, so that the podnet agent, which runs
in its own mount namespace, sees them) and libcni's result cache (/var/lib/cni/results/<net>-<id>-eth0,
removed after DEL).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid

from tests.runtimes import images
from tests.runtimes.cri import CriClient
from tests.runtimes.runtime_util import (
    RuntimeDirs,
    LibcniCache,
    Process,
    RuntimeSetupError,
    install_call_recorder,
    kill_pid,
    log_tail,
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

K8S_NAMESPACE = "k8s.io"
READY_TIMEOUT = 30.0
INSTALL_HINT = "apt-get install -y containerd runc containernetworking-plugins busybox-static"
SHIM_SOCKET_DIR = "/run/containerd/s"  # fixed in containerd 1.6 (defaults.DefaultStateDir + "/s")


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def shim_socket(address: str, namespace: str, container_id: str) -> str:
    """Where containerd 1.6 puts a task's shim socket: /run/containerd/s/sha256(<address>/<ns>/<id>)."""
    return os.path.join(SHIM_SOCKET_DIR, hashlib.sha256(os.path.join(address, namespace, container_id).encode()).hexdigest())


class Containerd(RuntimeDirs):
    def __init__(self, node_netns: str, base_dir: str | None = None, conflist: dict | None = None,
                 log_level: str = "warn", record_calls: bool = False):
        """record_calls: put a recorder in front of the podnet plugin (see calls()); off for benchmarks."""
        self.node_netns = node_netns
        self.record_calls = record_calls
        self.libcni = LibcniCache()
        self.base_dir = base_dir
        self.conflist = conflist or podnet_conflist()
        self.log_level = log_level
        self.dir = ""
        self.process: Process | None = None
        self.client: CriClient | None = None
        # Every sandbox gets this cgroup parent (as kubelet gives kubepods/...): one tree to remove.
        self.cgroup_parent = f"/podnet-test-{uuid.uuid4().hex[:10]}"
        self.sandboxes: dict[str, str] = {}  # sandbox id -> network namespace path
        self.seen: set[str] = set()  # every sandbox id this instance ran (for leftovers in shared dirs)
        self._run_shim_dir_existed = os.path.isdir(SHIM_SOCKET_DIR)

    def _adopted(self) -> None:
        self._run_shim_dir_existed = False

    # Paths -----------------------------------------------------------------

    @property
    def socket(self) -> str:
        return self.path("containerd.sock")

    @property
    def log_path(self) -> str:
        return self.path("containerd.log")

    @property
    def runc_root(self) -> str:
        return self.path("runc")

    # Start -----------------------------------------------------------------

    def config_text(self) -> str:
        p = {k: _toml_str(v) for k, v in {
            "root": self.path("root"), "state": self.path("state"), "temp": self.path("tmp"),
            "sock": self.socket, "opt": self.path("opt"), "bin": self.cni_bin_dir, "conf": self.cni_conf_dir,
            "runc": self.runc_root, "image": images.PAUSE_IMAGE, "level": self.log_level,
        }.items()}
        return f"""version = 2
root = {p['root']}
state = {p['state']}
temp = {p['temp']}
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {p['sock']}

[debug]
  level = {p['level']}

[plugins."io.containerd.internal.v1.opt"]
  path = {p['opt']}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {p['image']}
  restrict_oom_score_adj = true
  disable_tcp_service = true
  enable_selinux = false
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {p['bin']}
    conf_dir = {p['conf']}
    max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = {p['runc']}
        SystemdCgroup = false
"""

    def start(self) -> "Containerd":
        require_binaries("containerd", "ctr", "runc", "containerd-shim-runc-v2", "nsenter", hint=INSTALL_HINT)
        if not os.path.exists(f"/run/netns/{self.node_netns}"):
            raise RuntimeSetupError(f"no network namespace {self.node_netns}")
        self.dir = tempfile.mkdtemp(prefix="podnet-containerd-", dir=self.base_dir or scratch_parent())
        try:
            write_owner(self.dir, node_netns=self.node_netns, cgroup_parent=self.cgroup_parent)
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        for d in ("root", "state", "tmp", "opt", "runc"):
            os.makedirs(self.path(d), mode=0o711)
        prepare_cni_dirs(self.cni_bin_dir, self.cni_conf_dir)
        if self.record_calls:
            install_call_recorder(self.cni_bin_dir, self.calls_log)
        write_conflist(self.cni_conf_dir, self.conflist)
        archive = self.path("pause.tar")
        rootfs = images.build_rootfs(self.path("pause-rootfs"), images.PAUSE_APPLETS)
        images.write_image_archive(archive, rootfs, images.PAUSE_IMAGE, images.SLEEP_FOREVER)
        config = self.path("config.toml")
        with open(config, "w") as f:
            f.write(self.config_text())
        with open(self.log_path, "ab") as log:
            popen = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.node_netns}", "containerd", "--config", config],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.process = Process(popen, "containerd")
        self._wait_for_socket()
        self.client = CriClient(self.socket)
        self._ctr("images", "import", "--snapshotter", "native", archive)
        self.wait_ready(image=True)

    def _wait_for_socket(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not os.path.exists(self.socket):
            if not self.process.running:
                raise RuntimeSetupError(f"containerd exited (code {self.process.popen.returncode})",
                                        log_tail(self.log_path))
            if time.monotonic() > deadline:
                raise RuntimeSetupError("containerd did not open its socket", log_tail(self.log_path))
            time.sleep(0.02)

    def _ctr(self, *args: str, timeout: float = 60.0) -> str:
        proc = subprocess.run(["ctr", "--address", self.socket, "--namespace", K8S_NAMESPACE, *args],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeSetupError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def wait_ready(self, image: bool = False, network_name: str | None = None, timeout: float = READY_TIMEOUT) -> None:
        """Until the CRI says RuntimeReady and NetworkReady (and knows the pause image / has loaded the
        network named `network_name`)."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                conditions = self.client.conditions()
                last = conditions
                ok = conditions.get("RuntimeReady") and conditions.get("NetworkReady")
                if ok and image:
                    ok = bool(self.client.image_id(images.PAUSE_IMAGE))
                if ok and network_name:
                    ok = network_name in self.loaded_networks()
                if ok:
                    return
            except self.client.RpcError as e:  # the CRI plugin is still starting
                last = e
                if "unknown service" in str(e.details() if hasattr(e, "details") else e):
                    raise RuntimeSetupError("containerd runs without its CRI plugin", log_tail(self.log_path))
            if not self.process.running:
                raise RuntimeSetupError("containerd exited", log_tail(self.log_path))
            if time.monotonic() > deadline:
                raise RuntimeSetupError(f"containerd's CRI not ready after {timeout}s: {last}", log_tail(self.log_path))
            time.sleep(0.05)

    def loaded_networks(self) -> list[str]:
        """Names of the CNI networks the CRI plugin has loaded (from its verbose status)."""
        info = self.client.status(verbose=True).info
        try:
            cni = json.loads(info.get("cniconfig", "{}"))
        except ValueError:
            return []
        return [n.get("Config", {}).get("Network", {}).get("name") or n.get("Config", {}).get("Name", "")
                for n in cni.get("Networks") or []]

    def use_network(self, conflist: dict) -> None:
        """Switch the CNI network config (containerd watches the conf dir) and wait until it is loaded."""
        write_conflist(self.cni_conf_dir, conflist)
        self.conflist = conflist
        self.wait_ready(network_name=conflist["name"])

    # Sandboxes -------------------------------------------------------------

    def sandbox_request(self, name: str | None = None, namespace: str = "default"):
        """A RunPodSandboxRequest as kubelet sends it, with this runtime's cgroup parent."""
        config = self.client.sandbox_config(name, namespace)
        config.linux.cgroup_parent = self.cgroup_parent
        return self.client.pb.RunPodSandboxRequest(config=config)

    def track(self, sandbox_id: str) -> str:
        """Remember a sandbox (and its network namespace) so stop() can clean up after a failure."""
        self.seen.add(sandbox_id)
        self.sandboxes[sandbox_id] = ""
        self.sandboxes[sandbox_id] = self.sandbox_netns(sandbox_id)
        return sandbox_id

    def run_sandbox(self, name: str | None = None, namespace: str = "default") -> str:
        """RunPodSandbox; the sandbox is tracked for cleanup. Returns its id."""
        return self.track(self.client.RunPodSandbox(self.sandbox_request(name, namespace)).pod_sandbox_id)

    def sandbox_pid(self, sandbox_id: str) -> int:
        return int(self.client.sandbox_info(sandbox_id)["pid"])

    def sandbox_netns(self, sandbox_id: str) -> str:
        """The sandbox's network namespace path (from the runtime spec containerd reports)."""
        spec = self.client.sandbox_info(sandbox_id).get("runtimeSpec", {})
        for ns in spec.get("linux", {}).get("namespaces", []):
            if ns.get("type") == "network":
                return ns.get("path", "")
        return ""

    def remove_sandbox(self, sandbox_id: str) -> None:
        """StopPodSandbox (DEL with the netns) then RemovePodSandbox (DEL with an empty netns)."""
        self.client.stop_sandbox(sandbox_id)
        self.client.remove_sandbox(sandbox_id)
        self.sandboxes.pop(sandbox_id, None)

    # Stop ------------------------------------------------------------------

    def stop(self) -> list[str]:
        """Remove everything this instance made; returns what needed forcing (empty when all was clean)."""
        forced: list[str] = []
        if self.client is not None and self.process is not None and self.process.running:
            try:
                for sb in self.client.sandboxes():
                    try:
                        self.client.stop_sandbox(sb.id)
                        self.client.remove_sandbox(sb.id)
                    except self.client.RpcError as e:
                        forced.append(f"sandbox {sb.id}: {e}")
                    self.sandboxes.pop(sb.id, None)
            except self.client.RpcError as e:
                forced.append(f"list sandboxes: {e}")
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.process is not None:
            self.process.stop()
        if self.dir:
            forced += self._force_cleanup()
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""
        return forced

    def shim_socket(self, container_id: str) -> str:
        return shim_socket(self.socket, K8S_NAMESPACE, container_id)

    def _force_cleanup(self) -> list[str]:
        forced = []
        for pid, started in pids_with_arg("containerd", self.path("config.toml")):  # outlived its owner
            kill_pid(pid, started)
            forced.append(f"containerd pid {pid}")
        ids = set(self.sandboxes) | self.seen
        netns_paths = {p for p in self.sandboxes.values() if p}
        # Containers runc still knows in our private state root.
        for ns_dir in (os.listdir(self.runc_root) if os.path.isdir(self.runc_root) else []):
            root = os.path.join(self.runc_root, ns_dir)
            for container in runc_containers(root):
                runc_delete(root, container["id"])
                forced.append(f"runc container {container['id']}")
                ids.add(container["id"])
                if container["netns"]:
                    netns_paths.add(container["netns"])
        # Shims started by our containerd (found by our private socket), stopped by PID.
        for pid, started in pids_with_arg("containerd-shim-runc-v2", self.socket):
            kill_pid(pid, started)
            forced.append(f"shim pid {pid}")
        for cid in ids:  # a killed shim leaves its socket
            sock = self.shim_socket(cid)
            if os.path.exists(sock):
                os.unlink(sock)
                forced.append(f"shim socket {sock}")
        for path in netns_paths:
            if remove_netns_file(path):
                forced.append(f"netns {path}")
        for cid in ids:
            for entry in self.libcni.entries(cid):
                os.unlink(os.path.join(LibcniCache.ROOT, "results", entry))
                forced.append(f"libcni cache {entry}")
        self.sandboxes.clear()
        forced += [f"mount {m}" for m in unmount_all_under(self.dir)]
        remove_cgroup_tree(self.cgroup_parent)
        self.libcni.cleanup()
        if not self._run_shim_dir_existed:  # only if we made it, and only when empty
            rmdir_if_empty(SHIM_SOCKET_DIR, os.path.dirname(SHIM_SOCKET_DIR))
        return forced
