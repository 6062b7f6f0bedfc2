"""The embedded store's file removed, replaced, damaged or made read-only under running agents.

Each fault: traffic across nodes keeps flowing (the agents keep the kernel as it is), every agent turns
not ready with the reason (/readyz, its status file, its log, `podnet doctor`), the CLI answers with an
error naming the cause and the exit code 1 (never a traceback, never a new empty store), a CNI ADD
fails cleanly, and once the fault is repaired nothing leaked.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import uuid

import pytest

from podnet.observe.facts import read_agent_health
from tests.integration.conftest import built_lab, scratch_netns
from tests.integration.traffic import Pinger
from tests.integration.witness import footprint, wait_for

NODES = ("node-1", "node-2")


@pytest.fixture(scope="module")
def lab():
    with built_lab("hardening-sf", nodes=2, pods_per_node=1) as lab:
        yield lab


def store_path(lab) -> str:
    return lab.datastore_url[len("sqlite://"):].partition("?")[0]


def podnet(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podnet", *argv], capture_output=True, text=True, timeout=60)


def readiness(lab) -> dict[str, tuple[bool, str]]:
    out = {}
    for node in NODES:
        health = read_agent_health(lab.node_netns(node))
        assert health.answered, f"the agent of {node} does not serve /readyz"
        out[node] = (health.ready, health.reason)
    return out


def all_not_ready(lab, words: str) -> dict:
    """Every agent's /readyz fails, naming `words`; the status file and the log say the same."""
    def failing():
        now = readiness(lab)
        return now if all(not ok and words in why for ok, why in now.values()) else None

    state = wait_for(failing, timeout=30)
    assert state, readiness(lab)
    for node in NODES:
        assert wait_for(lambda: not (lab.agent_status(node) or {}).get("ready", True)), lab.agent_status(node)
        assert words in lab.agent_status(node)["reason"]
        with open(lab.log_path(node)) as f:
            assert any("datastore problem" in line and words in line for line in f), f"{node}'s log is silent"
    return state


def all_ready(lab) -> None:
    assert wait_for(lambda: all(ok for ok, _ in readiness(lab).values()), timeout=60), readiness(lab)


def restart_agents(lab) -> None:
    for node in NODES:
        lab.restart_agent(node)
    lab.wait_converged()
    all_ready(lab)


def cross_node_ping(lab) -> Pinger:
    a, b = sorted(lab.status()["pods"], key=lambda p: p["node"])
    assert a["node"] != b["node"]
    return Pinger(a["netns"], b["ip"])


def spare_netns():
    return scratch_netns("hardening-")


def add_fails_cleanly(lab, words: str) -> None:
    """A CNI ADD now fails with the spec's JSON naming the cause, and creates nothing on the node."""
    before = {n: set(_links(lab, n)) for n in NODES}
    with spare_netns() as ns:
        code, result, raw = lab.cni("node-1", "ADD", uuid.uuid4().hex, f"/run/netns/{ns}", "victim", "default")
    assert code != 0 and result is not None, raw
    assert result["code"] == 11 and words in result["msg"], result
    assert "Traceback" not in raw
    assert {n: set(_links(lab, n)) for n in NODES} == before


def _links(lab, node):
    from podnet.dataplane import topology

    return [n for n in topology.links(lab.node_netns(node)) if n.startswith("cali")]


