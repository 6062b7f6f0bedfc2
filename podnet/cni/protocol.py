"""The CNI contract (spec 0.3.0 - 1.1.0): versions, error codes, the request as the runtime sends it, results.

Everything here is pure: it parses what the runtime sent (environment and the
network configuration on stdin) into a `Request`, or raises `CniError` with the
spec's code and a message that names the offending variable or field. The
agent-side handler does the work; the shim (kept separate and tiny) only
repeats the few codes it can produce itself (see shim.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from podnet.errors import PodnetError

# Every version the reference plugins accept; 0.1.0 and 0.2.0 (Calico's documented examples) get the old
# result shape (ip4/ip6).
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]
CHECK_SINCE = "0.4.0"  # CHECK arrived in 0.4.0
GC_SINCE = "1.1.0"  # GC and STATUS arrived in 1.1.0
STATUS_SINCE = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
VALID_ATTACHMENTS = "cni.dev/valid-attachments"

# Error codes: the CNI specification's (0-99) and podnet's own (100 and up). The one place they are defined.
INCOMPATIBLE_VERSION = 1  # the config's cniVersion is unknown, or too old for the command
UNSUPPORTED_FIELD = 2  # a field podnet understands but does not implement (message names key and value)
CONTAINER_UNKNOWN = 3  # the sandbox (CNI_NETNS) is gone: nothing to clean up
INVALID_ENVIRONMENT = 4  # a CNI_* variable is missing or invalid (message names it)
IO_FAILURE = 5
DECODE_FAILURE = 6  # stdin is not a JSON object
INVALID_CONFIG = 7  # the network configuration fails validation (message names the field)
TRY_AGAIN_LATER = 11  # the agent is starting, the datastore is away or busy: retry
STATUS_NOT_READY = 50  # STATUS: cannot serve ADD now
STATUS_NOT_READY_PERSISTENT = 51  # STATUS: and existing pods may have limited connectivity
INTERNAL = 100  # a bug: see the agent's log
INTERFACE_EXISTS = 101  # CNI_IFNAME already exists in the pod
IPAM_EXHAUSTED = 102  # no usable pool, or the pools are full for this node
DATAPLANE_FAILURE = 103  # the kernel refused part of the attachment
CHECK_FAILED = 104  # CHECK found the attachment differs from what ADD made
NODE_NOT_REGISTERED = 105  # this node has no Node record (deleted from the cluster): no addresses for it

SPEC_CODES = frozenset({INCOMPATIBLE_VERSION, UNSUPPORTED_FIELD, CONTAINER_UNKNOWN, INVALID_ENVIRONMENT, IO_FAILURE,
                        DECODE_FAILURE, INVALID_CONFIG, TRY_AGAIN_LATER, STATUS_NOT_READY,
                        STATUS_NOT_READY_PERSISTENT})
PODNET_CODES = frozenset({INTERNAL, INTERFACE_EXISTS, IPAM_EXHAUSTED, DATAPLANE_FAILURE, CHECK_FAILED})

# Environment variables each command needs (as the reference plugins' skel requires them; CNI_PATH is not
# required for DEL, which must succeed as best it can).
REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}

# Matched with fullmatch(): "$" would also match before a final newline, which the spec's set excludes.
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", re.ASCII)
_NETWORK_NAME = _CONTAINER_ID  # the spec words both the same way
_VERSION = re.compile(r"\d+\.\d+\.\d+", re.ASCII)
IFNAMSIZ = 16  # the kernel's, with the terminating NUL
KNOWN_ARGS = {"IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID",
              "IPV4POOLS", "IPV6POOLS", "IP"}
_BOOLS = {"1": True, "true": True, "0": False, "false": False}  # as libcni's UnmarshallableBool reads them


class CniError(PodnetError):
    """A failure reported to the runtime as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg, details or None)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> dict:
        return error_json(self.code, self.msg, self.details, version)


def error_json(code: int, msg: str, details: str = "", version: str = LATEST) -> dict:
    out = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        out["details"] = details
    return out


