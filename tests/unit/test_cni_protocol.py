"""The CNI contract without root: parsing requests, version rules, results per version, error JSON."""

from __future__ import annotations

import importlib.util
import json
import os
from types import SimpleNamespace

import pytest

from podnet.cni import handler, wire
from podnet.cni import protocol as p
from podnet.cni.protocol import CniError


def conf(version="1.0.0", **extra) -> bytes:
    return json.dumps({"cniVersion": version, "name": "k8s-pod-network", "type": "podnet", **extra}).encode()


def env(command="ADD", **extra) -> dict:
    base = {"CNI_COMMAND": command, "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"}
    base.update(extra)
    return {k: v for k, v in base.items() if v is not None}


def error_of(fn, *args) -> CniError:
    with pytest.raises(CniError) as e:
        fn(*args)
    return e.value


# Requests --------------------------------------------------------------------------------------------


def test_a_good_add_request():
    req = p.parse_request(env(), conf())
    assert (req.command, req.container_id, req.netns, req.ifname, req.version, req.network) == (
        "ADD", "abc123", "/run/netns/x", "eth0", "1.0.0", "k8s-pod-network")
    assert (req.pod_namespace, req.pod_name) == ("default", "web")
    assert req.ipv4_pools() is None


@pytest.mark.parametrize("command,missing", [
    ("ADD", "CNI_CONTAINERID"), ("ADD", "CNI_NETNS"), ("ADD", "CNI_IFNAME"), ("ADD", "CNI_PATH"),
    ("CHECK", "CNI_NETNS"), ("DEL", "CNI_CONTAINERID"), ("DEL", "CNI_IFNAME"), ("GC", "CNI_PATH"),
])
def test_required_variables_per_command(command, missing):
    stdin = conf("1.1.0", prevResult={"ips": [], "interfaces": []}, **{p.VALID_ATTACHMENTS: []})
    e = error_of(p.parse_request, env(command, **{missing: None}), stdin)
    assert e.code == p.INVALID_ENVIRONMENT and e.msg == f"{missing} is required for {command} but is not set"


def test_del_needs_no_netns_and_no_path():
    req = p.parse_request(env("DEL", CNI_NETNS="", CNI_PATH=None), conf())
    assert req.netns == "" and req.command == "DEL"


def test_status_needs_nothing_but_the_command():
    req = p.parse_request({"CNI_COMMAND": "STATUS"}, conf("1.1.0"))
    assert req.command == "STATUS"


@pytest.mark.parametrize("cid", ["a", "A-b_c.d", "0" * 64])
def test_valid_container_ids(cid):
    assert p.parse_request(env(CNI_CONTAINERID=cid), conf()).container_id == cid


@pytest.mark.parametrize("cid", ["-a", "_a", ".a", "a/b", "a b", "a:b", "ä"])
def test_invalid_container_ids(cid):
    e = error_of(p.parse_request, env(CNI_CONTAINERID=cid), conf())
    assert e.code == p.INVALID_ENVIRONMENT and "CNI_CONTAINERID" in e.msg


@pytest.mark.parametrize("ifname", ["x" * 16, ".", "..", "a/b", "a:b", "a b", "a\tb"])
def test_invalid_interface_names(ifname):
    e = error_of(p.parse_request, env(CNI_IFNAME=ifname), conf())
    assert e.code == p.INVALID_ENVIRONMENT and "CNI_IFNAME" in e.msg


def test_an_interface_name_of_15_characters_is_fine():
    assert p.parse_request(env(CNI_IFNAME="x" * 15), conf()).ifname == "x" * 15


@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL"])
def test_netns_must_be_a_path_for_every_command(command):
    """One rule for the three: a bare name is not looked up in /run/netns by any of them."""
    req = p.parse_request(env(command, CNI_NETNS="mynetns"), conf(prevResult={}) if command == "CHECK" else conf())
    given = handler.GivenNetns.resolve(req.netns)
    assert given.token == wire.NETNS_RELATIVE and given.fd is None
    e = error_of(handler.resolve_netns, SimpleNamespace(node_netns=frozenset()), req, given)
    assert e.code == p.INVALID_ENVIRONMENT and "absolute path" in e.msg


@pytest.mark.parametrize("value", ["abc\n", "abc\r", "\nabc", "ab c", "ab/c", "-abc", "_abc", ".abc", "abc\u00e9",
                                   "\u0661\u0662", "abc\x00"])
