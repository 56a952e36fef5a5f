"""Health, liveness and readiness: public, cheap, and never blocked by a storage scan."""

from __future__ import annotations

from .. import __version__
from .base import BaseHandler


class HealthHandler(BaseHandler):
    public = True

    def get(self) -> None:
        self.write_json({"status": "ok", "service": "themis-api", "version": __version__})


class LivenessHandler(BaseHandler):
    public = True

    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadinessHandler(BaseHandler):
    """Ready once the first scan of every source finished and every source is readable."""

    public = True

    def get(self) -> None:
        store = self.daemon.store
        stuck = self.daemon.monitor.stuck()
        checks = {
            "first_scan_done": store.scanned,
            "storage_readable": store.readable(),
            "polls_keep_up": stuck is None,
        }
        ready = all(checks.values())
        body = {"status": "ready" if ready else "not_ready", "checks": checks, "runs": len(store.run_ids()),
                "sources": store.describe()}
        detail = "; ".join(x for x in (store.root_error, stuck) if x)
        if detail:
            body["detail"] = detail
        self.write_json(body, 200 if ready else 503)


class BenchmarksHandler(BaseHandler):
    def get(self) -> None:
        self.write_json({"benchmarks": sorted(self.config.benchmarks)})


default_handlers = [
    (r"/", HealthHandler),
    (r"/healthz", LivenessHandler),
    (r"/readyz", ReadinessHandler),
    (r"/api/benchmarks", BenchmarksHandler),
]
