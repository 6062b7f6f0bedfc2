"""Hostile CNI requests about endpoint identity: duplicate ADDs, DELs after failed ADDs, a pod's sandbox
restarted while the old one's DEL is late, several interfaces per container, endpoint keys built to collide,
and interfaces podnet did not create that carry a name podnet would use.

Every case goes through tests/integration/hostile.py: the exact code, one JSON error object, no traceback,
nothing on the node changed (or, where a request legitimately removes an attachment, nothing but that
attachment), the bystander pod still reachable. Each case leaves the node as it found it. One lab for the
module (names `pnt-he…`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import subprocess
import uuid
from dataclasses import dataclass

import pytest

from podnet.cni import protocol as p
from podnet.datastore.resources import Resources
from podnet.ipam import Ipam, maintenance
from podnet.model import WorkloadEndpoint
from podnet.model.endpoint import endpoint_name, host_veth_name, ipam_handle, owner_mark
from tests.integration import kernel
from tests.integration.witness import wait_for
from tests.integration.hostile import TRACEBACK, Hostile, State, assert_error, config, hostile_lab


@pytest.fixture(scope="module")
def hostile():
    with hostile_lab("pnt-he") as h:
        yield h


# Helpers --------------------------------------------------------------------------------------------------


@dataclass
class Att:
    """One attachment made by a successful ADD."""

    env: dict
    result: dict
    conf: dict

    @property
    def cid(self) -> str:
        return self.env["CNI_CONTAINERID"]

    @property
    def ifname(self) -> str:
        return self.env["CNI_IFNAME"]

    @property
    def netns(self) -> str:
        return self.env["CNI_NETNS"]

    @property
    def host_if(self) -> str:
        return self.result["interfaces"][0]["name"]

    @property
    def ip(self) -> str:
        return self.result["ips"][0]["address"].split("/")[0]

    @property
    def key(self) -> str:
        return endpoint_name(self.cid, self.ifname)


def add(h: Hostile, netns: str | None = None, cid: str | None = None, ifname: str = "eth0", pod: str | None = None,
        conf: dict | None = None, **extra) -> Att:
    env = h.env("ADD", netns or h.sandbox(), cid=cid, ifname=ifname, pod=pod, **extra)
    conf = conf or config()
    run = h.run(env, conf)
    assert run.code == 0 and TRACEBACK not in run.stdout + run.stderr, run
    return Att(env, run.json, conf)


def delete(h: Hostile, a: Att, **changes) -> None:
    run = h.run(dict(a.env, CNI_COMMAND="DEL", **changes), dict(a.conf, prevResult=a.result))
    assert run.code == 0 and not run.stdout.strip() and TRACEBACK not in run.stderr, run


def reaches_peer(h: Hostile, netns: str) -> bool:
    """The pod reaches the peer on the other node. Waited for (a liveness bound only): the agent's filter
    layer drops a new workload interface's traffic until it has programmed the endpoint."""
    return bool(wait_for(lambda: kernel.ping(os.path.basename(netns), h.peer["ip"]).returncode == 0, timeout=15))


def assert_works(h: Hostile, a: Att) -> None:
    """The attachment is whole: CHECK passes and the pod reaches the peer on the other node."""
    run = h.run(dict(a.env, CNI_COMMAND="CHECK"), dict(a.conf, prevResult=a.result))
    assert (run.code, run.stdout.strip()) == (0, ""), run
    assert reaches_peer(h, a.netns), f"{a.cid} {a.ifname} lost its network"


def assert_removed_only(before: State, after: State, *gone: Att) -> None:
    """Between the states exactly these attachments disappeared: their veths, routes, addresses and records."""
    marks = [x for a in gone for x in (a.host_if, a.ip, a.key)]
    changed = before.diff(after)
    stray = [line for line in changed if not any(m in line for m in marks)]
    assert not stray, "more than the attachment changed:\n" + "\n".join(stray)
    assert not any(" gained " in line for line in changed), changed
    for a in gone:
        assert a.key in before.endpoints and a.key not in after.endpoints
        assert a.ip in before.allocations and a.ip not in after.allocations
        assert any(a.host_if in line and "links lost" in line for line in changed), changed


def host_link(h: Hostile, name: str) -> dict | None:
    return kernel.link(h.lab.node_netns(h.node), name)


def node_ip(h: Hostile, *args: str) -> None:
    subprocess.run(["ip", "-n", h.lab.node_netns(h.node), *args], check=True, capture_output=True)


