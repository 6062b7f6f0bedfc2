"""podnet.dataplane.nftables, the agent's one nftables runner (libnftables in-process): it acts in the
namespace its thread is in, a refused transaction changes nothing and raises a typed error with nft's
words, and its output is what the nft binary prints."""

from __future__ import annotations

import subprocess
import threading

import pytest

from podnet.dataplane import nftables
from podnet.dataplane.nat import NatError, NatTable
from podnet.netns import entered
from tests.integration.conftest import unique


def _binary(ns: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def two_netns():
    names = [unique("nftlib-"), unique("nftlib-")]
    try:
        for n in names:
            subprocess.run(["ip", "netns", "add", n], check=True)
        yield names
    finally:
        nftables.release()  # this thread's context must not keep a namespace alive
        for n in names:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def test_the_library_is_what_runs():
    # The agent image and install-deps.sh install libnftables1; the fallback is for machines without it.
    assert nftables.using_library()


def test_a_context_acts_in_the_namespace_its_thread_is_in(two_netns):
    a, b = two_netns
    with entered(a):
        nftables.run("add table inet nftlib_a\n")
    with entered(b):
        nftables.run("add table inet nftlib_b\n")
        assert "nftlib_a" not in nftables.run(None, "list", "tables")
    assert _binary(a, "list", "tables").stdout == "table inet nftlib_a\n"
    assert _binary(b, "list", "tables").stdout == "table inet nftlib_b\n"
    # Back in a (the thread's context was replaced on each move); the root namespace was never touched.
    with entered(a):
        assert nftables.run(None, "list", "tables") == "table inet nftlib_a\n"
    root = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert "nftlib_a" not in root and "nftlib_b" not in root


def test_threads_keep_their_own_contexts(two_netns):
    errors: list[BaseException] = []

    def work(ns: str) -> None:
        try:
            with entered(ns):
                for i in range(20):
                    nftables.run(f"add table ip t{i}\nadd chain ip t{i} c\n")
        except BaseException as e:  # noqa: BLE001 (reported by the assertion below)
            errors.append(e)
        finally:
            nftables.release()

    threads = [threading.Thread(target=work, args=(ns,)) for ns in two_netns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for ns in two_netns:
        assert _binary(ns, "list", "tables").stdout.count("table ip t") == 20


def test_a_refused_transaction_changes_nothing_and_says_why(two_netns):
    ns = two_netns[0]
    with entered(ns):
        nftables.run("add table inet keep\nadd chain inet keep c\n")
        before = nftables.run(None, "list", "ruleset")
        with pytest.raises(nftables.NftError) as e:
            # Valid commands first, one the kernel refuses last: the whole buffer is one transaction.
            nftables.run("add table inet fresh\nadd chain inet fresh c\nflush chain inet keep c\n"
                         "add rule inet keep c jump nowhere\n")
        assert "Error:" in e.value.detail and "nowhere" in str(e.value)
        assert e.value.detail.startswith("line 4:")  # located as `nft -f` locates it
        assert nftables.run(None, "list", "ruleset") == before
        with pytest.raises(nftables.NftError) as e:
            nftables.run(None, "list", "table", "inet", "absent")
        assert "No such file or directory" in e.value.detail
        with pytest.raises(nftables.NftError, match="line 2:"):
            nftables.run("add table inet fresh\nthis is not nft\n")
    assert "fresh" not in _binary(ns, "list", "tables").stdout


def test_a_transaction_of_megabytes_runs_in_a_fresh_nft_process_as_one_transaction(two_netns, monkeypatch):
    ns = two_netns[0]
    started = []
    real_run = subprocess.run

    def spy(argv, *a, **kw):
        started.append(argv)
        return real_run(argv, *a, **kw)

    monkeypatch.setattr(nftables.subprocess, "run", spy)
    rules = "".join(f"add rule inet big c ip saddr 10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256} drop\n"
                    for i in range(nftables.BINARY_ABOVE // 40))
    assert len(rules) > nftables.BINARY_ABOVE
    with entered(ns):
        nftables.run("add table inet big\nadd chain inet big c\n" + rules)
        assert started and started[-1][-2:] == ["-f", "-"]  # the binary, fed on stdin
        count = nftables.run(None, "list", "chain", "inet", "big", "c").count(" drop")
        assert count == nftables.BINARY_ABOVE // 40
        with pytest.raises(nftables.NftError) as e:  # refused whole, and worded as the library's
            nftables.run("add table inet other\n" + rules + "add rule inet big c jump nowhere\n")
        assert e.value.detail.startswith("line ") and "nowhere" in str(e.value)
        assert "other" not in nftables.run(None, "list", "tables")
        started.clear()
        nftables.run("add table inet small\n")
        assert not started  # below the size: the library in this process
    _binary(ns, "delete", "table", "inet", "big")


def test_output_is_what_the_binary_prints(two_netns):
    ns = two_netns[0]
    with entered(ns):
        nftables.run("table inet t {\n set s { type ipv4_addr; elements = { 10.0.0.1, 10.0.0.2 } }\n"
                     " chain c { type filter hook input priority 0; ip saddr @s accept comment \"h1 x\"\n }\n}\n")
        for args in (("list", "ruleset"), ("-j", "list", "table", "inet", "t"), ("-a", "list", "table", "inet", "t")):
            assert nftables.run(None, *args) == _binary(ns, *args).stdout, args
        # A change made by someone else is seen (the context's cache follows the kernel's generation).
        assert _binary(ns, "add", "element", "inet", "t", "s", "{ 10.0.0.3 }").returncode == 0
        assert "10.0.0.3" in nftables.run(None, "list", "set", "inet", "t", "s")


def test_the_nat_table_uses_the_runner(two_netns):
    ns = two_netns[0]
    with entered(ns):
        table = NatTable(table="nftlibnat")
        assert table.listing() is None
        table.replace("table ip nftlibnat {\n chain post { type nat hook postrouting priority 100; }\n}\n")
        assert table.listing() == table.applied_listing == _binary(ns, "list", "table", "ip", "nftlibnat").stdout
        with pytest.raises(NatError, match="Error"):
            table.replace("table ip nftlibnat { chain post { bogus } }\n")
        assert table.listing() == table.applied_listing  # the refused replace left the old table
        table.delete()
        assert table.listing() is None


def test_without_the_library_the_binary_runs_and_the_log_says_so_once(two_netns, monkeypatch, caplog):
    monkeypatch.setattr(nftables, "SONAME", "libnftables-not-installed.so.0")
    monkeypatch.setattr(nftables, "_lib", None)
    monkeypatch.setattr(nftables, "_lib_state", "untried")
    ns = two_netns[0]
    with caplog.at_level("WARNING", logger="podnet.dataplane.nftables"), entered(ns):
        assert not nftables.using_library() and nftables.available()
        nftables.run("add table inet fallback\n")
        assert nftables.run(None, "list", "tables") == "table inet fallback\n"
        with pytest.raises(nftables.NftError) as e:
            nftables.run(None, "list", "table", "inet", "absent")
        assert "No such file or directory" in e.value.detail
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "cannot be loaded" in messages[0], messages  # said once, not per call