# Versions ---------------------------------------------------------------------------------------------


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def at_least(version: str, since: str) -> bool:
    return version_tuple(version) >= version_tuple(since)


def _older(a: str, b: str) -> bool:
    return not at_least(a, b)


def version_of(raw: bytes) -> str:
    """Best effort: the cniVersion to answer an error in, even for a config we cannot use."""
    try:
        v = json.loads(raw).get("cniVersion")
    except Exception:
        return LATEST
    return v if v in SUPPORTED_VERSIONS else LATEST


def version_result(version: str) -> dict:
    return {"cniVersion": version if version in SUPPORTED_VERSIONS else LATEST,
            "supportedVersions": list(SUPPORTED_VERSIONS)}


# The request ------------------------------------------------------------------------------------------


@dataclass
class Request:
    command: str
    container_id: str
    netns: str
    ifname: str
    args: dict
    path: str
    config: dict
    raw_config: bytes = b""
    netns_fd: int | None = None  # the pod's namespace as the agent resolved it (handler.resolve_netns)
    deadline: float | None = None  # time.monotonic() by which the agent should answer (wire.REQUEST_DEADLINE)

    @property
    def version(self) -> str:
        return self.config.get("cniVersion", LATEST)

    @property
    def network(self) -> str:
        return self.config.get("name", "")

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")

    @property
    def prev_result(self) -> dict | None:
        return self.config.get("prevResult")

    @property
    def valid_attachments(self) -> set[tuple[str, str]]:
        """GC: the (containerID, ifname) pairs the runtime still holds."""
        return {(a["containerID"], a["ifname"]) for a in self.config.get(VALID_ATTACHMENTS, [])}

    def assigns(self, version: int) -> bool:
        """Whether ADD gives the pod an address of this family: with fixed addresses, those families
        (as Calico's IPAM: a requested address replaces automatic assignment); else IPv4 unless
        turned off, IPv6 if asked."""
        fixed = self.fixed_ips()
        if fixed:
            return version in fixed
        value = self.config.get("ipam", {}).get(f"assign_ipv{version}", version == 4)
        return value in (True, "true")

    def fixed_ips(self) -> dict[int, str]:
        """The addresses the runtime asked for, by family (empty: podnet chooses). See fixed_addresses()."""
        return fixed_addresses(self.config, self.args)

    def nodename(self) -> str | None:
        """The node the config names (Calico's `nodename`); None: the agent's own node."""
        return self.config.get("nodename") or None

    def ipv6_pools(self) -> list[str] | None:
        if self.args.get("IPV6POOLS"):
            return [x.strip() for x in self.args["IPV6POOLS"].split(",") if x.strip()]
        return self.config.get("ipam", {}).get("ipv6_pools") or None

    def ipv4_pools(self) -> list[str] | None:
        """Pools to allocate from: CNI_ARGS IPV4POOLS wins over ipam.ipv4_pools; None means every usable pool."""
        if self.args.get("IPV4POOLS"):
            return [x.strip() for x in self.args["IPV4POOLS"].split(",") if x.strip()]
        return self.config.get("ipam", {}).get("ipv4_pools") or None


