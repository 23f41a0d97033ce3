"""POST /uploads end to end in process: body -> decision -> signed form -> audit line."""
from __future__ import annotations

import json
from typing import Any

import pytest

from broker.config import schemas
from broker.s3.post import decode_policy
from tests.conftest import ACME_KEY, NOW, audit_lines, post_json

AVATAR = {"filename": "me.png", "content_type": "image/png", "size": 1200, "profile": "avatars"}


def test_allowed_upload_returns_a_signed_form(broker: Any, audit_stream: Any) -> None:
    status, body, headers = post_json(broker, "/uploads", AVATAR)
    assert status == 200, body
    schemas.validator("upload-response").validate(body)
    assert body["url"] == "https://broker-uploads.s3.amazonaws.com/"
    fields = body["fields"]
    assert fields["key"] == body["key"] == f"uploads/web-app/avatars/2026-11-28/{1:032x}.png"
    assert fields["x-amz-algorithm"] == "AWS4-HMAC-SHA256"  # SigV4, never the old V2
    assert "signature" not in fields and "AWSAccessKeyId" not in fields
    policy = decode_policy(fields["policy"])
    conds = policy["conditions"]
    assert {"bucket": "broker-uploads"} in conds
    assert {"key": body["key"]} in conds  # exact key, never starts-with
    assert not any(isinstance(c, list) and c[0] == "starts-with" for c in conds)
    assert ["content-length-range", 1, 5 * 1024**2] in conds
    assert {"Content-Type": "image/png"} in conds
    for name, value in fields.items():  # every field S3 will see is bound by a condition
        if name not in ("policy", "x-amz-signature"):
            assert {name: value} in conds, name
    assert policy["expiration"] == body["expires_at"].replace("Z", "Z")
    assert headers["X-Request-Id"] == "req-1"


def test_each_grant_gets_a_new_key(broker: Any) -> None:
    keys = {post_json(broker, "/uploads", AVATAR)[1]["key"] for _ in range(3)}
    assert len(keys) == 3


def test_audit_line_for_an_allowed_upload(broker: Any, audit_stream: Any) -> None:
    post_json(broker, "/uploads", AVATAR)
    (rec,) = audit_lines(audit_stream)
    schemas.validator("audit").validate(rec)
    assert rec["decision"] == "allowed" and rec["client"] == "web-app" and rec["profile"] == "avatars"
    assert rec["time"] == "2026-11-28T14:49:31.000Z"
    assert rec["source_ip"] == "203.0.113.9"
    assert rec["size_range"] == [1, 5 * 1024**2]
    line = audit_stream.getvalue()
    for secret in ("demo-web-app-key", "test-secret-key-never-logged", "x-amz-signature", "x-amz-credential",
                   "policy\""):
        assert secret not in line


@pytest.mark.parametrize("body, status, expect", [
    pytest.param({**AVATAR, "size": 12_000_000}, 413,
                 {"error": "denied", "rule": "avatars", "check": "too_large", "expected": 5242880,
                  "actual": 12_000_000, "limit": "5 MiB",
                  "message": "too large: 12 MB, the limit for avatars is 5 MiB"}, id="too_large"),
    pytest.param({**AVATAR, "content_type": "image/svg+xml", "filename": "x.svg"}, 403,
                 {"error": "denied", "check": "content_type_not_allowed", "actual": "image/svg+xml"},
                 id="content_type"),
    pytest.param({**AVATAR, "profile": "invoices"}, 403,
                 {"error": "denied", "check": "unknown_profile", "rule": "invoices"}, id="other_clients_profile"),
    pytest.param({"filename": "me.png"}, 400,
                 {"error": "invalid_request", "path": "$"}, id="missing_content_type"),
    pytest.param({**AVATAR, "size": -1}, 400, {"error": "invalid_request", "path": "$.size"}, id="negative_size"),
    pytest.param({**AVATAR, "size": "12"}, 400, {"error": "invalid_request", "path": "$.size"}, id="size_as_string"),
    pytest.param({**AVATAR, "size": True}, 400, {"error": "invalid_request", "path": "$.size"}, id="size_as_bool"),
    pytest.param({**AVATAR, "key": "mine.png"}, 400, {"error": "invalid_request", "path": "$"},
                 id="client_chosen_key"),
    pytest.param({**AVATAR, "filename": "../etc/x.png"}, 400, {"error": "invalid_request", "path": "$.filename"},
                 id="traversal"),
    pytest.param({**AVATAR, "content_type": "image/png\r\nx: y"}, 400,
                 {"error": "invalid_request", "path": "$.content_type"}, id="header_injection"),
    pytest.param([], 400, {"error": "invalid_request"}, id="array_body"),
    pytest.param(b"\xff\xfe", 400, {"error": "invalid_request"}, id="not_utf8"),
    pytest.param(b"{" * 100_000, 413, {"error": "payload_too_large"}, id="huge"),
    pytest.param(b"[" * 5000 + b"]" * 5000, 400, {"error": "invalid_request"}, id="deep_nesting"),
    pytest.param(b'{"filename":"a.png","content_type":"image/png","size":1e999}', 400,
                 {"error": "invalid_request", "path": "$.size"}, id="infinite_size"),
    pytest.param(b'{"filename":"a.png","content_type":"image/png","size":NaN}', 400,
                 {"error": "invalid_request"}, id="nan"),
])
def test_refusals(broker: Any, audit_stream: Any, body: Any, status: int, expect: dict[str, Any]) -> None:
    got, resp, _ = post_json(broker, "/uploads", body)
    assert got == status, resp
    schemas.validator("error").validate(resp)
    for name, value in expect.items():
        assert resp[name] == value, (name, resp)
    (rec,) = audit_lines(audit_stream)  # every refusal is audited too
    schemas.validator("audit").validate(rec)
    assert rec["decision"] in ("denied", "error")
    assert "key" not in rec or rec["decision"] == "allowed"


