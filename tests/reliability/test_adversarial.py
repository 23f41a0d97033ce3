"""Named hostile inputs, over HTTP against this suite's broker and, for forms, the real store.

Each refusal is checked the same way (``assert_refused``): a 4xx, a JSON body matching
``error.schema.json``, no form in it, and exactly one audit line for its request id saying
``denied`` or ``error`` with the same status and no key. Where the answer is not the broker's
(waitress's header limit, the store's checks of a posted form) the test says so.
"""
from __future__ import annotations

import http.client
import io
import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest
import requests
import yaml

from reliability.oracle import body_violations, client_for_key, decode_policy, grant_violations
from tests.conftest import ACME_KEY, ROOT, WEB_KEY
from tests.reliability.conftest import BOGUS_KEY

AVATAR = {"filename": "me.png", "content_type": "image/png", "size": 1200}
TEN_MB = 10 * 1000 * 1000


def send(server: Any, body: Any, *, api_key: str | None = WEB_KEY, path: str = "/uploads",
         headers: dict[str, str] | None = None, method: str = "POST") -> requests.Response:
    """One request to the server; ``body`` is JSON-encoded unless it is already bytes."""
    hdrs = {"content-type": "application/json", **(headers or {})}
    if api_key:
        hdrs["x-api-key"] = api_key
    data = body if isinstance(body, (bytes, type(None))) or hasattr(body, "__next__") else json.dumps(body)
    return requests.request(method, f"{server.url}{path}", data=data, headers=hdrs, timeout=30)


def audit_record(server: Any, request_id: str) -> dict[str, Any]:
    """The one audit record of a request (fails if there is none or more than one)."""
    found = [r for r in server.audit_records() if r["request_id"] == request_id]
    assert len(found) == 1, f"{len(found)} audit lines for request {request_id}"
    return found[0]


