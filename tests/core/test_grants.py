"""broker.grants: tokens nobody can forge or stretch, and keys only a rule could have produced."""
from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from broker.core.grants import GrantToken, TokenError, issue_token, key_matches, rules_for_key, verify_token
from tests.conftest import NOW

SECRET = b"s" * 32
GRANT = GrantToken(client="web-app", profile="avatars", bucket="broker-uploads",
                   key="uploads/web-app/avatars/2026-11-28/0123456789abcdef0123456789abcdef.png",
                   filename="r\u00e9sum\u00e9.png", content_type="image/png", size=1234,
                   expires_at=int(NOW.timestamp()) + 300, metadata={"title": "x"})


def test_a_token_round_trips() -> None:
    assert verify_token(issue_token(GRANT, SECRET), SECRET, now=NOW) == GRANT


def _reencode(token: str, change: dict[str, Any]) -> str:
    body, mac = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data.update(change)
    new = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{new}.{mac}"


TOKEN = issue_token(GRANT, SECRET)


@pytest.mark.parametrize("token, message", [
    pytest.param(None, "send the grant token", id="missing"),
    pytest.param("", "send the grant token", id="empty"),
    pytest.param("abc", "malformed", id="no_dot"),
    pytest.param(TOKEN + ".x", "malformed", id="two_dots"),
    pytest.param("x" * 9000, "malformed", id="huge"),
    pytest.param(_reencode(TOKEN, {"k": "uploads/web-app/avatars/2026-11-28/ffffffffffffffffffffffffffffffff.png"}),
                 "not issued by this broker", id="other_key"),
    pytest.param(_reencode(TOKEN, {"c": "partner-acme"}), "not issued by this broker", id="other_client"),
    pytest.param(_reencode(TOKEN, {"x": 4102444800}), "not issued by this broker", id="stretched_expiry"),
    pytest.param(TOKEN[:-2] + ("AA" if not TOKEN.endswith("AA") else "BB"), "not issued by this broker",
                 id="mac_changed"),
    pytest.param(issue_token(GRANT, b"t" * 32), "not issued by this broker", id="other_secret"),
    pytest.param(TOKEN.split(".")[0] + ".%%%", "malformed", id="mac_not_base64"),
    pytest.param("\u00e9." + TOKEN.split(".")[1], "not issued by this broker", id="non_ascii_body"),
    pytest.param(issue_token(replace(GRANT, expires_at=int(NOW.timestamp())), SECRET), "expired", id="expired"),
])
def test_a_bad_token_is_refused(token: str | None, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        verify_token(token, SECRET, now=NOW)


def test_a_token_expires_when_its_grant_does() -> None:
    assert verify_token(TOKEN, SECRET, now=NOW + timedelta(seconds=299))
    with pytest.raises(TokenError, match="expired at 2026-11-28T14:54:31Z"):
        verify_token(TOKEN, SECRET, now=NOW + timedelta(seconds=300))


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        issue_token(GRANT, b"short")


@pytest.mark.parametrize("profile, key, ok", [
    pytest.param("avatars", "uploads/web-app/avatars/2026-11-28/0123456789abcdef0123456789abcdef.png", True,
                 id="avatar"),
    pytest.param("avatars", "uploads/web-app/avatars/2026-11-28/0123456789abcdef0123456789abcdef", True, id="no_ext"),
    pytest.param("avatars", "uploads/web-app/avatars/2026-11-28/0123456789ABCDEF0123456789abcdef.png", False,
                 id="upper_hex_not_server_made"),
    pytest.param("avatars", "uploads/web-app/avatars/2026-11-28/my-own-name.png", False, id="client_chosen_name"),
    pytest.param("avatars", "uploads/web-app/avatars/2026-11-28/0123456789abcdef0123456789abcdef.png/x", False,
                 id="suffix"),
    pytest.param("avatars", "uploads/partner-acme/avatars/2026-11-28/0123456789abcdef0123456789abcdef.png", False,
                 id="other_client"),
    pytest.param("avatars", "uploads/web-app/videos/2026-11-28/0123456789abcdef0123456789abcdef.mp4", False,
                 id="other_profile"),
    pytest.param("documents", "uploads/web-app/documents/2026-11-28/0123456789abcdef0123456789abcdef/report.pdf",
                 True, id="filename_template"),
    pytest.param("documents", "uploads/web-app/documents/2026-11-28/0123456789abcdef0123456789abcdef/../x.pdf",
                 False, id="dot_dot"),
    pytest.param("documents", "uploads/web-app/documents/2026-11-28/0123456789abcdef0123456789abcdef/.hidden",
                 False, id="leading_dot"),
])
def test_keys_match_only_their_rules_shape(ruleset: Any, profile: str, key: str, ok: bool) -> None:
    rule = ruleset.clients["web-app"].rules[profile]

    assert key_matches(rule, key) is ok


def test_rules_for_key_finds_the_one_rule(ruleset: Any) -> None:
    client = ruleset.clients["web-app"]
    key = "uploads/web-app/videos/2026-11-28/0123456789abcdef0123456789abcdef.mp4"

    assert [r.name for r in rules_for_key(client, key)] == ["videos"]
    assert rules_for_key(ruleset.clients["partner-acme"], key) == ()


def test_only_the_canonical_spelling_of_a_token_is_accepted() -> None:
    """Base64 has spellings that decode to the same bytes (unused low bits, padding): only one is the token."""
    token = issue_token(GRANT, SECRET)
    body, mac = token.split(".")
    assert verify_token(token, SECRET, now=NOW) == GRANT
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(mac[-1])
    twin = mac[:-1] + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[last ^ 1]
    assert base64.urlsafe_b64decode(twin + "=" * (-len(twin) % 4)) == base64.urlsafe_b64decode(
        mac + "=" * (-len(mac) % 4))  # the same MAC bytes, another spelling
    for other in (f"{body}.{twin}", f"{body}.{mac}=", f"{body}.{mac}=="):
        with pytest.raises(TokenError, match="malformed"):
            verify_token(other, SECRET, now=NOW)
