"""Properties: no body yields anything but a 2xx/4xx JSON answer; no grant exceeds its rule."""
from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from broker.core import keys, rules
from broker.config import schemas
from broker.errors import InvalidRequest
from broker.models import UploadRequest
from broker.s3.post import decode_policy
from tests.conftest import NOW, post_json

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
FIELDS = ["filename", "content_type", "size", "profile", "metadata", "key", "bucket"]
upload_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={
        "filename": st.one_of(st.text(max_size=60), st.sampled_from(["a.png", "../x.png", "a\x00.png", "é.jpg"])),
        "content_type": st.one_of(st.text(max_size=40), st.sampled_from(
            ["image/png", "IMAGE/JPEG", "image/png; charset=x", "video/mp4", "application/pdf", "*/*"])),
        "size": st.one_of(st.integers(min_value=-10, max_value=10**13), st.floats(), st.text(max_size=5)),
        "profile": st.one_of(st.sampled_from(["avatars", "documents", "videos", "invoices", "x"]), st.text(max_size=10)),
        "metadata": st.one_of(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3), json_values),
        "key": st.text(max_size=20),
    }),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=upload_bodies)
def test_any_body_gets_2xx_or_4xx_json(broker: Any, body: Any) -> None:
    status, resp, _ = post_json(broker, "/uploads", body)
    assert status in (200, 400, 403, 413), (status, resp)
    schemas.validator("upload-response" if status == 200 else "error").validate(resp)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=300))
def test_any_bytes_get_a_4xx_json(broker: Any, raw: bytes) -> None:
    status, resp, _ = post_json(broker, "/uploads", raw)
    assert 200 <= status < 500, resp
    assert isinstance(resp, dict) and ("error" in resp or "fields" in resp)


@settings(max_examples=400, deadline=None)
@given(client=st.sampled_from(["web-app", "mobile", "partner-acme"]),
       profile=st.one_of(st.none(), st.sampled_from(["avatars", "documents", "videos", "photos", "invoices",
                                                      "statements"])),
       filename=st.text(min_size=1, max_size=80) | st.sampled_from(["a.png", "b.PDF", "c.heic", "d.mp4", "e.csv"]),
       content_type=st.sampled_from(["image/png", "image/heic", "application/pdf", "video/mp4", "text/csv",
                                     "text/csv; charset=utf-8", "image/jpeg", "application/octet-stream"]),
       size=st.one_of(st.none(), st.integers(min_value=0, max_value=3 * 1024**3)))
def test_no_grant_allows_more_than_its_rule(ruleset: Any, client: str, profile: str | None, filename: str,
                                            content_type: str, size: int | None) -> None:
    request = UploadRequest(filename, content_type, size, profile)
    try:
        decision = rules.evaluate(ruleset, ruleset.clients[client], request, now=NOW, random_id="a" * 32)
    except InvalidRequest:
        return
    if not decision.allowed:
        assert decision.grant is None and decision.check is not None
        return
    grant = decision.grant
    rule = ruleset.clients[client].rules[grant.profile]
    assert grant.client == client
    assert grant.key.startswith(keys.rule_prefix(rule)) and f"/{client}/" in grant.key
    assert "a" * 32 in grant.key and ".." not in grant.key and "//" not in grant.key
    assert (grant.min_bytes, grant.max_bytes) == (rule.min_bytes, rule.max_bytes)
    assert size is None or rule.min_bytes <= size <= rule.max_bytes
    assert rules.type_matches(grant.content_type.split(";")[0], rule.content_types)
    assert grant.expires_in <= min(rule.expires_in, ruleset.max_expires_in)
    assert grant.bucket == rule.bucket


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(min_value=1, max_value=5 * 1024**2), name=st.text(min_size=1, max_size=30))
def test_signed_policy_matches_the_grant(broker: Any, size: int, name: str) -> None:
    status, resp, _ = post_json(broker, "/uploads", {"filename": name + ".png", "content_type": "image/png",
                                                     "size": size})
    if status != 200:
        assert status == 400 and resp["path"] == "$.filename"
        return
    conds = decode_policy(resp["fields"]["policy"])["conditions"]
    assert ["content-length-range", 1, 5 * 1024**2] in conds
    assert {"key": resp["key"]} in conds and {"Content-Type": "image/png"} in conds
    # no prefix condition: the key is bound exactly (a filename may well read "starts-with")
    assert not [c for c in conds if isinstance(c, list) and c[0] == "starts-with"]
