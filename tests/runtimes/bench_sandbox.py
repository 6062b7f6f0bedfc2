"""RunPodSandbox latency through containerd's CRI: podnet against ptp + host-local, in the same run.

    python3 -m tests.runtimes.bench_sandbox [-n 60] [--json]

builds a two-node lab, starts containerd 1.6 inside node-1's network namespace (tests/runtimes/
containerd.py), and times RunPodSandbox as kubelet issues it, with podnet as the network and with the
reference plugins ptp + host-local (the closest peer to podnet's per-pod work: a veth pair, a /32-style
address, a host route). Same containerd, same sandbox image, same node; only the conflist in the CNI
conf dir changes (containerd reloads it; we wait until its status shows the new network). The modes
alternate in rounds (podnet, ptp, podnet, ptp, ...) so drift in the machine's load hits both alike.
Only the RunPodSandbox call is timed; each sandbox is stopped and removed before the next one starts.

`run_pod_sandbox_latency(runtime, n)` is the reusable part: `runtime` is a started Containerd (or
anything with .client, .dir, .conflist, .use_network(conflist), .sandbox_request(), .track(id),
.remove_sandbox(id)). The target is podnet p50 <= 1.1 x ptp p50.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid

from tests.runtimes.runtime_util import podnet_conflist, ptp_conflist

TARGET_RATIO = 1.1


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples_s: list[float]) -> dict:
    ms = [s * 1000.0 for s in samples_s]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p90_ms": round(percentile(ms, 90), 2),
            "p99_ms": round(percentile(ms, 99), 2), "mean_ms": round(statistics.fmean(ms), 2),
            "min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2)}


def _log_time(line: str) -> float | None:
    m = re.match(r'time="(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z"', line)
    if not m:
        return None
    whole = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    return whole.timestamp() + float(m.group(2) or 0)


def cni_setup_times(log_path: str) -> dict[str, float]:
    """Sandbox id -> seconds from containerd's "begin cni setup" to its "cni result" (debug log):
    the part of RunPodSandbox spent in the CNI plugins (loopback, then the network's)."""
    begin: dict[str, float] = {}
    took: dict[str, float] = {}
    try:
        f = open(log_path, errors="replace")
    except OSError:
        return took
    with f:
        for line in f:
            if "cni setup" not in line and "cni result" not in line:
                continue
            m = re.search(r"podsandboxid=([0-9a-f]{64})", line)
            t = _log_time(line)
            if not m or t is None:
                continue
            if 'msg="begin cni setup"' in line:
                begin[m.group(1)] = t
            elif 'msg="cni result' in line and m.group(1) in begin:
                took[m.group(1)] = t - begin[m.group(1)]
    return took


def run_pod_sandbox_latency(runtime, n: int = 60, rounds: int = 6, warmup: int = 3) -> dict:
    """Time n RunPodSandbox calls per network (podnet, ptp + host-local) on one running containerd.

    Returns {"podnet": {...}, "ptp": {...}, "ratio_p50", "ratio_p99", "target_ratio", "meets_target",
    "runtime", "n"}; latencies in milliseconds. Leaves the runtime on the network it had before.
    """
    if n < 1 or rounds < 1:
        raise ValueError("n and rounds must be positive")
    networks = {
        "podnet": podnet_conflist(),
        "ptp": ptp_conflist(os.path.join(runtime.dir, "host-local")),
    }
    samples: dict[str, list[float]] = {mode: [] for mode in networks}
    timed_ids: dict[str, list[str]] = {mode: [] for mode in networks}
    original = runtime.conflist
    per_round = [n // rounds + (1 if i < n % rounds else 0) for i in range(rounds)]
    version = runtime.client.version()
    try:
        for r, count in enumerate(per_round):
            for mode, conflist in networks.items():
                runtime.use_network(conflist)
                for _ in range(warmup if r == 0 else 1):  # untimed: warm caches after each switch
                    runtime.remove_sandbox(runtime.track(
                        runtime.client.RunPodSandbox(runtime.sandbox_request()).pod_sandbox_id))
                for _ in range(count):
                    request = runtime.sandbox_request(f"bench-{uuid.uuid4().hex[:8]}")
                    t0 = time.perf_counter()
                    sandbox_id = runtime.client.RunPodSandbox(request).pod_sandbox_id
                    samples[mode].append(time.perf_counter() - t0)
                    timed_ids[mode].append(sandbox_id)
                    runtime.track(sandbox_id)
                    runtime.remove_sandbox(sandbox_id)
    finally:
        if runtime.conflist is not original and runtime.client is not None:
            runtime.use_network(original)
    podnet, ptp = summarize(samples["podnet"]), summarize(samples["ptp"])
    ratio_p50 = podnet["p50_ms"] / ptp["p50_ms"]
    if getattr(runtime, "log_level", "") == "debug":  # containerd logs when its CNI setup starts and ends
        setup = cni_setup_times(runtime.log_path)
        for mode, stats in (("podnet", podnet), ("ptp", ptp)):
            found = [setup[i] for i in timed_ids[mode] if i in setup]
            if found:
                stats["cni_setup"] = summarize(found)
    return {
        "runtime": f"{version.runtime_name} {version.runtime_version}",
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Linux {platform.release()}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "n": n,
        "podnet": podnet,
        "ptp": ptp,
        "ratio_p50": round(ratio_p50, 3),
        "ratio_p99": round(podnet["p99_ms"] / ptp["p99_ms"], 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio_p50 <= TARGET_RATIO,
    }


def measure(n: int = 60, rounds: int = 6, progress=None, cni_breakdown: bool = False,
            datastore_dir: str | None = None) -> dict:
    """The whole benchmark: lab up, containerd on node-1, run_pod_sandbox_latency, everything removed.

    datastore_dir: where the lab's SQLite datastore lives (default: the lab's own dir, as `podnet lab
    up` makes it). podnet commits with fsync, so the filesystem under it shows in podnet's numbers.
    """
    from podnet.lab.lab import Lab, LabSpec
    from tests.runtimes.containerd import Containerd

    say = progress or (lambda msg: None)
    lab = Lab(f"pnbs-{uuid.uuid4().hex[:6]}")
    runtime = None
    store_dir = tempfile.mkdtemp(prefix="podnet-bench-store-", dir=datastore_dir) if datastore_dir else None
    try:
        url = f"sqlite://{os.path.join(store_dir, 'podnet.db')}" if store_dir else None
        say(f"lab {lab.name}: 2 nodes, datastore {url or 'in the lab dir'}")
        lab.up(LabSpec(nodes=2, pods_per_node=0), datastore_url=url)
        runtime = Containerd(lab.node_netns("node-1"), log_level="debug" if cni_breakdown else "warn")
        say("containerd: starting inside node-1's network namespace")
        runtime.start()
        say(f"timing {n} RunPodSandbox calls per network in {rounds} rounds")
        return run_pod_sandbox_latency(runtime, n, rounds)
    finally:
        if runtime is not None:
            runtime.stop()
        lab.down()
        if store_dir:
            shutil.rmtree(store_dir, ignore_errors=True)


def render(result: dict) -> str:
    lines = [f"RunPodSandbox latency, {result['runtime']} in a lab node, n={result['n']} per network",
             f"{'network':<22}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean ms':>9}"]
    for key, label in (("podnet", "podnet"), ("ptp", "ptp + host-local")):
        s = result[key]
        lines.append(f"{label:<22}{s['p50_ms']:>9.1f}{s['p90_ms']:>9.1f}{s['p99_ms']:>9.1f}{s['mean_ms']:>9.1f}")
        if "cni_setup" in s:
            c = s["cni_setup"]
            lines.append(f"{'  of which CNI setup':<22}{c['p50_ms']:>9.1f}{c['p90_ms']:>9.1f}{c['p99_ms']:>9.1f}"
                         f"{c['mean_ms']:>9.1f}")
    verdict = "meets" if result["meets_target"] else "MISSES"
    lines.append(f"ratio podnet/ptp: p50 {result['ratio_p50']:.3f}, p99 {result['ratio_p99']:.3f} "
                 f"({verdict} the target p50 ratio <= {result['target_ratio']})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.runtimes.bench_sandbox", description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=60, help="timed sandboxes per network (default 60)")
    parser.add_argument("--rounds", type=int, default=6, help="alternations between the networks (default 6)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--datastore-dir", metavar="DIR",
                        help="put the lab's SQLite datastore in a temp dir under DIR (e.g. /dev/shm)")
    parser.add_argument("--cni-breakdown", action="store_true",
                        help="also report the CNI part of each call (runs containerd with debug logs, which "
                             "adds the same overhead to both networks)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces, containers)", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so the finally blocks remove the lab and containerd.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    result = measure(args.n, args.rounds, progress=lambda m: print(f"==> {m}", file=sys.stderr),
                     cni_breakdown=args.cni_breakdown, datastore_dir=args.datastore_dir)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
