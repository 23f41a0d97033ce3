"""Signed completion callbacks, the I/O half: POST a verdict to a client's backend, with retries.

:class:`Notifier` sends what :func:`broker.core.callbacks.payload` builds, signed with the
secret in the environment variable the client's ``callback.secret_env`` names::

    notifier = Notifier()                            # a long-lived server: deliveries in the background
    notifier = Notifier(background=False)            # Lambda: deliver before the handler returns
    notifier.notify("https://api.acme.example/hooks/uploads", "ACME_CALLBACK_SECRET", body)

One delivery is up to ``attempts`` POSTs, each with a fresh timestamp and signature and the same
``Broker-Delivery-Id``. A 2xx is success. Connection errors, timeouts, 5xx, 408 and 429 are
retried (after ``backoff``, or a ``Retry-After`` of up to :data:`MAX_RETRY_AFTER` seconds);
other 4xx are not. Redirects are never followed: a 3xx is a failure. Without its secret a
callback is never sent (an unsigned callback would teach receivers to accept forgeries).

Log lines (``callback_delivered``, ``callback_failed``, ``callback_dropped``) carry the URL
without its query, the delivery id, the attempts, the last status and the error: never the
secret or the signature.
"""
from __future__ import annotations

import http.client
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from broker.core.callbacks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    EVENTS,
    LOCAL_HOSTS,
    SIGNATURE_HEADER,
    sign,
    url_problem,
)
from broker.logs import log_event

USER_AGENT = "broker-callback/1"
#: The longest ``Retry-After`` (seconds) a delivery waits; a longer one is cut to this.
MAX_RETRY_AFTER = 60.0
RETRY_STATUSES = frozenset({408, 429})  # and every 5xx
_STOP = object()  # tells a worker to finish


def env_secret(name: str) -> bytes | None:
    """The secret in environment variable ``name``, as bytes; None when unset or empty."""
    value = os.environ.get(name)
    return value.encode("utf-8") if value else None


@dataclass(frozen=True)
class Delivery:
    """How one delivery ended: ``ok`` on a 2xx; else the last ``status`` (None: no answer) and ``error``."""

    ok: bool
    attempts: int
    status: int | None
    error: str | None
    delivery_id: str


@dataclass(frozen=True)
class _Answer:
    """One attempt's outcome: the status (None: no HTTP answer), Retry-After in seconds, an error."""

    status: int | None
    retry_after: float | None = None
    error: str | None = None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect: urllib then raises the 3xx as an HTTPError."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        return None


# Local (http://localhost) callbacks never go through a proxy from the environment.
_OPENER = urllib.request.build_opener(_NoRedirects)
_LOCAL_OPENER = urllib.request.build_opener(_NoRedirects, urllib.request.ProxyHandler({}))


