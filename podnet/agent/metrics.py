"""The agent's Prometheus metrics and its health and readiness endpoints.

Two small HTTP servers, where Felix has them: metrics for Prometheus on every address, port 9091
(`--metrics-listen`, Felix's prometheusMetricsPort), and health for the kubelet's probes on
127.0.0.1:9099 (`--health-listen`, Felix's healthPort), which also serves /metrics for a look by hand.

  /metrics  Prometheus text format: podnet's own, the process's (CPU, memory, open files), the
            interpreter's (GC), and podnet_build_info{version=...}
  /healthz  200 while the reconcile loop is alive (it ran within three resync intervals)
  /readyz   200 when the datastore is usable, the datastore view is in sync and the last reconcile
            applied everything; else 503 with the reason
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import (CONTENT_TYPE_LATEST, GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR,
                               CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest)

log = logging.getLogger(__name__)

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


DEFAULT_METRICS_LISTEN = ":9091"  # Felix's Prometheus port, every address
DEFAULT_HEALTH_LISTEN = "127.0.0.1:9099"  # Felix's health port; the probes run on the node


class AgentMetrics:
    def __init__(self):
        from podnet import __version__

        r = self.registry = CollectorRegistry()
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        Info("podnet_build", "The agent's version", registry=r).info({"version": __version__})
        self.remote_nodes = Gauge("podnet_remote_nodes_programmed", "Remote nodes whose route, ARP and FDB "
                                  "entries this node holds", registry=r)
        self.in_sync = Gauge("podnet_datastore_in_sync", "1 when the agent's view of the datastore is complete",
                             registry=r)
        self.datastore_ok = Gauge("podnet_datastore_usable", "0 while the datastore's file is removed, replaced, "
                                  "damaged or read-only (the reason is in /readyz and the log)", registry=r)
        self.datastore_ok.set(1)
        self.reconcile_seconds = Histogram("podnet_reconcile_duration_seconds", "Time of one reconcile pass",
                                           buckets=_FAST, registry=r)
        self.reconcile_changes = Counter("podnet_reconcile_changes_total", "Kernel entries added, replaced or "
                                         "removed by reconciles", registry=r)
        self.reconcile_errors = Counter("podnet_reconcile_errors_total", "Reconcile passes that failed or left "
                                        "something unapplied", registry=r)
        self.drift_repairs = Counter("podnet_drift_repairs_total", "Kernel entries restored after something other "
                                     "than podnet changed them", registry=r)
        self.ipam_allocations = Counter("podnet_ipam_allocations_total", "Address allocations for pods",
                                        ["result"], registry=r)
        self.cni_requests = Counter("podnet_cni_requests_total", "CNI requests served", ["command", "result"],
                                    registry=r)
        self.cni_seconds = Histogram("podnet_cni_request_duration_seconds", "Time to serve a CNI request",
                                     ["command"], buckets=_FAST, registry=r)

    def observe_cni(self, command: str, ok: bool, seconds: float) -> None:
        self.cni_requests.labels(command, "ok" if ok else "error").inc()
        self.cni_seconds.labels(command).observe(seconds)

    def observe_ipam(self, ok: bool) -> None:
        self.ipam_allocations.labels("ok" if ok else "error").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Server(ThreadingHTTPServer):
    """Binds without looking the host's name up: http.server's bind asks the resolver for the FQDN of
    the listen address (for '' or '::', of this machine's hostname), which on a node whose resolver does
    not answer (no DNS yet, a hostname missing from /etc/hosts) holds the agent's start for the resolver's
    whole timeout. The name is used for nothing here."""

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]


class _DualStackServer(_Server):
    """Listens on IPv6 and IPv4 both when bound to '::' (an empty host: every address)."""

    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _http_server(address: str, handler) -> _Server:
    """HOST:PORT, [V6]:PORT or :PORT (every address, IPv6 and IPv4 where the node has IPv6)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host:
        try:
            return _DualStackServer(("::", int(port)), handler)
        except OSError:  # no IPv6 on this node
            host = "0.0.0.0"
    if ":" in host:
        return _DualStackServer((host, int(port)), handler)
    return _Server((host, int(port)), handler)


class HealthServer:
    """Serves /metrics, and /healthz and /readyz unless `metrics_only`; `alive()` and `ready()` are
    asked on every request."""

    def __init__(self, address: str, metrics: AgentMetrics, alive: Callable[[], tuple[bool, str]],
                 ready: Callable[[], tuple[bool, str]], metrics_only: bool = False):

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/metrics":
                    self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
                elif self.path in ("/healthz", "/readyz") and not metrics_only:
                    ok, why = (alive if self.path == "/healthz" else ready)()
                    self._send(200 if ok else 503, (why + "\n").encode(), "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, ctype: str):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # requests are not worth a log line each
                pass

        self.server = _http_server(address, Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="health server", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()


class Heartbeat:
    """When the reconcile loop last went round; liveness is 'recently enough'."""

    def __init__(self, limit_seconds: float):
        self.limit = limit_seconds
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def alive(self) -> tuple[bool, str]:
        age = time.monotonic() - self.last
        if age > self.limit:
            return False, f"the reconcile loop has not run for {age:.0f}s"
        return True, "ok"