def parse_request(env: dict[str, str], stdin: bytes) -> Request:
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENVIRONMENT, "CNI_COMMAND is not set",
                       "set it to ADD, DEL, CHECK, VERSION, GC or STATUS")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND {command!r}",
                       "one of ADD, DEL, CHECK, VERSION, GC, STATUS")
    if command == "VERSION":
        return Request(command, "", "", "", {}, env.get("CNI_PATH", ""), _version_input(stdin), stdin)
    config = parse_config(stdin)
    version = config["cniVersion"]
    for var in REQUIRED_ENV[command]:
        if not env.get(var):
            raise CniError(INVALID_ENVIRONMENT, f"{var} is required for {command} but is not set")
    cid = env.get("CNI_CONTAINERID", "")
    if cid and not _CONTAINER_ID.fullmatch(cid):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_CONTAINERID {cid!r} is not a valid container id",
                       "letters, digits, '_', '.' and '-', starting with a letter or digit")
    ifname = env.get("CNI_IFNAME", "")
    if ifname:
        check_ifname(ifname)
    netns = env.get("CNI_NETNS", "")  # checked, and opened by the plugin, in handler.resolve_netns
    args = parse_args(env.get("CNI_ARGS", ""))
    infra = args.get("K8S_POD_INFRA_CONTAINER_ID")
    if infra and cid and infra != cid and command in ("ADD", "CHECK"):
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_ARGS K8S_POD_INFRA_CONTAINER_ID={infra} conflicts with CNI_CONTAINERID={cid}",
                       "both name the pod sandbox and must be equal")

    if command == "CHECK" and _older(version, CHECK_SINCE):
        raise CniError(INCOMPATIBLE_VERSION, f"CHECK is not supported by cniVersion {version}",
                       f"CHECK needs cniVersion {CHECK_SINCE} or later")
    if command in ("GC", "STATUS") and _older(version, GC_SINCE):
        raise CniError(INCOMPATIBLE_VERSION, f"{command} is not supported by cniVersion {version}",
                       f"{command} needs cniVersion {GC_SINCE} or later")
    if command == "ADD" and "prevResult" in config:
        raise CniError(INVALID_CONFIG, "podnet must be the first plugin of the chain, but ADD came with a prevResult",
                       "podnet creates the pod's interface and address; put it first in the conflist's plugins")
    if command == "CHECK":
        check_prev_result(config.get("prevResult"))
    if command == "GC":
        _check_attachments(config.get(VALID_ATTACHMENTS))
    return Request(command, cid, netns, ifname, args, env.get("CNI_PATH", ""), config, stdin)


def check_ifname(ifname: str) -> None:
    """As the kernel (dev_valid_name) and libcni's ValidateInterfaceName accept interface names: the
    length counts bytes (UTF-8), not characters."""
    if (len(ifname.encode("utf-8", "surrogateescape")) >= IFNAMSIZ or ifname in (".", "..") or "/" in ifname
            or ":" in ifname or any(c.isspace() for c in ifname)):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} is not a valid interface name",
                       f"at most {IFNAMSIZ - 1} bytes, no '/', ':' or white space, not '.' or '..'")


def _version_input(stdin: bytes) -> dict:
    try:
        d = json.loads(stdin) if stdin.strip() else {}
    except (ValueError, UnicodeDecodeError):
        return {}
    return d if isinstance(d, dict) else {}


# The network configuration ----------------------------------------------------------------------------


def parse_config(raw: bytes) -> dict:
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(DECODE_FAILURE, "the network configuration is not valid JSON", str(e)) from None
    except RecursionError:
        raise CniError(DECODE_FAILURE, "the network configuration is nested too deeply") from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "the network configuration must be a JSON object")
    if "cniVersion" not in config:
        raise CniError(INVALID_CONFIG, "cniVersion is missing from the network configuration")
    version = config["cniVersion"]
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise CniError(INVALID_CONFIG, f"cniVersion must be a version string such as \"1.0.0\", not {version!r}")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported",
                       f"podnet supports {', '.join(SUPPORTED_VERSIONS)}")
    if "plugins" in config and "type" not in config:
        raise CniError(INVALID_CONFIG, "got a network configuration list (conflist), not one plugin's configuration",
                       "the runtime must pass each plugin its own entry of \"plugins\", with name and cniVersion")
    for key in ("name", "type"):
        if not isinstance(config.get(key), str) or not config[key]:
            raise CniError(INVALID_CONFIG, f"network configuration field {key!r} must be a non-empty string")
    if not _NETWORK_NAME.fullmatch(config["name"]):
        raise CniError(INVALID_CONFIG, f"network name {config['name']!r} is not valid",
                       "letters, digits, '_', '.' and '-', starting with a letter or digit")
    _check_types(config)
    return config


