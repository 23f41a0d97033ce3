"""The pure half of signed callbacks: signatures, delivery ids, the payload and the URL check, as tables."""
from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from broker.core.callbacks import delivery_id, payload, sign, url_problem, verify

SECRET = b"whsec-test-0123456789"
OTHER = b"whsec-other-9876543210"
BODY = b'{"event":"upload.verified","key":"uploads/a.png"}'
T = 1_764_341_371


def test_the_signature_is_stripe_style_hmac_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET, f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, T, BODY) == f"t={T},v1={expected}"


def test_a_signature_verifies() -> None:
    assert verify(SECRET, sign(SECRET, T, BODY), BODY, now=T)


@pytest.mark.parametrize("header, body, secret, now", [
    pytest.param(sign(SECRET, T, BODY), BODY + b" ", SECRET, T, id="body_tampered"),
    pytest.param(sign(SECRET, T, BODY).replace(f"t={T}", f"t={T + 1}"), BODY, SECRET, T, id="timestamp_tampered"),
    pytest.param(sign(SECRET, T, BODY), BODY, OTHER, T, id="wrong_secret"),
    pytest.param(sign(SECRET, T, BODY), BODY, b"", T, id="empty_secret"),
    pytest.param(sign(SECRET, T, BODY), BODY, SECRET, T + 301, id="older_than_the_tolerance"),
    pytest.param(sign(SECRET, T, BODY), BODY, SECRET, T - 301, id="too_far_in_the_future"),
    pytest.param(sign(SECRET, T, BODY).split(",")[1], BODY, SECRET, T, id="no_timestamp"),
    pytest.param(f"t={T}", BODY, SECRET, T, id="no_signature"),
    pytest.param(f"t={T},t={T}," + sign(SECRET, T, BODY).split(",")[1], BODY, SECRET, T, id="two_timestamps"),
    pytest.param(sign(SECRET, T, BODY).replace("v1=", "v0="), BODY, SECRET, T, id="unknown_scheme_only"),
    pytest.param(sign(SECRET, T, BODY).upper().replace("T=", "t=").replace("V1=", "v1="), BODY, SECRET, T,
                 id="uppercase_hex"),
    pytest.param(f"t=-{T}," + sign(SECRET, T, BODY).split(",")[1], BODY, SECRET, T, id="negative_timestamp"),
    pytest.param("", BODY, SECRET, T, id="empty_header"),
    pytest.param("t=1,v1=é", BODY, SECRET, 1, id="non_ascii"),
    pytest.param(None, BODY, SECRET, T, id="no_header_at_all"),
])
def test_what_does_not_verify(header: str, body: bytes, secret: bytes, now: int) -> None:
    assert not verify(secret, header, body, now=now)


@pytest.mark.parametrize("now, tolerance, ok", [
    pytest.param(T + 300, 300, True, id="at_the_tolerance"),
    pytest.param(T + 301, 300, False, id="past_it"),
    pytest.param(T - 300, 300, True, id="clock_skew_the_other_way"),
    pytest.param(T + 3600, 7200, True, id="a_wider_tolerance"),
    pytest.param(T + 1, 0, False, id="no_tolerance"),
])
def test_tolerance(now: int, tolerance: int, ok: bool) -> None:
    assert verify(SECRET, sign(SECRET, T, BODY), BODY, now=now, tolerance=tolerance) is ok


def test_rotation_any_of_several_v1_values_verifies() -> None:
    old, new = sign(OTHER, T, BODY), sign(SECRET, T, BODY)
    header = f"{old},{new.split(',')[1]}"  # t=...,v1=<old>,v1=<new>
    assert verify(SECRET, header, BODY, now=T)
    assert verify(OTHER, header, BODY, now=T)
    assert not verify(b"third-secret", header, BODY, now=T)


def test_spaces_and_unknown_schemes_are_tolerated() -> None:
    mac = sign(SECRET, T, BODY).split(",")[1]
    assert verify(SECRET, f" t={T} , v0=abc , {mac} ", BODY, now=T)


def test_an_empty_secret_never_signs() -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        sign(b"", T, BODY)


