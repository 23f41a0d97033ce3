"""Sessions in process: POST /sessions mints a token; browsers present it as Bearer or /s/<token>/."""
from __future__ import annotations

import io
from typing import Any, Callable

import pytest
import yaml

from broker.config import schemas
from tests.conftest import ACME_KEY, NOW, ROOT, WEB_KEY, audit_lines
from tests.protocols.conftest import SECRET, call, unique_id

SESSION_SECRET = b"S" * 32
AVATAR = {"filename": "me.png", "content_type": "image/png", "size": 1200, "profile": "avatars"}
MINE = {"filename": "me.png", "content_type": "image/png", "size": 1200, "profile": "personal"}


def session_rules() -> str:
    """The example rules, plus a per-user profile for web-app, a server-only partner, a 30 min session cap."""
    doc = yaml.safe_load((ROOT / "rules.yaml").read_text())
    doc["session_max_ttl"] = 1800
    doc["clients"]["web-app"]["rules"].append(
        {"name": "personal", "key": "users/{client}/{user}/{uuid}{ext}", "max_bytes": "1 MiB",
         "content_types": ["image/png"], "extensions": [".png"]})
    doc["clients"]["mobile"]["rules"].append(
        {"name": "mine", "key": "users/{client}/{user}/{uuid}{ext}", "max_bytes": "1 MiB",
         "content_types": ["image/png"], "extensions": [".png"]})
    doc["clients"]["partner-acme"]["server_only"] = True
    return yaml.safe_dump(doc, sort_keys=False)


@pytest.fixture
def make(make_broker: Callable[..., Any]) -> Callable[..., Any]:
    def build(**kwargs: Any) -> Any:
        kwargs.setdefault("session_secret", SESSION_SECRET)
        return make_broker(session_rules(), grant_secret=SECRET, new_id=unique_id, **kwargs)

    return build


@pytest.fixture
def sb(make: Callable[..., Any]) -> Any:
    return make()


def mint(broker: Any, body: dict[str, Any] | None = None, *, api_key: str | None = WEB_KEY,
         headers: dict[str, str] | None = None) -> Any:
    return call(broker, "POST", "/sessions", body if body is not None else {}, api_key=api_key, headers=headers)


def token_for(broker: Any, **body: Any) -> str:
    answer = mint(broker, body)
    assert answer.status == 200, answer
    return answer.body["token"]


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def never_shows(stream: io.StringIO, *tokens: str) -> None:
    text = stream.getvalue()
    for token in tokens:
        assert token not in text
        assert token.rpartition(".")[2] not in text  # not even its MAC


# --------------------------------------------------------------------------- POST /sessions


def test_minting_a_session(sb: Any, audit_stream: io.StringIO) -> None:
    answer = mint(sb, {"user": "alice@example.com", "ttl": 600, "profiles": ["avatars"], "max_bytes": "1 MiB"})
    assert answer.status == 200, answer
    body = answer.body
    schemas.validator("session-response").validate(body)
    assert body["client"] == "web-app" and body["user"] == "alice@example.com"
    assert body["profiles"] == ["avatars"] and body["max_bytes"] == 1024**2 and body["max_files"] is None
    assert body["expires_at"] == "2026-11-28T14:59:31Z"  # NOW + 600 s
    assert body["path_prefix"] == f"/s/{body['token']}"
    assert answer.headers["Cache-Control"] == "no-store"
    (rec,) = audit_lines(audit_stream)
    schemas.validator("audit").validate(rec)
    assert rec["event"] == "session" and rec["decision"] == "allowed" and rec["client"] == "web-app"
    assert rec["user"] == "alice@example.com" and len(rec["session"]) == 32
    never_shows(audit_stream, body["token"])


def test_defaults_all_profiles_and_15_minutes(sb: Any) -> None:
    body = mint(sb).body
    assert body["profiles"] == ["avatars", "documents", "personal", "videos"]
    assert body["expires_at"] == "2026-11-28T15:04:31Z" and body["user"] is None


def test_ttl_is_capped_by_session_max_ttl(sb: Any) -> None:
    assert mint(sb, {"ttl": 86400}).body["expires_at"] == "2026-11-28T15:19:31Z"  # 1800 s


