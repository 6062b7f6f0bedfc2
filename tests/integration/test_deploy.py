"""deploy/: what the DaemonSet, its ConfigMap and the image promise, checked against the code.

No cluster applies these files here, so each promise is checked where it can be: the probes name the
endpoints the agent serves, the ConfigMap's conflist template renders (through install-cni, as the init
container runs it) to a conflist podnet's plugin accepts, and the image installs every program the
agent runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from podnet.agent.metrics import DEFAULT_HEALTH_LISTEN, DEFAULT_METRICS_LISTEN

REPO = Path(__file__).resolve().parents[2]


def _manifests() -> dict:
    docs = [d for f in sorted((REPO / "deploy").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return {d["kind"]: d for d in docs}


def _pod_spec() -> dict:
    return _manifests()["DaemonSet"]["spec"]["template"]["spec"]


def test_probes_ask_the_agent_where_it_answers():
    [agent] = _pod_spec()["containers"]
    host, _, port = DEFAULT_HEALTH_LISTEN.rpartition(":")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = agent[probe]["httpGet"]
        assert (get["host"], str(get["port"]), get["path"]) == (host, port, path)
    ports = {p["name"]: p for p in agent["ports"]}
    assert str(ports["metrics"]["containerPort"]) == DEFAULT_METRICS_LISTEN.rpartition(":")[2]
    # The agent's flags leave both where the probes and Prometheus look.
    assert not any(a.startswith(("--health-listen", "--metrics-listen")) for a in agent.get("args", []))


def test_runs_on_linux_nodes_only_and_on_every_one_of_them():
    spec = _pod_spec()
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert {"operator": "Exists"} in spec["tolerations"]


def test_the_init_container_renders_the_configmaps_conflist(tmp_path):
    spec, config = _pod_spec(), _manifests()["ConfigMap"]["data"]
    [init] = spec["initContainers"]
    env = {e["name"]: e["valueFrom"] for e in init["env"]}
    assert env["CNI_NETWORK_CONFIG"]["configMapKeyRef"]["key"] == "cni_network_config"
    assert env["KUBERNETES_NODE_NAME"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # Run the init container's command as it would run, the host's directories in tmp_path.
    argv = [a.replace("/host/", f"{tmp_path}/") for a in init["command"][1:]]
    plugins = tmp_path / "reference"
    plugins.mkdir()
    (plugins / "portmap").write_text("#!/bin/sh\nexit 0\n")
    (plugins / "portmap").chmod(0o755)
    proc = subprocess.run([sys.executable, "-m", "podnet", *argv, "--plugin-dir", str(plugins)],
                          env=dict(os.environ, CNI_NETWORK_CONFIG=config["cni_network_config"],
                                   KUBERNETES_NODE_NAME="node-a"),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    written = json.loads((tmp_path / "etc/cni/net.d/10-podnet.conflist").read_text())
    podnet, portmap = written["plugins"]
    assert (podnet["type"], podnet["nodename"], podnet["mtu"], podnet["log_level"]) == ("podnet", "node-a", 0, "info")
    assert portmap["type"] == "portmap" and (tmp_path / "opt/cni/bin/portmap").exists()
    assert os.access(tmp_path / "opt/cni/bin/podnet", os.X_OK)
    # podnet's own parser takes the rendered network config as a runtime would hand it over.
    from podnet.cni import protocol

    net = dict(podnet, cniVersion=written["cniVersion"], name=written["name"])
    parsed = protocol.parse_config(json.dumps(net).encode())
    assert parsed["nodename"] == "node-a" and parsed["type"] == "podnet"


def test_a_template_that_does_not_start_with_podnet_is_refused(tmp_path):
    bad = json.dumps({"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": "portmap"}]})
    proc = subprocess.run([sys.executable, "-m", "podnet", "install-cni", "--bin-dir", str(tmp_path / "bin"),
                           "--conf-dir", str(tmp_path / "conf")], env=dict(os.environ, CNI_NETWORK_CONFIG=bad),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "first plugin is 'portmap'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "conf").exists()


def test_the_image_has_every_program_the_agent_runs():
    """Programs the dataplane looks up on PATH (shutil.which) must come with the image's packages."""
    packages = {"nft": "nftables", "ip": "iproute2"}
    used = set()
    for path in (REPO / "podnet").rglob("*.py"):
        if "/lab/" in str(path) or "/observe/" in str(path):
            continue  # tools of a learner's lab and of trace/capture, not the agent's
        used |= set(re.findall(r'shutil\.which\("([\w.-]+)"\)', path.read_text()))
    assert "nft" in used  # the NAT table at least
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    for program in sorted(used):
        assert program in packages, f"the agent runs {program}: say which Debian package provides it"
        assert re.search(rf"apt-get install[^\n]*\b{packages[program]}\b", final_stage), \
            f"the image lacks {packages[program]} ({program})"
    # Shared libraries the agent loads with ctypes likewise (libc comes with every image).
    libraries = {"libnftables.so.1": "libnftables1"}
    loaded = set()
    for path in (REPO / "podnet").rglob("*.py"):
        if "/lab/" not in str(path) and "/observe/" not in str(path):
            loaded |= set(re.findall(r'"(lib[\w-]+\.so[.\d]*)"', path.read_text())) - {"libc.so.6"}
    assert "libnftables.so.1" in loaded  # the filter and NAT tables
    for library in sorted(loaded):
        assert library in libraries, f"the agent loads {library}: say which Debian package provides it"
        assert re.search(rf"apt-get install[^\n]*\b{libraries[library]}\b", final_stage), \
            f"the image lacks {libraries[library]} ({library})"
    # The static plugin is built in the image, so install-cni installs it rather than the Python shim.
    assert "COPY --from=plugin /src/podnet/cni/podnet-cni" in final_stage
