"""Node join on etcd: bench.node_join on a 10-node lab whose datastore is a 3-member etcd cluster.

Everything is node_join's (registration, netlink observation in every node
namespace, kernel read-back, leave); only the lab differs: `LabSpec(datastore=
"etcd", etcd_members=3)`, whose members listen on the underlay gateway's
address in the lab's underlay namespace, where every agent reaches them over
the underlay. The benchmark's own datastore client enters that namespace too.
"""

from __future__ import annotations

from bench import node_join

NAME = "node_join_etcd"
TARGET_P99_MS = node_join.TARGET_P99_MS


def run(tag: str, quick: bool) -> dict:
    return node_join.measure(tag, quick, datastore="etcd", etcd_members=3, suffix="joinetcd", name=NAME)
