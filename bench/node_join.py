"""Node join: a new node's record is written -> every other node's kernel holds its entries.

A 10-node lab (10 agents). For each repetition a new node registers the way
the agent's own registration does it: a Node record without a tunnel address
first (IPAM assigns only to registered nodes; other agents cannot program a
node without one), then its tunnel address is allocated (which claims a block
and writes the block affinity), then the record gets the tunnel address. The
clock starts just before that last write and stops
when the last of the 10 nodes' kernels holds the new node's route, neighbour
and FDB entry, as seen by a netlink notification socket in each node
namespace (no polling of status files); a kernel read-back in every node
confirms it. The node record is then deleted and we time, informationally,
until every node has removed the three entries again.

`measure(..., datastore="etcd")` runs the same on a lab whose datastore is an
etcd cluster in the underlay namespace (bench.node_join_etcd).
"""

from __future__ import annotations

import select
import time

from bench.common import (Cleanup, busy_percent, cpu_snapshot, decode_event, device_index, drain, kernel_entries,
                          listener, process_cpu_seconds, progress, summary_ms)
from podnet.dataplane import rtnl

NAME = "node_join"
TARGET_P99_MS = 1000.0
TIMEOUT = 10.0


def _wait_all(socks: dict, want: dict, deadline: float, settled) -> dict:
    """Per node: perf_counter() when its last wanted (op, table, match) notification arrived.
    settled(node) reads the node's kernel; it is asked only if notifications were lost (ENOBUFS)."""
    pending = {node: set(items) for node, items in want.items()}
    done: dict[str, float] = {}
    by_fd = {s.sock.fileno(): node for node, s in socks.items()}
    while pending and time.perf_counter() < deadline:
        ready, _, _ = select.select([socks[n].sock for n in pending], [], [], deadline - time.perf_counter())
        now = time.perf_counter()
        for s in ready:
            node = by_fd[s.fileno()]
            try:
                events = socks[node].recv_events()
            except OSError:  # ENOBUFS: notifications were lost; ask the kernel instead
                if settled(node):
                    del pending[node]
                    done[node] = time.perf_counter()
                continue
            for kind, payload in events:
                ev = decode_event(kind, payload)
                if ev is None:
                    continue
                for item in list(pending.get(node, ())):
                    op, table, match = item
                    if ev[0] == op and ev[1] == table and match(ev[2]):
                        pending[node].discard(item)
            if node in pending and not pending[node]:
                del pending[node]
                done[node] = now
    return done


def run(tag: str, quick: bool) -> dict:
    return measure(tag, quick)


