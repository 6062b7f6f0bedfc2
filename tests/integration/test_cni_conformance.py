"""CNI conformance in the style of the reference plugins' tests.

For every supported spec version: STATUS -> ADD -> check the result's shape -> ping a pod on another
node -> CHECK -> DEL -> nothing left. Then a table of bad inputs, each with its exact error code and a
message class, none leaving an address, a veth or an endpoint behind; GC; a fuzz test that drives the
agent's handler in-process and the plugin executable with random configurations and environments.

Everything runs in namespaces of labs made here (names `pnt-cf…`) and is removed afterwards. The whole
suite runs against both plugin executables: the static one (cni-plugin/podnet-cni.c, built by `make plugin`,
here if it is not built yet) and the Python shim.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podnet.cni import handler, install
from podnet.cni import protocol as p
from podnet.cni.server import CniServer
from podnet.dataplane import rtnl, topology
from podnet.netns import entered
from podnet.datastore import open_datastore
from podnet.datastore.resources import Resources
from podnet.ipam import Ipam
from podnet.lab.lab import Lab, LabSpec
from podnet.model import IPPool
from podnet.model.endpoint import endpoint_name, host_veth_name, ipam_handle, tunnel_handle
from tests.integration import kernel, witness
from tests.integration.conftest import unique

NETWORK = "k8s-pod-network"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VERSIONS = p.SUPPORTED_VERSIONS


# Labs and helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=install.KINDS)
def plugin_kind(request) -> str:
    """Which plugin executable the labs below run: every test here runs against each."""
    if request.param == "static" and not os.access(install.STATIC_PLUGIN, os.X_OK):
        proc = subprocess.run(["make", "-C", REPO, "--no-print-directory", "plugin"], capture_output=True, text=True)
        assert proc.returncode == 0, f"building the static plugin failed: {proc.stdout}{proc.stderr}"
    return request.param


def _lab(prefix: str, spec: LabSpec, kind: str):
    lab = Lab(unique(prefix))
    try:
        lab.up(spec)
        install.install_plugin(lab.bin_dir, kind=kind)
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def lab(plugin_kind):
    yield from _lab("pnt-cf", LabSpec(nodes=2, pods_per_node=1), plugin_kind)


@pytest.fixture(scope="module")
def tiny_lab(plugin_kind):
    """One node whose only pool is a /31: the tunnel address and one pod fill it. Plus a disabled pool."""
    for lab in _lab("pnt-cft", LabSpec(nodes=1, pods_per_node=1, pool="10.250.0.0/31", block_size=31), plugin_kind):
        store = open_datastore(lab.datastore_url)
        try:
            Resources(store).apply_pool(IPPool("pnt-off", "10.251.0.0/24", disabled=True))
        finally:
            store.close()
        yield lab


@pytest.fixture(scope="module")
def broken_agent(lab):
    """A CNI server in node-1 of the lab whose datastore is an etcd nobody runs (127.0.0.1:1 inside the
    node's namespace): what the plugin meets when the agent has lost its store. Returns its address."""
    address = "@" + unique("pnt-cfbroken") + "/cni"
    ns = lab.node_netns("node-1")
    store = open_datastore("etcd://127.0.0.1:1", timeout=0.5)
    host = rtnl.RtnlSocket(ns)
    ctx = handler.NodeContext(node="node-1", resources=Resources(store), ipam=Ipam(store), host=host,
                              pod_mtu=lambda: 1450, ready=lambda: True, ipam_lock=threading.Lock())
    with entered(ns):  # the abstract socket belongs to the node's namespace
        server = CniServer(address, ctx)

    def serve():
        with entered(ns):  # request threads inherit the namespace: etcd is dialled from inside the node
            server.serve_forever(poll_interval=0.05)

    thread = threading.Thread(target=serve, name="broken agent", daemon=True)
    thread.start()
    try:
        yield address
    finally:
        server.shutdown()
        thread.join(5)
        host.close()
        store.close()


class Sandboxes:
    """Fresh pod namespaces, removed afterwards."""

    def __init__(self):
        self.made: list[str] = []

    def __call__(self, lab: Lab) -> str:
        name = f"{lab.name}-sb{uuid.uuid4().hex[:6]}"
        topology.create_netns(name)
        self.made.append(name)
        return f"/run/netns/{name}"

    def cleanup(self):
        for name in self.made:
            topology.delete_netns(name)


@pytest.fixture
def sandbox():
    boxes = Sandboxes()
    yield boxes
    boxes.cleanup()


def config(version: str = "1.0.0", name: str = NETWORK, **extra) -> dict:
    return {"cniVersion": version, "name": name, "type": "podnet", "ipam": {"type": "podnet-ipam"}, **extra}


def env_for(lab: Lab, command: str, netns: str, cid: str | None = None, ifname: str = "eth0",
            pod: str | None = None) -> dict:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid or uuid.uuid4().hex, "CNI_NETNS": netns,
            "CNI_IFNAME": ifname, "CNI_PATH": lab.bin_dir,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod or 'cf-' + uuid.uuid4().hex[:6]}"}


