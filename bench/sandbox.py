"""RunPodSandbox through containerd's CRI: podnet against ptp + host-local, same containerd, same run.

This wires tests/runtimes/bench_sandbox.py into the bench: its runtime setup
(tests/runtimes/containerd.py: containerd 1.6 started inside node-1's network
namespace of a 2-node lab, a pause image built from busybox-static, CNI bin and
conf dirs of its own) and its measurement (`run_pod_sandbox_latency`: the two
networks alternate in rounds by rewriting the conflist, which containerd
reloads; only the RunPodSandbox call is timed; each sandbox is stopped and
removed before the next). The lab is named `pnb-<tag>-sbx` so the sweep finds
it. Percentiles are bench_sandbox's (nearest rank). Target: podnet p50 <= 1.1x
ptp's p50.
"""

from __future__ import annotations

import time

from bench.common import Cleanup, busy_percent, cpu_snapshot, progress

NAME = "sandbox"


def run(tag: str, quick: bool) -> dict:
    from podnet.lab.lab import Lab, LabSpec
    from tests.runtimes.bench_sandbox import TARGET_RATIO, run_pod_sandbox_latency
    from tests.runtimes.containerd import Containerd

    n, rounds = (20, 4) if quick else (60, 6)
    lab = Lab(f"pnb-{tag}-sbx", progress=lambda m: None)
    forced: list[str] = []
    with Cleanup() as c:
        c.push(f"lab {lab.name}", lab.down)
        progress(f"sandbox: 2-node lab {lab.name}; containerd inside node-1's network namespace")
        lab.up(LabSpec(nodes=2, pods_per_node=0))
        runtime = Containerd(lab.node_netns("node-1"), log_level="warn")
        c.push("containerd (by PID) and everything it made", lambda: forced.extend(runtime.stop()))
        t = time.monotonic()
        runtime.start()
        progress(f"sandbox: containerd ready in {time.monotonic() - t:.1f} s; {n} RunPodSandbox calls per "
                 f"network in {rounds} rounds (podnet, ptp, podnet, ...)")
        m0 = cpu_snapshot()
        result = run_pod_sandbox_latency(runtime, n, rounds)
        busy = busy_percent(m0, cpu_snapshot())
        progress(f"sandbox: podnet p50 {result['podnet']['p50_ms']} ms p99 {result['podnet']['p99_ms']} ms; "
                 f"ptp p50 {result['ptp']['p50_ms']} ms p99 {result['ptp']['p99_ms']} ms; "
                 f"ratio p50 {result['ratio_p50']}, p99 {result['ratio_p99']}")
    return {
        "params": {"sandboxes_per_network": n, "rounds": rounds, "runtime": result["runtime"],
                   "peer": "ptp + host-local (conflist with ipMasq false, mtu 1500)",
                   "percentiles": "nearest rank (tests/runtimes/bench_sandbox.py)",
                   "where": "containerd in node-1's network namespace of a 2-node lab"},
        "targets": {"p50_ratio": TARGET_RATIO},
        "podnet": result["podnet"],
        "ptp": result["ptp"],
        "ratios": {"p50": result["ratio_p50"], "p99": result["ratio_p99"]},
        "machine_busy_percent_during_calls": busy,
        "checks": {"containerd_teardown_forced": forced},
        "pass": bool(result["meets_target"]),
    }
