"""Prometheus metrics and the access log, both fed by Tornado's per-request log hook.

A registry per application (not the global default) keeps several apps in one process, as in
tests, from sharing counters. Gauges that mirror daemon state are read at scrape time.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .base import STANDARD_METHODS, BaseHandler, request_id

access_log = logging.getLogger("tornado.access")
# Successful answers of these read handlers are logged at DEBUG unless logging.access_log is "all".
QUIET_HANDLERS = frozenset({"RunsHandler", "RunHandler", "HealthHandler", "LivenessHandler", "ReadinessHandler",
                            "BenchmarksHandler", "MetricsHandler", "StaticHandler"})


class DaemonCollector:
    """State gauges computed on scrape: runs by status, WebSocket clients, hub and poll figures."""

    def __init__(self, daemon: Any):
        self.daemon = daemon

    def collect(self):
        d = self.daemon
        runs = GaugeMetricFamily("themis_runs", "Runs in the storage by status", labels=["status"])
        counts: dict = {}
        errors = warned = 0
        for s in d.monitor.plain_summaries():  # the last poll's: a scrape never waits on the storage
            counts[s["status"]] = counts.get(s["status"], 0) + 1
            errors += 1 if s.get("error") else 0
            warned += 1 if s.get("warnings") else 0
        base = ("pending", "in_progress", "completed", "failed", "cancelled")
        for status in (*base, *sorted(set(counts) - set(base))):
            runs.add_metric([status], counts.get(status, 0))
        yield runs
        yield GaugeMetricFamily("themis_runs_with_read_errors", "Runs whose files could not be read", value=errors)
        yield GaugeMetricFamily("themis_runs_with_warnings", "Runs served with something skipped (see their warnings)",
                                value=warned)
        yield GaugeMetricFamily("themis_storage_invalid_lines", "Invalid JSON lines skipped in Themis 1.x files",
                                value=d.store.counters().get("invalid_lines", 0))
        hub = d.hub
        yield GaugeMetricFamily("themis_ws_connections", "Open WebSocket connections", value=len(hub.clients))
        yield GaugeMetricFamily("themis_ws_subscriptions", "WebSocket subscriptions", value=hub.subscriptions())
        for key, help_text in (("events_published", "Run events published"), ("events_sent", "Run events sent to clients"),
                               ("events_dropped", "Progress events dropped for slow clients"),
                               ("events_coalesced", "Progress events replaced by newer ones"),
                               ("clients_disconnected_slow", "Clients disconnected for not reading"),
                               ("clients_closed_on_error", "Clients closed (code 1011) after a failed send")):
            yield CounterMetricFamily(f"themis_ws_{key}", help_text, value=hub.stats[key])
        yield GaugeMetricFamily("themis_compare_running", "Comparisons being computed", value=d.jobs["compare_running"])
        yield CounterMetricFamily("themis_compare_cancelled", "Comparisons cancelled (client gone or server stopping)",
                                  value=d.jobs["compare_cancelled"])
        running = d.monitor.poll_running_for()
        yield GaugeMetricFamily("themis_poll_running_seconds", "How long the storage poll in flight has been running "
                                "(0 when none is)", value=running or 0.0)
        yield GaugeMetricFamily("themis_poll_stuck", "1 while a storage poll has run longer than "
                                "monitor.stuck_after_polls intervals", value=1 if d.monitor.stuck() else 0)
        yield CounterMetricFamily("themis_poll_ticks", "Storage polls done", value=d.monitor.ticks)
        yield GaugeMetricFamily("themis_poll_last_duration_seconds", "Duration of the last storage poll",
                                value=d.monitor.last_tick_duration)
        counters = d.store.counters()
        yield CounterMetricFamily("themis_events_unknown_type", "Themis 4 events of a type this daemon does not know (ignored)",
                                  value=counters["unknown_events"])
        yield CounterMetricFamily("themis_events_orphaned", "Themis 4 events of a run without a snapshot (ignored)",
                                  value=counters["orphan_events"])
        sources = GaugeMetricFamily("themis_source_up", "1 while a configured store is readable", labels=["source", "format"])
        for s in d.store.describe():
            sources.add_metric([s["name"], s["format"]], 0 if s["error"] else 1)
        yield sources
        yield GaugeMetricFamily("themis_storage_ready", "1 once the first scan is done", value=1 if d.store.scanned else 0)


class Metrics:
    def __init__(self, daemon: Any):
        self.daemon = daemon
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("themis_http_requests", "HTTP requests", ["handler", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("themis_http_request_duration_seconds", "HTTP request latency", ["handler"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.poll = Histogram("themis_poll_duration_seconds", "Storage poll duration", registry=self.registry,
                              buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
        self.registry.register(DaemonCollector(daemon))
        daemon.monitor.listeners.append(lambda result: self.poll.observe(result.duration))

    def log_request(self, handler: Any) -> None:
        """Tornado's log_function: one access line with the request id, and the counters."""
        status = handler.get_status()
        duration = handler.request.request_time()
        name = type(handler).__name__
        method = handler.request.method if handler.request.method in STANDARD_METHODS else "other"
        self.requests.labels(name, method, str(status)).inc()  # bounded label values
        self.latency.labels(name).observe(duration)
        self.access(name, status, handler.request, duration, request_id(handler))

    def counters_for(self, name: str, method: str, status: int) -> Tuple[Any, Any]:
        """The request counter and latency histogram of one handler, method and status."""
        return self.requests.labels(name, method, str(status)), self.latency.labels(name)

    def access(self, name: str, status: int, request: Any, duration: float, rid: str) -> None:
        """The access log line of one answered request (the counters are the caller's)."""
        if status < 400:
            if (status < 300 or status == 304) and name in QUIET_HANDLERS and \
                    self.daemon.settings.logging.access_log != "all":
                # Polled all day by dashboards and probes: at INFO they would be most of the
                # log and a measurable share of each request.
                if not access_log.isEnabledFor(logging.DEBUG):
                    return
                log = access_log.debug
            else:
                log = access_log.info
        elif status < 500:
            log = access_log.warning
        else:
            log = access_log.error
        log("%d %s %s (%s) %.2fms rid=%s", status, request.method, redact_uri(request.uri),
            request.remote_ip, duration * 1000, rid)


_SECRET_PARAMS = re.compile(r"([?&](?:token|ticket|api_key|apikey|key|password)=)[^&#]*", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """A request URI as it may be logged: API keys passed in the query (`/ws?token=...`, what
    browsers must do) are replaced by ***."""
    return _SECRET_PARAMS.sub(r"\1***", uri or "")


class MetricsHandler(BaseHandler):
    @property
    def public(self) -> bool:  # type: ignore[override]
        return self.config.auth.public_metrics

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(generate_latest(self.daemon.metrics.registry))


default_handlers = [
    (r"/metrics", MetricsHandler),
]
