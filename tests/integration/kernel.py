"""Read kernel state with iproute2's JSON output: an independent witness of what podnet programmed."""

from __future__ import annotations

import json
import subprocess
import time


def ip_json(netns: str, *args: str) -> list:
    out = subprocess.run(["ip", "-n", netns, "-j", "-d", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out) if out.strip() else []


def routes(netns: str) -> list[dict]:
    return ip_json(netns, "route", "show")


def neighbours(netns: str, dev: str = "vxlan.calico") -> list[dict]:
    return ip_json(netns, "neigh", "show", "dev", dev)


def fdb(netns: str, dev: str = "vxlan.calico") -> list[dict]:
    out = subprocess.run(["ip", "netns", "exec", netns, "bridge", "-j", "fdb", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out) if out.strip() else []


def link(netns: str, name: str) -> dict | None:
    try:
        found = ip_json(netns, "link", "show", name)
    except subprocess.CalledProcessError:
        return None
    return found[0] if found else None


def addresses(netns: str, name: str) -> list[dict]:
    return ip_json(netns, "addr", "show", name)[0]["addr_info"]


def sysctl(netns: str, path: str) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "cat", f"/proc/sys/{path}"], capture_output=True,
                          text=True, check=True).stdout.strip()


def ping(netns: str, ip: str, count: int = 1, timeout: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", str(count), "-W", str(timeout), "-i", "0.2",
                           ip], capture_output=True, text=True)


def netns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def reaches(netns: str, ip: str, timeout: float = 15.0) -> bool:
    """Whether a ping from netns to ip gets through, retried up to `timeout` (a liveness bound, never a
    measurement): the agent's filter layer drops a new pod's traffic until it has programmed its endpoint."""
    deadline = time.monotonic() + timeout
    while True:
        if ping(netns, ip).returncode == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
