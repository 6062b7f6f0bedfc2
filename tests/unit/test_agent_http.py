"""The agent's HTTP servers (probes, metrics) start without the resolver."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from podnet.agent.metrics import AgentMetrics, HealthServer


@pytest.fixture
def no_resolver(monkeypatch):
    """A resolver that is asked is a failure: on a node without DNS it costs its whole timeout."""
    def asked(*args, **kwargs):
        raise AssertionError(f"the resolver was asked: {args}")
    monkeypatch.setattr(socket, "getfqdn", asked)
    monkeypatch.setattr(socket, "gethostbyaddr", asked)


@pytest.mark.parametrize("listen", ["127.0.0.1:0", ":0"])
def test_binding_asks_no_name_and_serves(no_resolver, listen):
    server = HealthServer(listen, AgentMetrics(), lambda: (True, "alive"), lambda: (True, "ready"))
    server.start()
    try:
        port = server.server.server_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10) as reply:
            assert reply.status == 200 and reply.read() == b"ready\n"
    finally:
        server.stop()
        server.server.server_close()
