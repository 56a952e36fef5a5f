"""/openapi.json, /docs and /redoc over HTTP: a valid document that covers every route, built
from the schema files, that real answers conform to. (The pages in a browser: test_dashboard.)"""

from __future__ import annotations

import json
import os
import re

import pytest
import tornado.web
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from themis_daemon.openapi import CLIENT_MESSAGES, SERVER_MESSAGES, build_openapi
from themis_daemon.validation import load_schema
from themis_daemon.web.dashboard import STATIC_DIR

METHODS = ("get", "post", "put", "patch", "delete")
JSON = {"Content-Type": "application/json"}
STATIC_REF = re.compile(r'(?:src|href)="([^"]+)"')


async def fetch(http_client, base_url, path, **kw):
    kw.setdefault("raise_error", False)
    kw.setdefault("follow_redirects", False)
    return await http_client.fetch(base_url + path, **kw)


async def get_json(http_client, base_url, path, **kw):
    resp = await fetch(http_client, base_url, path, **kw)
    return resp, json.loads(resp.body)


def route_template(pattern: str) -> str:
    """'/api/runs/([^/]+)$' -> '/api/runs/{}'; '/docs/?$' -> '/docs'."""
    path = pattern.rstrip("$")
    if path.endswith("/?"):
        path = path[:-2] or "/"
    return re.sub(r"\([^)]*\)", "{}", path)


