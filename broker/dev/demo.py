"""make run's demo app backend: ``GET /demo/session`` mints a session for the example pages.

A real app keeps its API key on its own server and, once it knows who the person is, calls
``POST /sessions`` server to server; the browser gets only the short-lived token. This is that
backend in a few lines, for ``make run`` only (``broker/dev`` is left out of the Lambda package):
it wraps the WSGI app and answers ``GET /demo/session`` by handing ``POST /sessions`` (with the
demo client's API key, and no ``Origin``: it is not a browser) to the broker in process, exactly
as it would arrive over HTTPS. Everything else goes to the wrapped app.

The token is returned to the page and never logged.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from broker.web import HttpRequest

PATH = "/demo/session"
#: The end user every demo session names (a real backend puts its signed-in user's id here).
DEMO_USER = "demo-user"
DEMO_TTL = 900  # seconds


class DemoBackend:
    """WSGI middleware: ``GET /demo/session`` -> the broker's ``POST /sessions`` answer; the rest to ``app``."""

    def __init__(self, app: Callable[..., Iterable[bytes]], broker: Any, api_key: str, *,
                 user: str = DEMO_USER, ttl: int = DEMO_TTL) -> None:
        self.app = app
        self.broker = broker
        self._api_key = api_key
        self.user = user
        self.ttl = ttl

    def __repr__(self) -> str:  # never the key
        return f"DemoBackend(user={self.user!r}, ttl={self.ttl})"

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH:
            return self.app(environ, start_response)
        if environ.get("REQUEST_METHOD", "GET") != "GET":
            return _answer(start_response, 405, {"error": "method_not_allowed",
                                                 "message": f"{PATH} answers GET only"}, [("Allow", "GET")])
        answer = self.mint()
        return _answer(start_response, answer.status, json.loads(answer.body or b"{}"))

    def mint(self) -> Any:
        """The broker's answer to ``POST /sessions`` for the demo user (an HttpResponse)."""
        body = json.dumps({"user": self.user, "ttl": self.ttl}).encode()
        return self.broker.handle(HttpRequest(
            "POST", "/sessions", {"x-api-key": self._api_key, "content-type": "application/json",
                                  "user-agent": "make-run-demo-backend"}, {}, body), transport="wsgi")


def _answer(start_response: Callable[..., Any], status: int, payload: Any,
            headers: list[tuple[str, str]] | None = None) -> Iterable[bytes]:
    data = json.dumps(payload).encode()
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 405: "Method Not Allowed"}
    start_response(f"{status} {reason.get(status, 'Error')}", [
        ("Content-Type", "application/json"), ("Cache-Control", "no-store"),
        ("Content-Length", str(len(data))), *(headers or [])])
    return [data]
