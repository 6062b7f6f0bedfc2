"""Traffic and kernel-event witnesses for tests: a steady ping, and a netlink monitor."""

from __future__ import annotations

import re
import subprocess
import time


class Pinger:
    """ping at 100 per second from one namespace to an address for the length of a with-block."""

    def __init__(self, src_netns: str, dst_ip: str, interval: float = 0.01):
        self.cmd = ["ip", "netns", "exec", src_netns, "ping", "-i", str(interval), "-W", "1", dst_ip]

    def __enter__(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)
        return self

    def __exit__(self, *exc):
        time.sleep(0.3)
        self.proc.send_signal(2)  # SIGINT: ping prints its summary
        out, _ = self.proc.communicate(timeout=10)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        self.sent, self.received = int(m.group(1)), int(m.group(2))

    @property
    def lost(self) -> int:
        return self.sent - self.received


class KernelMonitor:
    """Every route, neighbour and FDB change in a namespace while the with-block runs (iproute2's monitors)."""

    def __init__(self, netns: str):
        self.cmds = [["ip", "-n", netns, "monitor", "route", "neigh"],
                     ["ip", "netns", "exec", netns, "bridge", "monitor", "fdb"]]

    def __enter__(self):
        self.procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                      for c in self.cmds]
        time.sleep(0.2)  # let the monitors subscribe before anything happens
        return self

    def __exit__(self, *exc):
        time.sleep(0.2)
        self.lines = []
        for p in self.procs:
            p.terminate()
            out, _ = p.communicate(timeout=10)
            self.lines += out.splitlines()

    def deleted(self, needle: str = "") -> list[str]:
        return [l for l in self.lines if l.startswith("Deleted") and needle in l]
