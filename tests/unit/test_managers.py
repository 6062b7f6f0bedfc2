"""The concrete managers' belief and pending logic, and the desired index, without a kernel."""

from __future__ import annotations

from podnet.calc import VxlanConfig
from podnet.calc.index import Delta, DesiredIndex
from podnet.calc.state import FdbEntry, Neighbour, Route
from podnet.dataplane import rtnl
from podnet.dataplane.devices import Links
from podnet.dataplane.manager import KernelEvent
from podnet.dataplane.neighbours import NOT_PERMANENT, NeighbourManager
from podnet.dataplane.routes import RouteManager
from podnet.model import IPPool, Node

DEV, DEV6 = "vxlan.calico", "vxlan-v6.calico"


class NoSocket:
    """The managers must not touch the kernel for what these tests do."""

    def __getattr__(self, name):
        raise AssertionError(f"the kernel was asked ({name})")


def route_event(new: bool, dst: str, gateway: str | None = None, oif: int = 7, proto: int = rtnl.RTPROT_PODNET,
                rtype: int = rtnl.RTN_UNICAST) -> KernelEvent:
    return KernelEvent("route", new, {"dst": dst, "gateway": gateway, "oif": oif, "table": rtnl.RT_TABLE_MAIN,
                                      "proto": proto, "scope": 0, "type": rtype, "onlink": True, "metric": 0})


def neigh_event(new: bool, ip: str, mac: str | None, state: int = rtnl.NUD_PERMANENT, ifindex: int = 7,
                family: int = 2) -> KernelEvent:
    return KernelEvent("fdb" if family == rtnl.AF_BRIDGE else "neigh", new,
                       {"family": family, "ifindex": ifindex, "state": state, "flags": 0, "dst": ip, "lladdr": mac})


def routes_manager() -> RouteManager:
    links = Links()
    links.learn(DEV, 7)
    return RouteManager(NoSocket(), links)


def test_route_deleted_by_hand_is_one_pending_update_ipv4_and_ipv6():
    m = routes_manager()
    wanted = {"10.1.0.0/26": Route("10.1.0.0/26", "10.1.0.0", DEV, True),
              "fd00:1::/122": Route("fd00:1::/122", "fd00:1::", DEV, True)}
    m.tracker.replace_desired(wanted)
    m.tracker.replace_believed(wanted)
    assert m.on_kernel_event(route_event(False, "fd00:1::/122", "fd00:1::"))
    assert m.tracker.pending_updates() == [("fd00:1::/122", wanted["fd00:1::/122"])]
    assert m.on_kernel_event(route_event(True, "fd00:1::/122", "fd00:1::"))  # restored (someone else's echo)
    assert m.tracker.in_sync


def test_routes_of_other_protocols_are_not_ours_and_foreign_podnet_routes_are_deleted():
    m = routes_manager()
    assert not m.on_kernel_event(route_event(True, "192.168.0.0/24", proto=rtnl.RTPROT_BOOT))
    assert m.on_kernel_event(route_event(True, "10.9.0.0/26", "10.9.0.0"))
    assert [k for k, _ in m.tracker.pending_deletes()] == ["10.9.0.0/26"]


def test_route_changed_by_hand_is_replaced_not_deleted():
    m = routes_manager()
    want = Route("10.1.0.0/26", "10.1.0.0", DEV, True)
    m.tracker.desired_set(want.dst, want)
    m.tracker.believed_set(want.dst, want)
    m.on_kernel_event(route_event(True, want.dst, "10.1.0.99"))
    assert m.tracker.pending_updates() == [(want.dst, want)] and not m.tracker.pending_deletes()


def neighbours_manager() -> NeighbourManager:
    return NeighbourManager(NoSocket(), lambda: {DEV: 7, DEV6: 8})


