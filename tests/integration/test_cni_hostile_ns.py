"""Hostile CNI requests about namespaces and input: the node's own namespace offered as a pod's, files that
block on open, malformed identifiers, slow and oversized requests, private mount namespaces.

Every case goes through tests/integration/hostile.py: exact code, one JSON error object, no traceback,
nothing on the node changed, the bystander pod still reachable. One lab for the module (names `pnt-hn…`).
"""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.hostile import Hostile, hostile_lab


@pytest.fixture(scope="module")
def hostile():
    with hostile_lab("pnt-hn") as h:
        yield h


# The harness itself: it must see damage, or every case below proves nothing ---------------------------


def test_the_harness_sees_a_changed_node(hostile: Hostile):
    ns = hostile.lab.node_netns("node-1")
    with pytest.raises(AssertionError, match="gained"):
        with hostile.unharmed():
            subprocess.run(["ip", "-n", ns, "route", "add", "198.51.100.0/24", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", ns, "route", "del", "198.51.100.0/24", "dev", "eth0"], check=True)


def test_the_harness_sees_a_leaked_allocation(hostile: Hostile):
    netns = hostile.sandbox()
    env = hostile.env("ADD", netns)
    with pytest.raises(AssertionError, match="allocation"):
        with hostile.unharmed():
            assert hostile.run(env).code == 0
    assert hostile.run(dict(env, CNI_COMMAND="DEL")).code == 0


def test_a_del_of_nothing_is_accepted(hostile: Hostile):
    hostile.accepted(hostile.env("DEL", hostile.sandbox()))


def test_an_add_into_a_missing_namespace_is_container_unknown(hostile: Hostile):
    hostile.refused(hostile.env("ADD", "/run/netns/pnt-hn-does-not-exist"), code=3)