@pytest.mark.parametrize("body, path", [
    pytest.param({"user": "a/b"}, "$.user", id="user_slash"),
    pytest.param({"user": ""}, "$.user", id="user_empty"),
    pytest.param({"user": "u" * 129}, "$.user", id="user_long"),
    pytest.param({"ttl": 0}, "$.ttl", id="ttl_zero"),
    pytest.param({"ttl": 86401}, "$.ttl", id="ttl_over_a_day"),
    pytest.param({"profiles": []}, "$.profiles", id="no_profiles"),
    pytest.param({"max_bytes": "lots"}, "$.max_bytes", id="max_bytes_words"),
    pytest.param({"token": "mine"}, "$", id="unknown_field"),
])
def test_bad_session_requests_are_400(sb: Any, body: dict[str, Any], path: str) -> None:
    answer = mint(sb, body)
    assert answer.status == 400 and answer.body["path"] == path, answer


def test_profiles_must_be_the_clients(sb: Any, audit_stream: io.StringIO) -> None:
    answer = mint(sb, {"profiles": ["avatars", "invoices"], "user": "bob"})
    assert answer.status == 403 and answer.body["check"] == "unknown_profile", answer
    rec = audit_lines(audit_stream)[-1]
    assert rec["event"] == "session" and rec["decision"] == "denied" and rec["user"] == "bob"
    schemas.validator("audit").validate(rec)


def test_minting_needs_a_client(sb: Any) -> None:
    assert mint(sb, api_key=None).status == 401


def test_a_session_cannot_mint_sessions(sb: Any) -> None:
    token = token_for(sb, ttl=60)
    answer = mint(sb, {"ttl": 1800}, api_key=None, headers=bearer(token))
    assert answer.status == 403 and answer.body["check"] == "session_not_allowed"


def test_max_files_needs_a_ledger(sb: Any) -> None:
    answer = mint(sb, {"max_files": 2})
    assert answer.status == 400 and "BROKER_LEDGER" in answer.body["message"]


# --------------------------------------------------------------------------- presenting the token


def test_bearer_token_on_post_uploads(sb: Any, audit_stream: io.StringIO) -> None:
    token = token_for(sb, user="alice")
    answer = call(sb, "POST", "/uploads", AVATAR, api_key=None, headers=bearer(token))
    assert answer.status == 200, answer
    rec = audit_lines(audit_stream)[-1]
    schemas.validator("audit").validate(rec)
    assert rec["event"] == "upload" and rec["decision"] == "allowed" and rec["client"] == "web-app"
    assert rec["user"] == "alice" and rec["session"] == audit_lines(audit_stream)[0]["session"]
    never_shows(audit_stream, token)


def test_path_token_on_post_uploads(sb: Any, audit_stream: io.StringIO) -> None:
    token = token_for(sb, user="alice")
    answer = call(sb, "POST", f"/s/{token}/uploads", AVATAR, api_key=None)
    assert answer.status == 200, answer
    never_shows(audit_stream, token)


@pytest.mark.parametrize("form", ["bearer", "path"])
def test_companion_params_with_a_session(sb: Any, audit_stream: io.StringIO, form: str) -> None:
    token = token_for(sb, user="alice")
    query = {"filename": "me.png", "type": "image/png", "metadata[profile]": "avatars"}
    if form == "bearer":
        answer = call(sb, "GET", "/s3/params", api_key=None, headers=bearer(token), query=query)
    else:
        answer = call(sb, "GET", f"/s/{token}/s3/params", api_key=None, query=query)
    assert answer.status == 200, answer
    assert answer.body["method"] == "POST"
    rec = audit_lines(audit_stream)[-1]
    assert rec["protocol"] == "companion" and rec["user"] == "alice" and "session" in rec
    never_shows(audit_stream, token)


@pytest.mark.parametrize("form", ["bearer", "path"])
def test_fineuploader_key_with_a_session(sb: Any, audit_stream: io.StringIO, form: str) -> None:
    token = token_for(sb, user="alice")
    body = {"filename": "clip.mp4", "content_type": "video/mp4", "size": 6 * 1024 * 1024, "profile": "videos"}
    if form == "bearer":
        answer = call(sb, "POST", "/fineuploader/key", body, api_key=None, headers=bearer(token))
    else:
        answer = call(sb, "POST", f"/s/{token}/fineuploader/key", body, api_key=None)
    assert answer.status == 200, answer
    never_shows(audit_stream, token)


def test_grant_status_with_a_session(sb: Any) -> None:
    token = token_for(sb)
    grant = call(sb, "POST", "/uploads", AVATAR, api_key=None, headers=bearer(token)).body
    answer = call(sb, "GET", f"/s/{token}/uploads/{grant['grant_id']}", api_key=None)
    assert answer.status != 401, answer


