"""The packet decoder, its rendering and pcap files, on frames built by hand."""

import io
import ipaddress
import random
import struct

import pytest

from podnet.observe.packet import Layer, decode, protocols
from podnet.observe.pcap import PcapError, PcapWriter, read_pcap
from podnet.observe.render import format_packet, headline

# An echo request captured on the sending node's underlay veth (kernel VXLAN,
# VNI 4096, pod 10.244.7.1 -> 10.244.7.2, nodes 172.31.0.2 -> 172.31.0.3).
REAL_VXLAN_PING = bytes.fromhex(
    "d2583be483029afd71db4a8e08004500008622d600004011ff4dac1f0002ac1f0003"
    "d45a12b5007258c70800000000100000661e0000000366b3000000020800450000547a"
    "a7400040019c170af407010af407020800fe60272900015d52086b00000000a9e40400"
    "00000000101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e"
    "2f3031323334353637"
)


# --- frame builders ---------------------------------------------------------------

def mac(text):
    return bytes.fromhex(text.replace(":", ""))


def eth(dst, src, ethertype, payload):
    return mac(dst) + mac(src) + struct.pack("!H", ethertype) + payload


def ipv4(src, dst, proto, payload, ttl=64, ident=7, flags=0, frag=0, options=b"", checksum=0xBEEF):
    ihl = (20 + len(options)) // 4
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), ident,
                       flags << 13 | frag // 8, ttl, proto, checksum,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed) + options + payload


def ipv6(src, dst, next_header, payload, hop_limit=64):
    return struct.pack("!IHBB16s16s", 6 << 28 | 0x01 << 20 | 0x12345, len(payload), next_header, hop_limit,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed) + payload


def udp(sport, dport, payload, checksum=0):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), checksum) + payload


def vxlan(vni, payload, flags=0x08):
    return struct.pack("!B3xI", flags, vni << 8) + payload


def icmp_echo(kind, ident, seq, data=b"", checksum=0xABCD):
    return struct.pack("!BBHHH", kind, 0, checksum, ident, seq) + data


NODE_A, NODE_B = "02:00:00:00:00:01", "02:00:00:00:00:02"
VTEP_A, VTEP_B = "66:b3:00:00:00:05", "66:1e:00:00:00:46"


def vxlan_ping():
    inner = eth(VTEP_B, VTEP_A, 0x0800,
                ipv4("10.244.0.5", "10.244.0.70", 1, icmp_echo(8, 12, 1, b"x" * 56), ttl=63, flags=2))
    return eth(NODE_B, NODE_A, 0x0800,
               ipv4("172.31.0.2", "172.31.0.3", 17, udp(54321, 4789, vxlan(4096, inner)), ident=99))


# --- decoding -------------------------------------------------------------------

def test_vxlan_icmp_fields():
    layers = decode(vxlan_ping())
    assert protocols(layers) == "eth:ip:udp:vxlan:eth:ip:icmp"
    assert [layer.fields for layer in layers] == [
        {"dst": NODE_B, "src": NODE_A, "ethertype": 0x0800, "length": 148},
        {"src": "172.31.0.2", "dst": "172.31.0.3", "ttl": 64, "proto": 17, "length": 134, "header_len": 20,
         "tos": 0, "id": 99, "flags": 0, "frag_offset": 0, "checksum": 0xBEEF, "options": b""},
        {"sport": 54321, "dport": 4789, "length": 114, "checksum": 0, "payload_len": 106},
        {"flags": 0x08, "vni": 4096, "length": 106},
        {"dst": VTEP_B, "src": VTEP_A, "ethertype": 0x0800, "length": 98},
        {"src": "10.244.0.5", "dst": "10.244.0.70", "ttl": 63, "proto": 1, "length": 84, "header_len": 20,
         "tos": 0, "id": 7, "flags": 2, "frag_offset": 0, "checksum": 0xBEEF, "options": b""},
        {"type": 8, "code": 0, "checksum": 0xABCD, "id": 12, "seq": 1, "length": 64, "payload_len": 56},
    ]
    assert [layer.summary for layer in layers] == [
        f"Ethernet {NODE_A} -> {NODE_B}",
        "IPv4 172.31.0.2 -> 172.31.0.3  ttl 64  proto UDP  len 134",
        "UDP 54321 -> 4789",
        "VXLAN flags I  VNI 4096",
        f"Ethernet {VTEP_A} -> {VTEP_B}",
        "IPv4 10.244.0.5 -> 10.244.0.70  ttl 63  proto ICMP  len 84",
        "ICMP echo request id 12 seq 1",
    ]


