"""Hostile CNI requests about namespaces and input: the node's own namespace offered as a pod's, files that
block on open, malformed identifiers, slow and oversized requests, private mount namespaces.

Every case goes through tests/integration/hostile.py: exact code, one JSON error object, no traceback,
nothing on the node changed, the bystander pod still reachable. One lab for the module (names `pnt-hn…`).

The machine's own namespace (PID 1's) is offered too, since the agent must recognise it; those cases
name CNI_IFNAME `lo`, which the kernel refuses to delete or to create twice, so that even a regressed
agent could not harm this machine (the harness still checks the machine's eth0 and default route).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import uuid

import pytest

from podnet.cni import install, wire
from tests.integration import kernel
from tests.integration.hostile import Hostile, assert_error, config, hostile_lab

INVALID_ENVIRONMENT, CONTAINER_UNKNOWN, DECODE_FAILURE, INVALID_CONFIG, TRY_AGAIN_LATER = 4, 3, 6, 7, 11
PREV = {"cniVersion": "1.0.0", "interfaces": [], "ips": []}
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module", params=install.KINDS)
def hostile(request):
    """Every case against both plugin executables (the static one and the Python shim): each opens
    CNI_NETNS itself, so each must refuse what is no pod's namespace without blocking."""
    if request.param == "static" and not os.access(install.STATIC_PLUGIN, os.X_OK):
        proc = subprocess.run(["make", "-C", REPO, "--no-print-directory", "plugin"], capture_output=True, text=True)
        assert proc.returncode == 0, f"building the static plugin failed: {proc.stdout}{proc.stderr}"
    with hostile_lab("pnt-hn") as h:
        install.install_plugin(h.lab.bin_dir, kind=request.param)
        yield h


@pytest.fixture(scope="module")
def files(hostile, tmp_path_factory):
    """Paths that are anything but a network namespace, made once for the module."""
    d = tmp_path_factory.mktemp("hostile-ns")
    os.mkfifo(d / "fifo")
    (d / "empty").write_text("")
    (d / "text").write_text("net:[4026531840]\n")
    (d / "dir").mkdir()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(d / "sock"))
    os.symlink(d / "fifo", d / "to-fifo")
    os.symlink(d / "loop", d / "loop")
    os.symlink(f"/run/netns/{hostile.lab.node_netns('node-1')}", d / "to-node")
    sleeper = subprocess.Popen(["ip", "netns", "exec", hostile.lab.node_netns("node-1"), "sleep", "600"])
    yield {"d": str(d), "sleeper": sleeper.pid}
    sleeper.kill()
    sleeper.wait()
    sock.close()


def with_prev(command: str) -> dict:
    return config(prevResult=PREV) if command == "CHECK" else config()


COMMANDS = ["ADD", "DEL", "CHECK"]


# The harness itself: it must see damage, or every case below proves nothing ---------------------------


def test_the_harness_sees_a_changed_node(hostile: Hostile):
    ns = hostile.lab.node_netns("node-1")
    with pytest.raises(AssertionError, match="gained"):
        with hostile.unharmed():
            subprocess.run(["ip", "-n", ns, "route", "add", "198.51.100.0/24", "dev", "eth0"], check=True)
    subprocess.run(["ip", "-n", ns, "route", "del", "198.51.100.0/24", "dev", "eth0"], check=True)


def test_the_harness_sees_a_leaked_allocation(hostile: Hostile):
    env = hostile.env("ADD", hostile.sandbox())
    with pytest.raises(AssertionError, match="allocation"):
        with hostile.unharmed():
            assert hostile.run(env).code == 0
    assert hostile.run(dict(env, CNI_COMMAND="DEL")).code == 0


# Class 1: the node's own network namespace, however it is spelled -------------------------------------

