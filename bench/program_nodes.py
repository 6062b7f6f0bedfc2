"""Programming N remote nodes (route + neighbour + FDB entry each), and what one change costs then.

podnet's side is the agent's own Reconciler (podnet.agent.reconciler) over a view of N node
records: the desired index, the managers and their apply cycle, timed as a whole from empty
tables (the start's read-back included). The peer is iproute2 applying the same 3N entries
from batch input: `bridge -batch -` for the FDB entries (`ip` has no fdb command), then
`ip -batch -` for neighbours and routes, timed from the first process start to the second
one's exit.

Each side has its own node namespace of the same layout (eth0 on a veth with an address,
vxlan.calico created by podnet's ensure_device with the same VNI/MAC/MTU/tunnel address).
Between repetitions both devices are deleted and recreated (untimed), which empties the
tables; the sides alternate who goes first. After every repetition the kernel is read back
and must hold exactly the desired entries on both sides.

Then, on podnet's full tables: a no-op resync (every manager reads the kernel back, nothing
to change) and one node added to the view -> programmed (the agent's wall and CPU time of
the pass; target <= 10 ms at 10,000 nodes), each checked against the kernel.
"""

from __future__ import annotations

import ipaddress
import statistics
import subprocess
import time

from bench.common import Cleanup, kernel_entries, progress, ratio, summary_ms
from podnet.calc import VxlanConfig, compute_desired
from podnet.dataplane import rtnl, topology, vxlan
from podnet.netns import entered
from podnet.model import Node

NAME = "program_nodes"
TARGET_RATIO = 1.2
TARGET_ADD_MS = 10.0
UNDERLAY = ipaddress.ip_network("172.20.0.0/16")
LOCAL_ADDRESS = "172.20.255.254/16"
POOL = ipaddress.ip_network("10.64.0.0/10")  # room for 65536 /26 blocks
LOCAL_TUNNEL = "10.63.255.0"
BLOCK_PREFIX = 26


class _StaticView:
    """The agent's DatastoreView, over records held here: what the Reconciler asks of it
    (the cluster-wide facts, the nodes changed since the last pass, one node's
    facts). No pools: every block is routed as vxlanMode Always and no NAT table is wanted."""

    def __init__(self, nodes, affinities):
        self.nodes = {n.name: n for n in nodes}
        self.blocks: dict[str, list[str]] = {}
        for name, cidr in affinities:
            self.blocks.setdefault(name, []).append(cidr)
        self._all, self._changed = True, set()

    def cluster_facts(self):
        return [], []

    def take_changes(self):
        out = (self._all, self._changed)
        self._all, self._changed = False, set()
        return out

    def node_facts(self, name):
        return self.nodes.get(name), tuple(self.blocks.get(name, ())), ()

    def node_names(self):
        return set(self.nodes) | set(self.blocks)

    def add(self, node: Node, cidr: str) -> None:
        self.nodes[node.name] = node
        self.blocks.setdefault(node.name, []).append(cidr)
        self._changed.add(node.name)


def fleet(n: int) -> tuple[Node, list[Node], list[tuple[str, str]]]:
    """The local node, n remote nodes and one block affinity per remote node."""
    local = Node("bench-local", address=LOCAL_ADDRESS, interface="eth0", tunnel_address=LOCAL_TUNNEL)
    nodes, affinities = [local], []
    base = int(POOL.network_address)
    for i in range(n):
        block = ipaddress.ip_network((base + i * (1 << (32 - BLOCK_PREFIX)), BLOCK_PREFIX))
        name = f"bench-node-{i}"
        nodes.append(Node(name, address=f"{UNDERLAY.network_address + 10 + i}/{UNDERLAY.prefixlen}",
                          interface="eth0", tunnel_address=str(block.network_address)))
        affinities.append((name, str(block)))
    return local, nodes, affinities


def batch_text(desired) -> tuple[str, str]:
    """(bridge -batch input, ip -batch input) for the same entries podnet programs."""
    fdb = "".join(f"fdb append {f.mac} dev {f.ifname} dst {f.dst} self permanent\n" for f in sorted(desired.fdb))
    ip = "".join(f"neigh replace {n.ip} dev {n.ifname} lladdr {n.mac} nud permanent\n"
                 for n in sorted(desired.neighbours))
    for r in sorted(desired.routes):
        if r.blackhole:
            ip += f"route replace blackhole {r.dst} proto 80\n"
        else:
            ip += f"route replace {r.dst} via {r.gateway} dev {r.ifname} onlink proto 80\n"
    return fdb, ip