def test_a_session_sees_the_status_of_its_own_users_grants_only(make: Callable[..., Any], tmp_path: Any) -> None:
    from broker.ledger.sqlite import SqliteLedger

    broker = make(ledger=SqliteLedger(tmp_path / "ledger.db"))
    alice, bob = token_for(broker, user="alice"), token_for(broker, user="bob")
    hers = call(broker, "POST", "/uploads", AVATAR, api_key=None, headers=bearer(alice)).body["grant_id"]
    backend = call(broker, "POST", "/uploads", AVATAR).body["grant_id"]  # the app backend's own, no user

    def status(grant_id: str, token: str | None) -> int:
        headers = bearer(token) if token else None
        return call(broker, "GET", f"/uploads/{grant_id}", api_key=None if token else WEB_KEY, headers=headers).status

    assert [status(hers, alice), status(hers, bob), status(backend, alice)] == [200, 404, 404]
    assert [status(hers, None), status(backend, None)] == [200, 200]  # the backend's API key sees them all


def test_preflight_through_the_path_form(sb: Any) -> None:
    token = token_for(sb)
    answer = call(sb, "OPTIONS", f"/s/{token}/uploads", api_key=None, headers={"origin": "http://localhost:8000"})
    assert answer.status == 204 and "POST" in answer.headers["Access-Control-Allow-Methods"]


def test_an_authorizers_bearer_jwt_is_not_a_session(sb: Any) -> None:
    answer = call(sb, "POST", "/uploads", AVATAR, headers={"authorization": "Bearer eyJhbGciOi.x.y"})
    assert answer.status == 200, answer  # the API key identifies; the JWT is the authorizer's business


# --------------------------------------------------------------------------- what a token cannot do


def test_api_key_and_token_together_are_ambiguous(sb: Any) -> None:
    token = token_for(sb)
    answer = call(sb, "POST", "/uploads", AVATAR, api_key=WEB_KEY, headers=bearer(token))
    assert answer.status == 400 and "not both" in answer.body["message"]
    answer = call(sb, "POST", f"/s/{token}/uploads", AVATAR, api_key=ACME_KEY)
    assert answer.status == 400


def test_a_token_is_its_clients_only(sb: Any) -> None:
    token = token_for(sb)
    answer = call(sb, "POST", "/uploads", {**AVATAR, "profile": "invoices"}, api_key=None, headers=bearer(token))
    assert answer.status == 403 and answer.body["client"] == "web-app"


def test_profiles_outside_the_session_are_denied(sb: Any, audit_stream: io.StringIO) -> None:
    token = token_for(sb, profiles=["documents"])
    answer = call(sb, "POST", "/uploads", AVATAR, api_key=None, headers=bearer(token))
    assert answer.status == 403 and answer.body["check"] == "session_profile_not_allowed", answer
    assert audit_lines(audit_stream)[-1]["check"] == "session_profile_not_allowed"


def test_an_expired_token_says_so(make: Callable[..., Any]) -> None:
    from datetime import timedelta

    clock = [NOW]
    broker = make(clock=lambda: clock[0])
    token = token_for(broker, ttl=60)
    clock[0] = NOW + timedelta(seconds=60)
    answer = call(broker, "POST", "/uploads", AVATAR, api_key=None, headers=bearer(token))
    assert answer.status == 401 and "expired" in answer.body["message"]


@pytest.mark.parametrize("alter", [
    pytest.param(lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), id="mac"),
    pytest.param(lambda t: t[:5] + ("x" if t[5] != "x" else "y") + t[6:], id="payload"),
    pytest.param(lambda t: t + "=", id="padding"),
    pytest.param(lambda t: "v1.e30.AAAA", id="made_up"),
])
def test_altered_tokens_are_401(sb: Any, alter: Callable[[str], str], audit_stream: io.StringIO) -> None:
    token = token_for(sb)
    altered = alter(token)
    for answer in (call(sb, "POST", "/uploads", AVATAR, api_key=None, headers=bearer(altered)),
                   call(sb, "POST", f"/s/{altered}/uploads", AVATAR, api_key=None)):
        assert answer.status == 401, answer
    never_shows(audit_stream, token, altered)


def test_a_token_from_another_broker_secret_is_401(make: Callable[..., Any]) -> None:
    token = token_for(make(session_secret=b"X" * 32))
    answer = call(make(), "POST", "/uploads", AVATAR, api_key=None, headers=bearer(token))
    assert answer.status == 401 and "not issued by this broker" in answer.body["message"]


