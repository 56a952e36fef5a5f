"""The samples behind a verdict in a real browser (headless Chromium via Playwright): the
paired-sample view linked from compare rows, the run detail's reference / details / filters /
sorting / sample links / downloads, the single-sample page and the compare view's run picker,
metric multi-select and paired chart means. Daemon subprocesses serve copies of the fixture
stores; expected numbers come from the store files and the REST API, not from the page.

Screenshots of the new views: tests/screenshots/, and docs/screenshots/ (committed, referenced from
the README) when THEMIS_DOC_SCREENSHOTS=1.
"""

from __future__ import annotations

import csv
import io
import json
import os
import urllib.parse
import urllib.request

import pytest

from conftest import DATA, PLAIN, copy_store
from test_dashboard import V4_RUNS, Daemon, Page, browser, sync_api, v4_daemon  # noqa: F401  (skips without Chromium; fixtures)
from test_samples_http import cells, v1_file_scores

expect = sync_api.expect
expect.set_options(timeout=30_000)
DOC_SHOTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "screenshots")
TEST_SHOTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "screenshots")
with open(os.path.join(DATA, "themis-v4", "expected.json"), encoding="utf-8") as _fh:
    V4_EXPECTED = json.load(_fh)["backends"]["sqlite"]


def get_json(url, body=None):
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def mcnemar_row(base, run_a, run_b, metric):
    result = get_json(base + "/api/compare", {"run_ids": [run_a, run_b], "metrics": [metric],
                                              "statistical_test": "mcnemar"})
    (row,) = result["pairwise_results"]
    return row


def shot(p, name):
    """Screenshots go to tests/screenshots/; with THEMIS_DOC_SCREENSHOTS=1 they also refresh the
    committed ones in docs/screenshots/ (a plain test run leaves tracked files alone)."""
    folders = [TEST_SHOTS] + ([DOC_SHOTS] if os.environ.get("THEMIS_DOC_SCREENSHOTS") == "1" else [])
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
        p.page.screenshot(path=os.path.join(folder, name), full_page=True)


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    d = Daemon(copy_store(PLAIN, str(tmp_path_factory.mktemp("dash-samples") / "store")))
    yield d
    d.stop()


@pytest.fixture(scope="module")
def v4(v4_daemon):
    return v4_daemon


@pytest.fixture
def opener(browser):
    pages = []

    def open_(daemon, **kw):
        p = Page(browser, daemon.url, **kw)
        pages.append(p)
        return p

    yield open_
    for p in pages:
        p.close()


# ------------------------------------------------------------------------ compare → samples