def run_plugin(lab: Lab, env: dict, stdin, netns: str | None = None, drop=(), extra_env: dict | None = None,
               node: str = "node-1") -> tuple[int, dict | None, str]:
    """Execute the plugin as a runtime does, inside a node's namespace: (exit code, parsed stdout, stderr).
    Fails the test when stdout is neither empty nor a JSON object."""
    full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env, **(extra_env or {})}
    for k in drop:
        full.pop(k, None)
    raw = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    proc = subprocess.run(["ip", "netns", "exec", netns or lab.node_netns(node), os.path.join(lab.bin_dir, "podnet")],
                          input=raw, env=full, capture_output=True, timeout=60)
    out = proc.stdout.decode()
    parsed = json.loads(out) if out.strip() else None
    assert parsed is None or isinstance(parsed, dict), out
    return proc.returncode, parsed, proc.stderr.decode()



def footprint(lab: Lab) -> dict:
    """Everything an attachment can leave behind here: also the ifb devices of the bandwidth plugin."""
    return witness.footprint(lab, ("cali", "bwp"))


def sandbox_links(netns: str) -> list[str]:
    return sorted(topology.links(os.path.basename(netns)))


def remote_pod(lab: Lab, node: str = "node-2") -> dict:
    return next(x for x in lab.status()["pods"] if x["node"] == node)


