"""Shared helpers for the benchmarks: statistics, namespaces, cleanup, machine facts.

Every namespace a benchmark creates is named `pnb-<run tag>-...` and registered
with a Cleanup before it is created, so it is removed even when the benchmark
fails halfway or is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import secrets
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable

# The project's root on sys.path, so `python3 -m bench` works from a clean checkout.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from podnet.dataplane import ownership, rtnl, topology  # noqa: E402

PREFIX = "pnb-"


def new_tag() -> str:
    """A short random tag that makes this run's names unique (labs allow 20 characters)."""
    return secrets.token_hex(2)


# Progress ---------------------------------------------------------------------

_T0 = time.monotonic()


def progress(msg: str) -> None:
    print(f"[bench {time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


# Statistics -------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def summary_ms(seconds: Iterable[float]) -> dict:
    """Distribution of durations given in seconds, reported in milliseconds."""
    xs = [s * 1e3 for s in seconds]
    if not xs:
        return {"n": 0}
    out = {
        "n": len(xs),
        "min": xs and min(xs),
        "p25": percentile(xs, 25),
        "p50": percentile(xs, 50),
        "p75": percentile(xs, 75),
        "p90": percentile(xs, 90),
        "p99": percentile(xs, 99),
        "max": max(xs),
        "mean": statistics.fmean(xs),
        "stdev": statistics.stdev(xs) if len(xs) > 1 else 0.0,
    }
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def ratio(a: float, b: float) -> float | None:
    if not b or a is None or b is None or math.isnan(a) or math.isnan(b):
        return None
    return round(a / b, 3)


# Cleanup ----------------------------------------------------------------------


class Cleanup:
    """A stack of undo actions run in reverse order; every action runs even if others fail."""

    def __init__(self):
        self._actions: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, fn: Callable[[], object]) -> None:
        self._actions.append((what, fn))

    def netns(self, name: str) -> str:
        """Create a namespace (registered for deletion first); returns its name."""
        if not name.startswith(PREFIX):
            raise ValueError(f"benchmark namespaces must start with {PREFIX}: {name}")
        self.push(f"netns {name}", lambda: topology.delete_netns(name))
        topology.create_netns(name)
        return name

    def run(self) -> list[str]:
        errors = []
        while self._actions:
            what, fn = self._actions.pop()
            try:
                fn()
            except BaseException as e:  # keep cleaning up whatever happens
                errors.append(f"{what}: {type(e).__name__}: {e}")
        for e in errors:
            progress(f"cleanup problem: {e}")
        return errors

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.run()
        return False


