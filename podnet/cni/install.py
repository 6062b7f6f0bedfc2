"""Put the plugin where a runtime finds it, as a DaemonSet's init container would (deploy/podnet.yaml).

The plugin is a copy of shim.py behind a `#!<python3> -IS` line. The runtime runs it on the host, so the
interpreter must exist on the host: from an init container set PODNET_CNI_INTERPRETER (e.g. /usr/bin/python3)
rather than letting the container's own interpreter be picked.

The conflist is cniVersion 1.0.0 by default, not 1.1.0: containerd 1.6/1.7's libcni and the reference
plugins of Debian 12 (1.1.1) stop at 1.0.0 and refuse a list they cannot speak. podnet answers 0.3.0-1.1.0.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

PLUGIN_NAME = "podnet"


def fastest_interpreter() -> str:
    """The shim needs nothing but the standard library, so any Python 3.8+ runs it;
    the distribution's own build starts fastest (optimised, no version shims)."""
    for candidate in ("/usr/bin/python3", sys.executable):
        if candidate and os.access(candidate, os.X_OK):
            try:
                ok = subprocess.run([candidate, "-IS", "-c", "import sys; assert sys.version_info >= (3, 8)"],
                                    capture_output=True, timeout=10).returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                ok = False
            if ok:
                return candidate
    return sys.executable


INTERPRETER_ENV = "PODNET_CNI_INTERPRETER"


def install_plugin(bin_dir: str, interpreter: str | None = None, name: str = PLUGIN_NAME) -> str:
    """Write the plugin executable atomically; returns its path.

    The interpreter: the argument, else $PODNET_CNI_INTERPRETER, else the fastest one found here."""
    interpreter = interpreter or os.environ.get(INTERPRETER_ENV) or None
    source = os.path.join(os.path.dirname(__file__), "shim.py")
    with open(source) as f:
        body = f.read()
    os.makedirs(bin_dir, exist_ok=True)
    path = os.path.join(bin_dir, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        # One combined flag: the kernel passes everything after the path as a single argument.
        f.write(f"#!{interpreter or fastest_interpreter()} -IS\n" + body)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)
    return path


def default_conflist(name: str = "k8s-pod-network", cni_version: str = "1.0.0", chain_portmap: bool = True,
                     extra: dict | None = None, chain: list[dict] | None = None) -> dict:
    """podnet first (it creates the interface), then portmap for hostPort, as Calico's stock manifest does.

    `chain`: further plugin entries appended after those (e.g. bandwidth, tuning)."""
    plugin = {"type": PLUGIN_NAME, "ipam": {"type": "podnet-ipam"}}
    plugin.update(extra or {})
    plugins = [plugin]
    if chain_portmap:
        plugins.append({"type": "portmap", "snat": True, "capabilities": {"portMappings": True}})
    plugins += list(chain or [])
    return {"cniVersion": cni_version, "name": name, "plugins": plugins}


def install_conflist(conf_dir: str, conflist: dict, filename: str = "10-podnet.conflist") -> str:
    os.makedirs(conf_dir, exist_ok=True)
    path = os.path.join(conf_dir, filename)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(conflist, f, indent=2)
    os.replace(tmp, path)
    return path


def copy_reference_plugins(bin_dir: str, names=("loopback", "portmap", "bandwidth", "tuning"),
                           source_dir: str = "/usr/lib/cni") -> list[str]:
    copied = []
    for n in names:
        src = os.path.join(source_dir, n)
        if os.path.exists(src):
            shutil.copy2(src, os.path.join(bin_dir, n))
            copied.append(n)
    return copied
