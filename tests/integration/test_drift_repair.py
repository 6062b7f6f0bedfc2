"""Each kind of entry the agent owns, deleted by hand at 1000 remote nodes, comes back by its event.

The lab's resync interval is raised far beyond the test's polling, so only the kernel event
about the one deleted entry can bring it back; the agent's status shows no read-back happened.
"""

from __future__ import annotations

import pytest

from bench.common import add_fake_nodes
from podnet.model import vtep_mac
from tests.integration import kernel
from tests.integration.conftest import built_lab
from tests.integration.witness import wait_for

REMOTE = 1000


@pytest.fixture(scope="module")
def lab():
    with built_lab("pnt-dr", nodes=1, pods_per_node=0, ipv6=True, resync_interval=3600) as lab:
        fakes = add_fake_nodes(lab.datastore_url, REMOTE, ipv6=True)
        ns = lab.node_netns("node-1")
        # Programmed: every fake node's route, neighbour and FDB entry in both families (a bounded
        # poll, not a timing).
        assert wait_for(lambda: all(len(x) >= REMOTE for x in (
            fdb(ns, "vxlan.calico"), fdb(ns, "vxlan-v6.calico"), neighbours(ns, "-4", "vxlan.calico"),
            neighbours(ns, "-6", "vxlan-v6.calico"), routes(ns, "-4"), routes(ns, "-6"))), timeout=120), \
            "node-1 did not program the 1000 remote nodes"
        lab.fakes = fakes
        yield lab


def fdb(ns: str, dev: str) -> set[tuple[str, str]]:
    try:
        return {(f["mac"], f["dst"]) for f in kernel.fdb(ns, dev) if f.get("dst") and "permanent" in f.get("state", [])}
    except Exception:  # noqa: BLE001 - the device may be between deletion and re-creation
        return set()


def routes(ns: str, family: str) -> set[tuple[str, str]]:
    return {(r["dst"], r.get("gateway")) for r in kernel.ip_json(ns, family, "route", "show", "proto", "80")}


def neighbours(ns: str, family: str, dev: str) -> set[tuple[str, str]]:
    return {(n["dst"], n.get("lladdr")) for n in kernel.ip_json(ns, family, "neigh", "show", "dev", dev)
            if "PERMANENT" in n.get("state", [])}


def agent_log(lab) -> tuple[int, int]:
    """(passes that read a table back, entries repaired) of node-1's agent, from its log."""
    read_backs = repaired = 0
    with open(lab.log_path("node-1")) as f:
        for line in f:
            read_backs += " read back)" in line
            if "repaired " in line and "changed outside podnet" in line:
                repaired += int(line.split("repaired ")[1].split()[0])
    return read_backs, repaired


@pytest.mark.parametrize("family", ["-4", "-6"])
@pytest.mark.parametrize("kind", ["route", "neigh", "fdb"])
def test_entry_deleted_by_hand_is_restored_by_its_event(lab, kind, family):
    ns = lab.node_netns("node-1")
    node = lab.fakes[REMOTE // 2]
    v6 = family == "-6"
    dev = "vxlan-v6.calico" if v6 else "vxlan.calico"
    tunnel = node.tunnel_address6 if v6 else node.tunnel_address
    mac = vtep_mac(node.name, ipv6=v6)
    underlay = node.ip6 if v6 else node.ip
    block = next(r for r in routes(ns, family) if r[1] == tunnel)
    assert (tunnel, mac) in neighbours(ns, family, dev) and (mac, underlay) in fdb(ns, dev)
    read_backs, repaired = agent_log(lab)
    # Each delete fails unless the entry is there: check=True proves it was deleted.
    if kind == "route":
        lab.exec(ns, "ip", family, "route", "del", block[0], check=True)
        present = lambda: block in routes(ns, family)  # noqa: E731
    elif kind == "neigh":
        lab.exec(ns, "ip", family, "neigh", "del", tunnel, "dev", dev, check=True)
        present = lambda: (tunnel, mac) in neighbours(ns, family, dev)  # noqa: E731
    else:
        lab.exec(ns, "bridge", "fdb", "del", mac, "dev", dev, "dst", underlay, "self", check=True)
        present = lambda: (mac, underlay) in fdb(ns, dev)  # noqa: E731
    assert wait_for(lambda: present() and agent_log(lab)[1] > repaired, timeout=10), \
        f"the {kind} entry ({family}) deleted by hand was not restored by the agent"
    # Restored by its event: no table was read back meanwhile (the periodic resync is an hour away).
    assert agent_log(lab)[0] == read_backs, "the repair read tables back instead of following the event"
