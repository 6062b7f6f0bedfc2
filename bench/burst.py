"""Burst: 100 pods added at once on one node, until every one of them answers a ping.

podnet: a lab with node-2 holding one pod (the pinger) and, for each
repetition, a freshly joined node whose agent has claimed nothing but its
tunnel address's block, so the burst claims new blocks as a new node's does.
All 100 CNI ADDs start at once: each plugin process is first a tiny `sh`
launcher, born in the node namespace with its CNI environment, waiting on one
pipe shared by all of them; one write releases them together and each execs
the plugin (same PID) with the network config on stdin, as a runtime starting
100 sandboxes runs them. As soon as a pod's ADD returns, a prober in the
pinger pod's namespace (on node-2: every echo crosses the VXLAN tunnel) pings
its address every 10 ms until it answers.

Peer: the same burst with Debian's ptp + host-local in a node namespace built
like a lab node; ptp pods are reached through the node's host routes, so its
prober pings from the node namespace.

Reported per repetition: the time from the release to the last ADD
returning, and to the last pod answering, and the CPU the plugin processes
and podnet's agents used; the repetitions alternate podnet/ptp in ABBA order.
Pod namespaces are created before the clock starts and deleted after the
pods' DELs, with a pause before the next burst so the kernel's namespace
teardown does not overlap it.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import tempfile
import threading
import time
import uuid

from bench.add_latency import PTP_DIR, Side
from bench.common import Cleanup, busy_percent, cpu_snapshot, process_cpu_seconds, progress, ratio, summary_ms
from podnet.dataplane import topology
from podnet.netns import entered, socket_in

NAME = "burst"
TARGETS = {"ratio": 1.5, "max_ms": 5000.0}
PROBE_INTERVAL = 0.01
TIMEOUT = 60.0


# ICMP prober -----------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def _echo(ident: int, seq: int) -> bytes:
    payload = b"podnet-bench-burst"
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return struct.pack("!BBHHH", 8, 0, _checksum(head + payload), ident, seq) + payload


class Prober(threading.Thread):
    """Pings every address handed to it (add()) every PROBE_INTERVAL from a raw ICMP socket in `netns`
    until it answers; answered[ip] = perf_counter() of the first echo reply."""

    def __init__(self, netns: str):
        super().__init__(name=f"prober {netns}", daemon=True)
        self.sock = socket_in(netns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        self.sock.setblocking(False)
        self.icmp_id = os.getpid() & 0xFFFF
        self.lock = threading.Lock()
        self.pending: dict[str, float] = {}  # ip -> when it was last probed
        self.answered: dict[str, float] = {}
        self.sent = 0
        self.stop = threading.Event()

    def reset(self) -> None:
        """Forget every address: a new burst may reuse the previous one's (host-local, a released block)."""
        with self.lock:
            self.pending.clear()
            self.answered.clear()

    def add(self, ip: str) -> None:
        with self.lock:
            if ip not in self.answered:
                self.pending[ip] = 0.0

    def run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            now = time.perf_counter()
            with self.lock:
                due = [ip for ip, last in self.pending.items() if now - last >= PROBE_INTERVAL]
                for ip in due:
                    self.pending[ip] = now
            for ip in due:
                seq = (seq + 1) & 0xFFFF
                try:
                    self.sock.sendto(_echo(self.icmp_id, seq), (ip, 0))
                    self.sent += 1
                except OSError:  # no route yet, neighbour failed, ...: try again later
                    pass
            if select.select([self.sock], [], [], 0.002)[0]:
                self._receive()

    def _receive(self) -> None:
        while True:
            try:
                pkt = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            now = time.perf_counter()
            ihl = (pkt[0] & 0x0F) * 4
            if len(pkt) < ihl + 8:
                continue
            kind, _, _, ident, _ = struct.unpack("!BBHHH", pkt[ihl:ihl + 8])
            if kind != 0 or ident != self.icmp_id:
                continue
            src = socket.inet_ntoa(pkt[12:16])
            with self.lock:
                if src in self.pending:
                    del self.pending[src]
                    self.answered[src] = now

    def close(self) -> None:
        self.stop.set()
        if self.is_alive():
            self.join(timeout=5)
        self.sock.close()


# One burst ----------------------------------------------------------------------------


LAUNCHER = 'read _ && exec "$0" < "$1"'  # wait for the start signal, then become the plugin (config on stdin)


