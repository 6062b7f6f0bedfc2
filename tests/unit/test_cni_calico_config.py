"""Calico's CNI network configuration, field by field, read with Calico's meaning (issue 12)."""

from __future__ import annotations

import json

import pytest

from podnet.cni import protocol as p
from podnet.cni.protocol import CniError, StoreFacts

# The plugin entry of Calico's stock manifest (calico.yaml), as install-cni there fills it in.
CALICO_ENTRY = {
    "type": "calico",
    "log_level": "info",
    "log_file_path": "/var/log/calico/cni/cni.log",
    "datastore_type": "kubernetes",
    "nodename": "node-1",
    "mtu": 0,
    "ipam": {"type": "calico-ipam"},
    "policy": {"type": "k8s"},
    "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"},
}
SQLITE = StoreFacts("sqlite", path="/var/lib/podnet/podnet.db")
ETCD = StoreFacts("etcd", endpoints=("http://10.0.0.1:2379", "http://10.0.0.2:2379"))
ETCD_TLS = StoreFacts("etcd", endpoints=("https://10.0.0.1:2379",), client_cert=True)


def conf(version="1.0.0", **fields) -> dict:
    return {"cniVersion": version, "name": "k8s-pod-network", **CALICO_ENTRY, **fields}


def parse(config: dict) -> dict:
    return p.parse_config(json.dumps(config).encode())


def error_of(fn, *args) -> CniError:
    with pytest.raises(CniError) as e:
        fn(*args)
    return e.value


ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin"}


