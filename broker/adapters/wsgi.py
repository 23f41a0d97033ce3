"""WSGI <-> HttpRequest/HttpResponse, the static upload page, and the servers behind ``broker serve``."""
from __future__ import annotations

import dataclasses
import json
import logging
import mimetypes
import os
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

from broker.errors import InvalidRequest, NotFound, PayloadTooLarge, RequestError
from broker.web import HttpRequest, HttpResponse

WEB_ROOT = Path(__file__).resolve().parent.parent / "static"
#: Query parameters one request may carry (the broker's routes use a handful).
MAX_QUERY_FIELDS = 200
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 413: "Payload Too Large", 415: "Unsupported Media Type",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def reason_phrase(response: HttpResponse) -> str:
    """The HTTP/1.1 reason phrase: for an error with a JSON ``message``, that message.

    Some clients show only the status line of a failed call (Uppy 6's Companion client shows
    ``Companion request failed: <statusText>``), so the broker's reason goes there too, as
    printable ASCII (anything else becomes ``?``), at most 400 characters. HTTP/2 has no
    reason phrase; there the JSON body is the only place.
    """
    default = _REASONS.get(response.status, "Unknown")
    if response.status < 400 or not response.body.startswith(b"{"):
        return default
    try:
        message = json.loads(response.body).get("message")
    except ValueError:
        return default
    if not isinstance(message, str) or not message.strip():
        return default
    return "".join(c if " " <= c <= "~" else "?" for c in message.strip())[:400]


def to_request(environ: dict[str, Any], max_body_bytes: int) -> HttpRequest:
    """Build an HttpRequest from a WSGI environ, reading at most ``max_body_bytes`` + 1 bytes.

    The request id is left to the broker (``Broker.handle`` draws one): a static file needs none.
    """
    headers = {}
    # A header sent as ``x_api_key`` reaches WSGI as HTTP_X_API_KEY, the same as ``x-api-key``
    # (PEP 3333 folds both to ``_``): the environ cannot tell them apart, so only a server that
    # hands over raw names can refuse the underscore spelling (broker serve does: adapters/rsgi.py).
    # waitress drops header names with ``_`` itself; behind another WSGI server, let the proxy do it.
    for key, value in environ.items():  # granian's environ also holds the whole os.environ
        if key[:5] == "HTTP_":
            headers[key[5:].replace("_", "-").lower()] = value
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > max_body_bytes:
        raise PayloadTooLarge(f"the request body is {length} bytes; the limit is {max_body_bytes}")
    body = environ["wsgi.input"].read(length) if length > 0 else b""
    if not environ.get("CONTENT_LENGTH") and environ.get("wsgi.input_terminated"):
        # A chunked body: waitress sets CONTENT_LENGTH once it has the whole body, granian
        # hands over a stream that ends where the body does. Read one byte past the limit.
        body = environ["wsgi.input"].read(max_body_bytes + 1)
        if len(body) > max_body_bytes:
            raise PayloadTooLarge(f"the request body is over {max_body_bytes} bytes, the limit")
    query = parse_query(environ.get("QUERY_STRING"))
    path = environ.get("PATH_INFO") or "/"
    if not path.isascii():
        try:  # PEP 3333 hands PATH_INFO over as latin-1; undo that to get the UTF-8 path
            path = path.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return HttpRequest(
        method=environ.get("REQUEST_METHOD", "GET").upper(), path=path, headers=headers,
        query=query, body=body, source_ip=environ.get("REMOTE_ADDR"))


def parse_query(query_string: str | None) -> dict[str, list[str]]:
    """The query's parameters; more than :data:`MAX_QUERY_FIELDS` is a 400 (with a request id and an audit line)."""
    try:
        return parse_qs(query_string, keep_blank_values=True, max_num_fields=MAX_QUERY_FIELDS) if query_string else {}
    except ValueError:  # more fields than that: never a 500
        raise InvalidRequest(f"the query has more than {MAX_QUERY_FIELDS} parameters", path="$.query") from None