def _burst(side: Side, pods: list[tuple[str, str, str]], prober: Prober, config_path: str,
           agent_pid: int | None = None, other_pids: tuple[int, ...] = ()) -> dict:
    """Start every ADD at once; hand each pod's address to the prober as its ADD returns.

    Each plugin process is first a tiny `sh` that waits on a pipe shared by all of them; one write of
    100 newlines releases them together, and each execs the plugin (same PID) with the config on stdin.
    So the clock does not include this process forking 100 times while the first plugins already run."""
    prober.reset()
    procs = []
    gate_r, gate_w = os.pipe()
    try:
        with entered(side.node_ns):  # the children are born in the node namespace
            for pod, cid, ns in pods:
                procs.append(subprocess.Popen(["/bin/sh", "-c", LAUNCHER, side.plugin, config_path], stdin=gate_r,
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                              env=side.env("ADD", cid, ns, pod)))
        os.close(gate_r)
        gate_r = -1
        _wait_blocked(procs)
        agent0 = process_cpu_seconds(agent_pid) if agent_pid else None
        others0 = [process_cpu_seconds(x) or 0.0 for x in other_pids]
        t0 = time.perf_counter()
        os.write(gate_w, b"\n" * len(procs))
    except BaseException:
        for p in procs:  # never released: they see EOF on the pipe and exit; end them by PID anyway
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()
        raise
    finally:
        if gate_r >= 0:
            os.close(gate_r)
        os.close(gate_w)
    started = {p.pid: t0 for p in procs}
    pidfds = {os.pidfd_open(p.pid): p for p in procs}
    done: dict[int, float] = {}
    ips: dict[str, str] = {}
    errors: list[str] = []
    add_t: list[float] = []
    plugin_cpu = 0.0
    deadline = t0 + TIMEOUT
    try:
        while pidfds and time.perf_counter() < deadline:
            ready = select.select(list(pidfds), [], [], max(0.0, deadline - time.perf_counter()))[0]
            now = time.perf_counter()
            for fd in ready:
                p = pidfds.pop(fd)
                os.close(fd)
                out = p.stdout.read()
                err = p.stderr.read()
                _, status, usage = os.wait4(p.pid, 0)  # reaps it, with the CPU it (and its children) used
                p.returncode = os.waitstatus_to_exitcode(status)
                plugin_cpu += usage.ru_utime + usage.ru_stime
                done[p.pid] = now
                add_t.append(now - started[p.pid])
                pod = pods[procs.index(p)][0]
                if p.returncode != 0:
                    errors.append(f"{pod}: exit {p.returncode}: {out[:200]!r} {err[:200]!r}")
                    continue
                try:
                    ip = json.loads(out)["ips"][0]["address"].split("/")[0]
                except (ValueError, KeyError, IndexError):
                    errors.append(f"{pod}: no address in {out[:200]!r}")
                    continue
                ips[pod] = ip
                prober.add(ip)
        all_added = (max(done.values()) - t0) if done else None
        while len(prober.answered) < len(ips) and time.perf_counter() < deadline:
            time.sleep(0.005)
    finally:
        for fd, p in pidfds.items():  # only after a timeout: end the plugins we started, by PID
            os.close(fd)
            if p.poll() is None:
                p.kill()
            p.wait()
        for p in procs:
            for f in (p.stdout, p.stderr):
                f.close()
    agent_cpu = (process_cpu_seconds(agent_pid) or 0.0) - agent0 if agent0 is not None else None
    others_cpu = [(process_cpu_seconds(x) or 0.0) - c0 for x, c0 in zip(other_pids, others0)]
    answered = {ip: prober.answered[ip] for ip in ips.values() if ip in prober.answered}
    if any(t < t0 for t in answered.values()):
        raise RuntimeError("an echo reply is older than the burst: the prober kept a previous burst's answer")
    all_reachable = (max(answered.values()) - t0) if len(answered) == len(pods) else None
    return {
        "all_added_ms": round(all_added * 1e3, 1) if all_added is not None and len(done) == len(pods) else None,
        "all_reachable_ms": round(all_reachable * 1e3, 1) if all_reachable is not None else None,
        "plugin_cpu_s": round(plugin_cpu, 3),
        "agent_cpu_s": round(agent_cpu, 3) if agent_cpu is not None else None,
        "other_agents_cpu_s": [round(x, 3) for x in others_cpu] if other_pids else None,
        "added": len(ips),
        "reachable": len(answered),
        "errors": errors[:5],
        "error_count": len(errors),
        "add_each_ms": summary_ms(add_t),
        "reachable_after_add_ms": summary_ms([answered[ips[p]] - done[pr.pid]
                                              for p, pr in zip([x[0] for x in pods], procs)
                                              if p in ips and ips[p] in answered and pr.pid in done]),
        "ips": sorted(ips.values()),
    }


