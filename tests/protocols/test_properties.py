"""Properties of the Fine Uploader and Companion endpoints under arbitrary input (in process, moto).

- No request, however malformed, gets a 5xx or a non-JSON answer; every refusal matches
  ``error.schema.json`` and says why (``message``; ``error`` too on Fine Uploader routes).
- Nothing signed ever leaves for a request that did not carry a valid grant: without a token the
  signature endpoint never answers 200, whatever the body.
"""
from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.config import schemas
from tests.protocols.conftest import call

ERROR_SCHEMA = schemas.validator("error")

ROUTES = [
    ("GET", "/fineuploader/config"), ("POST", "/fineuploader/key"), ("POST", "/fineuploader/signature"),
    ("POST", "/fineuploader/success"), ("GET", "/s3/params"), ("POST", "/s3/multipart"),
    ("GET", "/s3/multipart/{id}"), ("DELETE", "/s3/multipart/{id}"), ("GET", "/s3/multipart/{id}/batch"),
    ("GET", "/s3/multipart/{id}/{part}"), ("POST", "/s3/multipart/{id}/complete"),
]
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=12)
KEYS = st.sampled_from(["uploads/web-app/videos/2026-11-28/" + "0" * 32 + ".mp4", "", "../x", "a" * 300])
BODIES = st.one_of(st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode()),
                   st.just(b'{"headers": "AWS4-HMAC-SHA256\\n\\n\\n"}'),
                   st.just(b'{"expiration": "2026-11-28T15:00:00Z", "conditions": [{"key": "x"}]}'))
PERMISSIVE = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@PERMISSIVE
@given(route=st.sampled_from(ROUTES), upload_id=TEXT.filter(lambda s: "/" not in s and s), part=TEXT,
       key=KEYS, body=BODIES, token=st.one_of(st.none(), TEXT),
       query=st.dictionaries(st.sampled_from(["filename", "type", "metadata[size]", "metadata[profile]",
                                              "metadata[x]", "partNumbers", "v4"]), TEXT, max_size=4),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                                     "image/png"]))
def test_no_input_yields_a_server_error(fu_broker: Any, route: tuple[str, str], upload_id: str, part: str,
                                        key: str, body: bytes, token: str | None, query: dict[str, str],
                                        content_type: str) -> None:
    method, path = route
    path = path.format(id=upload_id, part=part.replace("/", "") or "1")
    headers = {"content-type": content_type, **({"x-upload-grant": token} if token is not None else {})}

    answer = call(fu_broker, method, path, body if method != "GET" else None, headers=headers,
                  query={"key": key, **query})

    assert answer.status < 500, answer
    if answer.status >= 400:
        assert list(ERROR_SCHEMA.iter_errors(answer.body)) == [], answer
        assert answer.body["message"], answer
        if path.startswith("/fineuploader/"):
            assert answer.body["error"] == answer.body["message"]


@PERMISSIVE
@given(body=BODIES, v4=st.sampled_from(["true", "false", ""]))
def test_no_signature_without_a_grant(fu_broker: Any, body: bytes, v4: str) -> None:
    answer = call(fu_broker, "POST", "/fineuploader/signature", body, query={"v4": v4})

    assert answer.status in (400, 403, 413, 415) and "signature" not in answer.body