def test_neighbour_deleted_or_made_not_permanent_becomes_pending():
    m = neighbours_manager()
    n = Neighbour("10.1.0.0", "66:00:00:00:00:01", DEV)
    m.neighbours.desired_set((DEV, n.ip), n)
    m.neighbours.believed_set((DEV, n.ip), n)
    assert m.on_kernel_event(neigh_event(False, n.ip, n.mac))
    assert m.pending == 1
    m.neighbours.believed_set((DEV, n.ip), n)
    m.on_kernel_event(neigh_event(True, n.ip, n.mac, state=0x02))  # NUD_REACHABLE: the kernel's, not ours
    assert m.neighbours.believed_get((DEV, n.ip)) == NOT_PERMANENT and m.pending == 1


def test_neighbours_of_other_devices_and_unwanted_dynamic_ones_are_left_alone():
    m = neighbours_manager()
    assert not m.on_kernel_event(neigh_event(True, "10.0.0.1", "aa:bb:cc:dd:ee:ff", ifindex=99))
    assert m.on_kernel_event(neigh_event(True, "10.7.0.1", "aa:bb:cc:dd:ee:ff", state=0x02, ifindex=7))
    assert m.pending == 0


def test_fdb_entry_deleted_by_hand_ipv6_is_pending_and_its_own_echo_changes_nothing():
    m = neighbours_manager()
    f = FdbEntry("66:00:00:00:00:02", "fd31::2", DEV6)
    m.fdb.desired_set((DEV6, f.mac), f)
    m.fdb.believed_set((DEV6, f.mac), f)
    m.on_kernel_event(neigh_event(True, f.dst, f.mac, rtnl.NUD_PERMANENT | rtnl.NUD_NOARP, 8, rtnl.AF_BRIDGE))
    assert m.pending == 0  # the kernel announcing what we added
    m.on_kernel_event(neigh_event(False, f.dst, f.mac, rtnl.NUD_PERMANENT, 8, rtnl.AF_BRIDGE))
    assert m.fdb.pending_updates() == [((DEV6, f.mac), f)]


def test_fdb_destination_appended_by_hand_is_replaced_and_the_extra_deleted():
    m = neighbours_manager()
    f = FdbEntry("66:00:00:00:00:03", "172.31.0.3", DEV)
    m.fdb.desired_set((DEV, f.mac), f)
    m.fdb.believed_set((DEV, f.mac), f)
    m.on_kernel_event(neigh_event(True, "172.31.0.99", f.mac, rtnl.NUD_PERMANENT, 7, rtnl.AF_BRIDGE))
    believed = m.fdb.believed_get((DEV, f.mac))
    assert believed == (f, FdbEntry(f.mac, "172.31.0.99", DEV)) and m.pending == 1
    # The extra destination removed (by our delete or by hand): in sync again.
    m.on_kernel_event(neigh_event(False, "172.31.0.99", f.mac, rtnl.NUD_PERMANENT, 7, rtnl.AF_BRIDGE))
    assert m.pending == 0


def test_device_made_again_forgets_its_entries_only():
    m = neighbours_manager()
    a = Neighbour("10.1.0.0", "66:00:00:00:00:01", DEV)
    b = Neighbour("fd00::1", "66:00:00:00:00:02", DEV6)
    for n in (a, b):
        m.neighbours.desired_set((n.ifname, n.ip), n)
        m.neighbours.believed_set((n.ifname, n.ip), n)
    m.forget_device(DEV)
    assert [k for k, _ in m.neighbours.pending_updates()] == [(DEV, a.ip)]


def cluster(n: int) -> tuple[Node, dict[str, Node], dict[str, list[str]]]:
    local = Node("local", address="172.31.0.1/24", interface="eth0", tunnel_address="10.244.0.0")
    nodes = {f"n{i}": Node(f"n{i}", address=f"172.31.0.{10 + i}/24", interface="eth0",
                           tunnel_address=f"10.244.{1 + i}.0") for i in range(n)}
    blocks = {f"n{i}": [f"10.244.{1 + i}.0/26"] for i in range(n)} | {"local": ["10.244.0.0/26"]}
    return local, nodes, blocks


