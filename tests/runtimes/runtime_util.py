"""What the containerd and podman harnesses share: binaries, processes by PID, mounts, cgroups, CNI dirs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from podnet.cni.install import install_conflist, install_plugin
from podnet.lab import processes

CNI_SOURCE = "/usr/lib/cni"
NETWORK_NAME = "k8s-pod-network"
CGROUP_ROOT = "/sys/fs/cgroup"


class RuntimeSetupError(RuntimeError):
    def __init__(self, message: str, detail: str = ""):
        super().__init__(message + (f"\n{detail.rstrip()}" if detail else ""))


def scratch_parent() -> str | None:
    """Where runtime temp dirs go: /dev/shm when writable (no fsync cost, fast copies), else the default."""
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def require_binaries(*names: str, hint: str) -> None:
    """Fail (never skip) with the install command when a binary is missing: `make test` installs them."""
    missing = [n for n in names if shutil.which(n) is None and not os.path.exists(n)]
    if missing:
        raise RuntimeSetupError(f"missing {', '.join(missing)}: {hint} (scripts/install-deps.sh does this)")


def podnet_conflist(name: str = NETWORK_NAME) -> dict:
    return {"cniVersion": "1.0.0", "name": name, "plugins": [{"type": "podnet", "ipam": {"type": "podnet-ipam"}}]}


def ptp_conflist(data_dir: str, subnet: str = "10.99.0.0/16", name: str = "ptp-bench") -> dict:
    """The yardstick: veth pair, /32-style addresses, a host route. host-local keeps its state in data_dir."""
    return {"cniVersion": "1.0.0", "name": name, "plugins": [{
        "type": "ptp", "ipMasq": False, "mtu": 1500,
        "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": subnet}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
    }]}


def prepare_cni_dirs(bin_dir: str, conf_dir: str, extra_plugins=("loopback", "ptp", "host-local")) -> None:
    """podnet's plugin plus the reference plugins the runtime runs (loopback always; ptp/host-local for bench)."""
    install_plugin(bin_dir)
    for name in extra_plugins:
        src = os.path.join(CNI_SOURCE, name)
        if not os.path.exists(src):
            raise RuntimeSetupError(f"{src} is missing: apt-get install -y containernetworking-plugins")
        shutil.copy2(src, os.path.join(bin_dir, name))
    os.makedirs(conf_dir, exist_ok=True)


def write_conflist(conf_dir: str, conflist: dict, filename: str = "10-podnet.conflist") -> str:
    """Make `conflist` the only network config in conf_dir (atomic rename; runtimes load the first file)."""
    for old in os.listdir(conf_dir):
        if old != filename:
            os.unlink(os.path.join(conf_dir, old))
    return install_conflist(conf_dir, conflist, filename)


class Process:
    """A process we started, remembered by PID and start time so a recycled PID is never signalled."""

    def __init__(self, popen: subprocess.Popen, what: str):
        self.popen = popen
        self.pid = popen.pid
        self.started = processes.start_time(popen.pid)
        self.what = what

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


def pids_with_arg(executable_basename: str, arg: str) -> list[tuple[int, int | None]]:
    """(pid, start time) of processes running `executable_basename` with `arg`, or a path under it, as an argument.

    Used to find the shims our own containerd started (their -address is our private socket), so they
    can be stopped by PID if a test left a sandbox behind.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        under = arg.rstrip("/").encode() + b"/"
        if argv and os.path.basename(argv[0].decode(errors="replace")) == executable_basename \
                and any(a == arg.encode() or a.startswith(under) for a in argv):
            found.append((int(entry), processes.start_time(int(entry))))
    return found


def kill_pid(pid: int, started: int | None) -> None:
    if processes.alive(pid, started):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for _ in range(200):
            processes._reap(pid)
            if not processes.alive(pid, started):
                return
            time.sleep(0.01)


def mounts_under(path: str) -> list[str]:
    """Mount points at or below `path` (deepest first), from this mount namespace's mountinfo."""
    path = os.path.realpath(path).rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == path or point.startswith(path + "/"):
                found.append(point)
    return sorted(set(found), key=lambda p: -p.count("/"))


def unmount_all_under(path: str) -> list[str]:
    done = []
    for _ in range(5):  # stacked mounts need more than one pass
        points = mounts_under(path)
        if not points:
            break
        for point in points:
            if subprocess.run(["umount", "-l", point], capture_output=True).returncode == 0:
                done.append(point)
    return done


def remove_netns_file(path: str) -> bool:
    """Unmount and delete a network namespace bind mount (e.g. /run/netns/cni-...)."""
    if not os.path.lexists(path):
        return False
    subprocess.run(["umount", "-l", path], capture_output=True)
    try:
        os.unlink(path)
    except OSError:
        pass
    return True


