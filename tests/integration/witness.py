"""What tests watch for: a condition coming true in time, and what a pod can leave behind."""

from __future__ import annotations

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
