"""The kernel-side filter of the agent's notification socket: what it drops, and that drift repair
still follows a watched device that was deleted and made again (its index changes)."""

from __future__ import annotations

import select
import subprocess

import pytest

from podnet.dataplane import rtnl
from podnet.model import vtep_mac
from tests.integration import kernel
from tests.integration.conftest import built_lab, scratch_netns
from tests.integration.test_cluster import fdb_entries as _fdb_entries
from tests.integration.witness import wait_for


@pytest.fixture
def netns():
    with scratch_netns("pnt-nf") as name:
        yield name


def _drain(sock: rtnl.RtnlSocket) -> list[tuple[int, int]]:
    """(message type, port id) of every notification that reached the socket."""
    out = []
    while select.select([sock.sock], [], [], 0.2)[0]:
        out += [(kind, port) for kind, _, port in sock.recv_events_from()]
    return out


def _ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True)


def test_the_filter_drops_what_the_listener_would_discard(netns):
    _ip(netns, "link", "add", "watched", "type", "veth", "peer", "name", "other")
    _ip(netns, "link", "set", "lo", "up")
    with rtnl.RtnlSocket(netns, groups=rtnl.RTMGRP_LINK | rtnl.RTMGRP_IPV4_ROUTE) as listener, \
            rtnl.RtnlSocket(netns) as own:
        index = kernel.link(netns, "watched")["ifindex"]
        listener.filter_notifications({own.port_id}, {index})
        _ip(netns, "link", "set", "other", "mtu", "1400")
        assert _drain(listener) == [], "a change of an interface not watched got through"
        _ip(netns, "link", "set", "watched", "mtu", "1400")
        assert [k for k, _ in _drain(listener)] == [rtnl.RTM_NEWLINK]
        assert own.request([rtnl.route_msg(rtnl.RTM_NEWROUTE, "10.9.9.9/32", oif=1, scope=rtnl.RT_SCOPE_LINK,
                                           flags=rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL)]) == [0]
        assert _drain(listener) == [], "a change made by an ignored socket got through"
        _ip(netns, "route", "add", "10.9.9.8/32", "dev", "lo")
        assert [k for k, _ in _drain(listener)] == [rtnl.RTM_NEWROUTE]
        # Without an interface list, link changes are not filtered at all.
        listener.filter_notifications({own.port_id}, None)
        _ip(netns, "link", "set", "other", "mtu", "1300")
        assert [k for k, _ in _drain(listener)] == [rtnl.RTM_NEWLINK]


def fdb_entries(ns: str) -> set:
    """The device's permanent FDB entries; none while the device does not exist (it is being made again)."""
    try:
        return _fdb_entries(ns)
    except subprocess.CalledProcessError:
        return set()


def test_drift_is_still_repaired_at_once_after_the_device_was_made_again():
    """vxlan.calico deleted by hand comes back with a new index; an FDB entry deleted from the new
    device must then be restored by the event (well before the lab's 30 s resync)."""
    with built_lab("pnt-nfl", nodes=2, pods_per_node=0) as lab:
        status = lab.status()
        node, other = status["nodes"]
        ns = node["netns"]
        old_index = kernel.link(ns, "vxlan.calico")["ifindex"]
        lab.exec(ns, "ip", "link", "del", "vxlan.calico", check=True)
        entry = (vtep_mac(other["name"]), other["underlay_ip"])
        assert wait_for(lambda: entry in fdb_entries(ns)), "the device and its FDB entry did not come back"
        assert kernel.link(ns, "vxlan.calico")["ifindex"] != old_index
        lab.exec(ns, "bridge", "fdb", "del", entry[0], "dev", "vxlan.calico", "dst", entry[1], "self", check=True)
        assert wait_for(lambda: entry in fdb_entries(ns)), "an FDB entry deleted from the new device stayed gone"
