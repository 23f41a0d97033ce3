"""make run's demo app backend: GET /demo/session mints a session server to server; the page never sees a key."""
from __future__ import annotations

import io
import json
from typing import Any

from broker.dev.demo import DemoBackend
from broker.dev.run import DEMO_API_KEY
from broker.web import HttpRequest, HttpResponse
from tests.conftest import audit_lines


def wsgi_get(app: Any, path: str, method: str = "GET") -> tuple[str, dict[str, str], Any]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen.update(status=status, headers=dict(headers))

    body = b"".join(app({"PATH_INFO": path, "REQUEST_METHOD": method}, start_response))
    return seen["status"], seen["headers"], json.loads(body) if body else None


def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"{}"]


def test_the_demo_backend_mints_a_session_for_the_page(broker: Any, audit_stream: io.StringIO) -> None:
    app = DemoBackend(inner, broker, DEMO_API_KEY)

    status, headers, body = wsgi_get(app, "/demo/session")

    assert status == "200 OK" and headers["Cache-Control"] == "no-store"
    assert body["token"].startswith("v1.") and body["client"] == "web-app" and body["user"] == "demo-user"
    assert DEMO_API_KEY not in json.dumps(body) and DEMO_API_KEY not in repr(app)
    (rec,) = audit_lines(audit_stream)
    assert rec["event"] == "session" and rec["decision"] == "allowed" and rec["user"] == "demo-user"
    assert body["token"] not in audit_stream.getvalue()
    limits: HttpResponse = broker.handle(HttpRequest("GET", f"/s/{body['token']}/limits"))
    assert limits.status == 200 and json.loads(limits.body)["user"] == "demo-user"


def test_other_paths_go_to_the_app_and_other_methods_are_refused(broker: Any) -> None:
    app = DemoBackend(inner, broker, DEMO_API_KEY)
    assert wsgi_get(app, "/uploads")[0] == "200 OK"
    status, headers, body = wsgi_get(app, "/demo/session", method="POST")
    assert status.startswith("405") and headers["Allow"] == "GET" and "GET only" in body["message"]


def test_a_key_the_rules_do_not_know_is_the_brokers_401(broker: Any) -> None:
    status, _, body = wsgi_get(DemoBackend(inner, broker, "not-a-key"), "/demo/session")
    assert status.startswith("401") and body["message"]