def request(config: dict, args: str = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web") -> p.Request:
    return p.parse_request(dict(ENV, CNI_ARGS=args), json.dumps(config).encode())


# Parsing -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", p.SUPPORTED_VERSIONS)
def test_calicos_stock_entry_parses_in_every_version(version):
    assert parse(conf(version))["mtu"] == 0


def test_every_version_the_reference_plugins_accept():
    assert set(p.SUPPORTED_VERSIONS) >= {"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"}


@pytest.mark.parametrize("mtu,ok", [(0, True), (68, True), (1450, True), (9000, True), (65535, True),
                                    (-1, False), (67, False), (65536, False)])
def test_mtu_zero_means_auto_and_others_are_checked(mtu, ok):
    if ok:
        assert parse(conf(mtu=mtu))["mtu"] == mtu
    else:
        assert "outside" in error_of(parse, conf(mtu=mtu)).msg


@pytest.mark.parametrize("field,value,fragment", [
    ("log_level", "loud", "not a log level"),
    ("log_level", 3, "must be a string"),
    ("log_file_max_size", -1, "must not be negative"),
    ("log_file_max_count", "10", "must be a whole number"),
    ("datastore_type", "etcd", "not a Calico datastore type"),
    ("etcd_endpoints", ["http://a:2379"], "must be a string"),
    ("etcd_scheme", "ftp", "neither http nor https"),
    ("etcd_ca_cert_file", 1, "must be a string"),
    ("nodename_file_optional", "yes", "must be a boolean"),
    ("policy", {"type": 1}, "policy.type must be a string"),
])
def test_calico_fields_are_type_checked(field, value, fragment):
    e = error_of(parse, conf(**{field: value}))
    assert e.code == p.INVALID_CONFIG and fragment in e.msg, e.msg


@pytest.mark.parametrize("level", ["ERROR", "WARNING", "warn", "INFO", "info", "DEBUG", "debug"])
def test_log_levels_as_calico_spells_them(level):
    assert parse(conf(log_level=level))["log_level"] == level


@pytest.mark.parametrize("ipam_type", ["calico-ipam", "podnet-ipam"])
def test_calico_ipam_is_podnets_ipam(ipam_type):
    parse(conf(ipam={"type": ipam_type}))
    assert "not supported" in error_of(parse, conf(ipam={"type": "host-local"})).msg


def test_pools_by_name_or_cidr_and_families():
    config = conf(ipam={"type": "calico-ipam", "assign_ipv4": "true", "assign_ipv6": "true",
                        "ipv4_pools": ["10.0.0.0/24", "default-ipv4-ippool"], "ipv6_pools": ["2001:db8::/120"]})
    req = request(config)
    assert req.assigns(4) and req.assigns(6)
    assert req.ipv4_pools() == ["10.0.0.0/24", "default-ipv4-ippool"] and req.ipv6_pools() == ["2001:db8::/120"]
    only6 = request(conf(ipam={"type": "calico-ipam", "assign_ipv4": "false", "assign_ipv6": "true"}))
    assert not only6.assigns(4) and only6.assigns(6)


# Fixed addresses ---------------------------------------------------------------------------------------


def test_cni_args_ip_asks_for_that_address():
    req = request(conf(), "IgnoreUnknown=1;IP=10.244.3.7")
    assert req.fixed_ips() == {4: "10.244.3.7"} and req.assigns(4) and not req.assigns(6)


def test_cni_args_ip_takes_one_address_per_family():
    req = request(conf(), "IP=10.244.3.7,fd00::7")
    assert req.fixed_ips() == {4: "10.244.3.7", 6: "fd00::7"} and req.assigns(4) and req.assigns(6)


def test_a_requested_v6_address_replaces_automatic_v4():
    # Calico's ipAddrs: exactly these addresses, whatever assign_ipv4 says.
    req = request(conf(args={"cni": {"ips": ["fd00::9"]}}))
    assert req.fixed_ips() == {6: "fd00::9"} and not req.assigns(4) and req.assigns(6)


def test_runtime_config_ips_and_args_cni_ips():
    assert request(conf(runtimeConfig={"ips": ["10.244.3.8/24"]})).fixed_ips() == {4: "10.244.3.8"}
    assert request(conf(args={"cni": {"ips": ["10.244.3.9"]}})).fixed_ips() == {4: "10.244.3.9"}
    # CNI_ARGS first, then runtimeConfig, then args: the runtime's word is the most specific.
    both = conf(runtimeConfig={"ips": ["10.244.3.8"]}, args={"cni": {"ips": ["10.244.3.9"]}})
    assert request(both).fixed_ips() == {4: "10.244.3.8"}
    assert request(both, "IP=10.244.3.10").fixed_ips() == {4: "10.244.3.10"}
    assert request(conf()).fixed_ips() == {}


@pytest.mark.parametrize("fields,code,fragment", [
    ({"runtimeConfig": {"ips": "10.0.0.1"}}, p.INVALID_CONFIG, "must be a list"),
    ({"runtimeConfig": {"ips": ["10.0.0.300"]}}, p.INVALID_CONFIG, "not an IP address"),
    ({"args": {"cni": {"ips": ["10.0.0.1", "10.0.0.2"]}}}, p.INVALID_CONFIG, "two IPv4 addresses"),
    ({"args": {"cni": {"ips": [7]}}}, p.INVALID_CONFIG, "not an IP address"),
])
def test_bad_fixed_addresses(fields, code, fragment):
    e = error_of(parse, conf(**fields))
    assert e.code == code and fragment in e.msg, e.msg


def test_bad_cni_args_ip_is_an_environment_error():
    e = error_of(request, conf(), "IP=pod-a")
    assert e.code == p.INVALID_ENVIRONMENT and "CNI_ARGS IP" in e.msg


# The datastore: the agent's decides; the config must agree ---------------------------------------------


def agreement(config: dict, agent: StoreFacts):
    return p.datastore_disagreement(config, agent)


def test_no_datastore_fields_agree_with_anything():
    for agent in (SQLITE, ETCD, ETCD_TLS):
        assert agreement({}, agent) == (None, [])


def test_kubernetes_datastore_is_accepted_and_reported():
    problem, warnings = agreement(CALICO_ENTRY, SQLITE)
    assert problem is None
    [w] = warnings
    assert "datastore_type kubernetes" in w and "/var/lib/podnet/podnet.db" in w


@pytest.mark.parametrize("config,agent", [
    ({"datastore_type": "etcdv3"}, ETCD),
    ({"etcd_endpoints": "http://10.0.0.2:2379"}, ETCD),
    ({"datastore_type": "etcdv3", "etcd_endpoints": "http://10.0.0.9:2379,http://10.0.0.1:2379"}, ETCD),
    ({"etcd_authority": "10.0.0.1:2379"}, ETCD),
    ({"etcd_endpoints": "https://10.0.0.1:2379", "etcd_ca_cert_file": "/etc/calico/ca.pem",
      "etcd_cert_file": "/etc/calico/cert.pem", "etcd_key_file": "/etc/calico/key.pem"}, ETCD_TLS),
    ({"etcd_authority": "10.0.0.1:2379", "etcd_scheme": "https"}, ETCD_TLS),
    ({"datastore": "sqlite:///var/lib/podnet/podnet.db?durable=false"}, SQLITE),
    ({"datastore": "etcd://10.0.0.2:2379"}, ETCD),
])
def test_etcd_fields_that_agree(config, agent):
    assert agreement(config, agent)[0] is None


@pytest.mark.parametrize("config,agent,fragment", [
    ({"datastore_type": "etcdv3"}, SQLITE, "names etcd (datastore_type etcdv3) but this node's agent uses the "
                                           "embedded store /var/lib/podnet/podnet.db"),
    ({"etcd_endpoints": "http://10.9.9.9:2379"}, ETCD, "share no member"),
    ({"etcd_endpoints": "http://10.0.0.1:2379", "etcd_ca_cert_file": "/ca.pem"}, ETCD, "with TLS (etcd_ca_cert_file)"),
    ({"etcd_endpoints": "http://10.0.0.1:2379"}, ETCD_TLS, "without TLS"),
    ({"datastore": "sqlite:///elsewhere.db"}, SQLITE, "is not this node's agent's"),
    ({"datastore": "etcd://10.0.0.1:2379"}, SQLITE, "is not this node's agent's"),
])
def test_etcd_fields_that_disagree_are_named(config, agent, fragment):
    problem, _ = agreement(config, agent)
    assert problem and fragment in problem, problem


def test_what_podnet_cannot_check_is_reported():
    _, warnings = agreement({"etcd_discovery_srv": "example.com"}, ETCD)
    assert any("etcd_discovery_srv example.com is not resolved" in w for w in warnings)
    _, warnings = agreement({"etcd_endpoints": "https://10.0.0.1:2379", "etcd_cert_file": "/c.pem"},
                            StoreFacts("etcd", endpoints=("https://10.0.0.1:2379",)))
    assert any("presents no client certificate" in w for w in warnings)


def test_nodename():
    assert request(conf()).nodename() == "node-1"
    assert request({k: v for k, v in conf().items() if k != "nodename"}).nodename() is None
