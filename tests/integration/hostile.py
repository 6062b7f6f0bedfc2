"""The hostile CNI suite's harness: run a request a careless or hostile runtime could send, and prove
the node came through it whole.

One lab per test module (two nodes, a pod on each: the pod on node-1 is the *bystander*, the one on
node-2 its peer) wrapped in a `Hostile`:

    @pytest.fixture(scope="module")
    def hostile():
        with hostile_lab("pnt-hx") as h:
            yield h

    def test_x(hostile):
        env = hostile.env("DEL", "/proc/self/ns/net")
        hostile.refused(env, code=4)             # one request, every check below

    def test_y(hostile):
        with hostile.unharmed():                 # a sequence; checked once it ends
            ...several hostile.run(...) calls...

`refused(env, code)` runs the plugin executable exactly as a runtime does (environment plus the
config on stdin, inside the node's network namespace) and checks, around that one request:

- the exit code is not 0 and stdout is exactly one spec error object whose "code" is `code`,
  with a non-empty "msg" and a supported "cniVersion";
- no Python traceback on stdout, on stderr, or in any agent's log written meanwhile;
- nothing leaked or damaged (`State`): every lab node's links (name, index, MAC, MTU, flags but IFF_RUNNING), their
  addresses, every route of every table and the default route; the underlay namespace likewise;
  the machine's own eth0, its addresses and its default route (read, never written); the IPAM
  allocations (address -> handle); the workload endpoint records;
- the bystander pod still reaches its peer on the other node.

`accepted(env)` is the same for a request that must succeed and change nothing (a DEL of nothing,
a DEL whose namespace is gone). `unharmed()` gives the same checks to any block of code, and
`snapshot()`/`State.diff()` let a test compare states itself when a sequence legitimately changes
something (then it checks what changed, not merely that something did).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import uuid
from dataclasses import dataclass, field

from pyroute2 import IPRoute

from podnet.cni import protocol as p
from podnet.dataplane import topology
from podnet.datastore.resources import Resources
from podnet.ipam import Ipam
from podnet.lab.lab import Lab
from tests.integration import kernel
from tests.integration.conftest import built_lab

NETWORK = "k8s-pod-network"
TRACEBACK = "Traceback (most recent call last)"


def config(version: str = "1.0.0", **extra) -> dict:
    return {"cniVersion": version, "name": NETWORK, "type": "podnet", "ipam": {"type": "podnet-ipam"}, **extra}


@dataclass
class PluginRun:
    """One execution of the plugin: what a runtime would see."""

    code: int
    stdout: str
    stderr: str
    json: dict | None  # stdout parsed; None when stdout was empty

    def __str__(self) -> str:
        return f"exit {self.code}, stdout {self.stdout!r}, stderr {self.stderr[-2000:]!r}"


@dataclass
class State:
    """What a request must not change: kernel state of the lab's namespaces (and the machine's own
    eth0, read only) plus the datastore's allocations and endpoints."""

    namespaces: dict[str, dict] = field(default_factory=dict)  # netns -> {"links", "addresses", "routes"}
    host: dict = field(default_factory=dict)  # the machine's eth0, its addresses, its default routes
    allocations: dict[str, str] = field(default_factory=dict)  # address -> handle
    endpoints: dict[str, tuple] = field(default_factory=dict)  # key -> (container, interface, host if, ips)

    def diff(self, other: "State") -> list[str]:
        """What differs from `other`, one line per difference ([] when equal)."""
        out = []
        for ns in sorted(set(self.namespaces) | set(other.namespaces)):
            mine, theirs = self.namespaces.get(ns, {}), other.namespaces.get(ns, {})
            for what in ("links", "addresses", "routes"):
                a, b = set(mine.get(what, ())), set(theirs.get(what, ()))
                out += [f"{ns}: {what} lost {x}" for x in sorted(a - b, key=str)]
                out += [f"{ns}: {what} gained {x}" for x in sorted(b - a, key=str)]
        if self.host != other.host:
            out.append(f"the machine's own network changed: {self.host} -> {other.host}")
        for name, a, b in (("allocation", self.allocations, other.allocations),
                           ("endpoint", self.endpoints, other.endpoints)):
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    out.append(f"{name} {key}: {a.get(key)} -> {b.get(key)}")
        return out


# IFF_RUNNING follows the operational state, which the kernel's link watcher sets by itself, late (up to a
# second after a fresh veth's carrier, longer on a loaded machine): no witness either. IFF_UP and
# IFF_LOWER_UP (the carrier) stay in the comparison.
IFF_RUNNING = 0x40


