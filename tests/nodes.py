"""Node records for tests that allocate addresses: IPAM assigns only to a registered node."""

from __future__ import annotations

from podnet.datastore.resources import Resources
from podnet.model import Node


def register_nodes(store, *names: str) -> None:
    """A minimal Node record for each name (what an agent writes first when it registers)."""
    res = Resources(store)
    for i, name in enumerate(names):
        if res.node(name) is None:
            res.put_node(Node(name, address=f"192.0.2.{1 + i % 250}/24", interface="eth0"))