def test_the_delivery_id_is_stable_and_per_object_version() -> None:
    first = delivery_id("g" * 32, '"abc"')
    assert first == delivery_id("g" * 32, "abc")  # quoted or bare: the same ETag
    assert first == hashlib.sha256(b"broker-callback\x00" + b"g" * 32 + b"\x00abc").hexdigest()[:32]  # pinned
    assert delivery_id("g" * 32, '"abd"') != first
    assert delivery_id("h" * 32, '"abc"') != first
    assert delivery_id("ab", "c") != delivery_id("a", "bc")  # the parts are separated


def test_the_payload_carries_the_verdict_and_is_json() -> None:
    body = payload(grant_id="g1", client="acme", profile="avatars", bucket="b", key="uploads/a.png", size=1200,
                   etag='"e1"', content_type="image/png", status="rejected",
                   checks=[("too_large", "too large: 6 MiB stored")], verified_at="2026-11-28T14:54:31Z")
    assert body == {
        "event": "upload.rejected", "delivery_id": delivery_id("g1", "e1"), "grant_id": "g1", "client": "acme",
        "profile": "avatars", "bucket": "b", "key": "uploads/a.png", "size": 1200, "etag": "e1",
        "content_type": "image/png", "status": "rejected",
        "checks": [{"check": "too_large", "reason": "too large: 6 MiB stored"}],
        "verified_at": "2026-11-28T14:54:31Z",
    }
    assert json.loads(json.dumps(body)) == body
    verified = payload(grant_id="g1", client="acme", profile="avatars", bucket="b", key="k", size=1, etag="e1",
                       content_type=None, status="verified", verified_at="2026-11-28T14:54:31Z")
    assert verified["event"] == "upload.verified" and verified["checks"] == []
    assert verified["delivery_id"] == body["delivery_id"]  # one object version, one id, whatever the verdict


def test_an_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="rejected, verified"):
        payload(grant_id="g", client="c", profile="p", bucket="b", key="k", size=0, etag="e", content_type=None,
                status="skipped", verified_at="2026-11-28T14:54:31Z")


@pytest.mark.parametrize("url, problem", [
    pytest.param("https://api.acme.example/hooks/uploads", None, id="https"),
    pytest.param("HTTPS://API.ACME.EXAMPLE/hooks", None, id="uppercase"),
    pytest.param("https://api.acme.example:8443/hooks?tenant=7", None, id="port_and_query"),
    pytest.param("http://localhost:3000/hooks", None, id="http_localhost"),
    pytest.param("http://127.0.0.1:8080/hooks", None, id="http_loopback_v4"),
    pytest.param("http://[::1]:8080/hooks", None, id="http_loopback_v6"),
    pytest.param("http://api.acme.example/hooks", "must use https://", id="http_elsewhere"),
    pytest.param("http://127.0.0.2/hooks", "must use https://", id="http_other_loopback"),
    pytest.param("http://localhost.evil.example/", "must use https://", id="http_localhost_lookalike"),
    pytest.param("ftp://api.acme.example/", "must start with https://", id="ftp"),
    pytest.param("api.acme.example/hooks", "no scheme", id="no_scheme"),
    pytest.param("https:///hooks", "no host", id="no_host"),
    pytest.param("https://alice:hunter2@api.acme.example/", "user or password", id="userinfo"),
    pytest.param("https://hunter2@api.acme.example/", "user or password", id="user_only"),
    pytest.param("https://api.acme.example/hooks#frag", "#fragment", id="fragment"),
    pytest.param("https://api.acme.example/hooks#", "#fragment", id="empty_fragment"),
    pytest.param("https://api.acme.example/" + "a" * 2030, "limit is 2048", id="too_long"),
    pytest.param("https://api.acme.example/" + "a" * (2048 - 25), None, id="at_the_limit"),
    pytest.param("https://api.acme.example/a b", "spaces or control", id="space"),
    pytest.param("https://api.acme.example/\r\nX-Evil: 1", "spaces or control", id="header_injection"),
    pytest.param("https://[::1/", "cannot be parsed", id="bad_ipv6"),
    pytest.param("https://api.acme.example:99999/", "cannot be parsed", id="bad_port"),
    pytest.param("https://api.acme.example:0/", "port 0", id="port_zero"),
    pytest.param("", "non-empty", id="empty"),
])
def test_url_problem(url: str, problem: str | None) -> None:
    found = url_problem(url)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
        assert "hunter2" not in found and "tenant" not in found  # never repeats what a URL may hide