def test_index_one_node_added_changes_that_node_only():
    local, nodes, blocks = cluster(50)
    idx = DesiredIndex()
    idx.set_context(local, VxlanConfig(), 1500, [IPPool("p", "10.244.0.0/16")])
    delta = Delta()
    for name in [*nodes, "local"]:
        idx.update(name, nodes.get(name, local), blocks[name], (), delta)
    assert len(delta.set.routes) == 51 and len(delta.set.fdb) == 50 and not len(delta.delete)
    new = Node("n99", address="172.31.0.99/24", interface="eth0", tunnel_address="10.244.99.0")
    d = idx.update("n99", new, ["10.244.99.0/26"])
    assert set(d.set.routes) == {"10.244.99.0/26"} and len(d.set) == 3 and not len(d.delete)
    assert idx.update("n99", new, ["10.244.99.0/26"]).empty  # the same facts again: nothing
    moved = Node("n99", address="172.31.0.98/24", interface="eth0", tunnel_address="10.244.99.0")
    d = idx.update("n99", moved, ["10.244.99.0/26"])
    assert list(d.set.fdb.values()) == [FdbEntry(new.effective_vtep_mac, "172.31.0.98", DEV)] and not len(d.delete)
    d = idx.update("n99", None)
    assert set(d.delete.routes) == {"10.244.99.0/26"} and len(d.delete) == 3
    assert "local" not in idx.ready_nodes and len(idx.ready_nodes) == 50


def test_index_matches_compute_desired():
    from podnet.calc import compute_desired

    local, nodes, blocks = cluster(20)
    pools = [IPPool("p", "10.244.0.0/16", vxlan_mode="CrossSubnet")]
    idx = DesiredIndex()
    idx.set_context(local, VxlanConfig(), 1500, pools)
    for name in [*nodes, "local"]:
        idx.update(name, nodes.get(name, local), blocks[name], ())
    want = compute_desired(local, [local, *nodes.values()], [(n, b) for n, bs in blocks.items() for b in bs],
                           VxlanConfig(), 1500, pools)
    got = idx.desired()
    assert set(got.routes.values()) == set(want.routes)
    assert set(got.neighbours.values()) == set(want.neighbours) and set(got.fdb.values()) == set(want.fdb)


def test_kernel_watcher_restarts_and_resyncs_after_any_error_and_on_lost_notifications():
    """Never a silent stop: a failure of the socket makes it again and asks for a read-back."""
    import errno
    import threading

    from podnet.agent.kernel_events import KernelWatcher

    lost = threading.Event()
    calls = []
    watcher = KernelWatcher(lambda: set(), lambda: None, lambda: (calls.append("lost"), lost.set()))
    failures = [RuntimeError("decoder bug"), OSError(errno.ENOBUFS, "No buffer space available")]

    def receive():
        if failures:
            raise failures.pop(0)
        watcher.stop()
        raise OSError(errno.EBADF, "closed")

    watcher._receive = receive
    watcher._open()
    first = watcher.sock
    watcher._run()
    assert calls == ["lost", "lost"] and watcher.restarts == 1
    assert watcher.sock is not first  # made again after the unexpected error
    watcher.sock.close()


def test_kernel_events_decode_ipv6_routes_and_every_followed_kind():
    from podnet.agent.kernel_events import decode

    msg = rtnl.route_msg(rtnl.RTM_NEWROUTE, "fd00:99::40/122", gateway="fd00:99::40", oif=8, onlink=True)
    ev = decode(rtnl.RTM_DELROUTE, msg[16:])
    assert (ev.table, ev.new, ev.entry["dst"], ev.entry["gateway"]) == ("route", False, "fd00:99::40/122", "fd00:99::40")
    fdb = rtnl.fdb_msg(rtnl.RTM_NEWNEIGH, 8, "66:00:00:00:00:02", "fd31::2")
    ev = decode(rtnl.RTM_NEWNEIGH, fdb[16:])
    assert (ev.table, ev.entry["lladdr"], ev.entry["dst"]) == ("fdb", "66:00:00:00:00:02", "fd31::2")
    assert decode(rtnl.RTM_NEWADDR, rtnl.addr_msg(rtnl.RTM_NEWADDR, 3, "fd31::5", 64)[16:]).table == "addr"
    assert decode(99, b"") is None


