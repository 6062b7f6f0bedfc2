"""The VXLAN checksum self-test: passes on a sound path, fails where packets arrive with bad checksums."""

from __future__ import annotations

import os
import subprocess

from podnet.calc.offload import FAILED, PASSED
from podnet.dataplane import csum_selftest

# In the receiver's namespace: overwrite one byte 110 bytes into each long enough frame (inside the
# encapsulated TCP or UDP payload), after the receiver's capture saw it and before its stack checks it.
MANGLE = """table netdev podnet_selftest {
  chain mangle {
    type filter hook ingress device "under0" priority 0;
    @nh,880,8 set 0x55
  }
}
"""


def _held_namespaces() -> int:
    """Network namespaces this process holds open (the self-test's anonymous ones live only through these)."""
    held = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            held += os.readlink(f"/proc/self/fd/{fd}").startswith("net:")
        except OSError:
            pass
    return held


def test_a_sound_tunnel_passes_with_every_inner_checksum_checked():
    before = _held_namespaces()
    evidence = csum_selftest.run()
    assert evidence.selftest == PASSED, evidence.detail
    assert "0 bad" in evidence.detail and " 0 inner checksums valid" not in evidence.detail
    assert _held_namespaces() == before  # its anonymous namespaces are released: nothing is left


def test_packets_arriving_with_bad_checksums_fail_it():
    def mangle(sender_fd: int, receiver_fd: int) -> None:
        subprocess.run(["nsenter", f"--net=/proc/{os.getpid()}/fd/{receiver_fd}", "nft", "-f", "-"], input=MANGLE,
                       text=True, check=True, capture_output=True)

    evidence = csum_selftest.run(timeout=1.0, tamper=mangle)
    assert evidence.selftest == FAILED, evidence.detail
    assert "InCsumErrors +0, Udp InCsumErrors +0" not in evidence.detail


def test_the_counters_are_the_namespaces_own():
    counters = csum_selftest.checksum_errors()
    assert set(counters) == {"Tcp", "Udp"} and all(v >= 0 for v in counters.values())
