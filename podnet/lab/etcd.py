"""etcd members for labs and tests: started in a network namespace (or this one), tracked by PID.

A lab's etcd listens on the underlay gateway's address inside the underlay
namespace, where every node's agent reaches it over the underlay, as agents
on real machines reach a shared etcd cluster. Data lives on tmpfs when there
is one: a lab's store dies with the lab, and fsync on a VM disk would
dominate every write.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request

from podnet.netns import entered
from podnet.errors import PodnetError
from podnet.lab import processes

ETCD_BINARY = "etcd"
READY_TIMEOUT = 30.0


class EtcdError(PodnetError):
    pass


def data_root() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else "/tmp"


class EtcdMember:
    """One etcd process; kill() is a crash (SIGKILL), stop() an orderly shutdown, start() (re)starts it."""

    def __init__(self, name: str, data_dir: str, host: str, client_port: int, peer_port: int,
                 cluster_args: list[str], netns: str | None = None):
        self.name, self.data_dir, self.host = name, data_dir, host
        self.client_port, self.peer_port = client_port, peer_port
        self.cluster_args = cluster_args
        self.netns = netns
        self.log_path = os.path.join(os.path.dirname(data_dir), f"{name}.log")
        self.pid: int | None = None
        self.pid_start: int | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.client_port}"

    def args(self) -> list[str]:
        peer = f"http://{self.host}:{self.peer_port}"
        cmd = [ETCD_BINARY, f"--name={self.name}", f"--data-dir={self.data_dir}",
               f"--listen-client-urls={self.endpoint}", f"--advertise-client-urls={self.endpoint}",
               f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
               "--logger=zap", "--log-level=warn", *self.cluster_args]
        # Enter only the network namespace, like the lab's agents.
        return (["nsenter", f"--net=/run/netns/{self.netns}"] if self.netns else []) + cmd

    @property
    def running(self) -> bool:
        return self.pid is not None and processes.alive(self.pid, self.pid_start)

    def start(self) -> None:
        if self.running:
            raise EtcdError(f"etcd member {self.name} is already running")
        if shutil.which(ETCD_BINARY) is None:
            raise EtcdError("etcd is not installed", "apt-get install etcd-server")
        os.makedirs(os.path.dirname(self.data_dir), exist_ok=True)
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.pid, self.pid_start = proc.pid, processes.start_time(proc.pid)

    def kill(self) -> None:
        if self.running:
            os.kill(self.pid, signal.SIGKILL)
            for _ in range(200):
                processes._reap(self.pid)
                if not self.running:
                    break
                time.sleep(0.01)

    def stop(self) -> None:
        if self.pid is not None:
            processes.stop(self.pid, self.pid_start, timeout=10)

    def _post(self, path: str, body: dict, timeout: float = 2.0) -> dict:
        with self._in_netns():
            req = urllib.request.Request(self.endpoint + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())

    def _in_netns(self):
        return entered(self.netns) if self.netns else contextlib.nullcontext()

    def healthy(self) -> bool:
        try:
            with self._in_netns(), urllib.request.urlopen(self.endpoint + "/health", timeout=1.0) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def status(self) -> dict:
        return self._post("/v3/maintenance/status", {})

    def log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def to_state(self) -> dict:
        return {"name": self.name, "pid": self.pid, "pid_start": self.pid_start, "what": f"etcd {self.name}"}


class EtcdCluster:
    """`size` members on one host address (distinct ports), optionally inside a namespace."""

    def __init__(self, base_dir: str, size: int, host: str = "127.0.0.1", ports: list[int] | None = None,
                 netns: str | None = None, fast_election: bool = True, token: str = "podnet"):
        ports = ports or [2379 + 10000 * i + k for i in range(size) for k in (0, 1)]
        names = [f"etcd-{i}" for i in range(size)]
        initial = ",".join(f"{n}=http://{host}:{ports[2 * i + 1]}" for i, n in enumerate(names))
        args = [f"--initial-cluster={initial}", "--initial-cluster-state=new", f"--initial-cluster-token={token}"]
        if fast_election:  # one machine, microsecond round trips: elect a new leader in about a second
            args += ["--heartbeat-interval=50", "--election-timeout=500"]
        self.base_dir = base_dir
        self.members = [EtcdMember(n, os.path.join(base_dir, n), host, ports[2 * i], ports[2 * i + 1], args, netns)
                        for i, n in enumerate(names)]

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(m.address for m in self.members)

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        for m in self.members:
            m.start()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until every running member is healthy (it has a leader)."""
        deadline = time.monotonic() + timeout
        while True:
            running = [m for m in self.members if m.running]
            if running and all(m.healthy() for m in running):
                return
            if time.monotonic() > deadline:
                tails = "".join(f"--- {m.name} ---\n{m.log_tail()}" for m in self.members)
                raise EtcdError(f"etcd was not ready within {timeout:.0f}s", tails)
            time.sleep(0.05)

    def leader(self, timeout: float = READY_TIMEOUT) -> EtcdMember:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids = {}
            for m in self.members:
                if m.running:
                    try:
                        st = m.status()
                        ids[st["header"]["member_id"]] = (m, st.get("leader"))
                    except (OSError, KeyError, ValueError):
                        pass
            for m, leader in ids.values():
                if leader in ids:
                    return ids[leader][0]
            time.sleep(0.05)
        raise EtcdError("no etcd leader")

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def kill(self) -> None:
        for m in self.members:
            m.kill()

    def remove_data(self) -> None:
        shutil.rmtree(self.base_dir, ignore_errors=True)