def assert_result_shape(result: dict, version: str, netns: str, ifname: str = "eth0") -> None:
    """The ADD result, key by key, as the spec version defines it."""
    if version < "0.3.0":  # 0.1.0 and 0.2.0: one ip4 object, no interfaces
        assert result == {"cniVersion": version, "dns": {},
                          "ip4": {"ip": result["ip4"]["ip"], "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]}}
        assert kernel.link(os.path.basename(netns), ifname) is not None
        iface = ipaddress.ip_interface(result["ip4"]["ip"])
        assert iface.version == 4 and iface.network.prefixlen == 32
        return
    assert set(result) == {"cniVersion", "interfaces", "ips", "routes", "dns"}, result
    assert result["cniVersion"] == version
    host_if, pod_if = result["interfaces"]
    with_mtu = {"mtu"} if version == "1.1.0" else set()
    assert set(host_if) == {"name", "mac"} | with_mtu
    assert set(pod_if) == {"name", "mac", "sandbox"} | with_mtu
    assert re.fullmatch(r"cali[0-9a-f]{11}", host_if["name"]) and host_if["mac"] == "ee:ee:ee:ee:ee:ee"
    link = kernel.link(os.path.basename(netns), ifname)
    expected = {"name": ifname, "mac": link["address"], "sandbox": netns}
    assert pod_if == (dict(expected, mtu=link["mtu"]) if with_mtu else expected)
    if with_mtu:
        assert host_if["mtu"] == link["mtu"]
    [ip] = result["ips"]
    assert set(ip) == {"address", "interface"} | ({"version"} if version < "1.0.0" else set())
    if version < "1.0.0":
        assert ip["version"] == "4"
    iface = ipaddress.ip_interface(ip["address"])
    assert iface.version == 4 and iface.network.prefixlen == 32 and ip["interface"] == 1
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
    assert result["dns"] == {}


# The lifecycle, for every version ---------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_lifecycle(lab, sandbox, version):
    before = footprint(lab)
    netns = sandbox(lab)
    env = env_for(lab, "ADD", netns)
    conf = config(version)

    code, out, _ = run_plugin(lab, dict(env, CNI_COMMAND="STATUS"), conf)
    if version >= p.STATUS_SINCE:
        assert (code, out) == (0, None)
    else:
        assert code != 0 and out["code"] == p.INCOMPATIBLE_VERSION and out["cniVersion"] == version

    code, result, err = run_plugin(lab, env, conf)
    assert code == 0, (result, err)
    assert_result_shape(result, version, netns)
    assert kernel.reaches(os.path.basename(netns), remote_pod(lab)["ip"])

    code, out, _ = run_plugin(lab, dict(env, CNI_COMMAND="CHECK"), config(version, prevResult=result))
    if version >= p.CHECK_SINCE:
        assert (code, out) == (0, None)
    else:
        assert code != 0 and out["code"] == p.INCOMPATIBLE_VERSION

    code, out, _ = run_plugin(lab, dict(env, CNI_COMMAND="DEL"), config(version, prevResult=result))
    assert (code, out) == (0, None)
    assert footprint(lab) == before
    assert sandbox_links(netns) == ["lo"]
    # Repeated DEL succeeds, with or without the namespace.
    assert run_plugin(lab, dict(env, CNI_COMMAND="DEL"), conf)[0] == 0
    assert run_plugin(lab, dict(env, CNI_COMMAND="DEL", CNI_NETNS=""), conf)[0] == 0
    assert footprint(lab) == before


def test_del_after_the_sandbox_is_gone(lab, sandbox):
    """containerd's second DEL: the namespace is gone, CNI_NETNS is empty and there is no prevResult."""
    before = footprint(lab)
    netns = sandbox(lab)
    env = env_for(lab, "ADD", netns)
    code, result, _ = run_plugin(lab, env, config())
    assert code == 0
    topology.delete_netns(os.path.basename(netns))
    code, out, _ = run_plugin(lab, dict(env, CNI_COMMAND="DEL", CNI_NETNS=""), config())
    assert (code, out) == (0, None)
    assert footprint(lab) == before


# Inputs that must be accepted ---------------------------------------------------------------------------

ACCEPTED = [
    # (id, config changes, CNI_ARGS or None for the default)
    ("runtimeConfig", {"runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                                         "bandwidth": {"ingressRate": 1000000, "ingressBurst": 100000}}}, None),
    ("capabilities", {"capabilities": {"portMappings": True}}, None),
    ("conventional-args", {"args": {"cni": {"labels": [{"key": "app", "value": "web"}]}}}, None),
    ("unknown-fields", {"somethingElse": {"x": 1}, "log_level": "debug", "nodename": "node-1"}, None),
    ("calico-ipam", {"ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "false"}}, None),
    ("pool-by-name", {"ipam": {"type": "podnet-ipam", "ipv4_pools": ["default-ipv4-ippool"]}}, None),
    ("pool-by-cidr", {"ipam": {"type": "podnet-ipam", "ipv4_pools": ["10.244.0.0/16"]}}, None),
    ("pool-by-arg", {}, "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=arg;IPV4POOLS=default-ipv4-ippool"),
    ("k8s-args", {}, "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1;"
                     "K8S_POD_INFRA_CONTAINER_ID={cid};K8S_POD_UID=7d1f;FOO=bar"),
    ("ignore-unknown-true", {}, "IgnoreUnknown=true;K8S_POD_NAMESPACE=default;K8S_POD_NAME=t;FOO=bar"),
    ("no-args", {}, ""),
    ("mtu", {"mtu": 1400}, None),
    ("dns", {"dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}}, None),
]


@pytest.mark.parametrize("case", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_accepted_inputs(lab, sandbox, case):
    _, changes, args = case
    before = footprint(lab)
    netns = sandbox(lab)
    env = env_for(lab, "ADD", netns)
    if args is not None:
        env["CNI_ARGS"] = args.format(cid=env["CNI_CONTAINERID"])
    conf = config("1.0.0", **changes)
    code, result, err = run_plugin(lab, env, conf)
    assert code == 0, (result, err)
    if "mtu" in changes:
        assert kernel.link(os.path.basename(netns), "eth0")["mtu"] == changes["mtu"]
    if "dns" in changes:
        assert result["dns"] == changes["dns"]
    code, out, _ = run_plugin(lab, dict(env, CNI_COMMAND="CHECK"), dict(conf, prevResult=result))
    assert (code, out) == (0, None)
    assert run_plugin(lab, dict(env, CNI_COMMAND="DEL"), dict(conf, prevResult=result))[0] == 0
    assert footprint(lab) == before


# Bad inputs ---------------------------------------------------------------------------------------------

GOOD = config("1.0.0")
G11 = config("1.1.0", **{p.VALID_ATTACHMENTS: []})


def without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


@dataclass
class Bad:
    id: str
    code: int
    msg: str  # a regular expression the error's msg must match
    command: str = "ADD"
    env: dict = field(default_factory=dict)
    drop: tuple = ()
    stdin: object = None  # None: GOOD
    scenario: str = ""  # how to run it; see test_bad_input


BAD = [
    # Environment
    Bad("no-command", 4, r"CNI_COMMAND is not set", drop=("CNI_COMMAND",)),
    Bad("unknown-command", 4, r"unknown CNI_COMMAND 'FROB'", command="FROB"),
    Bad("lowercase-command", 4, r"unknown CNI_COMMAND 'add'", command="add"),
    Bad("no-containerid", 4, r"CNI_CONTAINERID is required for ADD", drop=("CNI_CONTAINERID",)),
    Bad("bad-containerid", 4, r"CNI_CONTAINERID 'bad/id' is not a valid container id",
        env={"CNI_CONTAINERID": "bad/id"}),
    Bad("containerid-leading-dash", 4, r"not a valid container id", env={"CNI_CONTAINERID": "-abc"}),
    Bad("no-netns", 4, r"CNI_NETNS is required for ADD", drop=("CNI_NETNS",)),
    Bad("relative-netns", 4, r"CNI_NETNS 'netns-x' is not an absolute path", env={"CNI_NETNS": "netns-x"}),
    Bad("no-ifname", 4, r"CNI_IFNAME is required for ADD", drop=("CNI_IFNAME",)),
    Bad("ifname-too-long", 4, r"CNI_IFNAME 'eth0123456789012' is not a valid interface name",
        env={"CNI_IFNAME": "eth0123456789012"}),
    Bad("ifname-slash", 4, r"not a valid interface name", env={"CNI_IFNAME": "et/h0"}),
    Bad("ifname-dotdot", 4, r"not a valid interface name", env={"CNI_IFNAME": ".."}),
    Bad("ifname-space", 4, r"not a valid interface name", env={"CNI_IFNAME": "eth 0"}),
    Bad("no-path", 4, r"CNI_PATH is required for ADD", drop=("CNI_PATH",)),
    Bad("unknown-arg", 4, r"CNI_ARGS has unknown keys: FOO", env={"CNI_ARGS": "FOO=bar"}),
    Bad("malformed-arg", 4, r"CNI_ARGS entry 'justaword' is not KEY=VALUE", env={"CNI_ARGS": "justaword"}),
    Bad("ignoreunknown-not-bool", 4, r"IgnoreUnknown='maybe' is not a boolean",
        env={"CNI_ARGS": "IgnoreUnknown=maybe;FOO=bar"}),
    Bad("fixed-ip-arg", 4, r"CNI_ARGS IP has '10\.244\.9\.x', which is not an IP address",
        env={"CNI_ARGS": "IgnoreUnknown=1;IP=10.244.9.x"}),
    Bad("infra-id-conflict", 4, r"K8S_POD_INFRA_CONTAINER_ID=other conflicts with CNI_CONTAINERID",
        env={"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_INFRA_CONTAINER_ID=other"}),
    Bad("check-no-netns", 4, r"CNI_NETNS is required for CHECK", command="CHECK", drop=("CNI_NETNS",),
        stdin=config("1.0.0", prevResult={"ips": [], "interfaces": []})),
    Bad("gc-no-path", 4, r"CNI_PATH is required for GC", command="GC", drop=("CNI_PATH",), stdin=G11),
    # Decoding
    Bad("not-json", 6, r"not valid JSON", stdin=b"{this is not json"),
    Bad("json-array", 6, r"must be a JSON object", stdin=b"[1, 2]"),
    Bad("empty-stdin", 6, r"not valid JSON", stdin=b""),
    Bad("not-utf8", 6, r"not valid JSON", stdin=b"\xff\xfe{}"),
    # Versions
    Bad("unknown-version", 1, r"cniVersion 9\.9\.9 is not supported", stdin=dict(GOOD, cniVersion="9.9.9")),
    Bad("too-old-version", 1, r"cniVersion 0\.0\.9 is not supported", stdin=dict(GOOD, cniVersion="0.0.9")),
    Bad("version-not-string", 7, r"cniVersion must be a version string", stdin=dict(GOOD, cniVersion=1.0)),
    Bad("no-version", 7, r"cniVersion is missing", stdin=without(GOOD, "cniVersion")),
    Bad("check-on-0.3.1", 1, r"CHECK is not supported by cniVersion 0\.3\.1", command="CHECK",
        stdin=config("0.3.1", prevResult={"ips": [], "interfaces": []})),
    Bad("gc-on-1.0.0", 1, r"GC is not supported by cniVersion 1\.0\.0", command="GC",
        stdin=config("1.0.0", **{p.VALID_ATTACHMENTS: []})),
    Bad("status-on-0.4.0", 1, r"STATUS is not supported by cniVersion 0\.4\.0", command="STATUS",
        stdin=config("0.4.0")),
    # The network configuration
    Bad("no-name", 7, r"field 'name' must be a non-empty string", stdin=without(GOOD, "name")),
    Bad("name-not-string", 7, r"field 'name' must be a non-empty string", stdin=dict(GOOD, name=["x"])),
    Bad("bad-network-name", 7, r"network name 'my net' is not valid", stdin=dict(GOOD, name="my net")),
    Bad("no-type", 7, r"field 'type' must be a non-empty string", stdin=without(GOOD, "type")),
    Bad("conflist-passed", 7, r"network configuration list \(conflist\)",
        stdin={"cniVersion": "1.0.0", "name": NETWORK, "plugins": [{"type": "podnet"}]}),
    Bad("mtu-string", 7, r"field 'mtu' must be a whole number, not a string", stdin=dict(GOOD, mtu="1450")),
    Bad("mtu-bool", 7, r"field 'mtu' must be a whole number, not a boolean", stdin=dict(GOOD, mtu=True)),
    Bad("mtu-too-small", 7, r"mtu 20 is outside 68-65535", stdin=dict(GOOD, mtu=20)),
    Bad("ipam-not-object", 7, r"field 'ipam' must be an object", stdin=dict(GOOD, ipam="podnet-ipam")),
    Bad("foreign-ipam", 7, r"ipam type 'host-local' is not supported", stdin=dict(GOOD, ipam={"type": "host-local"})),
    Bad("pools-not-list", 7, r"ipam\.ipv4_pools must be a list",
        stdin=dict(GOOD, ipam={"type": "podnet-ipam", "ipv4_pools": "default-ipv4-ippool"})),
    Bad("v6-pool-in-v4-list", 7, r"ipam\.ipv4_pools names an IPv6 network",
        stdin=dict(GOOD, ipam={"type": "podnet-ipam", "ipv4_pools": ["fd00::/64"]})),
    Bad("assign-ipv6-without-v6-pool", 102, r"no enabled IPv6 pool",
        stdin=dict(GOOD, ipam={"type": "podnet-ipam", "assign_ipv6": "true"})),
    Bad("assign-nothing", 7, r"assign_ipv4 is \"false\" and assign_ipv6 is not \"true\", which leaves no address",
        stdin=dict(GOOD, ipam={"type": "podnet-ipam", "assign_ipv4": "false"})),
    Bad("dns-not-list", 7, r"dns\.nameservers must be a list of strings",
        stdin=dict(GOOD, dns={"nameservers": "1.1.1.1"})),
    Bad("runtimeconfig-not-object", 7, r"field 'runtimeConfig' must be an object", stdin=dict(GOOD, runtimeConfig=[])),
    Bad("prevresult-on-add", 7, r"podnet must be the first plugin of the chain",
        stdin=dict(GOOD, prevResult={"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": []})),
    Bad("check-without-prevresult", 7, r"CHECK needs prevResult", command="CHECK"),
    Bad("check-bad-prevresult", 7, r"prevResult\.ips must be a list", command="CHECK",
        stdin=dict(GOOD, prevResult={"ips": "10.0.0.1/32"})),
    Bad("check-unknown-container", 104, r"podnet has no endpoint for container", command="CHECK",
        stdin=dict(GOOD, prevResult={"ips": [], "interfaces": []})),
    Bad("gc-without-attachments", 7, r"GC needs cni\.dev/valid-attachments", command="GC", stdin=config("1.1.0")),
    Bad("gc-bad-attachment", 7, r"needs a containerID and an ifname", command="GC",
        stdin=config("1.1.0", **{p.VALID_ATTACHMENTS: [{"containerID": "abc"}]})),
    # The sandbox, the pools, the datastore, the agent
    Bad("missing-netns", 3, r"network namespace /run/netns/pnt-cf-nonexistent does not exist",
        env={"CNI_NETNS": "/run/netns/pnt-cf-nonexistent"}),
    Bad("not-a-netns", 4, r"CNI_NETNS .*not-a-netns is not a network namespace", scenario="regular-file-netns"),
    Bad("ifname-taken", 101, r"interface eth0 already exists", scenario="eth0-taken"),
    Bad("unknown-pool", 102, r"IPv4 pool 'nope' does not exist",
        stdin=dict(GOOD, ipam={"type": "podnet-ipam", "ipv4_pools": ["nope"]})),
    Bad("unknown-pool-arg", 102, r"IPv4 pool 'nope' does not exist",
        env={"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=x;IPV4POOLS=nope"}),
    Bad("status-unknown-pool", 50, r"IPv4 pool 'nope' does not exist", command="STATUS",
        stdin=dict(G11, ipam={"type": "podnet-ipam", "ipv4_pools": ["nope"]})),
    Bad("disabled-pool", 102, r"no enabled IPv4 pool named pnt-off", scenario="tiny-lab",
        stdin=dict(GOOD, ipam={"type": "podnet-ipam", "ipv4_pools": ["pnt-off"]})),
    Bad("status-disabled-pool", 50, r"no enabled IPv4 pool named pnt-off", command="STATUS", scenario="tiny-lab",
        stdin=dict(G11, ipam={"type": "podnet-ipam", "ipv4_pools": ["pnt-off"]})),
    Bad("exhausted-pool", 102, r"no free \w+ left in IPv4 pools default-ipv4-ippool", scenario="tiny-lab"),
    Bad("status-exhausted-pool", 50, r"no IPv4 address left for node node-1", command="STATUS", stdin=G11,
        scenario="tiny-lab"),
    Bad("store-unreachable", 11, r"etcd at http://127\.0\.0\.1:1 did not answer", scenario="broken-store"),
    Bad("store-unreachable-del", 11, r"etcd at http://127\.0\.0\.1:1 did not answer", command="DEL",
        scenario="broken-store"),
    Bad("store-unreachable-status", 50, r"the datastore does not answer", command="STATUS", stdin=G11,
        scenario="broken-store"),
    Bad("no-agent", 11, r"the podnet agent on this node is not reachable", scenario="no-agent"),
    Bad("no-agent-status", 50, r"the podnet agent on this node is not reachable", command="STATUS", stdin=G11,
        scenario="no-agent"),
]


def test_the_bad_input_table_is_large_and_distinct():
    assert len(BAD) >= 30
    assert len({b.id for b in BAD}) == len(BAD)


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_bad_input(request, lab, sandbox, tmp_path, bad: Bad):
    """Exact code, the message class, a well-formed error, and nothing left behind."""
    target = request.getfixturevalue("tiny_lab") if bad.scenario == "tiny-lab" else lab
    netns = sandbox(target)
    env = dict(env_for(target, bad.command, netns), **bad.env)
    if bad.command != "ADD" and "CNI_COMMAND" not in bad.env:
        env["CNI_COMMAND"] = bad.command
    extra_env, where = {}, None
    if bad.scenario == "regular-file-netns":
        (tmp_path / "not-a-netns").write_text("")
        env["CNI_NETNS"] = str(tmp_path / "not-a-netns")
    elif bad.scenario == "eth0-taken":
        target.exec(os.path.basename(netns), "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
                    check=True)
    elif bad.scenario == "broken-store":
        extra_env["PODNET_AGENT_SOCKET"] = request.getfixturevalue("broken_agent")
    elif bad.scenario == "no-agent":
        where = target.underlay_netns
    links_before = sandbox_links(netns)
    before = footprint(target)
    stdin = GOOD if bad.stdin is None else bad.stdin
    code, out, err = run_plugin(target, env, stdin, netns=where, drop=bad.drop, extra_env=extra_env)
    assert code != 0, out
    assert out is not None, f"no error JSON on stdout; stderr: {err}"
    assert out["code"] == bad.code, out
    assert re.search(bad.msg, out["msg"]), out
    assert set(out) <= {"cniVersion", "code", "msg", "details"} and out["cniVersion"] in VERSIONS
    assert "Traceback" not in err
    assert footprint(target) == before
    assert sandbox_links(netns) == links_before


# STATUS and GC ------------------------------------------------------------------------------------------


def test_status_ready(lab):
    code, out, _ = run_plugin(lab, {"CNI_COMMAND": "STATUS", "CNI_PATH": lab.bin_dir}, config("1.1.0"))
    assert (code, out) == (0, None)


def _add(lab, sandbox, node="node-1", name=NETWORK, pod=None):
    netns = sandbox(lab)
    env = env_for(lab, "ADD", netns, pod=pod)
    code, result, err = run_plugin(lab, env, config("1.1.0", name=name), node=node)
    assert code == 0, (result, err)
    return {"env": env, "netns": netns, "result": result, "node": node, "name": name,
            "ip": result["ips"][0]["address"].split("/")[0], "host_if": result["interfaces"][0]["name"],
            "key": endpoint_name(env["CNI_CONTAINERID"], "eth0")}


def _gc(lab, node, valid, name=NETWORK):
    stdin = config("1.1.0", name=name, **{p.VALID_ATTACHMENTS: [{"containerID": c, "ifname": i} for c, i in valid]})
    return run_plugin(lab, {"CNI_COMMAND": "GC", "CNI_PATH": lab.bin_dir}, stdin, node=node)


def _lab_pods(lab):
    return [(x["container_id"], x["ifname"]) for x in lab.state["pods"]]


def _attached(lab, a) -> bool:
    """The attachment's address, endpoint, host veth and pod interface all exist (or none does: False)."""
    store = open_datastore(lab.datastore_url)
    try:
        allocated = bool(Ipam(store).ips_by_handle(ipam_handle(a["env"]["CNI_CONTAINERID"])))
        endpoint = Resources(store).endpoint(a["node"], a["key"]) is not None
    finally:
        store.close()
    host = a["host_if"] in topology.links(lab.node_netns(a["node"]))
    inside = kernel.link(os.path.basename(a["netns"]), "eth0") is not None
    assert allocated == endpoint == host == inside, (allocated, endpoint, host, inside)
    return allocated


def test_gc_removes_only_stale_attachments(lab, sandbox):
    before = footprint(lab)
    store = open_datastore(lab.datastore_url)
    tunnels_before = {n: Ipam(store).ips_by_handle(tunnel_handle(n)) for n in ("node-1", "node-2")}
    store.close()
    a, b, c = (_add(lab, sandbox) for _ in range(3))
    d = _add(lab, sandbox, node="node-2")
    e = _add(lab, sandbox, name="pnt-cf-other")  # another network on the same node
    # A reservation whose ADD died before it wrote the endpoint.
    orphan = ipam_handle(uuid.uuid4().hex)
    store = open_datastore(lab.datastore_url)
    try:
        Ipam(store).auto_assign("node-1", orphan, {"node": "node-1", "network": NETWORK})
    finally:
        store.close()

    valid = _lab_pods(lab) + [(a["env"]["CNI_CONTAINERID"], "eth0")]
    code, out, _ = _gc(lab, "node-1", valid)
    assert (code, out) == (0, None)
    assert _attached(lab, a) and _attached(lab, d) and _attached(lab, e)
    assert not _attached(lab, b) and not _attached(lab, c)
    store = open_datastore(lab.datastore_url)
    try:
        assert Ipam(store).ips_by_handle(orphan) == []
        assert {n: Ipam(store).ips_by_handle(tunnel_handle(n)) for n in ("node-1", "node-2")} == tunnels_before
    finally:
        store.close()
    assert kernel.reaches(os.path.basename(a["netns"]), remote_pod(lab)["ip"])
    assert kernel.reaches(lab.pod_netns("pod-2-1"), remote_pod(lab, "node-1")["ip"])
    code, out, _ = run_plugin(lab, dict(a["env"], CNI_COMMAND="CHECK"), config("1.1.0", prevResult=a["result"]))
    assert (code, out) == (0, None)

    assert _gc(lab, "node-1", valid)[0] == 0  # idempotent
    assert _gc(lab, "node-2", _lab_pods(lab))[0] == 0  # node-2's own stale attachment
    assert not _attached(lab, d) and _attached(lab, a)
    assert _gc(lab, "node-1", _lab_pods(lab), name="pnt-cf-other")[0] == 0
    assert not _attached(lab, e) and _attached(lab, a)

    assert run_plugin(lab, dict(a["env"], CNI_COMMAND="DEL"), config("1.1.0"))[0] == 0
    assert footprint(lab) == before


def test_gc_leaves_the_veth_of_a_newer_sandbox_of_the_same_pod(lab, sandbox):
    """Two live sandboxes of pod web-x: the old one keeps Calico's veth name, the new one gets a name of
    its own; GC of the old one must not cut the new one."""
    before = footprint(lab)
    pod = f"web-{uuid.uuid4().hex[:4]}"
    old = _add(lab, sandbox, pod=pod)
    new = _add(lab, sandbox, pod=pod)
    assert old["host_if"] == host_veth_name("default", pod, "") != new["host_if"]
    assert _gc(lab, "node-1", _lab_pods(lab) + [(new["env"]["CNI_CONTAINERID"], "eth0")])[0] == 0
    assert not _attached(lab, old) and _attached(lab, new)
    assert kernel.reaches(os.path.basename(new["netns"]), remote_pod(lab)["ip"])
    assert run_plugin(lab, dict(new["env"], CNI_COMMAND="DEL"), config("1.1.0"))[0] == 0
    assert footprint(lab) == before


# Fuzz ---------------------------------------------------------------------------------------------------

FUZZ_NETWORKS = ["pnt-cf-fuzz", "pnt-cf-fuzz2"]  # never the lab's own network: a fuzzed GC must not touch it


def _values():
    return st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=8),
                     st.lists(st.text(max_size=4), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(),
                                                                                  max_size=2))


_CONFIG_VALUES = {
    "cniVersion": st.sampled_from(list(VERSIONS) + ["0.2.0", "9.9.9", "", "1.0", 1, None]),
    "name": st.sampled_from(FUZZ_NETWORKS + ["", "bad name", 7, None]),
    "type": st.sampled_from(["podnet", "", 3, None]),
    "mtu": st.one_of(st.integers(0, 70000), st.sampled_from([1400, 1450]), _values()),
    "ipam": st.one_of(st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["podnet-ipam", "calico-ipam", "host-local", None, 5]),
        "ipv4_pools": st.one_of(st.sampled_from([["default-ipv4-ippool"], ["10.244.0.0/16"], ["nope"], [],
                                                 ["fd00::/64"]]), _values()),
        "assign_ipv4": st.sampled_from(["true", "false", True, "yes"]),
        "assign_ipv6": st.sampled_from(["true", "false", False, 1]),
    }), _values()),
    "dns": st.one_of(st.fixed_dictionaries({}, optional={"nameservers": st.one_of(
        st.lists(st.sampled_from(["10.96.0.10", "1.1.1.1"]), max_size=2), _values())}), _values()),
    "runtimeConfig": st.one_of(st.just({"portMappings": []}), _values()),
    "prevResult": st.one_of(st.just({"cniVersion": "1.0.0", "interfaces": [], "ips": []}),
                            st.just({"ips": [{"address": "10.244.0.9/32"}]}), _values()),
    "args": _values(),
    p.VALID_ATTACHMENTS: st.one_of(st.lists(st.fixed_dictionaries(
        {"containerID": st.sampled_from(["abc", "def"]), "ifname": st.sampled_from(["eth0", "net1"])}),
        max_size=2), _values()),
    "plugins": st.just([{"type": "podnet"}]),
    "agent_socket": _values(),
    "capabilities": _values(),
}


@st.composite
def fuzz_case(draw, netns_choices):
    """A valid request (any command, any version) with a few random mutations of its config, its
    environment or its bytes: most cases get past the parser and reach the handler's deeper paths."""
    command = draw(st.sampled_from(["ADD", "ADD", "ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]))
    version = draw(st.sampled_from(VERSIONS))
    conf = {"cniVersion": version, "name": draw(st.sampled_from(FUZZ_NETWORKS)), "type": "podnet",
            "ipam": {"type": "podnet-ipam"}}
    if command == "CHECK":
        conf["prevResult"] = {"cniVersion": version, "interfaces": [], "ips": []}
    if command == "GC":
        conf[p.VALID_ATTACHMENTS] = []
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": uuid.uuid4().hex,
           "CNI_NETNS": draw(st.sampled_from(netns_choices)), "CNI_IFNAME": "eth0", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=fuzz;K8S_POD_NAME=p",
           "CNI_PATH": "/opt/cni/bin"}
    env_values = {
        "CNI_COMMAND": st.sampled_from(list(p.COMMANDS) + ["", "add", "FROB"]),
        "CNI_CONTAINERID": st.sampled_from(["abc", "bad/id", "-x", "", "a" * 300]),
        "CNI_NETNS": st.sampled_from(netns_choices),
        "CNI_IFNAME": st.sampled_from(["net1", "lo", "x" * 16, "a/b", ".", "", "eth 0"]),
        "CNI_ARGS": st.sampled_from(["", "K8S_POD_NAME=p", "FOO=1", "IgnoreUnknown=maybe", "=", ";;", "IP=1.2.3.4",
                                     "IgnoreUnknown=1;IPV4POOLS=nope", "K8S_POD_INFRA_CONTAINER_ID=zz",
                                     "IgnoreUnknown=true;K8S_POD_NAMESPACE=x;K8S_POD_NAME=" + "n" * 300]),
        "CNI_PATH": st.sampled_from(["", "/usr/lib/cni"]),
    }
    mangle = None
    for _ in range(draw(st.integers(0, 3))):
        what = draw(st.sampled_from(["config-set", "config-set", "config-del", "env-set", "env-del", "bytes"]))
        if what == "config-set":
            key = draw(st.sampled_from(sorted(_CONFIG_VALUES)))
            value = draw(_CONFIG_VALUES[key])
            if value is None:
                conf.pop(key, None)
            else:
                conf[key] = value
        elif what == "config-del":
            conf.pop(draw(st.sampled_from(sorted(conf))), None)
        elif what == "env-set":
            key = draw(st.sampled_from(sorted(env_values)))
            env[key] = draw(env_values[key])
        elif what == "env-del":
            env.pop(draw(st.sampled_from(sorted(env))), None)
        else:
            mangle = draw(st.sampled_from(["empty", "truncate", "garbage", "array", "not-utf8"]))
    raw = json.dumps(conf).encode()
    raw = {None: raw, "empty": b"", "truncate": raw[: len(raw) // 2], "garbage": b"{" + raw, "array": b"[]",
           "not-utf8": b"\xff" + raw}[mangle]
    return env, raw


def _check_answer(code: int, body: bytes, env: dict) -> dict | None:
    """The spec's contract for any input: a result, nothing, or an error object with a spec code."""
    text = body.decode()
    out = json.loads(text) if text.strip() else None
    if code == 0:
        if env.get("CNI_COMMAND") == "ADD" and out["cniVersion"] < "0.3.0":
            assert set(out) == {"cniVersion", "ip4", "dns"} and out["ip4"]["ip"].endswith("/32"), out
        elif env.get("CNI_COMMAND") == "ADD":
            assert set(out) == {"cniVersion", "interfaces", "ips", "routes", "dns"}, out
            assert out["cniVersion"] in VERSIONS and out["ips"][0]["address"].endswith("/32")
        elif env.get("CNI_COMMAND") == "VERSION":
            assert out["supportedVersions"] == list(VERSIONS)
        else:
            assert out is None, out
        return out
    assert isinstance(out, dict), text
    assert set(out) <= {"cniVersion", "code", "msg", "details"}, out
    assert out["cniVersion"] in VERSIONS
    assert isinstance(out["msg"], str) and out["msg"]
    assert out["code"] in p.SPEC_CODES | p.PODNET_CODES, out
    assert out["code"] != p.INTERNAL, out  # an internal error is a bug: every input deserves a spec answer
    return out


@pytest.fixture(scope="module")
def fuzz_sandboxes(lab):
    boxes = Sandboxes()
    made = [boxes(lab) for _ in range(2)]
    yield made
    boxes.cleanup()


@pytest.fixture(scope="module")
def node_ctx(lab):
    """The handler's context as node-1's agent builds it, over the lab's datastore and node-1's kernel."""
    ns = lab.node_netns("node-1")
    store = open_datastore(lab.datastore_url)
    host = rtnl.RtnlSocket(ns)
    workers = ThreadPoolExecutor(max_workers=4)  # as the agent runs it: IPAM beside the kernel work
    ctx = handler.NodeContext(node="node-1", resources=Resources(store), ipam=Ipam(store), host=host,
                              pod_mtu=lambda: 1450, ready=lambda: True, ipam_lock=threading.Lock(),
                              workers=workers)
    try:
        yield ctx
    finally:
        workers.shutdown()
        host.close()
        store.close()


def test_fuzz_handler_in_process(lab, node_ctx, fuzz_sandboxes, tmp_path_factory):
    """Random configurations and environments through handler.handle, inside node-1's namespace."""
    not_a_netns = tmp_path_factory.mktemp("fuzz") / "not-a-netns"
    not_a_netns.write_text("")
    choices = fuzz_sandboxes * 3 + ["/run/netns/pnt-cf-nonexistent", "relative", "", str(not_a_netns)]
    before = footprint(lab)
    ns = lab.node_netns("node-1")
    seen_codes: set[int] = set()
    added = []

    @settings(max_examples=400, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(case=fuzz_case(choices))
    def run(case):
        env, raw = case
        with entered(ns):
            code, body = handler.handle(node_ctx, env, raw)
            try:
                out = _check_answer(code, body, env)
                seen_codes.add(0 if code == 0 else out["code"])
            finally:
                if code == 0 and env.get("CNI_COMMAND") == "ADD":  # give back what it took
                    added.append(env["CNI_CONTAINERID"])
                    del_code, del_body = handler.handle(node_ctx, dict(env, CNI_COMMAND="DEL"), raw)
                    assert del_code == 0, del_body

    run()
    # The random walk reached success and the main error classes, not only the parser's first check.
    assert {0, p.INVALID_ENVIRONMENT, p.DECODE_FAILURE, p.INVALID_CONFIG, p.INCOMPATIBLE_VERSION} <= seen_codes
    assert len(added) >= 5, (len(added), sorted(seen_codes))
    print(f"fuzz: {len(added)} successful ADDs, codes seen {sorted(seen_codes)}")
    assert footprint(lab) == before
    assert all(sandbox_links(x) == ["lo"] for x in fuzz_sandboxes)


def test_fuzz_plugin_executable(lab, fuzz_sandboxes):
    """The same through the real executable: stdout is always JSON (or empty on success), never a traceback."""
    choices = fuzz_sandboxes + ["/run/netns/pnt-cf-nonexistent", ""]
    before = footprint(lab)
    bin_path = os.path.join(lab.bin_dir, "podnet")
    ns = lab.node_netns("node-1")

    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(case=fuzz_case(choices))
    def run(case):
        env, raw = case
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
        proc = subprocess.run(["ip", "netns", "exec", ns, bin_path], input=raw, env=full, capture_output=True,
                              timeout=60)
        assert "Traceback" not in proc.stderr.decode(errors="replace")
        try:
            _check_answer(1 if proc.returncode else 0, proc.stdout, env)
        finally:
            if proc.returncode == 0 and env.get("CNI_COMMAND") == "ADD":
                subprocess.run(["ip", "netns", "exec", ns, bin_path], input=raw, env=dict(full, CNI_COMMAND="DEL"),
                               capture_output=True, timeout=60, check=True)

    run()
    assert footprint(lab) == before
    assert all(sandbox_links(x) == ["lo"] for x in fuzz_sandboxes)


def test_the_plugin_under_test_is_the_kind_asked_for(lab, plugin_kind):
    head = open(os.path.join(lab.bin_dir, "podnet"), "rb").read()
    if plugin_kind == "static":
        # An ELF executable with no program interpreter (PT_INTERP names one, e.g. /lib64/ld-linux-x86-64.so.2):
        # it runs on a host with no Python and no C library.
        assert head[:4] == b"\x7fELF" and b"ld-linux" not in head and b"ld-musl" not in head
    else:
        assert head.startswith(b"#!/") and b" -IS\n" in head.split(b"\n", 1)[0] + b"\n"


@pytest.mark.parametrize("plugin_kind", ["python"], indirect=True)
def test_shim_success_path_imports_no_json(lab):
    """The hot path imports nothing beyond the built-in posix and sys, and _socket; not even os; json
    only when an error must be written."""
    source = open(os.path.join(os.path.dirname(p.__file__), "shim.py")).read()
    imports = [line.split("#")[0].strip() for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["import posix", "import sys"]
    plugin = os.path.join(lab.bin_dir, "podnet")
    interpreter = open(plugin).readline()[2:].split()[0]
    proc = subprocess.run(["ip", "netns", "exec", lab.node_netns("node-1"), interpreter, "-X", "importtime", "-IS",
                           plugin], input=json.dumps(config("1.1.0")).encode(), capture_output=True, timeout=30,
                          env={"CNI_COMMAND": "STATUS", "CNI_PATH": lab.bin_dir, "PATH": os.environ["PATH"]})
    assert (proc.returncode, proc.stdout) == (0, b""), proc
    imported = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines() if "|" in line}
    assert "_socket" in imported and "json" not in imported and "socket" not in imported
    assert "os" not in imported
