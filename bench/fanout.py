"""Fan-out: one node joins -> seen by 1000 agents watching a 3-member etcd.

A 3-member etcd cluster on loopback (podnet.lab.etcd, data on tmpfs) and 1000 simulated agents spread
over a few worker processes. Each agent is what a real agent's datastore view is on the wire: its own
`EtcdDatastore` client and one watch on the whole /podnet/ prefix through podnet's etcd watch code (one
HTTP watch stream each, spread over the members as agents configured with different first endpoints
would be), decoding every Node record it receives. No kernel is programmed: this measures the
datastore's fan-out, not the dataplane.

Per join the benchmark writes one Node record and notes the time; each agent notes when it decoded
that record (CLOCK_MONOTONIC is one clock for every process on the machine). Reported: the time until
the last of the 1000 agents saw it (p50/p99 over the joins, target p99 <= 1 s), the per-agent latency,
and the etcd members' CPU time and resident memory (from /proc of their PIDs). The agents share this
machine's cores with etcd, so their own scheduling is part of the figure; on real nodes each agent has
its own CPU. Checks in the verdict: every agent connected and saw the warm-up record, and no agent
missed a join. Everything started (workers, etcd members) is stopped by PID.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import subprocess
import sys
import threading
import time

from bench.common import Cleanup, percentile, process_cpu_seconds, progress, summary_ms

NAME = "fanout"
TARGET_P99_MS = 1000.0
WAIT = 10.0  # seconds for one record to reach every agent before it counts as missed
JOIN_PREFIX = "fanout-"


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# The worker: `python3 -c 'from bench.fanout import worker; worker()' URLS N START_REVISION` --------------


def worker() -> None:
    """N agents; prints "ready", then "all NAME" when every agent saw node NAME; on EOF of stdin,
    prints {name: [seconds of each agent]} as JSON and exits."""
    from podnet.datastore import keys
    from podnet.datastore.etcd import EtcdDatastore
    from podnet.datastore.resources import decode_node

    endpoints, n, start_rev, offset = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    seen: dict[str, list[float]] = {}
    lock = threading.Lock()
    out = threading.Lock()
    errors = []

    def say(line: str) -> None:
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def agent(i: int) -> None:
        k = (i + offset) % len(endpoints)
        store = EtcdDatastore(["http://" + e for e in endpoints[k:] + endpoints[:k]])
        watch = store.watch(keys.ROOT, start_rev)
        mine = set()
        while True:
            try:
                events = watch.next_events(timeout=60)
            except Exception as e:  # noqa: BLE001 - counted: the agent missed what came after
                errors.append(str(e))
                return
            for ev in events:
                if ev.kind != "put" or not ev.key.startswith(keys.NODES):
                    continue
                node = decode_node(ev.value)
                now = time.monotonic()
                if node.name in mine:
                    continue
                mine.add(node.name)
                with lock:
                    times = seen.setdefault(node.name, [])
                    times.append(now)
                    done = len(times) == n
                if done:
                    say(f"all {node.name}")

    for i in range(n):
        threading.Thread(target=agent, args=(i,), daemon=True).start()
    say("ready")
    sys.stdin.read()
    with lock:
        say(json.dumps({"seen": seen, "errors": errors[:5], "error_count": len(errors)}))
    os._exit(0)


# The benchmark --------------------------------------------------------------------------------------


class Workers:
    def __init__(self, c: Cleanup, endpoints: str, agents: int, processes: int, start_rev: int):
        self.procs = []
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        per = [agents // processes + (1 if i < agents % processes else 0) for i in range(processes)]
        offset = 0
        for n in per:
            p = subprocess.Popen([sys.executable, "-c", "from bench.fanout import worker; worker()", endpoints,
                                  str(n), str(start_rev), str(offset)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, env=env, bufsize=0)
            c.push(f"fan-out worker {p.pid}", lambda p=p: (p.kill(), p.wait()))
            self.procs.append(p)
            offset += n
        self.buf = {p.stdout.fileno(): b"" for p in self.procs}

    def lines(self, timeout: float):
        """(worker's fd, line) as they come, until timeout (raw reads: no buffer hides a line from select)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select(list(self.buf), [], [], max(0.0, deadline - time.monotonic()))
            for fd in ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise RuntimeError("a fan-out worker ended early")
                self.buf[fd] += chunk
                *done, self.buf[fd] = self.buf[fd].split(b"\n")
                for line in done:
                    yield fd, line.decode()

    def wait_for(self, line: str, timeout: float) -> bool:
        pending = set(self.buf)
        for f, got in self.lines(timeout):
            if got == line:
                pending.discard(f)
                if not pending:
                    return True
        return False

    def finish(self) -> list[dict]:
        results = []
        for p in self.procs:
            p.stdin.close()
        for p in self.procs:
            fd, rest = p.stdout.fileno(), b""
            while chunk := os.read(fd, 1 << 20):
                rest += chunk
            for line in (self.buf[fd] + rest).split(b"\n"):
                if line.startswith(b"{"):
                    results.append(json.loads(line))
            p.wait(timeout=30)
        return results


def run(tag: str, quick: bool) -> dict:
    from podnet.datastore.etcd import EtcdDatastore
    from podnet.datastore.resources import Resources
    from podnet.lab.etcd import EtcdCluster, data_root
    from podnet.model import Node

    if not shutil.which("etcd"):
        raise RuntimeError("etcd is not installed (scripts/install-deps.sh installs etcd-server)")
    agents, processes, joins = (1000, 4, 10) if quick else (1000, 4, 30)
    base = os.path.join(data_root(), f"pnb-{tag}-fanout")
    seen_all, seen_each, misses = [], [], 0
    with Cleanup() as c:
        cluster = EtcdCluster(base, 3, "127.0.0.1", ports=_free_ports(6), token=f"pnb-{tag}")
        c.push("etcd data", cluster.remove_data)
        c.push("etcd members", cluster.stop)
        cluster.start()
        endpoints = ",".join(m.address for m in cluster.members)
        store = EtcdDatastore(["http://" + m.address for m in cluster.members])
        c.push("datastore client", store.close)
        res = Resources(store)
        _, rev = store.list("/podnet/resources/v3/nodes/")
        t = time.monotonic()
        workers = Workers(c, endpoints, agents, processes, rev + 1)
        ready = workers.wait_for("ready", 120)
        warm = False
        if ready:
            res.put_node(Node(f"{JOIN_PREFIX}warmup"))
            warm = workers.wait_for(f"all {JOIN_PREFIX}warmup", 120)
        progress(f"{NAME}: {agents} agents in {processes} processes watching "
                 f"{'' if warm else 'NOT '}all connected in {time.monotonic() - t:.1f} s")
        written = {}
        pids = [m.pid for m in cluster.members]
        cpu0 = [process_cpu_seconds(p) or 0.0 for p in pids]
        agents_cpu0 = sum(process_cpu_seconds(p.pid) or 0.0 for p in workers.procs)
        t_joins = time.monotonic()
        if warm:
            for j in range(joins):
                name = f"{JOIN_PREFIX}node-{j}"
                node = Node(name, address=f"172.30.{j // 250}.{j % 250 + 1}/16", interface="eth0",
                            tunnel_address=f"10.250.{j // 250}.{j % 250 + 1}")
                written[name] = time.monotonic()
                res.put_node(node)
                if not workers.wait_for(f"all {name}", WAIT):
                    misses += 1
                time.sleep(0.2)
        elapsed = time.monotonic() - t_joins
        cpu = sum((process_cpu_seconds(p) or 0.0) - c0 for p, c0 in zip(pids, cpu0))
        rss = [_rss_mib(p) for p in pids]
        agents_cpu = sum(process_cpu_seconds(p.pid) or 0.0 for p in workers.procs) - agents_cpu0
        results = workers.finish()
    errors = sum(r["error_count"] for r in results)
    for name, t0 in written.items():
        times = [x for r in results for x in r["seen"].get(name, [])]
        if len(times) == agents:
            seen_all.append(max(times) - t0)
        seen_each += [x - t0 for x in times]
    all_ms = summary_ms(seen_all)
    checks = {"all_agents_connected": bool(warm), "no_join_missed": misses == 0 and len(seen_all) == joins,
              "no_watch_errors": errors == 0,
              "p99_within_target": bool(seen_all) and percentile([x * 1e3 for x in seen_all], 99) <= TARGET_P99_MS}
    return {"params": {"agents": agents, "processes": processes, "joins": joins, "etcd_members": 3},
            "targets": {"p99_ms": TARGET_P99_MS},
            "seen_all_ms": all_ms, "seen_each_ms": summary_ms(seen_each), "misses": misses,
            "watch_errors": errors,
            "etcd": {"cpu_seconds_total": round(cpu, 2),
                     "cpu_percent_of_one_core": round(100 * cpu / elapsed, 1) if elapsed else None,
                     "rss_mib": [round(x, 1) for x in rss], "rss_mib_total": round(sum(rss), 1)},
            "agents_cpu_seconds": round(agents_cpu, 2),  # the simulated agents' own decoding, all processes
            "joins_seconds": round(elapsed, 1),
            "checks": checks, "pass": all(checks.values())}