NODE_SPELLINGS = {
    "proc-self": lambda h, f: "/proc/self/ns/net",
    "proc-thread-self": lambda h, f: "/proc/thread-self/ns/net",
    "run-netns-node": lambda h, f: f"/run/netns/{h.lab.node_netns('node-1')}",
    "run-netns-dotdot": lambda h, f: f"/run/netns/../netns/{h.lab.node_netns('node-1')}",
    "double-slash": lambda h, f: f"//run//netns//{h.lab.node_netns('node-1')}",
    "symlink-to-node": lambda h, f: f"{f['d']}/to-node",
    "agent-pid": lambda h, f: f"/proc/{h.lab._node('node-1')['pid']}/ns/net",
    "other-process-in-node": lambda h, f: f"/proc/{f['sleeper']}/ns/net",
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("spelling", sorted(NODE_SPELLINGS))
def test_the_nodes_own_namespace_is_refused(hostile, files, spelling, command):
    """CNI_IFNAME=eth0: the node's underlay interface, which a DEL would have deleted."""
    netns = NODE_SPELLINGS[spelling](hostile, files)
    hostile.refused(hostile.env(command, netns, ifname="eth0"), INVALID_ENVIRONMENT, with_prev(command),
                    msg="node's own network namespace")


@pytest.mark.parametrize("command", COMMANDS)
def test_the_nodes_namespace_by_bare_name_is_refused(hostile, command):
    """A bare name is never looked up in /run/netns, by any command (the spec says a path)."""
    name = hostile.lab.node_netns("node-1")
    hostile.refused(hostile.env(command, name, ifname="eth0"), INVALID_ENVIRONMENT, with_prev(command),
                    msg="absolute path")


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("path", ["/proc/1/ns/net", "/proc/1/task/1/ns/net"])
def test_the_machines_namespace_is_refused(hostile, command, path):
    """PID 1's namespace is the host's. Where PID 1 may not be inspected (a container whose init is not
    dumpable) the plugin cannot even open it; refused either way."""
    ifname = "eth0" if command == "CHECK" else "lo"  # see the module docstring
    run = hostile.refused(hostile.env(command, path, ifname=ifname), INVALID_ENVIRONMENT, with_prev(command),
                          msg="CNI_NETNS")
    assert "node's own network namespace" in run.json["msg"] or "cannot be opened" in run.json["msg"], run


@pytest.mark.parametrize("command", ["DEL", "CHECK"])
def test_a_live_pods_container_id_with_the_nodes_namespace_touches_neither(hostile, command):
    """The bystander's own container ID and interface, but the node's namespace: refused, the pod lives on."""
    pod = hostile.bystander
    env = hostile.env(command, f"/run/netns/{hostile.lab.node_netns('node-1')}", cid=pod["container_id"],
                      ifname=pod["ifname"])
    hostile.refused(env, INVALID_ENVIRONMENT, with_prev(command))


@pytest.mark.parametrize("command,code", [("ADD", 101), ("CHECK", 104), ("DEL", 0)])
def test_a_live_pods_namespace_under_another_container_id(hostile, command, code):
    """A pod's namespace is no node's, so it is not refused as such; but a stranger's ADD of eth0 there
    finds eth0 taken (101), its CHECK finds no attachment (104), its DEL has nothing to remove: the pod
    is untouched either way."""
    env = hostile.env(command, f"/run/netns/{hostile.bystander['netns']}", ifname="eth0")
    if code:
        hostile.refused(env, code, with_prev(command))
    else:
        hostile.accepted(env)


def test_the_node_keeps_its_default_route_and_underlay_after_the_attempts(hostile):
    ns = hostile.lab.node_netns("node-1")
    assert kernel.link(ns, "eth0") is not None
    assert [r for r in kernel.routes(ns) if r["dst"] == "default"][0]["dev"] == "eth0"


# Classes 2 and 5: files that are no network namespace, and names that are no path ----------------------

NOT_NETNS = {
    # id: (path maker, code for ADD and CHECK, code for DEL or 0 when DEL succeeds as best effort)
    "fifo": (lambda f: f"{f['d']}/fifo", 4, 0),
    "symlink-to-fifo": (lambda f: f"{f['d']}/to-fifo", 4, 0),
    "empty-file": (lambda f: f"{f['d']}/empty", 4, 0),
    "file-with-nsfs-text": (lambda f: f"{f['d']}/text", 4, 0),
    "directory": (lambda f: f"{f['d']}/dir", 4, 0),
    "root-directory": (lambda f: "/", 4, 0),
    "run-netns-directory": (lambda f: "/run/netns", 4, 0),
    "unix-socket": (lambda f: f"{f['d']}/sock", 4, 0),
    "dev-null": (lambda f: "/dev/null", 4, 0),
    "dev-zero": (lambda f: "/dev/zero", 4, 0),
    "block-device": (lambda f: "/dev/loop0", 4, 0),
    "proc-file": (lambda f: "/proc/self/status", 4, 0),
    "plugin-stdin-pipe": (lambda f: "/proc/self/fd/0", 4, 0),
    "symlink-loop": (lambda f: f"{f['d']}/loop", 4, 4),
    "mount-namespace": (lambda f: "/proc/self/ns/mnt", 4, 4),
    "uts-namespace": (lambda f: "/proc/self/ns/uts", 4, 4),
    "pid-namespace": (lambda f: "/proc/self/ns/pid", 4, 4),
    "user-namespace": (lambda f: "/proc/self/ns/user", 4, 4),
    "ipc-namespace": (lambda f: "/proc/self/ns/ipc", 4, 4),
    "cgroup-namespace": (lambda f: "/proc/self/ns/cgroup", 4, 4),
    "missing": (lambda f: "/run/netns/pnt-hn-no-such-sandbox", 3, 0),
    "missing-with-newline": (lambda f: "/run/netns/pnt-hn-x\n", 3, 0),
    "below-a-file": (lambda f: f"{f['d']}/empty/x", 3, 0),
    "relative": (lambda f: "sandbox-1", 4, 4),
    "dot-relative": (lambda f: "./run/netns/x", 4, 4),
    "dotdot-relative": (lambda f: "../run/netns/x", 4, 4),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("kind", sorted(NOT_NETNS))
def test_what_is_no_network_namespace(hostile, files, kind, command):
    make, code, del_code = NOT_NETNS[kind]
    env = hostile.env(command, make(files), ifname="eth0")
    expected = del_code if command == "DEL" else code
    if expected:
        hostile.refused(env, expected, with_prev(command), msg="CNI_NETNS")
    else:
        hostile.accepted(env, with_prev(command))  # DEL of a sandbox that is gone: best effort, no error


@pytest.mark.parametrize("command", ["ADD", "CHECK"])
def test_an_empty_netns_is_invalid_for(hostile, command):
    hostile.refused(hostile.env(command, ""), INVALID_ENVIRONMENT, with_prev(command), msg="CNI_NETNS")


def test_del_without_a_netns_still_cleans_up(hostile):
    """The runtime's second DEL after the sandbox is gone: nothing to do, success."""
    netns = hostile.sandbox()
    env = hostile.env("ADD", netns)
    with hostile.unharmed():
        assert hostile.run(env).code == 0
        assert hostile.run(dict(env, CNI_COMMAND="DEL", CNI_NETNS="")).code == 0
        assert hostile.run(dict(env, CNI_COMMAND="DEL")).code == 0


def test_del_after_the_sandbox_vanished_releases_everything(hostile):
    name = f"{hostile.lab.name}-gone{uuid.uuid4().hex[:4]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    env = hostile.env("ADD", f"/run/netns/{name}")
    with hostile.unharmed():
        assert hostile.run(env).code == 0
        subprocess.run(["ip", "netns", "del", name], check=True)
        run = hostile.run(dict(env, CNI_COMMAND="DEL"))
        assert run.code == 0, run


def test_64_fifos_at_once_do_not_stall_the_agent(hostile, files):
    """Each is refused by the plugin's look at the file (no open), so a DEL is served among them."""
    fifo = f"{files['d']}/fifo"
    with hostile.unharmed():
        threads, results = [], []
        for _ in range(64):
            env = hostile.env("ADD", fifo)
            t = threading.Thread(target=lambda e=env: results.append(hostile.run(e)))
            t.start()
            threads.append(t)
        assert hostile.run(hostile.env("DEL", hostile.sandbox())).code == 0
        for t in threads:
            t.join()
        for run in results:
            assert_error(run, INVALID_ENVIRONMENT)
        assert len(results) == 64


# Class 5: identifiers in the spec's character sets, interface names in bytes --------------------------

BAD_IDS = ["abc\n", "abc\r", "ab c", "-abc", "_abc", ".abc", "ab/c", "ab\tc", "abc\u00e9", "\u0661\u0662", "ab;c"]


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("cid", BAD_IDS, ids=[repr(c) for c in BAD_IDS])
def test_container_ids_outside_the_spec_set(hostile, cid, command):
    env = hostile.env(command, hostile.sandbox(), cid=cid)
    hostile.refused(env, INVALID_ENVIRONMENT, with_prev(command), msg="CNI_CONTAINERID")


BAD_NAMES = ["k8s-pod-network\n", "net work", "-net", "net/1", "n\u00e9t", "net\r\n"]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n) for n in BAD_NAMES])
def test_network_names_outside_the_spec_set(hostile, name):
    hostile.refused(hostile.env("ADD", hostile.sandbox()), INVALID_CONFIG, dict(config(), name=name),
                    msg="network name")


