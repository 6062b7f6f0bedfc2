"""Calico's selector syntax over node labels; pools chosen by selector; `podnet describe`."""

from __future__ import annotations

import pytest

from podnet.cli.main import main
from podnet.datastore import open_datastore
from podnet.datastore.resources import Resources
from podnet.ipam import Ipam, NoUsablePool
from podnet.model import IPPool, Node, ValidationError
from podnet.model.selector import parse
from tests.nodes import register_nodes

LABELS = {"zone": "a", "rack": "1", "kubernetes.io/os": "linux"}


@pytest.mark.parametrize("text, expected", [
    ("all()", True),
    ("has(zone)", True),
    ("!has(zone)", False),
    ("has(gpu)", False),
    ("zone == 'a'", True),
    ('zone == "b"', False),
    ("zone != 'a'", False),
    ("missing != 'a'", True),
    ("zone in {'a', 'b'}", True),
    ("zone in {'b'}", False),
    ("zone not in {'b', 'c'}", True),
    ("has(zone) && rack == '2'", False),
    ("has(gpu) || rack == '1'", True),
    ("!(zone == 'b' || has(gpu))", True),
    ("kubernetes.io/os == 'linux' && (zone == 'a' || zone == 'b')", True),
    ("zone == 'a' && rack == '1' || has(gpu)", True),
    ("kubernetes.io/os contains 'inu'", True),
    ("kubernetes.io/os starts with 'lin'", True),
    ("kubernetes.io/os ends with 'ux'", True),
    ("kubernetes.io/os ends with 'lin'", False),
    ("missing contains ''", False),  # contains, starts with and ends with need the label
    ("missing not in {'a'}", True),
    ("zone in {}", False),
    ("global()", True),
    ("", True),  # the empty selector is all()
    ("   ", True),
    ("!(!has(zone))", True),
    ("(zone == 'a' || zone == 'b') && !(rack in {'2', '3'})", True),
    ("has(gpu) || zone == 'b' || rack starts with '1'", True),
])
def test_selector_matches(text, expected):
    assert parse(text).matches(LABELS) is expected


@pytest.mark.parametrize("text", ["zone ==", "zone = 'a'", "has(", "(all()", "zone in {'a'", "&& has(x)", "zone", "zone contains",
                                  "zone starts 'a'", "all() &&", "zone == 'a')", "global("])
def test_selector_syntax_errors_name_the_field(text):
    with pytest.raises(ValidationError) as e:
        parse(text)
    assert e.value.field == "spec.nodeSelector"


def test_selector_flags_all_and_global():
    assert parse("").is_all and parse("all()").is_all and parse(" global( ) ").is_global
    assert not parse("has(a)").is_all and not parse("all()").is_global


def test_pool_rejects_a_bad_selector():
    with pytest.raises(ValidationError, match="nodeSelector"):
        IPPool("p", "10.0.0.0/16", node_selector="zone ==")


@pytest.fixture
def store(tmp_path):
    s = open_datastore(f"sqlite://{tmp_path}/x.db")
    yield s
    s.close()


def test_ipam_serves_a_node_only_from_pools_that_select_it(store):
    res, ipam = Resources(store), Ipam(store)
    register_nodes(store, "na", "nb", "nc")
    res.apply_pool(IPPool("zone-a", "10.1.0.0/16", node_selector="zone == 'a'"))
    res.apply_pool(IPPool("zone-b", "10.2.0.0/16", node_selector="zone == 'b'"))
    res.apply_pool(IPPool("off", "10.3.0.0/16", disabled=True))
    res.put_node(Node("na", labels={"zone": "a"}))
    res.put_node(Node("nb", labels={"zone": "b"}))
    res.put_node(Node("nc", labels={"zone": "c"}))
    assert ipam.auto_assign("na", "h1").startswith("10.1.")
    assert ipam.auto_assign("nb", "h2").startswith("10.2.")
    with pytest.raises(NoUsablePool, match="for node nc"):
        ipam.auto_assign("nc", "h3")
    # A pod may narrow the choice by name, but not past a pool's selector; a disabled pool hands out nothing.
    assert ipam.auto_assign("nb", "h4", pools=["zone-b"]).startswith("10.2.")
    with pytest.raises(NoUsablePool, match="named zone-b for node nc"):
        ipam.auto_assign("nc", "h4", pools=["zone-b"])
    with pytest.raises(NoUsablePool):
        ipam.auto_assign("na", "h5", pools=["off"])


def test_describe_pool_node_and_config(store, capsys, tmp_path):
    res, ipam = Resources(store), Ipam(store)
    res.apply_pool(IPPool("p1", "10.5.0.0/24", vxlan_mode="CrossSubnet", nat_outgoing=True))
    res.put_node(Node("n1", address="172.31.0.11/24", interface="eth0", tunnel_address="10.5.0.0",
                      labels={"zone": "a"}))
    ipam.auto_assign("n1", "vxlan-tunnel-addr-n1")
    ds = ["--datastore", f"sqlite://{tmp_path}/x.db"]
    assert main(ds + ["describe", "ippool", "p1"]) == 0
    out = capsys.readouterr().out
    assert "CrossSubnet" in out and "NAT outgoing:     True" in out and "1 of 256" in out and "n1" in out
    assert main(ds + ["describe", "node", "n1"]) == 0
    out = capsys.readouterr().out
    assert "172.31.0.11/24" in out and "zone=a" in out and "10.5.0.0/26" in out
    assert main(ds + ["describe", "node", "nope"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(ds + ["describe", "agentconfiguration", "default"]) == 1


def test_lab_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    import io

    from podnet.cli.main import Progress

    plain = io.StringIO()
    p = Progress(2, plain)
    p("underlay")
    p("node-1")
    p.finish()
    assert plain.getvalue() == "  [1/2] underlay\n  [2/2] node-1\n"

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    p = Progress(4, tty)
    p("a")
    p("b")
    p.finish()
    out = tty.getvalue()
    assert "\r\033[K  [############------------] 2/4 b" in out and out.endswith("\n") and out.count("\n") == 1


def test_pool_with_an_empty_node_selector_serves_every_node():
    assert IPPool("p", "10.0.0.0/16", node_selector="").selects({"zone": "a"})
