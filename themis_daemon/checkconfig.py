"""`themis-daemon check-config`: validate the layered configuration as `serve` would, and show
every effective setting with where it came from, before a `systemctl reload` or restart."""

from __future__ import annotations

import json
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .config import MASKED_SETTINGS, ConfigError, load_settings_with_origins, unknown_environment

MASK = "***"


def mask(path: Tuple[str, ...], value: Any) -> Any:
    """The value as it may be shown: API keys hidden, passwords taken out of connection URLs."""
    from .storage.themis4.reader import redact_url

    if path in MASKED_SETTINGS:
        return [MASK for _ in value] if isinstance(value, list) else MASK
    if path[0] == "storage":
        return _redact_deep(value, redact_url)
    return value


def _redact_deep(value: Any, redact) -> Any:
    if isinstance(value, str):
        return redact(value) if ("://" in value or "password" in value.lower()) else value
    if isinstance(value, list):
        return [_redact_deep(v, redact) for v in value]
    if isinstance(value, dict):
        return {k: _redact_deep(v, redact) for k, v in value.items()}
    return value


def effective(settings_doc: Mapping[str, Any], origins: Mapping[str, str]) -> List[Dict[str, Any]]:
    rows = []
    for dotted, origin in origins.items():
        path = tuple(dotted.split("."))
        value = settings_doc[path[0]] if len(path) == 1 else settings_doc[path[0]][path[1]]
        kind, _, where = origin.partition(" ")
        rows.append({"setting": dotted, "value": mask(path, value), "origin": kind, "from": where or None})
    return rows


def _problems(settings: Any) -> Optional[str]:
    """What `serve` would still refuse after the schema: unreadable key files, unusable stores."""
    settings.api_keys()
    from .storage import NotAStore
    from .storage.sources import detect, is_url

    for spec in settings.storage.specs():
        location = (spec.get("path") or spec.get("url")) if isinstance(spec, dict) else spec
        if location and not is_url(str(location)):
            try:
                detect(str(location))
            except NotAStore as exc:
                return str(exc)
    return None


def check_config(config_file: Optional[str], overrides: Dict[str, Any], *, as_json: bool = False,
                 environ: Optional[Mapping[str, str]] = None) -> int:
    import os

    environ = os.environ if environ is None else environ
    for warning in unknown_environment(environ):
        sys.stderr.write(f"themis-daemon: warning: {warning}\n")
    from .cli import fail

    try:
        settings, origins = load_settings_with_origins(config_file, environ=environ, overrides=overrides or None)
        problem = _problems(settings)
    except ConfigError as exc:
        return fail(str(exc))
    if problem:
        return fail(problem)
    rows = effective(settings.as_dict(), origins)
    keys = len(settings.api_keys())
    if as_json:
        sys.stdout.write(json.dumps({"valid": True, "config_file": settings.config_file, "api_keys": keys,
                                     "settings": rows}, indent=2) + "\n")
        return 0
    origins_shown = [r["origin"] + (f" {r['from']}" if r["from"] else "") for r in rows]
    width = max(len(r["setting"]) for r in rows)
    owidth = max(len(o) for o in origins_shown)
    out = [f"themis-daemon configuration is valid (config file: {settings.config_file or 'none'}; "
           f"{keys} API key{'s' if keys != 1 else ''} in effect)",
           f"{'setting':<{width}}  {'origin':<{owidth}}  value"]
    for row, origin in zip(rows, origins_shown):
        out.append(f"{row['setting']:<{width}}  {origin:<{owidth}}  {json.dumps(row['value'])}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0
