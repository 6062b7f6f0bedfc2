"""Which kernel entries are podnet's (dataplane/ownership.py): the agent's managers and doctor ask the
same question, through the kernel layer's decoders and doctor's facts alike."""

from __future__ import annotations

from podnet.dataplane import ownership, rtnl
from podnet.observe.facts import FdbFact, NeighFact, RouteFact


def test_a_route_is_podnets_by_protocol_80_in_the_main_table():
    assert ownership.route(rtnl.RTPROT_PODNET, rtnl.RT_TABLE_MAIN)
    assert not ownership.route(rtnl.RTPROT_PODNET, 100)  # another table: someone else's
    assert not ownership.route(rtnl.RTPROT_STATIC, rtnl.RT_TABLE_MAIN)
    assert RouteFact("10.244.0.64/26", "10.244.0.64", "vxlan.calico", True, proto=80).podnets
    assert not RouteFact("10.9.0.0/16", "172.31.0.1", "eth0", proto=rtnl.RTPROT_BOOT).podnets


def test_neighbours_and_fdb_entries_are_podnets_only_permanent_and_on_its_devices():
    devices = ("vxlan.calico", "vxlan-v6.calico")
    mine = NeighFact("10.244.0.64", "66:aa:bb:cc:dd:ee", "vxlan.calico", "PERMANENT")
    assert mine.podnets(devices)
    assert not NeighFact("10.244.0.64", "66:aa:bb:cc:dd:ee", "vxlan.calico", "REACHABLE").podnets(devices)
    assert not NeighFact("ff02::16", "33:33:00:00:00:16", "vxlan-v6.calico", "NOARP").podnets(devices)
    assert not NeighFact("172.31.0.1", "02:00:00:00:00:01", "eth0", "PERMANENT").podnets(devices)
    assert FdbFact("66:aa:bb:cc:dd:ee", "172.31.0.12", "vxlan.calico", True).podnets(devices)
    assert not FdbFact("66:aa:bb:cc:dd:ee", "172.31.0.12", "vxlan.calico", False).podnets(devices)
    assert not FdbFact("00:00:00:00:00:00", None, "vxlan.calico", True).podnets(devices)
