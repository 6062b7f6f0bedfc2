"""Processes the lab starts, identified by PID and start time so we never signal a stranger."""

from __future__ import annotations

import os
import signal
import time


def start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    return int(stat.rsplit(")", 1)[1].split()[19])


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def alive(pid: int, started: int | None) -> bool:
    """Still running and still the process we started (a zombie has finished)."""
    st = start_time(pid)
    return st is not None and (started is None or st == started) and _state(pid) != "Z"


def stop(pid: int, started: int | None, timeout: float = 5.0) -> bool:
    """SIGTERM, then SIGKILL after timeout; only if pid is still the process we started."""
    if not alive(pid, started):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if not alive(pid, started):
            return True
        time.sleep(0.02)
    if alive(pid, started):
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            _reap(pid)
            if not alive(pid, started):
                break
            time.sleep(0.02)
    return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
