"""podnet chained with Debian's reference plugins, installed as users install it.

`podnet install-cni` writes the plugin and a conflist; a small chain runner (below) executes a conflist
the way libcni does: each plugin's config gets the list's name and cniVersion, `runtimeConfig` holds the
capability arguments a plugin declares, ADD runs in order passing each result on as `prevResult`, CHECK
runs in order and DEL in reverse order, both with the cached result of ADD. The plugins run inside a lab
node's namespace, so portmap's iptables rules and bandwidth's qdiscs land there, nowhere else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from podnet.cni import protocol as p
from podnet.dataplane import topology
from podnet.netns import socket_in
from tests.integration import kernel
from tests.integration.conftest import built_lab
from tests.integration.test_cni_conformance import footprint, sandbox_links
from tests.integration.witness import wait_for

REFERENCE_PLUGINS = "/usr/lib/cni"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IP = shutil.which("ip") or "/usr/bin/ip"
REPO = Path(__file__).resolve().parents[2]


# The chain runner (tests only) --------------------------------------------------------------------------


class ChainError(Exception):
    def __init__(self, plugin: str, command: str, code: int, out: dict | None, stderr: str):
        super().__init__(f"{plugin} {command} exited {code}: {out or ''} {stderr.strip()}")
        self.plugin, self.command, self.out = plugin, command, out


@dataclass
class Attachment:
    container_id: str
    netns: str
    ifname: str = "eth0"
    args: str = ""  # CNI_ARGS
    capability_args: dict = field(default_factory=dict)  # e.g. {"portMappings": [...], "bandwidth": {...}}


class ChainRunner:
    """Runs a conflist's plugins as libcni does, each from CNI_PATH, inside `run_in` (a namespace name).
    `path`: the PATH the plugins get (portmap finds iptables through it)."""

    def __init__(self, conflist: dict, cni_path: list[str], run_in: str, path: str = DEFAULT_PATH):
        self.conflist = conflist
        self.cni_path = cni_path
        self.run_in = run_in
        self.path = path
        self.calls: list[tuple[str, str]] = []  # (plugin type, command), in order

    @property
    def plugins(self) -> list[dict]:
        return self.conflist["plugins"]

    def plugin_config(self, plugin: dict, att: Attachment | None, prev_result: dict | None = None,
                      extra: dict | None = None) -> dict:
        conf = dict(plugin, name=self.conflist["name"], cniVersion=self.conflist["cniVersion"])
        wanted = {cap for cap, on in plugin.get("capabilities", {}).items() if on}
        runtime = {k: v for k, v in (att.capability_args if att else {}).items() if k in wanted}
        if runtime:
            conf["runtimeConfig"] = runtime
        if prev_result is not None:
            conf["prevResult"] = prev_result
        conf.update(extra or {})
        return conf

    def find(self, plugin_type: str) -> str:
        for d in self.cni_path:
            path = os.path.join(d, plugin_type)
            if os.access(path, os.X_OK):
                return path
        raise ChainError(plugin_type, "find", -1, None, f"not in CNI_PATH {':'.join(self.cni_path)}")

    def exec(self, plugin: dict, command: str, conf: dict, att: Attachment | None) -> dict | None:
        env = {"CNI_COMMAND": command, "CNI_PATH": ":".join(self.cni_path), "PATH": self.path}
        if att:
            env.update(CNI_CONTAINERID=att.container_id, CNI_NETNS=att.netns, CNI_IFNAME=att.ifname,
                       CNI_ARGS=att.args)
        self.calls.append((plugin["type"], command))
        proc = subprocess.run([IP, "netns", "exec", self.run_in, self.find(plugin["type"])],
                              input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60)
        text = proc.stdout.decode()
        out = json.loads(text) if text.strip() else None
        if proc.returncode != 0:
            raise ChainError(plugin["type"], command, proc.returncode, out, proc.stderr.decode())
        return out

    def add(self, att: Attachment) -> dict:
        result = None
        for plugin in self.plugins:
            result = self.exec(plugin, "ADD", self.plugin_config(plugin, att, result), att)
        return result

    def check(self, att: Attachment, cached: dict) -> None:
        if self.conflist.get("disableCheck"):
            return
        for plugin in self.plugins:
            self.exec(plugin, "CHECK", self.plugin_config(plugin, att, cached), att)

    def delete(self, att: Attachment, cached: dict | None) -> None:
        for plugin in reversed(self.plugins):
            self.exec(plugin, "DEL", self.plugin_config(plugin, att, cached), att)

    def gc(self, valid: list[Attachment]) -> None:
        if p.version_tuple(self.conflist["cniVersion"]) < (1, 1, 0) or self.conflist.get("disableGC"):
            return
        attachments = [{"containerID": a.container_id, "ifname": a.ifname} for a in valid]
        for plugin in self.plugins:
            self.exec(plugin, "GC", self.plugin_config(plugin, None, extra={p.VALID_ATTACHMENTS: attachments}), None)


# Fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab():
    with built_lab("pnt-ch", nodes=2, pods_per_node=1) as lab:
        yield lab


@pytest.fixture(scope="module")
def ipv4_only_path(tmp_path_factory) -> str:
    """A PATH with iptables but without ip6tables, as on a host without IPv6 firewalling.

    portmap 1.1.1 (Debian 12) checks its ip6tables chain on CHECK even for an IPv4-only pod whenever
    ip6tables works, and fails ("could not check ipv6 dnat"); upstream fixed it after 1.1.1
    (containernetworking/plugins fb5d195f, "Only check ipv6 when an IPv6 is configured"). Without
    ip6tables on its PATH it skips IPv6, as the fixed version does for a pod without an IPv6 address.
    """
    d = tmp_path_factory.mktemp("ipv4-only-path")
    for name in ("iptables", "iptables-save", "iptables-restore"):
        target = shutil.which(name, path="/usr/sbin:/sbin")
        assert target, f"{name} is missing: apt-get install -y iptables"
        os.symlink(target, d / name)
    return f"{d}:/usr/local/bin:/usr/bin:/bin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`podnet install-cni` into fresh directories, exactly as the DaemonSet's init container runs it."""
    root = tmp_path_factory.mktemp("cni")
    bin_dir, conf_dir = root / "bin", root / "net.d"
    proc = subprocess.run([sys.executable, "-m", "podnet", "install-cni", "--bin-dir", str(bin_dir),
                           "--conf-dir", str(conf_dir)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return bin_dir, conf_dir


@pytest.fixture
def sandbox(sandbox):
    """The integration conftest's pod namespaces, with loopback up (the pods serve on it)."""

    def make() -> str:
        path = sandbox()
        subprocess.run(["ip", "-n", os.path.basename(path), "link", "set", "lo", "up"], check=True)
        return path

    return make


# http.server's file server, bound without its name lookup: `python3 -m http.server` asks the resolver for
# this machine's FQDN first, and in a pod whose resolver cannot answer (no route to it) and a machine whose
# hostname is not in /etc/hosts (a debootstrap'd Debian) that waits out the resolver's 10 s timeout.
FILE_SERVER = """
import functools, http.server, socketserver, sys
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])
Server(("0.0.0.0", int(sys.argv[1])), handler).serve_forever()
"""


class Server:
    """http.server's file server inside a pod namespace, started and ended by its PID."""

    def __init__(self, netns: str, port: int, directory: Path):
        # `ip netns exec` execs the command: the PID is the server's own.
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", FILE_SERVER, str(port),
                                      str(directory)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.netns, self.port = netns, port

    def wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the HTTP server exited"
            try:
                http_get(self.netns, "127.0.0.1", self.port, "/", timeout=0.5)
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the HTTP server in the pod did not start listening")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def http_get(netns: str, host: str, port: int, path: str, timeout: float = 3.0) -> bytes:
    """A GET from inside `netns` (a socket opened there by this thread; no process needed)."""
    sock = socket_in(netns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    finally:
        sock.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    return body


def iptables_nat(netns: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "iptables", "-t", "nat", "-S"], capture_output=True,
                          text=True, check=True).stdout


# Install as users do ------------------------------------------------------------------------------------


def test_install_cni_writes_an_executable_plugin_and_a_conflist(installed):
    bin_dir, conf_dir = installed
    plugin = bin_dir / "podnet"
    assert plugin.stat().st_mode & stat.S_IXUSR and plugin.stat().st_mode & stat.S_IXOTH
    head = plugin.read_bytes()[:256]
    # The static plugin when `make` built it (install.STATIC_PLUGIN), else the Python shim behind `#!... -IS`.
    assert head.startswith(b"\x7fELF") or (head.startswith(b"#!") and b" -IS" in head.splitlines()[0]), head
    proc = subprocess.run([str(plugin)], input=b'{"cniVersion": "1.0.0"}', env={"CNI_COMMAND": "VERSION"},
                          capture_output=True, timeout=30)
    assert proc.returncode == 0
    assert json.loads(proc.stdout) == {"cniVersion": "1.0.0", "supportedVersions": list(p.SUPPORTED_VERSIONS)}
    [conf_file] = conf_dir.iterdir()
    assert conf_file.name.endswith(".conflist")
    conflist = json.loads(conf_file.read_text())
    assert conflist["name"] == "k8s-pod-network" and conflist["cniVersion"] in p.SUPPORTED_VERSIONS
    assert [x["type"] for x in conflist["plugins"]] == ["podnet", "portmap"]
    assert conflist["plugins"][1]["capabilities"] == {"portMappings": True}
    # Every plugin it chains is where the runtime looks: install-cni copied portmap from /usr/lib/cni.
    assert os.access(bin_dir / "portmap", os.X_OK)
    # Every reference plugin of the list speaks the list's version.
    for name in ("portmap", "bandwidth", "tuning"):
        out = subprocess.run([os.path.join(REFERENCE_PLUGINS, name)], input=json.dumps(
            {"cniVersion": conflist["cniVersion"]}).encode(), env={"CNI_COMMAND": "VERSION"}, capture_output=True)
        assert conflist["cniVersion"] in json.loads(out.stdout)["supportedVersions"]


def test_install_cni_honours_the_interpreter_variable(tmp_path):
    env = dict(os.environ, PODNET_CNI_INTERPRETER="/usr/bin/python3")
    subprocess.run([sys.executable, "-m", "podnet", "install-cni", "--bin-dir", str(tmp_path)], env=env, check=True,
                   capture_output=True, cwd=REPO)
    assert (tmp_path / "podnet").read_text().splitlines()[0] == "#!/usr/bin/python3 -IS"


# The chain ----------------------------------------------------------------------------------------------

BANDWIDTH = {"ingressRate": 8_000_000, "ingressBurst": 800_000, "egressRate": 4_000_000, "egressBurst": 400_000}
KEEPALIVE = "321"


def full_chain(installed) -> dict:
    """The installed conflist (podnet -> portmap) plus bandwidth and tuning, as an admin would extend it."""
    _, conf_dir = installed
    conflist = json.loads(next(conf_dir.iterdir()).read_text())
    conflist["plugins"] += [
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
        {"type": "tuning", "sysctl": {"net.ipv4.tcp_keepalive_time": KEEPALIVE}},
    ]
    return conflist


def test_chain_add_check_del(lab, installed, sandbox, tmp_path, ipv4_only_path):
    bin_dir, _ = installed
    node_ns = lab.node_netns("node-1")
    runner = ChainRunner(full_chain(installed), [str(bin_dir), REFERENCE_PLUGINS], node_ns, ipv4_only_path)
    before = footprint(lab)
    nat_before = iptables_nat(node_ns)
    netns = sandbox()
    pod_ns = os.path.basename(netns)
    att = Attachment(uuid.uuid4().hex, netns,
                     args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=chained-web",
                     capability_args={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                                      "bandwidth": BANDWIDTH})
    result = runner.add(att)
    assert runner.calls == [("podnet", "ADD"), ("portmap", "ADD"), ("bandwidth", "ADD"), ("tuning", "ADD")]
    pod_ip = result["ips"][0]["address"].split("/")[0]
    host_if = result["interfaces"][0]["name"]
    assert result["cniVersion"] == runner.conflist["cniVersion"]
    server = None
    try:
        # portmap: node-1's port 8080 reaches the pod's port 80, from node-2 over the underlay.
        (tmp_path / "token").write_text(att.container_id)
        server = Server(pod_ns, 80, tmp_path)
        server.wait_listening()
        node1_ip = lab.status()["nodes"][0]["underlay_ip"]
        assert http_get(lab.node_netns("node-2"), node1_ip, 8080, "/token").decode() == att.container_id
        assert f"{pod_ip}:80" in iptables_nat(node_ns)
        # bandwidth: a token bucket on the host veth (traffic towards the pod) and an ifb for egress.
        qdiscs = json.loads(subprocess.run(["tc", "-n", node_ns, "-j", "qdisc", "show", "dev", host_if],
                                           capture_output=True, text=True, check=True).stdout)
        tbf = [q for q in qdiscs if q["kind"] == "tbf"]
        assert tbf and tbf[0]["options"]["rate"] == BANDWIDTH["ingressRate"] // 8, qdiscs
        assert any(name.startswith("bwp") for name in topology.links(node_ns))
        # tuning: the sysctl inside the pod.
        assert kernel.sysctl(pod_ns, "net/ipv4/tcp_keepalive_time") == KEEPALIVE
        # The pod still reaches the other node.
        assert kernel.ping(pod_ns, next(x["ip"] for x in lab.status()["pods"] if x["node"] == "node-2")).returncode == 0

        runner.calls.clear()
        runner.check(att, result)
        assert runner.calls == [("podnet", "CHECK"), ("portmap", "CHECK"), ("bandwidth", "CHECK"),
                                ("tuning", "CHECK")]
    finally:
        if server:
            server.stop()
        runner.calls.clear()
        runner.delete(att, result)
    assert runner.calls == [("tuning", "DEL"), ("bandwidth", "DEL"), ("portmap", "DEL"), ("podnet", "DEL")]
    assert footprint(lab) == before
    assert sandbox_links(netns) == ["lo"]
    assert pod_ip not in iptables_nat(node_ns)
    assert set(iptables_nat(node_ns).splitlines()) >= set(nat_before.splitlines())
    with pytest.raises(OSError):
        http_get(lab.node_netns("node-2"), node1_ip, 8080, "/token", timeout=1)
    # DEL is repeatable through the whole chain, also once the sandbox is gone and without a cached result.
    runner.delete(att, result)
    topology.delete_netns(pod_ns)
    runner.delete(Attachment(att.container_id, "", args=att.args, capability_args=att.capability_args), None)
    assert footprint(lab) == before


def test_chain_check_names_the_plugin_whose_part_broke(lab, installed, sandbox, ipv4_only_path):
    """CHECK runs every plugin in order: a changed sysctl fails tuning's CHECK (after the others passed),
    a removed pod route fails podnet's, the first."""
    bin_dir, _ = installed
    node_ns = lab.node_netns("node-1")
    runner = ChainRunner(full_chain(installed), [str(bin_dir), REFERENCE_PLUGINS], node_ns, ipv4_only_path)
    before = footprint(lab)
    att = Attachment(uuid.uuid4().hex, sandbox(), args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=chk",
                     capability_args={"bandwidth": BANDWIDTH})
    pod_ns = os.path.basename(att.netns)
    result = runner.add(att)
    try:
        lab.exec(pod_ns, "sysctl", "-w", "net.ipv4.tcp_keepalive_time=999", check=True)
        runner.calls.clear()
        with pytest.raises(ChainError) as failed:
            runner.check(att, result)
        assert failed.value.plugin == "tuning" and [c for c, _ in runner.calls] == ["podnet", "portmap", "bandwidth",
                                                                                  "tuning"]
        lab.exec(pod_ns, "ip", "route", "del", "default", check=True)
        with pytest.raises(ChainError) as failed:
            runner.check(att, result)
        assert failed.value.plugin == "podnet" and failed.value.out["code"] == p.CHECK_FAILED
        assert "default route" in failed.value.out["msg"]
    finally:
        runner.delete(att, result)
    assert footprint(lab) == before


def test_podnet_refuses_to_follow_another_plugin(lab, installed, sandbox):
    """A chain that puts podnet second hands it a prevResult on ADD: refused with code 7, nothing taken."""
    bin_dir, _ = installed
    conflist = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
        {"type": "tuning", "sysctl": {"net.ipv4.tcp_keepalive_time": KEEPALIVE}},
        {"type": "podnet", "ipam": {"type": "podnet-ipam"}}]}
    runner = ChainRunner(conflist, [str(bin_dir), REFERENCE_PLUGINS], lab.node_netns("node-1"))
    before = footprint(lab)
    att = Attachment(uuid.uuid4().hex, sandbox(), args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=2nd")
    # tuning as the first plugin has no interface to tune; give it a result as if something ran before.
    with pytest.raises(ChainError) as failed:
        runner.exec(conflist["plugins"][1], "ADD", runner.plugin_config(conflist["plugins"][1], att, {
            "cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": att.netns}], "ips": []}), att)
    assert failed.value.out["code"] == p.INVALID_CONFIG and "first plugin" in failed.value.out["msg"]
    assert footprint(lab) == before


