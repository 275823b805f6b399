"""Prometheus metrics of the live service (``serve --metrics-port PORT``).

Each :class:`ServeMetrics` has its own registry, so several services in one process (tests)
never collide. Names:

==========================================  =====================================================
``minibroker_visit_latency_seconds``         first alert of a visit received → its matches in Redis
``minibroker_visit_own_latency_seconds``     last alert received → matches in Redis (the engine's part)
``minibroker_visits_total``                  visit batches processed
``minibroker_alerts_total``                  alerts evaluated
``minibroker_filter_seconds`` {filter}       evaluation time per filter per visit
``minibroker_filter_passed_total`` {filter}  alerts that passed, per filter
``minibroker_filter_faults_total`` {filter}  faults (crash, timeout, bad result) per filter
``minibroker_published_total``               entries written to user streams
``minibroker_dead_letters_total`` {reason}   messages sent to ``minibroker:deadletter``
``minibroker_redis_retries_total``           Redis writes retried after a failure
``minibroker_consumer_lag_messages`` {partition}  high watermark − consumer position
==========================================  =====================================================
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["ServeMetrics"]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0)


class ServeMetrics:
    """The collectors of one service, in their own registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.latency = Histogram(
            "minibroker_visit_latency_seconds",
            "First alert of a visit received to its last match in Redis",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.own_latency = Histogram(
            "minibroker_visit_own_latency_seconds",
            "Last alert of a visit received to its last match in Redis",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.visits = Counter("minibroker_visits", "Visit batches processed", registry=r)
        self.alerts = Counter("minibroker_alerts", "Alerts evaluated", registry=r)
        self.filter_seconds = Histogram(
            "minibroker_filter_seconds",
            "Evaluation time per filter per visit",
            ["filter"],
            registry=r,
        )
        self.passed = Counter(
            "minibroker_filter_passed", "Alerts passed per filter", ["filter"], registry=r
        )
        self.faults = Counter(
            "minibroker_filter_faults", "Faults per filter", ["filter"], registry=r
        )
        self.published = Counter(
            "minibroker_published", "Entries written to user streams", registry=r
        )
        self.dead = Counter(
            "minibroker_dead_letters", "Messages dead-lettered", ["reason"], registry=r
        )
        self.retries = Counter("minibroker_redis_retries", "Redis writes retried", registry=r)
        self.lag = Gauge(
            "minibroker_consumer_lag_messages",
            "High watermark minus position",
            ["partition"],
            registry=r,
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Expose the metrics over HTTP on ``port`` (a background thread) until :meth:`close`."""
        self._http: tuple[Any, Any] | None = start_http_server(
            port, addr=addr, registry=self.registry
        )

    def close(self) -> None:
        """Stop the HTTP server, if any."""
        http = getattr(self, "_http", None)
        if http is not None:
            server, _thread = http
            server.shutdown()
            server.server_close()
            self._http = None

    def visit(self, report: Any, outcomes: Any = (), *, whole_s: float, own_s: float) -> None:
        """Record one processed visit (a ``VisitReport`` and its filters' outcomes)."""
        self.latency.observe(whole_s)
        self.own_latency.observe(own_s)
        self.visits.inc()
        self.alerts.inc(report.alerts)
        self.published.inc(report.published)
        for o in outcomes:
            self.filter_seconds.labels(o.key).observe(o.seconds)
            self.passed.labels(o.key).inc(o.passed)
            if o.fault is not None:
                self.faults.labels(o.key).inc()

    def dead_letter(self, reason: str) -> None:
        """Count one dead-lettered message."""
        self.dead.labels(reason).inc()

    def redis_retry(self) -> None:
        """Count one retried Redis write."""
        self.retries.inc()

    def consumer_lag(self, lags: dict[int, int]) -> None:
        """Set the lag of each assigned partition."""
        for p, lag in lags.items():
            self.lag.labels(str(p)).set(lag)
