"""The OpenAPI 3.1 document of the daemon, built at run time from the files in schemas/.

Request bodies and WebSocket client messages use the very schema files the handlers validate
with (`compare_request`, `ws_client_message`); responses use `schemas/responses/*.schema.json`.
Each file is embedded under `components/schemas` with its `$id`/`$schema` removed and its
file references (`run_summary.schema.json`) rewritten to component references, so the
document is self-contained and documentation and validation cannot drift apart.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List

from . import __version__
from .validation import load_schema

# component name -> schema file name (without .schema.json) under schemas/
COMPONENT_FILES = {
    "CompareRequest": "compare_request",
    "WsClientMessage": "ws_client_message",
    "RunSummary": "responses/run_summary",
    "RunDetail": "responses/run_detail",
    "CompareResult": "responses/compare_result",
    "CompareSamples": "responses/compare_samples",
    "Problem": "responses/problem",
    "Health": "responses/health",
    "Benchmarks": "responses/benchmarks",
    "WsServerMessage": "responses/ws_server_message",
    "WsTicket": "responses/ws_ticket",
}

CLIENT_MESSAGES = {
    "ping": "Keep-alive; answered with `pong`.",
    "subscribe": "`run_id` (a run id or `*` for every run) and optional `since` (replay buffered events "
                 "with a greater seq). Answered with `subscribed`, then `run_state` for a known run.",
    "unsubscribe": "`run_id`; answered with `unsubscribed`.",
}
SERVER_MESSAGES = {
    "pong": "Answer to `ping`.",
    "subscribed": "Answer to `subscribe`: `run_id`, `last_seq` (newest event seq so far).",
    "unsubscribed": "Answer to `unsubscribe`: `run_id`.",
    "run_state": "Snapshot after subscribing to a known run: `run_id`, `data` (RunSummary).",
    "replay_incomplete": "Sent before a replay whose start is no longer buffered: `since`, `oldest_seq`, `message`.",
    "error": "Invalid client message: `message` (and `errors` for schema violations); the connection stays open.",
    "run_started": "A new run appeared, or a finished run was resumed (`resumed: true`). `seq`, `run_id`, `data`.",
    "run_progress": "Counts changed (at most one per run per poll): `seq`, `run_id`, `progress`, `data`.",
    "run_completed": "Status became completed: `seq`, `run_id`, `data`.",
    "run_failed": "Status became failed or cancelled: `seq`, `run_id`, `error_message`, `data`.",
    "run_stalled": "In progress without any file change for `monitor.stalled_after` seconds: `seq`, `run_id`, "
                   "`idle_seconds`, `data`.",
    "run_removed": "The run folder vanished: `seq`, `run_id`, `data` (the last known summary).",
}

PROBLEM = "application/problem+json"
API_KEY_SECURITY: List[Dict[str, List[str]]] = [{"ApiKeyHeader": []}, {"BearerAuth": []}]


def _ref(name: str) -> Dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _rewrite_refs(node: Any, by_file: Dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and not value.startswith("#"):
                base = value.split("/")[-1].split("#")[0]
                if base not in by_file:
                    raise ValueError(f"schema reference to an unknown file: {value}")
                out[key] = f"#/components/schemas/{by_file[base]}"
            else:
                out[key] = _rewrite_refs(value, by_file)
        return out
    if isinstance(node, list):
        return [_rewrite_refs(v, by_file) for v in node]
    return node


def component_schemas() -> Dict[str, Any]:
    by_file = {f"{name.split('/')[-1]}.schema.json": comp for comp, name in COMPONENT_FILES.items()}
    out: Dict[str, Any] = {}
    for comp, name in COMPONENT_FILES.items():
        schema = copy.deepcopy(load_schema(name))
        schema.pop("$id", None)
        schema.pop("$schema", None)
        out[comp] = _rewrite_refs(schema, by_file)
    return out


def _json(schema: Dict[str, Any], description: str, headers: Dict[str, Any] = None) -> Dict[str, Any]:
    resp: Dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        resp["headers"] = headers
    return resp


def _problem(description: str) -> Dict[str, Any]:
    return {"description": description, "content": {PROBLEM: {"schema": _ref("Problem")}}}


def _html(description: str) -> Dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _auth_errors() -> Dict[str, Any]:
    return {"401": {"$ref": "#/components/responses/Unauthorized"},
            "403": {"$ref": "#/components/responses/Forbidden"}}


def _ws_description() -> str:
    lines = [
        "WebSocket upgrade (`Upgrade: websocket`). Messages are JSON text frames.",
        "",
        "With API keys configured, authenticate with `X-API-Key` or `Authorization: Bearer`; browsers, which "
        "cannot set headers on a WebSocket, first get a single-use ticket from `POST /api/ws-ticket` (valid "
        "30 s) and open `/ws?ticket=TICKET`, so the key never appears in a URL or a log. The `token` query "
        "parameter (the key itself) still works but is discouraged. Refusals (401, 403 for a wrong key or an "
        "invalid, expired or used ticket, 503 too many connections) are problem-details answers before the "
        "upgrade.",
        "",
        "A message that is not strict JSON (invalid UTF-8, a lone surrogate escape) gets an `error` with a "
        "`detail`; one nested deeper than 1,024 levels also closes the connection with code 1008. If sending "
        "to a client fails, that connection is closed with code 1011 (never left open and silent).",
        "",
        "Client messages are validated against the `WsClientMessage` schema; server messages are described "
        "by `WsServerMessage`. Run events carry a monotonically increasing `seq` and the run summary in "
        "`data`; each client has its own bounded queue (progress coalesces, final events are never dropped; "
        "a client that does not read is closed with code 1013).",
        "",
        "| client sends | meaning |",
        "|---|---|",
    ]
    lines += [f"| `{k}` | {v} |" for k, v in CLIENT_MESSAGES.items()]
    lines += ["", "| server sends | meaning |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in SERVER_MESSAGES.items()]
    return "\n".join(lines)


def _paths() -> Dict[str, Any]:
    from .storage import STATUSES
    from .stats import TESTS
    from .web.runs import MAX_PAGE, SORT_KEYS
    from .web.samples import DEFAULT_LIMIT, FIXED_COLUMNS, MAX_LIMIT

    etag = {"ETag": {"description": "Entity tag; send it back as If-None-Match to get 304.",
                     "schema": {"type": "string"}}}
    not_modified = {"description": "Not modified (If-None-Match matched the ETag)."}
    if_none_match = {"name": "If-None-Match", "in": "header", "required": False,
                     "schema": {"type": "string"}, "description": "ETag of a previous answer."}
    run_id = {"name": "run_id", "in": "path", "required": True, "schema": {"type": "string"},
              "description": "Run id (percent-encoded)."}
    sort_values = list(SORT_KEYS) + ["-" + k for k in SORT_KEYS]

    return {
        "/": {"get": {
            "tags": ["health"], "operationId": "getHealth", "summary": "Service status and version",
            "security": [],
            "responses": {"200": _json(_ref("Health"), "`{\"status\": \"ok\", \"service\": \"themis-api\", \"version\": ...}`")},
        }},
        "/healthz": {"get": {
            "tags": ["health"], "operationId": "getLiveness", "summary": "Liveness", "security": [],
            "responses": {"200": _json(_ref("Health"), "`{\"status\": \"ok\"}`")},
        }},
        "/readyz": {"get": {
            "tags": ["health"], "operationId": "getReadiness", "summary": "Readiness",
            "description": "Ready once the first storage scan is done and the storage root is readable.",
            "security": [],
            "responses": {"200": _json(_ref("Health"), "Ready."),
                          "503": _json(_ref("Health"), "Not ready yet (`status: not_ready`).")},
        }},
        "/metrics": {"get": {
            "tags": ["health"], "operationId": "getMetrics", "summary": "Prometheus metrics",
            "description": "Prometheus text exposition. Public unless `auth.public_metrics` is false.",
            "security": API_KEY_SECURITY + [{}],
            "responses": {"200": {"description": "Metrics.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **_auth_errors()},
        }},
        "/api/runs": {"get": {
            "tags": ["runs"], "operationId": "listRuns", "summary": "List run summaries",
            "description": "Run summaries, newest first by default. The body is a bare list; the number of "
                           "matching runs is in the `X-Total-Count` header.",
            "parameters": [
                {"name": "status", "in": "query", "required": False, "style": "form", "explode": False,
                 "description": "One or several statuses, comma-separated (the parameter may also repeat).",
                 "schema": {"type": "array", "minItems": 1,
                            "items": {"type": "string", "enum": list(STATUSES) + ["unknown"]}}},
                {"name": "experiment_id", "in": "query", "required": False, "schema": {"type": "string"}},
                {"name": "sort", "in": "query", "required": False,
                 "description": "Sort key; `-` prefix for descending.",
                 "schema": {"type": "string", "enum": sort_values, "default": "-created_at"}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "maximum": MAX_PAGE}},
                {"name": "offset", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "default": 0}},
                if_none_match,
            ],
            "responses": {
                "200": _json({"type": "array", "items": _ref("RunSummary")}, "Run summaries.", {
                    **etag, "X-Total-Count": {"description": "Runs matching the filters, before paging.",
                                              "schema": {"type": "integer"}}}),
                "304": not_modified,
                "400": {"$ref": "#/components/responses/BadRequest"},
                **_auth_errors(),
            },
        }},
        "/api/runs/{run_id}": {
            "parameters": [run_id],
            "get": {
                "tags": ["runs"], "operationId": "getRun", "summary": "Run detail with samples",
                "description": "The run summary with per-sample prompt, response and scores. Without "
                               "`samples_offset`/`samples_limit` the answer is complete.",
                "parameters": [
                    {"name": "samples_offset", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 0, "default": 0}},
                    {"name": "samples_limit", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 0, "maximum": MAX_PAGE}},
                    {"name": "include_pending", "in": "query", "required": False,
                     "description": "Also list samples generated but not evaluated yet (after the evaluated "
                                    "ones, with `pending: true` and no scores).",
                     "schema": {"type": "boolean", "default": False}},
                    if_none_match,
                ],
                "responses": {
                    "200": _json(_ref("RunDetail"), "Run detail.", etag),
                    "304": not_modified,
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    **_auth_errors(),
                    "404": {"$ref": "#/components/responses/NotFound"},
                },
            },
            "delete": {
                "tags": ["runs"], "operationId": "deleteRun", "summary": "Delete a run (not implemented)",
                "description": "The daemon serves the storage read-only: 404 for an unknown run, else 501.",
                "responses": {
                    **_auth_errors(),
                    "404": {"$ref": "#/components/responses/NotFound"},
                    "501": _problem("Not implemented: the daemon is read-only."),
                },
            },
        },
        "/api/compare": {"post": {
            "tags": ["compare"], "operationId": "compareRuns", "summary": "Compare runs per metric",
            "description": "Paired statistical comparison of two or more runs on their common samples, with "
                           "multiple-comparison correction. Tests: " + ", ".join(f"`{t}`" for t in TESTS) + ".",
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": _ref("CompareRequest"),
                "examples": {"two runs": {"value": {"run_ids": ["run-a", "run-b"], "metrics": ["ExactMatch"],
                                                     "statistical_test": "permutation"}}},
            }}},
            "responses": {
                "200": _json(_ref("CompareResult"), "Comparison."),
                "400": _problem("Fewer than 2 runs, an invalid statistical test, an unknown metric, or invalid JSON."),
                **_auth_errors(),
                "404": {"$ref": "#/components/responses/NotFound"},
                "413": _problem("Request body too large."),
                "415": _problem("Unsupported content type."),
                "422": _problem("The body does not match the CompareRequest schema (`errors` lists the violations)."),
            },
        }},
        "/api/runs/{run_id}/samples": {"get": {
            "tags": ["runs"], "operationId": "downloadRunSamples", "summary": "Download a run's samples",
            "description": "Every evaluated sample of the run, streamed in chunks (`Transfer-Encoding: chunked`) "
                           "with `Content-Disposition: attachment`. `jsonl`: one RunDetail sample object per line "
                           "(with `reference` and, for Themis 1.x, per-metric `details`). `csv` (RFC 4180, UTF-8): "
                           "columns " + ", ".join(f"`{c}`" for c in FIXED_COLUMNS) + " then one column per metric "
                           "(sorted by name; a metric named like a fixed column gets a `score:` prefix); non-string "
                           "references are JSON-encoded, a missing score is an empty cell.",
            "parameters": [run_id,
                           {"name": "format", "in": "query", "required": False,
                            "schema": {"type": "string", "enum": ["jsonl", "csv"], "default": "jsonl"}}],
            "responses": {
                "200": {"description": "The samples.",
                        "headers": {"Content-Disposition": {"schema": {"type": "string"},
                                                            "description": "`attachment; filename=\"<run>-samples.<format>\"`"},
                                    "X-Total-Count": {"schema": {"type": "integer"},
                                                      "description": "Samples in the download."}},
                        "content": {"text/csv": {"schema": {"type": "string"}},
                                    "application/x-ndjson": {"schema": {"type": "string"}}}},
                "400": _problem("Unknown format."),
                **_auth_errors(),
                "404": _problem("An unknown run, or a metric one of the runs does not have."),
                "503": _problem("The store cannot be read right now (retry)."),
            },
        }},
        "/api/compare/samples": {"get": {
            "tags": ["compare"], "operationId": "compareSamples", "summary": "The samples behind a comparison",
            "description": "The samples two runs are paired on for one metric (paired exactly as `POST /api/compare` "
                           "pairs them: repeats averaged, common sample ids, sample-id order). For a 0/1 metric "
                           "`kind` picks a cell of the 2x2 table: `a_only` (A right, B wrong) and `b_only` (A wrong, "
                           "B right) are the discordant pairs McNemar's test counts (the compare row's "
                           "`discordant_a_only`/`discordant_b_only`), `both` and `neither` the concordant ones. "
                           "`by_delta` (any metric) lists every pair by |A - B|, largest first. `counts` always "
                           "holds the whole table for a 0/1 metric.",
            "parameters": [
                {"name": "run_a", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1},
                 "description": "Run A (a Themis 4 run may be named by a unique prefix of >= 8 hex characters)."},
                {"name": "run_b", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1},
                 "description": "Run B; must differ from A."},
                {"name": "metric", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}},
                {"name": "kind", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": ["a_only", "b_only", "both", "neither", "by_delta"],
                            "default": "by_delta"}},
                {"name": "limit", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}},
                {"name": "offset", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 0, "default": 0}},
            ],
            "responses": {
                "200": _json(_ref("CompareSamples"), "One page of paired samples."),
                "400": _problem("A missing parameter, an unknown kind, the same run twice, or a cell kind for a "
                                "metric that is not 0/1."),
                **_auth_errors(),
                "404": {"$ref": "#/components/responses/NotFound"},
                "503": _problem("The store cannot be read right now (retry)."),
            },
        }},
        "/api/benchmarks": {"get": {
            "tags": ["runs"], "operationId": "listBenchmarks", "summary": "Benchmark preset names",
            "responses": {"200": _json(_ref("Benchmarks"), "Benchmark names from the configuration."),
                          **_auth_errors()},
        }},
        "/ws": {"get": {
            "tags": ["live"], "operationId": "websocket", "summary": "WebSocket: subscriptions and live run events",
            "description": _ws_description(),
            "security": API_KEY_SECURITY + [{"WsTicket": []}, {"ApiKeyQuery": []}],
            "parameters": [{"name": "ticket", "in": "query", "required": False, "schema": {"type": "string"},
                            "description": "A single-use ticket from `POST /api/ws-ticket` (browsers)."},
                           {"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
                            "description": "The API key itself (discouraged: URLs end up in logs; use `ticket`)."}],
            "responses": {
                "101": {"description": "Switching protocols; then JSON messages (see `x-websocket`)."},
                "400": _problem("Not a WebSocket upgrade request."),
                **_auth_errors(),
                "503": _problem("Too many WebSocket connections."),
            },
            "x-websocket": {
                "clientMessages": {k: {"description": v, "schema": _ref("WsClientMessage")}
                                   for k, v in CLIENT_MESSAGES.items()},
                "serverMessages": {k: {"description": v, "schema": _ref("WsServerMessage")}
                                   for k, v in SERVER_MESSAGES.items()},
            },
        }},
        "/api/ws-ticket": {"post": {
            "tags": ["live"], "operationId": "createWsTicket", "summary": "A single-use ticket for /ws",
            "description": "Authenticated like every `/api/*` route. The ticket opens one WebSocket "
                           "(`/ws?ticket=TICKET`) within `expires_in` seconds; it is signed with the configured "
                           "keys, so any worker or replica with the same keys accepts it. Without API keys "
                           "configured /ws needs no ticket.",
            "responses": {"201": _json(_ref("WsTicket"), "A ticket."), **_auth_errors()},
        }},
        "/openapi.json": {"get": {
            "tags": ["docs"], "operationId": "getOpenAPI", "summary": "This OpenAPI document", "security": [],
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1 document.")},
        }},
        "/docs": {"get": {
            "tags": ["docs"], "operationId": "getSwaggerUI", "summary": "Swagger UI", "security": [],
            "responses": {"200": _html("Interactive API documentation (Swagger UI).")},
        }},
        "/redoc": {"get": {
            "tags": ["docs"], "operationId": "getRedoc", "summary": "ReDoc", "security": [],
            "responses": {"200": _html("API reference (ReDoc).")},
        }},
        "/static/{path}": {"get": {
            "tags": ["docs"], "operationId": "getStatic", "summary": "Static assets of the docs and dashboard",
            "security": [],
            "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file."}, "304": not_modified,
                          "404": {"$ref": "#/components/responses/NotFound"}},
        }},
        "/dashboard": {"get": {
            "tags": ["dashboard"], "operationId": "redirectDashboard", "summary": "Redirect to /dashboard/",
            "security": [], "responses": {"301": {"description": "Redirect to `/dashboard/`."}},
        }},
        "/dashboard/": {"get": {
            "tags": ["dashboard"], "operationId": "getDashboard", "summary": "Web dashboard",
            "description": "Runs (live), run detail and comparisons in the browser. The page is public; the "
                           "API calls it makes carry the key entered in the page.",
            "security": [],
            "responses": {"200": _html("The dashboard page."), "304": not_modified},
        }},
        "/dashboard/{path}": {"get": {
            "tags": ["dashboard"], "operationId": "getDashboardAsset", "summary": "Dashboard assets",
            "description": "Static CSS and JavaScript modules of the dashboard.",
            "security": [],
            "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file."}, "304": not_modified,
                          "404": {"$ref": "#/components/responses/NotFound"}},
        }},
    }


def build_openapi() -> Dict[str, Any]:
    """A fresh OpenAPI 3.1 document (callers may cache it; it only changes with the code)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Themis daemon API",
            "version": __version__,
            "summary": "Serve and watch Themis LLM-evaluation storage.",
            "description": (
                "REST API and WebSocket events over the experiment storage written by Themis "
                "(themis-eval 1.x). The daemon is read-only.\n\n"
                "**Errors** are RFC 9457 problem details (`application/problem+json`) with `type`, `title`, "
                "`status` and `detail`.\n\n"
                "**API keys**: when keys are configured, every `/api/*` route, `/ws` and (unless public) "
                "`/metrics` need `X-API-Key: KEY` or `Authorization: Bearer KEY`; without keys configured "
                "no authentication is needed. `/`, `/healthz`, `/readyz`, the docs and the dashboard pages "
                "are always public."
            ),
        },
        "tags": [
            {"name": "runs", "description": "Runs discovered in the storage."},
            {"name": "compare", "description": "Statistical comparison of runs."},
            {"name": "live", "description": "WebSocket run events."},
            {"name": "health", "description": "Health, readiness and metrics."},
            {"name": "docs", "description": "This documentation."},
            {"name": "dashboard", "description": "The web dashboard."},
        ],
        "security": API_KEY_SECURITY + [{}],
        "paths": _paths(),
        "components": {
            "schemas": component_schemas(),
            "responses": {
                "BadRequest": _problem("Bad query parameter."),
                "Unauthorized": _problem("API key required (keys are configured and none was sent)."),
                "Forbidden": _problem("Invalid API key."),
                "NotFound": _problem("Not found (unknown run or route)."),
            },
            "securitySchemes": {
                "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                 "description": "One of the configured API keys."},
                "BearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "One of the configured API keys as a bearer token."},
                "ApiKeyQuery": {"type": "apiKey", "in": "query", "name": "token",
                                "description": "The API key as a query parameter (`/ws` only; discouraged, use a ticket)."},
                "WsTicket": {"type": "apiKey", "in": "query", "name": "ticket",
                             "description": "A single-use ticket from `POST /api/ws-ticket` (`/ws` only, for browsers)."},
            },
        },
    }