BAD_IFNAMES = ["\u00e9" * 10, "\u00e9" * 8, "x" * 14 + "\u00e9", "eth0\n", ".", "..", "a/b", "a:b", "eth 0",
               "eth\u00a00", "x" * 16]


@pytest.mark.parametrize("command", ["ADD", "DEL"])
@pytest.mark.parametrize("ifname", BAD_IFNAMES, ids=[repr(n) for n in BAD_IFNAMES])
def test_interface_names_the_kernel_would_refuse(hostile, ifname, command):
    hostile.refused(hostile.env(command, hostile.sandbox(), ifname=ifname), INVALID_ENVIRONMENT,
                    msg="CNI_IFNAME")


def test_an_interface_name_of_15_bytes_in_7_characters_works(hostile):
    netns = hostile.sandbox()
    ifname = "\u00e9" * 7 + "x"
    env = hostile.env("ADD", netns, ifname=ifname)
    with hostile.unharmed():
        run = hostile.run(env)
        assert run.code == 0, run
        assert kernel.link(os.path.basename(netns), ifname) is not None
        assert hostile.run(dict(env, CNI_COMMAND="DEL")).code == 0


def test_a_config_over_the_limit_is_a_permanent_error(hostile):
    big = json.dumps(dict(config(), padding="x" * (wire.MAX_CONFIG + 1))).encode()
    hostile.refused(hostile.env("ADD", hostile.sandbox()), INVALID_CONFIG, big, msg="over the limit")


