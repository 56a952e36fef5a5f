"""`themis-daemon status`: the runs of a running daemon in a terminal, once or live.

Reads `GET /api/runs` once and, with `--watch`, follows the `/ws` events (subscribed to every
run), so a terminal on an SSH session sees the same live state as the dashboard. The figures
(samples done, ETA, throughput) are computed exactly as the dashboard computes them: from the
summary's `progress`, so the "Samples" figure always agrees with the progress bar.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Iterable, List, Optional

EXIT_UNREACHABLE = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_INTERRUPTED = 130

DEFAULT_URL = "http://127.0.0.1:8080"
STATUS_STYLES = {
    "completed": "green", "in_progress": "cyan", "pending": "yellow", "failed": "red", "cancelled": "magenta",
}


class StatusError(Exception):
    """A one-line reason the daemon could not be asked, with the exit status to use."""

    def __init__(self, message: str, code: int = EXIT_UNREACHABLE):
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------------- pure figures

def parse_time(value: Optional[str]) -> Optional[dt.datetime]:
    """An aware datetime. Themis 1.x writes naive local times, Themis 4 UTC with `Z`."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.astimezone()


def samples_done(run: Dict[str, Any]) -> Optional[int]:
    """The samples the progress fraction counts (1.x: generated; Themis 4: scored or failed)."""
    progress, expected = run.get("progress"), run.get("expected_samples")
    if progress is None or not expected:
        return None
    return int(round(progress * expected))


def elapsed_seconds(run: Dict[str, Any], now: Optional[dt.datetime] = None) -> Optional[float]:
    """Run time so far: to now for a live run (a Themis 1.x run's `updated_at` stays at its
    start while it writes records), else (finished, or stalled) to its last change."""
    start = parse_time(run.get("created_at"))
    if run.get("status") == "in_progress" and not run.get("stalled"):
        end: Optional[dt.datetime] = now or dt.datetime.now(dt.timezone.utc)
    else:
        end = parse_time(run.get("completed_at") or run.get("updated_at"))
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def throughput_per_minute(run: Dict[str, Any], now: Optional[dt.datetime] = None) -> Optional[float]:
    """Samples per minute over the run's whole time so far (None under a second: no rate yet)."""
    done, elapsed = samples_done(run), elapsed_seconds(run, now)
    if not done or not elapsed or elapsed < 1.0:
        return None
    return done / elapsed * 60.0


def eta_seconds(run: Dict[str, Any], now: Optional[dt.datetime] = None) -> Optional[float]:
    """Seconds left for a live run at its average rate so far."""
    if run.get("status") != "in_progress" or run.get("stalled"):
        return None
    progress, elapsed = run.get("progress"), elapsed_seconds(run, now)
    if not progress or progress >= 1.0 or not elapsed or elapsed < 1.0:
        return None
    return elapsed * (1.0 - progress) / progress


def human_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def ago(value: Optional[str], now: Optional[dt.datetime] = None) -> str:
    when = parse_time(value)
    if when is None:
        return ""
    now = now or dt.datetime.now(dt.timezone.utc)
    seconds = (now - when).total_seconds()
    if seconds < 5:
        return "just now"
    return human_duration(seconds).split(" ")[0] + " ago"


def short_id(run_id: str) -> str:
    """Themis 4 ids are 64 hex characters; the API takes any unique prefix of 8 or more."""
    if len(run_id) == 64 and all(c in "0123456789abcdef" for c in run_id):
        return run_id[:12]
    return run_id


def metric_means(run: Dict[str, Any]) -> str:
    parts = []
    for name, mean in sorted((run.get("metrics") or {}).items()):
        if isinstance(mean, (int, float)):
            parts.append(f"{name.split('/')[-1]} {mean:.3g}")
    return ", ".join(parts)


