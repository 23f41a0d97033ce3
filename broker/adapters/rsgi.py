"""RSGI (granian's own interface) <-> HttpRequest/HttpResponse: the app of every ``broker serve`` worker.

Why not WSGI here: a WSGI app reads the body from a blocking ``wsgi.input``, so a client that
announces ``Content-Length: 100`` and sends one byte holds the worker's Python thread for as long
as it keeps the socket open; two of them stopped a two-worker server (issue 16). Here the body is
awaited on the worker's event loop, under a deadline (:data:`BODY_SECONDS`) and a size cap (the
broker's body limit for the path); only a request whose body has fully arrived reaches
``Broker.handle``, which runs on a small pool of threads (``--threads``), off the loop. A stalled
client costs a socket and a suspended coroutine, never a thread.
"""
from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from broker.adapters.wsgi import WEB_ROOT, answer, parse_query, refusal
from broker.errors import InvalidRequest, PayloadTooLarge, RequestError
from broker.web import HttpRequest, HttpResponse

#: Seconds a client has to send a whole request body, from the end of its headers.
BODY_SECONDS = 10.0


class RequestTimeout(RequestError):
    """The request body did not arrive within the deadline (408)."""

    code = "request_timeout"
    status = 408


def request_headers(pairs: Any) -> dict[str, str]:
    """Header names in lower case, repeated ones joined by ``, ``; names with ``_`` dropped.

    WSGI servers and many proxies fold ``_`` and ``-`` together (``HTTP_X_API_KEY``), so a
    credential sent as ``x_api_key`` could pass a proxy that strips ``x-api-key`` and still be
    read as one. RSGI hands over the raw name: no header the broker reads has ``_`` in it, so
    such names are dropped, as waitress and nginx do.
    """
    headers: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        if "_" in name:
            continue
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def source_ip(client: str | None) -> str | None:
    """The address of RSGI's ``scope.client`` (``1.2.3.4:5678`` or ``[::1]:5678``) without its port."""
    if not client:
        return None
    host = client.rsplit(":", 1)[0] if client.count(":") == 1 or client.startswith("[") else client
    return host.strip("[]")


async def read_body(proto: Any, limit: int) -> bytes:
    """The whole body, refused (413) as soon as more than ``limit`` bytes have arrived.

    A client that leaves mid-body ends the iteration early: the broker then sees a truncated
    body (which fails its JSON parse), and the answer goes nowhere.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in proto:
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over {limit} bytes, the limit")
        chunks.append(chunk)
    return b"".join(chunks)


class RsgiApp:
    """An RSGI application serving the broker's API and, for GET, the upload page."""

    def __init__(self, broker: Any, *, web_root: Path | None = WEB_ROOT, threads: int = 1,
                 body_seconds: float = BODY_SECONDS) -> None:
        self.broker = broker
        self.web_root = web_root
        self.body_seconds = body_seconds
        # One thread: requests run on the event loop itself, between awaits (measured, bench row 4:
        # a one-thread pool cost ~1.0 ms of server CPU per request, inline ~0.6-0.7 ms). More: a
        # pool, so that a request waiting on the store lets the others run.
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="broker") if threads > 1 else None

    def __rsgi_del__(self, loop: Any) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    async def __rsgi__(self, scope: Any, proto: Any) -> None:
        if scope.proto != "http":  # websockets are off in broker serve
            return
        headers = request_headers(scope.headers.items())
        request = HttpRequest(method=scope.method.upper(), path=scope.path or "/", headers=headers,
                              source_ip=source_ip(scope.client))
        limit = self.broker.body_limits.get(request.path, self.broker.max_body_bytes)
        try:
            query = parse_query(scope.query_string)
            body = await self._body(proto, headers, limit)
        except RequestError as exc:  # refused before the broker saw it; granian then closes the connection
            self._send(proto, refusal(self.broker, request, exc, transport="rsgi"))
            return
        request = HttpRequest(method=request.method, path=request.path, headers=headers, query=query,
                              body=body, source_ip=request.source_ip)
        if self._pool is None:
            response = self._respond(request)
        else:
            response = await asyncio.get_running_loop().run_in_executor(self._pool, self._respond, request)
        self._send(proto, response)

    async def _body(self, proto: Any, headers: dict[str, str], limit: int) -> bytes:
        length = headers.get("content-length")
        if length is None and "transfer-encoding" not in headers:
            return b""  # no body: nothing to wait for
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise InvalidRequest("the Content-Length header is not a number", path="$.headers") from None
            if declared > limit:
                raise PayloadTooLarge(f"the request body is {declared} bytes; the limit is {limit}")
            if declared == 0:
                return b""
        try:
            # A Content-Length body cannot outgrow its (checked) length: granian stops there.
            # wait_for, not asyncio.timeout: Python 3.10 has no timeout (measured: same CPU).
            return await asyncio.wait_for(proto() if length is not None else read_body(proto, limit),
                                          self.body_seconds)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"the request body did not arrive within {self.body_seconds:g} s") from None
        except (RuntimeError, OSError):  # the client went away mid-body (RSGIProtocolClosed/Error)
            raise RequestTimeout("the connection closed before the request body arrived") from None

    def _respond(self, request: HttpRequest) -> HttpResponse:
        return answer(self.broker, request, self.web_root, transport="rsgi")

    @staticmethod
    def _send(proto: Any, response: HttpResponse) -> None:
        try:
            proto.response_bytes(response.status, list(response.headers.items()), response.body)
        except RuntimeError:  # RSGIProtocolClosed: the client left; its request is audited already
            pass