def test_a_config_that_is_not_utf8_is_a_decode_failure(hostile):
    hostile.refused(hostile.env("ADD", hostile.sandbox()), DECODE_FAILURE, b'{"cniVersion": "1.0.0", "name": "\xff"}')


# Class 6: mount namespaces -----------------------------------------------------------------------------

PRIVATE_MOUNT_SCRIPT = r"""
set -e
dir=$(mktemp -d /tmp/pnt-hn-private.XXXXXX)
mount -t tmpfs pnt-hn "$dir"
touch "$dir/pod"
unshare --net="$dir/pod" ip link set lo up
export CNI_NETNS="$dir/pod"
CNI_COMMAND=ADD "$PLUGIN" < "$CONFIG" > "$OUT/add.json" || echo "add failed $?" >> "$OUT/errors"
# (a new pod's first packets may wait for the agent's filter layer to learn its endpoint)
ok=; for i in 1 2 3 4 5 6 7 8 9 10; do
    nsenter --net="$dir/pod" ping -c 1 -W 1 "$PEER" > "$OUT/ping.txt" 2>&1 && ok=1 && break
done
[ -n "$ok" ] || echo "ping failed" >> "$OUT/errors"
nsenter --net="$dir/pod" ip -j addr show eth0 > "$OUT/addr.json"
CNI_COMMAND=DEL "$PLUGIN" < "$CONFIG" > "$OUT/del.json" || echo "del failed $?" >> "$OUT/errors"
umount "$dir/pod"
umount "$dir"
rmdir "$dir"
"""


def test_a_namespace_only_the_runtimes_mount_namespace_sees(hostile, tmp_path):
    """The runtime (here a shell in a private mount namespace, like podman under `ip netns exec`) mounts
    the pod's namespace where the agent cannot see it; ADD, the pod's traffic and DEL all work."""
    (tmp_path / "config.json").write_text(json.dumps(config()))
    env = hostile.env("ADD", "unused")
    del env["CNI_NETNS"], env["CNI_COMMAND"]
    env.update(PLUGIN=os.path.join(hostile.lab.bin_dir, "podnet"), CONFIG=str(tmp_path / "config.json"),
               OUT=str(tmp_path), PEER=hostile.peer["ip"], PATH=os.environ["PATH"])
    with hostile.unharmed():
        proc = subprocess.run(["ip", "netns", "exec", hostile.lab.node_netns("node-1"), "unshare", "--mount",
                               "--propagation", "private", "sh", "-c", PRIVATE_MOUNT_SCRIPT],
                              env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "errors").exists(), (tmp_path / "errors").read_text() + (tmp_path / "add.json").read_text()
    result = json.loads((tmp_path / "add.json").read_text())
    ip = result["ips"][0]["address"].split("/")[0]
    assert ip in [a["local"] for a in json.loads((tmp_path / "addr.json").read_text())[0]["addr_info"]]
    assert "1 received" in (tmp_path / "ping.txt").read_text()
    assert (tmp_path / "del.json").read_text().strip() == ""
