"""The installed plugin file: embedded bytecode when its interpreter matches, the source otherwise."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from podnet.cni import install
from podnet.cni import protocol as p
from podnet.errors import PodnetError

SHIM = os.path.join(os.path.dirname(install.__file__), "shim.py")
INTERPRETER = install.fastest_interpreter()


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
