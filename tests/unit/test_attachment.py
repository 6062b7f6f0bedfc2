"""The one judgement of a pod's attachment (podnet.calc.attachment), which CNI CHECK, doctor and trace share."""

from __future__ import annotations

import dataclasses

from podnet.calc.attachment import (NODE, POD, AddressSeen, Attachment, AttachmentSeen, LinkSeen, RouteSeen,
                                    judge_attachment)

WANT = Attachment("cali1234567890a", "eth0", "10.244.0.5", "fd00::5", route_metric=0)


def whole() -> AttachmentSeen:
    return AttachmentSeen(
        host_link=LinkSeen(7, True, "ee:ee:ee:ee:ee:ee", peer=2),
        host_sysctls={"proxy_arp": "1", "forwarding": "1", "proxy_ndp": "1"},
        ip_forward="1",
        host_routes=[RouteSeen("10.244.0.5/32", "cali1234567890a"), RouteSeen("fd00::5/128", "cali1234567890a")],
        pod_link=LinkSeen(2, True, "0a:00:00:00:00:01", peer=7),
        pod_addresses=[AddressSeen("10.244.0.5", 32), AddressSeen("fd00::5", 128)],
        pod_routes=[RouteSeen("169.254.1.1/32", "eth0"), RouteSeen("0.0.0.0/0", "eth0", "169.254.1.1"),
                    RouteSeen("::/0", "eth0", "fe80::ecee:eeff:feee:eeee", 1024)],
    )


def parts(seen, want=WANT):
    return [(p.part, p.side) for p in judge_attachment(want, seen)]


def test_a_whole_attachment_has_no_problem():
    assert judge_attachment(WANT, whole()) == []


def test_a_gone_namespace_is_the_only_problem_reported():
    seen = dataclasses.replace(whole(), netns_error="the pod's network namespace /run/netns/x is gone",
                               host_link=None)
    assert parts(seen) == [("netns", POD)]


def test_node_side_problems_come_with_commands_for_the_node():
    seen = whole()
    seen.host_sysctls = {"proxy_arp": "0", "forwarding": "0", "proxy_ndp": "0"}
    seen.host_routes = seen.host_routes[1:]
    problems = judge_attachment(WANT, seen)
    assert [(p.part, p.side) for p in problems] == [("proxy-arp", NODE), ("forwarding", NODE), ("proxy-ndp", NODE),
                                                    ("host-route", NODE)]
    assert problems[0].fix == ("sysctl -w net.ipv4.conf.cali1234567890a.proxy_arp=1",)
    assert problems[1].fix == ("sysctl -w net.ipv4.conf.cali1234567890a.forwarding=1",)
    assert problems[3].fix == ("ip route replace 10.244.0.5/32 dev cali1234567890a scope link",)


def test_forwarding_off_everywhere_is_fixed_at_ip_forward():
    seen = whole()
    seen.host_sysctls["forwarding"], seen.ip_forward = "0", "0"
    [problem] = judge_attachment(WANT, seen)
    assert problem.fix == ("sysctl -w net.ipv4.ip_forward=1",)


def test_pod_side_problems():
    seen = whole()
    seen.pod_link = dataclasses.replace(seen.pod_link, up=False)
    seen.pod_addresses = [AddressSeen("10.244.0.5", 32), AddressSeen("fd00::5", 128, usable=False)]
    seen.pod_routes = []
    assert parts(seen) == [("pod-down", POD), ("pod-gateway-route", POD), ("pod-default-route", POD),
                           ("pod-address", POD), ("pod-default-route", POD)]


def test_a_veth_whose_ends_are_not_peers_and_a_missing_interface():
    seen = whole()
    seen.pod_link = dataclasses.replace(seen.pod_link, peer=99)
    assert parts(seen) == [("veth-peer", NODE)]
    seen.pod_link = None
    assert parts(seen) == [("pod-link", POD)]
    seen.host_link = None
    assert parts(seen) == [("host-link", NODE)]


def test_only_the_family_asked_for_is_judged():
    seen = whole()
    seen.host_sysctls["proxy_ndp"] = "0"
    assert parts(seen, dataclasses.replace(WANT, ipv6=None)) == []
    assert parts(seen, dataclasses.replace(WANT, ipv4=None)) == [("proxy-ndp", NODE)]


def test_route_metric_of_a_second_interface():
    seen = whole()
    want = dataclasses.replace(WANT, route_metric=100)
    assert ("pod-default-route", POD) in parts(seen, want)
