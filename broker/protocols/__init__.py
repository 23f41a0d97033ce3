"""Wire protocols: each module turns its clients' requests into UploadRequests.

- ``native``: ``POST /uploads`` (the broker's own JSON API, see ``schemas/openapi.yaml``)
- ``fineuploader``: Fine Uploader S3's v4 signature and upload-success endpoints (``/fineuploader/*``)
- ``companion``: Uppy AwsS3's Companion protocol (``/s3/params``, ``/s3/multipart/*``)
- ``sessions``: ``POST /sessions``, session tokens an app backend mints for its users' browsers
- ``limits``: ``GET /limits``, each profile the caller may use and its limits (Uppy's ``restrictions``)
- ``verification``: stores' object events in, verdicts and grant status out (``/events/seaweedfs``,
  ``/events/s3``, ``/uploads/verdict``, ``/uploads/{grant_id}``)

``native`` registers its routes itself. The others are listed in :data:`ROUTES` and their
modules (with the SigV4 and policy checkers behind them, ~30 ms of imports) are loaded on
the first request to one of their routes: a Lambda serving ``POST /uploads`` never pays for
them at cold start. Each such module has ``handlers(broker)`` returning a handler per route.
"""
from __future__ import annotations

import importlib
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.app import Broker, Call
    from broker.web import HttpResponse

#: The routes of the protocols loaded on first use: {module (and protocol name): ((method, path), ...)}.
ROUTES: dict[str, tuple[tuple[str, str], ...]] = {
    "fineuploader": (
        ("GET", "/fineuploader/config"),
        ("POST", "/fineuploader/key"),
        ("POST", "/fineuploader/signature"),
        ("POST", "/fineuploader/success"),
    ),
    "companion": (
        ("GET", "/s3/params"),
        ("POST", "/s3/multipart"),
        ("GET", "/s3/multipart/{uploadId}/batch"),
        ("GET", "/s3/multipart/{uploadId}/{partNumber}"),
        ("GET", "/s3/multipart/{uploadId}"),
        ("POST", "/s3/multipart/{uploadId}/complete"),
        ("DELETE", "/s3/multipart/{uploadId}"),
    ),
    "sessions": (
        ("POST", "/sessions"),
    ),
    "limits": (
        ("GET", "/limits"),
    ),
    "verification": (
        ("POST", "/events/seaweedfs"),
        ("POST", "/events/s3"),
        ("GET", "/uploads/verdict"),
        ("GET", "/uploads/{grant_id}"),
    ),
}


#: Routes whose requests may be larger than ``BROKER_MAX_BODY_BYTES`` (a filer event lists every chunk).
BODY_LIMITS = {"/events/seaweedfs": 4 * 1024 * 1024, "/events/s3": 4 * 1024 * 1024}


def register_all(broker: "Broker") -> None:
    """Add every protocol's routes to the broker."""
    from broker.protocols import native

    broker.body_limits.update(BODY_LIMITS)
    native.register(broker)
    for name, routes in ROUTES.items():
        module = _OnFirstUse(broker, name)
        for method, path in routes:
            broker.router.add(method, path, module.handler(method, path), protocol=name)


class _OnFirstUse:
    """A protocol module's handlers, imported and built when one of them is first called."""

    def __init__(self, broker: "Broker", name: str) -> None:
        self._broker = broker
        self._name = name
        self._handlers: dict[tuple[str, str], Any] | None = None
        self._lock = threading.Lock()

    def handlers(self) -> dict[tuple[str, str], Any]:
        """Every route's handler (imports the module the first time)."""
        if self._handlers is None:
            with self._lock:
                if self._handlers is None:
                    module = importlib.import_module(f"{__name__}.{self._name}")
                    self._handlers = module.handlers(self._broker)
        return self._handlers

    def handler(self, method: str, path: str) -> Any:
        def handle(call: "Call") -> "HttpResponse":
            return self.handlers()[(method, path)](call)

        handle.__qualname__ = handle.__name__ = f"{self._name}:{method} {path}"
        return handle
