"""The policy kinds through the CLI: apply, get (-n, -A), label, delete by name (-n) and by file."""

from __future__ import annotations

import os

import pytest

from podnet.cli.main import main

DOCS = os.path.join(os.path.dirname(__file__), "policy_docs.yaml")


@pytest.fixture
def cli(tmp_path, capsys):
    def run(*argv):
        capsys.readouterr()
        code = main(["--datastore", f"sqlite://{tmp_path}/p.db", *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()[1:]]


def test_apply_get_label_delete_policies_pods_and_namespaces(cli):
    code, out, err = cli("apply", "-f", DOCS)
    assert code == 0, err
    assert out.splitlines() == ["namespace/x created", "pod/a created", "networkpolicy/knp.default.deny-all created",
                                "networkpolicy/allow-dns created", "globalnetworkpolicy/deny-icmp created"]
    assert cli("apply", "-f", DOCS)[1].count("unchanged") == 5
    assert rows(cli("get", "networkpolicies", "-A")[1]) == [
        ["x", "allow-dns", "10", "all()", "Egress"],
        ["x", "knp.default.deny-all", "1000", "projectcalico.org/orchestrator", "==", "'k8s'", "Ingress"]]
    assert rows(cli("get", "networkpolicies")[1]) == []  # namespace default
    assert [r[0] for r in rows(cli("get", "globalnetworkpolicies")[1])] == ["deny-icmp"]
    assert cli("label", "pod", "x/a", "color=red")[0] == 0
    assert cli("label", "namespace", "x", "env=prod")[0] == 0
    assert rows(cli("get", "pods", "-n", "x")[1]) == [["x", "a", "color=red,pod=a", "serve-80-tcp=80/TCP"]]
    assert "env=prod,kubernetes.io/metadata.name=x,team=blue" in cli("get", "namespaces")[1]
    code, out, err = cli("delete", "networkpolicy", "-n", "x", "knp.default.deny-all")
    assert (code, out) == (0, "networkpolicy/knp.default.deny-all deleted\n")
    assert cli("delete", "globalnetworkpolicy", "deny-icmp")[0] == 0
    code, out, err = cli("delete", "networkpolicy", "-n", "x", "nothing")
    assert code == 1 and "does not exist" in err
    code, out, err = cli("delete", "-f", DOCS)  # what is left goes; the two already deleted are named
    assert "networkpolicy/allow-dns deleted" in out and "do not exist" in err
    assert rows(cli("get", "networkpolicies", "-A")[1]) == [] and rows(cli("get", "pods", "-A")[1]) == []


def test_a_bad_policy_is_refused_whole_and_names_the_field(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(open(DOCS).read() + """---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec: {podSelector: {}, ingress: [{from: [{podSelector: {matchLabels: {a: b}}, ipBlock: {cidr: 10.0.0.0/8}}]}]}
""")
    code, out, err = cli("apply", "-f", str(path))
    assert code == 1 and out == "" and "spec.ingress[0].from[0].ipBlock" in err
    assert rows(cli("get", "networkpolicies", "-A")[1]) == []  # nothing of the file was applied


def test_describe_a_pod_shows_its_policies_in_order_and_their_rules(cli, tmp_path):
    from podnet.datastore import open_datastore
    from podnet.datastore.resources import Resources
    from podnet.model.endpoint import WorkloadEndpoint

    assert cli("apply", "-f", DOCS)[0] == 0
    store = open_datastore(f"sqlite://{tmp_path}/p.db")
    Resources(store).put_endpoint(WorkloadEndpoint(node="n1", container_id="c1", interface="eth0",
                                                   host_interface="cali12345678901", ips=("10.244.0.5/32",),
                                                   mac="", pod_namespace="x", pod_name="a"))
    store.close()
    code, out, err = cli("describe", "pod", "x/a")
    assert code == 0, err
    ingress, egress = out.split("\nEgress")
    assert ingress.index("1. deny-icmp") < ingress.index("2. x/knp.default.deny-all")  # order 5 before 1000
    assert "[0] Deny ICMP" in ingress and "then: drop" in ingress
    assert "1. x/allow-dns" in egress and "[0] Allow UDP to ports 53" in egress
    assert "Named ports:      serve-80-tcp=80/TCP" in out
    code, out, err = cli("describe", "pod", "x/nothing")
    assert code == 1 and "no workload endpoint" in err