def test_container_ids_outside_the_spec_set(value):
    e = error_of(p.parse_request, env(CNI_CONTAINERID=value), conf())
    assert e.code == p.INVALID_ENVIRONMENT and "CNI_CONTAINERID" in e.msg


@pytest.mark.parametrize("value", ["net\n", "net\r\n", "n et", "net/1", "-net", "n\u00e9t", "\u0663net"])
def test_network_names_outside_the_spec_set(value):
    e = error_of(p.parse_request, env(), conf(name=value))
    assert e.code == p.INVALID_CONFIG and "network name" in e.msg


def test_cniversion_with_a_trailing_newline():
    assert error_of(p.parse_request, env(), conf(cniVersion="1.0.0\n")).code == p.INVALID_CONFIG


@pytest.mark.parametrize("ifname", ["\u00e9" * 8, "\u00e9" * 10, "x" * 14 + "\u00e9", "\u20ac" * 5 + "x",
                                    "eth\u00a00", "eth\u20030", "eth0\n", "\v", "eth\x0c0"])
def test_interface_names_are_measured_in_bytes_and_refuse_any_white_space(ifname):
    e = error_of(p.parse_request, env(CNI_IFNAME=ifname), conf())
    assert e.code == p.INVALID_ENVIRONMENT and "CNI_IFNAME" in e.msg


@pytest.mark.parametrize("ifname", ["\u00e9" * 7 + "x", "x" * 13 + "\u00e9", "eth0.100", "net-1_a"])
def test_interface_names_of_at_most_15_bytes(ifname):
    assert p.parse_request(env(CNI_IFNAME=ifname), conf()).ifname == ifname


@pytest.mark.parametrize("command", ["", "add", "FROB", "INIT"])
def test_unknown_commands(command):
    assert error_of(p.parse_request, env(command), conf()).code == p.INVALID_ENVIRONMENT


def test_version_needs_no_valid_config():
    req = p.parse_request({"CNI_COMMAND": "VERSION"}, b"not json at all")
    assert req.command == "VERSION" and req.config == {}
    assert p.parse_request({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}').config["cniVersion"] == "0.4.0"


# Versions --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", p.SUPPORTED_VERSIONS)
def test_every_supported_version_parses(version):
    assert p.parse_request(env(), conf(version)).version == version


@pytest.mark.parametrize("version,code", [("0.0.1", 1), ("0.5.0", 1), ("2.0.0", 1), ("1.1", 7), ("", 7),
                                          ("v1.0.0", 7)])
def test_unsupported_versions(version, code):
    assert error_of(p.parse_config, conf(version)).code == code


@pytest.mark.parametrize("command,since", [("CHECK", "0.4.0"), ("GC", "1.1.0"), ("STATUS", "1.1.0")])
def test_commands_need_their_spec_version(command, since):
    extra = {"prevResult": {"ips": [], "interfaces": []}, p.VALID_ATTACHMENTS: []}
    for version in p.SUPPORTED_VERSIONS:
        stdin = conf(version, **extra)
        if p.at_least(version, since):
            assert p.parse_request(env(command), stdin).command == command
        else:
            e = error_of(p.parse_request, env(command), stdin)
            assert e.code == p.INCOMPATIBLE_VERSION and version in e.msg and since in e.details


def test_version_helpers():
    assert p.version_tuple("0.3.1") == (0, 3, 1)
    assert p.at_least("1.1.0", "1.0.0") and not p.at_least("0.4.0", "1.0.0") and p.at_least("1.0.0", "1.0.0")
    assert p.version_of(conf("0.3.1")) == "0.3.1"
    assert p.version_of(conf("9.9.9")) == p.LATEST
    assert p.version_of(b"garbage") == p.LATEST
    assert p.version_of(b"[1]") == p.LATEST
    assert p.version_result("0.4.0") == {"cniVersion": "0.4.0", "supportedVersions": list(p.SUPPORTED_VERSIONS)}
    assert p.version_result("7.0.0")["cniVersion"] == p.LATEST


# The network configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw,code,text", [
    (b"", 6, "not valid JSON"),
    (b"{", 6, "not valid JSON"),
    (b"\xff", 6, "not valid JSON"),
    (b"[]", 6, "JSON object"),
    (b'"x"', 6, "JSON object"),
    pytest.param(b"[" * 100000, 6, "nested too deeply", id="deeply-nested"),
    (json.dumps({"name": "n", "type": "podnet"}).encode(), 7, "cniVersion is missing"),
    (json.dumps({"cniVersion": 1, "name": "n", "type": "podnet"}).encode(), 7, "version string"),
    (json.dumps({"cniVersion": "1.0.0", "type": "podnet"}).encode(), 7, "'name'"),
    (json.dumps({"cniVersion": "1.0.0", "name": "n"}).encode(), 7, "'type'"),
    (json.dumps({"cniVersion": "1.0.0", "name": "n", "plugins": []}).encode(), 7, "conflist"),
    (json.dumps({"cniVersion": "1.0.0", "name": "-n", "type": "podnet"}).encode(), 7, "network name"),
])
def test_config_decoding_and_required_fields(raw, code, text):
    e = error_of(p.parse_config, raw)
    assert e.code == code and text in e.msg