def cgroup_hierarchies() -> list[str]:
    """Mount points of every cgroup hierarchy (v1 controllers, named ones and the v2 unified one)."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            if post.split()[0] in ("cgroup", "cgroup2"):
                points.append(pre.split()[4])
    return points


def kernel_cgroup_hierarchies(proc_cgroup: str = "/proc/self/cgroup") -> tuple[list[str], bool]:
    """The hierarchies this kernel gives this process, from /proc/self/cgroup: the cgroup v1 ones (each
    as its controller list, e.g. "cpu,cpuacct" or "name=systemd") and whether there is the v2 one."""
    v1, v2 = [], False
    with open(proc_cgroup) as f:
        for line in f:
            number, controllers, _ = line.rstrip("\n").split(":", 2)
            if number == "0" and not controllers:
                v2 = True
            elif controllers:
                v1.append(controllers)
    return v1, v2


def cgroup_mount_plan(v1: list[str], v2: bool, root: str = CGROUP_ROOT) -> list[tuple[str, str, str]]:
    """(fstype, options, mount point) to mount, in order, for the layout systemd gives such a kernel:
    cgroup2 on /sys/fs/cgroup when there is no v1 hierarchy; else a tmpfs there with each v1 hierarchy
    in a directory named after its controllers (`name=` dropped) and cgroup2 in `unified`."""
    if not v1:
        return [("cgroup2", "rw", root)] if v2 else []
    plan = [("tmpfs", "mode=0755", root)]
    for controllers in v1:
        named_only = all(c.startswith("name=") for c in controllers.split(","))
        directory = ",".join(c.removeprefix("name=") for c in controllers.split(","))
        plan.append(("cgroup", ("none," if named_only else "") + controllers, os.path.join(root, directory)))
    if v2:
        plan.append(("cgroup2", "rw", os.path.join(root, "unified")))
    return plan


def mount_cgroups_if_none() -> list[str]:
    """Mount this kernel's cgroup hierarchies at /sys/fs/cgroup when nothing at all is mounted there, as
    a container's init mounts them; returns the mount points made, outermost first (none on a machine
    that has them: a working host is never changed).

    runc finds the hierarchies through the mount table and cannot create a container without them. A
    chroot that binds /sys without its submounts (../shared/tools/fresh-debian-check) has none."""
    if not os.path.isdir(CGROUP_ROOT) or mounts_under(CGROUP_ROOT):
        return []
    made = []
    try:
        for fstype, options, point in cgroup_mount_plan(*kernel_cgroup_hierarchies()):
            os.makedirs(point, exist_ok=True)
            subprocess.run(["mount", "-t", fstype, "-o", options, fstype, point], check=True,
                           capture_output=True, text=True)
            made.append(point)
    except (OSError, subprocess.CalledProcessError) as e:
        unmount_cgroups(made)
        detail = e.stderr if isinstance(e, subprocess.CalledProcessError) else str(e)
        raise RuntimeSetupError(f"nothing is mounted at {CGROUP_ROOT} and mounting the cgroup hierarchies failed",
                                detail) from None
    return made


def unmount_cgroups(points: list[str]) -> None:
    """Undo mount_cgroups_if_none (innermost first)."""
    for point in reversed(points):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def remove_cgroup_tree(relative: str) -> list[str]:
    """rmdir `relative` (e.g. /podnet-test-abc) and everything under it, in every hierarchy.

    The tests give every sandbox/container a private cgroup parent; runc and conmon remove their own
    leaves, and this removes the parents (or whatever a failed test left). Processes still in them
    must be gone first.
    """
    removed = []
    relative = relative.strip("/")
    if not relative:
        raise ValueError("refusing to remove the cgroup root")
    for hierarchy in cgroup_hierarchies():
        top = os.path.join(hierarchy, relative)
        if not os.path.isdir(top):
            continue
        for d, _, _ in sorted(os.walk(top), key=lambda t: -t[0].count("/")):
            try:
                os.rmdir(d)
                removed.append(d)
            except OSError:
                pass
    return removed


def log_tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


_RECORDER = '''#!{python} -IS
# podnet tests: records each CNI call (environment, whether a prevResult came, the answer), then
# hands it unchanged to the real plugin.
import json, os, subprocess, sys, time
data = sys.stdin.buffer.read()
try:
    conf = json.loads(data) if data.strip() else {{}}
except ValueError:
    conf = {{}}
proc = subprocess.run([{real!r}], input=data, capture_output=True)
record = {{"env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}},
          "prevResult": isinstance(conf, dict) and "prevResult" in conf,
          "code": proc.returncode, "stdout": proc.stdout.decode(errors="replace"), "time": time.time()}}
with open({log!r}, "a") as f:
    f.write(json.dumps(record) + "\\n")
sys.stdout.buffer.write(proc.stdout)
sys.stderr.buffer.write(proc.stderr)
sys.exit(proc.returncode)
'''


def install_call_recorder(bin_dir: str, log_path: str, plugin: str = "podnet") -> None:
    """Put a recorder in front of `plugin` in bin_dir: every call is appended to log_path as JSON."""
    real = os.path.join(bin_dir, f"{plugin}-real")
    os.replace(os.path.join(bin_dir, plugin), real)
    path = os.path.join(bin_dir, plugin)
    with open(path, "w") as f:
        f.write(_RECORDER.format(python="/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
                                 real=real, log=log_path))
    os.chmod(path, 0o755)


def recorded_calls(log_path: str, container_id: str | None = None) -> list[dict]:
    """Calls the recorder saw (optionally only those for one container), oldest first."""
    try:
        with open(log_path) as f:
            calls = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
    if container_id:
        calls = [c for c in calls if c["env"].get("CNI_CONTAINERID") == container_id]
    return calls


class LibcniCache:
    """libcni (inside containerd and podman) keeps results in /var/lib/cni/results and cannot be pointed
    elsewhere in these versions. Entries go away after DEL; the directories are removed at teardown if
    this run created them and they are empty."""

    ROOT = "/var/lib/cni"

    def __init__(self):
        self.existed = os.path.isdir(self.ROOT)

    def entries(self, container_id: str) -> list[str]:
        """Cached results of one container (files are named <network>-<container id>-<ifname>)."""
        results = os.path.join(self.ROOT, "results")
        try:
            return [n for n in os.listdir(results) if f"-{container_id}-" in n]
        except FileNotFoundError:
            return []

    def cleanup(self) -> None:
        if not self.existed:
            rmdir_if_empty(os.path.join(self.ROOT, "results"), self.ROOT)


def rmdir_if_empty(*paths: str, wait: float = 1.0) -> bool:
    """rmdir each path in order (a child before its parent) if it is empty, giving processes that are
    still exiting (a shim removing its socket) up to `wait` seconds. Never removes a non-empty dir."""
    deadline = time.monotonic() + wait
    for path in paths:
        while os.path.isdir(path):
            try:
                os.rmdir(path)
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.05)
    return True


# Crash safety ----------------------------------------------------------------
#
# Fixture teardown removes everything when a test fails or is interrupted. If the test process itself
# is killed (SIGKILL, OOM), its runtime dirs stay behind with an owner.json naming the dead process;
# `sweep_orphans()` (scripts/clean-runtimes.sh) removes those, and only those.

OWNER_FILE = "owner.json"


def write_owner(directory: str, **extra) -> None:
    record = {"pid": os.getpid(), "start": processes.start_time(os.getpid()), **extra}
    with open(os.path.join(directory, OWNER_FILE), "w") as f:
        json.dump(record, f)


def read_owner(directory: str) -> dict | None:
    try:
        with open(os.path.join(directory, OWNER_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def owner_alive(directory: str) -> bool:
    owner = read_owner(directory)
    return bool(owner) and processes.alive(owner["pid"], owner.get("start"))


def runc_containers(root: str) -> list[dict]:
    """runc's state of each container under a runc state root: id, init pid, rootfs, netns path."""
    found = []
    try:
        names = os.listdir(root)
    except OSError:
        return found
    for cid in names:
        try:
            with open(os.path.join(root, cid, "state.json")) as f:
                state = json.load(f)
        except (OSError, ValueError):
            continue
        config = state.get("config", {})
        netns = next((n.get("path", "") for n in config.get("namespaces") or [] if n.get("type") == "NEWNET"), "")
        found.append({"id": cid, "pid": state.get("init_process_pid"), "start": state.get("init_process_start"),
                      "rootfs": config.get("rootfs", ""), "netns": netns})
    return found