def test_real_captured_frame():
    layers = decode(REAL_VXLAN_PING)
    assert protocols(layers) == "eth:ip:udp:vxlan:eth:ip:icmp"
    outer_eth, outer_ip, outer_udp, vx, inner_eth, inner_ip, icmp = (layer.fields for layer in layers)
    assert (outer_eth["src"], outer_eth["dst"]) == ("9a:fd:71:db:4a:8e", "d2:58:3b:e4:83:02")
    assert (outer_ip["src"], outer_ip["dst"], outer_ip["checksum"], outer_ip["id"]) == \
        ("172.31.0.2", "172.31.0.3", 0xFF4D, 0x22D6)
    assert outer_udp == {"sport": 54362, "dport": 4789, "length": 114, "checksum": 0x58C7, "payload_len": 106}
    assert vx == {"flags": 0x08, "vni": 4096, "length": 106}
    assert (inner_eth["src"], inner_eth["dst"]) == ("66:b3:00:00:00:02", "66:1e:00:00:00:03")
    assert (inner_ip["src"], inner_ip["dst"], inner_ip["flags"], inner_ip["checksum"]) == \
        ("10.244.7.1", "10.244.7.2", 2, 0x9C17)
    assert icmp == {"type": 8, "code": 0, "checksum": 0xFE60, "id": 10025, "seq": 1,
                    "length": 64, "payload_len": 56}


def test_arp_request():
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac(NODE_A),
                      bytes([172, 31, 0, 2]), bytes(6), bytes([172, 31, 0, 3]))
    layers = decode(eth("ff:ff:ff:ff:ff:ff", NODE_A, 0x0806, arp + bytes(18)))  # padded to 60 bytes
    assert protocols(layers) == "eth:arp"
    assert layers[1].fields == {"op": 1, "sender_mac": NODE_A, "sender_ip": "172.31.0.2",
                                "target_mac": "00:00:00:00:00:00", "target_ip": "172.31.0.3", "length": 28}
    assert layers[1].summary == f"ARP who has 172.31.0.3? tell 172.31.0.2 ({NODE_A})"


def test_ipv6_icmpv6_echo_and_neighbor_solicitation():
    echo = struct.pack("!BBHHH", 128, 0, 0x1111, 5, 9) + b"abcd"
    layers = decode(eth(NODE_B, NODE_A, 0x86DD, ipv6("fd00::1", "fd00::2", 58, echo)))
    assert protocols(layers) == "eth:ipv6:icmpv6"
    assert layers[1].fields == {"src": "fd00::1", "dst": "fd00::2", "hop_limit": 64, "proto": 58,
                                "next_header": 58, "ext_headers": (), "payload_length": 12, "length": 52,
                                "traffic_class": 0x01, "flow_label": 0x12345}
    assert layers[2].fields == {"type": 128, "code": 0, "checksum": 0x1111, "id": 5, "seq": 9,
                                "length": 12, "payload_len": 4}

    # A hop-by-hop header (8 bytes, as MLD reports carry) is skipped.
    hop_by_hop = bytes([58, 0, 5, 2, 0, 0, 1, 0])
    ns = struct.pack("!BBHI16s", 135, 0, 0x2222, 0, ipaddress.IPv6Address("fe80::2").packed)
    layers = decode(eth("33:33:ff:00:00:02", NODE_A, 0x86DD, ipv6("fe80::1", "ff02::1:ff00:2", 0, hop_by_hop + ns)))
    assert protocols(layers) == "eth:ipv6:icmpv6"
    ip6 = layers[1].fields
    assert (ip6["next_header"], ip6["proto"], ip6["ext_headers"]) == (0, 58, (0,))
    assert layers[2].fields == {"type": 135, "code": 0, "checksum": 0x2222, "length": 24, "payload_len": 0,
                                "target": "fe80::2"}
    assert layers[2].summary == "ICMPv6 neighbor solicitation target fe80::2"


