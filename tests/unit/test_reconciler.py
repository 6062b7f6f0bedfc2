"""The reconciler's choice between recomputing one node's entries and every node's, without a kernel."""

from __future__ import annotations

from podnet.agent.reconciler import Reconciler
from podnet.calc import VxlanConfig
from podnet.model import IPPool, Node


class NoKernel:
    """update_desired may look up the underlay's MTU (absent here) and nothing else."""

    def link_lookup(self, **kw):
        return []

    def __getattr__(self, name):
        raise AssertionError(f"the kernel was asked ({name})")


class View:
    """The datastore view as the reconciler reads it: node records, blocks, pools, and what changed."""

    def __init__(self, nodes: dict[str, Node], blocks: dict[str, list[str]], pools: list[IPPool]):
        self.nodes, self.blocks, self.pools = nodes, blocks, pools
        self.everything, self.changed = True, set()

    def take_changes(self):
        out = (self.everything, self.changed)
        self.everything, self.changed = False, set()
        return out

    def node_facts(self, name):
        return self.nodes.get(name), tuple(sorted(self.blocks.get(name, ()))), ()

    def cluster_facts(self):
        return list(self.pools), []

    def node_names(self):
        return set(self.nodes) | set(self.blocks)


def test_local_block_recomputes_the_local_node_only_and_a_local_record_change_everything():
    local = Node("local", address="172.31.0.1/24", interface="eth0", tunnel_address="10.244.0.0")
    remotes = {f"n{i}": Node(f"n{i}", address=f"172.31.0.{10 + i}/24", interface="eth0",
                             tunnel_address=f"10.244.{1 + i}.0") for i in range(5)}
    view = View({"local": local, **remotes}, {f"n{i}": [f"10.244.{1 + i}.0/26"] for i in range(5)},
                [IPPool("p", "10.244.0.0/16")])
    rec = Reconciler(local, view, VxlanConfig(), NoKernel(), NoKernel())
    assert rec.update_desired() == 15  # a route, neighbour and FDB entry per remote node
    before = dict(rec.index.by_node)

    # The local node's first pod: a block affinity of its own. Only its own route is new.
    view.blocks["local"] = ["10.244.0.0/26"]
    view.changed = {"local"}
    assert rec.update_desired() == 1
    assert "10.244.0.0/26" in rec.routes.tracker.desired
    assert all(rec.index.by_node[name] is before[name] for name in remotes)

    # Its labels changed (configuration may select on them): every node's entries are computed again.
    view.nodes["local"] = Node("local", address="172.31.0.1/24", interface="eth0", tunnel_address="10.244.0.0",
                               labels={"zone": "b"})
    view.changed = {"local"}
    assert rec.update_desired() == 0  # nothing differs in the result...
    assert all(rec.index.by_node[name] is not before[name] for name in remotes)  # ...but it was recomputed
