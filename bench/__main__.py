"""`python3 -m bench [--quick] [add|program|drift|join|ipam|join-etcd|burst|sandbox|address|throughput|fanout ...]`: run podnet's benchmarks.

Results go to bench/results/latest.json (benchmarks not run this time keep
their previous entry) and a markdown summary is printed and written into
docs/benchmarks.md between its generated-results markers.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import traceback

from bench import common
from bench.common import progress

BENCHMARKS = {
    "add": "bench.add_latency",
    "program": "bench.program_nodes",
    "drift": "bench.drift_repair",
    "join": "bench.node_join",
    "ipam": "bench.ipam_rate",
    "join-etcd": "bench.node_join_etcd",
    "burst": "bench.burst",
    "sandbox": "bench.sandbox",
    "address": "bench.address_change",
    "cli": "bench.cli_start",
    "throughput": "bench.throughput",
    "fanout": "bench.fanout",
    "policy": "bench.policy",
}
ALIASES = {"add_latency": "add", "program_nodes": "program", "drift_repair": "drift", "node_join": "join",
           "ipam_rate": "ipam", "node_join_etcd": "join-etcd", "burst": "burst", "sandbox": "sandbox",
           "address_change": "address", "cli_start": "cli", "throughput": "throughput", "fanout": "fanout",
           "policy": "policy"}
FULL_NAMES = {v: k for k, v in ALIASES.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m bench", description=__doc__.split("\n")[0])
    p.add_argument("which", nargs="*", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    p.add_argument("--quick", action="store_true",
                   help="fewer repetitions (about 4 minutes in all; the full run takes 7-9)")
    p.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results", "latest.json"),
                   help="where to write the JSON results")
    p.add_argument("--docs", default=os.path.join(common.ROOT, "docs", "benchmarks.md"),
                   help="markdown file to update ('' to skip)")
    args = p.parse_args(argv)

    chosen = []
    for w in args.which or list(BENCHMARKS):
        w = ALIASES.get(w, w)
        if w not in BENCHMARKS:
            p.error(f"unknown benchmark {w!r}; choose from {', '.join(BENCHMARKS)}")
        if w not in chosen:
            chosen.append(w)
    if os.geteuid() != 0:
        p.error("the benchmarks need root: they create network namespaces")

    from bench import report

    tag = common.new_tag()
    machine = common.machine()
    progress(f"run {tag}: {', '.join(FULL_NAMES[w] for w in chosen)}{' (quick)' if args.quick else ''} on "
             f"{machine['cpu_model']}, {machine['cores']} cores, kernel {machine['kernel']}")
    results = {}
    failed = False
    started = time.monotonic()
    with common.sigterm_as_interrupt():
        try:
            for w in chosen:
                name = FULL_NAMES[w]
                mod = __import__(BENCHMARKS[w], fromlist=["run"])
                entry = {"date": _now(), "quick": args.quick, "kernel": machine["kernel"],
                         "loadavg_before": common.loadavg(), "other_namespaces": common.other_namespaces(tag)}
                t0, cpu0 = time.monotonic(), common.cpu_snapshot()
                try:
                    entry.update(mod.run(tag, args.quick))
                    entry["status"] = "ok"
                except Exception as e:  # record the failure, go on with the next benchmark
                    failed = True
                    entry["status"] = "error"
                    entry["error"] = f"{type(e).__name__}: {e}"
                    entry["traceback"] = traceback.format_exc()
                    progress(f"{name} FAILED: {entry['error']}")
                    traceback.print_exc()
                finally:
                    left = common.sweep_namespaces(tag)
                    if left:
                        progress(f"{name}: swept leftover namespaces {', '.join(left)}")
                entry["seconds"] = round(time.monotonic() - t0, 1)
                entry["machine_busy_percent"] = common.busy_percent(cpu0, common.cpu_snapshot())
                entry["loadavg_after"] = common.loadavg()
                results[name] = entry
                progress(f"{name}: done in {entry['seconds']} s ({entry['status']})")
        finally:
            common.sweep_namespaces(tag)
    doc = report.merge(args.results, results, machine, args.quick, round(time.monotonic() - started, 1))
    report.write_json(args.results, doc)
    md = report.markdown(doc)
    print()
    print(md)
    if args.docs:
        report.update_docs(args.docs, md)
        progress(f"wrote {args.results} and {args.docs}")
    else:
        progress(f"wrote {args.results}")
    return 1 if failed else 0


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    sys.exit(main())