def test_tcp_syn_with_options():
    options = bytes([2, 4, 0x05, 0xB4, 1, 1, 4, 2])  # MSS 1460, NOP, NOP, SACK permitted
    tcp = struct.pack("!HHIIHHHH", 40000, 80, 1000, 0, (7 << 12) | 0x02, 64240, 0x3333, 0) + options
    layers = decode(eth(NODE_B, NODE_A, 0x0800, ipv4("10.0.0.1", "10.0.0.2", 6, tcp)))
    assert protocols(layers) == "eth:ip:tcp"
    assert layers[2].fields == {"sport": 40000, "dport": 80, "seq": 1000, "ack": 0, "flags": 0x02,
                                "window": 64240, "header_len": 28, "checksum": 0x3333, "urgent": 0,
                                "payload_len": 0, "length": 28}
    assert headline(layers) == "TCP 10.0.0.1:40000 -> 10.0.0.2:80  [SYN]"


def test_vlan_tag_and_ipv4_options_and_padding():
    options = bytes([0x94, 4, 0, 0])  # router alert
    packet = ipv4("10.0.0.1", "10.0.0.2", 17, udp(1000, 53, b"q"), options=options)
    tagged = struct.pack("!HH", (5 << 13) | 100, 0x0800) + packet + bytes(7)  # Ethernet padding
    layers = decode(eth(NODE_B, NODE_A, 0x8100, tagged))
    assert protocols(layers) == "eth:vlan:ip:udp"
    assert layers[1].fields == {"vid": 100, "pcp": 5, "dei": 0, "ethertype": 0x0800}
    assert (layers[2].fields["header_len"], layers[2].fields["options"]) == (24, options)
    assert layers[3].fields["payload_len"] == 1  # the padding is not payload


def test_custom_vxlan_port():
    inner = eth(VTEP_B, VTEP_A, 0x0800, ipv4("10.1.0.1", "10.1.0.2", 1, icmp_echo(0, 1, 1)))
    frame = eth(NODE_B, NODE_A, 0x0800, ipv4("192.0.2.1", "192.0.2.2", 17, udp(1234, 8472, vxlan(1, inner))))
    assert protocols(decode(frame)) == "eth:ip:udp"
    assert protocols(decode(frame, vxlan_ports=(4789, 8472))) == "eth:ip:udp:vxlan:eth:ip:icmp"


@pytest.mark.parametrize("frame, reason", [
    (eth(NODE_B, NODE_A, 0x88CC, b"lldp..."), "ethertype 0x88cc not decoded"),
    (eth(NODE_B, NODE_A, 0x0800, ipv4("10.0.0.1", "10.0.0.2", 17, b"12345678", frag=1480)),
     "IPv4 fragment at offset 1480"),
    (eth(NODE_B, NODE_A, 0x0800, ipv4("10.0.0.1", "10.0.0.2", 47, b"gre!")), "IP protocol 47 not decoded"),
    (eth(NODE_B, NODE_A, 0x0800, b"\x43" + bytes(19)), "IPv4 header length 12 is below the minimum of 20"),
])
def test_undecodable_rest_is_raw(frame, reason):
    layers = decode(frame)
    assert layers[-1].name == "Raw"
    assert layers[-1].fields["reason"] == reason


def test_every_cut_of_a_real_frame_is_reported_truncated():
    full = [layer.name for layer in decode(REAL_VXLAN_PING)]
    for n in range(len(REAL_VXLAN_PING)):
        layers = decode(REAL_VXLAN_PING[:n])
        names = [layer.name for layer in layers]
        assert names[-1] == "Truncated", (n, names)
        assert names[:-1] == full[:len(names) - 1], (n, names)
        assert layers[-1].fields["available"] < layers[-1].fields["needed"]
    assert decode(b"")[0].fields == {"layer": "Ethernet", "needed": 14, "available": 0}
    # Cut inside the ICMP data: every header decodes; the outer IPv4 says what is missing.
    assert decode(REAL_VXLAN_PING[:-10])[-1].fields == {"layer": "IPv4", "needed": 134, "available": 124}


