"""Shared pytest fixtures.

Sections are self-contained; add new fixtures in their own section.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

# ===========================================================================
# etcd: real etcd servers on loopback (issue 3)
#
# etcd_server      one member, started once per session
# etcd_cluster     three members, fresh for each test (fault tests kill members)
# etcd_tls_server  one member that wants TLS client certificates (per module)
# Each member runs on free random 127.0.0.1 ports with its data in a temporary
# directory (in /dev/shm when there is one, so fsync is cheap) and is stopped
# by its PID at teardown, whatever the test did. Members are also marked to
# die with the thread that started them (PR_SET_PDEATHSIG), so a killed pytest
# leaves none behind: start members from the test's own thread.
# ===========================================================================

ETCD_BINARY = "etcd"
ETCD_READY_TIMEOUT = 20.0


def _free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (held open together so they are distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _etcd_post(endpoint: str, path: str, body: dict, timeout: float = 2.0, context=None) -> dict:
    """A raw call to etcd's JSON gateway, independent of the code under test."""
    req = urllib.request.Request(
        endpoint + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
        return json.loads(resp.read() or b"{}")


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if pytest dies without running teardown."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdTls:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (made with openssl)."""

    def __init__(self, directory: Path):
        if shutil.which("openssl") is None:
            # Not a skip: make test installs it, and a silent skip would hide an untested TLS path.
            pytest.fail("openssl is not installed (apt-get install -y openssl)")
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.ca_file = str(directory / "ca.crt")
        self.server_cert, self.server_key = str(directory / "server.crt"), str(directory / "server.key")
        self.client_cert, self.client_key = str(directory / "client.crt"), str(directory / "client.key")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        self._openssl("req", "-x509", *ec, "-keyout", str(directory / "ca.key"), "-out", self.ca_file,
                      "-days", "2", "-subj", "/CN=podnet-test-ca")
        self._issue("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n", ec)
        self._issue("client", "extendedKeyUsage=clientAuth\n", ec)

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.dir, check=True, capture_output=True)

    def _issue(self, name: str, extensions: str, ec: list[str]) -> None:
        ext = self.dir / f"{name}.ext"
        ext.write_text(extensions)
        self._openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=podnet-{name}")
        self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                      "-out", f"{name}.crt", "-days", "2", "-extfile", str(ext))

    def server_args(self) -> list[str]:
        return [f"--cert-file={self.server_cert}", f"--key-file={self.server_key}",
                f"--trusted-ca-file={self.ca_file}", "--client-cert-auth"]

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


class EtcdMember:
    """One etcd process. kill() is SIGKILL, stop() is SIGTERM, start() (re)starts it on the same data."""

    def __init__(self, name: str, data_dir: Path, client_port: int, peer_port: int, cluster_args: list[str],
                 tls: EtcdTls | None = None):
        self.name = name
        self.data_dir = data_dir
        self.client_port = client_port
        self.peer_port = peer_port
        self.log_path = data_dir.parent / f"{name}.log"
        self._cluster_args = cluster_args
        self.tls = tls
        self._context = tls.client_context() if tls else None
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def args(self) -> list[str]:
        return [
            ETCD_BINARY,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.endpoint}",
            f"--advertise-client-urls={self.endpoint}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            "--logger=zap",
            "--log-level=warn",
            *self._cluster_args,
            *(self.tls.server_args() if self.tls else []),
        ]

    def start(self) -> None:
        assert not self.running, f"{self.name} is already running"
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.args(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
        finally:
            log.close()

    def _signal(self, sig: int, wait: float) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL: a crash."""
        self._signal(signal.SIGKILL, 10)

    def stop(self) -> None:
        """SIGTERM: an orderly shutdown (SIGKILL after 10 s)."""
        self._signal(signal.SIGTERM, 10)

    def restart(self) -> None:
        if self.running:
            self.stop()
        self.start()

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1.0, context=self._context) as resp:
                return json.loads(resp.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def status(self) -> dict:
        return _etcd_post(self.endpoint, "/v3/maintenance/status", {}, context=self._context)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class EtcdCluster:
    def __init__(self, base_dir: Path, size: int, fast_election: bool, tls: EtcdTls | None = None):
        ports = _free_ports(2 * size)
        names = [f"m{i}" for i in range(size)]
        initial = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names))
        cluster_args = [
            f"--initial-cluster={initial}",
            "--initial-cluster-state=new",
            f"--initial-cluster-token=podnet-test-{uuid.uuid4().hex[:8]}",
        ]
        if fast_election:  # loopback: elect a new leader in about a second
            cluster_args += ["--heartbeat-interval=50", "--election-timeout=500"]
        self.base_dir = base_dir
        self.members = [
            EtcdMember(n, base_dir / n, ports[2 * i], ports[2 * i + 1], cluster_args, tls) for i, n in enumerate(names)
        ]
        self.tls = tls

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        """etcd://127.0.0.1:p1,127.0.0.1:p2,... for open_datastore / EtcdDatastore.from_url."""
        scheme = "etcds" if self.tls else "etcd"
        return f"{scheme}://" + ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)

    def start(self) -> None:
        for m in self.members:
            m.start()
        self.wait_ready()

    def wait_ready(self, timeout: float = ETCD_READY_TIMEOUT) -> None:
        """Until every running member is healthy (has a leader)."""
        deadline = time.monotonic() + timeout
        while True:
            running = [m for m in self.members if m.running]
            dead = [m for m in self.members if m.proc is not None and not m.running]
            if all(m.healthy() for m in running):
                return
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {m.name} ---\n{m.log_tail()}" for m in self.members)
                raise RuntimeError(f"etcd not ready after {timeout}s (exited: {[m.name for m in dead]})\n{tails}")
            time.sleep(0.1)

    def leader(self) -> EtcdMember:
        """The member that leads now (asks the running members)."""
        deadline = time.monotonic() + ETCD_READY_TIMEOUT
        while time.monotonic() < deadline:
            for m in self.members:
                if not m.running:
                    continue
                try:
                    st = m.status()
                except OSError:
                    continue
                leader_id = st.get("leader")
                for other in self.members:
                    if other.running:
                        try:
                            if other.status()["header"]["member_id"] == leader_id:
                                return other
                        except OSError:
                            pass
            time.sleep(0.1)
        raise RuntimeError("no etcd leader")

    def kill(self, index: int) -> None:
        self.members[index].kill()

    def stop(self, index: int) -> None:
        self.members[index].stop()

    def restart(self, index: int) -> None:
        self.members[index].restart()

    def stop_all(self) -> None:
        for m in self.members:
            m.stop()

    def start_all(self) -> None:
        for m in self.members:
            if not m.running:
                m.start()
        self.wait_ready()

    def wipe(self) -> None:
        """Delete every key (the cluster is private to the tests)."""
        _etcd_post(self.endpoints[0], "/v3/kv/deleterange", {"key": _b64("\0"), "range_end": _b64("\0")},
                   context=self.members[0]._context)

    def teardown(self) -> None:
        for m in self.members:
            m.kill()
        shutil.rmtree(self.base_dir, ignore_errors=True)