def test_compare_row_shows_mcnemar_counts_and_opens_the_discordant_samples(opener, v1):
    run_a, run_b, metric = "fake-direct", "fake-swapped", "ExactMatch"
    want = cells(v1_file_scores(run_a, metric), v1_file_scores(run_b, metric))
    row_api = mcnemar_row(v1.url, run_a, run_b, metric)
    assert (row_api["discordant_a_only"], row_api["discordant_b_only"]) == (len(want["a_only"]), len(want["b_only"]))
    assert want["a_only"], "the fixture pair must disagree somewhere"

    p = opener(v1, height=1000)
    page = p.goto(f"/dashboard/#/compare?runs={run_a},{run_b}&test=auto&run=1")
    row = page.locator(f'#pairwise-table tr[data-metric="{metric}"]')
    cell = row.locator("td.samples-cell")
    expect(cell.locator('a[data-kind="a_only"]')).to_have_text(f"A✓B✗ {len(want['a_only'])}")
    expect(cell.locator('a[data-kind="b_only"]')).to_have_text(f"A✗B✓ {len(want['b_only'])}")
    # The counts sit next to the p-value of the same row.
    assert row.locator("td").nth(7).get_attribute("data-label") == "p"
    assert row.locator("td").nth(8).get_attribute("data-label") == "Samples"
    # A continuous metric links to the pairs by size of difference, and is marked lower-is-better.
    rl = page.locator('#pairwise-table tr[data-metric="ResponseLength"]')
    expect(rl.locator('td.samples-cell a[data-kind="by_delta"]')).to_be_visible()
    expect(rl.locator(".lower-mark")).to_have_attribute("title", "lower is better")
    shot(p, "compare-discordant-counts.png")

    cell.locator('a[data-kind="a_only"]').click()
    expect(page.locator("#pair-counts td[data-cell='a_only']")).to_have_text(str(len(want["a_only"])))
    expect(page.locator("#pair-counts td[data-cell='b_only']")).to_have_text(str(len(want["b_only"])))
    expect(page.locator("#pair-counts td[data-cell='both']")).to_have_text(str(len(want["both"])))
    cards = page.locator("#pair-list article.pair")
    expect(cards).to_have_count(len(want["a_only"]))
    assert cards.evaluate_all("els => els.map(e => e.dataset.sampleId)") == want["a_only"]
    first = cards.first
    sid = want["a_only"][0]
    # prompt (A's and B's differ in this fixture), reference, both scores, both responses with marks
    expect(first.locator(".pair-reference .reference")).not_to_be_empty()
    expect(first.locator(".pair-side").nth(0).locator(".pair-score")).to_have_attribute("data-score", "1")
    expect(first.locator(".pair-side").nth(1).locator(".pair-score")).to_have_attribute("data-score", "0")
    expect(first.locator("del.diff-del").first).to_be_visible()
    expect(first.locator("ins.diff-add").first).to_be_visible()
    detail = get_json(v1.url + "/api/runs/" + run_a)
    response_a = next(s["response"] for s in detail["samples"] if s["id"] == sid)
    assert first.locator(".pair-side").nth(0).locator(".text.diff").inner_text() == response_a
    shot(p, "compare-samples.png")

    # The other cells, from the tabs.
    page.click('#pair-kinds button[data-kind="both"]')
    expect(cards).to_have_count(len(want["both"]))
    expect(page.locator("#pair-page")).to_contain_text(f"{len(want['both'])} samples")
    page.click('#pair-kinds button[data-kind="b_only"]')
    if want["b_only"]:
        expect(cards).to_have_count(len(want["b_only"]))
    else:
        expect(page.locator("#pair-empty")).to_be_visible()
    # Back to the comparison, which runs again.
    page.click("text=← Back to the comparison")
    expect(page.locator(f'#pairwise-table tr[data-metric="{metric}"]')).to_be_visible()
    p.check_clean()


def test_v4_pairs_view_counts_and_paging(opener, v4):
    alpha, beta = V4_RUNS["alpha"], V4_RUNS["beta"]
    metric = "builtin/exact_match"
    oracle = V4_EXPECTED["per_case"]

    def scores(name):
        return {c: s[metric] for c, s in oracle[name]["reader_scores_from_events"].items()
                if metric in s and not isinstance(s[metric], dict)}

    want = cells(scores("alpha"), scores("beta"))
    p = opener(v4, height=1000)
    q = urllib.parse.urlencode({"run_a": alpha, "run_b": beta, "metric": metric, "kind": "a_only"})
    page = p.goto("/dashboard/#/compare/samples?" + q)
    for kind, ids in want.items():
        expect(page.locator(f"#pair-counts td[data-cell='{kind}']")).to_have_text(str(len(ids)))
    cards = page.locator("#pair-list article.pair")
    expect(cards).to_have_count(min(20, len(want["a_only"])))
    # by size of difference: every paired case, 20 per page.
    page.click('#pair-kinds button[data-kind="by_delta"]')
    n = sum(len(v) for v in want.values())
    expect(page.locator("#pair-page")).to_contain_text(f"page 1 of {-(-n // 20)} · {n} samples")
    expect(cards).to_have_count(min(20, n))
    if n > 20:
        page.click("#pair-pager >> text=Next ›")
        expect(page.locator("#pair-page")).to_contain_text("page 2 of")
        expect(cards).to_have_count(n - 20)
    p.check_clean()


# ------------------------------------------------------------------------------ run detail


