"""No traceback reaches a user: podnet's own errors print their message (exit 1), anything unexpected
prints one line naming the file that holds the traceback (exit 3)."""

from __future__ import annotations

import os
import re

import pytest

from podnet.cli import main as cli


def test_an_unexpected_error_prints_one_line_and_saves_the_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)

    def broken(args):
        raise RuntimeError("boom")

    monkeypatch.setattr("podnet.cli.cmd_resources.cmd_get", broken)
    code = cli.main(["--datastore", f"sqlite://{tmp_path}/x.db", "get", "nodes"])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_INTERNAL == 3
    assert "Traceback" not in out + err and len(err.splitlines()) == 1, err
    assert err.startswith("error: podnet failed unexpectedly: RuntimeError: boom")
    path = re.search(r"the traceback is in (\S+);", err).group(1)
    assert path.startswith(str(tmp_path))
    with open(path) as f:
        saved = f.read()
    assert "Traceback" in saved and "RuntimeError: boom" in saved and "get nodes" in saved


def test_a_missing_store_is_an_error_naming_it(capsys, tmp_path):
    for argv in (["get", "nodes"], ["ipam", "check"], ["ipam", "show"], ["describe", "node", "n1"],
                 ["delete", "ippool", "p"], ["label", "ippool", "p", "a=b"]):
        code = cli.main(["--datastore", f"sqlite://{tmp_path}/x.db", *argv])
        err = capsys.readouterr().err
        assert code == 1 and err == (f"error: there is no embedded datastore at {tmp_path}/x.db (the podnet agent "
                                     "creates it when it starts; name another store with --datastore or "
                                     "$PODNET_DATASTORE)\n"), (argv, err)
    assert not (tmp_path / "x.db").exists()
    assert cli.main(["--datastore", f"sqlite://{tmp_path}/x.db", "version"]) == 0
    assert "no embedded datastore" in capsys.readouterr().out and not (tmp_path / "x.db").exists()


def test_the_agent_names_why_it_cannot_start(monkeypatch, capsys):
    from podnet.agent import main as agent_main
    from podnet.datastore.api import DatastoreCorrupt

    def broken(args):
        agent_main.setup_logging("text", "info", args.node)
        raise DatastoreCorrupt("the embedded datastore /x.db is damaged: database disk image is malformed")

    monkeypatch.setattr(agent_main, "run", broken)
    assert cli.main(["agent", "--node", "n1", "--datastore", "sqlite:///x.db"]) == 1
    err = capsys.readouterr().err
    assert "the agent cannot run: the embedded datastore /x.db is damaged" in err and "Traceback" not in err


STORE_FAULTS = {
    "missing": lambda d: None,
    "a directory": lambda d: os.mkdir(d / "s.db"),
    "a text file": lambda d: (d / "s.db").write_text("not a database\n" * 100),
    "garbage": lambda d: (d / "s.db").write_bytes(os.urandom(8192)),
    "empty": lambda d: (d / "s.db").write_bytes(b""),
    "no such directory": lambda d: None,
}
COMMANDS = [["get", "nodes"], ["get", "ippools", "-o", "yaml"], ["get", "workloadendpoints"], ["ipam", "show"],
            ["ipam", "check"], ["ipam", "release", "--ip", "10.244.0.1"], ["describe", "node", "n1"], ["version"],
            ["doctor"], ["trace", "a", "b"], ["delete", "ippool", "p"], ["apply", "-f", "-"]]


@pytest.mark.parametrize("fault", sorted(STORE_FAULTS))
def test_no_command_shows_a_traceback_whatever_the_store_is(fault, tmp_path, capsys, monkeypatch):
    import io

    STORE_FAULTS[fault](tmp_path)
    path = tmp_path / ("nowhere/s.db" if fault == "no such directory" else "s.db")
    before = sorted(os.listdir(tmp_path))
    for argv in COMMANDS:
        monkeypatch.setattr("sys.stdin", io.StringIO("apiVersion: projectcalico.org/v3\nkind: IPPool\n"
                                                     "metadata: {name: p}\nspec: {cidr: 10.9.0.0/16}\n"))
        code = cli.main(["--datastore", f"sqlite://{path}", *argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err and code in (0, 1), (argv, code, out, err)
        if code:
            assert err.startswith("error: ") and "podnet failed unexpectedly" not in err, (argv, err)
        if argv[0] != "apply":  # only a command that writes resources may create the store
            assert sorted(os.listdir(tmp_path)) == before, (argv, os.listdir(tmp_path))
