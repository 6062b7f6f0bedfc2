"""A trace as a picture, in the spirit of the seed article's figure: nodes as boxes, the pods in
them, the devices the packet crosses (eth0, the cali veth, the routing table, vxlan.calico, the
underlay NIC) and the VXLAN tunnel over the underlay. Each device and arrow is coloured by the
hop that checks it, and numbered like the text output. An IPv6 trace shows the IPv6 side: /128
pods, the veth's link-local gateway, vxlan-v6.calico and the nodes' IPv6 addresses.

Hand-written SVG 1.1: no dependencies, opens in any browser.
"""

from __future__ import annotations

from xml.sax.saxutils import escape, quoteattr

from podnet.observe.trace import BROKEN, OK, UNKNOWN, WARNING, Family, Trace

_STROKE = {OK: "#2e7d32", BROKEN: "#c62828", WARNING: "#ef6c00", UNKNOWN: "#9e9e9e"}
_FILL = {OK: "#e8f5e9", BROKEN: "#ffebee", WARNING: "#fff3e0", UNKNOWN: "#f5f5f5"}
_LEGEND = [(OK, "as it must be"), (BROKEN, "broken"), (WARNING, "warning"), (UNKNOWN, "not inspected")]
_FONT = "font-family=\"DejaVu Sans Mono, Menlo, Consolas, monospace\""

NODE_W, NODE_H, GAP, MARGIN = 500, 520, 60, 20


class _Canvas:
    def __init__(self, trace: Trace):
        self.t = trace
        self.fam = Family(trace.family)
        self.parts: list[str] = []
        self.number = {h.id: i for i, h in enumerate(trace.hops, 1)}
        self.status = {h.id: h.status for h in trace.hops}

    def state(self, *hop_ids: str) -> str:
        """The worst status among these hops (those the trace has)."""
        seen = [self.status[h] for h in hop_ids if h in self.status]
        for s in (BROKEN, WARNING, UNKNOWN, OK):
            if s in seen:
                return s
        return UNKNOWN

    def rect(self, x, y, w, h, status=None, rx=6, fill=None, dash=False) -> None:
        stroke = _STROKE[status] if status else "#455a64"
        fill = fill or (_FILL[status] if status else "#ffffff")
        extra = ' stroke-dasharray="6 4"' if dash else ""
        self.parts.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{rx}" fill="{fill}" '
                          f'stroke="{stroke}" stroke-width="{2 if status else 1.5}"{extra}/>')

    def text(self, x, y, s, size=12, anchor="start", bold=False, color="#212121") -> None:
        weight = ' font-weight="bold"' if bold else ""
        self.parts.append(f'<text x="{x}" y="{y}" font-size="{size}" text-anchor="{anchor}" fill="{color}"'
                          f'{weight}>{escape(str(s))}</text>')

    def arrow(self, points: list[tuple[float, float]], status: str, width=2.5, dash=False) -> None:
        d = " ".join(f"{'M' if i == 0 else 'L'}{x},{y}" for i, (x, y) in enumerate(points))
        extra = ' stroke-dasharray="8 5"' if dash else ""
        self.parts.append(f'<path d="{d}" fill="none" stroke="{_STROKE[status]}" stroke-width="{width}"{extra} '
                          f'marker-end="url(#arrow-{status})"/>')

    def badge(self, x, y, hop_id: str) -> None:
        if hop_id not in self.number:
            return
        status = self.status[hop_id]
        self.parts.append(f'<circle cx="{x}" cy="{y}" r="9" fill="{_STROKE[status]}"/>')
        self.text(x, y + 4, self.number[hop_id], size=10, anchor="middle", bold=True, color="#ffffff")

    def hop_text(self, hop_id: str, default: str = "") -> str:
        hop = next((h for h in self.t.hops if h.id == hop_id), None)
        return hop.found if hop else default


def _defs() -> str:
    markers = "".join(
        f'<marker id="arrow-{s}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="14" markerHeight="14" '
        f'markerUnits="userSpaceOnUse" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{c}"/>'
        "</marker>" for s, c in _STROKE.items())
    return f"<defs>{markers}</defs>"


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[:n - 1] + "…"


