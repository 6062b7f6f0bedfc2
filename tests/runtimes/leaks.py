"""What a pod can leave behind in a lab, read independently of the runtime under test."""

from __future__ import annotations

import ipaddress

from tests.integration.witness import footprint

__all__ = ["footprint", "node_blocks", "in_blocks", "remote_pod"]



def node_blocks(lab, node: str) -> list[ipaddress.IPv4Network]:
    for entry in lab.status()["nodes"]:
        if entry["name"] == node:
            return [ipaddress.ip_network(b) for b in entry["blocks"]]
    raise KeyError(node)


def in_blocks(ip: str, blocks) -> bool:
    return any(ipaddress.ip_address(ip) in b for b in blocks)


def remote_pod(lab, node: str = "node-2") -> dict:
    return next(p for p in lab.status()["pods"] if p["node"] == node)
