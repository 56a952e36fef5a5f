"""The dashboard and the docs pages in a real browser: Debian's headless Chromium driven by
Playwright, against daemon subprocesses serving copies of the fixture stores (Themis 1.x, and
the Themis 4 SQLite store of tests/data/themis-v4/sqlite).

Every page runs with requests to anything but the daemon aborted and recorded: none may happen.
Screenshots go to tests/screenshots/ for people to look at.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import urllib.request

import pytest

from conftest import DATA, PLAIN, copy_store
from helpers import ServeProcess
from themis_daemon.demo.writer import ThemisRunWriter, make_arith_dataset

CHROMIUM = os.environ.get("THEMIS_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.isfile(CHROMIUM):
    pytest.skip(f"Chromium not installed ({CHROMIUM} missing; on Debian: apt-get install chromium)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
expect = sync_api.expect
# Generous waits: the suite must pass on a loaded 2-core machine.
expect.set_options(timeout=30_000)

SHOTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "screenshots")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
FIXTURE_RUNS = {"fake-direct", "fake-terse", "fake-swapped", "fake-live", "fake-failed"}
TIMEOUT_MS = 30_000
V4_SQLITE = os.path.join(DATA, "themis-v4", "sqlite")


class Daemon(ServeProcess):
    """A daemon serving one store, polling every 0.2 s."""

    def __init__(self, storage: str, env: dict = None):
        self.storage = storage
        super().__init__("--storage", storage, "--poll-interval", "0.2", "--log-level", "info", env=env)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = copy_store(PLAIN, str(tmp_path_factory.mktemp("dash") / "store"))
    # fake-live's writer was killed: make its files an hour old, whenever the checkout happened
    hour_ago = time.time() - 3600
    for dirpath, _dirs, files in os.walk(os.path.join(root, "experiments", "default", "runs", "fake-live")):
        for name in files:
            os.utime(os.path.join(dirpath, name), (hour_ago, hour_ago))
    return root


@pytest.fixture(scope="module")
def daemon(store):
    d = Daemon(store)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module", autouse=True)
def screenshots_dir():
    os.makedirs(SHOTS, exist_ok=True)


class Page:
    """A page whose requests outside the daemon are aborted and recorded."""

    def __init__(self, browser, base: str, width: int = 1280, height: int = 900, init_script: str = None):
        self.base = base
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.external = []
        self.errors = []
        self.context.route(lambda url: not url.startswith(base), self._block)
        self.context.on("request", self._record)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        self.page.add_init_script(
            "window.__csp = []; document.addEventListener('securitypolicyviolation',"
            " e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
        if init_script:
            self.page.add_init_script(init_script)

    def _block(self, route):
        self.external.append(route.request.url)
        route.abort()

    def _record(self, request):
        if not (request.url.startswith(self.base) or request.url.startswith("data:")):
            self.external.append(request.url)

    def goto(self, path: str):
        self.page.goto(self.base + path)
        return self.page

    def shot(self, name: str):
        self.page.screenshot(path=os.path.join(SHOTS, name), full_page=True)

    def check_clean(self, allowed_errors=()):
        assert self.external == [], f"requests outside the daemon: {self.external}"
        csp = self.page.evaluate("window.__csp")
        assert csp == [], f"Content-Security-Policy violations: {csp}"
        errors = [e for e in self.errors if not any(a in e for a in allowed_errors)]
        assert errors == [], f"errors in the page: {errors}"

    def close(self):
        self.context.close()


@pytest.fixture
def open_page(browser, daemon):
    pages = []

    def opener(**kw):
        p = Page(browser, kw.pop("base", daemon.url), **kw)
        pages.append(p)
        return p

    yield opener
    for p in pages:
        p.close()


def progress_of(page, run_id: str) -> float:
    bar = page.locator(f'tr[data-run-id="{run_id}"] [role="progressbar"]')
    value = bar.get_attribute("aria-valuenow")
    return float(value) if value is not None else -1.0


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ---------------------------------------------------------------------------------- docs


def test_swagger_ui_renders_offline(open_page):
    p = open_page()
    page = p.goto("/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Themis daemon API")
    expect(page.locator('.opblock-post .opblock-summary-path[data-path="/api/compare"]')).to_be_visible()
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    for path in ("/api/runs", "/api/runs/{run_id}", "/ws", "/openapi.json", "/healthz", "/api/compare/samples",
                 "/api/runs/{run_id}/samples"):
        assert any(t.strip().replace("\u200b", "") == path for t in paths), (path, paths)
    # The schemas render too (RunSummary, Problem, ...).
    expect(page.locator(".models")).to_contain_text("RunSummary")
    p.shot("docs-swagger.png")
    p.check_clean()


def test_redoc_renders_offline(open_page):
    p = open_page()
    page = p.goto("/redoc")
    expect(page.locator("h1", has_text="Themis daemon API")).to_be_visible()
    expect(page.locator("h2", has_text="Compare runs per metric")).to_be_visible()
    expect(page.get_by_text("/api/runs/{run_id}").first).to_be_attached()
    page.wait_for_timeout(500)
    p.shot("docs-redoc.png")
    p.check_clean()


# ---------------------------------------------------------------------------------- dashboard


def test_runs_table_lists_runs_and_filters(open_page):
    p = open_page()
    page = p.goto("/dashboard/")
    for run_id in FIXTURE_RUNS:
        expect(page.locator(f'tr[data-run-id="{run_id}"]')).to_be_visible()
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    row = page.locator('tr[data-run-id="fake-live"]')
    expect(row.locator(".badge")).to_have_text("stalled")  # in progress, files idle for an hour
    assert progress_of(page, "fake-live") == 70.0
    expect(row).to_contain_text("14 / 20")  # the samples the 70 % counts (14 generated)
    expect(row).to_contain_text("ExactMatch")
    expect(page.locator('tr[data-run-id="fake-swapped"]')).to_contain_text("2 failed")
    expect(page.locator('tr[data-run-id="fake-direct"] td.col-created')).to_contain_text("2026")  # in the browser's locale
    p.shot("dashboard-runs.png")

    page.select_option("#filter-status", "completed")
    expect(page.locator("tr[data-run-id]")).to_have_count(3)
    assert set(page.locator("tr[data-run-id]").evaluate_all("rows => rows.map(r => r.dataset.runId)")) == {
        "fake-direct", "fake-terse", "fake-swapped"}
    page.select_option("#filter-status", "")
    page.select_option("#filter-experiment", "default")
    expect(page.locator('tr[data-run-id="fake-failed"]')).to_be_visible()
    p.check_clean()


def test_live_run_progress_bar_advances(open_page, store):
    p = open_page()
    page = p.goto("/dashboard/")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    writer = ThemisRunWriter(store, "live-x", eval_batch=5, compression="none")
    writer.start()
    row = page.locator('tr[data-run-id="live-x"]')
    expect(row).to_be_visible()
    expect(row.locator(".badge")).to_have_text("in progress")
    seen = [progress_of(page, "live-x")]
    for _ in range(3):
        writer.step(4)
        wait_for(lambda: progress_of(page, "live-x") > seen[-1], what="the progress bar to advance")
        seen.append(progress_of(page, "live-x"))
        if len(seen) == 3:
            p.shot("dashboard-live-progress.png")
    assert seen == sorted(seen) and seen[-1] > seen[0]
    writer.step(8)
    writer.complete()
    expect(row.locator(".badge")).to_have_text("completed")
    wait_for(lambda: progress_of(page, "live-x") == 100.0, what="100%")
    # Updates came over the WebSocket: the connection never fell back to polling.
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    p.check_clean()


def test_polling_fallback_without_websocket(open_page, store):
    p = open_page(init_script="window.WebSocket = function () { throw new Error('WebSocket disabled by the test'); };")
    page = p.goto("/dashboard/")
    expect(page.locator("#conn")).to_have_attribute("data-state", "polling")
    expect(page.locator('tr[data-run-id="fake-direct"]')).to_be_visible()
    writer = ThemisRunWriter(store, "poll-x", eval_batch=5, compression="none")
    writer.start()
    expect(page.locator('tr[data-run-id="poll-x"]')).to_be_visible()
    before = progress_of(page, "poll-x")
    writer.step(10)
    wait_for(lambda: progress_of(page, "poll-x") > before, what="a polled update")
    writer.complete()
    p.check_clean()


def test_run_detail_shows_samples(open_page):
    p = open_page(height=1000)
    page = p.goto("/dashboard/#/runs/fake-swapped")
    expect(page.locator("h1.run-title")).to_have_text("fake-swapped")
    rows = page.locator("#samples-table tbody tr")
    expect(rows).to_have_count(20)
    expect(page.locator("#samples-table tr.failure")).to_have_count(2)
    expect(rows.first).to_contain_text("What is")
    metric = page.locator('#metrics-table tr[data-metric="ExactMatch"]')
    expect(metric).to_contain_text("0.5")
    expect(metric.locator("td").nth(2)).to_contain_text("[")
    expect(page.locator(".facts")).to_contain_text("fake-flaky:fake-math-llm")
    p.shot("dashboard-detail.png")

    page.fill("#sample-search", "3 * 11")
    expect(rows).to_have_count(1)
    expect(page.locator("#samples-table tr.failure")).to_have_count(1)
    expect(rows.first).to_contain_text("Generation failed")
    page.fill("#sample-search", "")
    page.check("#failures-only")
    expect(rows).to_have_count(2)
    p.check_clean()


def test_run_detail_pages_samples(open_page, store):
    writer = ThemisRunWriter(store, "big-run", dataset=make_arith_dataset(45), eval_batch=50, compression="none")
    writer.start()
    writer.step(45)
    writer.complete()
    p = open_page()
    page = p.goto("/dashboard/#/runs/big-run")
    rows = page.locator("#samples-table tbody tr")
    expect(page.locator("#samples-page")).to_contain_text("page 1 of 3 · 45 of 45 samples")
    expect(rows).to_have_count(20)
    page.click("text=Next ›")
    expect(page.locator("#samples-page")).to_contain_text("page 2 of 3")
    page.click("text=Next ›")
    expect(rows).to_have_count(5)
    expect(page.locator(".pager button", has_text="Next")).to_be_disabled()
    p.check_clean()


def test_unknown_run_shows_a_readable_error(open_page):
    p = open_page()
    page = p.goto("/dashboard/#/runs/no-such-run")
    expect(page.locator(".error")).to_contain_text("Run not found: no-such-run")
    assert page.locator(".error").inner_text().count("Run not found") == 1
    p.check_clean(allowed_errors=("404",))


def test_detail_opened_early_picks_the_run_up_and_follows_it_at_every_poll(open_page, store):
    """A page opened before its run existed stayed on "not found"; and a detail page froze for
    as long as events kept coming faster than its debounce (every poll, at 0.2 s here)."""
    import threading

    p = open_page()
    page = p.goto("/dashboard/#/runs/early-x")
    expect(page.locator(".error")).to_contain_text("early-x")
    writer = ThemisRunWriter(store, "early-x", dataset=make_arith_dataset(60), eval_batch=5, compression="none")
    writer.start()
    expect(page.locator("h1.run-title")).to_have_text("early-x")
    stop = threading.Event()

    def keep_writing():  # a record every 0.15 s: never quiet for a whole poll interval
        for _ in range(50):
            if stop.is_set():
                return
            writer.step(1)
            time.sleep(0.15)

    feeder = threading.Thread(target=keep_writing, daemon=True)
    feeder.start()
    rows = page.locator("#samples-table tbody tr")
    try:
        counts = []
        for _ in range(3):  # the table grows while the writer is still writing
            before = rows.count()
            wait_for(lambda: rows.count() > before and feeder.is_alive(), timeout=30, what="a live update")
            counts.append(rows.count())
        assert counts == sorted(counts)
    finally:
        stop.set()
        feeder.join(30)
    p.check_clean(allowed_errors=("404",))


def test_compare_shows_a_significant_winner(open_page):
    p = open_page(height=1100)
    page = p.goto("/dashboard/#/compare")
    page.check("#pick-fake-direct")
    page.check("#pick-fake-terse")
    page.select_option("#compare-test", "permutation")
    page.click("#compare-button")
    row = page.locator('#pairwise-table tr[data-metric="ExactMatch"]')
    expect(row).to_have_attribute("data-significant", "true")
    expect(row.locator("td.winner")).to_contain_text("✓ fake-direct")
    expect(row).to_contain_text("0.9")
    expect(page.locator("#overall-best")).to_have_text("fake-direct")
    chart = page.locator('svg.chart[data-metric="ExactMatch"]')
    expect(chart.locator("g.bar")).to_have_count(2)
    expect(chart.locator("g.bar.best")).to_have_attribute("data-run", "fake-direct")
    assert chart.locator("line.whisker").count() >= 3  # error bars of fake-direct
    p.shot("dashboard-compare.png")

    # Only ExactMatch, and the link is shareable.
    page.check('#compare-metrics input[data-metric="ExactMatch"]')
    page.click("#compare-button")
    expect(page.locator("#pairwise-table tbody tr")).to_have_count(1)
    assert "runs=fake-direct%2Cfake-terse" in page.url and "test=permutation" in page.url
    page.goto(p.base + "/dashboard/#/compare?runs=fake-direct,fake-terse&metrics=NoSuchMetric&run=1")
    expect(page.locator("#compare-output .error")).to_contain_text("NoSuchMetric")
    p.check_clean(allowed_errors=("400",))


def test_narrow_screen(open_page):
    p = open_page(width=390, height=844)
    page = p.goto("/dashboard/")
    expect(page.locator('tr[data-run-id="fake-live"]')).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"page is {overflow}px wider than the screen"
    p.shot("dashboard-narrow.png")
    page.goto(p.base + "/dashboard/#/compare?runs=fake-direct,fake-terse&test=permutation&run=1")
    expect(page.locator('#pairwise-table tr[data-metric="ExactMatch"]')).to_have_attribute("data-significant", "true")
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"compare page is {overflow}px wider than the screen"
    p.shot("dashboard-compare-narrow.png")
    p.check_clean()


def test_api_key_field(open_page, store):
    keyed = Daemon(store, env={"THEMIS_AUTH_API_KEYS": "s3cret-key"})
    try:
        p = open_page(base=keyed.url)
        sockets = []
        p.page.on("websocket", lambda ws: sockets.append(ws.url))
        page = p.goto("/dashboard/")
        expect(page.locator("#view .error")).to_contain_text("API key")
        expect(page.locator("#conn")).to_have_attribute("data-state", "polling")
        p.shot("dashboard-api-key-missing.png")
        page.fill("#api-key", "wrong")
        page.click("#key-form button")
        expect(page.locator("#view .error")).to_contain_text("rejected")
        page.fill("#api-key", "s3cret-key")
        page.click("#key-form button")
        expect(page.locator('tr[data-run-id="fake-direct"]')).to_be_visible()
        expect(page.locator("#view .error")).to_have_count(0)
        expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=40_000)
        assert page.evaluate("localStorage.getItem('themis.apiKey')") == "s3cret-key"
        # The key survives a reload.
        page.reload()
        expect(page.locator('tr[data-run-id="fake-direct"]')).to_be_visible()
        expect(page.locator("#conn")).to_have_attribute("data-state", "live")
        p.check_clean(allowed_errors=("401", "403", "WebSocket"))
        # The key never travels in a URL: /ws is opened with single-use tickets.
        assert any("ticket=" in u for u in sockets) and not any("s3cret-key" in u for u in sockets), sockets
    finally:
        keyed.stop()
    assert not any("s3cret-key" in line for line in keyed.lines), "the key reached the log"


# ---------------------------------------------------------------------------------- Themis 4


with open(os.path.join(V4_SQLITE, "manifest.json"), encoding="utf-8") as _fh:
    V4_RUNS = {name: info["run_id"] for name, info in json.load(_fh)["runs"].items()}


@pytest.fixture(scope="module")
def v4_daemon(tmp_path_factory):
    """A daemon serving a copy of the Themis 4 SQLite fixture store (12 runs of themis-eval 4.0.2)."""
    root = copy_store(V4_SQLITE, str(tmp_path_factory.mktemp("dash-v4") / "sqlite"))
    d = Daemon(os.path.join(root, "themis.sqlite3"))
    yield d
    d.stop()


@pytest.fixture
def open_v4_page(browser, v4_daemon):
    pages = []

    def opener(**kw):
        p = Page(browser, v4_daemon.url, **kw)
        pages.append(p)
        return p

    yield opener
    for p in pages:
        p.close()


def api_runs(base: str) -> dict:
    with urllib.request.urlopen(base + "/api/runs", timeout=30) as resp:
        return {r["run_id"]: r for r in json.load(resp)}


def test_v4_runs_list_shows_format_short_ids_and_native_status(open_v4_page, v4_daemon):
    summaries = api_runs(v4_daemon.url)
    assert set(V4_RUNS.values()) <= set(summaries)
    p = open_v4_page()
    page = p.goto("/dashboard/")
    for name, run_id in V4_RUNS.items():
        row = page.locator(f'tr[data-run-id="{run_id}"]')
        expect(row).to_be_visible()
        expect(row.locator(".fmt")).to_have_text("v4")
        link = row.locator("a.run-link")
        expect(link).to_have_text(run_id[:10])  # short id shown, the full one on hover and in the link
        expect(link).to_have_attribute("title", run_id)
        expect(link).to_have_attribute("href", f"#/runs/{run_id}")
        summary = summaries[run_id]
        expect(row.locator(".source-name")).to_have_text(summary["source"])
        expect(row.locator(".model")).to_have_text(summary["model"])
        expect(row.locator(".benchmark")).to_have_text(summary["experiment_id"])
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")

    pending = page.locator(f'tr[data-run-id="{V4_RUNS["pending"]}"]')
    expect(pending.locator(".badge")).to_have_text("pending")
    expect(pending.locator(".badge")).to_have_class(re.compile(r"\bstatus-pending\b"))
    bar = pending.locator('[role="progressbar"]')
    expect(bar).to_have_attribute("aria-valuetext", "not started")
    assert bar.get_attribute("aria-valuenow") is None
    expect(pending.locator(".native-status")).to_have_count(0)  # pending is pending: nothing to add

    flaky = page.locator(f'tr[data-run-id="{V4_RUNS["flaky"]}"]')
    expect(flaky.locator(".badge")).to_have_text("completed")
    expect(flaky.locator(".native-status")).to_have_text("partial_failure")
    expect(flaky.locator(".status-line")).to_have_text(re.compile(r"completed\s*·\s*partial_failure"))
    # Same meaning, nothing to show: completed/completed, in_progress/running, failed/failed.
    for name in ("alpha", "killed", "invalid"):
        expect(page.locator(f'tr[data-run-id="{V4_RUNS[name]}"] .native-status')).to_have_count(0)
    p.shot("dashboard-v4-runs.png")

    # The full id on hover: the link's title shows as a tooltip.
    alpha = page.locator(f'tr[data-run-id="{V4_RUNS["alpha"]}"]')
    alpha.locator("a.run-link").hover()
    expect(alpha.locator("a.run-link")).to_have_attribute("title", V4_RUNS["alpha"])
    # The copy button puts the full id on the clipboard.
    p.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=v4_daemon.url)
    alpha.locator("button.copy-id").click()
    expect(alpha.locator("button.copy-id")).to_have_attribute("data-copied", "true")
    assert page.evaluate("navigator.clipboard.readText()") == V4_RUNS["alpha"]

    page.select_option("#filter-status", "pending")
    expect(page.locator("tr[data-run-id]")).to_have_count(1)
    expect(page.locator("tr[data-run-id]")).to_have_attribute("data-run-id", V4_RUNS["pending"])
    page.select_option("#filter-status", "completed")
    completed = sorted(i for i, r in summaries.items() if r["status"] == "completed")
    expect(page.locator("tr[data-run-id]")).to_have_count(len(completed))
    p.check_clean()


def test_v4_run_detail_shows_reference(open_v4_page):
    alpha = V4_RUNS["alpha"]
    p = open_v4_page(height=1000)
    page = p.goto(f"/dashboard/#/runs/{alpha}")
    title = page.locator("h1.run-title")
    expect(title).to_have_text(alpha[:10])
    expect(title).to_have_attribute("title", alpha)
    expect(page.locator("#full-run-id")).to_have_text(alpha)
    facts = page.locator(".facts")
    expect(facts).to_contain_text("fake-alpha")
    expect(facts).to_contain_text("arith-24")
    expect(page.locator("#run-source .fmt")).to_have_text("v4")
    expect(page.locator("#run-source .source-name")).not_to_be_empty()
    rows = page.locator("#samples-table tbody tr")
    expect(rows).to_have_count(20)
    # q03: the model said "49"; the reference answer is next to it.
    q03 = page.locator('#samples-table tr[data-sample-id="q03"]')
    expect(q03.locator(".response")).to_have_text("49")
    expect(q03.locator(".reference")).to_have_text("the answer is 42")
    expect(page.locator("#samples-table thead")).to_contain_text("Reference")
    p.shot("dashboard-v4-detail.png")
    page.fill("#sample-search", "the answer is 42")  # only q03's reference says so
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-sample-id", "q03")

    # A unique prefix of >= 8 hex characters names the same run.
    page.goto(f"{p.base}/dashboard/#/runs/{alpha[:12]}")
    expect(page.locator("#full-run-id")).to_have_text(alpha)
    expect(page.locator("h1.run-title")).to_have_text(alpha[:10])
    p.check_clean()


def test_v4_run_detail_metric_errors_candidates_and_pending(open_v4_page):
    p = open_v4_page(height=1000)
    page = p.goto(f"/dashboard/#/runs/{V4_RUNS['score_errors']}")
    expect(page.locator(".facts")).to_contain_text("partial_failure")
    q05 = page.locator('#samples-table tr[data-sample-id="q05"]')
    expect(q05).to_have_class(re.compile(r"\bfailure\b"))
    expect(q05.locator('.metric-error[data-metric="metric/format_closeness"]')).to_contain_text("metric/format_closeness")
    page.check("#failures-only")
    expect(page.locator("#samples-table tbody tr.failure").first).to_be_visible()
    assert page.locator("#samples-table tbody tr:not(.failure)").count() == 0

    # k = 3: the candidates are there, collapsed until asked for.
    page.goto(f"{p.base}/dashboard/#/runs/{V4_RUNS['alpha_k3']}")
    q01 = page.locator('#samples-table tr[data-sample-id="q01"]')
    candidates = q01.locator("details.candidates")
    expect(candidates.locator("summary")).to_have_text("3 candidates")
    expect(candidates.locator("li").first).to_be_hidden()
    candidates.locator("summary").click()
    expect(candidates.locator("li")).to_have_count(3)
    expect(candidates.locator("li").first).to_be_visible()
    p.shot("dashboard-v4-candidates.png")

    # Submitted, never run: no times, no progress, no samples, and no error.
    page.goto(f"{p.base}/dashboard/#/runs/{V4_RUNS['pending']}")
    expect(page.locator(".facts .badge")).to_have_text("pending")
    expect(page.locator('[role="progressbar"]')).to_have_attribute("aria-valuetext", "not started")
    expect(page.locator("#samples-table")).to_contain_text("not started")
    expect(page.locator(".facts")).to_contain_text("24 expected")
    p.check_clean()


def test_v4_compare_picker_shows_short_ids_and_models(open_v4_page):
    alpha, beta = V4_RUNS["alpha"], V4_RUNS["beta"]
    p = open_v4_page(height=1100)
    page = p.goto("/dashboard/#/compare")
    pick = page.locator(f'label.pick[for="pick-{alpha}"]')
    expect(pick.locator(".pick-id")).to_have_text(alpha[:10])
    expect(pick).to_have_attribute("title", alpha)
    expect(pick.locator(".pick-model")).to_have_text("fake-alpha")
    expect(page.locator(f'label.pick[for="pick-{V4_RUNS["pending"]}"]')).to_have_count(0)  # nothing to compare yet
    page.check(f"#pick-{alpha}")
    page.check(f"#pick-{beta}")
    page.select_option("#compare-test", "permutation")
    page.click("#compare-button")
    row = page.locator('#pairwise-table tr[data-metric="builtin/exact_match"]')
    expect(row).to_be_visible()
    expect(page.locator("#overall-best")).to_have_text(alpha[:10])
    expect(page.locator("#overall-best")).to_have_attribute("title", alpha)
    chart = page.locator('svg.chart[data-metric="builtin/exact_match"]')
    expect(chart.locator("g.bar")).to_have_count(2)
    expect(chart.locator("g.bar.best")).to_have_attribute("data-run", alpha)
    p.shot("dashboard-v4-compare.png")
    p.check_clean()


def test_v4_narrow_screen(open_v4_page):
    p = open_v4_page(width=390, height=844)
    page = p.goto("/dashboard/")
    expect(page.locator(f'tr[data-run-id="{V4_RUNS["flaky"]}"] .native-status')).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"page is {overflow}px wider than the screen"
    page.goto(f"{p.base}/dashboard/#/runs/{V4_RUNS['alpha']}")
    expect(page.locator('#samples-table tr[data-sample-id="q03"] .reference')).to_be_visible()
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, f"detail page is {overflow}px wider than the screen"
    p.shot("dashboard-v4-narrow.png")
    p.check_clean()