def test_detail_reference_details_filter_sort_and_sample_link(opener, v1):
    run_id = "fake-swapped"
    em = v1_file_scores(run_id, "ExactMatch")
    rl = v1_file_scores(run_id, "ResponseLength")
    detail = get_json(v1.url + "/api/runs/" + run_id)
    p = opener(v1, height=1100)
    page = p.goto(f"/dashboard/#/runs/{run_id}")
    rows = page.locator("#samples-table tbody tr")
    expect(rows).to_have_count(20)
    expect(page.locator("#samples-table thead")).to_contain_text("Reference")
    q01 = page.locator('#samples-table tr[data-sample-id="q01"]')
    expect(q01.locator(".reference")).to_have_text(next(s["reference"] for s in detail["samples"] if s["id"] == "q01"))
    # JSON responses are shown indented, with the stored text one click away.
    box = q01.locator(".pretty-box.response")
    expect(box).to_have_attribute("data-kind", "json")
    expect(box.locator("pre.json")).to_be_visible()
    expect(box.locator(".raw")).to_be_hidden()
    box.locator("button.raw-toggle").click()
    expect(box.locator(".raw")).to_be_visible()
    expect(box.locator(".raw")).to_have_text(next(s["response"] for s in detail["samples"] if s["id"] == "q01"))
    # Per-metric details (ExactMatch's matched_reference).
    q01.locator(".metric-details-box summary").click()
    expect(q01.locator(".metric-details")).to_contain_text("matched_reference")

    # "wrong on ExactMatch": a 0, or no score because the generation failed.
    wrong = sorted([k for k, v in em.items() if v == 0.0] + [s["id"] for s in detail["samples"] if "ExactMatch" not in s["scores"]])
    page.select_option("#wrong-on", "ExactMatch")
    expect(rows).to_have_count(len(wrong))
    assert sorted(rows.evaluate_all("els => els.map(e => e.dataset.sampleId)")) == wrong
    shot(p, "detail-wrong-on-metric.png")
    page.select_option("#wrong-on", "")
    expect(rows).to_have_count(20)

    # Sort by a score column, both ways; samples without the score go last.
    page.click('#samples-table button[data-sort="score:ResponseLength"]')
    order = sorted(rl, key=lambda k: rl[k])
    got = rows.evaluate_all("els => els.map(e => e.dataset.sampleId)")
    assert [rl[k] for k in got[:len(rl)]] == [rl[k] for k in order]
    assert set(got[len(rl):]) == set(got) - set(rl) and len(got) > len(rl)
    page.click('#samples-table button[data-sort="score:ResponseLength"]')
    got = rows.evaluate_all("els => els.map(e => e.dataset.sampleId)")
    assert [rl[k] for k in got[:len(rl)]] == sorted(rl.values(), reverse=True)
    assert all(k not in rl for k in got[len(rl):])
    # Sort by the id column.
    page.click('#samples-table button[data-sort="id"]')
    got = rows.evaluate_all("els => els.map(e => e.dataset.sampleId)")
    assert got == sorted(got)
    page.click('#samples-table button[data-sort="id"]')
    assert rows.evaluate_all("els => els.map(e => e.dataset.sampleId)") == sorted(got, reverse=True)

    # A link to one sample.
    page.click('#samples-table tr[data-sample-id="q06"] a.sample-link')
    assert page.url.endswith(f"#/runs/{run_id}/samples/q06")
    expect(page.locator("#sample-id")).to_have_text("q06")
    sample = next(s for s in detail["samples"] if s["id"] == "q06")
    expect(page.locator("#sample-prompt")).to_have_text(sample["prompt"])
    expect(page.locator("#sample-reference")).to_contain_text(sample["reference"])
    expect(page.locator('#sample-scores tr[data-metric="ExactMatch"]')).to_contain_text("matched_reference")
    expect(page.locator("#sample-response .pretty-box")).to_have_attribute("data-kind", "json")
    shot(p, "sample.png")
    page.goto(p.base + f"/dashboard/#/runs/{run_id}")
    expect(rows).to_have_count(20)
    shot(p, "detail-samples.png")
    p.check_clean()


