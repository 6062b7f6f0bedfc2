"""`podnet doctor`: the problems Calico users hit in VXLAN mode, checked on each node.

Pure: every check takes the collected facts (podnet.observe.facts) of one
node and returns findings, each with a severity, what is wrong and the
command that fixes it. Errors break traffic, warnings degrade it or wait to
break it, notes are for information only (they do not fail the run).

A node with an IPv6 underlay is also checked for its IPv6 side: vxlan-v6.calico
(its identity, MTU = underlay - 70), its NDP and FDB entries, and IPv6 forwarding.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import asdict, dataclass, replace

from podnet.calc.attachment import NODE, RECREATE, Problem, judge_attachment
from podnet.calc.config import VXLAN_OVERHEAD_V4, VXLAN_OVERHEAD_V6
from podnet.calc.offload import decide_tx_checksum
from podnet.calc.state import FdbEntry, Neighbour, Route
from podnet.calc.vxlan_device import mismatches as device_mismatches
from podnet.observe.facts import ClusterFacts, KernelFacts, NodeFacts, attachment_of
from podnet.observe.trace import (blocking_rules, desired_for, guess_router, in_netns, nft_delete_cmd, parent_index,
                                  route_for, sysctl_cmd, wanted_device)

ERROR, WARNING, NOTE = "error", "warning", "note"
_ORDER = {ERROR: 0, WARNING: 1, NOTE: 2}


@dataclass(frozen=True)
class Finding:
    severity: str
    check: str
    node: str
    problem: str
    fix: str


@dataclass
class Report:
    nodes: list[str]  # the nodes whose kernel was checked
    findings: list[Finding]
    access: str = ""

    @property
    def ok(self) -> bool:
        return not any(f.severity in (ERROR, WARNING) for f in self.findings)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "access": self.access, "nodes": self.nodes,
                "findings": [asdict(f) for f in self.findings]}


def diagnose(facts: ClusterFacts, nodes: list[str] | None = None) -> Report:
    """Run every check on the named nodes (default: every node whose kernel was read)."""
    names = nodes if nodes is not None else [n for n, f in sorted(facts.nodes.items()) if f.readable]
    findings: list[Finding] = []
    checked = []
    for name in names:
        node = facts.nodes.get(name)
        if node is None:
            findings.append(Finding(ERROR, "node", name, f"no node named {name} in the datastore",
                                    "start the podnet agent on it (it registers the node)"))
            continue
        findings += check_node_address(facts, node)
        if node.kernel is None:
            findings.append(Finding(NOTE, "access", name, f"kernel not checked: {node.unreadable}",
                                    f"run podnet doctor on {name}"))
            continue
        checked.append(name)
        findings += [Finding(NOTE, "access", name, note, "-") for note in node.kernel.notes]
        for check in NODE_CHECKS:
            findings += check(facts, node)
    findings.sort(key=lambda f: (_ORDER[f.severity], f.node, f.check))
    return Report(checked, findings, facts.access)


# --- the checks --------------------------------------------------------------------------------


def check_vxlan_device(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    k, dev = n.kernel, n.config.device
    out = []
    if n.interface and n.interface not in k.links:
        out.append(Finding(ERROR, "underlay", n.name, f"the node's interface {n.interface} does not exist",
                           f"restart the podnet agent on {n.name} with --interface naming the underlay NIC"))
    if n.ip and not any(a.ip == n.ip for a in k.addresses):
        out.append(Finding(ERROR, "underlay", n.name, f"no interface holds the node address {n.ip} "
                           "(calico issue 6920: unable to find parent interface)",
                           f"restart the podnet agent on {n.name}: it registers the address it finds"))
    found = _device_findings(facts, n, 4, f"{dev} is down")
    if found is None:
        return out + [Finding(ERROR, "vxlan-device", n.name, f"{dev} does not exist",
                              f"start the podnet agent on {n.name}: it creates {dev}")]
    link = k.links[dev]
    others = {(o.kernel.links[dev].vxlan.vni, o.kernel.links[dev].vxlan.port)
              for o in facts.nodes.values() if o is not n and o.kernel and dev in o.kernel.links
              and o.kernel.links[dev].vxlan}
    if others and (link.vxlan.vni, link.vxlan.port) not in others:
        theirs = ", ".join(f"VNI {v} port {p}" for v, p in sorted(others))
        out.append(Finding(ERROR, "vxlan-device", n.name,
                           f"{dev} uses VNI {link.vxlan.vni} port {link.vxlan.port}; other nodes use {theirs}",
                           "run every node's agent with the same --vni and --vxlan-port"))
    return out + found


def _device_findings(facts: ClusterFacts, n: NodeFacts, version: int, down: str) -> list[Finding] | None:
    """What calc/vxlan_device finds wrong with n's device of `version`, as findings; None when it does
    not exist. Its MTU is check_mtu's: judged against the underlay, not only the configuration."""
    k, dev = n.kernel, n.device(version)
    seen = k.vxlan_seen(dev, version)
    if seen is None or seen.kind != "vxlan":
        return None
    differs = {m.what: m for m in device_mismatches(seen, wanted_device(facts, n, version), parent_index(k, n))}
    link, out = k.links[dev], []
    restart = f"restart the podnet agent on {n.name} (it recreates {dev})"
    if "state" in differs:
        out.append(Finding(ERROR, "vxlan-device", n.name, down, in_netns(n.netns, f"ip link set {dev} up")))
    if "local IP" in differs:
        sends = (link.vxlan.local6 or link.vxlan.local) if version == 6 else link.vxlan.local
        out.append(Finding(ERROR, "vxlan-device", n.name,
                           f"{dev} sends from {sends}, the node record says {n.underlay_ip(version)}", restart))
    if "parent" in differs:
        parent = k.link_by_index(link.vxlan.parent)
        out.append(Finding(ERROR, "vxlan-device", n.name,
                           f"{dev} sends through {parent.name if parent else link.vxlan.parent}, the node's "
                           f"interface is {n.interface}", restart))
    if "VNI" in differs or "port" in differs:
        cfg = n.config
        out.append(Finding(WARNING, "vxlan-device", n.name,
                           f"{dev} has VNI {link.vxlan.vni} port {link.vxlan.port}; the agent configuration says "
                           f"VNI {cfg.vni} port {cfg.port}", restart))
    if "learning" in differs:
        out.append(Finding(WARNING, "vxlan-device", n.name, f"{dev} learns MACs from received packets",
                           f"restart the podnet agent on {n.name} (it recreates {dev} with nolearning)"))
    if "MAC" in differs:
        m = differs["MAC"]
        out.append(Finding(ERROR, "vxlan-device", n.name,
                           f"{dev} has MAC {m.have}, the node record's VTEP MAC is {m.should}: the other nodes' "
                           f"neighbour entries name {m.should}, so packets to {n.name}'s pods are not taken", restart))
    return out