def test_rotation_accepts_the_previous_secret(make: Callable[..., Any]) -> None:
    old = make(session_secret=b"O" * 32)
    token = token_for(old)
    rotated = make(session_secret=b"N" * 32, session_secret_previous=b"O" * 32)
    assert call(rotated, "POST", "/uploads", AVATAR, api_key=None, headers=bearer(token)).status == 200
    fresh = token_for(rotated)
    assert call(old, "POST", "/uploads", AVATAR, api_key=None, headers=bearer(fresh)).status == 401


def test_max_bytes_caps_each_file(sb: Any) -> None:
    token = token_for(sb, max_bytes=1000)
    answer = call(sb, "POST", "/uploads", AVATAR, api_key=None, headers=bearer(token))  # 1200 bytes
    assert answer.status == 413 and answer.body["check"] == "too_large" and "session" in answer.body["message"]
    answer = call(sb, "POST", "/uploads", {**AVATAR, "size": 900}, api_key=None, headers=bearer(token))
    assert answer.status == 200 and answer.body["max_bytes"] == 1000
    undeclared = {k: v for k, v in AVATAR.items() if k != "size"}
    answer = call(sb, "POST", "/uploads", undeclared, api_key=None, headers=bearer(token))
    assert answer.status == 200 and answer.body["max_bytes"] == 1000  # S3 holds the upload to it


def test_max_files_is_counted_by_the_ledger(make: Callable[..., Any], tmp_path: Any) -> None:
    from broker.ledger.sqlite import SqliteLedger

    broker = make(ledger=SqliteLedger(tmp_path / "l.db"))
    token = token_for(broker, max_files=2)
    for _ in range(2):
        assert call(broker, "POST", "/uploads", AVATAR, api_key=None, headers=bearer(token)).status == 200
    answer = call(broker, "POST", "/uploads", AVATAR, api_key=None, headers=bearer(token))
    assert answer.status == 429 and "session" in answer.body["message"], answer
    other = token_for(broker, max_files=2)  # another session counts on its own
    assert call(broker, "POST", "/uploads", AVATAR, api_key=None, headers=bearer(other)).status == 200


# --------------------------------------------------------------------------- multipart's later steps


@pytest.fixture
def mb(make_broker: Callable[..., Any]) -> Any:
    """The session rules plus ``big``: multipart, one folder per user."""
    doc = yaml.safe_load(session_rules())
    doc["clients"]["web-app"]["rules"].append(
        {"name": "big", "key": "big/{client}/{user}/{uuid}{ext}", "max_bytes": "1 GiB", "multipart": True,
         "content_types": ["video/mp4"], "extensions": [".mp4"]})
    return make_broker(yaml.safe_dump(doc, sort_keys=False), grant_secret=SECRET, new_id=unique_id,
                       session_secret=SESSION_SECRET)


def _started(broker: Any, token: str, profile: str, filename: str, content_type: str) -> tuple[str, str]:
    answer = call(broker, "POST", "/s3/multipart", {"filename": filename, "type": content_type,
                                                    "metadata": {"profile": profile}},
                  api_key=None, headers=bearer(token))
    assert answer.status == 200, answer
    return answer.body["key"], answer.body["uploadId"]


def _sign_part(broker: Any, token: str, key: str, upload_id: str) -> Any:
    return call(broker, "GET", f"/s3/multipart/{upload_id}/1", api_key=None, headers=bearer(token),
                query={"key": key})


def test_a_multipart_upload_continues_only_in_its_own_users_session(mb: Any, audit_stream: io.StringIO) -> None:
    """Signing a part re-checks the session: its user (for a {user} key) and its profiles."""
    sb = mb
    alice = token_for(sb, user="alice")
    key, upload_id = _started(sb, alice, "big", "film.mp4", "video/mp4")
    assert key.startswith("big/web-app/alice/")
    assert _sign_part(sb, alice, key, upload_id).status == 200
    bob = _sign_part(sb, token_for(sb, user="bob"), key, upload_id)
    assert bob.status == 403 and bob.body["check"] == "key_not_granted", bob
    assert "another user's upload" in bob.body["message"]
    nobody = _sign_part(sb, token_for(sb), key, upload_id)
    assert nobody.status == 403 and nobody.body["check"] == "user_required", nobody
    avatars_only = _sign_part(sb, token_for(sb, user="alice", profiles=["avatars"]), key, upload_id)
    assert avatars_only.status == 403 and avatars_only.body["check"] == "session_profile_not_allowed", avatars_only
    denied = [r for r in audit_lines(audit_stream) if r.get("decision") == "denied"]
    assert [(r["protocol"], r["check"]) for r in denied] == [
        ("companion", "key_not_granted"), ("companion", "user_required"),
        ("companion", "session_profile_not_allowed")]


