"""Watching packets on the wire: decode frames (including VXLAN's inner frame),
describe them for people, capture them from an interface in a namespace, and
save them as pcap files that tcpdump and Wireshark open.
"""
