"""Pod-to-pod throughput and latency across two nodes: a podnet lab with its defaults vs the same wired by hand.

The peer is the seed article's topology built by this benchmark with `ip` and `bridge` in its own
namespaces: an underlay bridge, two node namespaces each with a kernel VXLAN device (VNI 4096, port
4789, learning off, MTU 1450 over the 1500-byte underlay, offloads as the kernel sets them), a pod on
each node behind a veth with proxy ARP, the /32 host routes, and per remote node the route `via
<tunnel address> onlink`, the permanent neighbour and the permanent FDB entry. podnet's side is a
2-node lab (`podnet lab up`) with nothing configured: its agents decide the offloads themselves.

Measured from pod 1 to pod 2, the two sides interleaved (the order alternates per repetition), each
repeated and reported as medians (the verdict's ratio is the median of the ratios of back-to-back
pairs, each figure of the two sides measured one after the other): iperf3 TCP (one stream) and UDP (1400-byte datagrams, unlimited
rate; throughput is what arrived), ping round-trip time (p50 and p99 of every reply), and a
request/response rate (a 1-byte request answered by a 1-byte response over one TCP connection, as
netperf's TCP_RR does). Checks that count in the verdict: every run moved data (nonzero bytes, UDP
every ping answered, RR transactions), and on both sides the traffic crossed the VXLAN
device (its TX byte counter grew by at least the bytes iperf3 reported).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from bench.common import Cleanup, percentile, progress, ratio

NAME = "throughput"
TARGETS = {"tcp_ratio": 0.98, "udp_ratio": 0.98}
VNI, PORT, MTU, POD_MTU = 4096, 4789, 1500, 1450
MACS = {1: "66:aa:bb:cc:dd:01", 2: "66:aa:bb:cc:dd:02"}
NODES = {1: {"ip": "172.31.0.11", "tunnel": "10.244.0.0", "block": "10.244.0.0/26", "pod": "10.244.0.1"},
         2: {"ip": "172.31.0.12", "tunnel": "10.244.0.64", "block": "10.244.0.64/26", "pod": "10.244.0.65"}}

# The request/response pair: run with `python3 -c`, in the pod namespaces.
RR_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while (b := c.recv(1)):
        c.sendall(b)
    c.close()
"""
RR_CLIENT = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2]))); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
n, end = 0, time.perf_counter() + float(sys.argv[3])
while time.perf_counter() < end:
    c.sendall(b"x")
    if c.recv(1) != b"x":
        break
    n += 1