def assert_refused(server: Any, response: requests.Response, status: int | tuple[int, ...],
                   error: str | None = None, watch: Any = None) -> dict[str, Any]:
    """A clear 4xx with a JSON error body, no form, and one audit line saying so."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert body_violations(response.status_code, response.content) == [], response.text[:300]
    body = response.json()
    assert "fields" not in body and "policy" not in response.text and "x-amz-signature" not in response.text
    if error is not None:
        assert body["error"] == error, body
    rec = audit_record(server, response.headers["X-Request-Id"])
    assert rec["decision"] in ("denied", "error") and rec["status"] == response.status_code, rec
    assert "key" not in rec and "conditions" not in rec, rec
    if watch is not None:
        watch.count("adversarial: refused requests checked")
    return body


# --------------------------------------------------------------------------- filenames


@pytest.mark.parametrize("filename", [
    pytest.param("../../etc/passwd.png", id="dotdot_slash"),
    pytest.param("..\\..\\windows\\win.png", id="dotdot_backslash"),
    pytest.param("/etc/passwd.png", id="absolute"),
    pytest.param("avatars/../../../other-client/x.png", id="nested_dotdot"),
    pytest.param("C:\\temp\\x.png", id="windows_drive"),
    pytest.param("..", id="just_dotdot"),
    pytest.param(" . ", id="dot_and_spaces"),
])
@pytest.mark.parametrize("profile", ["avatars", "documents"])  # documents puts {filename} in the key
def test_path_traversal_in_filename(rel_server: Any, watch: Any, filename: str, profile: str) -> None:
    ctype = "image/png" if profile == "avatars" else "application/pdf"
    name = filename if profile == "avatars" else filename.replace(".png", ".pdf")
    response = send(rel_server, {"filename": name, "content_type": ctype, "profile": profile})
    body = assert_refused(rel_server, response, 400, "invalid_request", watch)
    assert body["path"] == "$.filename"


@pytest.mark.parametrize("filename", [
    pytest.param("%2e%2e%2fetc%2fpasswd.pdf", id="percent_dotdot_slash"),
    pytest.param("%2E%2E%2Fx.pdf", id="percent_upper_case"),
    pytest.param("..%2fx.pdf", id="plain_dots_encoded_slash"),
    pytest.param("%252e%252e%252fx.pdf", id="double_encoded"),
    pytest.param("..%5cx.pdf", id="encoded_backslash"),
    pytest.param("x%00.pdf", id="encoded_nul"),
    pytest.param("%2e%2e", id="encoded_dotdot_alone"),
    pytest.param("%e2%88%95x.pdf", id="encoded_homoglyph_slash"),
])
def test_encoded_traversal_in_filename(rel_server: Any, watch: Any, filename: str) -> None:
    response = send(rel_server, {"filename": filename, "content_type": "application/pdf",
                                 "profile": "documents"})
    body = assert_refused(rel_server, response, 400, "invalid_request", watch)
    assert body["path"] == "$.filename"


def test_a_percent_sign_alone_is_a_plain_filename(rel_server: Any) -> None:
    """The encoded-traversal check does not refuse honest names that contain '%'."""
    asked = {"filename": "100% sure.pdf", "content_type": "application/pdf", "profile": "documents"}
    response = send(rel_server, asked)
    assert response.status_code == 200, response.text
    grant = response.json()
    assert grant["key"].endswith("/100-sure.pdf")
    assert grant_violations(rel_server.ruleset, client_for_key(rel_server.ruleset, WEB_KEY), asked, grant,
                            now=datetime.now(timezone.utc)) == []


@pytest.mark.parametrize("filename", [
    pytest.param("photo\u202egnp.exe", id="rtl_override"),
    pytest.param("a\u2066b\u2069.png", id="bidi_isolate"),
    pytest.param("x\u2215..\u2215y.png", id="division_slash"),
    pytest.param("x\uff0fy.png", id="fullwidth_solidus"),
    pytest.param("x\u2044y.png", id="fraction_slash"),
    pytest.param("x\uff3cy.png", id="fullwidth_backslash"),
    pytest.param("x\u0000.png", id="nul"),
    pytest.param("x\u200d.png", id="zero_width_joiner"),
    pytest.param("x\u2028y.png", id="line_separator"),
    pytest.param("x\ud800.png", id="lone_surrogate"),
    pytest.param("x\u001b[31m.png", id="terminal_escape"),
])
def test_unicode_tricks_in_filename(rel_server: Any, watch: Any, filename: str) -> None:
    raw = json.dumps({**AVATAR, "filename": filename}).encode()  # \u escapes: valid JSON and UTF-8
    response = send(rel_server, raw)
    body = assert_refused(rel_server, response, 400, "invalid_request", watch)
    assert body["path"] == "$.filename"


@pytest.mark.parametrize("raw", [
    pytest.param(b'{"filename": "a\xc0\xaf.png", "content_type": "image/png"}', id="overlong_slash"),
    pytest.param(b'{"filename": "\xc0\xae\xc0\xae.png", "content_type": "image/png"}', id="overlong_dots"),
    pytest.param(b'{"filename": "a\xe0\x80\xaf.png", "content_type": "image/png"}', id="overlong_3_byte_slash"),
    pytest.param(b'{"filename": "a\xc0\x80.png", "content_type": "image/png"}', id="overlong_nul"),
    pytest.param(b'{"filename": "a\xed\xa0\x80.png", "content_type": "image/png"}', id="encoded_surrogate"),
    pytest.param(b'{"filename": "a\xff.png", "content_type": "image/png"}', id="invalid_byte"),
    pytest.param('{"filename": "a.png", "content_type": "image/png"}'.encode("utf-16"), id="utf16"),
])
def test_overlong_and_invalid_utf8_in_body(rel_server: Any, watch: Any, raw: bytes) -> None:
    body = assert_refused(rel_server, send(rel_server, raw), 400, "invalid_request", watch)
    assert "UTF-8" in body["message"]


# --------------------------------------------------------------------------- size and structure


@pytest.mark.parametrize("chunked", [False, True], ids=["content_length", "chunked"])
def test_ten_megabyte_body(rel_server: Any, watch: Any, chunked: bool) -> None:
    """waitress reads the body, the broker refuses it by size: 413, audited (was a 500)."""
    payload = b'{"filename": "' + b"a" * TEN_MB + b'.png", "content_type": "image/png"}'
    data: Any = (payload[i:i + 1_000_000] for i in range(0, len(payload), 1_000_000)) if chunked else payload
    started = time.monotonic()
    response = send(rel_server, data)
    assert time.monotonic() - started < 20
    assert_refused(rel_server, response, 413, "payload_too_large", watch)


def test_ten_megabyte_header(rel_server: Any, watch: Any) -> None:
    """waitress refuses headers over 256 KiB itself, at once: 431, before the broker sees them.

    The broker cannot audit what never reaches it (documented in docs/RELIABILITY.md); a header
    just under waitress's limit does reach it and is answered normally.
    """
    before = len(rel_server.audit_records())
    started = time.monotonic()
    response = send(rel_server, AVATAR, headers={"x-padding": "a" * TEN_MB})
    assert time.monotonic() - started < 20
    assert response.status_code == 431 and "fields" not in response.text
    assert len(rel_server.audit_records()) == before
    watch.count("adversarial: refused requests checked")
    near_limit = send(rel_server, {"filename": "x"}, headers={"x-padding": "a" * 200_000})
    assert_refused(rel_server, near_limit, 400, "invalid_request", watch)


def test_ten_megabyte_header_in_a_lambda_event(watch: Any, make_broker: Any, audit_stream: Any) -> None:
    """Behind API Gateway the same header reaches the function: 400, audited."""
    from broker.adapters import apigw

    broker = make_broker()
    event = json.loads((ROOT / "tests" / "events" / "apigw-v1-proxy.json").read_text())
    event["headers"]["x-padding"] = "a" * TEN_MB
    result = apigw.handle(broker, event)
    assert result["statusCode"] == 400
    assert body_violations(400, result["body"].encode()) == []
    (rec,) = [json.loads(line) for line in audit_stream.getvalue().splitlines()]
    assert rec["decision"] == "error" and rec["status"] == 400 and "key" not in rec
    watch.count("adversarial: refused requests checked")


def _nested(depth: int, inner: str = "1") -> str:
    return '{"a":' * depth + inner + "}" * depth


@pytest.mark.parametrize("raw, status", [
    pytest.param(b"[" * 60_000 + b"]" * 60_000, 413, id="deep_array_over_body_limit"),
    pytest.param(b"[" * 30_000 + b"]" * 30_000, 400, id="deep_array_past_recursion_limit"),
    pytest.param(_nested(990).encode(), 400, id="deep_object_990"),
    pytest.param(('{"filename":"a.png","content_type":"image/png","metadata":' + _nested(989) + "}").encode(),
                 400, id="deep_in_metadata_was_500"),
    pytest.param(('{"filename":"a.png","content_type":"image/png","metadata":{"a":' + "[" * 989 + "]" * 989
                  + "}}").encode(), 400, id="deep_list_in_metadata"),
    pytest.param(('{"filename":' + "[" * 990 + "]" * 990 + ',"content_type":"image/png"}').encode(),
                 400, id="deep_filename"),
    pytest.param(b'{"filename":"a.png","content_type":"image/png","size":1e999999}', 400, id="exponent_1e999999"),
    pytest.param(b'{"filename":"a.png","content_type":"image/png","size":' + b"1" + b"0" * 10_000 + b"}",
                 400, id="integer_10_pow_10000"),
    pytest.param(b'{"filename":"a.png","content_type":"image/png","size":-1e999999}', 400, id="minus_inf"),
    pytest.param(b'{"filename":"a.png","content_type":"image/png","size":NaN}', 400, id="nan"),
    pytest.param(b'{"filename":"a.png","content_type":"image/png","size":Infinity}', 400, id="infinity"),
    pytest.param(b'{"filename":"a.png","content_type":"image/png","size":5497558138881}', 400, id="size_over_5_tib"),
    pytest.param(json.dumps({f"k{i}": i for i in range(4000)}).encode(), 400, id="4000_keys"),
    pytest.param(json.dumps({"filename": "a" * 60_000 + ".png", "content_type": "image/png"}).encode(),
                 400, id="long_filename"),
])
def test_json_bombs(rel_server: Any, watch: Any, raw: bytes, status: int) -> None:
    assert_refused(rel_server, send(rel_server, raw), status, watch=watch)


# --------------------------------------------------------------------------- content types


@pytest.mark.parametrize("content_type", [
    pytest.param("image/png\r\nX-Injected: 1", id="header_injection"),
    pytest.param("image/png, text/html", id="two_types"),
    pytest.param("text/html; x=image/png", id="type_smuggled_in_a_parameter"),
    pytest.param('image/png; charset="a;b"', id="quoted_semicolon"),
    pytest.param("image/png; charset=", id="empty_parameter"),
    pytest.param("image/*", id="wildcard_asked"),
    pytest.param("*/*", id="any_asked"),
    pytest.param("image/svg+xml", id="svg_not_allowed"),
    pytest.param("text/html", id="html_not_allowed"),
    pytest.param("image/png ; ; x", id="malformed_parameters"),
    pytest.param("image/pn\u0261", id="homoglyph_in_type"),
])
def test_hostile_content_types_are_refused(rel_server: Any, watch: Any, content_type: str) -> None:
    response = send(rel_server, {**AVATAR, "content_type": content_type})
    assert_refused(rel_server, response, (400, 403), watch=watch)


@pytest.mark.parametrize("content_type, signed", [
    pytest.param("IMAGE/PNG", "image/png", id="upper_case"),
    pytest.param("Image/Png; Charset=\"UTF-8\"", "image/png; charset=utf-8", id="mixed_case_quoted_charset"),
    pytest.param("image/png; x=y; boundary=z", "image/png", id="unknown_parameters_dropped"),
    pytest.param("  image/png  ", "image/png", id="surrounding_spaces"),
])
def test_content_types_with_parameters_and_mixed_case_are_signed_canonical(
        rel_server: Any, content_type: str, signed: str) -> None:
    """Harmless variants are granted, but the form binds one exact, canonical Content-Type."""
    asked = {**AVATAR, "content_type": content_type}
    response = send(rel_server, asked)
    assert response.status_code == 200, response.text
    grant = response.json()
    assert grant["content_type"] == grant["fields"]["Content-Type"] == signed
    assert {"Content-Type": signed} in decode_policy(grant["fields"]["policy"])["conditions"]
    assert grant_violations(rel_server.ruleset, client_for_key(rel_server.ruleset, WEB_KEY), asked, grant,
                            now=datetime.now(timezone.utc)) == []


# --------------------------------------------------------------------------- identity


@pytest.mark.parametrize("api_key, profile, body", [
    pytest.param(WEB_KEY, "invoices", {"filename": "i.pdf", "content_type": "application/pdf"},
                 id="web_key_acme_invoices"),
    pytest.param(ACME_KEY, "avatars", AVATAR, id="acme_key_web_avatars"),
    pytest.param(ACME_KEY, "photos", {"filename": "p.jpg", "content_type": "image/jpeg"},
                 id="acme_key_mobile_photos"),
    pytest.param(WEB_KEY, "statements", {"filename": "s.pdf", "content_type": "application/pdf"},
                 id="web_key_acme_statements"),
])
def test_a_clients_key_against_another_clients_profile(rel_server: Any, watch: Any, api_key: str,
                                                        profile: str, body: dict[str, Any]) -> None:
    response = send(rel_server, {**body, "profile": profile}, api_key=api_key)
    refusal = assert_refused(rel_server, response, 403, "denied", watch)
    assert refusal["check"] == "unknown_profile"
    assert refusal["client"] == client_for_key(rel_server.ruleset, api_key).id


@pytest.mark.parametrize("api_key", [
    pytest.param(BOGUS_KEY, id="unknown"),
    pytest.param("", id="empty"),
    pytest.param(WEB_KEY.upper(), id="upper_case"),
    pytest.param(WEB_KEY[:-1], id="truncated"),
    pytest.param(WEB_KEY + "x", id="extended"),
    pytest.param(WEB_KEY.replace("-", " "), id="inner_spaces"),
    pytest.param(f"{WEB_KEY},{WEB_KEY}", id="listed_twice"),
])
def test_wrong_api_keys(rel_server: Any, watch: Any, api_key: str) -> None:
    response = send(rel_server, AVATAR, headers={"x-api-key": api_key}, api_key=None)
    assert_refused(rel_server, response, 401, "unauthenticated", watch)


def test_two_api_key_headers_identify_nobody(rel_server: Any, watch: Any) -> None:
    """A valid key next to a bogus one is not picked out of the pair."""
    host, port = rel_server.url.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    body = json.dumps(AVATAR).encode()
    conn.putrequest("POST", "/uploads")
    for name, value in (("content-type", "application/json"), ("x-api-key", BOGUS_KEY),
                        ("x-api-key", WEB_KEY), ("content-length", str(len(body)))):
        conn.putheader(name, value)
    conn.endheaders(body)
    raw = conn.getresponse()
    response = requests.Response()
    response.status_code, response._content = raw.status, raw.read()
    response.headers.update(dict(raw.getheaders()))
    conn.close()
    assert_refused(rel_server, response, 401, "unauthenticated", watch)


@pytest.mark.parametrize("field", ["key", "bucket", "acl", "expires_in", "max_bytes", "fields",
                                   "success_action_redirect", "x-amz-meta-owner"])
def test_a_client_cannot_choose_what_the_broker_decides(rel_server: Any, watch: Any, field: str) -> None:
    response = send(rel_server, {**AVATAR, field: "uploads/other-client/x.png"})
    assert_refused(rel_server, response, 400, "invalid_request", watch)


# --------------------------------------------------------------------------- forms at the store


def post_form(grant: dict[str, Any], data: bytes, **override: str) -> requests.Response:
    """Post a presigned form to the store: every field as a plain field, the file last."""
    fields = {**grant["fields"], **override}
    files = [(name, (None, value)) for name, value in fields.items()]
    files.append(("file", ("upload.bin", data, fields.get("Content-Type", "application/octet-stream"))))
    return requests.post(grant["url"], files=files, timeout=30)


@pytest.fixture
def store_broker(store: Any, watch: Any) -> Callable[..., Any]:
    """A broker in process, signing for the real store, with edited rules and a chosen clock."""
    from broker.service import assemble
    from broker.audit import AuditLog
    from broker.s3.store import S3Store
    from broker.config.sources import RulesProvider, StaticSource

    def make(edit: Callable[[dict[str, Any]], None] | None = None,
             clock: Callable[[], datetime] | None = None) -> Any:
        doc = yaml.safe_load((ROOT / "rules.yaml").read_text())
        if edit:
            edit(doc)
        provider = RulesProvider(StaticSource(yaml.safe_dump(doc)), reload_seconds=3600)
        provider.refresh()
        stream = io.StringIO()
        watch.streams.append(("store_broker audit stream", stream))
        return assemble(provider, S3Store(store.s3_client()), AuditLog(stream=stream),
                        clock=clock or (lambda: datetime.now(timezone.utc)))

    return make


def ask(broker: Any, body: dict[str, Any], api_key: str = WEB_KEY) -> dict[str, Any]:
    """POST /uploads in process; returns the 200 body."""
    from broker.web import HttpRequest

    response = broker.handle(HttpRequest("POST", "/uploads", {"content-type": "application/json",
                                                              "x-api-key": api_key}, {},
                                         json.dumps(body).encode(), "127.0.0.1", ""))
    assert response.status == 200, response.body
    return json.loads(response.body)


def _expires_in(seconds: int) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        doc["clients"]["web-app"]["rules"][0]["expires_in"] = seconds
    return edit


def test_expired_grant_is_refused_by_the_store(store_broker: Any, watch: Any) -> None:
    grant = ask(store_broker(_expires_in(1)), AVATAR)
    time.sleep(2.1)
    response = post_form(grant, b"\x89PNG" + b"0" * 100)
    assert response.status_code == 403, response.text
    assert "expired" in response.text.lower()
    watch.count("adversarial: refused requests checked")


def test_replayed_form_only_rewrites_its_own_key_until_it_expires(rel_server: Any, watch: Any) -> None:
    """A form is a bearer token for one key until ``expires_at``: replaying it cannot reach any
    other key, type or size; S3 (and SeaweedFS) accept the same form again within its lifetime."""
    response = send(rel_server, AVATAR)
    assert response.status_code == 200
    grant = response.json()
    data = b"\x89PNG" + b"1" * 100
    first, replay = post_form(grant, data), post_form(grant, data)
    assert (first.status_code, replay.status_code) == (201, 201), (first.text, replay.text)
    listed = rel_server.s3.list_objects_v2(Bucket=grant["bucket"], Prefix=grant["key"].rsplit("/", 1)[0])
    assert [o["Key"] for o in listed.get("Contents", []) if o["Key"] == grant["key"]] == [grant["key"]]
    other_key = grant["key"].rsplit("/", 1)[0] + "/" + "f" * 32 + ".png"
    for refused in (post_form(grant, data, key=other_key),
                    post_form(grant, data, **{"Content-Type": "text/html"}),
                    post_form(grant, b"x" * (grant["max_bytes"] + 1))):
        assert refused.status_code in (400, 403), refused.text
        watch.count("adversarial: refused requests checked")
    assert rel_server.s3.list_objects_v2(Bucket=grant["bucket"], Prefix=other_key).get("KeyCount") == 0


@pytest.mark.parametrize("skew_seconds, store_status", [
    pytest.param(-600, 403, id="clock_10_minutes_behind"),
    pytest.param(3600, 201, id="clock_1_hour_ahead"),
])
def test_clock_skew(store_broker: Any, monkeypatch: pytest.MonkeyPatch, skew_seconds: int,
                    store_status: int) -> None:
    """The whole host clock is skewed (the broker's and botocore's): what the grant says.

    Behind by more than the rule's lifetime: the form is dead on arrival (the store refuses it).
    Ahead: the form lives longer than the rule says, by the skew: keep hosts on NTP (Lambda is).
    """
    import botocore.auth
    import botocore.signers

    skew = timedelta(seconds=skew_seconds)
    real = datetime.now(timezone.utc)

    def skewed() -> datetime:
        return datetime.now(timezone.utc) + skew

    for module in (botocore.auth, botocore.signers):
        monkeypatch.setattr(module, "get_current_datetime", lambda: (skewed()).replace(tzinfo=None))
    grant = ask(store_broker(clock=skewed), AVATAR)
    expires = datetime.strptime(grant["expires_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    lifetime = (expires - real).total_seconds()
    assert abs(lifetime - (300 + skew_seconds)) < 30, lifetime  # the rule's 300 s, shifted by the skew
    monkeypatch.undo()
    response = post_form(grant, b"\x89PNG" + b"2" * 100)
    assert response.status_code == store_status, response.text


# --------------------------------------------------------------------------- audit lines


def test_a_next_line_byte_in_a_header_stays_inside_one_audit_line(rel_server: Any, watch: Any) -> None:
    """waitress hands header bytes over as latin-1, so byte 0x85 arrives as U+0085 (NEL), which
    str.splitlines, JavaScript and some log viewers treat as a line break: the audit line must
    escape it, or a client could forge what looks like a second audit line."""
    host, port = rel_server.url.rsplit("/", 1)[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    forged = '{"decision":"allowed","client":"partner-acme"}'
    conn.request("POST", "/uploads", body=b"{", headers={
        "content-type": "application/json", "x-api-key": WEB_KEY, "user-agent": f"agent\x85{forged}"})
    raw = conn.getresponse()
    request_id = raw.getheader("X-Request-Id")
    raw.read()
    conn.close()
    assert raw.status == 400
    (line,) = [ln for ln in rel_server.audit_path.read_text().split("\n") if request_id in ln]
    assert len(line.splitlines()) == 1 and "\\u0085" in line, line
    assert json.loads(line)["user_agent"] == f"agent\x85{forged}"
    watch.count("adversarial: refused requests checked")


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"], ids=["line_separator", "paragraph_separator",
                                                                   "next_line"])
def test_line_separators_from_a_lambda_event_stay_inside_one_audit_line(make_broker: Any, audit_stream: Any,
                                                                       char: str) -> None:
    from broker.adapters import apigw

    event = json.loads((ROOT / "tests" / "events" / "apigw-v1-proxy.json").read_text())
    event["headers"]["User-Agent"] = f"a{char}b"
    event["body"] = "{"
    assert apigw.handle(make_broker(), event)["statusCode"] == 400
    text = audit_stream.getvalue()
    assert len(text.splitlines()) == 1 and json.loads(text)["user_agent"] == f"a{char}b"
