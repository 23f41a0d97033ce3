"""AWS Lambda entry points: ``lambda_handler.handler`` (the signer) and ``verify_handler``.

Settings and rules are loaded once per process (at cold start, during Lambda's init
phase); each invocation is then event -> request -> decide -> sign -> audit -> response.
If the settings are invalid the function still starts, logs why, and answers 503 to every
request: it never issues anything it cannot audit or check.

``verify_handler`` is the second function's: the upload bucket's ``s3:ObjectCreated:*``
notifications invoke it (asynchronously) and it judges each new object
(``broker.adapters.s3events``). It raises whenever nothing could be judged for want of the
store, the rules or a working start, so Lambda retries the event rather than dropping it.
"""
from __future__ import annotations

import gc
import os
from typing import Any

# Start-up allocates hundreds of thousands of long-lived objects (botocore's models, the
# rules) and no garbage worth collecting: the cyclic collector would only re-scan them,
# about 5% of a cold start. It runs again, as usual, once the function is ready, but
# without those objects (gc.freeze): else the first invocation would pay one full
# collection of the whole start-up heap, another ~10% of a cold start, and every later
# full collection would walk it again.
_GC_WAS_ENABLED = gc.isenabled()
gc.disable()
try:
    # botocore is imported first, near the top of the stack, rather than deep inside
    # build(): imported there, one of its modules' start-up loops calls a function at
    # exactly the depth where CPython <= 3.12 allocates and frees a frame-stack chunk on
    # every call (CPython gh-142183): ~6,000 mmap/munmap, ~0.1 s of each cold start.
    from broker.s3.client import preload

    preload()
    from broker import service
    from broker.adapters import apigw, s3events
    from broker.app import Broker
    from broker.config import Settings
    from broker.errors import ConfigError, ServiceUnavailable
    from broker.logs import log_event

    try:
        BROKER: Broker | None = service.build(Settings.from_env())
        _START_ERROR: str | None = None
        if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # on Lambda: counts as CloudWatch EMF lines
            from broker import metrics

            metrics.install(BROKER)  # decisions, errors and failed rules reloads
            BROKER.callbacks_in_background = False  # a frozen Lambda would strand queued callbacks
    except ConfigError as exc:  # fail closed, loudly, but keep answering with a clear 503
        BROKER, _START_ERROR = None, exc.message
        log_event("startup_failed", error=exc.message)
        if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # the StartupFailed count an alarm watches
            from broker import metrics

            print(metrics.count_line(metrics.STARTUP_FAILED), end="", flush=True)
finally:
    gc.freeze()
    if _GC_WAS_ENABLED:
        gc.enable()


def handler(event: Any, context: Any = None) -> dict[str, Any]:
    """Answer one API Gateway / Function URL event."""
    if BROKER is None:
        from broker.web import HttpResponse

        rc = event.get("requestContext") if isinstance(event, dict) else None  # as the broker names requests
        request_id = str((rc.get("requestId") if isinstance(rc, dict) else None)
                         or getattr(context, "aws_request_id", "") or "-")
        body = {**ServiceUnavailable("the broker is misconfigured; the operator's log says why").to_body(),
                "request_id": request_id}
        if os.environ.get("AWS_LAMBDA_FUNCTION_NAME"):  # counted as a 5xx, as the broker counts its own
            from broker import metrics

            print(metrics.error_line(503, "service_unavailable"), end="", flush=True)
        return apigw.to_event_response(HttpResponse.json(503, body, {"X-Request-Id": request_id}),
                                       apigw.kind_of(event))
    return apigw.handle(BROKER, event, context)


def verify_handler(event: Any, context: Any = None) -> dict[str, Any]:
    """Judge the objects of one S3 event notification; raises (so Lambda retries) on an outage."""
    if BROKER is None:
        raise ServiceUnavailable(f"the broker did not start, so nothing was verified: {_START_ERROR}")
    return s3events.handle(BROKER, event, context)