def _node_box(c: _Canvas, x: int, name: str, info: dict) -> None:
    c.rect(x, 40, NODE_W, NODE_H, None, rx=10, fill="#fafafa")
    where = "" if not info.get("netns") else f"  (netns {info['netns']})"
    c.text(x + 14, 62, f"{name}  {info.get('ip') or '?'}{where}", size=13, bold=True)
    if not info.get("readable"):
        c.text(x + 14, 78, "kernel not read from here", size=11, color=_STROKE[UNKNOWN])


def _pod(c: _Canvas, x: int, label: str, ip: str, hop_id: str) -> tuple[int, int]:
    """A pod with its eth0; returns the bottom centre of eth0."""
    c.rect(x, 84, 240, 92, c.state(hop_id), rx=8)
    c.text(x + 12, 104, label.split(" ")[0], size=13, bold=True)
    c.text(x + 12, 122, f"{ip}/{c.fam.host_len}", size=12)
    c.rect(x + 60, 136, 120, 28, c.state(hop_id), rx=4, fill="#ffffff")
    c.text(x + 120, 155, "eth0", size=12, anchor="middle")
    c.badge(x + 230, 94, hop_id)
    return x + 120, 164


def _device(c: _Canvas, x: int, y: int, w: int, h: int, lines: list[str], hop_ids: tuple[str, ...],
            numbered: bool = True, size: int = 12) -> None:
    c.rect(x, y, w, h, c.state(*hop_ids), rx=5)
    for i, line in enumerate(lines):
        c.text(x + w / 2, y + 18 + 15 * i, _short(line, int(w / (size * 0.61))), size=size if i == 0 else 10,
               anchor="middle", bold=i == 0)
    if numbered:
        c.badge(x - 12, y + 10, hop_ids[0])


def _vxlan_name(c: _Canvas, node: dict) -> str:
    return node.get("device") or ("vxlan.calico" if c.fam.version == 4 else "vxlan-v6.calico")


def _route(c: _Canvas, x: int, hop_id: str) -> None:
    _device(c, x + 20, 278, NODE_W - 40, 30, [c.hop_text(hop_id, "route")], (hop_id,), size=11)


def _cross_node(c: _Canvas) -> int:
    t = c.t
    ax, bx = MARGIN, MARGIN + NODE_W + GAP
    a, b = t.nodes.get(t.src.node, {}), t.nodes.get(t.dst.node, {})
    w = t.wire or {}
    direct = t.kind == "cross-node-direct"  # CrossSubnet inside one subnet: no VXLAN devices on the way
    _node_box(c, ax, t.src.node, a)
    _node_box(c, bx, t.dst.node, b)

    # Source side, top to bottom.
    ex, ey = _pod(c, ax + 40, t.src.label, t.src.ip, "pod-interface")
    _device(c, ax + 80, 214, 160, 32, [t.src.host_interface or "cali?"], ("gateway",))
    c.text(ax + 252, 228, "proxy ARP for" if c.fam.version == 4 else "NDP: it holds", size=10)
    c.text(ax + 252, 241, c.fam.gateway, size=10)
    c.arrow([(ex, ey), (ex, 212)], c.state("pod-route"))
    c.badge(ex + 14, 190, "pod-route")
    _route(c, ax, "host-route")
    c.arrow([(ex, 246), (ex, 276)], c.state("gateway"))
    if direct:
        _device(c, ax + 80, 460, 160, 32, [f"{a.get('interface') or 'eth0'} {a.get('ip') or ''}"], ("host-route",),
                numbered=False)
        c.arrow([(ex, 308), (ex, 458)], c.state("host-route"))
    else:
        _vxlan_source(c, ax, ex, a, b, w)
    _destination(c, bx, b, direct)
    _underlay(c, ex, bx + 160, w, direct)
    return 2 * NODE_W + GAP + 2 * MARGIN


