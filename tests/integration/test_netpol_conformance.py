"""Network policy conformance, as a truth table (modelled on Kubernetes' netpol e2e and cyclonus).

Namespaces x, y, z (labelled ns=<name>) hold pods a, b, c (labelled pod=<name>) spread over three
nodes; each pod serves TCP and UDP on 80 and 81 (named serve-<port>-<proto>). For each case the
policies are applied, the test waits until every node's filter table reflects them, every pod
probes every other pod on every port (in parallel, from inside the pods' namespaces), and the
observed matrix must equal the expected one, which is written by hand from the policies' meaning.
Loopback (a pod to itself) is not probed (implementations differ, kubernetes issue 95879).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from podnet.datastore.resources import Resources
from podnet.lab import processes
from podnet.model.kinds import lookup
from podnet.model.kube import ContainerPort, Namespace
from podnet.model.policy import parse_policy
from tests.integration.conftest import built_lab

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
PORTS = (("tcp", 80), ("tcp", 81), ("udp", 80), ("udp", 81))
PROBE = os.path.join(os.path.dirname(__file__), "netpol_probe.py")
ALL = [f"{ns}/{p}" for ns in NAMESPACES for p in PODS]


class Cluster:
    def __init__(self, lab):
        self.lab = lab
        self.pods = {f"{p['namespace']}/{p['name']}": p for p in lab.state["pods"]}
        self.applied: list[dict] = []
        self.rounds = 0

    def store(self):
        return self.lab.datastore()

    def apply(self, *docs: dict) -> None:
        with self.store() as store:
            res = Resources(store)
            for doc in docs:
                policy = parse_policy(doc)
                kind = lookup("GlobalNetworkPolicy" if policy.kind == "GlobalNetworkPolicy" else "NetworkPolicy")
                res.write(kind, policy, "apply")
                self.applied.append(doc)
        self.lab.wait_filter()

    def delete(self, doc: dict) -> None:
        policy = parse_policy(doc)
        with self.store() as store:
            kind = lookup("GlobalNetworkPolicy" if policy.kind == "GlobalNetworkPolicy" else "NetworkPolicy")
            assert Resources(store).remove(kind, policy.name, policy.namespace or None)
        self.lab.wait_filter()

    def reset(self) -> None:
        with self.store() as store:
            res = Resources(store)
            for word in ("NetworkPolicy", "GlobalNetworkPolicy"):
                kind = lookup(word)
                for p in res.list(kind):
                    res.remove(kind, p.name, p.namespace or None)
            for ns in NAMESPACES:
                res.write(lookup("Namespace"), Namespace(ns, {"ns": ns}), "apply")
            for key, pod in self.pods.items():
                ns, name = key.split("/")
                self.lab.write_pod_records(ns, name, {"pod": name}, _ports())
        self.lab.wait_filter()

    def probe(self) -> dict:
        """(src, dst, proto, port) -> reached, for every ordered pair of distinct pods."""
        procs = {}
        per_round = len(self.pods) * len(PORTS)
        base = 1024 + (self.rounds % ((32768 - 1024) // per_round)) * per_round  # below the ephemeral range
        self.rounds += 1
        for src, sp in self.pods.items():
            targets = [{"key": f"{dst}|{proto}|{port}", "ip": dp["ip"], "proto": proto, "port": port}
                       for dst, dp in self.pods.items() if dst != src for proto, port in PORTS]
            for i, t in enumerate(targets):
                if t["proto"] == "udp":  # TCP: every connect is a new flow (a SYN reopens a closed entry)
                    t["sport"] = base + i
            procs[src] = subprocess.Popen(["ip", "netns", "exec", sp["netns"], sys.executable, PROBE, "probe"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs[src].stdin.write(json.dumps({"targets": targets, "timeout": 1.0}))
            procs[src].stdin.close()
        out = {}
        for src, proc in procs.items():
            result = json.loads(proc.stdout.read())
            proc.wait(timeout=30)
            for key, ok in result.items():
                dst, proto, port = key.split("|")
                out[(src, dst, proto, int(port))] = ok
        return out

    def reaches(self, src: str, dst: str, proto: str, port: int, sport: int) -> bool:
        """One probe from a fixed source port: the same 5-tuple each time it is called with the same args."""
        target = {"key": "k", "ip": self.pods[dst]["ip"], "proto": proto, "port": port, "sport": sport}
        out = subprocess.run(["ip", "netns", "exec", self.pods[src]["netns"], sys.executable, PROBE, "probe"],
                             input=json.dumps({"targets": [target], "timeout": 1.0}), capture_output=True, text=True,
                             timeout=30, check=True)
        return json.loads(out.stdout)["k"]


def _ports() -> tuple:
    return tuple(ContainerPort(f"serve-{port}-{proto}", port, proto.upper()) for proto, port in PORTS)


class Truth:
    """The expected matrix: everything `default`, then rules applied in order (later ones win)."""

    def __init__(self, default: bool = True):
        self.m = {(s, d, proto, port): default for s in ALL for d in ALL if s != d for proto, port in PORTS}

    def set(self, ok: bool, src=None, dst=None, proto=None, port=None) -> Truth:
        def match(pattern, value):
            if pattern is None:
                return True
            if callable(pattern):
                return pattern(value)
            if isinstance(pattern, (list, tuple, set)):
                return any(match(p, value) for p in pattern)
            return pattern == value or (isinstance(value, str) and value.startswith(pattern + "/"))

        for (s, d, pr, po) in self.m:
            if match(src, s) and match(dst, d) and match(proto, pr) and match(port, po):
                self.m[(s, d, pr, po)] = ok
        return self


def check(cluster: Cluster, truth: Truth) -> None:
    observed = cluster.probe()
    wrong = sorted(f"{s} -> {d} {pr}/{po}: expected {'reach' if exp else 'blocked'}, observed "
                   f"{'reach' if observed.get((s, d, pr, po)) else 'blocked'}"
                   for (s, d, pr, po), exp in truth.m.items() if observed.get((s, d, pr, po)) != exp)
    assert not wrong, f"{len(wrong)} of {len(truth.m)} probes differ:\n" + "\n".join(wrong[:60])


@pytest.fixture(scope="module")
def cluster():
    with built_lab("pol-", nodes=3, pods_per_node=0) as lab:
        servers = []
        try:
            for i, key in enumerate(ALL):
                ns, name = key.split("/")
                lab.add_pod(f"node-{i % 3 + 1}", name, ns, labels={"pod": name}, ports=_ports())
            for entry in lab.state["pods"]:
                proc = subprocess.Popen(["ip", "netns", "exec", entry["netns"], sys.executable, PROBE, "serve", "80",
                                         "81"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                servers.append(proc)
                lab.state.setdefault("processes", []).append(
                    {"pid": proc.pid, "pid_start": processes.start_time(proc.pid), "what": f"server {entry['name']}"})
                lab._save()
            for proc in servers:
                assert proc.stdout.readline().strip() == "ready"
            c = Cluster(lab)
            yield c
        finally:
            for proc in servers:
                proc.kill()
                proc.wait()


@pytest.fixture
def fresh(cluster):
    cluster.reset()
    return cluster


def knp(name, ns, spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def cnp(name, ns, spec):
    return {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def gnp(name, spec):
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": name},
            "spec": spec}


def pod(name):
    return {"podSelector": {"matchLabels": {"pod": name}}}


def ns_sel(name):
    return {"namespaceSelector": {"matchLabels": {"ns": name}}}


# Kubernetes NetworkPolicy --------------------------------------------------------------------------


def test_no_policy_everything_reaches(fresh):
    check(fresh, Truth())


def test_default_deny_ingress(fresh):
    fresh.apply(knp("deny", "x", {"podSelector": {}}))
    check(fresh, Truth().set(False, dst="x"))


def test_default_deny_ingress_and_egress(fresh):
    fresh.apply(knp("deny", "x", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    check(fresh, Truth().set(False, dst="x").set(False, src="x"))


def test_allow_from_the_same_namespace(fresh):
    fresh.apply(knp("same-ns", "x", {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}))
    check(fresh, Truth().set(False, dst="x").set(True, src="x", dst="x"))


def test_pod_selector_match_labels(fresh):
    fresh.apply(knp("b-to-a", "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [pod("b")]}]}))
    check(fresh, Truth().set(False, dst="x/a").set(True, src="x/b", dst="x/a"))


def test_namespace_selector_and_match_expressions(fresh):
    fresh.apply(knp("not-y", "x", {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [
        {"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["y"]}]}}]}]}))
    check(fresh, Truth().set(False, dst="x/a").set(True, src=["x/b", "x/c", "z/a", "z/b", "z/c"], dst="x/a"))


def test_pod_and_namespace_selector_in_one_peer_is_and(fresh):
    fresh.apply(knp("and", "x", {"podSelector": pod("a")["podSelector"], "ingress": [{"from": [
        {**pod("b"), **ns_sel("y")}]}]}))
    check(fresh, Truth().set(False, dst="x/a").set(True, src="y/b", dst="x/a"))


def test_pod_and_namespace_selector_in_two_peers_is_or(fresh):
    fresh.apply(knp("or", "x", {"podSelector": pod("a")["podSelector"], "ingress": [{"from": [pod("b"), ns_sel("y")]}]}))
    check(fresh, Truth().set(False, dst="x/a").set(True, src=["x/b", "y"], dst="x/a"))


def test_numeric_port_and_udp_only_rules(fresh):
    fresh.apply(knp("tcp80", "x", {"podSelector": pod("a")["podSelector"], "ingress": [{"ports": [{"port": 80}]}]}),
                knp("udp81", "x", {"podSelector": pod("b")["podSelector"],
                                   "ingress": [{"ports": [{"port": 81, "protocol": "UDP"}]}]}))
    truth = Truth().set(False, dst="x/a").set(True, dst="x/a", proto="tcp", port=80)
    truth.set(False, dst="x/b").set(True, dst="x/b", proto="udp", port=81)  # a UDP rule never allows TCP
    check(fresh, truth)


def test_named_port_and_end_port(fresh):
    fresh.apply(knp("named", "x", {"podSelector": pod("a")["podSelector"],
                                   "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}),
                knp("range", "y", {"podSelector": pod("a")["podSelector"],
                                   "ingress": [{"ports": [{"port": 79, "endPort": 80, "protocol": "UDP"}]}]}))
    truth = Truth().set(False, dst="x/a").set(True, dst="x/a", proto="tcp", port=81)
    truth.set(False, dst="y/a").set(True, dst="y/a", proto="udp", port=80)
    check(fresh, truth)


def test_protocol_only_rule_and_all_namespaces(fresh):
    fresh.apply(knp("udp-only", "x", {"podSelector": pod("a")["podSelector"],
                                      "ingress": [{"ports": [{"protocol": "UDP"}]}]}),
                knp("all-ns-b", "y", {"podSelector": pod("b")["podSelector"],
                                      "ingress": [{"from": [{"namespaceSelector": {}, **pod("c")}]}]}))
    truth = Truth().set(False, dst="x/a").set(True, dst="x/a", proto="udp")
    truth.set(False, dst="y/b").set(True, src=["x/c", "y/c", "z/c"], dst="y/b")
    check(fresh, truth)


def test_sctp_rule_is_programmed_and_never_matches_tcp_or_udp(fresh):
    fresh.apply(knp("sctp", "x", {"podSelector": pod("a")["podSelector"],
                                  "ingress": [{"ports": [{"port": 80, "protocol": "SCTP"}]}]}))
    check(fresh, Truth().set(False, dst="x/a"))


def test_egress_to_a_namespace_on_a_named_port_restricts_the_client(fresh):
    fresh.apply(knp("egress", "x", {"podSelector": pod("a")["podSelector"], "policyTypes": ["Egress"],
                                    "egress": [{"to": [ns_sel("y")], "ports": [{"port": "serve-80-tcp"}]}]}))
    check(fresh, Truth().set(False, src="x/a").set(True, src="x/a", dst="y", proto="tcp", port=80))


def test_ip_block_with_except_and_an_address_in_both(fresh):
    everyone = "10.244.0.0/16"
    b_ip = fresh.pods["x/b"]["ip"]
    fresh.apply(knp("cidr", "x", {"podSelector": pod("a")["podSelector"], "ingress": [
        {"from": [{"ipBlock": {"cidr": everyone, "except": [f"{b_ip}/32"]}}]}]}))
    check(fresh, Truth().set(False, src="x/b", dst="x/a"))


def test_stacked_policies_are_a_union_and_allow_all_wins_over_deny(fresh):
    fresh.apply(knp("deny", "x", {"podSelector": {}}),
                knp("from-b", "x", {"podSelector": pod("a")["podSelector"], "ingress": [{"from": [pod("b")]}]}),
                knp("from-y", "x", {"podSelector": pod("a")["podSelector"], "ingress": [{"from": [ns_sel("y")]}]}),
                knp("allow-all-c", "x", {"podSelector": pod("c")["podSelector"], "ingress": [{}]}))
    truth = Truth().set(False, dst="x").set(True, src=["x/b", "y"], dst="x/a").set(True, dst="x/c")
    check(fresh, truth)


def test_pod_label_namespace_label_policy_updates_and_deletion(fresh):
    allow = knp("from-b", "x", {"podSelector": pod("a")["podSelector"], "ingress": [
        {"from": [pod("b"), {"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]})
    fresh.apply(allow)
    base = Truth().set(False, dst="x/a").set(True, src="x/b", dst="x/a")
    check(fresh, base)
    fresh.lab.write_pod_records("x", "c", {"pod": "b"}, _ports())  # x/c now looks like b
    with fresh.store() as store:
        Resources(store).write(lookup("Namespace"), Namespace("z", {"ns": "z", "team": "blue"}), "apply")
    fresh.lab.wait_filter()
    check(fresh, Truth().set(False, dst="x/a").set(True, src=["x/b", "x/c", "z"], dst="x/a"))
    # The policy changes: only port 81; then it goes.
    allow["spec"]["ingress"][0]["ports"] = [{"port": 81}]
    fresh.apply(allow)
    check(fresh, Truth().set(False, dst="x/a").set(True, src=["x/b", "x/c", "z"], dst="x/a", proto="tcp", port=81))
    fresh.delete(allow)
    check(fresh, Truth())


def test_a_deny_stops_new_flows_and_an_established_one_lives_on_like_calico(fresh):
    # Felix accepts ct established/related first, so a flow allowed before a deny keeps going (Kubernetes
    # leaves this to the implementation); a new flow, here a new source port, meets the deny.
    assert fresh.reaches("x/b", "x/a", "udp", 80, sport=40001)
    fresh.apply(knp("deny", "x", {"podSelector": {}}))
    assert fresh.reaches("x/b", "x/a", "udp", 80, sport=40001)
    assert not fresh.reaches("x/b", "x/a", "udp", 80, sport=40002)
    assert not fresh.reaches("x/b", "x/a", "tcp", 80, sport=0)


# Calico's own semantics ------------------------------------------------------------------------------


def test_calico_order_deny_before_a_kubernetes_allow(fresh):
    fresh.apply(knp("allow-all", "x", {"podSelector": {}, "ingress": [{}]}),
                cnp("deny-b", "x", {"order": 100, "selector": "pod == 'a'", "ingress": [
                    {"action": "Deny", "source": {"selector": "pod == 'b'"}}]}),
                gnp("deny-z", {"order": 10, "namespaceSelector": "ns == 'x'", "ingress": [
                    {"action": "Deny", "source": {"namespaceSelector": "ns == 'z'", "selector": "pod == 'c'"}}]}))
    check(fresh, Truth().set(False, src="x/b", dst="x/a").set(False, src="z/c", dst="x"))


def test_calico_pass_skips_the_kubernetes_default_deny(fresh):
    fresh.apply(knp("deny", "x", {"podSelector": {}}),
                cnp("pass-y", "x", {"order": 10, "selector": "all()", "ingress": [
                    {"action": "Pass", "source": {"namespaceSelector": "ns == 'y'"}}]}))
    check(fresh, Truth().set(False, dst="x").set(True, src="y", dst="x"))


def test_calico_not_nets_and_not_ports(fresh):
    c_ip = fresh.pods["y/c"]["ip"]
    fresh.apply(cnp("not", "x", {"selector": "pod == 'a'", "ingress": [
        {"action": "Allow", "protocol": "TCP", "source": {"notNets": [f"{c_ip}/32"]},
         "destination": {"notPorts": [81]}}]}))
    truth = Truth().set(False, dst="x/a").set(True, dst="x/a", proto="tcp", port=80).set(False, src="y/c", dst="x/a")
    check(fresh, truth)


def test_calico_lists_of_nets_and_ports(fresh):
    # Lists become named interval sets (calc/policy.py, SetRequests.constant_set): the kernel must match
    # every member and merged range as the list says.
    b_ip, c_ip = fresh.pods["x/b"]["ip"], fresh.pods["y/c"]["ip"]
    fresh.apply(cnp("lists", "x", {"selector": "pod == 'a'", "ingress": [
        {"action": "Allow", "protocol": "TCP", "source": {"nets": [f"{b_ip}/32", f"{c_ip}/32"]},
         "destination": {"ports": [81, "8000:9000", "8500:9500"]}}]}))
    check(fresh, Truth().set(False, dst="x/a").set(True, src=["x/b", "y/c"], dst="x/a", proto="tcp", port=81))


def test_calico_icmp_rule(fresh):
    fresh.apply(gnp("no-ping", {"order": 1, "selector": "pod == 'a'", "ingress": [
        {"action": "Deny", "protocol": "ICMP", "icmp": {"type": 8}}, {"action": "Allow"}]}))
    src, dst, other = fresh.pods["y/b"], fresh.pods["x/a"], fresh.pods["x/b"]

    def ping(a, b):
        return fresh.lab.exec(a["netns"], "ping", "-c", "1", "-W", "1", b["ip"]).returncode == 0

    assert not ping(src, dst) and ping(src, other)
    check(fresh, Truth())  # TCP and UDP still reach x/a