def test_detail_downloads_parse_back(opener, v1, tmp_path):
    run_id = "fake-swapped"
    detail = get_json(v1.url + "/api/runs/" + run_id)
    p = opener(v1)
    page = p.goto(f"/dashboard/#/runs/{run_id}")
    expect(page.locator("#samples-table tbody tr")).to_have_count(20)
    with page.expect_download() as info:
        page.click("#download-csv")
    download = info.value
    assert download.suggested_filename == f"{run_id}-samples.csv"
    path = tmp_path / "s.csv"
    download.save_as(path)
    rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
    assert [r["id"] for r in rows] == [s["id"] for s in detail["samples"]]
    assert [r["reference"] for r in rows] == [s["reference"] for s in detail["samples"]]
    assert [r["response"] for r in rows] == [s["response"] for s in detail["samples"]]
    with page.expect_download() as info:
        page.click("#download-jsonl")
    path = tmp_path / "s.jsonl"
    info.value.save_as(path)
    assert [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] == detail["samples"]
    p.check_clean()


def test_download_with_an_api_key(opener, v1, tmp_path):
    keyed = Daemon(v1.storage, env={"THEMIS_AUTH_API_KEYS": "s3cret-key-for-downloads"})
    try:
        p = opener(keyed, init_script="localStorage.setItem('themis.apiKey', 's3cret-key-for-downloads')")
        page = p.goto("/dashboard/#/runs/fake-direct")
        expect(page.locator("#samples-table tbody tr")).to_have_count(20)
        with page.expect_download() as info:
            page.click("#download-jsonl")
        assert info.value.suggested_filename == "fake-direct-samples.jsonl"
        path = tmp_path / "k.jsonl"
        info.value.save_as(path)
        lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
        assert len(lines) == 20 and lines[0]["id"] == "q01"
        p.check_clean(allowed_errors=("WebSocket",))
    finally:
        keyed.stop()


def test_markdown_is_rendered_without_running_html(opener, v1):
    p = opener(v1)
    page = p.goto("/dashboard/")
    expect(page.locator('tr[data-run-id="fake-direct"]')).to_be_visible()
    out = page.evaluate("""async () => {
        const { prettyText, wordDiff } = await import('./js/text.js');
        window.__pwned = 0;
        const md = '# Title\\n\\nSome **bold** and `code`.\\n\\n- one\\n- <img src=x onerror="window.__pwned=1">\\n\\n```py\\nprint(1)\\n```';
        const box = prettyText(md);
        document.body.append(box);
        await new Promise(r => setTimeout(r, 200));
        return {
            kind: box.dataset.kind, h: box.querySelector('.md h3')?.textContent,
            strong: box.querySelector('.md strong')?.textContent, items: box.querySelectorAll('.md li').length,
            img: box.querySelectorAll('img').length, li2: box.querySelectorAll('.md li')[1]?.textContent,
            code: box.querySelector('.md pre code')?.textContent, pwned: window.__pwned,
            diff: wordDiff('the answer is 42', 'the answer is 41 today'),
        };
    }""")
    assert out["kind"] == "markdown" and out["h"] == "Title" and out["strong"] == "bold" and out["items"] == 2
    assert out["img"] == 0 and out["pwned"] == 0 and out["li2"] == '<img src=x onerror="window.__pwned=1">'
    assert out["code"] == "print(1)"
    assert out["diff"] == [{"op": "same", "text": "the answer is "}, {"op": "add", "text": "41 today"},
                           {"op": "del", "text": "42"}]
    p.check_clean()


# ------------------------------------------------------------------------------ compare view


def test_compare_picker_search_metric_select_and_paired_chart_means(opener, v1):
    p = opener(v1, height=1100)
    page = p.goto("/dashboard/#/compare")
    expect(page.locator("label.pick")).to_have_count(5)
    page.fill("#run-search", "terse")
    expect(page.locator("label.pick")).to_have_count(1)
    expect(page.locator('label.pick[for="pick-fake-terse"]')).to_be_visible()
    page.check("#pick-fake-terse")
    page.fill("#run-search", "direct")
    # a ticked run stays listed whatever the filter
    expect(page.locator("label.pick")).to_have_count(2)
    page.check("#pick-fake-direct")
    page.fill("#run-search", "")
    expect(page.locator("label.pick")).to_have_count(5)
    page.uncheck("#pick-fake-terse")
    page.check("#pick-fake-swapped")
    metrics = page.locator("#compare-metrics input[data-metric]")
    expect(metrics).to_have_count(3)
    page.check('#compare-metrics input[data-metric="ExactMatch"]')
    page.select_option("#compare-test", "t_test")
    page.click("#compare-button")
    rows = page.locator("#pairwise-table tbody tr")
    expect(rows).to_have_count(1)
    assert "metrics=ExactMatch" in page.url
    # The chart's means are those of the table: on the 18 samples both runs have.
    row = get_json(v1.url + "/api/compare", {"run_ids": ["fake-direct", "fake-swapped"], "metrics": ["ExactMatch"],
                                             "statistical_test": "t_test"})["pairwise_results"][0]
    bar = page.locator('svg.chart[data-metric="ExactMatch"] g.bar[data-run="fake-direct"] title')
    expect(bar).to_contain_text(f"mean {round(row['run_a_mean'], 3)}")
    expect(bar).to_contain_text(f"(n={row['n']})")
    expect(rows.first.locator("td").nth(3)).to_have_text(str(round(row["run_a_mean"], 3)))
    shot(p, "compare-picker.png")

    # Unknown metric from a shared link: the API's error is shown.
    page.goto(p.base + "/dashboard/#/compare?runs=fake-direct,fake-terse&metrics=NoSuchMetric&run=1")
    expect(page.locator("#compare-output .error")).to_contain_text("NoSuchMetric")
    p.check_clean(allowed_errors=("400",))


def test_picker_with_hundreds_of_runs(opener, tmp_path):
    """Hundreds of runs: the picker lists at most 200 at a time and the filter finds any of them."""
    from themis_daemon.demo.writer import ThemisRunWriter, make_arith_dataset

    root = copy_store(PLAIN, str(tmp_path / "many"))
    dataset = make_arith_dataset(2)
    for i in range(230):
        w = ThemisRunWriter(root, f"many-{i:03d}", dataset=dataset, eval_batch=5, compression="none")
        w.start()
        w.step(2)
        w.complete()
    d = Daemon(root)
    try:
        p = opener(d)
        page = p.goto("/dashboard/#/compare")
        expect(page.locator("label.pick")).to_have_count(200)
        expect(page.locator("#run-picker-info")).to_contain_text("refine the filter")
        page.fill("#run-search", "many-007")
        expect(page.locator("label.pick")).to_have_count(1)
        page.check("#pick-many-007")
        page.fill("#run-search", "many-223")
        expect(page.locator("label.pick")).to_have_count(2)  # the ticked one stays
        page.check("#pick-many-223")
        page.click("#compare-button")
        expect(page.locator("#pairwise-table tbody tr").first).to_be_visible()
        p.check_clean()
    finally:
        d.stop()


def test_new_views_fit_a_narrow_screen(opener, v1):
    p = opener(v1, width=390, height=844)
    q = urllib.parse.urlencode({"run_a": "fake-direct", "run_b": "fake-swapped", "metric": "ExactMatch", "kind": "a_only"})
    page = p.goto("/dashboard/#/compare/samples?" + q)
    expect(page.locator("#pair-list article.pair").first).to_be_visible()
    for path, ready in (("/dashboard/#/compare/samples?" + q, "#pair-list article.pair"),
                        ("/dashboard/#/runs/fake-swapped", "#samples-table tbody tr"),
                        ("/dashboard/#/runs/fake-swapped/samples/q06", "#sample-scores")):
        page.goto(p.base + path)
        expect(page.locator(ready).first).to_be_visible()
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{path} is {overflow}px wider than the screen"
    shot(p, "sample-narrow.png")
    p.check_clean()


# ------------------------------------------------------------------------------ dark mode

# Every painted background on the page, with the element it belongs to (visible elements only).
BACKGROUNDS = """() => [...document.querySelectorAll('body *')]
    .filter((e) => e.getClientRects().length)
    .map((e) => [e.tagName.toLowerCase() + (e.className && typeof e.className === 'string' ? '.' + e.className.trim().replace(/\\s+/g, '.') : ''),
                 getComputedStyle(e).backgroundColor, getComputedStyle(e).color])"""


def _rgba(css_color):
    parts = [float(x) for x in css_color[css_color.index("(") + 1:-1].replace("/", ",").split(",")]
    return parts[:3], (parts[3] if len(parts) > 3 else 1.0)


def _relative_luminance(rgb):
    def channel(c):
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4
    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def _contrast(fg, bg):
    hi, lo = sorted((_relative_luminance(_rgba(fg)[0]), _relative_luminance(_rgba(bg)[0])), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def light_patches(page):
    """Backgrounds that stay light (a light theme's colour) on a dark page."""
    out = []
    for el, bg, _ in page.evaluate(BACKGROUNDS):
        rgb, alpha = _rgba(bg)
        if alpha >= 0.5 and _relative_luminance(rgb) > 0.5:
            out.append((el, bg))
    return out


def test_dark_mode_on_the_detail_compare_pairs_and_sample_views(opener, v1):
    p = opener(v1, height=1000)
    p.page.emulate_media(color_scheme="dark")
    q = urllib.parse.urlencode({"run_a": "fake-direct", "run_b": "fake-swapped", "metric": "ExactMatch", "kind": "a_only"})
    views = (("/dashboard/#/runs/fake-swapped", "#samples-table tbody tr"),
             ("/dashboard/#/compare?runs=fake-direct,fake-swapped&test=auto&run=1", "#pairwise-table td.samples-cell a"),
             ("/dashboard/#/compare/samples?" + q, "#pair-list del.diff-del"),
             ("/dashboard/#/runs/fake-swapped/samples/q06", "#sample-scores"))
    for path, ready in views:
        page = p.goto(path)
        expect(page.locator(ready).first).to_be_visible()
        assert light_patches(page) == [], path
        if "compare/samples" in path:
            # The word diff and the active cell tab stay readable on the dark page.
            for sel in ("del.diff-del", "ins.diff-add", "#pair-kinds button.active"):
                fg, bg = page.locator(sel).first.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
                assert _contrast(fg, bg) >= 4.5, (sel, fg, bg)
    # Formatted Markdown: inline code and code blocks on a dark chip.
    page.evaluate("""async () => {
        const { prettyText } = await import('./js/text.js');
        const box = prettyText('Some `code` here.\\n\\n```\\nprint(1)\\n```');
        box.id = 'md-probe';
        document.querySelector('main').append(box);
    }""")
    expect(page.locator("#md-probe .md code").first).to_be_visible()
    for sel in ("#md-probe .md p code", "#md-probe .md pre.code"):
        fg, bg = page.locator(sel).first.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
        assert _relative_luminance(_rgba(bg)[0]) < 0.5 and _contrast(fg, bg) >= 4.5, (sel, fg, bg)
    p.check_clean()


def test_lower_is_better_marks_show_before_any_comparison(opener, tmp_path):
    """The configured compare.lower_is_better marks the metric checkboxes as soon as runs are
    ticked, before (and without) a comparison."""
    d = Daemon(copy_store(PLAIN, str(tmp_path / "store")), env={"THEMIS_COMPARE_LOWER_IS_BETTER": "ExactMatch"})
    try:
        p = opener(d)
        posts = []
        p.page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)
        page = p.goto("/dashboard/#/compare?runs=fake-direct,fake-swapped")
        expect(page.locator('#compare-metrics input[data-metric="MathVerifyAccuracy"]')).to_be_visible()
        marked = page.locator("#compare-metrics label.metric-opt:has(.lower-mark)")
        expect(marked).to_have_count(1)
        expect(marked.locator("input")).to_have_attribute("data-metric", "ExactMatch")
        assert posts == []
        p.check_clean()
    finally:
        d.stop()