def _etcd_base_dir(prefix: str) -> Path:
    parent = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=f"podnet-{prefix}-", dir=parent))


def _start_cluster(prefix: str, size: int, fast_election: bool, tls: bool = False) -> EtcdCluster:
    if shutil.which(ETCD_BINARY) is None:
        pytest.fail("etcd is not installed (apt-get install -y etcd-server etcd-client; make test does it)")
    base = _etcd_base_dir(prefix)
    try:
        certs = EtcdTls(base / "tls") if tls else None
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    cluster = EtcdCluster(base, size, fast_election, certs)
    try:
        cluster.start()
    except BaseException:
        cluster.teardown()
        raise
    return cluster


@pytest.fixture(scope="session")
def etcd_server():
    """One etcd member for the whole session: .endpoint, .url, .member (kill/stop/restart), .wipe()."""
    cluster = _start_cluster("etcd", 1, fast_election=False)
    cluster.endpoint = cluster.endpoints[0]
    cluster.member = cluster.members[0]
    try:
        yield cluster
    finally:
        cluster.teardown()


@pytest.fixture
def etcd_cluster():
    """A fresh three-member cluster: .endpoints, .url, .members, .leader(), kill/stop/restart(i)."""
    cluster = _start_cluster("etcd-cluster", 3, fast_election=True)
    try:
        yield cluster
    finally:
        cluster.teardown()


@pytest.fixture(scope="module")
def etcd_tls_server():
    """One member that speaks only TLS and wants client certificates: .endpoint, .url, .tls (file paths)."""
    cluster = _start_cluster("etcd-tls", 1, fast_election=False, tls=True)
    cluster.endpoint = cluster.endpoints[0]
    cluster.member = cluster.members[0]
    try:
        yield cluster
    finally:
        cluster.teardown()


# ===========================================================================
# Datastores: one contract, every backend
#
# datastore              a fresh, empty store per test, for each backend
# unavailable_datastore  a store that cannot serve writes now, for each backend
# ===========================================================================

DATASTORE_BACKENDS = ["sqlite", "etcd"]


@pytest.fixture(params=DATASTORE_BACKENDS)
def datastore(request, tmp_path):
    if request.param == "sqlite":
        from podnet.datastore.sqlite import SqliteDatastore

        store = SqliteDatastore(str(tmp_path / "store.db"), durable=False)
    else:
        from podnet.datastore.etcd import EtcdDatastore

        server = request.getfixturevalue("etcd_server")
        if not server.member.running:  # a test stopped it: bring it back
            server.member.start()
            server.wait_ready()
        server.wipe()  # keys are absolute in etcd: isolation means an empty key space
        store = EtcdDatastore.from_url(server.url, timeout=5.0)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(params=DATASTORE_BACKENDS)
def unavailable_datastore(request, tmp_path):
    """sqlite: another connection holds the write lock; etcd: nothing listens at the endpoint."""
    if request.param == "sqlite":
        from podnet.datastore.sqlite import SqliteDatastore

        path = str(tmp_path / "locked.db")
        store = SqliteDatastore(path, busy_timeout=1.0, durable=False)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield store
        finally:
            holder.execute("ROLLBACK")
            holder.close()
            store.close()
    else:
        from podnet.datastore.etcd import EtcdDatastore

        port, = _free_ports(1)
        store = EtcdDatastore.from_url(f"etcd://127.0.0.1:{port}")
        try:
            yield store
        finally:
            store.close()
