"""Command line: `themis-daemon serve|status|check-config` (also installed as `themis`, like the reference)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional

from . import __version__
from .config import ConfigError, load_settings

EXIT_CONFIG = 2


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that set configuration, shared by `serve` and `check-config`."""
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (default 8080)")
    parser.add_argument("--storage", metavar="PATH|URL", action="append",
                        help="a store to serve: Themis 1.x root, Themis 4 SQLite file or JSONL root, or "
                             "postgresql://user@host:port/db; repeat for several (default .cache/experiments)")
    parser.add_argument("--config", metavar="PATH", help="YAML configuration file (see config.yaml; default $THEMIS_CONFIG)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"],
                        help="log level (default info)")
    parser.add_argument("--json-logs", action="store_true", default=None, help="log one JSON object per line")
    parser.add_argument("--poll-interval", type=float, metavar="SECONDS", help="seconds between storage polls (default 1)")
    parser.add_argument("--workers", type=int, metavar="N", help="processes sharing the listening socket (default 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="themis-daemon",
        description="Serve and watch the run stores written by Themis (themis-eval 1.x and 4.x): "
                    "REST API, live WebSocket events, a dashboard, comparisons with statistical tests.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="run the HTTP/WebSocket daemon",
        description="Run the daemon. Settings layer as: defaults < --config YAML file < "
                    "THEMIS_<SECTION>_<KEY> environment variables < these flags.",
    )
    add_settings_flags(serve)
    serve.add_argument("--reload", action="store_true", help="restart on code changes (development only)")
    serve.add_argument("--demo", action="store_true",
                       help="serve a temporary copy of the bundled demo store, with a writer adding live runs")
    status = sub.add_parser(
        "status", help="show the runs of a running daemon in the terminal",
        description="Print the runs of a running daemon as a table (progress, ETA, metric means), or "
                    "follow them live. Exit status: 0 ok, 1 daemon unreachable, 2 usage, 3 API key "
                    "missing or refused, 130 interrupted (Ctrl-C) in --watch mode.",
    )
    status.add_argument("--url", default=None, metavar="URL",
                        help="the daemon's base URL (default $THEMIS_URL, else http://127.0.0.1:8080)")
    status.add_argument("--watch", action="store_true", help="keep the table current from the /ws events until Ctrl-C")
    status.add_argument("--json", action="store_true",
                        help="print the runs as JSON (with --watch: one JSON event per line)")
    status.add_argument("--api-key", metavar="KEY", default=None,
                        help="API key, sent as X-API-Key (default $THEMIS_API_KEY)")
    check = sub.add_parser(
        "check-config", help="validate the configuration and show the effective settings",
        description="Validate the configuration as `serve` would (exit status 2 and one line on an "
                    "error) and print every effective setting with its origin: default, file, env or "
                    "flag. Secrets are masked.",
    )
    add_settings_flags(check)
    check.add_argument("--json", action="store_true", help="print the settings and origins as JSON")
    return parser


def overrides_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    over: Dict[str, Any] = {}

    def put(section: str, key: str, value: Any) -> None:
        if value is not None:
            over.setdefault(section, {})[key] = value

    put("server", "host", args.host)
    put("server", "port", args.port)
    put("server", "workers", args.workers)
    if args.storage:
        if len(args.storage) == 1:
            put("storage", "path", args.storage[0])
            over["storage"]["sources"] = []
        else:
            put("storage", "sources", list(args.storage))
    put("monitor", "poll_interval", args.poll_interval)
    put("logging", "level", args.log_level)
    put("logging", "json", args.json_logs)
    return over


def fail(message: str, code: int = EXIT_CONFIG) -> int:
    sys.stderr.write(f"themis-daemon: error: {message}\n")
    sys.stderr.flush()
    return code


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    if args.command == "status":
        from .status import DEFAULT_URL, run_status

        url = args.url or os.environ.get("THEMIS_URL") or DEFAULT_URL
        return run_status(url, api_key=args.api_key, watch=args.watch, as_json=args.json)
    if args.command == "check-config":
        from .checkconfig import check_config

        return check_config(args.config, overrides_from_args(args), as_json=args.json)
    try:
        settings = load_settings(args.config, overrides=overrides_from_args(args))
        settings.api_keys()  # unreadable key files or short keys: one line, before anything starts
    except ConfigError as exc:
        return fail(str(exc))
    from .server import run

    return run(settings, reload=args.reload, demo=args.demo, overrides=overrides_from_args(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