class NodeNs:
    """One node namespace: eth0 (veth to the shared underlay namespace) and vxlan.calico."""

    def __init__(self, c: Cleanup, name: str, underlay: str, peer: str, device):
        self.name = c.netns(name)
        topology.add_veth_between(self.name, "eth0", underlay, peer)
        topology.configure_host(self.name, "eth0", LOCAL_ADDRESS)
        self.device = device
        with entered(self.name):
            from pyroute2 import IPRoute

            self.ipr = IPRoute()
        c.push(f"pyroute2 socket in {name}", self.ipr.close)
        self.sock = rtnl.RtnlSocket(netns=self.name)
        c.push(f"netlink socket in {name}", self.sock.close)
        self.reset()

    def reset(self) -> int:
        """Delete and recreate vxlan.calico: its routes, neighbours and FDB entries go with it."""
        vxlan.delete_device(self.ipr, self.device.name)
        self.ifindex = vxlan.ensure_device(self.ipr, self.device)
        return self.ifindex

    def read(self):
        """(routes, neighbours, FDB entries) as tuples, read independently of podnet's read path."""
        return kernel_entries(self.sock, self.ifindex)

    def expected(self, desired):
        """The desired state in the same tuple form as read()."""
        return ({(r.dst, r.gateway, self.ifindex, r.onlink) for r in desired.routes if not r.blackhole},
                {(n.ip, n.mac) for n in desired.neighbours}, {(f.mac, f.dst) for f in desired.fdb})


def _reconciler(ns: NodeNs, local: Node, view: _StaticView, config: VxlanConfig):
    from podnet.agent.reconciler import Reconciler
    from podnet.calc.offload import ChecksumEvidence

    rec = Reconciler(local, view, config, ns.sock, ns.ipr)
    # The offload self-test is a fact about the kernel, made once per agent: not part of this figure.
    rec.offloads.evidence = ChecksumEvidence("NOT_RUN", "benchmark")
    return rec


def _podnet(ns: NodeNs, local: Node, view: _StaticView, config: VxlanConfig):
    rec = _reconciler(ns, local, view, config)
    view._all = True
    with entered(ns.name):
        t0 = time.perf_counter()
        result = rec.reconcile()
        took = time.perf_counter() - t0
    if result.failures:
        raise RuntimeError(f"podnet reconcile failed: {result.failures[:3]}")
    return took, result, rec


def _peer(ns: NodeNs, fdb_text: str, ip_text: str) -> float:
    with entered(ns.name):
        t0 = time.perf_counter()
        a = subprocess.run(["bridge", "-batch", "-"], input=fdb_text.encode(), capture_output=True, timeout=300)
        b = subprocess.run(["ip", "-batch", "-"], input=ip_text.encode(), capture_output=True, timeout=300)
        took = time.perf_counter() - t0
    for name, proc in (("bridge -batch", a), ("ip -batch", b)):
        if proc.returncode != 0:
            raise RuntimeError(f"{name} failed: {proc.stderr.decode(errors='replace')[:500]}")
    return took


def _check(ns: NodeNs, desired, label: str) -> None:
    have, want = ns.read(), ns.expected(desired)
    if have != want:
        raise RuntimeError(
            f"{label}: the kernel holds {[len(x) for x in have]} routes/neighbours/FDB entries, wanted "
            f"{[len(x) for x in want]} (missing e.g. {[sorted(w - h)[:1] for h, w in zip(have, want)]}, "
            f"extra e.g. {[sorted(h - w)[:1] for h, w in zip(have, want)]})")


def _med(xs):
    return round(statistics.median(xs) * 1e3, 2) if xs else None


def _one_more(view: _StaticView, n: int, k: int) -> tuple[Node, str]:
    """A node that was not in the fleet (the k-th added), with its block."""
    base = int(POOL.network_address) + (n + k) * (1 << (32 - BLOCK_PREFIX))
    block = ipaddress.ip_network((base, BLOCK_PREFIX))
    node = Node(f"bench-added-{k}", address=f"{ipaddress.ip_address('172.21.0.10') + k}/16", interface="eth0",
                tunnel_address=str(block.network_address))
    return node, str(block)