def sweep_namespaces(tag: str) -> list[str]:
    """Delete any namespace of this run left behind (belt and braces after Cleanup)."""
    gone = []
    for name in topology.list_netns():
        if name.startswith(f"{PREFIX}{tag}-"):
            try:
                topology.delete_netns(name)
                gone.append(name)
            except Exception as e:  # noqa: BLE001
                progress(f"could not delete namespace {name}: {e}")
    return gone


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt, so every finally block (and cleanup) runs."""

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# Netlink event listening --------------------------------------------------------

EVENT_GROUPS = rtnl.RTMGRP_IPV4_ROUTE | rtnl.RTMGRP_IPV6_ROUTE | rtnl.RTMGRP_NEIGH


def listener(netns: str) -> rtnl.RtnlSocket:
    """A netlink socket in `netns` that receives route and neighbour/FDB change notifications."""
    return rtnl.RtnlSocket(netns=netns, groups=EVENT_GROUPS)


def drain(sock: rtnl.RtnlSocket) -> int:
    """Throw away every queued notification; returns how many datagrams were dropped."""
    n = 0
    while select.select([sock.sock], [], [], 0)[0]:
        try:
            sock.sock.recv(1 << 20, socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        except OSError:  # ENOBUFS: the queue overflowed; it is empty now
            pass
        n += 1
    return n


def decode_event(kind: int, payload: bytes) -> tuple[str, str, tuple] | None:
    """(op, table, key) for route/neighbour/FDB notifications, op in {'new', 'del'}.

    route key: (dst, gateway); neigh key: (ifindex, ip, mac); fdb key: (ifindex, mac, dst).
    """
    if kind in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE):
        r = rtnl.parse_route(payload)
        if not ownership.route(r["proto"], r["table"]):
            return None
        return ("new" if kind == rtnl.RTM_NEWROUTE else "del"), "route", (r["dst"], r["gateway"])
    if kind in (rtnl.RTM_NEWNEIGH, rtnl.RTM_DELNEIGH):
        n = rtnl.parse_neigh(payload)
        op = "new" if kind == rtnl.RTM_NEWNEIGH else "del"
        if n["family"] == rtnl.AF_BRIDGE:
            return op, "fdb", (n["ifindex"], n["lladdr"], n["dst"])
        if n["family"] in (socket.AF_INET, socket.AF_INET6) and (op == "del" or n["state"] & rtnl.NUD_PERMANENT):
            return op, "neigh", (n["ifindex"], n["dst"], n["lladdr"])
    return None


# Machine facts ------------------------------------------------------------------


def _cmd(*args: str) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def other_namespaces(tag: str) -> int:
    """Namespaces not made by this run: a hint that something else shares the machine."""
    return len([n for n in topology.list_netns() if not n.startswith(f"{PREFIX}{tag}-")])


def machine() -> dict:
    os_release = {}
    try:
        with open("/etc/os-release") as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                os_release[k] = v.strip('"')
    except OSError:
        pass
    return {
        "kernel": platform.release(),
        "os": os_release.get("PRETTY_NAME", platform.platform()),
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "iproute2": _cmd("ip", "-V"),
        "cni_plugins": _cmd("dpkg-query", "-W", "-f=${Version}", "containernetworking-plugins") or "unknown",
        "pyroute2": _pyroute2_version(),
    }


def _pyroute2_version() -> str:
    try:
        import pyroute2

        return getattr(pyroute2, "__version__", "unknown")
    except Exception:  # noqa: BLE001
        return "unknown"


def dumps(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=False)


# CPU accounting -------------------------------------------------------------------


def cpu_snapshot() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def busy_percent(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Share of all cores' time the machine was busy between two snapshots."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return round(100.0 * busy / total, 1) if total > 0 else None


def process_rss_mib(pid: int) -> float | None:
    """Resident set size of a process, MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads) in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Reading the kernel back (independent of podnet's own read path) ----------------------


def device_index(sock: rtnl.RtnlSocket, name: str) -> int | None:
    for _, payload in sock.dump(rtnl.link_dump_msg()):
        link = rtnl.parse_link(payload)
        if link["ifname"] == name:
            return link["index"]
    return None


def kernel_entries(sock: rtnl.RtnlSocket, ifindex: int | None, family: int = socket.AF_INET) -> tuple[set, set, set]:
    """What the kernel holds that podnet would own, as plain tuples:
    routes {(dst, gateway, oif, onlink)} (proto 80, main table, not blackhole),
    neighbours {(ip, mac)} and FDB entries {(mac, dst)}, permanent, on device `ifindex`;
    routes and neighbours of one address family."""
    routes = set()
    for _, payload in sock.dump(rtnl.route_dump_msg(family, proto=rtnl.RTPROT_PODNET)):
        r = rtnl.parse_route(payload)
        if ownership.route(r["proto"], r["table"]) and r["type"] != rtnl.RTN_BLACKHOLE:
            routes.add((r["dst"], r["gateway"], r["oif"], r["onlink"]))
    neigh, fdb = set(), set()
    if ifindex:
        for _, payload in sock.dump(rtnl.neigh_dump_msg(family, ifindex)):
            n = rtnl.parse_neigh(payload)
            if n["ifindex"] == ifindex and n["dst"] and n["lladdr"] and n["state"] & rtnl.NUD_PERMANENT:
                neigh.add((n["dst"], n["lladdr"]))
        for _, payload in sock.dump(rtnl.neigh_dump_msg(rtnl.AF_BRIDGE, ifindex)):
            n = rtnl.parse_neigh(payload)
            if n["ifindex"] == ifindex and n["dst"] and n["lladdr"] and n["state"] & rtnl.NUD_PERMANENT:
                fdb.add((n["lladdr"], n["dst"]))
    return routes, neigh, fdb


def fake_node(i: int, ipv6: bool = False):
    """The i-th remote node record with no agent behind it, and its block(s): (Node, [CIDR, ...]).
    Its addresses stay clear of the lab's (underlay 172.31/24, pools 10.244/16 and fd00:10:244::/48)."""
    import ipaddress

    from podnet.model import Node

    block = ipaddress.ip_network((int(ipaddress.ip_address("10.128.0.0")) + i * 64, 26))
    blocks = [str(block)]
    extra = {}
    if ipv6:
        block6 = ipaddress.ip_network((int(ipaddress.ip_address("fd00:99::")) + i * 64, 122))
        blocks.append(str(block6))
        extra = {"address6": f"{ipaddress.ip_address('fd31::1:0') + i}/64", "tunnel_address6": str(block6[0])}
    node = Node(f"fake-{i}", address=f"{ipaddress.ip_address('172.30.0.10') + i}/16", interface="eth0",
                tunnel_address=str(block.network_address), **extra)
    return node, blocks


def add_fake_nodes(store_url: str, n: int, ipv6: bool = False, start: int = 0) -> list:
    """Write n remote node records with their block affinities into a datastore, in few
    transactions (no agents behind them); return the Nodes."""
    import json as _json

    from podnet.datastore import Put, keys, open_datastore

    store = open_datastore(store_url)
    out = []
    try:
        ops = []
        for i in range(start, start + n):
            node, blocks = fake_node(i, ipv6)
            out.append(node)
            ops += [Put(keys.affinity(node.name, b), b'{"state":"confirmed"}') for b in blocks]
            ops.append(Put(keys.node(node.name), _json.dumps(node.to_manifest(), sort_keys=True).encode()))
            if len(ops) >= 3000:
                store.txn([], ops)
                ops = []
        if ops:
            store.txn([], ops)
    finally:
        store.close()
    return out
