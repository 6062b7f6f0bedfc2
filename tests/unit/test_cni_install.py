"""The installed plugin file: embedded bytecode when its interpreter matches, the source otherwise."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from podnet.cni import install
from podnet.cni import protocol as p
from podnet.errors import PodnetError

SHIM = os.path.join(os.path.dirname(install.__file__), "shim.py")
INTERPRETER = install.fastest_interpreter()
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def static_built():
    """The static plugin, built by `make plugin` if it is not yet (musl-tools, from make deps)."""
    if not os.access(install.STATIC_PLUGIN, os.X_OK):
        proc = subprocess.run(["make", "-C", REPO, "--no-print-directory", "plugin"], capture_output=True, text=True)
        assert proc.returncode == 0, f"building the static plugin failed: {proc.stdout}{proc.stderr}"
    return install.STATIC_PLUGIN


def _install(tmp_path, kind: str) -> str:
    return install.install_plugin(str(tmp_path), interpreter=INTERPRETER if kind == "python" else None, kind=kind)


def _shim_source() -> str:
    with open(SHIM) as f:
        return f.read()


def _version(plugin: str) -> tuple[int, dict | None, bytes]:
    proc = subprocess.run([plugin], input=b'{"cniVersion": "0.4.0"}', env={"CNI_COMMAND": "VERSION"},
                          capture_output=True, timeout=30)
    try:
        return proc.returncode, json.loads(proc.stdout), proc.stderr
    except ValueError:
        return proc.returncode, None, proc.stdout + proc.stderr


def _write(tmp_path, text: str) -> str:
    path = tmp_path / "podnet"
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def test_the_plugin_runs_its_embedded_bytecode_when_the_interpreter_matches(tmp_path):
    version, code = install.compile_with(INTERPRETER, _shim_source(), str(tmp_path / "podnet"))
    # The source beside the bytecode would fail: answering VERSION proves the bytecode ran.
    plugin = _write(tmp_path, install.render_plugin(INTERPRETER, "raise SystemExit(7)", version, code))
    rc, out, err = _version(plugin)
    assert rc == 0, err
    assert out == {"cniVersion": "0.4.0", "supportedVersions": list(p.SUPPORTED_VERSIONS)}


def test_the_plugin_compiles_its_source_when_the_interpreter_changed_version(tmp_path):
    # Bytecode tagged for another Python (and unreadable): the plugin must not touch it.
    plugin = _write(tmp_path, install.render_plugin(INTERPRETER, _shim_source(), 0x20F, b"not marshal data"))
    rc, out, err = _version(plugin)
    assert rc == 0, err
    assert out == {"cniVersion": "0.4.0", "supportedVersions": list(p.SUPPORTED_VERSIONS)}


def test_install_plugin_writes_an_executable_that_answers(tmp_path):
    path = install.install_plugin(str(tmp_path), interpreter=INTERPRETER)
    assert open(path).readline() == f"#!{INTERPRETER} -IS\n"
    assert os.access(path, os.X_OK) and not os.path.exists(path + ".tmp")
    rc, out, err = _version(path)
    assert rc == 0 and out["cniVersion"] == "0.4.0", err


def test_a_plugin_that_cannot_be_compiled_is_a_clear_error(tmp_path):
    with pytest.raises(PodnetError, match="could not compile the CNI plugin"):
        install.compile_with(INTERPRETER, "def broken(:\n", str(tmp_path / "podnet"))


class _FakeAgent:
    """Answers every request on an abstract socket with a fixed reply; records what it was sent."""

    def __init__(self, address: str):
        import socket
        import threading

        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind("\0" + address.lstrip("@"))
        self.sock.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as f:
                head = f.readline().split()
                self.requests.append(f.read(int(head[1]) + int(head[2])))
                conn.sendall(b'0\n{"cniVersion": "1.0.0", "ips": []}')

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("kind", install.KINDS)
@pytest.mark.parametrize("spelling", ['"agent_socket": "{a}"', '"agent_socket":"{a}"', '"agent_socket" :\n "{e}"'])
def test_the_plugin_dials_the_agent_socket_named_in_its_config(tmp_path, spelling, kind, static_built):
    address = f"@pnt-shim-{uuid.uuid4().hex[:8]}"
    escaped = "".join(f"\\u{ord(c):04x}" if c == "-" else c for c in address)  # the json fallback
    agent = _FakeAgent(address)
    try:
        plugin = _install(tmp_path, kind)
        config = '{"cniVersion": "1.0.0", "name": "n", "type": "podnet", ' + \
            spelling.format(a=address, e=escaped) + '}'
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
               "CNI_PATH": str(tmp_path)}
        proc = subprocess.run([plugin], input=config.encode(), env=env, capture_output=True, timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout) == {"cniVersion": "1.0.0", "ips": []}
        assert len(agent.requests) == 1 and b"CNI_CONTAINERID=c1" in agent.requests[0]
    finally:
        agent.close()


def test_an_interpreter_missing_here_gives_a_plugin_that_compiles_its_source(tmp_path, caplog):
    """install-cni in an init container names the host's interpreter, which the container may lack."""
    path = install.install_plugin(str(tmp_path), interpreter="/nonexistent/python3")
    text = open(path).read()
    assert text.startswith("#!/nonexistent/python3 -IS\n") and "sys.hexversion >> 16 == 0x0:" in text
    assert "embed its bytecode" in caplog.text
    # The same file run by a real interpreter takes the source path and answers.
    (tmp_path / "podnet").write_text(text.replace("/nonexistent/python3", INTERPRETER, 1))
    rc, out, err = _version(str(tmp_path / "podnet"))
    assert rc == 0 and out["cniVersion"] == "0.4.0", err