def test_chain_gc_and_status_at_1_1_0(lab, installed, sandbox):
    """A podnet-only 1.1.0 list (Debian's plugins stop at 1.0.0): STATUS, then GC drops a stale attachment."""
    bin_dir, _ = installed
    conflist = {"cniVersion": "1.1.0", "name": "k8s-pod-network",
                "plugins": [{"type": "podnet", "ipam": {"type": "podnet-ipam"}}]}
    runner = ChainRunner(conflist, [str(bin_dir)], lab.node_netns("node-1"))
    before = footprint(lab)
    podnet = conflist["plugins"][0]
    assert runner.exec(podnet, "STATUS", runner.plugin_config(podnet, None), None) is None
    keep, drop = (Attachment(uuid.uuid4().hex, sandbox(), args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;"
                             f"K8S_POD_NAME=gc{i}") for i in range(2))
    kept = runner.add(keep)
    runner.add(drop)
    lab_pods = [Attachment(x["container_id"], "") for x in lab.state["pods"]]
    runner.gc(lab_pods + [keep])
    assert sandbox_links(drop.netns) == ["lo"] and "eth0" in sandbox_links(keep.netns)
    runner.check(keep, kept)
    runner.delete(keep, kept)
    assert footprint(lab) == before


def test_a_del_stopped_by_a_missing_chained_plugin_leaves_a_leak_doctor_names(lab, installed, sandbox, tmp_path):
    """The conflist install-cni would no longer write: podnet then a plugin that is not installed. The ADD
    fails at that plugin, and the runtime's DEL (in reverse order, stopping at the first failure, as
    libcni does) never reaches podnet; the runtime then removes the sandbox. What podnet made stays:
    doctor names the pod whose namespace is gone and says how to release what it left."""
    bin_dir, _ = installed
    conflist = {"cniVersion": "1.0.0", "name": "k8s-pod-network",
                "plugins": [{"type": "podnet", "ipam": {"type": "podnet-ipam"}},
                            {"type": "not-installed", "capabilities": {"portMappings": True}}]}
    runner = ChainRunner(conflist, [str(bin_dir)], lab.node_netns("node-1"))
    before = footprint(lab)
    att = Attachment(uuid.uuid4().hex, sandbox(), args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=lost")
    with pytest.raises(ChainError) as added:
        runner.add(att)
    assert added.value.plugin == "not-installed"
    with pytest.raises(ChainError) as deleted:
        runner.delete(att, None)
    assert deleted.value.plugin == "not-installed" and ("podnet", "DEL") not in runner.calls
    topology.delete_netns(os.path.basename(att.netns))  # the runtime removes the sandbox all the same
    left = footprint(lab)
    assert len(left["endpoints"]) == len(before["endpoints"]) + 1 and len(left["allocations"]) == \
        len(before["allocations"]) + 1, "the attachment podnet made is still recorded"

    proc = subprocess.run([sys.executable, "-m", "podnet", "--lab", lab.name, "doctor", "-o", "json"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    report = json.loads(proc.stdout)
    gone = [f for f in report["findings"] if f["check"] == "pod" and "lost" in f["problem"]]
    assert proc.returncode == 1 and len(gone) == 1, report["findings"]
    assert f"network namespace {att.netns} is gone" in gone[0]["problem"] and "ipam check" in gone[0]["fix"]

    # ipam check reports it once the node's agent has reported the namespace gone, and ipam gc releases it.
    def check() -> dict:
        path = tmp_path / "report.json"
        out = subprocess.run([sys.executable, "-m", "podnet", "--lab", lab.name, "ipam", "check", "-o", str(path)],
                             capture_output=True, text=True, timeout=120, cwd=REPO)
        return json.loads(path.read_text()) if out.returncode == 1 else {}

    report = wait_for(lambda: (r := check()) and any(g["container"] == att.container_id
                                                     for g in r.get("endpoints_gone", [])) and r, timeout=60)
    assert report, "ipam check never reported the endpoint whose namespace is gone"
    gc = subprocess.run([sys.executable, "-m", "podnet", "--lab", lab.name, "ipam", "gc", "--yes"],
                        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert gc.returncode == 0, gc.stdout + gc.stderr
    assert footprint(lab) == before


# Deployment manifests -----------------------------------------------------------------------------------


def test_deploy_manifests_parse_and_wire_up():
    docs = [d for f in sorted((REPO / "deploy").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert {"DaemonSet", "ConfigMap", "Secret"} <= set(kinds)
    ds = kinds["DaemonSet"]["spec"]["template"]["spec"]
    assert ds["hostNetwork"] is True
    [init] = ds["initContainers"]
    assert "install-cni" in init["command"] + init.get("args", [])
    [agent] = ds["containers"]
    assert agent["securityContext"]["privileged"] is True
    env = {e["name"]: e for e in agent["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    config = kinds["ConfigMap"]["data"]
    assert "etcd_endpoints" in config
    assert any(e.get("valueFrom", {}).get("configMapKeyRef", {}).get("key") == "etcd_endpoints"
               for e in agent["env"])
    secret_volume = next(v for v in ds["volumes"] if "secret" in v)
    assert secret_volume["secret"]["secretName"] == kinds["Secret"]["metadata"]["name"]
    mounted = {m["name"]: m["mountPath"] for m in agent["volumeMounts"]}
    assert secret_volume["name"] in mounted
    args = " ".join(agent["command"] + agent.get("args", []))
    for flag in ("--etcd-cert-file", "--etcd-key-file", "--etcd-ca-cert-file", "--node"):
        assert flag in args
    # The commands are ones podnet accepts ($(VAR) is expanded by Kubernetes from the container's env).
    from podnet.agent.main import add_arguments
    from podnet.cli.main import build_parser

    agent_parser = argparse.ArgumentParser()
    add_arguments(agent_parser)
    expanded = [a.replace("$(NODE_NAME)", "node-a").replace("$(IPV4_POOL_CIDR)", config["ipv4_pool_cidr"])
                for a in agent["args"]]
    parsed = agent_parser.parse_args(expanded)
    assert parsed.node == "node-a" and parsed.etcd_ca_cert_file.startswith(mounted[secret_volume["name"]])
    assert agent["command"] == ["podnet", "agent"]
    assert init["command"][0] == "podnet" and build_parser().parse_args(init["command"][1:]).bin_dir == \
        "/host/opt/cni/bin"
    assert (REPO / "deploy" / "README.md").exists()