@pytest.mark.parametrize("extra,code,text", [
    ({"mtu": "1450"}, 7, "'mtu' must be a whole number, not a string"),
    ({"mtu": 1450.0}, 7, "'mtu' must be a whole number"),
    ({"mtu": False}, 7, "not a boolean"),
    ({"mtu": 67}, 7, "outside 68-65535"),
    ({"mtu": 65536}, 7, "outside 68-65535"),
    ({"ipam": []}, 7, "'ipam' must be an object"),
    ({"dns": "x"}, 7, "'dns' must be an object"),
    ({"dns": {"search": [1]}}, 7, "dns.search"),
    ({"dns": {"domain": 5}}, 7, "dns.domain"),
    ({"runtimeConfig": "x"}, 7, "'runtimeConfig'"),
    ({"prevResult": []}, 7, "'prevResult'"),
    ({"args": 1}, 7, "'args'"),
    ({"capabilities": []}, 7, "'capabilities'"),
    ({"agent_socket": 5}, 7, "'agent_socket'"),
    ({"datastore": 5}, 7, "'datastore'"),
    ({p.VALID_ATTACHMENTS: {}}, 7, "must be a list"),
    ({"ipam": {"type": "host-local"}}, 7, "not supported"),
    ({"ipam": {"ipv4_pools": "a"}}, 7, "ipam.ipv4_pools must be a list"),
    ({"ipam": {"ipv4_pools": [""]}}, 7, "ipam.ipv4_pools must be a list"),
    ({"ipam": {"ipv4_pools": ["fd00::/64"]}}, 7, "IPv6 network"),
    ({"ipam": {"assign_ipv4": "yes"}}, 7, "assign_ipv4 must be"),
    ({"ipam": {"assign_ipv4": "false"}}, 7, "leaves no address"),
    ({"ipam": {"assign_ipv4": "false", "assign_ipv6": "false"}}, 7, "leaves no address"),
    ({"ipam": {"assign_ipv6": "maybe"}}, 7, "assign_ipv6 must be"),
    ({"ipam": {"ipv6_pools": ["10.0.0.0/8"]}}, 7, "IPv4 network"),
])
def test_config_field_validation(extra, code, text):
    e = error_of(p.parse_config, conf(**extra))
    assert e.code == code and text in e.msg, e.msg