def _wait_blocked(procs, timeout: float = 30.0) -> None:
    """Until every launcher waits on the start pipe (so the start is simultaneous)."""
    deadline = time.monotonic() + timeout
    for p in procs:
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{p.pid}/wchan") as f:
                    if "pipe_read" in f.read():
                        break
            except OSError:
                raise RuntimeError(f"a launcher (pid {p.pid}) exited before the start") from None
            time.sleep(0.002)
        else:
            raise RuntimeError("the launchers did not all reach the start line within 30 s")


def _delete_all(side: Side, pods: list[tuple[str, str, str]], parallel: int = 8) -> list[str]:
    """DEL every pod (untimed), a few at a time."""
    errors = []
    for i in range(0, len(pods), parallel):
        chunk = pods[i:i + parallel]
        with entered(side.node_ns):
            procs = [subprocess.Popen([side.plugin], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=side.env("DEL", cid, ns, pod))
                     for pod, cid, ns in chunk]
        for (pod, _, _), p in zip(chunk, procs):
            out, err = p.communicate(side.stdin, timeout=60)
            if p.returncode != 0:
                errors.append(f"{pod}: DEL exit {p.returncode}: {out[:200]!r} {err[:200]!r}")
    return errors


def _links(ns: str) -> list[str]:
    return [n for n in topology.links(ns) if n not in ("lo", "eth0", "vxlan.calico")]