def test_random_damage_never_raises():
    rng = random.Random(4789)
    frames = [REAL_VXLAN_PING, vxlan_ping()]
    for _ in range(3000):
        frame = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 6)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        layers = decode(bytes(frame[:rng.randint(0, len(frame))]))
        assert layers and all(isinstance(layer, Layer) for layer in layers)
        format_packet(layers)  # rendering must cope with whatever the decoder returns
    for _ in range(500):
        format_packet(decode(rng.randbytes(rng.randint(0, 120))))


# --- rendering -------------------------------------------------------------------

def test_format_vxlan_packet():
    text = format_packet(decode(vxlan_ping()), index=1)
    assert text.splitlines() == [
        "#1  VXLAN-encapsulated ICMP echo request 10.244.0.5 -> 10.244.0.70",
        f"  outer Ethernet  {NODE_A} -> {NODE_B}  (node NICs)",
        "  outer IPv4      172.31.0.2 -> 172.31.0.3  ttl 64  proto UDP  len 134",
        "  outer UDP       54321 -> 4789  (VXLAN)",
        "  VXLAN           flags I  VNI 4096",
        f"  inner Ethernet  {VTEP_A} -> {VTEP_B}  (vxlan.calico MACs)",
        "  inner IPv4      10.244.0.5 -> 10.244.0.70  ttl 63  proto ICMP  len 84",
        "  inner ICMP      echo request id 12 seq 1",
    ]


def test_format_plain_and_truncated_packets():
    frame = eth(NODE_B, NODE_A, 0x0800, ipv4("10.0.0.1", "10.0.0.2", 17, udp(5000, 53, b"query")))
    text = format_packet(decode(frame))
    assert text.splitlines()[0] == "UDP 10.0.0.1:5000 -> 10.0.0.2:53"
    assert "outer" not in text and "inner" not in text
    cut = format_packet(decode(REAL_VXLAN_PING[:60]), timestamp=0.5)
    assert cut.splitlines()[0].endswith("VXLAN-encapsulated frame (truncated)")
    assert cut.splitlines()[-1] == "  Truncated       Ethernet needs 14 bytes, only 10 captured"


# --- pcap ------------------------------------------------------------------------

def test_pcap_round_trip(tmp_path):
    frames = [(1700000000.123456, REAL_VXLAN_PING), (1700000001.999999, vxlan_ping()), (1700000002.0, b"")]
    path = tmp_path / "ping.pcap"
    with PcapWriter(path) as writer:
        for ts, frame in frames:
            writer.write(ts, frame)
    data = path.read_bytes()
    assert data[:24] == struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    assert data[24:40] == struct.pack("<IIII", 1700000000, 123456, len(REAL_VXLAN_PING), len(REAL_VXLAN_PING))
    back = read_pcap(path)
    assert [frame for _, frame in back] == [frame for _, frame in frames]
    assert [round(ts, 6) for ts, _ in back] == [ts for ts, _ in frames]


def test_pcap_file_objects_big_endian_and_errors():
    buf = io.BytesIO()
    writer = PcapWriter(buf, snaplen=64)
    writer.write(1.5, REAL_VXLAN_PING)
    writer.close()
    assert not buf.closed
    buf.seek(0)
    ((ts, frame),) = read_pcap(buf)
    assert (ts, frame) == (1.5, REAL_VXLAN_PING[:64])

    big = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + struct.pack(">IIII", 7, 250000, 3, 3) + b"abc"
    assert read_pcap(io.BytesIO(big)) == [(7.25, b"abc")]
    with pytest.raises(PcapError, match="cut off"):
        read_pcap(io.BytesIO(big[:-1]))
    with pytest.raises(PcapError, match="pcapng"):
        read_pcap(io.BytesIO(b"\x0a\x0d\x0d\x0a" + bytes(40)))
    with pytest.raises(PcapError, match="not a pcap file"):
        read_pcap(io.BytesIO(bytes(40)))