def runc_delete(root: str, container_id: str) -> None:
    subprocess.run(["runc", "--root", root, "delete", "--force", container_id], capture_output=True, timeout=30)


def runtime_dirs() -> list[str]:
    """Every runtime temp dir these tests may have made (in /dev/shm or the temp dir)."""
    import glob
    import tempfile

    dirs = []
    for parent in filter(None, {scratch_parent(), tempfile.gettempdir()}):
        for prefix in ("podnet-containerd-", "podnet-podman-"):
            dirs += glob.glob(os.path.join(parent, prefix + "*"))
    return sorted(d for d in dirs if os.path.isdir(d))


class RuntimeDirs:
    """The scratch layout both runtimes share: everything under self.dir, the CNI bin and conf
    directories the runtime reads, and the log the call recorder writes."""

    dir: str = ""

    @classmethod
    def orphan(cls, directory: str):
        """The instance behind a dir whose test process died without teardown (for sweep_orphans):
        rebuilt from the dir's owner record, it removes what it recorded, never shared directories."""
        owner = read_owner(directory) or {}
        self = cls(owner.get("node_netns", ""))
        self.dir = directory
        if owner.get("cgroup_parent"):
            self.cgroup_parent = owner["cgroup_parent"]
        self.libcni.existed = True  # a sweep removes entries, never the shared directory
        self._adopted()
        return self

    def _adopted(self) -> None:
        """Mark the runtime's own shared directories as not this instance's to remove."""

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    @property
    def cni_bin_dir(self) -> str:
        return self.path("cni", "bin")

    @property
    def cni_conf_dir(self) -> str:
        return self.path("cni", "net.d")

    @property
    def calls_log(self) -> str:
        return self.path("cni-calls.jsonl")

    def calls(self, container_id: str | None = None) -> list[dict]:
        """The podnet plugin calls the runtime made (with record_calls), optionally for one container."""
        return recorded_calls(self.calls_log, container_id)