def run(tag: str, quick: bool) -> dict:
    from podnet.lab.lab import Lab, LabSpec

    n_pods = 100
    order = ["podnet", "ptp"] if quick else ["podnet", "ptp", "ptp", "podnet", "podnet", "ptp"]
    if not os.access(os.path.join(PTP_DIR, "ptp"), os.X_OK):
        raise RuntimeError(f"{PTP_DIR}/ptp is missing: apt-get install -y containernetworking-plugins")
    lab = Lab(f"pnb-{tag}-burst", progress=lambda m: None)
    spec = LabSpec(nodes=2, pods_per_node=0)
    results: dict[str, list[dict]] = {"podnet": [], "ptp": []}
    checks: dict[str, list] = {"links_left_after_del": [], "del_errors": [], "podnet_ipam_handles_left": []}
    with Cleanup() as c:
        c.push(f"lab {lab.name}", lab.down)
        progress(f"burst: podnet lab {lab.name} (node-2 holds the pinger pod) and a ptp node namespace")
        lab.up(spec)
        pinger = lab.add_pod("node-2", "pinger")
        ptp_node = c.netns(f"pnb-{tag}-bptp-node")
        ptp_ul = c.netns(f"pnb-{tag}-bptp-ul")
        topology.add_veth_between(ptp_node, "eth0", ptp_ul, "veth-ptp")
        topology.configure_host(ptp_ul, "veth-ptp", "172.31.0.1/24")
        topology.configure_host(ptp_node, "eth0", "172.31.0.11/24", "172.31.0.1")

        probers = {"podnet": Prober(pinger["netns"]), "ptp": Prober(ptp_node)}
        for name, pr in probers.items():
            c.push(f"prober {name}", pr.close)
            pr.start()

        conf_dir = tempfile.mkdtemp(prefix=f"pnb-{tag}-burstconf-")
        c.push("config dir", lambda: shutil.rmtree(conf_dir, ignore_errors=True))
        for r, which in enumerate(order):
            pods = []
            for i in range(n_pods):
                ns = c.netns(f"pnb-{tag}-b{r}-{i}")
                pods.append((f"burst-{r}-{i}", uuid.uuid4().hex, ns))
            if which == "podnet":
                node = f"node-{3 + r}"
                lab.add_node(node, spec.node_address(3 + r), spec)  # waits until every node programmed it
                side = Side("podnet", lab.node_netns(node), os.path.join(lab.bin_dir, "podnet"), lab.bin_dir,
                            lab.network_config())
            else:
                data_dir = tempfile.mkdtemp(prefix=f"pnb-{tag}-hostlocal-")
                c.push("host-local data dir", lambda d=data_dir: shutil.rmtree(d, ignore_errors=True))
                side = Side("ptp", ptp_node, os.path.join(PTP_DIR, "ptp"), PTP_DIR, {
                    "cniVersion": "1.0.0", "name": "bench", "type": "ptp",
                    "ipam": {"type": "host-local", "subnet": "10.250.0.0/16", "dataDir": data_dir},
                })
            config_path = os.path.join(conf_dir, f"{r}-{which}.json")
            with open(config_path, "wb") as f:
                f.write(side.stdin)
            time.sleep(1.0)  # the namespaces' creation and the node's join settle
            m0 = cpu_snapshot()
            agent_pid, others = None, ()
            if which == "podnet":
                agent_pid = next(e["pid"] for e in lab.state["nodes"] if e["name"] == node)
                others = tuple(e["pid"] for e in lab.state["nodes"] if e["name"] != node)
            res = _burst(side, pods, probers[which], config_path, agent_pid, others)
            res["machine_busy_percent"] = busy_percent(m0, cpu_snapshot())
            res["repetition"] = r
            results[which].append(res)
            progress(f"burst {r + 1}/{len(order)} {which}: all {n_pods} ADDs done in {res['all_added_ms']} ms, "
                     f"all reachable in {res['all_reachable_ms']} ms ({res['reachable']}/{n_pods} answered, "
                     f"{res['error_count']} errors); CPU: plugins {res['plugin_cpu_s']} s"
                     + (f", its agent {res['agent_cpu_s']} s, the other nodes' agents {res['other_agents_cpu_s']} s"
                        if res["agent_cpu_s"] is not None else ""))
            errs = _delete_all(side, pods)
            checks["del_errors"] += errs[:3]
            checks["links_left_after_del"].append({which: _links(side.node_ns)})
            if which == "podnet":
                checks["podnet_ipam_handles_left"].append(
                    [h for h in _podnet_handles(lab) if not h.endswith(pinger["container_id"])])
                lab.remove_node(node)
            for _, _, ns in pods:
                topology.delete_netns(ns)
            time.sleep(1.0)  # let the kernel tear the namespaces down before the next burst

    def med(side, key):
        xs = [x[key] for x in results[side] if x[key] is not None]
        return round(statistics.median(xs), 1) if len(xs) == len(results[side]) and xs else None

    summary = {s: {"all_added_ms": med(s, "all_added_ms"), "all_reachable_ms": med(s, "all_reachable_ms"),
                   "samples_added_ms": [x["all_added_ms"] for x in results[s]],
                   "samples_reachable_ms": [x["all_reachable_ms"] for x in results[s]]} for s in results}
    ratios = {"all_reachable": ratio(summary["podnet"]["all_reachable_ms"], summary["ptp"]["all_reachable_ms"]),
              "all_added": ratio(summary["podnet"]["all_added_ms"], summary["ptp"]["all_added_ms"])}
    reach = summary["podnet"]["all_reachable_ms"]
    ok = (ratios["all_reachable"] is not None and ratios["all_reachable"] <= TARGETS["ratio"]
          and all(x["all_reachable_ms"] is not None and x["all_reachable_ms"] <= TARGETS["max_ms"]
                  for x in results["podnet"]))
    return {
        "params": {"pods": n_pods, "repetitions_per_side": len(order) // 2, "order": "ABBA (" + ", ".join(order) + ")",
                   "podnet_pinger": "a pod on node-2 (across the VXLAN tunnel)",
                   "ptp_pinger": "the ptp node namespace (host routes)",
                   "peer": "ptp + host-local (/usr/lib/cni)", "probe_interval_ms": PROBE_INTERVAL * 1e3,
                   "podnet_node": "a freshly joined node per repetition"},
        "targets": TARGETS,
        "summary": summary,
        "ratios": ratios,
        "podnet_max_reachable_ms": max((x["all_reachable_ms"] or 1e9) for x in results["podnet"]) if reach else None,
        "runs": {s: [{k: v for k, v in x.items() if k != "ips"} for x in xs] for s, xs in results.items()},
        "checks": checks,
        "pass": ok,
    }


def _podnet_handles(lab) -> list[str]:
    from bench.add_latency import _podnet_handles as handles

    return handles(lab)
