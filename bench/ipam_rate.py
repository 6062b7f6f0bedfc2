"""IPAM rate: allocations per second, and the latency of each allocate and release.

One cycle is what a pod's ADD and DEL ask of IPAM: `Ipam.auto_assign(node,
handle)` for one address, then `Ipam.release_handle(handle)`. Each client is a
process of its own (as each node's agent is) with its own datastore
connection; it allocates for its own node, so concurrent clients work in
different blocks (within one node the agent serialises IPAM under a lock).
Clients start together on a barrier after their warm-up cycles (the first one
claims the node's block); the rate is all clients' cycles divided by the time
from the first client's start to the last one's end.

Stores: the embedded SQLite store in a fresh temp dir on the root filesystem,
durable (fsync of every commit, the default) and `?durable=false`; and a
3-member etcd cluster (`podnet.lab.etcd.EtcdCluster`) listening on loopback
inside a namespace the benchmark creates (`pnb-<tag>-ipam`), with its data on
tmpfs as a lab's etcd has. No peer: the targets are absolute bounds.

A warm cycle is two write transactions (IPAM starts each from the records it
last wrote, so it reads nothing first), so the durable SQLite store makes two
fdatasyncs of its WAL per cycle, each while holding the store's write lock. The
cost of an fdatasync in the same directory is measured first and reported
(`fdatasync_ms`), both for a write in place (SQLite's WAL once it wraps around)
and for an append (a WAL still growing, whose new size must be journalled too):
two of those per cycle are the floor under the durable store's latency, and,
since they serialise, under its rate with several clients.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench.common import ROOT, Cleanup, progress, summary_ms

NAME = "ipam_rate"
TARGETS = {"embedded_per_s": 1000.0, "etcd_per_s": 200.0, "p99_ms": 50.0}
POOL = "10.200.0.0/16"
WARMUP = 10


def _worker() -> None:
    """One client (run in a process of its own): argv[1] is a JSON job; prints 'ready', waits for a
    line on stdin, runs the cycles, prints one JSON line of results."""
    job = json.loads(sys.argv[1])
    from podnet.datastore import open_datastore
    from podnet.ipam import Ipam

    store = open_datastore(job["url"])
    ipam = Ipam(store)
    node, client = job["node"], job["client"]
    from podnet.datastore.resources import Resources
    from podnet.model import Node

    Resources(store).put_node(Node(node))  # IPAM assigns only to a registered node (not timed)
    attrs = {"namespace": "bench", "node": node}
    try:
        for i in range(job["warmup"]):
            h = f"bench-warm-{client}-{i}"
            ipam.auto_assign(node, h, dict(attrs, pod=h))
            ipam.release_handle(h)
        print("ready", flush=True)
        sys.stdin.readline()
        alloc, release, errors = [], [], []
        start = time.perf_counter()  # CLOCK_MONOTONIC: comparable between the client processes
        for i in range(job["cycles"]):
            h = f"bench-{client}-{i}"
            t0 = time.perf_counter()
            try:
                ipam.auto_assign(node, h, dict(attrs, pod=h))
                t1 = time.perf_counter()
                ipam.release_handle(h)
                t2 = time.perf_counter()
            except Exception as e:  # noqa: BLE001  (counted, reported)
                errors.append(f"{type(e).__name__}: {e}")
                continue
            alloc.append(t1 - t0)
            release.append(t2 - t1)
        end = time.perf_counter()
        left = sorted(h for h in ipam.handles() if h.startswith(f"bench-{client}-") or
                      h.startswith(f"bench-warm-{client}-"))
        print(json.dumps({"alloc": alloc, "release": release, "start": start, "end": end, "errors": errors[:5],
                          "error_count": len(errors), "handles_left": left}), flush=True)
    finally:
        store.close()


def _clients(c: Cleanup, url: str, netns: str | None, nodes: list[str], cycles: int) -> dict:
    """Run one client process per node at once; returns the merged results."""
    code = f"import sys; sys.path.insert(0, {ROOT!r}); from bench.ipam_rate import _worker; _worker()"
    procs = []
    for k, node in enumerate(nodes):
        job = json.dumps({"url": url, "node": node, "client": node, "warmup": WARMUP, "cycles": cycles})
        cmd = [sys.executable, "-c", code, job]
        if netns:  # only the network namespace, as the lab's agents enter theirs
            cmd = ["nsenter", f"--net=/run/netns/{netns}", *cmd]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT)
        c.push(f"ipam client {node} (pid {p.pid})", lambda p=p: _end(p))
        procs.append(p)
    for p in procs:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"an IPAM client did not start: {line!r} {p.stderr.read()[-800:]}")
    for p in procs:  # the barrier: every client is warm and waiting
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"an IPAM client exited {p.returncode}: {err[-800:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    alloc = [x for o in outs for x in o["alloc"]]
    release = [x for o in outs for x in o["release"]]
    cycle = [a + r for o in outs for a, r in zip(o["alloc"], o["release"])]
    wall = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    done = len(cycle)
    return {
        "clients": len(nodes),
        "cycles": done,
        "seconds": round(wall, 3),
        "per_s": round(done / wall, 1) if wall > 0 else None,
        "per_client_per_s": [round(len(o["alloc"]) / (o["end"] - o["start"]), 1) for o in outs],
        "allocate_ms": summary_ms(alloc),
        "release_ms": summary_ms(release),
        "cycle_ms": summary_ms(cycle),
        "errors": sum(o["error_count"] for o in outs),
        "error_examples": [e for o in outs for e in o["errors"]][:3],
        "handles_left": sum(len(o["handles_left"]) for o in outs),
    }


def _end(p: subprocess.Popen) -> None:
    """Stop a client this benchmark started (by its PID, via its Popen) if it is still running."""
    if p.poll() is None:
        p.kill()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    for f in (p.stdin, p.stdout, p.stderr):
        try:
            if f:
                f.close()
        except OSError:
            pass


def _fdatasync_cost(directory: str, n: int = 300) -> dict:
    """Median and p90 (ms) of writing 4 pages and fdatasync-ing them, in place and appending."""
    from bench.common import percentile

    path = os.path.join(directory, "fsync-probe")
    page = b"\x5a" * 16384
    out = {}
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, page * 64)
        os.fsync(fd)
        for kind in ("in_place", "append"):
            if kind == "append":
                os.ftruncate(fd, 0)
                os.fsync(fd)
            times = []
            for i in range(n):
                t0 = time.perf_counter()
                if kind == "in_place":
                    os.pwrite(fd, page, (i % 64) * len(page))
                else:
                    os.write(fd, page)
                os.fdatasync(fd)
                times.append((time.perf_counter() - t0) * 1000)
            out[kind] = {"p50": round(percentile(times, 50), 3), "p90": round(percentile(times, 90), 3)}
    finally:
        os.close(fd)
        os.unlink(path)
    return out


def _prepare(url: str, netns: str | None) -> None:
    from podnet.datastore import open_datastore
    from podnet.datastore.resources import Resources
    from podnet.netns import entered
    from podnet.model import IPPool

    import contextlib

    with entered(netns) if netns else contextlib.nullcontext():
        store = open_datastore(url)
        try:
            Resources(store).apply_pool(IPPool("bench-ipam-pool", POOL))
        finally:
            store.close()


def _store_run(c: Cleanup, label: str, url: str, netns: str | None, single: int, concurrent: int,
               n_conc: int, round_no: int) -> dict:
    out = {}
    for key, nodes, cycles in (("single", [f"ipam-{round_no}-a"], single),
                               ("concurrent", [f"ipam-{round_no}-c{k}" for k in range(n_conc)], concurrent)):
        r = _clients(c, url, netns, nodes, cycles)
        progress(f"ipam_rate: {label}, {r['clients']} client(s): {r['per_s']}/s; allocate p50 "
                 f"{r['allocate_ms'].get('p50')} p99 {r['allocate_ms'].get('p99')} ms, release p50 "
                 f"{r['release_ms'].get('p50')} p99 {r['release_ms'].get('p99')} ms; errors {r['errors']}")
        out[key] = r
    return out


def run(tag: str, quick: bool) -> dict:
    from podnet.lab.etcd import EtcdCluster, data_root

    single, concurrent, n_conc = (150, 60, 4) if quick else (400, 150, 4)
    stores = {}
    with Cleanup() as c:
        tmp = tempfile.mkdtemp(prefix=f"pnb-{tag}-ipam-")
        c.push("sqlite temp dir", lambda: shutil.rmtree(tmp, ignore_errors=True))
        fs = _fstype(tmp)
        fsync = _fdatasync_cost(tmp)
        progress(f"ipam_rate: fdatasync of 4 pages in {tmp} ({fs}): in place p50 {fsync['in_place']['p50']} ms, "
                 f"appending p50 {fsync['append']['p50']} ms (a durable cycle makes two)")
        for key, label, query in (("sqlite_durable", "embedded (SQLite, durable)", ""),
                                  ("sqlite_nondurable", "embedded (SQLite, ?durable=false)", "?durable=false")):
            url = f"sqlite://{os.path.join(tmp, key + '.db')}{query}"
            progress(f"ipam_rate: {label} in {tmp} ({fs}): 1 client x {single} cycles, "
                     f"{n_conc} clients x {concurrent}")
            _prepare(url, None)
            stores[key] = dict(label=label, url_kind=query or "durable (default)", filesystem=fs,
                               **_store_run(c, label, url, None, single, concurrent, n_conc, len(stores)))
            if not query:
                stores[key]["fdatasync_ms"] = fsync

        ns = c.netns(f"pnb-{tag}-ipam")
        _lo_up(ns)
        base = os.path.join(data_root(), f"pnb-{tag}-ipam-etcd")
        cluster = EtcdCluster(base, 3, host="127.0.0.1", netns=ns, token=f"pnb-{tag}-ipam")
        c.push("etcd data", cluster.remove_data)
        c.push("etcd members (by PID)", cluster.stop)
        progress(f"ipam_rate: 3-member etcd on 127.0.0.1 in {ns} (data in {base})")
        cluster.start()
        _prepare(cluster.url, ns)
        label = "3-member etcd (loopback)"
        progress(f"ipam_rate: {label}: 1 client x {single} cycles, {n_conc} clients x {concurrent}")
        stores["etcd"] = dict(label=label, url_kind=cluster.url, filesystem=_fstype(base),
                              **_store_run(c, label, cluster.url, ns, single, concurrent, n_conc, len(stores)))

    checks = {}
    for key, s in stores.items():
        target = TARGETS["etcd_per_s"] if key == "etcd" else TARGETS["embedded_per_s"]
        for mode in ("single", "concurrent"):
            r = s[mode]
            r["target_per_s"] = target
            r["pass_rate"] = r["per_s"] is not None and r["per_s"] >= target
            r["pass_p99"] = (r["allocate_ms"].get("p99", 1e9) < TARGETS["p99_ms"]
                             and r["release_ms"].get("p99", 1e9) < TARGETS["p99_ms"])
            r["pass"] = r["pass_rate"] and r["pass_p99"] and r["errors"] == 0
            checks[f"{key}/{mode}"] = r["pass"]
    return {
        "params": {"single_cycles": single, "concurrent_clients": n_conc, "concurrent_cycles_per_client": concurrent,
                   "warmup_per_client": WARMUP, "pool": POOL,
                   "cycle": "auto_assign (one address) then release_handle",
                   "clients": "one process per client, each allocating for its own node",
                   "peer": "none"},
        "targets": TARGETS,
        "stores": stores,
        "pass": all(checks.values()),
        "checks": checks,
    }


def _lo_up(ns: str) -> None:
    from podnet.dataplane.topology import ipr_in

    with ipr_in(ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def _fstype(path: str) -> str:
    """The filesystem type under path (fsync cost depends on it)."""
    best, kind = "", "unknown"
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1] if len(parts) >= 3 else ""
                p = os.path.abspath(path)
                if mnt and (p == mnt or p.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind
