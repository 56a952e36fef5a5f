"""The runs list in headless Chromium: search, sortable columns, one samples figure that agrees
with the progress bar, duration / throughput / ETA (the same figures as `themis-daemon status`),
local times, long ids, dark mode, and the links between the dashboard and the API docs.

Screenshots go to tests/screenshots/ (docs/screenshots/, which the README shows, with
THEMIS_DOC_SCREENSHOTS=1).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import time
import urllib.request

import pytest

from conftest import DATA, PLAIN, copy_store
from helpers import ServeProcess
from test_dashboard import Page, browser, expect, wait_for  # noqa: F401  (browser is a fixture)
from themis_daemon import status as cli_figures
from themis_daemon.demo.writer import ThemisRunWriter, make_arith_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Screenshots go to tests/screenshots/; THEMIS_DOC_SCREENSHOTS=1 refreshes the committed copies
# in docs/screenshots/ instead (a plain test run leaves tracked files alone).
SHOTS = os.path.join(REPO, "docs" if os.environ.get("THEMIS_DOC_SCREENSHOTS") == "1" else "tests", "screenshots")
LONG_ID = "nightly-regression-suite-2026-11-27-gpt-large-temperature-0.7-top-p-0.95-seed-1234"


class Daemon(ServeProcess):
    """A daemon on an ephemeral port serving several stores."""

    def __init__(self, *storages: str):
        super().__init__("--poll-interval", "0.2", *[a for s in storages for a in ("--storage", s)])

    def runs(self):
        with urllib.request.urlopen(self.url + "/api/runs", timeout=30) as resp:
            return {r["run_id"]: r for r in json.load(resp)}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = copy_store(PLAIN, str(tmp_path_factory.mktemp("runs-list") / "store"))
    runs = os.path.join(root, "experiments", "default", "runs")
    shutil.copytree(os.path.join(runs, "fake-direct"), os.path.join(runs, LONG_ID))
    meta_path = os.path.join(runs, LONG_ID, "metadata.json")
    with open(meta_path, encoding="utf-8") as fh:
        meta = json.load(fh)
    meta["run_id"] = LONG_ID
    with open(meta_path, "w", encoding="utf-8") as fh:
        json.dump(meta, fh)
    hour_ago = time.time() - 3600  # fake-live's writer was killed an hour ago: stalled, no ETA
    for dirpath, _dirs, files in os.walk(os.path.join(runs, "fake-live")):
        for name in files:
            os.utime(os.path.join(dirpath, name), (hour_ago, hour_ago))
    return root


@pytest.fixture(scope="module")
def v4_store(tmp_path_factory):
    root = copy_store(os.path.join(DATA, "themis-v4", "sqlite"), str(tmp_path_factory.mktemp("runs-v4") / "sqlite"))
    return os.path.join(root, "themis.sqlite3")


@pytest.fixture(scope="module")
def daemon(store, v4_store):
    d = Daemon(store, v4_store)
    yield d
    d.stop()


class _Browser:
    """The browser with extra context options (colour scheme, time zone, locale)."""

    def __init__(self, browser, **options):
        self.browser, self.options = browser, options

    def new_context(self, **kw):
        return self.browser.new_context(**kw, **self.options)


@pytest.fixture
def open_page(browser, daemon):
    os.makedirs(SHOTS, exist_ok=True)
    pages = []

    def opener(width=1400, height=900, **options):
        p = Page(_Browser(browser, **options), daemon.url, width=width, height=height)
        pages.append(p)
        return p

    yield opener
    for p in pages:
        p.close()


def shown_ids(page):
    return page.locator("#runs-table tr[data-run-id]").evaluate_all("rows => rows.map(r => r.dataset.runId)")


def test_samples_figure_agrees_with_the_progress_bar(open_page, daemon):
    summaries = daemon.runs()
    p = open_page()
    page = p.goto("/dashboard/")
    expect(page.locator("#runs-table tr[data-run-id]")).to_have_count(len(summaries))
    # fake-live: 14 of 20 generated, 10 evaluated; its bar says 70 %, so does the figure.
    live = page.locator('tr[data-run-id="fake-live"]')
    expect(live.locator(".sample-count")).to_have_text("14 / 20")
    expect(live.locator('[role="progressbar"]')).to_have_attribute("aria-valuenow", "70")
    assert "evaluated 10" in live.locator(".sample-count").get_attribute("title")
    rows = page.locator("#runs-table tr[data-run-id]").evaluate_all("""rows => rows.map(r => ({
        id: r.dataset.runId,
        samples: r.querySelector('.sample-count').textContent,
        pct: r.querySelector('[role=progressbar]').getAttribute('aria-valuenow')}))""")
    checked = 0
    for row in rows:
        m = re.fullmatch(r"(\d+) / (\d+)", row["samples"])
        if m and row["pct"] is not None:
            done, expected = int(m.group(1)), int(m.group(2))
            assert abs(done / expected * 100 - float(row["pct"])) <= 100 / expected / 2 + 0.05, row
            checked += 1
    assert checked >= 15
    p.check_clean()


def test_search_and_sortable_columns(open_page, daemon):
    summaries = daemon.runs()
    p = open_page()
    page = p.goto("/dashboard/")
    expect(page.locator("#runs-table tr[data-run-id]")).to_have_count(len(summaries))
    search = page.locator("#runs-search")
    search.fill("swapped")
    expect(page.locator("#runs-table tr[data-run-id]")).to_have_count(1)
    assert shown_ids(page) == ["fake-swapped"]
    search.fill("fake-flaky")  # a model name: the 1.x and the Themis 4 runs of that model
    want = {r for r, s in summaries.items() if "fake-flaky" in (s["model"] or "")}
    wait_for(lambda: set(shown_ids(page)) == want, what="search by model")
    search.fill("arith-24 partial_failure")  # every word must match: benchmark and native status
    want = {r for r, s in summaries.items() if s["experiment_id"] == "arith-24" and s["native_status"] == "partial_failure"}
    wait_for(lambda: set(shown_ids(page)) == want and want, what="search by two words")
    search.fill("no-such-run")
    expect(page.locator("td.empty")).to_have_text("No run matches these filters.")
    search.fill("")
    expect(page.locator("#runs-table tr[data-run-id]")).to_have_count(len(summaries))

    page.click('button[data-sort="run"]')
    expect(page.locator('th:has(button[data-sort="run"])')).to_have_attribute("aria-sort", "ascending")
    assert shown_ids(page) == sorted(summaries)
    page.click('button[data-sort="run"]')
    expect(page.locator('th:has(button[data-sort="run"])')).to_have_attribute("aria-sort", "descending")
    assert shown_ids(page) == sorted(summaries, reverse=True)

    page.click('button[data-sort="progress"]')  # numbers start descending; unknown progress last
    expect(page.locator('th:has(button[data-sort="progress"])')).to_have_attribute("aria-sort", "descending")
    order = [summaries[r]["progress"] for r in shown_ids(page)]
    known = [x for x in order if x is not None]
    assert known == sorted(known, reverse=True) and order[:len(known)] == known
    page.click('button[data-sort="progress"]')
    order = [summaries[r]["progress"] for r in shown_ids(page)]
    known = [x for x in order if x is not None]
    assert known == sorted(known) and order[:len(known)] == known

    page.click('button[data-sort="model"]')
    models = [summaries[r]["model"] for r in shown_ids(page)]
    assert models == sorted(models, key=lambda m: re.sub(r"[^a-z0-9]", "", m.lower())) or models == sorted(models), models
    p.check_clean()


def test_long_ids_stay_on_one_line(open_page):
    p = open_page(width=1280)
    page = p.goto("/dashboard/")
    link = page.locator(f'tr[data-run-id="{LONG_ID}"] a.run-link')
    expect(link).to_be_visible()
    expect(link).to_have_attribute("title", LONG_ID)
    expect(link).to_have_attribute("href", "#/runs/" + LONG_ID)
    # measured in one go: the table is redrawn on live events, which replaces its elements
    m = page.evaluate("""id => {
        const row = [...document.querySelectorAll('#runs-table tr[data-run-id]')].find(r => r.dataset.runId === id);
        const a = row.querySelector('a.run-link');
        return {link: a.getBoundingClientRect().height, cell: row.querySelector('td.col-run').getBoundingClientRect().height,
                line: parseFloat(getComputedStyle(a).lineHeight) || 20, cut: a.scrollWidth > a.clientWidth,
                text: a.textContent};
    }""", LONG_ID)
    assert m["link"] < 1.6 * m["line"] and m["cell"] < 4 * m["line"], m
    # Shortened in the middle, so ids that share a long prefix (a date, a suite name) still read
    # apart by their ends; the whole of what is shown fits, the full id is in the title.
    assert m["text"].startswith(LONG_ID[:7]) and m["text"].endswith(LONG_ID[-9:]) and "…" in m["text"], m
    assert not m["cut"], m
    p.check_clean()


def test_live_run_shows_duration_throughput_and_eta(open_page, store, daemon):
    p = open_page()
    page = p.goto("/dashboard/")
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")
    writer = ThemisRunWriter(store, "eta-live", dataset=make_arith_dataset(40), eval_batch=5, compression="none")
    writer.start()
    try:
        writer.step(10)
        row = page.locator('tr[data-run-id="eta-live"]')
        expect(row.locator(".sample-count")).to_have_text("10 / 40")
        time.sleep(1.2)  # a rate needs at least a second of run time
        writer.step(6)
        expect(row.locator(".sample-count")).to_have_text("16 / 40")
        expect(row.locator(".eta")).to_have_text(re.compile(r"^ETA \d+ (s|min \d\d s)$"))
        expect(row.locator(".rate")).to_have_text(re.compile(r"^\d+(\.\d)? /min$"))
        expect(row.locator(".duration")).to_have_text(re.compile(r"^\d+ s$"))
        # finished and stalled runs have no ETA
        expect(page.locator('tr[data-run-id="fake-direct"] .eta')).to_have_count(0)
        expect(page.locator('tr[data-run-id="fake-live"] .eta')).to_have_count(0)
        p.shot_path = os.path.join(SHOTS, "dashboard-runs-live.png")
        page.screenshot(path=p.shot_path, full_page=True)

        # The dashboard's figures are those of `themis-daemon status`, run for run.
        summaries = list(daemon.runs().values())
        now_ms = page.evaluate("Date.now()")
        js = page.evaluate("""([runs, now]) => import('./js/figures.js').then(f => runs.map(r => ({
            id: r.run_id, done: f.samplesDone(r), eta: f.etaSeconds(r, now), rate: f.throughput(r, now),
            elapsed: f.elapsedSeconds(r, now)})))""", [summaries, now_ms])
        now = dt.datetime.fromtimestamp(now_ms / 1000, dt.timezone.utc)
        for run, got in zip(summaries, js):
            assert got["done"] == cli_figures.samples_done(run), run["run_id"]
            for key, fn in (("eta", cli_figures.eta_seconds), ("rate", cli_figures.throughput_per_minute),
                            ("elapsed", cli_figures.elapsed_seconds)):
                want = fn(run, now)
                assert (want is None) == (got[key] is None), (run["run_id"], key, want, got[key])
                if want is not None:
                    assert got[key] == pytest.approx(want, rel=1e-3, abs=0.01), (run["run_id"], key)
        assert any(g["eta"] for g in js)
        writer.step(24)
        writer.complete()
        expect(row.locator(".badge")).to_have_text("completed")
        expect(row.locator(".eta")).to_have_count(0)
        expect(row.locator(".sample-count")).to_have_text("40 / 40")
    finally:
        if writer.status == "in_progress":
            writer.fail("test ended")
    p.check_clean()


def test_times_in_the_browsers_zone_with_relative_hints(open_page, daemon):
    summaries = daemon.runs()
    alpha = next(r for r, s in summaries.items() if s["format"] == "themis-v4" and s["created_at"])
    stamp = summaries[alpha]["created_at"]
    p = open_page(timezone_id="Asia/Tokyo", locale="en-GB")
    page = p.goto("/dashboard/")
    cell = page.locator(f'tr[data-run-id="{alpha}"] td.col-created')
    utc = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    tokyo = utc.astimezone(dt.timezone(dt.timedelta(hours=9)))
    expect(cell.locator("time")).to_have_text(tokyo.strftime("%d/%m/%Y, %H:%M"))
    expect(cell.locator("time")).to_have_attribute("title", f"stored as {stamp}")
    expect(cell.locator(".relative")).to_have_text(re.compile(r"ago$"))
    p.check_clean()


def _luminance(css_color: str) -> float:
    r, g, b = (int(x) for x in re.findall(r"\d+", css_color)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_colour_scheme_follows_the_system(open_page, scheme):
    p = open_page(color_scheme=scheme)
    page = p.goto("/dashboard/")
    expect(page.locator('tr[data-run-id="fake-direct"]')).to_be_visible()
    colors = page.evaluate("""() => {
        const cs = (sel, prop) => getComputedStyle(document.querySelector(sel))[prop];
        return {bg: cs('html', 'backgroundColor'), text: cs('body', 'color'),
                table: cs('#runs-table', 'backgroundColor'), th: cs('#runs-table th', 'backgroundColor'),
                input: cs('#runs-search', 'backgroundColor'),
                badge: cs('tr[data-run-id="fake-direct"] .badge', 'color')};
    }""")
    if scheme == "dark":
        for key in ("bg", "table", "th", "input"):
            assert _luminance(colors[key]) < 0.2, (key, colors)
        assert _luminance(colors["text"]) > 0.8, colors
    else:
        for key in ("bg", "table", "th", "input"):
            assert _luminance(colors[key]) > 0.9, (key, colors)
        assert _luminance(colors["text"]) < 0.25, colors
    page.screenshot(path=os.path.join(SHOTS, f"dashboard-runs-{scheme}.png"), full_page=True)
    p.check_clean()


def test_dashboard_and_api_docs_link_to_each_other(open_page, daemon):
    p = open_page()
    page = p.goto("/dashboard/")
    page.click("#link-docs")
    page.wait_for_url(daemon.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Themis daemon API")
    expect(page.locator('.doc-links a[aria-current="page"]')).to_have_text("Swagger UI")
    page.click('.doc-links a:has-text("ReDoc")')
    page.wait_for_url(daemon.url + "/redoc")
    expect(page.locator("h1", has_text="Themis daemon API")).to_be_visible()
    page.click('.doc-links a:has-text("Dashboard")')
    page.wait_for_url(daemon.url + "/dashboard/")
    expect(page.locator('tr[data-run-id="fake-direct"]')).to_be_visible()
    page.click("#link-redoc")
    page.wait_for_url(daemon.url + "/redoc")
    p.check_clean()