def test_a_per_user_upload_needs_its_user_with_an_api_key_too(mb: Any) -> None:
    """As when it was started: a {user} key is continued only by a call that names that user."""
    sb = mb
    key, upload_id = _started(sb, token_for(sb, user="alice"), "big", "film.mp4", "video/mp4")
    answer = call(sb, "GET", f"/s3/multipart/{upload_id}/1", query={"key": key})
    assert answer.status == 403 and answer.body["check"] == "user_required", answer


# --------------------------------------------------------------------------- {user} in keys


def test_user_keys_are_per_user(sb: Any) -> None:
    alice = call(sb, "POST", "/uploads", MINE, api_key=None, headers=bearer(token_for(sb, user="alice@x.org")))
    bob = call(sb, "POST", "/uploads", MINE, api_key=None, headers=bearer(token_for(sb, user="bob")))
    assert alice.status == bob.status == 200, (alice, bob)
    assert alice.body["key"].startswith("users/web-app/alice_40x.org/")
    assert bob.body["key"].startswith("users/web-app/bob/")


def test_user_keys_need_a_user(sb: Any) -> None:
    answer = call(sb, "POST", "/uploads", MINE, api_key=None, headers=bearer(token_for(sb)))
    assert answer.status == 403 and answer.body["check"] == "user_required", answer
    answer = call(sb, "POST", "/uploads", MINE)  # the API key alone names no user
    assert answer.status == 403 and answer.body["check"] == "user_required", answer


@pytest.mark.parametrize("principals, status, start", [
    pytest.param(("group:mobile-users", "sub:../../etc"), 200, "users/mobile/_2e_2e_2f._2e_2fetc/", id="hostile_sub"),
    pytest.param(("group:mobile-users", "sub:3f2a-99"), 200, "users/mobile/3f2a-99/", id="sub"),
    pytest.param(("group:mobile-users",), 403, None, id="no_sub"),
])
def test_user_keys_from_the_authorizers_sub(sb: Any, principals: tuple[str, ...], status: int,
                                            start: str | None) -> None:
    import json

    from broker.web import HttpRequest

    req = HttpRequest("POST", "/uploads", {"content-type": "application/json"}, {},
                      json.dumps({**MINE, "profile": "mine"}).encode(), "203.0.113.9", "r", principals=principals)
    resp = sb.handle(req)
    body = json.loads(resp.body)
    assert resp.status == status, body
    if start:
        assert body["key"].startswith(start) and ".." not in body["key"]
    else:
        assert body["check"] == "user_required"


def test_the_verifier_recognises_user_keys(sb: Any) -> None:
    from broker.core.grants import rules_for_key

    key = call(sb, "POST", "/uploads", MINE, api_key=None, headers=bearer(token_for(sb, user="a..b"))).body["key"]
    client = sb.rules.current().clients["web-app"]
    assert [r.name for r in rules_for_key(client, key)] == ["personal"]


# --------------------------------------------------------------------------- server-only keys


def test_a_server_only_key_from_a_browser_is_refused(sb: Any, audit_stream: io.StringIO) -> None:
    invoice = {"filename": "i.pdf", "content_type": "application/pdf", "size": 100}
    answer = call(sb, "POST", "/uploads", invoice, api_key=ACME_KEY, headers={"origin": "https://evil.example"})
    assert answer.status == 403 and answer.body["check"] == "server_only_key", answer
    assert "POST /sessions" in answer.body["message"]
    schemas.validator("error").validate(answer.body)
    rec = audit_lines(audit_stream)[-1]
    schemas.validator("audit").validate(rec)
    assert rec["check"] == "server_only_key" and rec["client"] == "partner-acme" and rec["status"] == 403
    assert call(sb, "POST", "/uploads", invoice, api_key=ACME_KEY).status == 200  # from a server: fine
    token = mint(sb, api_key=ACME_KEY).body["token"]
    answer = call(sb, "POST", "/uploads", invoice, api_key=None,
                  headers={**bearer(token), "origin": "https://app.example"})
    assert answer.status == 200, answer  # the browser's way: a session
    never_shows(audit_stream, token)


def test_other_clients_keys_still_work_from_browsers(sb: Any) -> None:
    answer = call(sb, "POST", "/uploads", AVATAR, headers={"origin": "http://localhost:8000"})
    assert answer.status == 200
