"""Serving the ServerApp's metrics over HTTP for Prometheus to scrape.

``start`` binds ``metrics-address:metrics-port`` (run config) and serves
``FederationMetrics.registry`` at ``/metrics`` from daemon threads of the ServerApp
process. A port that cannot be bound (in use, no permission) gives one warning and the
run goes on without the endpoint: monitoring never fails a run. ``metrics-port=0`` turns
it off.

The ServerApp process ends with its run, and with it the endpoint. So that the last
round reaches Prometheus, ``close`` waits for one more scrape when someone has been
scraping (at most twice the interval seen between scrapes, and at most
``MAX_LINGER_SECONDS``); when nobody scraped, it returns at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flwr.common.logger import log
from prometheus_client import make_wsgi_app

from fedapp.config import RunConfig
from fedapp.monitoring.metrics import FederationMetrics
from fedapp.server.rounds import RoundStats

MAX_LINGER_SECONDS = 60.0


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access log in the ServerApp's output."""


class Monitor:
    """The run's metrics and the HTTP server that exposes them; with neither (metrics off
    or the port taken) every call does nothing. A context manager: ``close`` on exit."""

    def __init__(self, metrics: FederationMetrics | None = None, address: str = "",
                 port: int = 0) -> None:
        self.metrics = metrics
        self.server: WSGIServer | None = None
        self._scrapes: list[float] = []  # monotonic times of the last two scrapes
        self._observed = 0.0
        if metrics is not None:
            self.server = make_server(address, port, self._app(make_wsgi_app(metrics.registry)),
                                      _Server, handler_class=_QuietHandler)
            threading.Thread(target=self.server.serve_forever, daemon=True,
                             name="fedapp-metrics").start()

    @property
    def url(self) -> str | None:
        if self.server is None:
            return None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/metrics"

    def _app(self, inner: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            body = inner(environ, start_response)
            self._scrapes = [*self._scrapes[-1:], time.monotonic()]
            return body
        return app

    def observe(self, row: dict[str, float], stats: RoundStats | None,
                reputation: dict[int, float]) -> None:
        """One completed round (``FederationMetrics.observe``)."""
        if self.metrics is not None:
            self.metrics.observe(row, stats, reputation)
            self._observed = time.monotonic()

    def close(self) -> None:
        """Stop serving, after one more scrape if someone scrapes (module docstring)."""
        if self.server is None:
            return
        if len(self._scrapes) == 2:
            interval = self._scrapes[1] - self._scrapes[0]
            deadline = time.monotonic() + min(2 * interval + 1.0, MAX_LINGER_SECONDS)
            while self._scrapes[-1] < self._observed and time.monotonic() < deadline:
                time.sleep(0.05)
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def start(cfg: RunConfig, run_id: int, model_bytes: int) -> Monitor:
    """The run's metrics served on ``cfg.metrics_address:cfg.metrics_port``; a monitor that
    does nothing when ``metrics-port=0`` or the port cannot be bound (one warning)."""
    if cfg.metrics_port == 0:
        return Monitor()
    metrics = FederationMetrics(
        run_id=run_id, dataset=cfg.dataset, aggregator=cfg.aggregator,
        planned_rounds=cfg.num_server_rounds, quorum=cfg.min_train_nodes,
        model_bytes=model_bytes, dp_budget=cfg.dp_epsilon if cfg.dp != "off" else None)
    try:
        monitor = Monitor(metrics, cfg.metrics_address, cfg.metrics_port)
    except OSError as exc:
        log(WARNING, "[fedapp] cannot serve metrics on %s:%d (%s); the run goes on without "
            "them (set metrics-port to a free port, or 0 to turn them off)",
            cfg.metrics_address, cfg.metrics_port, exc.strerror or exc)
        return Monitor()
    log(INFO, "[fedapp] Prometheus metrics on %s", monitor.url)
    return monitor