def _vxlan_source(c: _Canvas, ax: int, ex: int, a: dict, b: dict, w: dict) -> None:
    """vxlan.calico, its neighbour and FDB entries, and the underlay NIC of the sending node."""
    _device(c, ax + 80, 340, 160, 64, [_vxlan_name(c, a), a.get("tunnel_ip") or "", a.get("vtep_mac") or ""],
            ("vxlan-device",))
    c.arrow([(ex, 308), (ex, 338)], c.state("host-route"))
    mac, dst = w.get("inner_dst_mac", b.get("vtep_mac")), w.get("outer_dst", b.get("ip"))
    c.rect(ax + 262, 340, 224, 64, c.state("neighbour", "fdb"), rx=5)
    entries = [("neighbour", f"neigh {b.get('tunnel_ip')}", f"  lladdr {mac}"), ("fdb", f"fdb {mac}", f"  dst {dst}")]
    for i, (hop_id, first, second) in enumerate(entries):
        if c.status.get(hop_id, OK) != OK:  # show what is there instead of what should be
            found = c.hop_text(hop_id)
            if found.startswith("no "):
                first, second = f"{first} MISSING", second
            else:
                first, second = _short(found, 34), "  " + _short(found[34:], 32)
        color = _STROKE[c.state(hop_id)] if hop_id in c.status else "#212121"
        c.text(ax + 270, 356 + 29 * i, first, size=10, color=color)
        c.text(ax + 270, 369 + 29 * i, second, size=10)
    c.badge(ax + 262, 340, "neighbour")
    c.badge(ax + 486, 340, "fdb")
    _device(c, ax + 80, 460, 160, 32, [f"{a.get('interface') or 'eth0'} {a.get('ip') or ''}"], ("underlay-route",))
    c.arrow([(ex, 404), (ex, 458)], c.state("vxlan-device", "neighbour", "fdb"))
    c.text(ex + 10, 436, f"encapsulate: VNI {w.get('vni', '?')}, UDP {w.get('port', '?')}", size=10)


def _destination(c: _Canvas, bx: int, b: dict, direct: bool) -> None:
    """The receiving node, bottom to top: NIC, vxlan.calico (unless direct), route, veth, pod."""
    t = c.t
    dx = bx + 120 + 40
    first = "remote-route" if direct else "decapsulation"
    _device(c, bx + 80, 460, 160, 32, [f"{b.get('interface') or 'eth0'} {b.get('ip') or ''}"], (first,),
            numbered=False)
    if direct:
        c.arrow([(dx, 460), (dx, 310)], c.state("remote-route"))
    else:
        _device(c, bx + 80, 340, 160, 64, [_vxlan_name(c, b), b.get("tunnel_ip") or "", b.get("vtep_mac") or ""],
                ("decapsulation",))
        c.arrow([(dx, 460), (dx, 406)], c.state("decapsulation"))
        c.text(dx + 10, 436, "decapsulate", size=10)
        c.arrow([(dx, 340), (dx, 310)], c.state("remote-route"))
    _route(c, bx, "remote-route")
    if t.dst.pod:
        _device(c, bx + 80, 214, 160, 32, [t.dst.host_interface or "cali?"], ("dst-veth",))
        c.arrow([(dx, 278), (dx, 248)], c.state("dst-veth"))
        px, py = _pod(c, bx + 40, t.dst.label, t.dst.ip, "dst-pod")
        c.arrow([(dx, 214), (px, py + 2)], c.state("dst-pod"))
    else:
        c.text(bx + 40, 200, f"no pod holds {t.dst.ip}", size=12, color=_STROKE[BROKEN])


def _underlay(c: _Canvas, ex: int, dx: int, w: dict, direct: bool) -> None:
    """The underlay network and, over it, the VXLAN tunnel (or the plain packet, when direct)."""
    band_y = 590
    c.rect(MARGIN, band_y - 14, 2 * NODE_W + GAP, 44, None, rx=6, fill="#eceff1")
    c.text(MARGIN + 10, band_y + 26, "underlay network", size=10, color="#546e7a")
    if direct:
        label = f"direct, no encapsulation (CrossSubnet): {c.t.src.ip} -> {c.t.dst.ip}"
        c.arrow([(ex, 492), (ex, band_y + 4), (dx, band_y + 4), (dx, 494)], c.state("host-route", "remote-route"),
                width=4)
    else:
        label = (f"VXLAN VNI {w.get('vni', '?')} / UDP {w.get('port', '?')}: {w.get('outer_src', '?')} -> "
                 f"{w.get('outer_dst', '?')}")
        tunnel = c.state("encapsulation", "underlay-route", "decapsulation")
        c.arrow([(ex, 492), (ex, band_y + 4), (dx, band_y + 4), (dx, 494)], tunnel, width=6, dash=True)
        c.badge(ex - 14, band_y - 30, "encapsulation")
    c.text(MARGIN + NODE_W + GAP / 2, band_y - 2, label, size=11, anchor="middle", bold=True)


