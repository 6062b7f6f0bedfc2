"""CLI start: `podnet --help` and `podnet get ippools` on an empty store, as a user runs them.

Each command is run N times, interleaved with the interpreter alone (`python3 -c pass`, the floor
any Python command pays) so the two are measured under the same load. The clock covers the whole
process, from fork to exit. Every run must exit 0 and print what it should (the help's usage line,
the table's header): a run that does not is a failure in the verdict, not a fast sample.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from bench.common import ROOT, progress, summary_ms

NAME = "cli_start"
TARGET_P50_MS = 150.0


def _timed(argv: list[str], expect: str, env: dict) -> tuple[float, bool]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env)
    elapsed = time.perf_counter() - t0
    return elapsed, proc.returncode == 0 and expect in proc.stdout


def run(tag: str, quick: bool) -> dict:
    from podnet.datastore.sqlite import SqliteDatastore

    reps = 15 if quick else 40
    with tempfile.TemporaryDirectory(prefix=f"pnb-{tag}-cli-") as tmp:
        url = f"sqlite://{os.path.join(tmp, 'store.db')}"
        SqliteDatastore(url[len("sqlite://"):]).close()  # an empty store: readers never create one
        env = dict(os.environ, PODNET_DATASTORE=url)
        commands = {
            "help": ([sys.executable, "-m", "podnet", "--help"], "usage: podnet"),
            "get": ([sys.executable, "-m", "podnet", "get", "ippools"], "NAME"),
            "python": ([sys.executable, "-c", "pass"], ""),
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        failures: dict[str, int] = {k: 0 for k in commands}
        for argv, expect in commands.values():  # warm the page cache
            _timed(argv, expect, env)
        progress(f"cli_start: {reps} runs each of podnet --help, podnet get ippools and the bare interpreter")
        for _ in range(reps):
            for name, (argv, expect) in commands.items():
                elapsed, ok = _timed(argv, expect, env)
                times[name].append(elapsed)
                failures[name] += not ok
    stats = {k: summary_ms(v) for k, v in times.items()}
    passed = {k: failures[k] == 0 and stats[k]["p50"] <= TARGET_P50_MS for k in ("help", "get")}
    return {
        "params": {"repetitions": reps, "interpreter": sys.executable},
        "targets": {"p50_ms": TARGET_P50_MS},
        "ms": stats,
        "failures": failures,
        "pass": passed,
        "ok": all(passed.values()),
    }