# Calico's fields keep Calico's types and meaning (its cni-plugin's NetConf); podnet's own: agent_socket, datastore.
_TYPED = {"mtu": int, "nodename": str, "nodename_file": str, "nodename_file_optional": bool, "datastore_type": str,
          "datastore": str, "log_level": str, "log_file_path": str, "log_file_max_size": int,
          "log_file_max_age": int, "log_file_max_count": int, "agent_socket": str, "etcd_endpoints": str,
          "etcd_authority": str, "etcd_scheme": str, "etcd_discovery_srv": str, "etcd_key_file": str,
          "etcd_cert_file": str, "etcd_ca_cert_file": str, "policy": dict, "kubernetes": dict,
          "feature_control": dict, "container_settings": dict, "ipam": dict, "dns": dict, "args": dict,
          "runtimeConfig": dict, "prevResult": dict, "capabilities": dict, VALID_ATTACHMENTS: list}
# As Calico's plugin parses log_level (logrus); podnet maps them onto Python's levels.
LOG_LEVELS = {"panic": 50, "fatal": 50, "error": 40, "warn": 30, "warning": 30, "info": 20, "debug": 10,
              "trace": 10}
DATASTORE_TYPES = ("etcdv3", "kubernetes")


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "a number", bool: "a boolean",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _check_types(config: dict) -> None:
    for key, kind in _TYPED.items():
        if key in config and (not isinstance(config[key], kind) or (kind is int and isinstance(config[key], bool))):
            want = {int: "a whole number", str: "a string", dict: "an object", list: "a list", bool: "a boolean"}[kind]
            raise CniError(INVALID_CONFIG, f"network configuration field {key!r} must be {want}, "
                                           f"not {_kind(config[key])}")
    # mtu 0 means "work it out", as in Calico: the agent's pod MTU (the underlay's less VXLAN's 50 bytes).
    if "mtu" in config and config["mtu"] != 0 and not 68 <= config["mtu"] <= 65535:
        raise CniError(INVALID_CONFIG, f"mtu {config['mtu']} is outside 68-65535", "or 0 to let podnet choose")
    if "log_level" in config and config["log_level"].lower() not in LOG_LEVELS:
        raise CniError(INVALID_CONFIG, f"log_level {config['log_level']!r} is not a log level",
                       "one of ERROR, WARNING, INFO, DEBUG")
    for key in ("log_file_max_size", "log_file_max_age", "log_file_max_count"):
        if config.get(key, 0) < 0:
            raise CniError(INVALID_CONFIG, f"{key} must not be negative")
    if config.get("datastore_type", "etcdv3") not in DATASTORE_TYPES:
        raise CniError(INVALID_CONFIG, f"datastore_type {config['datastore_type']!r} is not a Calico datastore type",
                       "etcdv3 or kubernetes")
    if config.get("etcd_scheme", "http") not in ("http", "https"):
        raise CniError(INVALID_CONFIG, f"etcd_scheme {config['etcd_scheme']!r} is neither http nor https")
    policy_type = config.get("policy", {}).get("type")
    if policy_type is not None and not isinstance(policy_type, str):
        raise CniError(INVALID_CONFIG, f"policy.type must be a string, not {_kind(policy_type)}")
    _check_ipam(config.get("ipam", {}))
    _check_dns(config.get("dns", {}))
    fixed_addresses(config, {})  # runtimeConfig.ips and args.cni.ips are well formed


def _check_ipam(ipam: dict) -> None:
    if ipam.get("type") not in (None, "podnet-ipam", "calico-ipam", "podnet"):
        raise CniError(INVALID_CONFIG, f"ipam type {ipam.get('type')!r} is not supported",
                       "podnet allocates addresses itself; use \"podnet-ipam\" or leave ipam out")
    for key in ("ipv4_pools", "ipv6_pools"):
        if key in ipam and not (isinstance(ipam[key], list) and all(isinstance(p, str) and p for p in ipam[key])):
            raise CniError(INVALID_CONFIG, f"ipam.{key} must be a list of pool names or CIDRs")
    for pool in ipam.get("ipv4_pools", []):
        if ":" in pool:
            raise CniError(INVALID_CONFIG, f"ipam.ipv4_pools names an IPv6 network {pool!r}")
    for pool in ipam.get("ipv6_pools", []):
        if "." in pool and "/" in pool and ":" not in pool:
            raise CniError(INVALID_CONFIG, f"ipam.ipv6_pools names an IPv4 network {pool!r}")
    flags = {}
    for key in ("assign_ipv4", "assign_ipv6"):
        if key in ipam:
            value = ipam[key]
            if value not in ("true", "false", True, False):
                raise CniError(INVALID_CONFIG, f"ipam.{key} must be \"true\" or \"false\", not {value!r}")
            flags[key] = value in ("true", True)
    if flags.get("assign_ipv4", True) is False and not flags.get("assign_ipv6", False):
        raise CniError(INVALID_CONFIG, "ipam.assign_ipv4 is \"false\" and assign_ipv6 is not \"true\", "
                                       "which leaves no address to assign",
                       "set assign_ipv4 or assign_ipv6 to \"true\"")