def _kernel_made(address: str | None) -> bool:
    """IPv6 link-local and multicast addresses and routes: the kernel adds them by itself (late, after
    DAD, on a fresh link), so they are no witness; the links they belong to are."""
    return bool(address) and address.startswith(("fe80:", "ff00:", "ff02:"))


def _kernel_state(ipr: IPRoute, only: str | None = None) -> dict:
    """Links, addresses and routes (every table, both families) as sets of tuples, read over netlink with
    pyroute2 (not podnet's own netlink code: an independent witness). `only`: one link and its addresses
    and the default routes (the machine's own namespace, where others' tests may come and go)."""
    found = ipr.get_links()
    names = {l["index"]: l.get_attr("IFLA_IFNAME") for l in found}
    links = {(l["index"], names[l["index"]], l.get_attr("IFLA_ADDRESS"), l.get_attr("IFLA_MTU"),
              l["flags"] & ~IFF_RUNNING) for l in found if only in (None, names[l["index"]])}
    addresses = set()
    for a in ipr.get_addr():
        local = a.get_attr("IFA_ADDRESS") or a.get_attr("IFA_LOCAL")
        if not _kernel_made(local) and only in (None, names.get(a["index"])):
            addresses.add((names.get(a["index"]), a["family"], local, a["prefixlen"]))
    routes = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.route("dump", family=family):
            dst = r.get_attr("RTA_DST")
            if _kernel_made(dst) or (only and dst is not None):
                continue
            routes.add((family, r.get_attr("RTA_TABLE"), r["type"], f"{dst or 'default'}/{r['dst_len']}",
                        r.get_attr("RTA_GATEWAY"), names.get(r.get_attr("RTA_OIF")), r.get_attr("RTA_PREFSRC"),
                        r["flags"]))
    return {"links": links, "addresses": addresses, "routes": routes}


