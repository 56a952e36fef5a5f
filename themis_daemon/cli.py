"""Command line: `themis-daemon serve` (also installed as `themis`, like the reference)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional

from . import __version__
from .config import ConfigError, load_settings

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="themis-daemon",
        description="Serve and watch the experiment storage written by Themis (themis-eval 1.x): "
                    "REST API, live WebSocket events, comparisons with statistical tests.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser(
        "serve", help="run the HTTP/WebSocket daemon",
        description="Run the daemon. Settings layer as: defaults < --config YAML file < "
                    "THEMIS_<SECTION>_<KEY> environment variables < these flags.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="TCP port (default 8080)")
    serve.add_argument("--storage", metavar="PATH|URL", action="append",
                       help="a store to serve: Themis 1.x root, Themis 4 SQLite file or JSONL root, or "
                            "postgresql://user@host:port/db; repeat for several (default .cache/experiments)")
    serve.add_argument("--config", metavar="PATH", help="YAML configuration file (see config.yaml)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"], help="log level")
    serve.add_argument("--json-logs", action="store_true", default=None, help="log one JSON object per line")
    serve.add_argument("--poll-interval", type=float, metavar="SECONDS", help="seconds between storage polls (default 1)")
    serve.add_argument("--workers", type=int, metavar="N", help="processes sharing the listening socket")
    serve.add_argument("--reload", action="store_true", help="restart on code changes (development only)")
    serve.add_argument("--demo", action="store_true",
                       help="serve a temporary copy of the bundled demo store, with a writer adding live runs")
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
    if args.command != "serve":
        parser.print_help()
        return 0
    try:
        settings = load_settings(args.config, overrides=overrides_from_args(args))
    except ConfigError as exc:
        return fail(str(exc))
    from .server import run

    return run(settings, reload=args.reload, demo=args.demo, overrides=overrides_from_args(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