def has_ipv6(facts: ClusterFacts, n: NodeFacts) -> bool:
    """Does the agent give this node vxlan-v6.calico (an IPv6 underlay address and an IPv6 tunnel address)?"""
    return bool(n.address6) and desired_for(facts, n).device6 is not None


def check_vxlan6_device(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    """vxlan-v6.calico on a node with an IPv6 underlay: as check_vxlan_device judges vxlan.calico."""
    if not has_ipv6(facts, n):
        return []
    k, dev, out = n.kernel, n.config.device6, []
    if n.ip6 and not any(a.ip == n.ip6 for a in k.addresses):
        out.append(Finding(ERROR, "underlay", n.name, f"no interface holds the node's IPv6 address {n.ip6}",
                           f"restart the podnet agent on {n.name}: it registers the address it finds"))
    found = _device_findings(facts, n, 6, f"{dev} is down (which also removed its IPv6 routes, NDP entries "
                                          "and tunnel address)")
    if found is None:
        return out + [Finding(ERROR, "vxlan-device", n.name, f"{dev} does not exist although {n.name} has the IPv6 "
                              f"underlay address {n.ip6}", f"start the podnet agent on {n.name}: it creates {dev}")]
    return out + found


def check_mtu(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    k, dev = n.kernel, n.config.device
    under = k.links.get(n.interface) if n.interface else None
    vx = k.links.get(dev)
    out = []
    if under and vx and under.mtu and vx.mtu and vx.mtu > under.mtu - VXLAN_OVERHEAD_V4:
        budget = under.mtu - VXLAN_OVERHEAD_V4
        out.append(Finding(ERROR, "mtu", n.name,
                           f"{dev} MTU {vx.mtu} > underlay {under.name} MTU {under.mtu} - {VXLAN_OVERHEAD_V4} = "
                           f"{budget}: full-size encapsulated packets are dropped (the agent sets underlay - "
                           f"{VXLAN_OVERHEAD_V4} unless --vxlan-mtu or an AgentConfiguration's vxlanMTU says "
                           "otherwise)",
                           in_netns(n.netns, f"ip link set {dev} mtu {budget}")))
    limit = vx.mtu if vx and vx.mtu else (under.mtu - VXLAN_OVERHEAD_V4 if under and under.mtu else None)
    if limit is None:
        return out
    for pod in (p for p in facts.pods if p.node == n.name):
        link = _pod_link(k, pod)
        if link and link.mtu and link.mtu > limit:
            where = f"{pod.label}'s {pod.interface}" if pod.kernel else f"{pod.label}'s veth {link.name}"
            out.append(Finding(ERROR, "mtu", n.name,
                               f"{where} MTU {link.mtu} > {dev} MTU {limit}: large packets are dropped silently "
                               "(calico issue 8953); new pods get the CNI config's mtu, or the agent's choice",
                               in_netns(pod.netns, f"ip link set {pod.interface} mtu {limit}")))
    return out


def _pod_link(k: KernelFacts, pod):
    return pod.kernel.links.get(pod.interface) if pod.kernel else k.links.get(pod.host_interface)


def check_mtu6(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    """vxlan-v6.calico must leave room for 70 bytes of outer headers (the outer IPv6 header is 40 bytes)."""
    k, dev = n.kernel, n.config.device6
    under = k.links.get(n.interface) if n.interface else None
    vx = k.links.get(dev)
    if not has_ipv6(facts, n) or vx is None or not vx.mtu:
        return []
    out = []
    if under and under.mtu and vx.mtu > under.mtu - VXLAN_OVERHEAD_V6:
        budget = under.mtu - VXLAN_OVERHEAD_V6
        out.append(Finding(ERROR, "mtu", n.name,
                           f"{dev} MTU {vx.mtu} > underlay {under.name} MTU {under.mtu} - {VXLAN_OVERHEAD_V6} = "
                           f"{budget}: full-size IPv6-encapsulated packets are dropped (the agent sets underlay - "
                           f"{VXLAN_OVERHEAD_V6} for {dev})", in_netns(n.netns, f"ip link set {dev} mtu {budget}")))
    limit = min(vx.mtu, under.mtu - VXLAN_OVERHEAD_V6) if under and under.mtu else vx.mtu
    mtus = {p.label: link.mtu for p in facts.pods if p.node == n.name and p.ip6
            and (link := _pod_link(k, p)) is not None and link.mtu and link.mtu > limit}
    big = sorted(mtus)
    if big:
        names = ", ".join(big[:3]) + (f" and {len(big) - 3} more" if len(big) > 3 else "")
        out.append(Finding(NOTE, "mtu", n.name,
                           f"the MTU of {len(big)} pod{'s' if len(big) > 1 else ''} with IPv6 ({names}: "
                           f"{'/'.join(map(str, sorted(set(mtus.values()))))}) is above {dev}'s {limit}: "
                           "the node answers bigger IPv6 "
                           "packets with ICMPv6 Packet Too Big, so they pass only after path MTU discovery",
                           f"give pods MTU {limit}: mtu {limit} in the CNI network config for new pods, or the "
                           f"agents' --vxlan-mtu {limit}"))
    return out


def check_tx_checksum(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    out = []
    for dev in (n.config.device, n.config.device6):
        out += _tx_checksum(n, dev)
    errors = {k: v for k, v in n.kernel.csum_errors.items() if v}
    if errors:
        counted = ", ".join(f"{v} {k}" for k, v in sorted(errors.items()))
        out.append(Finding(NOTE, "tx-checksum", n.name,
                           f"the kernel on {n.name} counted {counted} packets with a bad checksum (InCsumErrors): "
                           "if they grow while traffic crosses the tunnel, a sender's VXLAN TX checksum offload "
                           "mangles checksums (calico issues 3145, 11435)",
                           "on the nodes that send them, apply an AgentConfiguration with "
                           "spec.vxlanTxChecksumOffload: false"))
    return out


def _tx_checksum(n: NodeFacts, dev: str) -> list[Finding]:
    """The device's TX checksum offload against what its agent decided, and why it decided so."""
    features = n.kernel.features.get(dev)
    if not features or "tx-checksum-ip-generic" not in features:
        return []
    actual = features["tx-checksum-ip-generic"]
    reported = ((n.status or {}).get("offloads") or {}).get(dev)
    if reported is not None:
        want, source, reason = reported["txChecksumOffload"], reported["source"], reported["reason"]
    else:
        d = decide_tx_checksum(n.config.tx_checksum_offload, None)
        want, source, reason = d.tx_checksum, d.source, d.reason + " (the agent reported no decision)"
    onoff = "on" if want else "off"
    if actual != want:
        return [Finding(WARNING, "tx-checksum", n.name,
                        f"TX checksum offload is {'on' if actual else 'off'} for {dev}, but the agent keeps it "
                        f"{onoff}: {reason} (is the agent on {n.name} running?)",
                        in_netns(n.netns, f"ethtool -K {dev} tx-checksum-ip-generic {onoff}"))]
    if not want and source == "self-test":
        return [Finding(NOTE, "tx-checksum", n.name,
                        f"TX checksum offload is off for {dev}, which costs most of the tunnel's TCP throughput: "
                        f"{reason}", "none needed: it stays off while this node's self-test fails; "
                        "spec.vxlanTxChecksumOffload: true in an AgentConfiguration overrides it")]
    return []


def check_rp_filter(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    k, out = n.kernel, []
    if k.sysctls.get("conf/all/rp_filter") == "1":
        out.append(Finding(WARNING, "rp-filter", n.name,
                           "net.ipv4.conf.all.rp_filter=1 (strict) applies to every interface: asymmetric paths "
                           "are dropped (felix issue 2082)", sysctl_cmd(n.netns, "conf/all/rp_filter", 2)))
    for ifname in (n.interface, n.config.device):
        if ifname and k.sysctls.get(f"conf/{ifname}/rp_filter") == "1":
            out.append(Finding(WARNING, "rp-filter", n.name,
                               f"rp_filter=1 (strict) on {ifname}: packets whose reverse path leaves by another "
                               "interface are dropped", sysctl_cmd(n.netns, f"conf/{ifname}/rp_filter", 2)))
    return out


def check_default_route(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    if n.kernel.default_route() is None and n.kernel.lookup("169.254.1.1") is None:
        router = guess_router(n)
        return [Finding(ERROR, "default-route", n.name,
                        "no default route: proxy ARP for the pods' gateway 169.254.1.1 stays silent, so pods "
                        f"cannot send anything (in the fix, {router} stands for the underlay's router)",
                        in_netns(n.netns, f"ip route add default via {router} dev {n.interface or 'eth0'}"))]
    return []


def check_ip_forward(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    value = n.kernel.sysctls.get("ip_forward")
    if value is not None and value != "1":
        return [Finding(ERROR, "ip-forward", n.name,
                        f"net.ipv4.ip_forward={value}: the node does not route between pods and vxlan.calico",
                        sysctl_cmd(n.netns, "ip_forward", 1))]
    return []


def check_ipv6_forward(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    if not n.address6:
        return []
    value = n.kernel.sysctls6.get("conf/all/forwarding")
    if value is not None and value != "1":
        return [Finding(ERROR, "ipv6-forward", n.name,
                        f"net.ipv6.conf.all.forwarding={value} on a node with the IPv6 underlay address {n.ip6}: "
                        f"the node does not route IPv6 between pods and {n.config.device6} (pods still resolve "
                        "their gateway, and their packets vanish)",
                        sysctl_cmd(n.netns, "conf/all/forwarding", 1, 6))]
    return []


def kernel_entries(k: KernelFacts, device: str | tuple[str, ...]) -> tuple[set, set, set]:
    """The routes, neighbours and FDB entries of podnet's (on `device`, or devices) as calc value objects:
    those the agent owns (dataplane/ownership.py), so doctor calls stale only what the agent would delete."""
    devices = (device,) if isinstance(device, str) else tuple(device)
    routes = {Route(r.dst, blackhole=True) if r.type == "blackhole" else Route(r.dst, r.gateway, r.dev, r.onlink)
              for r in k.routes if r.podnets}
    neighbours = {Neighbour(x.ip, x.mac, x.dev) for x in k.neighbours if x.podnets(devices)}
    fdb = {FdbEntry(f.mac, f.dst, f.dev) for f in k.fdb if f.podnets(devices)}
    return routes, neighbours, fdb


def check_entries(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    """Stale, foreign and missing routes, neighbours and FDB entries (calico issue 7281)."""
    dev = n.config.device
    if n.ip is None or dev not in n.kernel.links:
        return []
    want = desired_for(facts, n)
    # vxlan-v6.calico's entries too, when the node has it (a node with an IPv6 underlay).
    devices = (dev,) + ((n.config.device6,) if n.config.device6 in n.kernel.links else ())
    if n.config.device6 not in devices:  # check_vxlan6_device reports the device; its entries cannot be there
        want = replace(want, routes=frozenset(r for r in want.routes if r.ifname != n.config.device6),
                       neighbours=frozenset(x for x in want.neighbours if x.ifname in devices),
                       fdb=frozenset(f for f in want.fdb if f.ifname in devices))
    routes, neighbours, fdb = kernel_entries(n.kernel, devices)
    node_macs = {o.vtep_mac: (o.name, 4) for o in facts.nodes.values()}
    node_macs.update({o.vtep_mac6: (o.name, 6) for o in facts.nodes.values() if o.vtep_mac6})
    tunnels = {o.tunnel_ip: o.name for o in facts.nodes.values() if o.tunnel_ip}
    tunnels.update({o.tunnel_ip6: o.name for o in facts.nodes.values() if o.tunnel_ip6})
    hint = f" (the agent on {n.name} keeps these entries: is it running?)"
    ns, out = n.netns, []

    for f in sorted(want.fdb - fdb):
        out.append(Finding(ERROR, "fdb", n.name, f"missing FDB entry {f}: frames to "
                           f"{node_macs.get(f.mac, (f.mac,))[0]} have no destination" + hint,
                           in_netns(ns, f"bridge fdb append {f.mac} dev {f.ifname} dst {f.dst} self permanent")))
    for f in sorted(fdb - want.fdb):
        owner, version = node_macs.get(f.mac, (None, 4))
        what = (f"stale FDB entry {f}: {owner} is at {facts.nodes[owner].underlay_ip(version)}"
                if owner and owner != n.name else f"foreign FDB entry {f}: no current remote node has MAC {f.mac}")
        out.append(Finding(ERROR if owner else WARNING, "fdb", n.name, what,
                           in_netns(ns, f"bridge fdb del {f.mac} dev {f.ifname} dst {f.dst} self")))
    have_macs = {x.ip: x.mac for x in neighbours}
    for x in sorted(want.neighbours - neighbours):
        what = (f"neighbour entry {x.ip} has lladdr {have_macs[x.ip]}, not {x.mac}" if x.ip in have_macs
                else f"missing neighbour entry {x}")
        out.append(Finding(ERROR, "neighbour", n.name, what + hint,
                           in_netns(ns, f"ip neigh replace {x.ip} dev {x.ifname} lladdr {x.mac} nud permanent")))
    wanted_ips = {x.ip for x in want.neighbours}
    for x in sorted(neighbours - want.neighbours):
        if x.ip in wanted_ips:
            continue  # a wrong MAC for a wanted IP: the finding above replaces it
        owner = tunnels.get(x.ip)
        version = ipaddress.ip_address(x.ip).version
        what = (f"stale neighbour entry {x.ip} lladdr {x.mac}: {owner}'s VTEP MAC is "
                f"{facts.nodes[owner].mac(version)}" if owner and owner != n.name
                else f"foreign neighbour entry {x.ip} lladdr {x.mac}: "
                "no current remote node has this tunnel address")
        out.append(Finding(ERROR if owner else WARNING, "neighbour", n.name, what,
                           in_netns(ns, f"ip neigh del {x.ip} dev {x.ifname}")))
    for r in sorted(want.routes - routes):
        out.append(Finding(ERROR, "routes", n.name, f"missing route {r}" + hint,
                           in_netns(ns, f"ip route replace {_route_args(r)} proto 80")))
    wanted_dsts = {r.dst for r in want.routes}
    for r in sorted(routes - want.routes):
        if r.dst in wanted_dsts:
            continue  # replaced by the "missing" fix above
        out.append(Finding(WARNING, "routes", n.name, f"stale route {r} (proto 80): no current node owns {r.dst}",
                           in_netns(ns, f"ip route del {_route_args(r)}")))
    return out


def _route_args(r: Route) -> str:
    return f"blackhole {r.dst}" if r.blackhole else str(r)


def check_vxlan_port(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    k, dev = n.kernel, n.config.device
    if k.firewall is None:
        return [Finding(NOTE, "vxlan-port", n.name, "nft is not installed here: the firewall was not checked",
                        "apt-get install nftables")]
    link = k.links.get(dev)
    port = link.vxlan.port if link and link.vxlan and link.vxlan.port else n.config.port
    hooks = ("input", "prerouting", "output", "postrouting")
    return [Finding(ERROR, "vxlan-port", n.name, f"the firewall drops VXLAN: {rule} (UDP {port})",
                    nft_delete_cmd(n.netns, rule)) for rule in blocking_rules(k, port, hooks)]


def check_filter(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    """The filter layer: its table is there with its base chains, every pod of the node is programmed
    (else its interface passes nothing), and VXLAN is accepted from every node (the node sets are not
    stale)."""
    from podnet.calc.policy import base_chain_names

    table = n.kernel.filter_table
    if table is None:
        return []  # nft missing: check_vxlan_port says so
    where = f"ip netns exec {n.netns} " if n.netns else ""
    if not table["present"]:
        return [Finding(ERROR, "filter", n.name, "the filter table inet podnet is missing: network policy and the "
                        "VXLAN-mode protections are not enforced on this node",
                        f"check the agent of {n.name} (its log says why it could not program the table); "
                        f"{where}nft list table inet podnet")]
    out = []
    have = set(table.get("chains", ()))
    for name in base_chain_names():
        if name not in have:
            out.append(Finding(ERROR, "filter", n.name, f"the chain {name} of the filter table is missing: network "
                               "policy and the VXLAN-mode protections are not all enforced on this node",
                               f"check the agent of {n.name} (its periodic resync programs the table again); "
                               f"{where}nft list table inet podnet"))
    programmed = set(table["endpoints"])
    for pod in facts.pods:
        if pod.node == n.name and pod.host_interface and pod.host_interface not in programmed:
            out.append(Finding(ERROR, "filter", n.name,
                               f"pod {pod.namespace}/{pod.name}'s interface {pod.host_interface} has no programmed "
                               "endpoint: it passes nothing (fail closed)",
                               f"check the agent of {n.name}; {where}nft list map inet podnet from-wl"))
    for other in facts.nodes.values():
        for ip, key in ((other.ip, "nodes4"), (other.ip6, "nodes6")):
            if ip and ip not in table[key]:
                out.append(Finding(ERROR, "filter", n.name,
                                   f"VXLAN from node {other.name} ({ip}) is dropped: {ip} is not in the set {key} "
                                   "(the node set is stale)",
                                   f"check the agent of {n.name}; {where}nft list set inet podnet {key}"))
    return out


NM_UNMANAGED = "interface-name:cali*;interface-name:vxlan.calico"
NM_UNMANAGED6 = NM_UNMANAGED + ";interface-name:vxlan-v6.calico"


def check_networkmanager(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    nm = (n.host or {}).get("networkmanager")
    if not nm or not nm.get("running"):
        return []
    specs = nm.get("unmanaged_devices", [])
    devices = ("cali0123456789a", n.config.device) + ((n.config.device6,) if n.address6 else ())
    missing = [name for name in devices if not _nm_covers(specs, name)]
    if not missing:
        return []
    spec = NM_UNMANAGED6 if n.address6 else NM_UNMANAGED
    return [Finding(WARNING, "networkmanager", n.name,
                    "NetworkManager runs and may manage " + " and ".join(
                        "cali* veths" if m.startswith("cali") else m for m in missing) +
                    ": it takes devices down or strips their addresses (calico issue 3271)",
                    f"printf '[keyfile]\\nunmanaged-devices={spec}\\n' > "
                    "/etc/NetworkManager/conf.d/podnet.conf && nmcli general reload")]


def _nm_covers(specs: list[str], ifname: str) -> bool:
    for spec in specs:
        kind, _, pattern = spec.partition(":")
        if kind == "interface-name" and fnmatch.fnmatchcase(ifname, pattern.lstrip("=~")):
            return True
    return False


def check_node_address(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    if not n.address or ipaddress.ip_interface(n.address).network.prefixlen != 32:
        return []
    held = ""
    if n.kernel:
        real = next((a for a in n.kernel.addresses if a.ip == n.ip and a.prefixlen != 32), None)
        if real:
            held = f" ({real.ifname} holds {real.ip}/{real.prefixlen})"
    return [Finding(WARNING, "node-address", n.name,
                    f"the node address is registered as {n.address}: with CrossSubnet every other node looks like "
                    f"another subnet, so all traffic is encapsulated (calico issue 4254){held}",
                    f"restart the podnet agent on {n.name} with --address <ip>/<prefix> (or none: it reads the "
                    "prefix from the interface)")]


def check_agent(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    """What the node's agent says of itself: a datastore file removed, replaced, damaged or read-only
    under it, a reconcile that left changes unapplied, a view not in sync."""
    a = n.agent
    # An endpoint that does not answer says nothing: the agent may serve it elsewhere (--health-listen);
    # what a missing agent leaves undone, the other checks find.
    if a is None or not a.answered or a.ready:
        return []
    fix = f"look at the podnet agent's log on {n.name}"
    if a.reason.startswith("datastore:"):
        fix = (f"repair or restore the datastore as the reason says, then restart the podnet agent on {n.name} "
               "(it keeps the kernel state meanwhile)")
    return [Finding(ERROR, "agent", n.name, f"the podnet agent is not ready: {a.reason}", fix)]


def check_pods(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    """Each pod of the node whose namespace was read (or found gone), judged by podnet.calc.attachment:
    the same judgement CNI CHECK and `podnet trace` make."""
    out = []
    for pod in sorted((p for p in facts.pods if p.node == n.name), key=lambda p: p.label):
        if pod.kernel is None and not pod.netns_gone:
            continue
        want, seen = attachment_of(n.kernel, pod)
        for problem in judge_attachment(want, seen):
            if problem.part == "forwarding" and seen.ip_forward not in (None, "1"):
                continue  # ip_forward=0 turns it off on every interface: check_ip_forward reports that once
            out.append(Finding(ERROR, "pod", n.name, f"pod {pod.namespace}/{pod.label}: {problem.message}",
                               pod_fix(problem, n, pod)))
    return out


def pod_fix(problem: Problem, n: NodeFacts, pod) -> str:
    """The commands of a problem, each in the namespace of its side."""
    if problem.part == "netns":
        return ("the runtime's DEL never reached podnet (e.g. it stopped at a failing chained plugin): "
                f"`podnet ipam check` lists what pod {pod.label} left (once the agent's kernel report shows the "
                "namespace gone); `podnet ipam gc --yes`, or the runtime's CNI GC, releases it")
    if not problem.fix:
        return RECREATE
    ns = n.netns if problem.side == NODE else pod.netns
    return " && ".join(in_netns(ns, command) for command in problem.fix)


def check_pool_reach(facts: ClusterFacts, n: NodeFacts) -> list[Finding]:
    """Blocks of other nodes that nothing routes from here: a pool whose vxlanMode is Never (CrossSubnet
    routes only within a subnet without encapsulation) leaves a node in another subnet to another routing
    mechanism; without one, its pods are unreachable."""
    if n.ip is None:
        return []
    want = desired_for(facts, n)
    out = []
    for other in sorted(facts.nodes.values(), key=lambda o: o.name):
        if other is n or not other.ip:
            continue
        for cidr in other.blocks:
            first = str(next(ipaddress.ip_network(cidr).hosts()))
            if route_for(want.routes, first) is not None:
                continue  # the agent routes it (tunnel or direct)
            have = n.kernel.lookup(first)
            if have is not None and ipaddress.ip_network(have.dst).prefixlen > 0 and have.type == "unicast":
                continue  # something else routes it (a routing daemon, a route by hand)
            pool = next((p for p in facts.pools if p.version == 4 and ipaddress.ip_network(cidr).subnet_of(
                p.network)), None)
            if pool is None or pool.vxlan_mode == "Always":
                continue  # not a matter of the pool's mode (check_entries reports a missing route)
            out.append(Finding(ERROR, "pool-mode", n.name,
                               f"nothing routes {other.name}'s block {cidr} from {n.name}: pool {pool.name} is "
                               f"vxlanMode {pool.vxlan_mode} and {other.name} ({other.address}) is not in "
                               f"{n.name}'s subnet {ipaddress.ip_interface(n.address).network}, so podnet "
                               "encapsulates nothing to it and leaves it to another routing mechanism",
                               f"set vxlanMode: CrossSubnet (or Always) on ippool {pool.name} with podnet apply -f, "
                               f"or route {cidr} via {other.ip} on the underlay"))
    return out


NODE_CHECKS = [check_agent, check_filter, check_pods, check_pool_reach, check_vxlan_device, check_vxlan6_device, check_mtu, check_mtu6, check_tx_checksum, check_rp_filter,
               check_default_route, check_ip_forward, check_ipv6_forward, check_entries, check_vxlan_port,
               check_networkmanager]


# --- text for people ---------------------------------------------------------------------------


def format_report(report: Report) -> str:
    lines = []
    if report.findings:
        rows = [(f.severity, f.check, f.node, f.problem) for f in report.findings]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(("SEVERITY", "CHECK", "NODE"))]
        indent = sum(widths) + 2 * len(widths)
        lines.append("  ".join(h.ljust(w) for h, w in zip(("SEVERITY", "CHECK", "NODE"), widths)) + "  PROBLEM / FIX")
        for f in report.findings:
            cells = "  ".join(v.ljust(w) for v, w in zip((f.severity, f.check, f.node), widths))
            lines.append(f"{cells}  {f.problem}")
            lines.append(" " * indent + "fix: " + f.fix)
        lines.append("")
    counts = {s: sum(1 for f in report.findings if f.severity == s) for s in (ERROR, WARNING, NOTE)}
    where = f"{len(report.nodes)} node{'s' if len(report.nodes) != 1 else ''}" + (
        f" ({', '.join(report.nodes)})" if report.nodes else "")
    if report.ok:
        lines.append(f"no problems found on {where}" + (f", {counts[NOTE]} note(s)" if counts[NOTE] else ""))
    else:
        parts = [f"{c} {s}{'s' if c != 1 else ''}" for s, c in counts.items() if c]
        lines.append(f"{', '.join(parts)} on {where}")
    return "\n".join(lines) + "\n"