print(n / float(sys.argv[3]))
"""


def _sh(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def _in(ns: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return _sh("ip", "netns", "exec", ns, *args, **kw)


def wire_by_hand(c: Cleanup, tag: str) -> dict:
    """The seed's topology with the kernel's tools; returns {"pods": [netns1, netns2], "nodes": [...], "ips"}."""
    under = c.netns(f"pnb-{tag}-hw-under")
    _sh("ip", "-n", under, "link", "add", "br0", "type", "bridge")
    _sh("ip", "-n", under, "addr", "add", "172.31.0.1/24", "dev", "br0")
    _sh("ip", "-n", under, "link", "set", "br0", "up")
    nodes, pods = {}, {}
    for i, n in NODES.items():
        node, pod = c.netns(f"pnb-{tag}-hw-node{i}"), c.netns(f"pnb-{tag}-hw-pod{i}")
        nodes[i], pods[i] = node, pod
        _sh("ip", "-n", under, "link", "add", f"eth{i}", "mtu", str(MTU), "type", "veth", "peer", "name", "eth0",
            "netns", node, "mtu", str(MTU))
        _sh("ip", "-n", under, "link", "set", f"eth{i}", "master", "br0", "up")
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", f"{n['ip']}/24", "dev", "eth0"],
                    ["link", "set", "eth0", "up"], ["route", "add", "default", "via", "172.31.0.1"],
                    ["link", "add", "vxlan.calico", "address", MACS[i], "mtu", str(POD_MTU), "type", "vxlan",
                     "id", str(VNI), "local", n["ip"], "dev", "eth0", "dstport", str(PORT), "nolearning"],
                    ["addr", "add", f"{n['tunnel']}/32", "dev", "vxlan.calico"],
                    ["link", "set", "vxlan.calico", "up"],
                    ["link", "add", "cali1", "mtu", str(POD_MTU), "address", "ee:ee:ee:ee:ee:ee", "type", "veth",
                     "peer", "name", "eth0", "netns", pod, "mtu", str(POD_MTU)],
                    ["link", "set", "cali1", "up"],
                    ["route", "add", f"{n['pod']}/32", "dev", "cali1", "scope", "link"]):
            _sh("ip", "-n", node, *cmd)
        for key, value in (("net.ipv4.ip_forward", 1), ("net.ipv4.conf.cali1.proxy_arp", 1),
                           ("net.ipv4.neigh.cali1.proxy_delay", 0), ("net.ipv4.conf.cali1.forwarding", 1)):
            _in(node, "sysctl", "-qw", f"{key}={value}")
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", f"{n['pod']}/32", "dev", "eth0"],
                    ["link", "set", "eth0", "up"], ["route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"],
                    ["route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]):
            _sh("ip", "-n", pod, *cmd)
    for i, j in ((1, 2), (2, 1)):
        r = NODES[j]
        _sh("ip", "-n", nodes[i], "route", "add", r["block"], "via", r["tunnel"], "dev", "vxlan.calico", "onlink")
        _sh("ip", "-n", nodes[i], "neigh", "add", r["tunnel"], "lladdr", MACS[j], "dev", "vxlan.calico",
            "nud", "permanent")
        _sh("bridge", "-n", nodes[i], "fdb", "append", MACS[j], "dev", "vxlan.calico", "dst", r["ip"], "self",
            "permanent")
    return {"pods": [pods[1], pods[2]], "nodes": [nodes[1], nodes[2]], "dst": NODES[2]["pod"]}


def _vxlan_tx_bytes(node_ns: str) -> int:
    out = json.loads(_sh("ip", "-n", node_ns, "-j", "-s", "link", "show", "dev", "vxlan.calico").stdout)
    return int(out[0]["stats64"]["tx"]["bytes"])


def _tx_checksum(node_ns: str) -> str:
    out = _in(node_ns, "ethtool", "-k", "vxlan.calico", check=False).stdout
    m = re.search(r"tx-checksum-ip-generic: (\w+)", out)
    return m.group(1) if m else "unknown"


def _iperf(side: dict, udp: bool, seconds: float) -> dict:
    src_node = side["nodes"][0]
    before = _vxlan_tx_bytes(src_node)
    args = ["iperf3", "-c", side["dst"], "-t", str(seconds), "-J", "--connect-timeout", "3000"]
    if udp:
        args += ["-u", "-b", "0", "-l", "1400"]
    p = _in(side["pods"][0], *args, check=False, timeout=seconds + 30)
    crossed = _vxlan_tx_bytes(src_node) - before
    try:
        end = json.loads(p.stdout)["end"]
    except (ValueError, KeyError):
        return {"bps": 0.0, "bytes": 0, "ok": False, "error": (p.stdout + p.stderr).strip()[-300:]}
    if udp:
        s = end.get("sum_received") or end["sum"]
        lost = end["sum"].get("lost_percent", 0.0)
        packets = end["sum"].get("packets", 0)
        delivered = s["bytes"] * (1 - lost / 100.0) if "sum_received" not in end else s["bytes"]
        bps = delivered * 8 / s["seconds"] if s.get("seconds") else 0.0
        ok = delivered > 0 and crossed >= delivered  # loss at an unlimited rate is the receiver's limit, not a fault
        return {"bps": bps, "bytes": int(delivered), "lost_percent": round(lost, 2), "packets": packets,
                "vxlan_tx_bytes": crossed, "ok": ok}
    s = end["sum_received"]
    ok = s["bytes"] > 0 and crossed >= s["bytes"]
    return {"bps": s["bits_per_second"], "bytes": s["bytes"], "retransmits": end["sum_sent"].get("retransmits"),
            "vxlan_tx_bytes": crossed, "ok": ok}


def _ping(side: dict, count: int) -> dict:
    p = _in(side["pods"][0], "ping", "-n", "-c", str(count), "-i", "0.01", "-W", "1",
            side["dst"], check=False, timeout=count * 0.05 + 30)
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", p.stdout)]
    return {"rtts": rtts, "sent": count, "received": len(rtts), "ok": len(rtts) == count}


def _rr(side: dict, seconds: float, port: int = 7777) -> dict:
    client = _in(side["pods"][0], sys.executable, "-c", RR_CLIENT, side["dst"], str(port), str(seconds),
                 check=False, timeout=seconds + 30)
    try:
        rate = float(client.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"per_s": 0.0, "ok": False, "error": client.stderr.strip()[-300:]}
    return {"per_s": rate, "ok": rate > 0}


class Servers:
    """iperf3 and the RR server in pod 2 of a side, stopped by PID."""

    def __init__(self, c: Cleanup, side: dict):
        pod, dst = side["pods"][1], side["dst"]
        self.procs = []
        for args in (["iperf3", "-s", "-B", dst], [sys.executable, "-c", RR_SERVER, dst, "7777"]):
            proc = subprocess.Popen(["ip", "netns", "exec", pod, *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
            c.push(f"server {proc.pid}", lambda p=proc: (p.kill(), p.wait()))
            self.procs.append(proc)
        self.procs[1].stdout.readline()  # the RR server listens
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # iperf3 listens when its port answers
            if _in(pod, "ss", "-Hltn", "sport = :5201", check=False).stdout.strip():
                break
            time.sleep(0.1)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def run(tag: str, quick: bool) -> dict:
    from podnet.lab.lab import Lab, LabSpec

    if not shutil.which("iperf3"):
        raise RuntimeError("iperf3 is not installed (apt-get install iperf3; scripts/install-deps.sh has it)")
    reps, seconds, pings, rr_seconds = (3, 2, 200, 2) if quick else (5, 4, 500, 3)
    runs = {"podnet": [], "hand": []}
    with Cleanup() as c:
        lab = Lab(f"pnb-{tag}-tput", progress=lambda m: None)
        c.push(f"lab {lab.name}", lab.down)
        lab.up(LabSpec(nodes=2, pods_per_node=1))
        pods = sorted(lab.status()["pods"], key=lambda p: p["node"])
        sides = {"podnet": {"pods": [pods[0]["netns"], pods[1]["netns"]],
                            "nodes": [lab.node_netns("node-1"), lab.node_netns("node-2")], "dst": pods[1]["ip"]},
                 "hand": wire_by_hand(c, tag)}
        offloads = {k: [_tx_checksum(n) for n in s["nodes"]] for k, s in sides.items()}
        progress(f"{NAME}: both sides up; TX checksum offload on vxlan.calico: podnet {offloads['podnet']}, "
                 f"hand-wired {offloads['hand']}")
        for s in sides.values():
            Servers(c, s)
            _ping(s, 3)  # warm up: ARP for 169.254.1.1, the first segments
        measure = {"tcp": lambda s: _iperf(s, False, seconds), "udp": lambda s: _iperf(s, True, seconds),
                   "ping": lambda s: _ping(s, pings), "rr": lambda s: _rr(s, rr_seconds)}
        for rep in range(reps):
            # Each figure of the two sides back to back, the order alternating: a pair sees the same load.
            order = ["podnet", "hand"] if rep % 2 == 0 else ["hand", "podnet"]
            r = {k: {} for k in order}
            for what, fn in measure.items():
                for k in order:
                    r[k][what] = fn(sides[k])
            for k in order:
                runs[k].append(r[k])
                progress(f"{NAME}: rep {rep + 1}/{reps} {k}: TCP {r[k]['tcp']['bps'] / 1e9:.2f} Gbit/s, "
                         f"UDP {r[k]['udp']['bps'] / 1e9:.2f} Gbit/s, ping p50 "
                         f"{percentile(r[k]['ping']['rtts'], 50):.3f} ms, RR {r[k]['rr']['per_s']:.0f}/s")
    summary = {}
    for k, rs in runs.items():
        rtts = [x for r in rs for x in r["ping"]["rtts"]]
        summary[k] = {"tcp_gbps": round(_median([r["tcp"]["bps"] for r in rs]) / 1e9, 3),
                      "tcp_gbps_all": [round(r["tcp"]["bps"] / 1e9, 3) for r in rs],
                      "udp_gbps": round(_median([r["udp"]["bps"] for r in rs]) / 1e9, 3),
                      "udp_gbps_all": [round(r["udp"]["bps"] / 1e9, 3) for r in rs],
                      "udp_lost_percent": [r["udp"].get("lost_percent") for r in rs],
                      "ping_p50_ms": round(percentile(rtts, 50), 4), "ping_p99_ms": round(percentile(rtts, 99), 4),
                      "rr_per_s": round(_median([r["rr"]["per_s"] for r in rs]), 1),
                      "tx_checksum_offload": offloads[k]}
    # The verdict's ratios are medians of each back-to-back pair's ratio: load that drifts between
    # repetitions then cancels out (the medians of each side's figures are reported beside them).
    pairs = {what: [ratio(p[what]["bps"], h[what]["bps"]) for p, h in zip(runs["podnet"], runs["hand"])]
             for what in ("tcp", "udp")}
    ratios = {"tcp": round(_median([x for x in pairs["tcp"] if x is not None]), 3) or None,
              "udp": round(_median([x for x in pairs["udp"] if x is not None]), 3) or None,
              "tcp_pairs": pairs["tcp"], "udp_pairs": pairs["udp"],
              "tcp_of_medians": ratio(summary["podnet"]["tcp_gbps"], summary["hand"]["tcp_gbps"]),
              "udp_of_medians": ratio(summary["podnet"]["udp_gbps"], summary["hand"]["udp_gbps"]),
              "ping_p50": ratio(summary["podnet"]["ping_p50_ms"], summary["hand"]["ping_p50_ms"]),
              "ping_p99": ratio(summary["podnet"]["ping_p99_ms"], summary["hand"]["ping_p99_ms"]),
              "rr": ratio(summary["podnet"]["rr_per_s"], summary["hand"]["rr_per_s"])}
    failed_checks = [f"{k} rep {i + 1} {what}: {r[what].get('error') or r[what]}"
                     for k, rs in runs.items() for i, r in enumerate(rs) for what in ("tcp", "udp", "ping", "rr")
                     if not r[what]["ok"]]
    checks = {"traffic_flowed_and_crossed_vxlan": not failed_checks,
              "tcp": (ratios["tcp"] or 0) >= TARGETS["tcp_ratio"],
              "udp": (ratios["udp"] or 0) >= TARGETS["udp_ratio"]}
    for k, rs in runs.items():  # the raw per-run records, without the ping samples
        for r in rs:
            r["ping"] = {key: v for key, v in r["ping"].items() if key != "rtts"}
    return {"params": {"repetitions": reps, "iperf_seconds": seconds, "pings": pings, "rr_seconds": rr_seconds,
                       "vxlan_mtu": POD_MTU, "underlay_mtu": MTU, "udp_datagram": 1400},
            "targets": TARGETS, "summary": summary, "ratios": ratios, "failed_checks": failed_checks[:20],
            "checks": checks, "pass": all(checks.values()), "runs": runs}