def answer(broker: Any, request: HttpRequest, web_root: Path | None, *, transport: str) -> HttpResponse:
    """The broker's answer, or for a GET the broker has no route for, a static file (the upload page)."""
    if request.method in ("GET", "HEAD") and web_root is not None:
        try:
            broker.router.match(request.method, request.path)
        except NotFound:
            found = static_file(request.path, web_root)
            if found is not None:
                return found
        except Exception:  # noqa: BLE001 - the broker answers it below
            pass
    return broker.handle(request, transport=transport)


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
            request = to_request(environ, self.broker.body_limits.get(environ.get("PATH_INFO") or "/",
                                                                      self.broker.max_body_bytes))
        except RequestError as exc:  # too large, or a query flood: refused before the broker saw it
            response = self._refuse(environ, exc)
        else:
            response = answer(self.broker, request, self.web_root, transport="wsgi")
        status = f"{response.status} {reason_phrase(response)}"
        headers = list(response.headers.items())
        headers.append(("Content-Length", str(len(response.body))))
        start_response(status, headers)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [response.body]

    def _refuse(self, environ: dict[str, Any], exc: RequestError) -> HttpResponse:
        """Audit and answer a request refused before the broker saw it (its body or its query is too large).

        No ``Connection: close``: it is hop-by-hop, and waitress turns it into a 500 (PEP 3333).
        waitress has read the whole body before calling us, so the connection stays usable;
        granian closes it after this answer, since the body was not read.
        """
        request = to_request({**environ, "CONTENT_LENGTH": "0", "QUERY_STRING": ""}, 0)  # the headers only
        return refusal(self.broker, request, exc, transport="wsgi")


def refusal(broker: Any, request: HttpRequest, exc: RequestError, *, transport: str) -> HttpResponse:
    """Audit and answer ``request`` (its headers only), refused by the transport before the broker saw it."""
    from broker.app import Call
    from broker.fast.ids import new_random_id
    from broker.models import RequestContext

    request = dataclasses.replace(request, request_id=new_random_id())
    call = Call(broker, request, broker.clock(), RequestContext(
        request_id=request.request_id, source_ip=request.source_ip,
        user_agent=request.header("user-agent"), transport=transport))
    response = broker.error_response(call, exc)
    response.headers.setdefault("X-Request-Id", request.request_id)
    return response


DEFAULT_THREADS = 1  # see ``broker serve --help``: threads in one process take turns on the GIL
WORKERS_KILL_SECONDS = 10


def default_workers() -> int:
    """One worker per CPU this process may use: requests are CPU-bound Python, one process uses one CPU."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LineStream:
    """A text stream on a file descriptor that writes each ``write()`` with one ``os.write``.

    Every worker process of ``broker serve`` writes audit lines to the same standard output;
    Python's buffered ``sys.stdout`` may split a long line across two ``write()`` calls, and
    another worker's line could then land in between. One ``write()`` per line cannot be split
    (on a pipe, up to PIPE_BUF = 4 KiB; on a file or a terminal, at any length).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def write(self, text: str) -> int:
        data = text.encode("utf-8", "backslashreplace")
        view = memoryview(data)
        while view:  # a short write (a signal, a full pipe) continues where it stopped
            view = view[os.write(self._fd, view):]
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""