def test_unknown_and_missing_api_key(broker: Any) -> None:
    status, body, headers = post_json(broker, "/uploads", AVATAR, api_key="nope")
    assert (status, body["error"]) == (401, "unauthenticated")
    assert "WWW-Authenticate" in headers
    status, body, _ = post_json(broker, "/uploads", AVATAR, api_key=None)
    assert (status, body["error"]) == (401, "unauthenticated")


def test_the_right_key_for_another_client(broker: Any) -> None:
    status, body, _ = post_json(broker, "/uploads", AVATAR, api_key=ACME_KEY)
    assert status == 403 and body["check"] == "unknown_profile" and body["client"] == "partner-acme"


def test_rules_unavailable_is_503_and_issues_nothing(make_broker: Any, audit_stream: Any) -> None:
    from broker.service import assemble
    from broker.audit import AuditLog
    from broker.s3.store import S3Store
    from broker.config.sources import RulesProvider, StaticSource

    provider = RulesProvider(StaticSource("version: 1\nbucket: x\n"), reload_seconds=3600,
                             log=lambda *a, **k: None)
    broker = assemble(provider, S3Store(None), AuditLog(stream=audit_stream), clock=lambda: NOW)
    status, body, _ = post_json(broker, "/uploads", AVATAR)
    assert (status, body["error"]) == (503, "rules_unavailable")
    assert "fields" not in body


def test_health(broker: Any) -> None:
    from broker.web import HttpRequest

    resp = broker.handle(HttpRequest("GET", "/health"))
    assert resp.status == 200 and json.loads(resp.body)["status"] == "ok"


def test_unexpected_failure_is_a_500_without_a_traceback(broker: Any, capsys: Any) -> None:
    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    broker.store.sign_post = explode
    status, body, _ = post_json(broker, "/uploads", AVATAR)
    assert status == 500 and body["error"] == "internal_error"
    assert "secret internals" not in json.dumps(body) and "Traceback" not in json.dumps(body)
    assert "secret internals" in capsys.readouterr().err  # the operator still learns what broke


def test_credentials_about_to_expire_shorten_the_grant(make_broker: Any) -> None:
    from datetime import timedelta

    broker = make_broker()
    broker.store.post_signer._expiry = lambda: NOW + timedelta(seconds=130)
    _, body, _ = post_json(broker, "/uploads", AVATAR)
    assert broker.store.expires_in(_grant(), NOW) == 100
    assert body["fields"]["x-amz-signature"]


def _grant() -> Any:
    from broker.models import Grant

    return Grant("c", "p", "b", "k", "image/png", 1, 2, 300, {})


def test_lazy_protocols_list_exactly_their_modules_routes(make_broker: Any) -> None:
    """ROUTES (what is registered at start) and each module's handlers (what runs) agree."""
    import importlib

    from broker.protocols import ROUTES

    broker = make_broker()
    for name, routes in ROUTES.items():
        module = importlib.import_module(f"broker.protocols.{name}")
        assert module.PROTOCOL == name
        assert set(module.handlers(broker)) == set(routes), name


def test_cold_start_does_not_import_the_other_protocols(tmp_path: Any) -> None:
    """A fresh broker answering POST /uploads loads Fine Uploader's and Companion's modules only
    when one of their routes is called."""
    import os
    import subprocess
    import sys

    code = """
import io, json, sys
from broker import service
from broker.config import Settings
from broker.web import HttpRequest
broker = service.build(Settings(), audit_stream=io.StringIO())
def loaded():
    return sorted(m.rsplit(".", 1)[1] for m in sys.modules
                  if m in ("broker.protocols.fineuploader", "broker.protocols.companion"))
body = json.dumps({"filename": "me.png", "content_type": "image/png"}).encode()
headers = {"content-type": "application/json", "x-api-key": "demo-web-app-key"}
first = broker.handle(HttpRequest("POST", "/uploads", headers, {}, body)).status
before = loaded()
second = broker.handle(HttpRequest("GET", "/s3/params", headers, {"filename": ["me.png"], "type": ["image/png"]})).status
print(json.dumps([first, before, second, loaded()]))
"""
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
    env.pop("AWS_SESSION_TOKEN", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=tmp_path).stdout
    first, before, second, after = json.loads(out.splitlines()[-1])
    assert (first, before) == (200, [])
    assert (second, after) == (200, ["companion"])
