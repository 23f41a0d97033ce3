"""WSGI <-> HttpRequest/HttpResponse, and the static upload page, for ``broker serve``."""
from __future__ import annotations

import mimetypes
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

from ..errors import NotFound, PayloadTooLarge
from ..web import HttpRequest, HttpResponse

WEB_ROOT = Path(__file__).resolve().parent.parent / "web"
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 413: "Payload Too Large", 415: "Unsupported Media Type",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def to_request(environ: dict[str, Any], max_body_bytes: int) -> HttpRequest:
    """Build an HttpRequest from a WSGI environ, reading at most ``max_body_bytes`` + 1 bytes."""
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > max_body_bytes:
        raise PayloadTooLarge(f"the request body is {length} bytes; the limit is {max_body_bytes}")
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    from urllib.parse import parse_qs

    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True, max_num_fields=200)
    raw_path = environ.get("PATH_INFO", "/")
    try:  # PEP 3333 hands PATH_INFO over as latin-1; undo that to get the UTF-8 path
        path = raw_path.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        path = raw_path
    return HttpRequest(
        method=environ.get("REQUEST_METHOD", "GET").upper(), path=path or "/", headers=headers,
        query=query, body=body, source_ip=environ.get("REMOTE_ADDR"),
        request_id=uuid.uuid4().hex,
    )


def static_file(path: str, root: Path = WEB_ROOT) -> HttpResponse | None:
    """The file under ``root`` for a GET path, or None; never escapes ``root``."""
    rel = "index.html" if path in ("/", "") else path.lstrip("/")
    if "\\" in rel or "\x00" in rel or any(part in ("", ".", "..") for part in rel.split("/")):
        return None
    target = (root / rel).resolve()
    try:
        target.relative_to(root.resolve())
    except ValueError:
        return None
    if not target.is_file():
        return None
    ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
        ctype += "; charset=utf-8"
    return HttpResponse(200, target.read_bytes(), {
        "Content-Type": ctype, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
    })


class WsgiApp:
    """A WSGI application serving the broker's API and, for GET, the upload page."""

    def __init__(self, broker: Any, *, web_root: Path | None = WEB_ROOT) -> None:
        self.broker = broker
        self.web_root = web_root

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            request = to_request(environ, self.broker.max_body_bytes)
        except PayloadTooLarge as exc:
            response = self._refuse(environ, exc)
        else:
            response = None
            if request.method in ("GET", "HEAD") and self.web_root is not None:
                try:
                    self.broker.router.match(request.method, request.path)
                except NotFound:
                    response = static_file(request.path, self.web_root)
                except Exception:  # noqa: BLE001 - the broker answers it below
                    pass
            if response is None:
                response = self.broker.handle(request, transport="wsgi")
        status = f"{response.status} {_REASONS.get(response.status, 'Unknown')}"
        headers = list(response.headers.items())
        headers.append(("Content-Length", str(len(response.body))))
        start_response(status, headers)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [response.body]

    def _refuse(self, environ: dict[str, Any], exc: PayloadTooLarge) -> HttpResponse:
        """Audit and answer a request refused before the broker saw it (its body is too large).

        No ``Connection: close``: it is hop-by-hop, and waitress turns it into a 500 (PEP 3333).
        Waitress has read the whole body before calling us, so the connection stays usable.
        """
        from ..app import Call
        from ..models import RequestContext

        request = to_request({**environ, "CONTENT_LENGTH": "0"}, 0)  # the headers, not the body
        call = Call(self.broker, request, self.broker.clock(), RequestContext(
            request_id=request.request_id, source_ip=request.source_ip,
            user_agent=request.header("user-agent"), transport="wsgi"))
        response = self.broker.error_response(call, exc)
        response.headers.setdefault("X-Request-Id", request.request_id)
        return response


def serve(app: WsgiApp, host: str, port: int, *, threads: int = 8) -> None:
    """Run the app under waitress (a production WSGI server) until interrupted."""
    try:
        import waitress
    except ImportError:
        raise SystemExit("broker serve needs waitress: pip install 's3-upload-broker[serve]'") from None
    waitress.serve(app, host=host, port=port, threads=threads, ident="broker",
                   clear_untrusted_proxy_headers=True)


class ServerThread:
    """A waitress server in a background thread (tests, ``make run``); ``close()`` stops it."""

    def __init__(self, app: WsgiApp, host: str = "127.0.0.1", port: int = 0, *, threads: int = 8) -> None:
        import threading

        import waitress.server

        self._server = waitress.server.create_server(
            app, host=host, port=port, threads=threads, ident="broker",
            clear_untrusted_proxy_headers=True)
        self.host = host
        self.port = int(self._server.effective_port)  # type: ignore[union-attr]
        self._thread = threading.Thread(target=self._server.run, name="broker-http", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The server's base URL, without a trailing slash."""
        return f"http://{self.host}:{self.port}"

    def close(self) -> None:
        """Stop accepting connections and end the thread."""
        self._server.close()
        self._thread.join(timeout=5)
