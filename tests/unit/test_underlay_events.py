"""Which kernel address notifications make the agent look at its underlay again (agent/main.py asks
registration.may_move_underlay): decoded by the same code the agent's watcher uses."""

from __future__ import annotations

from podnet.agent.registration import may_move_underlay
from podnet.dataplane import rtnl


def _event(address: str, prefixlen: int, scope: int, index: int) -> dict:
    msg = rtnl.addr_msg(rtnl.RTM_NEWADDR, index, address, prefixlen, scope=scope)
    (_, _, _, payload), = rtnl.iter_messages(msg)
    return rtnl.parse_addr(payload)


def test_a_global_address_on_another_interface_may_move_the_underlay():
    assert may_move_underlay(_event("172.31.0.11", 24, rtnl.RT_SCOPE_UNIVERSE, 2), own_devices={7})
    assert may_move_underlay(_event("fd00:31::11", 64, rtnl.RT_SCOPE_UNIVERSE, 2), own_devices={7})


def test_a_pods_link_local_address_and_podnets_own_device_do_not():
    # Each pod's host-side veth gets fe80::/64: following those read every address once per pod.
    assert not may_move_underlay(_event("fe80::ecee:eeff:feee:eeee", 64, rtnl.RT_SCOPE_LINK, 40), own_devices={7})
    assert not may_move_underlay(_event("127.0.0.1", 8, rtnl.RT_SCOPE_HOST, 1), own_devices={7})
    assert not may_move_underlay(_event("10.244.0.0", 32, rtnl.RT_SCOPE_UNIVERSE, 7), own_devices={7})  # vxlan.calico