def doc_template(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def handler_methods(handler: type) -> set:
    return {m for m in METHODS if getattr(handler, m) is not getattr(tornado.web.RequestHandler, m)}


def schema_validator(doc, component):
    """A validator for one component schema, resolving its refs inside the whole document."""
    registry = Registry().with_resource("urn:openapi", Resource.from_contents(doc, default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"urn:openapi#/components/schemas/{component}"}, registry=registry)


def assert_valid(doc, component, instance):
    errors = sorted(schema_validator(doc, component).iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, f"{component}: " + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


@pytest.mark.gen_test
async def test_openapi_document_is_valid_31(http_client, base_url):
    resp, doc = await get_json(http_client, base_url, "/openapi.json")
    assert resp.code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"] == "Themis daemon API"
    validate_openapi(doc)


@pytest.mark.gen_test
async def test_every_route_is_documented_and_nothing_else(app, http_client, base_url):
    _, doc = await get_json(http_client, base_url, "/openapi.json")
    documented = {doc_template(path): item for path, item in doc["paths"].items()}
    served = set()
    for rule in app.wildcard_router.rules:
        template = route_template(rule.matcher.regex.pattern)
        served.add(template)
        assert template in documented, f"route {rule.matcher.regex.pattern} ({rule.target.__name__}) is not in /openapi.json"
        missing = handler_methods(rule.target) - set(documented[template])
        assert not missing, f"{template}: methods {sorted(missing)} of {rule.target.__name__} are not documented"
    # "/dashboard/" is the empty-path case of the "/dashboard/(.*)" route.
    assert set(documented) - served - {"/dashboard/"} == set(), "documented paths that no route serves"


def test_route_template():
    assert route_template(r"/api/runs/?$") == "/api/runs"
    assert route_template(r"/api/runs/([^/]+)$") == "/api/runs/{}"
    assert route_template(r"/dashboard/(.*)$") == "/dashboard/{}"
    assert route_template(r"/$") == "/"


def test_document_is_built_from_the_schema_files():
    doc = build_openapi()
    schemas = doc["components"]["schemas"]
    for component, name in (("CompareRequest", "compare_request"), ("WsClientMessage", "ws_client_message")):
        source = {k: v for k, v in load_schema(name).items() if k not in ("$id", "$schema")}
        assert schemas[component] == source, f"{component} differs from schemas/{name}.schema.json"
    body = doc["paths"]["/api/compare"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CompareRequest"}
    # No reference points outside the document.
    refs = re.findall(r'"\$ref": ?"([^"]+)"', json.dumps(doc))
    assert refs and all(r.startswith("#/components/") for r in refs)
    for ref in refs:
        node = doc
        for part in ref[2:].split("/"):
            node = node[part]
    for name in ("RunSummary", "RunDetail", "CompareResult", "CompareSamples", "Problem", "Health", "Benchmarks", "WsServerMessage"):
        assert name in schemas
        Draft202012Validator.check_schema(schemas[name])


def test_websocket_protocol_is_documented():
    doc = build_openapi()
    ws = doc["paths"]["/ws"]["get"]
    client_types = set(load_schema("ws_client_message")["properties"]["type"]["enum"])
    assert set(ws["x-websocket"]["clientMessages"]) == client_types == set(CLIENT_MESSAGES)
    server_types = {"pong", "subscribed", "unsubscribed", "run_state", "replay_incomplete", "error",
                    "run_started", "run_progress", "run_completed", "run_failed", "run_stalled", "run_removed"}
    assert set(ws["x-websocket"]["serverMessages"]) == server_types == set(SERVER_MESSAGES)
    assert set(doc["components"]["schemas"]["WsServerMessage"]["properties"]["type"]["enum"]) == server_types
    for kind in client_types | server_types:
        assert f"`{kind}`" in ws["description"], kind


def test_problem_details_and_security_schemes():
    doc = build_openapi()
    problem = doc["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "title", "status", "detail"}
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ApiKeyHeader"] == {**schemes["ApiKeyHeader"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["BearerAuth"]["type"] == "http" and schemes["BearerAuth"]["scheme"] == "bearer"
    assert {"ApiKeyHeader": []} in doc["paths"]["/api/runs"]["get"].get("security", doc["security"])
    assert doc["paths"]["/"]["get"]["security"] == []
    # Every error answer is a problem document.
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            for status, resp in op["responses"].items():
                if status.startswith(("4", "5")) and path not in ("/readyz",):
                    resp = doc["components"]["responses"][resp["$ref"].split("/")[-1]] if "$ref" in resp else resp
                    assert list(resp["content"]) == ["application/problem+json"], (path, method, status)


@pytest.mark.gen_test
async def test_real_answers_match_the_documented_schemas(http_client, base_url):
    doc = build_openapi()
    _, body = await get_json(http_client, base_url, "/")
    assert_valid(doc, "Health", body)
    _, body = await get_json(http_client, base_url, "/readyz")
    assert_valid(doc, "Health", body)
    _, runs = await get_json(http_client, base_url, "/api/runs")
    assert len(runs) == 5
    for summary in runs:
        assert_valid(doc, "RunSummary", summary)
    for summary in runs:
        _, detail = await get_json(http_client, base_url, "/api/runs/" + summary["run_id"])
        assert_valid(doc, "RunDetail", detail)
    _, body = await get_json(http_client, base_url, "/api/benchmarks")
    assert_valid(doc, "Benchmarks", body)
    resp, body = await get_json(http_client, base_url, "/api/compare", method="POST", headers=JSON, body=json.dumps(
        {"run_ids": ["fake-direct", "fake-terse", "fake-swapped"], "statistical_test": "bootstrap", "n_resamples": 200}))
    assert resp.code == 200
    assert_valid(doc, "CompareResult", body)
    for kind, metric in (("a_only", "ExactMatch"), ("by_delta", "ResponseLength")):
        resp, body = await get_json(http_client, base_url, "/api/compare/samples?run_a=fake-direct&run_b=fake-swapped"
                                                           f"&metric={metric}&kind={kind}")
        assert resp.code == 200 and body["items"]
        assert_valid(doc, "CompareSamples", body)
    for path, kw, status in (("/api/runs/nope", {}, 404), ("/nowhere", {}, 404),
                             ("/api/compare", {"method": "POST", "headers": JSON,
                                               "body": '{"run_ids": ["fake-direct", "fake-terse"], "x": 1}'}, 422)):
        resp, body = await get_json(http_client, base_url, path, **kw)
        assert resp.code == status
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert_valid(doc, "Problem", body)


@pytest.mark.gen_test
async def test_docs_pages_are_self_contained(http_client, base_url):
    for path, marker in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        resp = await fetch(http_client, base_url, path)
        assert resp.code == 200
        assert resp.headers["Content-Type"].startswith("text/html")
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "img-src 'self' data:" in csp
        page = resp.body.decode()
        assert marker in page and "<script>" not in page  # no inline script: the CSP would block it
        refs = STATIC_REF.findall(page)
        assert refs and not [r for r in refs if "//" in r], "only relative URLs to this daemon"
        for ref in refs:
            if ref.startswith("data:"):
                continue
            asset = await fetch(http_client, base_url, "/" + ref)
            assert asset.code == 200, ref
    resp = await fetch(http_client, base_url, "/static/vendor/redoc/redoc.standalone.js")
    assert b"cdn.redoc.ly" not in resp.body
    for name in ("swagger-ui/LICENSE", "swagger-ui/NOTICE", "redoc/LICENSE"):
        assert os.path.isfile(os.path.join(STATIC_DIR, "vendor", name))


@pytest.mark.gen_test
async def test_static_errors_are_json_and_confined(http_client, base_url):
    for path in ("/static/nope.js", "/static/../setup.py", "/static/%2e%2e/setup.py", "/dashboard/nope.js"):
        resp = await fetch(http_client, base_url, path)
        assert resp.code == 404, path
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert json.loads(resp.body)["status"] == 404
    resp = await fetch(http_client, base_url, "/dashboard")
    assert resp.code == 301 and resp.headers["Location"] == "dashboard/"
    resp = await fetch(http_client, base_url, "/dashboard/")
    assert resp.code == 200 and b'src="js/main.js"' in resp.body
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]


@pytest.mark.gen_test
async def test_docs_and_dashboard_stay_public_with_api_keys(daemon, http_client, base_url):
    daemon.api_keys = ["s3cret"]
    for path in ("/openapi.json", "/docs", "/redoc", "/dashboard/", "/dashboard/js/main.js",
                 "/static/vendor/swagger-ui/swagger-ui.css"):
        resp = await fetch(http_client, base_url, path)
        assert resp.code == 200, path
    resp = await fetch(http_client, base_url, "/api/runs")
    assert resp.code == 401
    resp = await fetch(http_client, base_url, "/api/runs", headers={"X-API-Key": "s3cret"})
    assert resp.code == 200


@pytest.mark.gen_test
async def test_content_security_policy_ignores_the_host_header(http_client, base_url):
    for path in ("/docs", "/dashboard/"):
        for host in ("evil.example", "evil.example;script-src"):
            resp = await http_client.fetch(base_url + path, headers={"Host": host}, raise_error=False)
            csp = resp.headers.get("Content-Security-Policy", "")
            assert "evil" not in csp, csp
            if resp.code == 200:
                assert "connect-src 'self';" in csp