def test_bulk_message_shapes_are_the_generic_encoding():
    """The one-pack encoders of the bulk shapes produce the bytes the attribute-by-attribute
    encoding does (the kernel parses both the same)."""
    import socket

    a = rtnl._attr
    for ip, family in (("10.64.1.0", socket.AF_INET), ("fd00:99::40", socket.AF_INET6)):
        packed = socket.inet_pton(family, ip)
        mac = bytes.fromhex("660000000001")
        body = rtnl._NDMSG.pack(family, 0, 0, 5, rtnl.NUD_PERMANENT, 0, 0) + a(rtnl.NDA_DST, packed) + \
            a(rtnl.NDA_LLADDR, mac)
        assert rtnl.neigh_msg(rtnl.RTM_NEWNEIGH, 5, ip, "66:00:00:00:00:01", flags=0x500) == \
            rtnl._msg(rtnl.RTM_NEWNEIGH, 0x500, body)
        body = rtnl._NDMSG.pack(rtnl.AF_BRIDGE, 0, 0, 5, rtnl.NUD_PERMANENT | rtnl.NUD_NOARP, rtnl.NTF_SELF, 0) + \
            a(rtnl.NDA_LLADDR, mac) + a(rtnl.NDA_DST, packed)
        assert rtnl.fdb_msg(rtnl.RTM_DELNEIGH, 5, "66:00:00:00:00:01", ip) == rtnl._msg(rtnl.RTM_DELNEIGH, 0, body)
        plen = 26 if family == socket.AF_INET else 122
        body = rtnl._RTMSG.pack(family, plen, 0, 0, 254, rtnl.RTPROT_PODNET, 0, rtnl.RTN_UNICAST, rtnl.RTNH_F_ONLINK) + \
            a(rtnl.RTA_TABLE, rtnl._U32.pack(254)) + a(rtnl.RTA_DST, packed) + a(rtnl.RTA_GATEWAY, packed) + \
            a(rtnl.RTA_OIF, rtnl._U32.pack(5))
        assert rtnl.route_msg(rtnl.RTM_NEWROUTE, f"{ip}/{plen}", gateway=ip, oif=5, onlink=True, flags=0x500) == \
            rtnl._msg(rtnl.RTM_NEWROUTE, 0x500, body)


def test_index_recompute_keeps_the_objects_of_unchanged_entries():
    # After a pass over every node the trackers hold the entries they had; the index must point at those
    # same objects, not at equal new ones (a second copy of every entry at 10,000 nodes).
    local, nodes, blocks = cluster(3)
    idx = DesiredIndex()
    idx.set_context(local, VxlanConfig(), 1500, [IPPool("p", "10.244.0.0/16")])
    for name in nodes:
        idx.update(name, nodes[name], blocks[name])
    before = {name: idx.by_node[name] for name in nodes}
    name, node = next(iter(nodes.items()))
    again = Node(node.name, address=node.address, interface=node.interface, tunnel_address=node.tunnel_address)
    assert idx.update(name, again, list(blocks[name])).empty
    assert all(a is b for was, now in zip(before[name], idx.by_node[name]) for a, b in zip(was, now))
    moved = Node(node.name, address="172.31.9.9/24", interface=node.interface, tunnel_address=node.tunnel_address)
    d = idx.update(name, moved, list(blocks[name]))
    assert len(d.set) == 1 and list(d.set.fdb.values()) == [idx.by_node[name][2][0]]
    routes, neighbours, fdb = idx.by_node[name]
    assert routes[0] is before[name][0][0] and neighbours[0] is before[name][1][0] and fdb[0] is not before[name][2][0]