def cli_fails(argv: list[str], words: str) -> None:
    proc = podnet(*argv)
    assert proc.returncode == 1, (argv, proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("error: ") and words in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def no_leaks(lab, before: dict) -> None:
    """The pods' addresses, endpoints and veths are exactly what they were, and ipam check agrees."""
    assert footprint(lab) == before
    proc = podnet("--lab", lab.name, "ipam", "check")
    assert proc.returncode == 0, proc.stdout + proc.stderr  # exit 0: the check found nothing


def copy_of(path: str, dest: str) -> None:
    """A consistent copy of a live store (SQLite's online backup)."""
    with contextlib.closing(sqlite3.connect(path)) as src, contextlib.closing(sqlite3.connect(dest)) as dst:
        src.backup(dst)
    with contextlib.closing(sqlite3.connect(dest)) as dst:
        dst.execute("PRAGMA journal_mode=WAL")


def test_store_removed_under_running_agents(lab):
    path = store_path(lab)
    before = footprint(lab)
    keep = path + ".hardening-keep"
    with cross_node_ping(lab) as ping:
        os.link(path, keep)  # the same file under another name, to put back afterwards
        os.unlink(path)
        try:
            all_not_ready(lab, "was removed")
            cli_fails(["--datastore", lab.datastore_url, "get", "nodes"], f"no embedded datastore at {path}")
            cli_fails(["--lab", lab.name, "ipam", "check"], "no embedded datastore")
            cli_fails(["--lab", lab.name, "doctor"], "no embedded datastore")
            assert not os.path.exists(path), "a read-only command created a new store"
            add_fails_cleanly(lab, "was removed")
        finally:
            os.rename(keep, path)
        restart_agents(lab)
    assert ping.sent > 20 and ping.lost == 0, (ping.sent, ping.lost)
    no_leaks(lab, before)


def test_store_replaced_under_running_agents(lab, tmp_path):
    path = store_path(lab)
    before = footprint(lab)
    copy = str(tmp_path / "restored.db")
    copy_of(path, copy)
    with cross_node_ping(lab) as ping:
        os.replace(copy, path)  # as a restore from backup does: a new file at the same path
        all_not_ready(lab, "was replaced")
        proc = podnet("--lab", lab.name, "doctor", "-o", "json")
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
        import json

        report = json.loads(proc.stdout)
        agents = [f for f in report["findings"] if f["check"] == "agent"]
        assert sorted(f["node"] for f in agents) == list(NODES), report["findings"]
        assert all("was replaced" in f["problem"] and f["severity"] == "error" for f in agents), agents
        # The CLI reads the file now at the path, which is a whole store.
        proc = podnet("--lab", lab.name, "get", "nodes")
        assert proc.returncode == 0 and "node-1" in proc.stdout, proc.stderr
        add_fails_cleanly(lab, "was replaced")
        restart_agents(lab)
    assert ping.sent > 20 and ping.lost == 0, (ping.sent, ping.lost)
    no_leaks(lab, before)


def test_store_damaged_under_running_agents(lab):
    path = store_path(lab)
    before = footprint(lab)
    with contextlib.closing(sqlite3.connect(path)) as conn:  # every page in the file, none only in the WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(path, "rb") as f:
        original = f.read()
    with cross_node_ping(lab) as ping:
        with open(path, "r+b") as f:  # in place: the same file, its content garbage
            f.write(os.urandom(len(original)))
        try:
            all_not_ready(lab, "is damaged")
            cli_fails(["--lab", lab.name, "get", "nodes"], "is damaged")
            cli_fails(["--lab", lab.name, "doctor"], "is damaged")
        finally:
            with open(path, "r+b") as f:
                f.write(original)
        # Repaired in place: the agents see it and are ready again without a restart.
        all_ready(lab)
    assert ping.sent > 20 and ping.lost == 0, (ping.sent, ping.lost)
    no_leaks(lab, before)


@contextlib.contextmanager
def immutable(path: str):
    """Read-only even for root (who ignores file modes)."""
    subprocess.run(["chattr", "+i", path], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", path], check=True)


def test_store_read_only_under_running_agents(lab, tmp_path):
    path = store_path(lab)
    before = footprint(lab)
    pool = tmp_path / "pool.yaml"
    pool.write_text("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: extra}\n"
                    "spec: {cidr: 10.99.0.0/16}\n")
    with cross_node_ping(lab) as ping:
        with immutable(path):
            all_not_ready(lab, "read-only")
            proc = podnet("--lab", lab.name, "apply", "-f", str(pool))
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert f"{path} cannot be written: {path} is not writable" in proc.stderr, proc.stderr
            assert "rollback" not in proc.stderr and "Traceback" not in proc.stderr
            proc = podnet("--lab", lab.name, "get", "ippools")  # reading still works
            assert proc.returncode == 0 and "extra" not in proc.stdout, proc.stderr
        all_ready(lab)
    assert ping.sent > 20 and ping.lost == 0, (ping.sent, ping.lost)
    no_leaks(lab, before)