# Chained plugins: installed or found, or left out with a reason ---------------------------------------------


def _install_cni(tmp_path, *flags: str) -> tuple[subprocess.CompletedProcess, dict, str]:
    import sys

    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    proc = subprocess.run([sys.executable, "-m", "podnet", "install-cni", "--bin-dir", str(bin_dir), "--conf-dir",
                           str(conf_dir), *flags], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PODNET_CNI_INTERPRETER=INTERPRETER))
    conflist = json.loads((conf_dir / "10-podnet.conflist").read_text()) if proc.returncode == 0 else {}
    return proc, conflist, str(bin_dir)


def test_a_chained_plugin_found_nowhere_is_not_chained_and_the_warning_says_why(tmp_path):
    empty = tmp_path / "no-plugins"
    empty.mkdir()
    proc, conflist, bin_dir = _install_cni(tmp_path, "--plugin-dir", str(empty))
    assert proc.returncode == 0, proc.stderr
    assert [x["type"] for x in conflist["plugins"]] == ["podnet"]
    assert sorted(os.listdir(bin_dir)) == ["podnet"]
    warning = proc.stderr.strip()
    assert warning.startswith("warning: the portmap plugin is neither in ") and str(empty) in warning
    assert "does not chain it" in warning and "hostPort" in warning and "Traceback" not in warning


def test_a_chained_plugin_is_copied_from_a_plugin_dir_and_chained(tmp_path):
    source = tmp_path / "reference"
    source.mkdir()
    (source / "portmap").write_text("#!/bin/sh\necho portmap\n")
    (source / "portmap").chmod(0o755)
    proc, conflist, bin_dir = _install_cni(tmp_path, "--plugin-dir", str(tmp_path / "none"), "--plugin-dir",
                                           str(source))
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    assert [x["type"] for x in conflist["plugins"]] == ["podnet", "portmap"]
    copied = os.path.join(bin_dir, "portmap")
    assert os.access(copied, os.X_OK) and open(copied).read() == "#!/bin/sh\necho portmap\n"
    assert f"chained portmap: copied from {source}" in proc.stdout