class Hostile:
    """A lab to send hostile CNI requests to, and the checks that the node survived them."""

    def __init__(self, lab: Lab, node: str = "node-1"):
        self.lab = lab
        self.node = node
        # lab status (name, node, netns, ip, interface...) and the lab's own record (container_id, ifname)
        recorded = {p["name"]: p for p in lab.state["pods"]}
        pods = [{**p, **recorded.get(p["name"], {})} for p in lab.status()["pods"]]
        self.bystander = next(p for p in pods if p["node"] == node)
        self.peer = next(p for p in pods if p["node"] != node)
        self._sandboxes: list[str] = []

    # Requests -----------------------------------------------------------------------------------------

    def env(self, command: str, netns: str, cid: str | None = None, ifname: str = "eth0",
            pod: str | None = None, **extra: str) -> dict:
        """A runtime's environment for one call; extra KEY=value pairs are added (or override)."""
        pod = pod or f"hx-{uuid.uuid4().hex[:6]}"
        return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid or uuid.uuid4().hex, "CNI_NETNS": netns,
                "CNI_IFNAME": ifname, "CNI_PATH": self.lab.bin_dir,
                "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}", **extra}

    def sandbox(self) -> str:
        """A fresh, empty pod namespace (its path); removed by close() or with the lab."""
        name = f"{self.lab.name}-sb{uuid.uuid4().hex[:6]}"
        topology.create_netns(name)
        self._sandboxes.append(name)
        return f"/run/netns/{name}"

    def run(self, env: dict, stdin: bytes | dict | None = None, node: str | None = None,
            drop: tuple[str, ...] = (), wrap: tuple[str, ...] = (), timeout: float = 60) -> PluginRun:
        """Run the plugin in the node's namespace as a runtime does. `drop`: variables to leave out;
        `wrap`: a command the plugin runs under, inside the node (e.g. ("unshare", "--mount"))."""
        stdin = config() if stdin is None else stdin
        raw = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
        full = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env}
        for key in drop:
            full.pop(key, None)
        cmd = ["ip", "netns", "exec", self.lab.node_netns(node or self.node), *wrap,
               os.path.join(self.lab.bin_dir, "podnet")]
        proc = subprocess.run(cmd, input=raw, env=full, capture_output=True, timeout=timeout)
        out, err = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
        try:
            parsed = json.loads(out) if out.strip() else None
        except ValueError:
            parsed = None
        return PluginRun(proc.returncode, out, err, parsed)

    def refused(self, env: dict, code: int, stdin: bytes | dict | None = None, node: str | None = None,
                msg: str | None = None, **run_args) -> PluginRun:
        """Run one request that must fail with spec error `code` and change nothing."""
        with self.unharmed():
            run = self.run(env, stdin, node, **run_args)
            assert_error(run, code, msg)
        return run

    def accepted(self, env: dict, stdin: bytes | dict | None = None, node: str | None = None,
                 **run_args) -> PluginRun:
        """Run one request that must succeed and change nothing (a DEL of nothing, for instance)."""
        with self.unharmed():
            run = self.run(env, stdin, node, **run_args)
            assert run.code == 0, run
            assert TRACEBACK not in run.stdout + run.stderr, run
            if run.stdout.strip():
                assert isinstance(run.json, dict), f"stdout is not a JSON object: {run}"
        return run

    # Checks -------------------------------------------------------------------------------------------

    def snapshot(self) -> State:
        state = State()
        namespaces = [n["netns"] for n in self.lab.state["nodes"]] + [self.lab.underlay_netns]
        for ns in namespaces:
            with topology.ipr_in(ns) as ipr:
                state.namespaces[ns] = _kernel_state(ipr)
        with IPRoute() as ipr:  # this thread's namespace: the machine's own (read, never written)
            state.host = _kernel_state(ipr, only="eth0")
        with self.lab.datastore() as store:
            state.allocations = {ip: a.handle for b in Ipam(store).blocks() for ip, a in b.in_use().items()}
            state.endpoints = {e.key_name: (e.container_id, e.interface, e.host_interface, tuple(e.ips))
                               for e in Resources(store).endpoints()}
        return state

    def log_offsets(self) -> dict[str, int]:
        out = {}
        for n in self.lab.state["nodes"]:
            try:
                out[n["name"]] = os.path.getsize(self.lab.log_path(n["name"]))
            except OSError:
                out[n["name"]] = 0
        return out

    def assert_no_traceback_since(self, offsets: dict[str, int]) -> None:
        for node, offset in offsets.items():
            with open(self.lab.log_path(node), "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            assert TRACEBACK not in text, f"agent {node} logged a traceback:\n{text[-4000:]}"

    def assert_bystander_reachable(self) -> None:
        ping = kernel.ping(self.bystander["netns"], self.peer["ip"])
        assert ping.returncode == 0, f"bystander {self.bystander['name']} lost {self.peer['ip']}: {ping.stdout}"

    def assert_node_default_routes(self) -> None:
        for n in self.lab.state["nodes"]:
            default = [r for r in kernel.routes(n["netns"]) if r["dst"] == "default"]
            assert default and default[0].get("dev") == "eth0", f"{n['name']} default route: {default}"

    @contextlib.contextmanager
    def unharmed(self):
        """Every check of the module docstring around the block."""
        before = self.snapshot()
        offsets = self.log_offsets()
        yield
        after = self.snapshot()
        changed = before.diff(after)
        assert not changed, "the request left a mark:\n" + "\n".join(changed)
        self.assert_node_default_routes()
        self.assert_no_traceback_since(offsets)
        self.assert_bystander_reachable()

    def close(self) -> None:
        for name in self._sandboxes:
            topology.delete_netns(name)
        self._sandboxes.clear()


def assert_error(run: PluginRun, code: int, msg: str | None = None) -> dict:
    """The spec's error object with exactly this code, alone on stdout, and no traceback anywhere."""
    assert TRACEBACK not in run.stdout + run.stderr, run
    assert run.code != 0, f"expected error {code}: {run}"
    assert isinstance(run.json, dict), f"stdout is not one JSON object: {run}"
    out = run.json
    assert out.get("code") == code, f"expected code {code}: {run}"
    assert isinstance(out.get("msg"), str) and out["msg"], run
    assert out.get("cniVersion") in p.SUPPORTED_VERSIONS, run
    assert set(out) <= {"cniVersion", "code", "msg", "details"}, run
    if msg is not None:
        assert msg in out["msg"] + " " + out.get("details", ""), f"expected {msg!r} in the error: {run}"
    return out


@contextlib.contextmanager
def hostile_lab(prefix: str, **spec):
    """A two-node lab with one pod per node, as a Hostile; torn down afterwards, also on failure."""
    spec = {"nodes": 2, "pods_per_node": 1, **spec}
    with built_lab(prefix, **spec) as lab:
        h = Hostile(lab)
        try:
            yield h
        finally:
            h.close()
