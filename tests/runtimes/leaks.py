"""What a pod can leave behind in a lab, read independently of the runtime under test."""

from __future__ import annotations

import ipaddress

from podnet.dataplane import topology
from podnet.datastore import open_datastore
from podnet.datastore.resources import Resources
from podnet.ipam import Ipam


def footprint(lab) -> dict:
    """IPAM allocations, workload endpoints and host-side veths (cali*) on every node."""
    store = open_datastore(lab.datastore_url)
    try:
        allocations = sorted(ip for b in Ipam(store).blocks() for ip in b.in_use())
        endpoints = sorted(e.key_name for e in Resources(store).endpoints())
    finally:
        store.close()
    veths = sorted(f"{node['name']}/{name}" for node in lab.state["nodes"] for name in topology.links(node["netns"])
                   if name.startswith("cali"))
    return {"allocations": allocations, "endpoints": endpoints, "veths": veths}


def node_blocks(lab, node: str) -> list[ipaddress.IPv4Network]:
    for entry in lab.status()["nodes"]:
        if entry["name"] == node:
            return [ipaddress.ip_network(b) for b in entry["blocks"]]
    raise KeyError(node)


def in_blocks(ip: str, blocks) -> bool:
    return any(ipaddress.ip_address(ip) in b for b in blocks)


def remote_pod(lab, node: str = "node-2") -> dict:
    return next(p for p in lab.status()["pods"] if p["node"] == node)
