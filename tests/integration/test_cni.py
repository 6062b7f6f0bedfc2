"""The CNI plugin driven exactly as a runtime drives it: environment plus config on stdin."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import uuid

import pytest

from podnet.lab.lab import Lab
from podnet.model.endpoint import endpoint_name
from tests.integration import kernel
from tests.integration.witness import footprint
from tests.integration.conftest import built_lab


@pytest.fixture(scope="module")
def lab():
    with built_lab("pnt-n", nodes=2, pods_per_node=1) as lab:
        yield lab


def config(version: str = "1.0.0", **extra) -> dict:
    return {"cniVersion": version, "name": "k8s-pod-network", "type": "podnet", "ipam": {"type": "podnet-ipam"},
            **extra}


def run_plugin(lab: Lab, node: str, env: dict, stdin: bytes, drop: tuple = ()) -> tuple[int, dict | None]:
    full = {"PATH": os.environ["PATH"], **env}
    for k in drop:
        full.pop(k, None)
    proc = subprocess.run(["ip", "netns", "exec", lab.node_netns(node), os.path.join(lab.bin_dir, "podnet")],
                          input=stdin, env=full, capture_output=True, timeout=60)
    out = proc.stdout.decode()
    return proc.returncode, (json.loads(out) if out.strip() else None)


def env_for(lab: Lab, command: str, netns: str, cid: str | None = None, ifname: str = "eth0",
            pod: str = "web") -> dict:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid or uuid.uuid4().hex, "CNI_NETNS": netns,
            "CNI_IFNAME": ifname, "CNI_PATH": lab.bin_dir,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}-{uuid.uuid4().hex[:4]}"}



def test_version(lab):
    code, out = run_plugin(lab, "node-1", {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"0.4.0"}')
    assert code == 0
    assert out["cniVersion"] == "0.4.0"
    assert set(out["supportedVersions"]) >= {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}


def test_add_check_del(lab, sandbox):
    before = footprint(lab)
    netns = sandbox()
    env = env_for(lab, "ADD", netns)
    code, result = run_plugin(lab, "node-1", env, json.dumps(config()).encode())
    assert code == 0, result
    host_if, pod_if = result["interfaces"]
    assert host_if["name"].startswith("cali") and host_if["mac"] == "ee:ee:ee:ee:ee:ee"
    assert pod_if == {"name": "eth0", "mac": kernel.link(os.path.basename(netns), "eth0")["address"],
                      "sandbox": netns}
    ip = result["ips"][0]["address"]
    assert ip.endswith("/32") and result["ips"][0]["interface"] == 1
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]
    after_add = footprint(lab)
    assert len(after_add["allocations"]) == len(before["allocations"]) + 1
    assert endpoint_name(env["CNI_CONTAINERID"], "eth0") in after_add["endpoints"]
    other = next(p for p in lab.status()["pods"] if p["node"] == "node-2")
    assert kernel.reaches(os.path.basename(netns), other["ip"])

    check = dict(env, CNI_COMMAND="CHECK")
    code, out = run_plugin(lab, "node-1", check, json.dumps(config(prevResult=result)).encode())
    assert code == 0, out

    delete = dict(env, CNI_COMMAND="DEL")
    code, out = run_plugin(lab, "node-1", delete, json.dumps(config(prevResult=result)).encode())
    assert code == 0, out
    assert footprint(lab) == before
    # DEL is idempotent, also without the namespace (containerd's second DEL).
    assert run_plugin(lab, "node-1", delete, json.dumps(config()).encode())[0] == 0
    assert run_plugin(lab, "node-1", dict(delete, CNI_NETNS=""), json.dumps(config()).encode())[0] == 0
    assert footprint(lab) == before


def test_check_reports_a_broken_pod(lab, sandbox):
    netns = sandbox()
    env = env_for(lab, "ADD", netns)
    code, result = run_plugin(lab, "node-1", env, json.dumps(config()).encode())
    assert code == 0
    lab.exec(os.path.basename(netns), "ip", "route", "del", "default", check=True)
    code, out = run_plugin(lab, "node-1", dict(env, CNI_COMMAND="CHECK"), json.dumps(config(prevResult=result)).encode())
    assert code != 0 and out["code"] == 104 and "default route" in out["msg"]
    assert run_plugin(lab, "node-1", dict(env, CNI_COMMAND="DEL"), json.dumps(config()).encode())[0] == 0


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_is_in_the_configs_version(lab, sandbox, version):
    before = footprint(lab)
    env = env_for(lab, "ADD", sandbox())
    code, result = run_plugin(lab, "node-1", env, json.dumps(config(version)).encode())
    assert code == 0, result
    assert result["cniVersion"] == version
    legacy = version < "1.0.0"
    assert ("version" in result["ips"][0]) == legacy
    assert ("mtu" in result["interfaces"][1]) == (version == "1.1.0")
    assert run_plugin(lab, "node-1", dict(env, CNI_COMMAND="DEL"), json.dumps(config(version)).encode())[0] == 0
    assert footprint(lab) == before


GOOD = config()
BAD_INPUTS = [
    # (id, env changes, dropped env vars, stdin, expected code)
    ("no-command", {}, ("CNI_COMMAND",), GOOD, 4),
    ("unknown-command", {"CNI_COMMAND": "FROB"}, (), GOOD, 4),
    ("no-containerid", {}, ("CNI_CONTAINERID",), GOOD, 4),
    ("no-netns", {}, ("CNI_NETNS",), GOOD, 4),
    ("no-ifname", {}, ("CNI_IFNAME",), GOOD, 4),
    ("no-path", {}, ("CNI_PATH",), GOOD, 4),
    ("bad-containerid", {"CNI_CONTAINERID": "bad/id"}, (), GOOD, 4),
    ("ifname-too-long", {"CNI_IFNAME": "eth0123456789012"}, (), GOOD, 4),
    ("unknown-arg", {"CNI_ARGS": "FOO=bar"}, (), GOOD, 4),
    ("malformed-arg", {"CNI_ARGS": "justaword"}, (), GOOD, 4),
    ("not-json", {}, (), b"{this is not json", 6),
    ("json-array", {}, (), b"[1, 2]", 6),
    ("unknown-version", {}, (), dict(GOOD, cniVersion="9.9.9"), 1),
    ("no-version", {}, (), {k: v for k, v in GOOD.items() if k != "cniVersion"}, 7),
    ("no-name", {}, (), {k: v for k, v in GOOD.items() if k != "name"}, 7),
    ("no-type", {}, (), {k: v for k, v in GOOD.items() if k != "type"}, 7),
    ("mtu-not-int", {}, (), dict(GOOD, mtu="1450"), 7),
    ("foreign-ipam", {}, (), dict(GOOD, ipam={"type": "host-local"}), 7),
    ("missing-netns", {"CNI_NETNS": "/run/netns/does-not-exist"}, (), GOOD, 3),
    ("unknown-pool", {}, (), dict(GOOD, ipam={"type": "podnet-ipam", "ipv4_pools": ["nope"]}), 102),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_spec_error_and_leaves_nothing(lab, sandbox, case):
    _, changes, drop, stdin, expected = case
    before = footprint(lab)
    env = dict(env_for(lab, "ADD", sandbox()), **changes)
    raw = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    code, out = run_plugin(lab, "node-1", env, raw, drop)
    assert code != 0
    assert out["code"] == expected, out
    assert out["msg"] and out["cniVersion"]
    assert footprint(lab) == before


def test_a_file_that_is_no_namespace_is_refused_before_anything_is_taken(lab, tmp_path):
    """The plugin finds a regular file is not a namespace before IPAM allocates: code 4 (CNI_NETNS)."""
    before = footprint(lab)
    not_a_netns = tmp_path / "not-a-netns"
    not_a_netns.write_text("")
    code, out = run_plugin(lab, "node-1", env_for(lab, "ADD", str(not_a_netns)), json.dumps(config()).encode())
    assert code != 0 and out["code"] == 4 and "CNI_NETNS" in out["msg"]
    assert footprint(lab) == before


def test_an_existing_interface_is_refused(lab, sandbox):
    netns = sandbox()
    first = env_for(lab, "ADD", netns)
    code, result = run_plugin(lab, "node-1", first, json.dumps(config()).encode())
    assert code == 0
    before = footprint(lab)
    code, out = run_plugin(lab, "node-1", env_for(lab, "ADD", netns), json.dumps(config()).encode())
    assert code != 0 and out["code"] == 101 and "eth0" in out["msg"]
    assert footprint(lab) == before
    other = next(p for p in lab.status()["pods"] if p["node"] == "node-2")
    assert kernel.reaches(os.path.basename(netns), other["ip"])
    assert run_plugin(lab, "node-1", dict(first, CNI_COMMAND="DEL"), json.dumps(config()).encode())[0] == 0


def test_no_agent_means_try_again_later(lab):
    """The plugin runs where no agent listens (the underlay namespace): code 11, not a hang or a traceback."""
    proc = subprocess.run(["ip", "netns", "exec", lab.underlay_netns, os.path.join(lab.bin_dir, "podnet")],
                          input=json.dumps(config()).encode(), capture_output=True, timeout=30,
                          env={"PATH": os.environ["PATH"], **env_for(lab, "ADD", "/run/netns/x")})
    out = json.loads(proc.stdout)
    assert proc.returncode != 0 and out["code"] == 11 and "agent" in out["msg"]


def test_twenty_concurrent_adds_get_distinct_reachable_addresses(lab, sandbox):
    before = footprint(lab)
    envs = [env_for(lab, "ADD", sandbox(), pod=f"burst{i}") for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda e: run_plugin(lab, "node-1", e, json.dumps(config()).encode()), envs))
    assert all(code == 0 for code, _ in results), [out for code, out in results if code]
    ips = [out["ips"][0]["address"].split("/")[0] for _, out in results]
    assert len(set(ips)) == 20
    remote = next(p for p in lab.status()["pods"] if p["node"] == "node-2")
    unreachable = [ip for ip in ips if not kernel.reaches(remote["netns"], ip)]
    assert not unreachable
    with concurrent.futures.ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(lambda e: run_plugin(lab, "node-1", dict(e, CNI_COMMAND="DEL"),
                                                   json.dumps(config()).encode())[0], envs))
    assert codes == [0] * 20
    assert footprint(lab) == before
