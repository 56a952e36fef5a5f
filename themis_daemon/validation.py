"""Loading the JSON Schema files of schemas/ and validating documents against them.

The schema files are the single description of request bodies, WebSocket messages and the
config file; installed wheels carry them as the package data `themis_daemon/schemas/`.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Dict, List

from jsonschema import Draft202012Validator

_HERE = os.path.dirname(os.path.abspath(__file__))
_CANDIDATES = (
    os.path.join(_HERE, "schemas"),  # installed: package data
    os.path.join(os.path.dirname(_HERE), "schemas"),  # source checkout / editable install
)


def schema_dir() -> str:
    for path in _CANDIDATES:
        if os.path.isfile(os.path.join(path, "config.schema.json")):
            return path
    raise FileNotFoundError("themis-daemon schema files not found (looked in: %s)" % ", ".join(_CANDIDATES))


@functools.lru_cache(maxsize=None)
def load_schema(name: str) -> Dict[str, Any]:
    with open(os.path.join(schema_dir(), f"{name}.schema.json"), encoding="utf-8") as fh:
        return json.load(fh)


@functools.lru_cache(maxsize=None)
def validator(name: str) -> Draft202012Validator:
    schema = load_schema(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validation_errors(name: str, instance: Any) -> List[Any]:
    """All violations, ordered by location so the first one reported is stable."""
    return sorted(validator(name).iter_errors(instance), key=lambda e: (list(map(str, e.absolute_path)), e.validator))


def pointer(error: Any) -> str:
    """RFC 6901 JSON pointer of a violation."""
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in error.absolute_path]
    return "/" + "/".join(parts) if parts else ""


def describe(name: str, instance: Any) -> List[Dict[str, str]]:
    """Violations as {pointer, message} objects for problem-details bodies."""
    out = []
    for err in validation_errors(name, instance):
        ptr = pointer(err)
        if err.validator == "additionalProperties":
            props = err.schema.get("properties", {})
            for extra in sorted(set(err.instance) - set(props)):
                out.append({"pointer": f"{ptr}/{extra}", "message": f"unknown field '{extra}'"})
            continue
        out.append({"pointer": ptr, "message": err.message})
    return out