def test_a_chained_plugin_already_in_the_bin_dir_is_kept_as_it_is(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "portmap").write_text("#!/bin/sh\n# the admin's own\n")
    (bin_dir / "portmap").chmod(0o755)
    empty = tmp_path / "no-plugins"
    empty.mkdir()
    proc, conflist, _ = _install_cni(tmp_path, "--plugin-dir", str(empty))
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    assert [x["type"] for x in conflist["plugins"]] == ["podnet", "portmap"]
    assert (bin_dir / "portmap").read_text() == "#!/bin/sh\n# the admin's own\n"
    assert "chained portmap: present" in proc.stdout


# The static plugin (cni-plugin/podnet-cni.c) -------------------------------------------------------------


def test_both_plugins_send_the_same_request_and_repeat_the_answer(tmp_path, static_built):
    address = f"@pnt-wire-{uuid.uuid4().hex[:8]}"
    agent = _FakeAgent(address)
    config = b'{"cniVersion": "1.0.0", "name": "n", "type": "podnet"}'
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAME=\u00e9", "PODNET_AGENT_SOCKET": address, "OTHER": "x"}
    outs = []
    try:
        for kind in install.KINDS:
            plugin = _install(tmp_path / kind, kind)
            proc = subprocess.run([plugin], input=config, env=env, capture_output=True, timeout=30)
            outs.append((proc.returncode, proc.stdout))
    finally:
        agent.close()
    assert outs[0] == outs[1] == (0, b'{"cniVersion": "1.0.0", "ips": []}')
    static_request, python_request = agent.requests
    assert static_request == python_request
    assert b"OTHER" not in static_request and static_request.endswith(config)


@pytest.mark.parametrize("kind", install.KINDS)
def test_both_plugins_answer_alike_without_an_agent(tmp_path, kind, static_built):
    plugin = _install(tmp_path, kind)
    config = b'{"cniVersion": "0.4.0", "name": "n", "type": "podnet"}'
    address = f"@pnt-none-{uuid.uuid4().hex[:8]}"
    base = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
            "PODNET_AGENT_SOCKET": address}
    for command, code in (("ADD", p.TRY_AGAIN_LATER), ("STATUS", p.STATUS_NOT_READY)):
        proc = subprocess.run([plugin], input=config, env=dict(base, CNI_COMMAND=command), capture_output=True,
                              timeout=30)
        assert proc.returncode == 1 and proc.stderr == b""
        assert json.loads(proc.stdout) == {
            "cniVersion": "0.4.0", "code": code, "msg": "the podnet agent on this node is not reachable",
            "details": f"Connection refused at {address}; is `podnet agent` running on this node?"}
    proc = subprocess.run([plugin], input=config, env=dict(base, CNI_COMMAND="ADD", CNI_ARGS="K8S_POD_NAME=\udcff"),
                          capture_output=True, timeout=30)
    assert json.loads(proc.stdout)["code"] == p.INVALID_ENVIRONMENT
    rc, out, _ = _version(plugin)
    assert (rc, out) == (0, {"cniVersion": "0.4.0", "supportedVersions": list(p.SUPPORTED_VERSIONS)})


def test_the_static_plugin_is_static_and_installed_by_default_when_built(tmp_path, static_built, monkeypatch):
    monkeypatch.delenv(install.KIND_ENV, raising=False)
    monkeypatch.delenv(install.INTERPRETER_ENV, raising=False)
    assert install.plugin_kind() == "static"
    assert install.plugin_kind(interpreter="/usr/bin/python3") == "python"
    monkeypatch.setenv(install.KIND_ENV, "python")
    assert install.plugin_kind() == "python"
    monkeypatch.delenv(install.KIND_ENV)
    path = install.install_plugin(str(tmp_path))
    head = open(path, "rb").read()
    assert head[:4] == b"\x7fELF" and b"ld-linux" not in head  # no program interpreter: no libc needed
    assert open(path, "rb").read() == open(static_built, "rb").read() and os.access(path, os.X_OK)
    with pytest.raises(PodnetError, match="unknown CNI plugin kind"):
        install.plugin_kind("go")
