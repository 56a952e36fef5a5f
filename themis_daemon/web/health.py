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
        checks = {
            "first_scan_done": store.scanned,
            "storage_readable": store.readable(),
        }
        ready = all(checks.values())
        body = {"status": "ready" if ready else "not_ready", "checks": checks, "runs": len(store.run_ids()),
                "sources": store.describe()}
        if store.root_error:
            body["detail"] = store.root_error
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
