"""Hostile clients of the agent's plugin socket: silent, slow, oversized, foreign and lying requests.

These speak to the agent directly (the plugin executables never send such requests), so they run once,
on one lab of their own (names `pnt-ha…`), through tests/integration/hostile.py's checks: the exact
code, nothing on the node changed, no traceback in the agent's log, the bystander pod reachable.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time

import pytest

from podnet.cni import wire
from podnet.netns import socket_in
from tests.integration import kernel
from tests.integration.hostile import Hostile, config, hostile_lab
from tests.integration.witness import wait_for

INVALID_ENVIRONMENT, INVALID_CONFIG, TRY_AGAIN_LATER = 4, 7, 11


@pytest.fixture(scope="module")
def hostile():
    with hostile_lab("pnt-ha") as h:
        yield h


@contextlib.contextmanager
def raw_clients(hostile: Hostile, count: int):
    """count connections to node-1's agent, made from its namespace, closed afterwards."""
    made: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket_in(f"/run/netns/{hostile.lab.node_netns('node-1')}", socket.AF_UNIX, socket.SOCK_STREAM)
            made.append(s)
            s.settimeout(30)
            s.connect(wire.sockaddr(wire.DEFAULT_ADDRESS))
        yield made
    finally:
        for s in made:
            s.close()


def answer(s: socket.socket) -> tuple[int, dict]:
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\n")
    return int(head), json.loads(body)


def test_silent_clients_do_not_hold_the_pool(hostile):
    """80 connections that send nothing (more than the pool's 64 threads): an unrelated DEL and an ADD of
    a real pod are served while they wait."""
    netns = hostile.sandbox()
    env = hostile.env("ADD", netns)
    with hostile.unharmed():
        with raw_clients(hostile, 80):
            add = hostile.run(env, timeout=30)
            assert add.code == 0, add
            # (the new pod's first packets may wait for the filter layer to learn its endpoint)
            assert wait_for(lambda: kernel.ping(os.path.basename(netns), hostile.peer["ip"]).returncode == 0, 10)
            delete = hostile.run(dict(env, CNI_COMMAND="DEL"), timeout=30)
            assert delete.code == 0, delete


def test_a_silent_client_is_answered_try_again_later_at_the_deadline(hostile):
    with hostile.unharmed():
        with raw_clients(hostile, 1) as (s,):
            s.sendall(b"PODNET/2 10 10")  # a header that never ends
            code, out = answer(s)
    assert code == 1 and out["code"] == TRY_AGAIN_LATER and "in time" in out["msg"]


@pytest.mark.parametrize("header,code,msg", [
    (b"PODNET/2 0 %d unset\n" % (wire.MAX_CONFIG + 1), INVALID_CONFIG, "over the limit"),
    (b"PODNET/2 %d 0 unset\n" % (wire.MAX_ENV + 1), INVALID_ENVIRONMENT, "over the limit"),
    (b"PODNET/1 0 0\n", INVALID_ENVIRONMENT, "install-cni"),
    (b"GET / HTTP/1.1\r\n\r\n", INVALID_ENVIRONMENT, "malformed"),
    (b"PODNET/2 x y unset\n", INVALID_ENVIRONMENT, "malformed"),
    (b"PODNET/2 0 0\n", INVALID_ENVIRONMENT, "malformed"),
    (b"PODNET/2 0 0 fd\n", INVALID_ENVIRONMENT, "descriptor"),
    (b"P" * 200, INVALID_ENVIRONMENT, "header"),
    (b"PODNET/2 4 0 unset\n\xff\xfe=x", INVALID_ENVIRONMENT, "UTF-8"),
], ids=["config-too-large", "env-too-large", "old-protocol", "http", "not-numbers", "no-netns-token",
        "fd-without-descriptor", "endless-header", "env-not-utf8"])
def test_requests_that_are_not_the_protocol(hostile, header, code, msg):
    with hostile.unharmed():
        with raw_clients(hostile, 1) as (s,):
            s.sendall(header)
            exit_code, out = answer(s)
    assert exit_code == 1 and out["code"] == code and msg in out["msg"] + out.get("details", ""), out


def test_a_descriptor_the_header_does_not_announce_is_refused(hostile):
    fd = os.open(hostile.sandbox(), os.O_RDONLY)
    try:
        with hostile.unharmed():
            with raw_clients(hostile, 1) as (s,):
                s.sendmsg([b"PODNET/2 0 0 unset\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, "little"))])
                exit_code, out = answer(s)
        assert exit_code == 1 and out["code"] == INVALID_ENVIRONMENT and "descriptor" in out["msg"]
    finally:
        os.close(fd)


def test_a_descriptor_of_the_nodes_namespace_sent_directly_is_refused(hostile):
    """A client that skips the plugin's checks: the agent's own are enough."""
    env = b"\0".join(f"{k}={v}".encode() for k, v in hostile.env("DEL", "/x", ifname="eth0").items())
    fd = os.open(f"/run/netns/{hostile.lab.node_netns('node-1')}", os.O_RDONLY)
    try:
        with hostile.unharmed():
            with raw_clients(hostile, 1) as (s,):
                stdin = json.dumps(config()).encode()
                s.sendmsg([wire.header(len(env), len(stdin), "fd")],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, "little"))])
                s.sendall(env + stdin)
                exit_code, out = answer(s)
        assert exit_code == 1 and out["code"] == INVALID_ENVIRONMENT and "node's own" in out["msg"], out
    finally:
        os.close(fd)


def test_the_runtimes_namespace_is_refused(hostile):
    """A client whose process lives in another network namespace than its socket (this test: the machine's)
    sends its own namespace: the agent knows it by the peer's process, not only by its own."""
    env = b"\0".join(f"{k}={v}".encode() for k, v in hostile.env("DEL", "/x", ifname="lo").items())
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        with hostile.unharmed():
            with raw_clients(hostile, 1) as (s,):
                stdin = json.dumps(config()).encode()
                s.sendmsg([wire.header(len(env), len(stdin), "fd")],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, "little"))])
                s.sendall(env + stdin)
                exit_code, out = answer(s)
        assert exit_code == 1 and out["code"] == INVALID_ENVIRONMENT and "node's own" in out["msg"], out
    finally:
        os.close(fd)


@pytest.mark.parametrize("pause", [0.3, 2.0])
def test_a_request_that_trickles_in_is_still_served(hostile, pause):
    """Slower than a pool thread waits (0.1 s): the reader thread finishes it, the descriptor included,
    and the request is served like any other (here the DEL of an attachment that never existed)."""
    netns = hostile.sandbox()
    env = b"\0".join(f"{k}={v}".encode() for k, v in hostile.env("DEL", netns).items())
    stdin = json.dumps(config()).encode()
    fd = os.open(netns, os.O_RDONLY)
    try:
        with hostile.unharmed():
            with raw_clients(hostile, 1) as (s,):
                s.sendmsg([wire.header(len(env), len(stdin), "fd")],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fd.to_bytes(4, "little"))])
                time.sleep(pause)
                s.sendall(env[:10])
                time.sleep(pause)
                s.sendall(env[10:] + stdin)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        assert data == b"0\n", data
    finally:
        os.close(fd)
