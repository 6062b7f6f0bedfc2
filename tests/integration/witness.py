"""What tests watch for: a condition coming true in time, and what a pod can leave behind."""

from __future__ import annotations

import shlex
import subprocess
import time

from podnet.dataplane import topology
from podnet.datastore.resources import Resources
from podnet.ipam import Ipam


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Poll until predicate() is truthy; return its last value. A liveness bound only: how fast
    things happen is measured by `make bench`, never asserted by a test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def footprint(lab, link_prefixes: tuple[str, ...] = ("cali",)) -> dict:
    """IPAM allocations, workload endpoints and host-side links (cali… by default) on every node,
    read from the datastore and the kernel, independently of whatever created them."""
    with lab.datastore() as store:
        allocations = sorted(ip for b in Ipam(store).blocks() for ip in b.in_use())
        endpoints = sorted(e.key_name for e in Resources(store).endpoints())
    links = sorted(f"{node['name']}:{name}" for node in lab.state["nodes"] for name in topology.links(node["netns"])
                   if name.startswith(link_prefixes))
    return {"allocations": allocations, "endpoints": endpoints, "links": links}


def run_fix(lab, command: str):
    """Run a fix command podnet printed, after asserting that every step of it acts inside one of the
    lab's namespaces (this machine's own network must never be touched by a test)."""
    assert_targets_lab(lab, command)
    return subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)


def assert_targets_lab(lab, command: str) -> None:
    """Every `&&`-joined step of `command` is `ip -n NS`, `bridge -n NS`, `ip netns exec NS` or
    `nsenter --net=/run/netns/NS` with NS one of the lab's namespaces; no other shell syntax."""
    assert not set(command) & set(";|`$<>\n"), f"the fix has shell syntax beyond &&: {command!r}"
    for step in command.split("&&"):
        words = shlex.split(step)
        if words[:1] in (["ip"], ["bridge"]) and words[1:2] == ["-n"]:
            ns = words[2]
        elif words[:3] == ["ip", "netns", "exec"]:
            ns = words[3]
        elif words[:1] == ["nsenter"] and words[1].startswith("--net=/run/netns/"):
            ns = words[1][len("--net=/run/netns/"):]
        else:
            raise AssertionError(f"the fix does not name a namespace: {step.strip()!r} of {command!r}")
        assert ns.startswith(lab.prefix) and ns in topology.list_netns(), \
            f"the fix acts in {ns!r}, which is not a namespace of lab {lab.name}: {command!r}"
