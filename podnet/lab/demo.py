"""`make demo`: the seed article's experiment, live, on this machine.

Two nodes (network namespaces on one underlay), pod-a on node-1 and pod-b on
node-2, connected by podnet's agents and CNI plugin on the embedded datastore.
It pings pod-b from pod-a, prints the kernel state the article prints, and
decodes one packet captured on node-1's underlay, layer by layer. Then it
removes everything it created.
"""

from __future__ import annotations

import sys
import textwrap
import time

from podnet.lab.lab import Lab, LabSpec
from podnet.observe.capture import CaptureSession
from podnet.observe.packet import decode
from podnet.observe.render import format_packet

LAB_NAME = "pndemo"


def say(text: str = "") -> None:
    print(textwrap.dedent(text).strip("\n"), flush=True)


def step(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 72 - len(title)), flush=True)


def show(lab: Lab, netns: str, *cmd: str, where: str) -> str:
    proc = lab.exec(netns, *cmd)
    out = (proc.stdout + proc.stderr).rstrip()
    print(f"[{where}]$ {' '.join(cmd)}")
    print(textwrap.indent(out, "  ") if out else "  (nothing)", flush=True)
    return out


def run() -> int:
    started = time.monotonic()
    lab = Lab(LAB_NAME, progress=lambda m: print(f"  {m}", flush=True))
    if lab.exists():
        lab.down()
    say("""
        podnet demo: Calico's VXLAN mode, as the seed article shows it, on real kernel devices.
        Each node is a network namespace; an 'underlay' namespace with a bridge is the physical network.
    """)
    try:
        step("1. Build a 2-node cluster: agents, vxlan.calico, pod-a and pod-b")
        lab.up(LabSpec(nodes=2, pods_per_node=1), pod_names=["pod-a", "pod-b"])
        status = lab.status()
        pods = {p["name"]: p for p in status["pods"]}
        nodes = {n["name"]: n for n in status["nodes"]}
        a, b = pods["pod-a"], pods["pod-b"]
        for n in status["nodes"]:
            print(f"  {n['name']}: underlay {n['underlay_ip']}, block {', '.join(n['blocks'])}, "
                  f"vxlan.calico {n['tunnel_ip']} ({n['vtep_mac']})")
        for p in (a, b):
            print(f"  {p['name']}: {p['ip']} on {p['node']} (host side {p['interface']})")

        step("2. pod-a pings pod-b across nodes (ttl=62: two routers, node-1 and node-2)")
        node1 = nodes[a["node"]]
        with CaptureSession(node1["underlay_interface"], node1["netns"]) as capture:
            show(lab, a["netns"], "ping", "-c", "3", "-i", "0.2", "-W", "2", b["ip"], where="pod-a")
            frames = capture.collect(count=1, timeout=3)

        step("3. Inside pod-a: every packet goes to 169.254.1.1, answered by the host's proxy ARP")
        show(lab, a["netns"], "ip", "route", where="pod-a")
        show(lab, a["netns"], "ip", "neigh", where="pod-a")

        step("4. node-1: the remote node's /26 goes via its tunnel IP on vxlan.calico (onlink)")
        show(lab, node1["netns"], "ip", "route", where="node-1")

        step("5. node-1: the VXLAN device (VNI 4096, UDP 4789, nolearning, MTU 1500-50)")
        show(lab, node1["netns"], "ip", "-d", "link", "show", "vxlan.calico", where="node-1")

        step("6. node-1: permanent ARP entry (remote tunnel IP -> remote VTEP MAC)")
        show(lab, node1["netns"], "ip", "neigh", "show", "dev", "vxlan.calico", where="node-1")

        step("7. node-1: permanent FDB entry (remote VTEP MAC -> remote node IP: the outer destination)")
        show(lab, node1["netns"], "bridge", "fdb", "show", "dev", "vxlan.calico", where="node-1")

        step("8. node-2: after decapsulation, the /32 route delivers to pod-b's veth")
        show(lab, nodes[b["node"]]["netns"], "ip", "route", "show", f"{b['ip']}/32", where="node-2")

        step("9. One packet on node-1's underlay, decoded layer by layer")
        if frames:
            ts, frame = frames[0]
            print(format_packet(decode(frame), index=1, timestamp=ts))
        else:
            print("  no VXLAN packet was captured (unexpected: the ping above crossed the underlay)")
            return 1
        print()
        say("""
            The inner frame (pod-a -> pod-b) travels as the payload of a UDP datagram between the node
            addresses; the outer destination came from the FDB entry, the inner destination MAC from the
            permanent ARP entry, and the route chose vxlan.calico. Try it yourself:
              podnet lab up --nodes 2 --pods-per-node 1
              podnet trace pod-1-1 pod-2-1         # every hop explained and checked
              podnet capture --node node-1         # then ping from a pod: each packet, layer by layer
              podnet lab down
        """)
    finally:
        step("10. Tear down")
        removed = lab.down()
        print(f"  removed {len(removed)} resources (namespaces, agents, files)")
        print(f"  demo took {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(run())
