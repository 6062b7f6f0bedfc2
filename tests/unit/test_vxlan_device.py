"""The one judgement of a VXLAN device (calc/vxlan_device.py) that the agent, doctor and trace share."""

from __future__ import annotations

import dataclasses

from podnet.calc.state import VxlanDevice
from podnet.calc.vxlan_device import (ADDRESS, IN_PLACE, RECREATE, SET, DeviceSeen, mismatches, must_recreate,
                                      wanted_addresses)

WANT = VxlanDevice("vxlan.calico", 4096, 4789, "172.31.0.11", "eth0", "66:aa:bb:cc:dd:ee", 1450, "10.244.0.0")
AS_WANTED = DeviceSeen("vxlan", vni=4096, port=4789, local="172.31.0.11", parent=2, learning=False,
                       mac="66:aa:bb:cc:dd:ee", mtu=1450, up=True, addresses=frozenset({("10.244.0.0", 32)}))


def _repairs(seen, **kw):
    return [(m.what, m.repair) for m in mismatches(seen, WANT, 2, **kw)]


def test_a_device_as_the_agent_makes_it_has_no_mismatch():
    assert mismatches(AS_WANTED, WANT, 2) == [] == mismatches(AS_WANTED, WANT, 2, read_all=True)
    assert wanted_addresses(WANT) == {("10.244.0.0", 32)}


def test_each_difference_with_how_it_is_repaired():
    cases = {"vni": ("VNI", RECREATE), "port": ("port", RECREATE), "local": ("local IP", IN_PLACE),
             "parent": ("parent", IN_PLACE), "learning": ("learning", RECREATE), "mac": ("MAC", RECREATE),
             "mtu": ("MTU", SET), "up": ("state", SET), "addresses": ("address", ADDRESS)}
    other = {"vni": 1, "port": 8472, "local": "172.31.0.99", "parent": 3, "learning": True, "mac": "66:00:00:00:00:01",
             "mtu": 1500, "up": False, "addresses": frozenset()}
    for field, expected in cases.items():
        assert _repairs(dataclasses.replace(AS_WANTED, **{field: other[field]})) == [expected], field
    assert _repairs(DeviceSeen("bridge")) == [("kind", RECREATE)]
    # Only the outer source and the parent are changed on a live device: the agent keeps its entries.
    moved = dataclasses.replace(AS_WANTED, local="172.31.0.99", parent=3)
    assert not must_recreate(mismatches(moved, WANT, 2))
    assert must_recreate(mismatches(dataclasses.replace(moved, learning=True), WANT, 2))


def test_what_was_not_read_is_judged_only_when_everything_was():
    partial = DeviceSeen("vxlan", vni=4096, port=4789, local="172.31.0.11", learning=False)  # doctor's unit facts
    assert mismatches(partial, WANT, None) == []
    agent = _repairs(partial, read_all=True)  # the agent read the whole link: a missing attribute differs
    assert ("parent", IN_PLACE) in agent and ("MAC", RECREATE) in agent and ("state", SET) in agent
    assert [m.what for m in mismatches(AS_WANTED, WANT, None, read_all=True)] == ["parent"]  # parent unknown