def sort_runs(runs: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Live runs first, then newest first (as the API lists them)."""
    def key(run: Dict[str, Any]):
        created = parse_time(run.get("created_at"))
        return (run.get("status") not in ("in_progress", "pending"),
                -(created.timestamp() if created else float("inf")), run["run_id"])
    return sorted(runs, key=key)


# ------------------------------------------------------------------------------- rendering

def render_table(runs: Iterable[Dict[str, Any]], *, source: str, note: str = "", width: int = 200) -> Any:
    """The runs as a rich Table; narrow terminals lose the least useful columns first, so the
    figures are never cut."""
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    runs = sort_runs(runs)
    live = sum(1 for r in runs if r.get("status") == "in_progress")
    title = f"{len(runs)} runs, {live} live — {source}" + (f" — {note}" if note else "")
    show_rate, show_metrics, show_updated = width >= 92, width >= 112, width >= 124
    show_model, show_experiment = width >= 148, width >= 166
    table = Table(title=title, title_justify="left", expand=False, header_style="bold")
    table.add_column("Run", no_wrap=True, overflow="ellipsis", max_width=24 if width >= 100 else 16)
    if show_experiment:
        table.add_column("Experiment", overflow="ellipsis", max_width=16, no_wrap=True)
    if show_model:
        table.add_column("Model", overflow="ellipsis", max_width=20, no_wrap=True)
    table.add_column("Status", no_wrap=True, min_width=9)
    table.add_column("Progress", no_wrap=True, min_width=6)
    table.add_column("Samples", justify="right", no_wrap=True, min_width=7)
    table.add_column("ETA", justify="right", no_wrap=True, min_width=6)
    if show_rate:
        table.add_column("/min", justify="right", no_wrap=True, min_width=6)
    if show_metrics:
        table.add_column("Metric means", overflow="fold", min_width=20)
    if show_updated:
        table.add_column("Updated", justify="right", no_wrap=True, min_width=8)
    for run in runs:
        status = run.get("status") or "?"
        if run.get("stalled") and status == "in_progress":
            label = Text("stalled", style="bold yellow")
        else:
            label = Text(status, style=STATUS_STYLES.get(status, ""))
        progress = run.get("progress")
        pct = "" if progress is None else f"{progress * 100:5.1f}%"
        if status == "in_progress" and progress is not None:
            bar = Table.grid(padding=(0, 1))
            bar.add_row(ProgressBar(total=1.0, completed=progress, width=8), pct)
            cell: Any = bar
        else:
            cell = pct
        done, expected = samples_done(run), run.get("expected_samples")
        samples = f"{done}/{expected}" if done is not None else (str(run.get("num_samples", "")) or "")
        rate = throughput_per_minute(run)
        row = [short_id(run["run_id"])]
        if show_experiment:
            row.append(run.get("experiment_id") or "")
        if show_model:
            row.append(run.get("model") or "")
        row += [label, cell, samples, human_duration(eta_seconds(run))]
        if show_rate:
            row.append("" if rate is None else f"{rate:.1f}")
        if show_metrics:
            row.append(metric_means(run))
        if show_updated:
            row.append(ago(run.get("updated_at")))
        table.add_row(*row)
    return table


# ------------------------------------------------------------------------------- talking to it

def _headers(api_key: Optional[str]) -> Dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def _auth_error(code: int, url: str) -> StatusError:
    if code == 401:
        return StatusError(f"{url}: the daemon requires an API key; pass --api-key or set THEMIS_API_KEY", EXIT_AUTH)
    return StatusError(f"{url}: the API key was refused (403)", EXIT_AUTH)


def fetch_runs(base: str, api_key: Optional[str], timeout: float = 15.0) -> List[Dict[str, Any]]:
    url = base + "/api/runs"
    req = urllib.request.Request(url, headers={**_headers(api_key), "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise _auth_error(exc.code, base) from None
        raise StatusError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ConnectionRefusedError):
            raise StatusError(f"cannot connect to {base}: connection refused (is the daemon running there? see --url)") from None
        raise StatusError(f"cannot connect to {base}: {getattr(reason, 'strerror', None) or reason}") from None
    except (OSError, TimeoutError) as exc:
        raise StatusError(f"cannot connect to {base}: {exc}") from None
    try:
        runs = json.loads(body)
    except ValueError:
        raise StatusError(f"{url}: the answer is not JSON; is this a themis-daemon?") from None
    if not isinstance(runs, list):
        raise StatusError(f"{url}: unexpected answer; is this a themis-daemon?")
    return runs


def normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise StatusError(f"--url {url}: expected http://HOST:PORT", EXIT_USAGE)
    return url


def ws_url(base: str) -> str:
    return ("wss" + base[5:] if base.startswith("https") else "ws" + base[4:]) + "/ws"


class Watcher:
    """Keeps the runs current from `/ws` events; reconnects (with a fresh list) when dropped."""

    def __init__(self, base: str, api_key: Optional[str], runs: List[Dict[str, Any]]):
        self.base, self.api_key = base, api_key
        self.runs: Dict[str, Dict[str, Any]] = {r["run_id"]: r for r in runs}
        self.note = ""

    def apply(self, message: Dict[str, Any]) -> bool:
        kind, run_id = message.get("type"), message.get("run_id")
        if kind == "run_removed" and run_id:
            return self.runs.pop(run_id, None) is not None
        data = message.get("data")
        if kind and kind.startswith("run_") and isinstance(data, dict) and data.get("run_id"):
            self.runs[data["run_id"]] = data
            return True
        return False

    async def connect(self) -> Any:
        import tornado.httpclient
        import tornado.websocket

        req = tornado.httpclient.HTTPRequest(ws_url(self.base), headers=_headers(self.api_key),
                                             connect_timeout=15, request_timeout=15)
        try:
            conn = await tornado.websocket.websocket_connect(req, ping_interval=20)
        except tornado.httpclient.HTTPClientError as exc:
            if exc.code in (401, 403):
                raise _auth_error(exc.code, self.base) from None
            raise StatusError(f"{ws_url(self.base)}: HTTP {exc.code}") from None
        except OSError as exc:
            raise StatusError(f"cannot connect to {ws_url(self.base)}: {exc.strerror or exc}") from None
        await conn.write_message(json.dumps({"type": "subscribe", "run_id": "*"}))
        return conn

    async def follow(self, on_change, on_event=None) -> None:
        """Apply events until cancelled; a lost connection is re-opened every few seconds.

        The list is fetched again once subscribed, so nothing between the first fetch and the
        subscription is missed; `on_event` first gets that list as a `runs` message."""
        conn = await self.connect()
        runs = await asyncio.get_running_loop().run_in_executor(None, fetch_runs, self.base, self.api_key)
        self.runs = {r["run_id"]: r for r in runs}
        if on_event is not None:
            on_event({"type": "runs", "data": runs})
        on_change()
        while True:
            message = await conn.read_message()
            if message is None:
                self.note = "connection lost; reconnecting"
                on_change()
                conn = await self._reconnect()
                self.note = ""
                if on_event is not None:  # events were missed: scripts get the whole list again
                    on_event({"type": "runs", "data": list(self.runs.values())})
                on_change()
                continue
            try:
                event = json.loads(message)
            except ValueError:
                continue
            if on_event is not None and event.get("type", "").startswith("run_"):
                on_event(event)
            if self.apply(event):
                on_change()

    async def _reconnect(self) -> Any:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(2.0)
            conn = None
            try:
                conn = await self.connect()
                runs = await loop.run_in_executor(None, fetch_runs, self.base, self.api_key)
            except StatusError as exc:
                if conn is not None:
                    conn.close()
                if exc.code == EXIT_AUTH:
                    raise
                continue
            self.runs = {r["run_id"]: r for r in runs}
            return conn


async def watch_table(watcher: Watcher, console: Any, source: str) -> None:
    from rich.live import Live

    def render() -> Any:
        return render_table(watcher.runs.values(), source=source, note=watcher.note or "watching, Ctrl-C to quit",
                            width=console.width)

    with Live(render(), console=console, refresh_per_second=4, transient=False) as live:
        async def tick() -> None:  # ETAs and "… ago" move without events too
            while True:
                await asyncio.sleep(1.0)
                live.update(render())

        ticker = asyncio.ensure_future(tick())
        try:
            await watcher.follow(lambda: live.update(render()))
        finally:
            ticker.cancel()


async def watch_json(watcher: Watcher) -> None:
    def emit(event: Dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    await watcher.follow(lambda: None, on_event=emit)


def run_status(url: str, *, api_key: Optional[str], watch: bool, as_json: bool) -> int:
    """The exit status: 0, 1 (daemon unreachable), 2 (usage), 3 (API key missing/refused), 130."""
    from rich.console import Console

    api_key = api_key if api_key is not None else os.environ.get("THEMIS_API_KEY") or None
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        base = normalise_url(url)
        runs = fetch_runs(base, api_key)
        if not watch:
            if as_json:
                sys.stdout.write(json.dumps(runs, indent=2) + "\n")
            else:
                console = Console(highlight=False)
                console.print(render_table(runs, source=base, width=console.width))
            return 0
        watcher = Watcher(base, api_key, runs)
        if as_json:
            asyncio.run(watch_json(watcher))
        else:
            asyncio.run(watch_table(watcher, Console(highlight=False), base))
        return 0
    except StatusError as exc:
        err.print(f"themis-daemon: error: {exc}", markup=False)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `status --json | head`: the reader went away
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