@dataclass(frozen=True)
class StoreFacts:
    """The agent's datastore, as far as a network configuration can name it."""

    kind: str  # "etcd" or "sqlite"
    endpoints: tuple[str, ...] = ()  # etcd: "http(s)://host:port"
    path: str = ""  # sqlite: the database file
    client_cert: bool = False  # etcd: the agent presents a client certificate

    def __str__(self) -> str:
        return f"etcd at {','.join(self.endpoints)}" if self.kind == "etcd" else f"the embedded store {self.path}"


def datastore_disagreement(config: dict, agent: StoreFacts) -> tuple[str | None, list[str]]:
    """Whether the datastore the config names is the one this node's agent uses: the agent, not the
    plugin, talks to the datastore, so Calico's datastore fields (and podnet's own `datastore`) are
    checked against it rather than used. Returns (the disagreement that makes ADD wrong, or None;
    differences worth a warning). Pure."""
    warnings: list[str] = []
    own = config.get("datastore")
    if own:
        named = _store_of_url(own)
        if named is not None and not _same_store(named, agent):
            return f"the config's datastore {own} is not this node's agent's, which uses {agent}", warnings
    dtype = config.get("datastore_type")
    if dtype == "kubernetes":
        warnings.append(f"datastore_type kubernetes: podnet keeps pods, addresses and nodes in its agent's "
                        f"datastore ({agent}), not in the Kubernetes API; the kubernetes section is not used")
    etcd_named = [k for k in ("etcd_endpoints", "etcd_authority", "etcd_discovery_srv") if config.get(k)]
    if dtype == "etcdv3" or etcd_named:
        where = ", ".join(f"{k} {config[k]}" for k in etcd_named) or "datastore_type etcdv3"
        if agent.kind != "etcd":
            return f"the config names etcd ({where}) but this node's agent uses {agent}", warnings
        scheme = config.get("etcd_scheme", "http")
        if config.get("etcd_endpoints"):
            named = [e.strip() for e in config["etcd_endpoints"].split(",") if e.strip()]
        elif config.get("etcd_authority"):
            named = [f"{scheme}://{config['etcd_authority']}"]
        else:
            named = []
        if named:
            ours = {_host_port(e) for e in agent.endpoints}
            if not ours & {_host_port(e) for e in named}:
                return (f"etcd_endpoints {','.join(named)} share no member with this node's agent's etcd "
                        f"({','.join(agent.endpoints)})"), warnings
        if config.get("etcd_discovery_srv"):
            warnings.append(f"etcd_discovery_srv {config['etcd_discovery_srv']} is not resolved by podnet; "
                            f"the agent uses {agent}")
        tls_files = [k for k in ("etcd_ca_cert_file", "etcd_cert_file", "etcd_key_file") if config.get(k)]
        wants_tls = bool(tls_files) or scheme == "https" or any(e.startswith("https://") for e in named)
        agent_tls = any(e.startswith("https://") for e in agent.endpoints)
        if wants_tls != agent_tls:
            why = (", ".join(tls_files) or "https endpoints") if wants_tls else "plain http endpoints"
            return (f"the config asks for etcd {'with' if wants_tls else 'without'} TLS ({why}) but this node's "
                    f"agent talks to etcd {'with' if agent_tls else 'without'} it"), warnings
        if config.get("etcd_cert_file") and not agent.client_cert:
            warnings.append(f"etcd_cert_file {config['etcd_cert_file']}: this node's agent presents no client "
                            "certificate to etcd (its own --etcd-cert-file decides)")
    return None, warnings