def _same_node(c: _Canvas) -> int:
    t = c.t
    width = 2 * NODE_W + GAP
    info = t.nodes.get(t.src.node, {})
    c.rect(MARGIN, 40, width, 330, None, rx=10, fill="#fafafa")
    where = f"  (netns {info['netns']})" if info.get("netns") else ""
    c.text(MARGIN + 14, 62, f"{t.src.node}  {info.get('ip') or '?'}{where}", size=13, bold=True)
    sx, dx = MARGIN + 60, MARGIN + width - 300
    ex, ey = _pod(c, sx, t.src.label, t.src.ip, "pod-interface")
    _device(c, sx + 40, 214, 160, 32, [t.src.host_interface or "cali?"], ("gateway",))
    c.arrow([(ex, ey), (ex, 212)], c.state("pod-route"))
    c.badge(ex + 14, 190, "pod-route")
    mid = MARGIN + width / 2
    _device(c, mid - 230, 290, 460, 30, [c.hop_text("host-route", "route")], ("host-route",), numbered=False,
            size=11)
    c.badge(mid, 280, "host-route")
    c.arrow([(ex, 246), (ex, 305), (mid - 232, 305)], c.state("gateway"))
    if t.dst.pod:
        px, py = _pod(c, dx, t.dst.label, t.dst.ip, "dst-pod")
        _device(c, dx + 40, 214, 160, 32, [t.dst.host_interface or "cali?"], ("dst-veth",))
        c.arrow([(mid + 230, 305), (px, 305), (px, 248)], c.state("host-route"))
        c.arrow([(px, 214), (px, py + 2)], c.state("dst-veth", "dst-pod"))
    return width + 2 * MARGIN


def render_svg(trace: Trace) -> str:
    c = _Canvas(trace)
    across = trace.kind != "same-node"
    width = _cross_node(c) if across else _same_node(c)
    top = 650 if across else 400
    c.text(MARGIN, 26, f"podnet trace: {trace.src.label} -> {trace.dst.label}", size=15, bold=True)
    for i, (status, label) in enumerate(_LEGEND):
        x = MARGIN + i * 160
        c.rect(x, top, 14, 14, status, rx=2)
        c.text(x + 20, top + 12, label, size=11)
    broken = trace.first_broken
    room = int((width - 2 * MARGIN) / 7.4)  # characters of 12px monospace that fit
    if broken:
        verdict = f"broken at hop {trace.hops.index(broken) + 1} ({broken.title}, {broken.where})"
        c.text(MARGIN, top + 36, _short(f"{verdict}: expected {broken.expected}", room), size=12,
               color=_STROKE[BROKEN], bold=True)
        if broken.fix:
            c.text(MARGIN, top + 54, _short(f"fix: {broken.fix}", room), size=11)
    else:
        warnings = [h for h in trace.hops if h.status == WARNING]
        if warnings:
            verdict = (f"no hop is broken; {len(warnings)} warning{'s' if len(warnings) > 1 else ''}: "
                       + ", ".join(f"hop {trace.hops.index(h) + 1} ({h.title})" for h in warnings))
            c.text(MARGIN, top + 36, _short(verdict, room), size=12, color=_STROKE[WARNING], bold=True)
        else:
            c.text(MARGIN, top + 36, "every inspected hop is as it must be", size=12, color=_STROKE[OK], bold=True)
    height = top + 70
    title = f"podnet trace {trace.src.label} -> {trace.dst.label}"
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" {_FONT} aria-label={quoteattr(title)}>\n'
            f'<title>{escape(title)}</title>\n{_defs()}\n'
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>\n' + "\n".join(c.parts) + "\n</svg>\n")
