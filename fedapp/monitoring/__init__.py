"""Monitoring: the ServerApp's Prometheus metrics (``metrics``) and their endpoint
(``exporter``). Alert rules and Grafana dashboards that read them: ``monitoring/`` at the
repository root."""

from fedapp.monitoring.exporter import Monitor, start
from fedapp.monitoring.metrics import FederationMetrics

__all__ = ["FederationMetrics", "Monitor", "start"]