def _host_port(endpoint: str) -> str:
    return endpoint.split("://", 1)[-1].rstrip("/").lower()


def _store_of_url(url: str) -> StoreFacts | None:
    """What a podnet datastore URL names (open_datastore's forms); None when it is not one."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return StoreFacts("sqlite", path=url)
    if scheme == "sqlite":
        return StoreFacts("sqlite", path=rest.partition("?")[0])
    if scheme in ("etcd", "etcds", "http", "https"):
        items = [i.strip() for i in rest.partition("?")[0].split(",") if i.strip()]
        return StoreFacts("etcd", endpoints=tuple(items))
    return None


def _same_store(a: StoreFacts, b: StoreFacts) -> bool:
    import os.path

    if a.kind != b.kind:
        return False
    if a.kind == "sqlite":
        return os.path.normpath(a.path) == os.path.normpath(b.path)
    return bool({_host_port(e) for e in a.endpoints} & {_host_port(e) for e in b.endpoints})


def fixed_addresses(config: dict, args: dict) -> dict[int, str]:
    """The addresses asked for, by IP version, as Calico takes them: CNI_ARGS IP= (comma-separated, as
    podman passes several), else runtimeConfig "ips" (the CNI `ips` capability), else args.cni.ips (the
    CNI convention, and what Calico's cni.projectcalico.org/ipAddrs annotation means: these exact addresses
    from IPAM, inside an IP pool). At most one per family; a prefix length, if given, is ignored (pods get /32
    and /128). Empty when none is asked for."""
    if args.get("IP"):
        return _fixed_addresses(args["IP"].split(","), "CNI_ARGS IP", INVALID_ENVIRONMENT)
    runtime = config.get("runtimeConfig", {}).get("ips")
    if runtime is not None:
        return _fixed_addresses(runtime, "runtimeConfig.ips", INVALID_CONFIG)
    conventional = config.get("args", {}).get("cni", {})
    if isinstance(conventional, dict) and conventional.get("ips") is not None:
        return _fixed_addresses(conventional["ips"], "args.cni.ips", INVALID_CONFIG)
    return {}


def _fixed_addresses(items, where: str, code: int) -> dict[int, str]:
    import ipaddress

    if not isinstance(items, list):
        raise CniError(code, f"{where} must be a list of addresses, not {_kind(items)}")
    out: dict[int, str] = {}
    for item in items:
        text = item.strip() if isinstance(item, str) else item
        try:
            if not isinstance(text, str) or not text:
                raise ValueError
            addr = ipaddress.ip_interface(text).ip
        except ValueError:
            raise CniError(code, f"{where} has {item!r}, which is not an IP address") from None
        if addr.version in out:
            raise CniError(code, f"{where} asks for two IPv{addr.version} addresses ({out[addr.version]}, {addr})",
                           "a pod gets one address per family")
        out[addr.version] = str(addr)
    return out


def _check_dns(dns: dict) -> None:
    for key in ("nameservers", "search", "options"):
        if key in dns and not (isinstance(dns[key], list) and all(isinstance(x, str) for x in dns[key])):
            raise CniError(INVALID_CONFIG, f"dns.{key} must be a list of strings")
    if "domain" in dns and not isinstance(dns["domain"], str):
        raise CniError(INVALID_CONFIG, "dns.domain must be a string")


def check_prev_result(prev) -> None:
    """CHECK needs the result of the ADD it checks, in a shape we can read."""
    if prev is None:
        raise CniError(INVALID_CONFIG, "CHECK needs prevResult in the network configuration",
                       "the runtime passes the cached result of ADD as prevResult")
    ips, interfaces = prev.get("ips", []), prev.get("interfaces", [])
    if not isinstance(ips, list) or not all(isinstance(ip, dict) and isinstance(ip.get("address"), str)
                                            for ip in ips):
        raise CniError(INVALID_CONFIG, "prevResult.ips must be a list of objects with an \"address\"")
    if not isinstance(interfaces, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str)
                                                   for i in interfaces):
        raise CniError(INVALID_CONFIG, "prevResult.interfaces must be a list of objects with a \"name\"")


def _check_attachments(items) -> None:
    if items is None:
        raise CniError(INVALID_CONFIG, f"GC needs {VALID_ATTACHMENTS} in the network configuration",
                       "an empty list means no attachment of this network is valid any more")
    for item in items:
        if not (isinstance(item, dict) and isinstance(item.get("containerID"), str) and item["containerID"]
                and isinstance(item.get("ifname"), str) and item["ifname"]):
            raise CniError(INVALID_CONFIG, f"every entry of {VALID_ATTACHMENTS} needs a containerID and an ifname",
                           f"got {item!r}")


def parse_args(text: str) -> dict:
    """CNI_ARGS: 'K=V;K2=V2'. Unknown keys are an error unless IgnoreUnknown is true."""
    args: dict[str, str] = {}
    if not text:
        return args
    for part in text.split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS entry {part!r} is not KEY=VALUE")
        args[key] = value
    ignore = False
    if "IgnoreUnknown" in args:
        ignore = _BOOLS.get(args["IgnoreUnknown"].lower())
        if ignore is None:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS IgnoreUnknown={args['IgnoreUnknown']!r} is not a boolean",
                           "use 1, true, 0 or false")
    if "IP" in args:
        _fixed_addresses(args["IP"].split(","), "CNI_ARGS IP", INVALID_ENVIRONMENT)
    unknown = sorted(set(args) - KNOWN_ARGS)
    if unknown and not ignore:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS has unknown keys: {', '.join(unknown)}",
                       "add IgnoreUnknown=1 to let the plugin skip them")
    return args


# Results ----------------------------------------------------------------------------------------------


@dataclass
class Result:
    """What ADD reports, rendered in the config's cniVersion.

    interfaces[0] is the host end of the veth, interfaces[1] the pod's (ips[].interface points at it).
    0.3.x and 0.4.0 carry ips[].version; 1.1.0 adds interfaces[].mtu.
    """

    host_ifname: str
    host_mac: str
    pod_ifname: str
    pod_mac: str
    sandbox: str
    mtu: int
    ips: list[str]  # CIDRs
    gateway: str | None = None
    routes: list[dict] = field(default_factory=list)
    dns: dict = field(default_factory=dict)

    def to_json(self, version: str) -> dict:
        if _older(version, "0.3.0"):
            return self._to_json_020(version)
        legacy = _older(version, "1.0.0")
        host_if = {"name": self.host_ifname, "mac": self.host_mac}
        pod_if = {"name": self.pod_ifname, "mac": self.pod_mac, "sandbox": self.sandbox}
        if at_least(version, "1.1.0"):
            host_if["mtu"] = self.mtu
            pod_if["mtu"] = self.mtu
        ips = []
        for cidr in self.ips:
            entry = {"address": cidr, "interface": 1}
            if legacy:
                entry["version"] = "6" if ":" in cidr else "4"
            if self.gateway and ":" not in cidr:
                entry["gateway"] = self.gateway
            ips.append(entry)
        return {
            "cniVersion": version,
            "interfaces": [host_if, pod_if],
            "ips": ips,
            "routes": self.routes,
            "dns": self.dns,
        }

    def _to_json_020(self, version: str) -> dict:
        """0.1.0 and 0.2.0: one ip4 and one ip6 object, each with its routes; no interfaces."""
        out: dict = {"cniVersion": version}
        for cidr in self.ips:
            family = "ip6" if ":" in cidr else "ip4"
            entry: dict = {"ip": cidr}
            if self.gateway and family == "ip4":
                entry["gateway"] = self.gateway
            entry["routes"] = [r for r in self.routes if (":" in r["dst"]) == (family == "ip6")]
            out[family] = entry
        out["dns"] = self.dns
        return out
