"""Run inside a lab pod's namespace: `serve` answers TCP and UDP on the given ports; `probe` tries
every target in parallel and prints which answered, as JSON. Standard library only."""

from __future__ import annotations

import json
import selectors
import socket
import sys
import threading


def serve(ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        for port in ports:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = socket.socket(family, kind)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind((host, port))
                except OSError:
                    s.close()
                    continue
                if kind == socket.SOCK_STREAM:
                    s.listen(128)
                s.setblocking(False)
                sel.register(s, selectors.EVENT_READ, kind)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            try:
                if key.data == socket.SOCK_STREAM:
                    conn, _ = s.accept()
                    conn.sendall(b"ok")
                    conn.close()
                else:
                    data, peer = s.recvfrom(64)
                    s.sendto(b"ok", peer)
            except OSError:
                pass


def _one(target: dict, timeout: float) -> bool:
    family = socket.AF_INET6 if ":" in target["ip"] else socket.AF_INET
    kind = socket.SOCK_STREAM if target["proto"] == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as s:
        s.settimeout(timeout if kind == socket.SOCK_STREAM else timeout / 3)
        try:
            if target.get("sport"):
                # A UDP flow that an earlier round allowed stays ESTABLISHED in conntrack for 30-120 s and is
                # accepted whatever the policy says now; a source port no earlier round used makes it new.
                s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", target["sport"]))
            if kind == socket.SOCK_STREAM:
                s.connect((target["ip"], target["port"]))
                return s.recv(2) == b"ok"
            for _ in range(3):  # a datagram may be lost; a denied one never answers
                s.sendto(b"hi", (target["ip"], target["port"]))
                try:
                    return s.recv(2) == b"ok"
                except socket.timeout:
                    continue
            return False
        except OSError:
            return False


def probe(targets: list[dict], timeout: float) -> dict:
    out = {}

    def run(t):
        out[t["key"]] = _one(t, timeout)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve([int(p) for p in sys.argv[2:]])
    else:
        spec = json.loads(sys.stdin.read())
        print(json.dumps(probe(spec["targets"], spec.get("timeout", 1.0))))