# 1. A duplicate ADD of an attachment is refused and changes nothing -------------------------------------

DUPLICATES = [
    # (id, ifname, same netns, env changes for the second ADD, cniVersion)
    ("same-netns-0.3.1", "eth0", True, {}, "0.3.1"),
    ("same-netns-0.4.0", "eth0", True, {}, "0.4.0"),
    ("same-netns-1.0.0", "eth0", True, {}, "1.0.0"),
    ("same-netns-1.1.0", "eth0", True, {}, "1.1.0"),
    ("same-netns-eth1", "eth1", True, {}, "1.0.0"),
    ("other-netns-eth0", "eth0", False, {}, "1.0.0"),
    ("other-netns-eth1", "eth1", False, {}, "1.0.0"),
    ("other-pod-name", "eth0", True, {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=other"},
     "1.0.0"),
    ("other-netns-other-pod", "eth0", False,
     {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=x"}, "1.0.0"),
    ("no-k8s-args", "eth0", False, {"CNI_ARGS": ""}, "1.0.0"),
]


@pytest.mark.parametrize("case", DUPLICATES, ids=[c[0] for c in DUPLICATES])
def test_a_duplicate_add_is_refused_and_changes_nothing(hostile: Hostile, case):
    _, ifname, same_netns, changes, version = case
    h = hostile
    with h.unharmed():
        netns = h.sandbox()
        first = add(h, netns, ifname="eth0")
        second = add(h, netns, cid=first.cid, ifname="eth1") if ifname == "eth1" else first
        env = dict(second.env, **changes)
        if not same_netns:
            env["CNI_NETNS"] = h.sandbox()
        out = assert_error(h.refused(env, code=p.INTERFACE_EXISTS, stdin=config(version)), p.INTERFACE_EXISTS)
        assert ifname in out["msg"]
        assert_works(h, first)
        if second is not first:
            assert_works(h, second)
            delete(h, second)
        delete(h, first)


def test_concurrent_duplicate_adds_in_two_namespaces_leave_one_attachment(hostile: Hostile):
    """Both ADDs race to record the same attachment: exactly one wins, the other gives back all it took."""
    h = hostile
    with h.unharmed():
        cid = uuid.uuid4().hex
        envs = [h.env("ADD", h.sandbox(), cid=cid, pod="race") for _ in range(4)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(h.run, envs))
        won = [(e, r) for e, r in zip(envs, runs) if r.code == 0]
        assert len(won) == 1, runs
        for r in runs:
            if r.code != 0:
                assert_error(r, p.INTERFACE_EXISTS)
        winner = Att(won[0][0], won[0][1].json, config())
        assert_works(h, winner)
        delete(h, winner)


# 2. A DEL after a failed ADD never deletes another container's interface --------------------------------

AFTER_FAILED = [
    # (id, DEL env changes, use the first container's prevResult, times)
    ("del-with-netns", {}, False, 1),
    ("del-without-netns", {"CNI_NETNS": ""}, False, 1),
    ("del-with-the-first-containers-prevresult", {}, True, 1),
    ("del-repeated", {}, False, 3),
    ("del-old-version", {}, False, 1),
]


@pytest.mark.parametrize("case", AFTER_FAILED, ids=[c[0] for c in AFTER_FAILED])
def test_a_del_after_a_failed_add_leaves_the_other_container(hostile: Hostile, case):
    _, changes, borrowed, times = case
    h = hostile
    with h.unharmed():
        netns = h.sandbox()
        first = add(h, netns)
        env = h.env("ADD", netns)  # a second container, the same namespace: eth0 is taken
        h.refused(env, code=p.INTERFACE_EXISTS)
        stdin = config("0.3.1" if "old" in case[0] else "1.0.0")
        if borrowed:
            stdin = dict(stdin, prevResult=first.result)
        for _ in range(times):
            h.accepted(dict(env, CNI_COMMAND="DEL", **changes), stdin)
        assert_works(h, first)
        delete(h, first)


def test_a_check_after_a_failed_add_finds_nothing(hostile: Hostile):
    h = hostile
    with h.unharmed():
        netns = h.sandbox()
        first = add(h, netns)
        env = h.env("ADD", netns)
        h.refused(env, code=p.INTERFACE_EXISTS)
        h.refused(dict(env, CNI_COMMAND="CHECK"), code=p.CHECK_FAILED, stdin=config(prevResult=first.result))
        assert_works(h, first)
        delete(h, first)


# 3. A DEL without a record touches no interface, whatever CNI_NETNS and CNI_IFNAME name -----------------

def _bystander_netns(h: Hostile) -> str:
    return f"/run/netns/{h.bystander['netns']}"


def _foreign_sandbox(h: Hostile) -> str:
    netns = h.sandbox()
    name = os.path.basename(netns)
    subprocess.run(["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"], check=True)
    subprocess.run(["ip", "-n", name, "link", "add", "eth1", "type", "bridge"], check=True)
    return netns


RECORDLESS = [
    # (id, netns maker, ifname)
    ("bystander-eth0", _bystander_netns, "eth0"),
    ("bystander-lo", _bystander_netns, "lo"),
    ("foreign-veth-eth0", _foreign_sandbox, "eth0"),
    ("foreign-bridge-eth1", _foreign_sandbox, "eth1"),
    ("foreign-veth-peer", _foreign_sandbox, "eth0p"),
]


@pytest.mark.parametrize("case", RECORDLESS, ids=[c[0] for c in RECORDLESS])
def test_a_del_without_a_record_touches_no_interface(hostile: Hostile, case):
    _, make_netns, ifname = case
    h = hostile
    netns = make_netns(h)
    links = kernel.ip_json(os.path.basename(netns), "link", "show")
    h.accepted(h.env("DEL", netns, ifname=ifname))
    h.accepted(h.env("DEL", netns, ifname=ifname, pod=h.bystander["name"]))
    assert kernel.ip_json(os.path.basename(netns), "link", "show") == links


def test_a_del_naming_another_attachments_namespace_and_interface_removes_nothing(hostile: Hostile):
    h = hostile
    with h.unharmed():
        first = add(h)
        h.accepted(h.env("DEL", first.netns, CNI_ARGS=first.env["CNI_ARGS"]), config(prevResult=first.result))
        assert_works(h, first)
        delete(h, first)


# 4. Interfaces podnet did not create are never touched, even under a name podnet would use --------------

def _foreign_veth(h, name):
    node_ip(h, "link", "add", name, "type", "veth", "peer", "name", name[:11] + "peer")


def _foreign_veth_podnet_mac(h, name):
    _foreign_veth(h, name)
    node_ip(h, "link", "set", name, "address", "ee:ee:ee:ee:ee:ee")


def _foreign_veth_other_mark(h, name):
    _foreign_veth_podnet_mac(h, name)
    node_ip(h, "link", "set", name, "alias", owner_mark("someone-else", "eth0"))


def _foreign_bridge(h, name):
    node_ip(h, "link", "add", name, "type", "bridge")


FOREIGN = [("veth", _foreign_veth), ("veth-with-podnets-mac", _foreign_veth_podnet_mac),
           ("veth-with-another-attachments-mark", _foreign_veth_other_mark), ("bridge", _foreign_bridge)]


@pytest.mark.parametrize("case", FOREIGN, ids=[c[0] for c in FOREIGN])
def test_an_interface_holding_the_pods_veth_name_is_never_taken_over(hostile: Hostile, case):
    _, make = case
    h = hostile
    pod = f"fx-{uuid.uuid4().hex[:6]}"
    name = host_veth_name("default", pod, "")
    with h.unharmed():
        make(h, name)
        try:
            foreign = host_link(h, name)
            a = add(h, pod=pod)
            assert a.host_if != name and a.host_if.startswith("cali") and len(a.host_if) == 15
            assert_works(h, a)
            h.accepted(h.env("DEL", h.sandbox(), pod=pod))  # another container of the pod, never added
            before = h.snapshot()
            delete(h, a)
            assert_removed_only(before, h.snapshot(), a)
            delete(h, a)  # and again, now without a record
            assert host_link(h, name) == foreign
        finally:
            node_ip(h, "link", "del", name)


FORGED = [
    # (id, what the forged record names as its host interface, how it is removed)
    ("bystanders-veth-by-del", "bystander", "DEL"),
    ("node-eth0-by-del", "eth0", "DEL"),
    ("vxlan-by-del", "vxlan.calico", "DEL"),
    ("other-attachments-veth-by-del", "other", "DEL"),
    ("bystanders-veth-by-gc", "bystander", "GC"),
    ("other-attachments-veth-by-gc", "other", "GC"),
    ("name-longer-than-the-kernel-allows-by-del", "cali" + "0" * 20, "DEL"),
    ("empty-name-by-gc", "", "GC"),
]


@pytest.mark.parametrize("case", FORGED, ids=[c[0] for c in FORGED])
def test_a_record_naming_an_interface_it_does_not_own_never_deletes_it(hostile: Hostile, case):
    """A record can be wrong (restored from a backup, written by hand): its name alone proves nothing."""
    _, target, how = case
    h = hostile
    with h.unharmed():
        other = add(h)
        host_if = {"bystander": h.bystander["interface"], "other": other.host_if}.get(target, target)
        cid = uuid.uuid4().hex
        forged = WorkloadEndpoint(node=h.node, container_id=cid, interface="eth0", host_interface=host_if,
                                  ips=(), mac="02:00:00:00:00:01", netns=_bystander_netns(h),
                                  pod_namespace="default", pod_name="forged", network="k8s-pod-network")
        before = h.snapshot()
        with h.lab.datastore() as store:
            Resources(store).put_endpoint(forged)
        if how == "DEL":
            h.run(h.env("DEL", _bystander_netns(h), cid=cid))
            run = h.run(h.env("DEL", _bystander_netns(h), cid=cid))
            assert run.code == 0, run
        else:
            valid = [{"containerID": x["container_id"], "ifname": "eth0"} for x in h.lab.status()["pods"]]
            valid.append({"containerID": other.cid, "ifname": "eth0"})
            run = h.run({"CNI_COMMAND": "GC", "CNI_PATH": h.lab.bin_dir},
                        config("1.1.0", **{p.VALID_ATTACHMENTS: valid}))
            assert run.code == 0, run
        assert before.diff(h.snapshot()) == []
        assert_works(h, other)
        delete(h, other)


# 5. Kubernetes restarts a pod's sandbox: the old sandbox's late DEL never reaches the new one ------------

def _late_del(h: Hostile, old: Att, how: str) -> None:
    if how == "with-netns":
        delete(h, old)
    elif how == "without-netns":
        delete(h, old, CNI_NETNS="")
    elif how == "after-its-netns-is-gone":
        subprocess.run(["ip", "netns", "del", os.path.basename(old.netns)], check=True)
        delete(h, old, CNI_NETNS="")
    elif how == "twice":
        delete(h, old)
        delete(h, old, CNI_NETNS="")
    elif how == "by-gc":
        valid = [{"containerID": x["container_id"], "ifname": "eth0"} for x in h.lab.status()["pods"]]
        valid += [{"containerID": c, "ifname": "eth0"} for c in h.live]
        run = h.run({"CNI_COMMAND": "GC", "CNI_PATH": h.lab.bin_dir}, config("1.1.0", **{p.VALID_ATTACHMENTS: valid}))
        assert run.code == 0, run


LATE_DELS = ["with-netns", "without-netns", "after-its-netns-is-gone", "twice", "by-gc"]


@pytest.mark.parametrize("how", LATE_DELS)
def test_the_old_sandboxs_late_del_never_reaches_the_new_one(hostile: Hostile, how):
    h = hostile
    pod = f"rs-{uuid.uuid4().hex[:6]}"
    with h.unharmed():
        old = add(h, pod=pod)
        new = add(h, pod=pod)
        assert old.host_if == host_veth_name("default", pod, "") != new.host_if
        assert_works(h, old)
        assert_works(h, new)
        h.live = [new.cid]
        before = h.snapshot()
        _late_del(h, old, how)
        after = h.snapshot()
        if how == "after-its-netns-is-gone":  # the kernel removed the pair with the namespace
            assert host_link(h, old.host_if) is None
            assert old.key not in after.endpoints and old.ip not in after.allocations
        else:
            assert_removed_only(before, after, old)
        assert_works(h, new)
        delete(h, new)


def test_a_new_sandbox_takes_calicos_name_once_the_old_pair_is_gone_and_the_old_del_spares_it(hostile: Hostile):
    """The old sandbox died with its namespace (its pair went with it) before its DEL came: the new sandbox
    gets the very name the old record holds. Only the owner mark tells them apart."""
    h = hostile
    pod = f"rs-{uuid.uuid4().hex[:6]}"
    with h.unharmed():
        old = add(h, pod=pod)
        subprocess.run(["ip", "netns", "del", os.path.basename(old.netns)], check=True)
        assert wait_for(lambda: host_link(h, old.host_if) is None)  # the kernel cleans a namespace up later
        new = add(h, pod=pod)
        assert new.host_if == old.host_if
        before = h.snapshot()
        delete(h, old, CNI_NETNS="")
        after = h.snapshot()
        assert before.namespaces == after.namespaces
        assert old.key not in after.endpoints and old.ip not in after.allocations
        assert_works(h, new)
        delete(h, new)


def test_three_sandboxes_of_one_pod_each_keep_their_own_veth(hostile: Hostile):
    h = hostile
    pod = f"rs-{uuid.uuid4().hex[:6]}"
    with h.unharmed():
        sandboxes = [add(h, pod=pod) for _ in range(3)]
        assert len({s.host_if for s in sandboxes}) == 3
        for gone in sandboxes[:2]:
            before = h.snapshot()
            delete(h, gone)
            assert_removed_only(before, h.snapshot(), gone)
            assert_works(h, sandboxes[2])
        delete(h, sandboxes[2])


def test_a_failed_add_of_a_new_sandbox_leaves_the_old_one(hostile: Hostile):
    h = hostile
    pod = f"rs-{uuid.uuid4().hex[:6]}"
    with h.unharmed():
        old = add(h, pod=pod)
        env = h.env("ADD", h.sandbox(), pod=pod)
        h.refused(env, code=p.IPAM_EXHAUSTED, stdin=config(ipam={"type": "podnet-ipam", "ipv4_pools": ["nope"]}))
        h.accepted(dict(env, CNI_COMMAND="DEL"))
        assert_works(h, old)
        delete(h, old)


# 6. Several interfaces per container work independently --------------------------------------------------

SECOND_IFNAMES = ["eth1", "net1", "e-th.1_x", "abcdefghijklmno", "eth0-x"]


@pytest.mark.parametrize("first_gone", [False, True], ids=["del-second", "del-eth0"])
@pytest.mark.parametrize("ifname", SECOND_IFNAMES)
def test_interfaces_of_one_container_are_added_and_deleted_independently(hostile: Hostile, ifname, first_gone):
    h = hostile
    with h.unharmed():
        netns = h.sandbox()
        eth0 = add(h, netns)
        second = add(h, netns, cid=eth0.cid, ifname=ifname)
        assert second.host_if != eth0.host_if and second.ip != eth0.ip
        assert second.key != eth0.key
        with h.lab.datastore() as store:
            assert Resources(store).endpoint_of(h.node, eth0.cid, ifname).host_interface == second.host_if
            report = maintenance.check(Ipam(store), Resources(store))  # each address explained by its endpoint
            assert (report.leaked, report.endpoints_without_ips) == ([], []), report
        assert_works(h, eth0)
        assert_works(h, second)
        assert wait_for(lambda: kernel.ping(h.peer["netns"], second.ip).returncode == 0, timeout=15)  # from outside
        gone, kept = (eth0, second) if first_gone else (second, eth0)
        before = h.snapshot()
        delete(h, gone)
        assert_removed_only(before, h.snapshot(), gone)
        assert_works(h, kept)
        h.refused(dict(gone.env, CNI_COMMAND="CHECK"), code=p.CHECK_FAILED, stdin=config(prevResult=gone.result))
        assert kernel.link(os.path.basename(netns), gone.ifname) is None
        delete(h, kept)


@pytest.mark.parametrize("pools", [["nope"], None], ids=["unknown-pool", "no-ipv6-pool"])
def test_a_failed_add_of_a_second_interface_leaves_the_first(hostile: Hostile, pools):
    h = hostile
    with h.unharmed():
        netns = h.sandbox()
        eth0 = add(h, netns)
        ipam = {"type": "podnet-ipam", "ipv4_pools": pools} if pools else {"type": "podnet-ipam", "assign_ipv6": "true"}
        env = h.env("ADD", netns, cid=eth0.cid, ifname="eth1")
        h.refused(env, code=p.IPAM_EXHAUSTED, stdin=config(ipam=ipam))
        assert kernel.link(os.path.basename(netns), "eth1") is None
        h.accepted(dict(env, CNI_COMMAND="DEL"))
        assert_works(h, eth0)
        delete(h, eth0)


# 7. Endpoint keys and IPAM handles built to collide ------------------------------------------------------

COLLIDING = [
    # two (container suffix, interface) pairs whose naive `<container>-<interface>` (or handle) is the same
    ("dash-in-container", ("k1-eth0", "x"), ("k1", "eth0-x")),
    ("trailing-dash", ("k1-", "eth0"), ("k1", "-eth0")),
    ("dot-in-container", ("a.eth1", "eth0"), ("a", "eth1")),
]


@pytest.mark.parametrize("case", COLLIDING, ids=[c[0] for c in COLLIDING])
def test_attachments_whose_names_would_collide_stay_apart(hostile: Hostile, case):
    _, one, two = case
    h = hostile
    prefix = uuid.uuid4().hex[:8]
    with h.unharmed():
        a = add(h, cid=prefix + one[0], ifname=one[1])
        b = add(h, cid=prefix + two[0], ifname=two[1])
        assert a.key != b.key and a.host_if != b.host_if
        assert ipam_handle(a.cid, a.ifname) != ipam_handle(b.cid, b.ifname)
        with h.lab.datastore() as store:
            res = Resources(store)
            assert res.endpoint_of(h.node, a.cid, a.ifname).host_interface == a.host_if
            assert res.endpoint_of(h.node, b.cid, b.ifname).host_interface == b.host_if
        before = h.snapshot()
        delete(h, a)
        assert_removed_only(before, h.snapshot(), a)
        assert_works(h, b)
        delete(h, b)


def test_a_legacy_record_is_found_but_only_for_its_own_attachment(hostile: Hostile):
    """A record written by an older podnet under `<container>-<interface>`: DEL of that attachment finds it;
    an attachment whose own legacy name would be the same key does not borrow it."""
    h = hostile
    with h.unharmed():
        a = add(h, cid=uuid.uuid4().hex[:8] + "-eth0", ifname="x")
        with h.lab.datastore() as store:
            res = Resources(store)
            ep = res.endpoint_of(h.node, a.cid, "x")
            res.delete_endpoint(h.node, ep.key_name)
            res.put_endpoint(dataclasses.replace(ep, stored_name=f"{a.cid}-x"))
            assert res.endpoint_of(h.node, a.cid, "x").legacy
            # `<prefix>` + `eth0-x` has the same legacy name, `<prefix>-eth0-x`: never this record
            assert res.endpoint_of(h.node, a.cid[:-len("-eth0")], "eth0-x") is None
        assert_works(h, a)
        h.accepted(h.env("DEL", h.sandbox(), cid=a.cid[:-len("-eth0")], ifname="eth0-x"))
        before = h.snapshot()
        delete(h, a)
        after = h.snapshot()
        assert f"{a.cid}-x" in before.endpoints and f"{a.cid}-x" not in after.endpoints
        assert a.ip not in after.allocations and host_link(h, a.host_if) is None
        assert not [x for x in before.diff(after) if " gained " in x]


@pytest.mark.parametrize("alias", ["", "podnet someone-else:eth0"], ids=["mark-cleared", "mark-of-another"])
def test_a_veth_whose_mark_was_changed_is_found_by_the_pods_mac(hostile: Hostile, alias):
    """The host end no longer proves it is the attachment's: DEL finds the pair from the pod's side, by the
    MAC the record holds, in the namespace the runtime gives; the bystander and the node are untouched."""
    h = hostile
    with h.unharmed():
        a = add(h)
        node_ip(h, "link", "set", a.host_if, "alias", alias)
        before = h.snapshot()
        delete(h, a)
        assert_removed_only(before, h.snapshot(), a)
        assert kernel.link(os.path.basename(a.netns), "eth0") is None


def test_gc_of_a_second_interface_leaves_the_first(hostile: Hostile):
    """The runtime still holds eth0 of the container but no longer eth1: GC removes eth1 alone."""
    h = hostile
    with h.unharmed():
        netns = h.sandbox()
        eth0 = add(h, netns)
        eth1 = add(h, netns, cid=eth0.cid, ifname="eth1")
        valid = [{"containerID": x["container_id"], "ifname": "eth0"} for x in h.lab.status()["pods"]]
        valid.append({"containerID": eth0.cid, "ifname": "eth0"})
        before = h.snapshot()
        run = h.run({"CNI_COMMAND": "GC", "CNI_PATH": h.lab.bin_dir}, config("1.1.0", **{p.VALID_ATTACHMENTS: valid}))
        assert (run.code, run.stdout.strip()) == (0, ""), run
        assert_removed_only(before, h.snapshot(), eth1)
        assert_works(h, eth0)
        delete(h, eth0)