@pytest.mark.parametrize("extra", [
    {"ipam": {"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "false"}},
    {"ipam": {"assign_ipv6": "true", "ipv6_pools": ["fd00::/48"]}},
    {"ipam": {"assign_ipv4": "false", "assign_ipv6": True}},
    {"ipam": {"type": "podnet-ipam", "ipv4_pools": ["default-ipv4-ippool", "10.244.0.0/16"]}},
    {"ipam": {}},
    {"mtu": 1450, "dns": {"nameservers": ["10.96.0.10"], "search": ["a"], "options": ["ndots:5"], "domain": "d"}},
    {"runtimeConfig": {"portMappings": [], "bandwidth": {}}, "capabilities": {"portMappings": True}},
    {"args": {"cni": {"x": 1}}, "cni.dev/other": 1, "anything": [1, 2]},
])
def test_accepted_configs(extra):
    assert p.parse_config(conf(**extra))["cniVersion"] == "1.0.0"


def test_add_with_prev_result_means_podnet_is_not_first():
    e = error_of(p.parse_request, env(), conf(prevResult={"ips": []}))
    assert e.code == p.INVALID_CONFIG and "first plugin" in e.msg


def test_del_ignores_prev_result_and_check_validates_it():
    assert p.parse_request(env("DEL"), conf(prevResult={"ips": "anything"})).command == "DEL"
    assert error_of(p.parse_request, env("CHECK"), conf()).msg.startswith("CHECK needs prevResult")
    assert "prevResult.ips" in error_of(p.parse_request, env("CHECK"), conf(prevResult={"ips": [{"x": 1}]})).msg
    assert "prevResult.interfaces" in error_of(p.parse_request, env("CHECK"),
                                               conf(prevResult={"ips": [], "interfaces": [1]})).msg
    req = p.parse_request(env("CHECK"), conf(prevResult={"ips": [{"address": "10.0.0.1/32"}]}))
    assert req.prev_result == {"ips": [{"address": "10.0.0.1/32"}]}


def test_gc_attachments():
    att = [{"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "net1"}]
    req = p.parse_request({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, conf("1.1.0", **{p.VALID_ATTACHMENTS: att}))
    assert req.valid_attachments == {("a", "eth0"), ("b", "net1")}
    assert req.container_id == "" and req.ifname == ""
    for bad in ([{"containerID": "a"}], [{"containerID": "", "ifname": "eth0"}], ["a"], [{"containerID": 1,
                                                                                        "ifname": "e"}]):
        stdin = conf("1.1.0", **{p.VALID_ATTACHMENTS: bad})
        e = error_of(p.parse_request, {"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, stdin)
        assert e.code == p.INVALID_CONFIG
    e = error_of(p.parse_request, {"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, conf("1.1.0"))
    assert e.code == p.INVALID_CONFIG and p.VALID_ATTACHMENTS in e.msg


def test_pools_from_args_win_over_the_config():
    stdin = conf(ipam={"ipv4_pools": ["a"]})
    assert p.parse_request(env(), stdin).ipv4_pools() == ["a"]
    req = p.parse_request(env(CNI_ARGS="IgnoreUnknown=1;IPV4POOLS=b, c"), stdin)
    assert req.ipv4_pools() == ["b", "c"]


# CNI_ARGS --------------------------------------------------------------------------------------------


def test_args_parsing():
    assert p.parse_args("") == {}
    assert p.parse_args("K8S_POD_NAME=a=b;;K8S_POD_NAMESPACE=") == {"K8S_POD_NAME": "a=b", "K8S_POD_NAMESPACE": ""}
    assert p.parse_args("IgnoreUnknown=1;FOO=bar")["FOO"] == "bar"
    for value in ("1", "true", "True", "TRUE"):
        assert p.parse_args(f"IgnoreUnknown={value};X=1")["X"] == "1"


@pytest.mark.parametrize("text,fragment", [
    ("FOO=bar", "unknown keys: FOO"),
    ("IgnoreUnknown=0;FOO=bar", "unknown keys: FOO"),
    ("IgnoreUnknown=false;FOO=bar", "unknown keys: FOO"),
    ("IgnoreUnknown=maybe", "not a boolean"),
    ("word", "not KEY=VALUE"),
    ("=v", "not KEY=VALUE"),
    ("IgnoreUnknown=1;IP=10.0.0.x", "not an IP address"),
    ("IP=10.0.0.1,10.0.0.2", "two IPv4 addresses"),
    ("IgnoreUnknown=1;IPV6POOLS=x;FOO=1", None),
])
def test_args_errors(text, fragment):
    if fragment is None:
        assert p.parse_args(text)["FOO"] == "1"
        return
    e = error_of(p.parse_args, text)
    assert e.code == p.INVALID_ENVIRONMENT and fragment in e.msg


def test_infra_container_id_must_match():
    cid = "abc123"
    assert p.parse_request(env(CNI_ARGS=f"K8S_POD_INFRA_CONTAINER_ID={cid}"), conf()).container_id == cid
    e = error_of(p.parse_request, env(CNI_ARGS="K8S_POD_INFRA_CONTAINER_ID=zzz"), conf())
    assert e.code == p.INVALID_ENVIRONMENT and "conflicts" in e.msg


# Results and errors ----------------------------------------------------------------------------------


RESULT = p.Result(host_ifname="cali0123456789a", host_mac="ee:ee:ee:ee:ee:ee", pod_ifname="eth0",
                  pod_mac="02:00:00:00:00:01", sandbox="/run/netns/x", mtu=1450, ips=["10.244.0.5/32"],
                  routes=[{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])


@pytest.mark.parametrize("version", [v for v in p.SUPPORTED_VERSIONS if p.at_least(v, "0.3.0")])
def test_result_shape_per_version(version):
    out = RESULT.to_json(version)
    json.dumps(out)
    assert out["cniVersion"] == version
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}] and out["dns"] == {}
    host_if, pod_if = out["interfaces"]
    assert pod_if["sandbox"] == "/run/netns/x" and "sandbox" not in host_if
    [ip] = out["ips"]
    assert ip["address"] == "10.244.0.5/32" and out["interfaces"][ip["interface"]] is pod_if
    assert ("version" in ip) == (version in ("0.3.0", "0.3.1", "0.4.0"))
    if "version" in ip:
        assert ip["version"] == "4"
    assert ("mtu" in pod_if) == ("mtu" in host_if) == (version == "1.1.0")


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
def test_result_shape_before_0_3_0_is_ip4_and_ip6(version):
    dual = p.Result(**{**RESULT.__dict__, "ips": ["10.244.0.5/32", "fd00::5/128"],
                       "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0", "gw": "fe80::1"}]})
    assert dual.to_json(version) == {
        "cniVersion": version,
        "ip4": {"ip": "10.244.0.5/32", "routes": [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]},
        "ip6": {"ip": "fd00::5/128", "routes": [{"dst": "::/0", "gw": "fe80::1"}]},
        "dns": {},
    }


def test_result_gateway_only_when_given():
    assert "gateway" not in RESULT.to_json("1.0.0")["ips"][0]
    with_gw = p.Result(**{**RESULT.__dict__, "gateway": "169.254.1.1"})
    assert with_gw.to_json("1.0.0")["ips"][0]["gateway"] == "169.254.1.1"


def test_error_json():
    e = CniError(p.INVALID_CONFIG, "bad mtu", "use a number")
    assert e.to_json("0.4.0") == {"cniVersion": "0.4.0", "code": 7, "msg": "bad mtu", "details": "use a number"}
    assert CniError(11, "later").to_json("1.1.0") == {"cniVersion": "1.1.0", "code": 11, "msg": "later"}
    assert str(e) == "bad mtu (use a number)"
    assert p.error_json(50, "x") == {"cniVersion": p.LATEST, "code": 50, "msg": "x"}


def test_codes_are_defined_once_and_distinct():
    codes = {n: v for n in dir(p) if n.isupper() and isinstance(v := getattr(p, n), int)}
    assert len(set(codes.values())) == len(codes)
    assert p.SPEC_CODES == {1, 2, 3, 4, 5, 6, 7, 11, 50, 51}
    assert all(c >= 100 for c in p.PODNET_CODES)


# The shim repeats a few constants (it imports nothing from podnet): they must agree ---------------------


def _shim():
    path = os.path.join(os.path.dirname(p.__file__), "shim.py")
    spec = importlib.util.spec_from_file_location("podnet_shim_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shim_constants_match_the_protocol():
    shim = _shim()
    assert json.loads(shim.SUPPORTED) == list(p.SUPPORTED_VERSIONS)
    assert shim.LATEST == p.LATEST
    assert (shim.INVALID_ENVIRONMENT, shim.TRY_AGAIN_LATER, shim.STATUS_NOT_READY) == (
        p.INVALID_ENVIRONMENT, p.TRY_AGAIN_LATER, p.STATUS_NOT_READY)


@pytest.mark.parametrize("raw,version", [
    (b'{"cniVersion": "0.3.1"}', "0.3.1"),
    (b'{"cniVersion":"1.1.0","name":"n"}', "1.1.0"),
    (b'{"cniVersion": "0"}', p.LATEST),  # a prefix of a supported version is not one
    (b'{"cniVersion": "3.1"}', p.LATEST),
    (b'{"cniVersion": "9.9.9"}', p.LATEST),
    (b'{"cniVersion": 1}', p.LATEST),
    (b"", p.LATEST),
    (b'{"cniVersion"', p.LATEST),
])
def test_shim_reads_the_version_without_json(raw, version):
    assert _shim()._version_of(raw) == version


def test_a_request_waits_for_the_allocator_no_later_than_its_deadline():
    import threading
    import time

    lock = threading.Lock()
    req = p.parse_request(env(), conf())
    req.deadline = time.monotonic() + 0.05
    with lock:  # another allocator holds it
        e = error_of(lambda: handler._within_deadline(lock, req).__enter__())
    assert e.code == p.TRY_AGAIN_LATER and "in time" in e.msg
    with handler._within_deadline(lock, req):  # free: taken at once, even past the deadline
        assert lock.locked()
    assert not lock.locked()
