"""GET /limits in process: with an API key, a Bearer session token or a /s/<token>/ path."""
from __future__ import annotations

import io
from typing import Any

import jsonschema
import pytest
import yaml

from broker.config import schemas
from tests.conftest import ROOT, audit_lines
from tests.protocols.conftest import SECRET, call, unique_id
from tests.protocols.test_sessions import SESSION_SECRET, bearer, never_shows, session_rules, token_for

MiB = 1024 * 1024


@pytest.fixture
def sb(make_broker: Any) -> Any:
    """The example rules plus a per-user profile, with a known session secret."""
    return make_broker(session_rules(), grant_secret=SECRET, new_id=unique_id, session_secret=SESSION_SECRET)


def openapi_schema() -> Any:
    doc = yaml.safe_load((ROOT / "schemas" / "openapi.yaml").read_text())
    return doc["paths"]["/limits"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]


def test_api_key_sees_every_profile_of_its_client(sb: Any) -> None:
    answer = call(sb, "GET", "/limits")
    assert answer.status == 200, answer
    assert list(answer.body["profiles"]) == ["avatars", "documents", "videos", "personal"]
    assert answer.body["profiles"]["personal"]["needs_user"] is True
    assert answer.body["session_expires_at"] is None
    jsonschema.validate(answer.body, openapi_schema())


def test_a_session_sees_its_own_profiles_and_limits(sb: Any, audit_stream: io.StringIO) -> None:
    token = token_for(sb, user="alice", profiles=["avatars"], max_bytes="1 MiB", ttl=600)
    for answer in (call(sb, "GET", "/limits", api_key=None, headers=bearer(token)),
                   call(sb, "GET", f"/s/{token}/limits", api_key=None)):
        assert answer.status == 200, answer
        body = answer.body
        assert (body["client"], body["user"], list(body["profiles"])) == ("web-app", "alice", ["avatars"])
        assert body["session_expires_at"] == "2026-11-28T14:59:31Z"
        assert body["profiles"]["avatars"]["restrictions"]["maxFileSize"] == MiB
    never_shows(audit_stream, token)


def test_no_credentials_or_a_forged_token_is_401(sb: Any, audit_stream: io.StringIO) -> None:
    token = token_for(sb, ttl=600)
    forged = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    for answer in (call(sb, "GET", "/limits", api_key=None),
                   call(sb, "GET", f"/s/{forged}/limits", api_key=None)):
        assert answer.status == 401, answer
        assert answer.body["message"]
    rec = audit_lines(audit_stream)[-1]
    schemas.validator("audit").validate(rec)
    never_shows(audit_stream, token, forged)