def measure(tag: str, quick: bool, datastore: str = "sqlite", etcd_members: int = 3, suffix: str = "join",
            name: str = NAME) -> dict:
    """The node_join benchmark on a lab with the given datastore ("sqlite" or "etcd")."""
    from podnet.datastore.resources import Resources
    from podnet.ipam import Ipam
    from podnet.lab.lab import Lab, LabSpec
    from podnet.model import Node
    from podnet.model.endpoint import tunnel_handle

    try:
        from podnet.ipam.maintenance import delete_node
    except ImportError:  # older trees: only the record is deleted, the tunnel address released by hand
        delete_node = None

    reps = 5 if quick else 20
    n_nodes = 10
    if datastore == "etcd":
        spec = LabSpec(nodes=n_nodes, pods_per_node=0, datastore="etcd", etcd_members=etcd_members)
        store_label = f"{etcd_members}-member etcd in the underlay namespace"
    else:
        spec = LabSpec(nodes=n_nodes, pods_per_node=0)
        store_label = "embedded SQLite (the lab's, ?durable=false)"
    lab = Lab(f"pnb-{tag}-{suffix}", progress=lambda m: None)
    join_t: list[float] = []
    per_node_t: list[float] = []
    leave_t: list[float] = []
    misses = 0
    with Cleanup() as c:
        c.push(f"lab {lab.name}", lab.down)
        progress(f"{name}: {n_nodes}-node lab {lab.name} (10 agents), datastore: {store_label}")
        t = time.monotonic()
        lab.up(spec)
        progress(f"{name}: lab converged in {time.monotonic() - t:.1f} s")
        nodes = [f"node-{i}" for i in range(1, n_nodes + 1)]
        socks, readers, ifindex = {}, {}, {}
        for node in nodes:
            ns = lab.node_netns(node)
            socks[node] = listener(ns)
            c.push(f"listener {node}", socks[node].close)
            readers[node] = rtnl.RtnlSocket(netns=ns)
            c.push(f"socket {node}", readers[node].close)
            ifindex[node] = device_index(readers[node], "vxlan.calico")
        # What 10 idle agents cost the machine (their datastore watches poll).
        pids = [e["pid"] for e in lab.state["nodes"]]
        etcd_pids = [p["pid"] for p in lab.state.get("processes", []) if p.get("what", "").startswith("etcd ")]
        time.sleep(0.5)
        cpu0, m0, t = [process_cpu_seconds(p) or 0.0 for p in pids], cpu_snapshot(), time.monotonic()
        e0 = [process_cpu_seconds(p) or 0.0 for p in etcd_pids]
        time.sleep(3.0)
        cpu1, m1, dt = [process_cpu_seconds(p) or 0.0 for p in pids], cpu_snapshot(), time.monotonic() - t
        e1 = [process_cpu_seconds(p) or 0.0 for p in etcd_pids]
        idle_cpu = round(100.0 * sum(b - a for a, b in zip(cpu0, cpu1)) / dt, 1)
        idle_etcd = round(100.0 * sum(b - a for a, b in zip(e0, e1)) / dt, 1) if etcd_pids else None
        machine_busy = busy_percent(m0, m1)
        progress(f"{name}: {n_nodes} idle agents use {idle_cpu}% of one core in all "
                 + (f"(the etcd members {idle_etcd}%) " if etcd_pids else "")
                 + f"(machine busy {machine_busy}% of all cores)")
        # An etcd lab's store listens in the underlay namespace: this thread stays there while it uses the
        # store (every netlink socket above was opened in its node's namespace and stays bound there).
        opened = lab.datastore()
        store = opened.__enter__()
        c.push("datastore", lambda: opened.__exit__(None, None, None))
        res, ipam = Resources(store), Ipam(store)

        progress(f"{name}: {reps} joins (and leaves)")
        for k in range(reps):
            joiner = f"joiner-{k}"
            address = spec.node_address(50 + k)
            res.put_node(Node(joiner, address=address, interface="eth0"))  # registered first, as an agent does
            tunnel = ipam.auto_assign(joiner, tunnel_handle(joiner), {"type": "vxlanTunnelAddress", "node": joiner},
                                      version=4, use="Tunnel")
            block = ipam.node_block_cidrs(joiner, 4)[0]
            node = Node(joiner, address=address, interface="eth0", tunnel_address=tunnel)
            mac, ip = node.effective_vtep_mac, node.ip
            time.sleep(0.3)  # let the agents digest the new block affinity (nothing to program yet)
            want = {n: {
                ("new", "route", lambda key, b=block: key[0] == b),
                ("new", "neigh", lambda key, n_=n: key[0] == ifindex[n_] and key[1] == tunnel),
                ("new", "fdb", lambda key, n_=n: key[0] == ifindex[n_] and key[1] == mac and key[2] == ip),
            } for n in nodes}

            def joined(n, block=block, tunnel=tunnel, mac=mac, ip=ip):
                routes, neigh, fdb = kernel_entries(readers[n], ifindex[n])
                return (any(r[0] == block for r in routes) and any(x[0] == tunnel for x in neigh)
                        and (mac, ip) in fdb)

            for s in socks.values():
                drain(s)
            t0 = time.perf_counter()
            res.put_node(node)
            done = _wait_all(socks, want, t0 + TIMEOUT, joined)
            if len(done) < len(nodes):
                misses += 1
                progress(f"{name}: join {k + 1}: only {len(done)}/{len(nodes)} nodes programmed "
                         f"within {TIMEOUT:.0f} s")
            else:
                join_t.append(max(done.values()) - t0)
                per_node_t.extend(v - t0 for v in done.values())
            # Confirm in every kernel (not just the notifications).
            for n in nodes:
                if not joined(n):
                    raise RuntimeError(f"{n} does not hold {joiner}'s entries after the join")
            if done and len(done) == len(nodes):
                progress(f"{name}: join {k + 1}/{reps}: all {len(nodes)} nodes programmed in "
                         f"{join_t[-1] * 1e3:.1f} ms")

            # Leave: delete the node and wait (informational) until every node removed its entries.
            gone = {n: {
                ("del", "route", lambda key, b=block: key[0] == b),
                ("del", "neigh", lambda key, n_=n: key[0] == ifindex[n_] and key[1] == tunnel),
                ("del", "fdb", lambda key, n_=n: key[0] == ifindex[n_] and key[1] == mac),
            } for n in nodes}
            for s in socks.values():
                drain(s)
            t0 = time.perf_counter()
            if delete_node is not None:  # record, tunnel address and block, as `podnet node delete` does
                delete_node(ipam, res, joiner)
            else:
                res.delete_node(joiner)
                ipam.release_handle(tunnel_handle(joiner))
            done = _wait_all(socks, gone, t0 + TIMEOUT, lambda n: False)
            if len(done) == len(nodes):
                leave_t.append(max(done.values()) - t0)
            time.sleep(0.2)

    s = summary_ms(join_t)
    return {
        "params": {"nodes": n_nodes, "joins": reps, "observed_by": "netlink notifications in every node namespace",
                   "registration": "a Node record without a tunnel address, its IPAM tunnel address (claims a "
                                   "block + affinity), then the record with it (timed)",
                   "datastore": store_label},
        "targets": {"p99_ms": TARGET_P99_MS},
        "join_all_nodes_ms": s,
        "join_per_node_ms": summary_ms(per_node_t),
        "leave_all_nodes_ms": summary_ms(leave_t),
        "misses": misses,
        "idle_agents_cpu_percent_of_one_core": idle_cpu,
        "machine_busy_percent_while_idle": machine_busy,
        "idle_etcd_cpu_percent_of_one_core": idle_etcd,
        "pass": misses == 0 and s.get("p99", 1e9) <= TARGET_P99_MS,
        "samples_ms": {"join": [round(x * 1e3, 3) for x in join_t], "leave": [round(x * 1e3, 3) for x in leave_t]},
    }