def measure(c: Cleanup, tag: str, n: int, reps: int) -> dict:
    config = VxlanConfig()
    local, nodes, affinities = fleet(n)
    desired = compute_desired(local, nodes, affinities, config, 1500)
    assert len(desired.routes) == len(desired.neighbours) == len(desired.fdb) == n
    fdb_text, ip_text = batch_text(desired)

    underlay = c.netns(f"pnb-{tag}-pg{n}-ul")
    pod = NodeNs(c, f"pnb-{tag}-pg{n}-podnet", underlay, "veth-podnet", desired.device)
    peer = NodeNs(c, f"pnb-{tag}-pg{n}-ipbatch", underlay, "veth-ipbatch", desired.device)

    podnet_t, peer_t, noop_t, noop_cpu = [], [], [], []
    rec = view = None
    for rep in range(reps):
        for ns in (pod, peer):
            ns.reset()
            if any(ns.read()):
                raise RuntimeError(f"{ns.name}: tables not empty after the device was recreated")
        time.sleep(0.2)  # let the kernel finish freeing the previous repetition's entries
        order = ("podnet", "peer") if rep % 2 == 0 else ("peer", "podnet")
        for side in order:
            if side == "podnet":
                view = _StaticView(nodes, affinities)
                took, result, rec = _podnet(pod, local, view, config)
                podnet_t.append(took)
                _check(pod, desired, "podnet")
                # A resync with nothing to change: what every manager's periodic read-back costs.
                with entered(pod.name):
                    t0, c0 = time.perf_counter(), time.thread_time()
                    again = rec.reconcile(full=True)
                    noop_t.append(time.perf_counter() - t0)
                    noop_cpu.append(time.thread_time() - c0)
                if again.changes:
                    raise RuntimeError(f"podnet's no-op resync still made {again.changes} changes")
            else:
                peer_t.append(_peer(peer, fdb_text, ip_text))
                _check(peer, desired, "ip -batch")
        progress(f"program_nodes N={n}: repetition {rep + 1}/{reps}: podnet {podnet_t[-1] * 1e3:.1f} ms, "
                 f"ip -batch {peer_t[-1] * 1e3:.1f} ms")

    # One node added to the full tables -> programmed: the agent's pass, wall and CPU time.
    add_wall, add_cpu, add_changes = [], [], []
    adds = 10 if reps > 3 else 5
    for k in range(adds):
        node, block = _one_more(view, n, k)
        view.add(node, block)
        with entered(pod.name):
            t0, c0 = time.perf_counter(), time.thread_time()
            result = rec.reconcile()
            add_wall.append(time.perf_counter() - t0)
            add_cpu.append(time.thread_time() - c0)
        add_changes.append(result.changes)
        if result.failures or result.changes != 3 or result.resynced:
            raise RuntimeError(f"adding one node: {result.changes} changes, read back {result.resynced}, "
                               f"failures {result.failures[:2]}")
    routes, neigh, fdb = pod.read()
    if len(routes) != n + adds or len(neigh) != n + adds or len(fdb) != n + adds:
        raise RuntimeError(f"after {adds} nodes added the kernel holds {len(routes)}/{len(neigh)}/{len(fdb)}")

    out = {
        "n": n,
        "entries": 3 * n,
        "repetitions": reps,
        "podnet_ms": {"median": _med(podnet_t), "min": _med([min(podnet_t)]), "max": _med([max(podnet_t)]),
                      "samples": [round(x * 1e3, 2) for x in podnet_t]},
        "ip_batch_ms": {"median": _med(peer_t), "min": _med([min(peer_t)]), "max": _med([max(peer_t)]),
                        "samples": [round(x * 1e3, 2) for x in peer_t]},
        "noop_resync_ms": summary_ms(noop_t),
        "noop_resync_cpu_ms": summary_ms(noop_cpu),
        "node_added_ms": summary_ms(add_wall),
        "node_added_cpu_ms": summary_ms(add_cpu),
    }
    out["ratio"] = ratio(out["podnet_ms"]["median"], out["ip_batch_ms"]["median"])
    out["checks"] = {
        "ratio": out["ratio"] is not None and out["ratio"] <= TARGET_RATIO,
        "node_added": out["node_added_cpu_ms"].get("p50", 1e9) <= TARGET_ADD_MS,
        "kernel_matches": True,  # every repetition was read back (_check) or the run raised
    }
    out["pass"] = all(out["checks"].values())
    return out


def run(tag: str, quick: bool) -> dict:
    sizes = [1000] if quick else [1000, 10000]
    reps = 3 if quick else 5
    results = []
    for n in sizes:
        progress(f"program_nodes N={n}: two node namespaces (podnet, ip -batch), {reps} repetitions each")
        with Cleanup() as c:
            results.append(measure(c, tag, n, reps))
        r = results[-1]
        progress(f"program_nodes N={n}: median podnet {r['podnet_ms']['median']} ms, "
                 f"ip -batch {r['ip_batch_ms']['median']} ms, ratio {r['ratio']}; no-op resync "
                 f"{r['noop_resync_ms'].get('p50')} ms; one node added {r['node_added_ms'].get('p50')} ms "
                 f"(CPU {r['node_added_cpu_ms'].get('p50')} ms)")
    return {"params": {"sizes": sizes, "repetitions": reps,
                       "peer": "bridge -batch (fdb append) + ip -batch (neigh replace, route replace onlink proto 80)"},
            "targets": {"ratio": TARGET_RATIO, "node_added_cpu_ms": TARGET_ADD_MS}, "sizes": results,
            "pass": all(r["pass"] for r in results)}
