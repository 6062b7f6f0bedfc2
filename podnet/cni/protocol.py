"""The CNI contract: versions, error codes, the request as the runtime sends it, results."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from podnet.errors import PodnetError

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CHECK_SINCE = "0.4.0"

# Error codes of the CNI specification, and podnet's own (100 and up).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
STATUS_NOT_READY = 50
STATUS_NOT_READY_PERSISTENT = 51
INTERNAL = 100
INTERFACE_EXISTS = 101
IPAM_EXHAUSTED = 102
DATAPLANE_FAILURE = 103
CHECK_FAILED = 104

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
KNOWN_ARGS = {"IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID",
              "IP", "IPV4POOLS", "IPV6POOLS"}


class CniError(PodnetError):
    """A failure reported to the runtime as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg, details or None)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> dict:
        out = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


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

    @property
    def version(self) -> str:
        return self.config.get("cniVersion", "1.0.0")

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")


def version_of(raw: bytes) -> str:
    """Best effort: the cniVersion to answer an error in, even for a config we cannot use."""
    try:
        v = json.loads(raw).get("cniVersion")
        return v if v in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1]
    except Exception:
        return SUPPORTED_VERSIONS[-1]


def parse_request(env: dict[str, str], stdin: bytes) -> Request:
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENVIRONMENT, "CNI_COMMAND is not set", "set it to ADD, DEL, CHECK, VERSION, GC or STATUS")
    if command not in ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"):
        raise CniError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND {command!r}")
    config = parse_config(stdin) if command != "VERSION" else _version_input(stdin)
    need = {
        "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
        "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
        "DEL": ("CNI_CONTAINERID", "CNI_IFNAME"),
        "GC": ("CNI_PATH",),
        "STATUS": (),
        "VERSION": (),
    }[command]
    for var in need:
        if not env.get(var):
            raise CniError(INVALID_ENVIRONMENT, f"{var} is required for {command} but is not set")
    cid = env.get("CNI_CONTAINERID", "")
    if cid and not _CONTAINER_ID.match(cid):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_CONTAINERID {cid!r} is not a valid container id",
                       "letters, digits, '_', '.' and '-', starting with a letter or digit")
    ifname = env.get("CNI_IFNAME", "")
    if ifname and (len(ifname) > 15 or "/" in ifname or ":" in ifname or any(c.isspace() for c in ifname)
                   or ifname in (".", "..")):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} is not a valid interface name",
                       "at most 15 characters, no '/', ':' or spaces")
    args = parse_args(env.get("CNI_ARGS", ""))
    if command == "CHECK" and _older(config.get("cniVersion", "1.0.0"), CHECK_SINCE):
        raise CniError(INCOMPATIBLE_VERSION, f"CHECK is not supported by cniVersion {config.get('cniVersion')}")
    return Request(command, cid, env.get("CNI_NETNS", ""), ifname, args, env.get("CNI_PATH", ""), config, stdin)


def _version_input(stdin: bytes) -> dict:
    try:
        d = json.loads(stdin) if stdin.strip() else {}
        return d if isinstance(d, dict) else {}
    except ValueError:
        return {}


def parse_config(raw: bytes) -> dict:
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(DECODE_FAILURE, "the network configuration is not valid JSON", str(e)) from None
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "the network configuration must be a JSON object")
    version = config.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(INVALID_CONFIG, "cniVersion is missing from the network configuration")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"cniVersion {version} is not supported",
                       f"podnet supports {', '.join(SUPPORTED_VERSIONS)}")
    for key in ("name", "type"):
        if not isinstance(config.get(key), str) or not config[key]:
            raise CniError(INVALID_CONFIG, f"network configuration field {key!r} must be a non-empty string")
    _check_types(config)
    return config


def _check_types(config: dict) -> None:
    typed = {"mtu": int, "nodename": str, "datastore_type": str, "log_level": str, "log_file_path": str,
             "agent_socket": str, "etcd_endpoints": str, "ipam": dict, "dns": dict, "args": dict,
             "runtimeConfig": dict, "prevResult": dict, "capabilities": dict}
    for key, kind in typed.items():
        if key in config and (not isinstance(config[key], kind) or isinstance(config[key], bool) and kind is int):
            raise CniError(INVALID_CONFIG, f"network configuration field {key!r} must be a {kind.__name__}")
    if "mtu" in config and not 68 <= config["mtu"] <= 65535:
        raise CniError(INVALID_CONFIG, f"mtu {config['mtu']} is outside 68-65535")
    ipam = config.get("ipam", {})
    for key in ("ipv4_pools", "ipv6_pools"):
        if key in ipam and not (isinstance(ipam[key], list) and all(isinstance(p, str) for p in ipam[key])):
            raise CniError(INVALID_CONFIG, f"ipam.{key} must be a list of pool names or CIDRs")
    for key in ("assign_ipv4", "assign_ipv6"):
        if key in ipam and ipam[key] not in ("true", "false", True, False):
            raise CniError(INVALID_CONFIG, f"ipam.{key} must be \"true\" or \"false\"")
    if ipam.get("type") not in (None, "podnet-ipam", "calico-ipam", "podnet"):
        raise CniError(INVALID_CONFIG, f"ipam type {ipam.get('type')!r} is not supported",
                       "podnet allocates addresses itself; use \"podnet-ipam\" or leave ipam out")


def parse_args(text: str) -> dict:
    """CNI_ARGS: 'K=V;K2=V2'. Unknown keys are an error unless IgnoreUnknown is set."""
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
    ignore = args.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(set(args) - KNOWN_ARGS)
    if unknown and not ignore:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS has unknown keys: {', '.join(unknown)}",
                       "add IgnoreUnknown=1 to let the plugin skip them")
    return args


def _older(a: str, b: str) -> bool:
    return tuple(int(x) for x in a.split(".")) < tuple(int(x) for x in b.split("."))


@dataclass
class Result:
    """What ADD reports, rendered in the config's cniVersion."""

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
        legacy = _older(version, "1.0.0")
        pod_if = {"name": self.pod_ifname, "mac": self.pod_mac, "sandbox": self.sandbox}
        if not _older(version, "1.1.0"):
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
            "interfaces": [{"name": self.host_ifname, "mac": self.host_mac}, pod_if],
            "ips": ips,
            "routes": self.routes,
            "dns": self.dns,
        }


def version_result(version: str) -> dict:
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}