class Notifier:
    """Delivers signed callbacks: in a small pool of daemon threads (``background``) or inline."""

    def __init__(self, *, secrets: Callable[[str], bytes | None] = env_secret, attempts: int = 5,
                 backoff: Sequence[float] = (0.5, 1, 2, 4), timeout: float = 5.0,
                 sleep: Callable[[float], Any] = time.sleep, clock: Callable[[], float] = time.time,
                 background: bool = True, workers: int = 2, queue_size: int = 256) -> None:
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1: got {attempts}")
        if workers < 1 or queue_size < 1:
            raise ValueError(f"workers and queue_size must be at least 1: got {workers} and {queue_size}")
        self.secrets = secrets
        self.attempts = attempts
        self.backoff = tuple(float(b) for b in backoff)
        self.timeout = timeout
        self.sleep = sleep
        self.clock = clock
        self.background = background
        self.workers = workers
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._threads: list[threading.Thread] = []
        self._guard = threading.Lock()

    # ------------------------------------------------------------------ entry points

    def notify(self, url: str, secret_env: str, payload: Mapping[str, Any]) -> Delivery | None:
        """Send ``payload`` to ``url``: queued (None) in the background, else delivered now (the Delivery).

        Never blocks on a full queue: the callback is dropped and ``callback_dropped`` logged.
        """
        if not self.background:
            return self.deliver(url, secret_env, payload)
        self._start()
        try:
            self._queue.put_nowait((url, secret_env, payload))
        except queue.Full:
            log_event("callback_dropped", url=redact(url), delivery_id=_delivery_id(payload),
                      error=f"the callback queue is full ({self._queue.maxsize} waiting); "
                            "the receiver is slow or down")
        return None

    def deliver(self, url: str, secret_env: str, payload: Mapping[str, Any]) -> Delivery:
        """One delivery, with retries, in this thread; logs ``callback_delivered`` or ``callback_failed``."""
        delivery_id = _delivery_id(payload)
        event = payload.get("event") if isinstance(payload, Mapping) else None
        problem = url_problem(url)
        if problem is None and (not delivery_id or event not in EVENTS.values()):
            problem = "the payload has no delivery_id or event: build it with broker.core.callbacks.payload"
        secret = None if problem else self._secret(secret_env)
        if problem is None and not secret:
            problem = (f"no callback secret: environment variable {secret_env} is unset or empty; "
                       "set it (callbacks are never sent unsigned)")
        if problem is not None or not secret:
            return self._done(url, Delivery(False, 0, None, problem, delivery_id))
        try:
            body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            return self._done(url, Delivery(False, 0, None, f"the payload is not JSON: {exc}", delivery_id))
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   DELIVERY_HEADER: delivery_id, EVENT_HEADER: str(event)}
        answer = _Answer(None)
        for attempt in range(1, self.attempts + 1):
            signed = {**headers, SIGNATURE_HEADER: sign(secret, int(self.clock()), body)}  # fresh each attempt
            answer = self._post(url, body, signed)
            status = answer.status
            if status is not None and 200 <= status < 300:
                return self._done(url, Delivery(True, attempt, status, None, delivery_id))
            if not _retryable(status) or attempt == self.attempts:
                return self._done(url, Delivery(False, attempt, status, _error(answer), delivery_id))
            self.sleep(self._wait(attempt, answer.retry_after))
        raise AssertionError("unreachable: the last attempt returns")  # pragma: no cover

    def close(self, timeout: float = 10.0) -> bool:
        """Wait up to ``timeout`` seconds for queued deliveries, then stop the workers; False if some remain."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False  # the workers (daemon threads) carry on; nothing is cut off
                self._queue.all_tasks_done.wait(remaining)
        with self._guard:
            threads, self._threads = self._threads, []
            for _ in threads:
                self._queue.put(_STOP)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return True

    # ------------------------------------------------------------------ the parts

    def _secret(self, name: str) -> bytes | None:
        try:
            return self.secrets(name)
        except Exception as exc:  # noqa: BLE001 -- a secret store that fails is a failed delivery, not a failed verifier
            log_event("callback_secret_unavailable", secret_env=name, error=type(exc).__name__)
            return None

    def _start(self) -> None:
        with self._guard:
            if self._threads:
                return
            for n in range(self.workers):
                thread = threading.Thread(target=self._work, name=f"broker-callback-{n}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                url, secret_env, payload = item
                self.deliver(url, secret_env, payload)
            except Exception as exc:  # noqa: BLE001 -- a worker must outlive any one delivery
                log_event("callback_failed", url=redact(item[0]), delivery_id=_delivery_id(item[2]),
                          error=f"{type(exc).__name__} while delivering")
            finally:
                self._queue.task_done()

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> _Answer:
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        local = (urlsplit(url).hostname or "") in LOCAL_HOSTS
        try:
            with (_LOCAL_OPENER if local else _OPENER).open(request, timeout=self.timeout) as response:
                return _Answer(response.status)
        except urllib.error.HTTPError as exc:  # an HTTP answer that is not 2xx (3xx included)
            try:
                retry_after = exc.headers.get("Retry-After") if exc.headers is not None else None
                return _Answer(exc.code, _retry_after(retry_after, self.clock()), _status_error(exc.code))
            finally:
                exc.close()
        except urllib.error.URLError as exc:
            reason = exc.reason
            return _Answer(None, error=_no_answer(reason) if isinstance(reason, BaseException) else str(reason))
        except (OSError, http.client.HTTPException) as exc:  # timeouts and resets while reading the answer
            return _Answer(None, error=_no_answer(exc))

    def _wait(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
        if not self.backoff:
            return 0.0
        return self.backoff[min(attempt - 1, len(self.backoff) - 1)]

    def _done(self, url: str, delivery: Delivery) -> Delivery:
        fields = {"url": redact(url), "delivery_id": delivery.delivery_id, "attempts": delivery.attempts,
                  "status": delivery.status}
        if delivery.ok:
            log_event("callback_delivered", **fields)
        else:
            log_event("callback_failed", **fields, error=delivery.error)
        return delivery


def redact(url: str) -> str:
    """``url`` as it may be logged: ``scheme://host[:port]/path``, without user, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(unparseable url)"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}"[:512]


def _delivery_id(payload: Any) -> str:
    value = payload.get("delivery_id") if isinstance(payload, Mapping) else None
    return value if isinstance(value, str) else ""


def _retryable(status: int | None) -> bool:
    return status is None or status >= 500 or status in RETRY_STATUSES


def _error(answer: _Answer) -> str:
    return answer.error or (f"HTTP {answer.status}" if answer.status is not None else "no answer")


def _status_error(status: int) -> str:
    if 300 <= status < 400:
        return (f"HTTP {status}: a redirect, not followed (callbacks never follow redirects); "
                "set the callback url to the final address")
    if _retryable(status):
        return f"HTTP {status} from the receiver"
    return f"HTTP {status}: the receiver refused the callback (not retried; a 4xx will not change)"


def _no_answer(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out waiting for the receiver"
    return f"no answer: {type(exc).__name__}: {exc}"[:300]


def _retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return parsedate_to_datetime(value).timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