def stop_with_the_server(signum: int) -> None:
    """Linux: send this worker ``signum`` when the process that started it dies, even by SIGKILL.

    Otherwise a worker outlives its server and goes on answering on the port, unsupervised.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signum))  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass


def drop_http_variables(env: Any) -> None:
    """Remove ``HTTP_*`` variables from this worker's environment (``*_PROXY`` ones kept in lower case).

    granian starts every WSGI environ from a copy of ``os.environ``, so a variable such as
    ``HTTP_X_API_KEY`` would reach the app as a request header the client never sent. Proxy
    settings keep working: urllib and botocore read ``http_proxy`` as well, and prefer it.
    """
    for name in [n for n in env if n.startswith("HTTP_")]:
        value = env.pop(name)
        if name.endswith("_PROXY"):
            env.setdefault(name.lower(), value)


class ServerLogFormatter(logging.Formatter):
    """granian's own log lines as JSON on stderr, shaped like the broker's (``broker.logs.log_event``)."""

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"level": record.levelname.lower(), "event": "server", "message": record.getMessage()})


# granian logs to stdout by default, where the audit lines go: its lines go to stderr instead.
SERVER_LOGGING = {
    "formatters": {"json": {"()": f"{__name__}.ServerLogFormatter"}},
    "handlers": {"stderr": {"formatter": "json", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
    "loggers": {"_granian": {"handlers": ["stderr"], "propagate": False}},
}


#: Seconds a client has to send its request line and headers, and the longest a connection may
#: sit idle before (or between keep-alive) requests: granian closes it after that. HTTP/1 only:
#: in granian's "auto" mode a connection that sends nothing is never timed out (it waits, without
#: a deadline, for bytes that tell HTTP/1 from HTTP/2), and holds a worker's connection slot.
HEADER_SECONDS = 10
#: Connections waiting to be accepted (the listen backlog), and connections one worker serves at
#: once (granian's backpressure): a stalled client holds one of these, never a thread.
BACKLOG = 2048
CONNECTIONS_PER_WORKER = 1024


def serve(host: str, port: int, *, factory: str, workers: int, threads: int = DEFAULT_THREADS,
          interface: str = "wsgi") -> None:
    """Serve the app ``factory`` (``module:function``) builds in each of ``workers`` processes.

    granian parses HTTP in Rust, so its own cost per request is small (~0.1 ms of CPU for a
    hello-world app, waitress's is ~0.3-0.6 ms: ``bench/bench.py --only server``), and one
    process per CPU gets past the GIL. ``interface="rsgi"`` (``broker serve``: adapters/rsgi.py)
    awaits bodies on an event loop, the app runs requests in its own ``threads``; ``"wsgi"``
    calls the app from ``threads`` Python threads, each blocked while a client sends its body.
    Returns on SIGINT or SIGTERM, once the workers have stopped.
    """
    try:
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces
        from granian.http import HTTP1Settings
        from granian.log import LogLevels
    except ImportError:
        raise SystemExit("broker serve needs granian: pip install 's3-upload-broker[serve]'") from None
    rsgi = interface == "rsgi"
    # respawn: a worker that dies (killed, out of memory) is replaced; one that dies again within
    # seconds of its start stops the server, with exit status 1. On SIGINT or SIGTERM, workers
    # finish the requests they have; one still running after WORKERS_KILL_SECONDS is killed.
    Granian(factory, factory=True, interface=Interfaces.RSGI if rsgi else Interfaces.WSGI,
            address=host, port=port, workers=workers, blocking_threads=1 if rsgi else threads,
            websockets=False, respawn_failed_workers=True, workers_kill_timeout=WORKERS_KILL_SECONDS,
            backlog=BACKLOG, backpressure=CONNECTIONS_PER_WORKER, http=HTTPModes.http1,
            http1_settings=HTTP1Settings(header_read_timeout=HEADER_SECONDS * 1000, keep_alive=True),
            log_level=LogLevels.warning, log_dictconfig=SERVER_LOGGING).serve()


class ServerThread:
    """A waitress server in a thread of this process (tests, ``make run``); ``close()`` stops it.

    waitress, not granian: granian serves from worker processes it starts itself, and the tests
    and ``make run`` need the Broker they built, in their own process.
    """

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
        """Stop accepting connections and end the thread.

        The sockets are closed by the server's own loop (a thunk through waitress's trigger): closed
        from this thread, the loop's ``select()`` could still be waiting on them and die with EBADF.
        """
        from waitress import wasyncore

        server = self._server
        try:
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map, ignore_all=True))  # type: ignore[union-attr]
        except OSError:  # the loop is gone already
            pass
        self._thread.join(timeout=5)
        if self._thread.is_alive():  # the loop did not run the thunk: close from here, as before
            server.close()
            self._thread.join(timeout=5)
        server.task_dispatcher.shutdown(timeout=5)  # type: ignore[union-attr]
