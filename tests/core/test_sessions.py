"""Session tokens (broker.core.sessions): made and verified purely, time and ids passed in."""
from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings, strategies as st

from broker.core import sessions
from broker.core.sessions import SessionError, make_token, verify_token
from broker.models import Session

SECRET = b"s" * 32
OLD = b"o" * 32
NOW = 1_800_000_000
SESSION = Session(id="0123456789abcdef0123456789abcdef", client="web-app", expires_at=NOW + 900,
                  user="alice@example.com", profiles=("avatars", "documents"), max_files=3, max_bytes=1024)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_token_carries_its_session_back() -> None:
    token = make_token(SESSION, SECRET)
    assert token.startswith("v1.") and token.count(".") == 2
    assert verify_token(token, [SECRET], now=NOW) == SESSION


def test_the_payload_is_compact_json_without_the_secret() -> None:
    body = make_token(SESSION, SECRET).split(".")[1]
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert data == {"c": "web-app", "u": "alice@example.com", "p": ["avatars", "documents"], "e": NOW + 900,
                    "n": 3, "b": 1024, "i": SESSION.id}


def test_optional_fields_may_be_absent() -> None:
    bare = Session(id=SESSION.id, client="c", expires_at=NOW + 1, profiles=("p",))
    assert verify_token(make_token(bare, SECRET), [SECRET], now=NOW) == bare


@pytest.mark.parametrize("now, ok", [(NOW, True), (NOW + 899, True), (NOW + 900, False), (NOW + 10**6, False)])
def test_expiry(now: int, ok: bool) -> None:
    token = make_token(SESSION, SECRET)
    if ok:
        verify_token(token, [SECRET], now=now)
    else:
        with pytest.raises(SessionError, match="expired at .*new session"):
            verify_token(token, [SECRET], now=now)


def test_every_altered_byte_is_refused() -> None:
    token = make_token(SESSION, SECRET)
    for i in range(len(token)):
        for other in {"A", "B", "-", "_", ".", "="} - {token[i]}:
            forged = token[:i] + other + token[i + 1:]
            with pytest.raises(SessionError):
                verify_token(forged, [SECRET], now=NOW)


def test_another_secret_is_refused() -> None:
    with pytest.raises(SessionError, match="not issued by this broker"):
        verify_token(make_token(SESSION, b"x" * 32), [SECRET], now=NOW)


def test_the_previous_secret_still_verifies_but_never_signs() -> None:
    old_token = make_token(SESSION, OLD)
    assert verify_token(old_token, [SECRET, OLD], now=NOW) == SESSION
    new_token = make_token(SESSION, SECRET)
    with pytest.raises(SessionError):
        verify_token(new_token, [OLD], now=NOW)


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        make_token(SESSION, b"short")


def test_a_grant_token_mac_is_no_session_mac() -> None:
    """Domain separation: the same secret MACing the same text for grants gives another MAC."""
    from broker.core import grants

    signed = make_token(SESSION, SECRET).rpartition(".")[0]
    assert grants._mac(SECRET, signed) != sessions._mac(SECRET, signed)


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda t: t + "=", id="padded_mac"),
    pytest.param(lambda t: t.replace(".", "=.", 2).replace("=.", ".", 1), id="padded_body"),
    pytest.param(lambda t: t.replace("-", "+").replace("_", "/"), id="standard_alphabet"),
    pytest.param(lambda t: "V1" + t[2:], id="version_case"),
    pytest.param(lambda t: "v2" + t[2:], id="other_version"),
    pytest.param(lambda t: t + ".x", id="extra_part"),
    pytest.param(lambda t: t.rpartition(".")[0], id="no_mac"),
    pytest.param(lambda t: t[:-1] + {"A": "B"}.get(t[-1], "A"), id="last_char"),
    pytest.param(lambda t: " " + t, id="leading_space"),
    pytest.param(lambda t: t + "A" * 9000, id="too_long"),
    pytest.param(lambda t: "", id="empty"),
])
def test_non_canonical_and_malformed_tokens_are_refused(mangle: object) -> None:
    token = make_token(SESSION, SECRET)
    mangled = mangle(token)  # type: ignore[operator]
    assert mangled != token, "the mangling must change the token, or this case tries nothing"
    with pytest.raises(SessionError):
        verify_token(mangled, [SECRET], now=NOW)


def test_a_non_canonical_mac_spelling_is_refused() -> None:
    """Base64 with spare low bits: decodes to the same MAC, but is not the one spelling."""
    token = make_token(SESSION, SECRET)
    signed, _, mac = token.rpartition(".")
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = mac[:-1] + last[last.index(mac[-1]) ^ 1]  # 43 chars carry 258 bits: the last 2 are spare
    assert base64.urlsafe_b64decode(twin + "=") == base64.urlsafe_b64decode(mac + "=")
    with pytest.raises(SessionError, match="malformed"):
        verify_token(f"{signed}.{twin}", [SECRET], now=NOW)


def signed_payload(data: object) -> str:
    signed = "v1." + b64(json.dumps(data).encode())
    return f"{signed}.{b64(sessions._mac(SECRET, signed))}"


GOOD = {"c": "web-app", "u": None, "p": ["avatars"], "e": NOW + 60, "n": None, "b": None, "i": SESSION.id}


@pytest.mark.parametrize("data", [
    pytest.param([], id="not_an_object"),
    pytest.param({**GOOD, "x": 1}, id="extra_field"),
    pytest.param({k: v for k, v in GOOD.items() if k != "i"}, id="missing_field"),
    pytest.param({**GOOD, "i": "short"}, id="bad_id"),
    pytest.param({**GOOD, "u": "a/b"}, id="user_with_slash"),
    pytest.param({**GOOD, "u": "u" * 129}, id="user_too_long"),
    pytest.param({**GOOD, "u": ""}, id="user_empty"),
    pytest.param({**GOOD, "p": []}, id="no_profiles"),
    pytest.param({**GOOD, "p": ["p"] * 65}, id="too_many_profiles"),
    pytest.param({**GOOD, "p": "avatars"}, id="profiles_not_a_list"),
    pytest.param({**GOOD, "e": "soon"}, id="expiry_not_int"),
    pytest.param({**GOOD, "e": True}, id="expiry_bool"),
    pytest.param({**GOOD, "n": 0}, id="zero_files"),
    pytest.param({**GOOD, "b": -1}, id="negative_bytes"),
    pytest.param({**GOOD, "c": ""}, id="empty_client"),
])
def test_a_signed_but_unfit_payload_is_refused(data: object) -> None:
    with pytest.raises(SessionError, match="malformed"):
        verify_token(signed_payload(data), [SECRET], now=NOW)


def test_a_signed_fit_payload_is_accepted() -> None:
    assert verify_token(signed_payload(GOOD), [SECRET], now=NOW).client == "web-app"


@pytest.mark.parametrize("session", [
    pytest.param(Session(id="x", client="c", expires_at=1, profiles=("p",)), id="bad_id"),
    pytest.param(Session(id=SESSION.id, client="c", expires_at=1, profiles=()), id="no_profiles"),
    pytest.param(Session(id=SESSION.id, client="c", expires_at=1, profiles=("p",), user="a b"), id="bad_user"),
])
def test_an_unfit_session_is_never_signed(session: Session) -> None:
    with pytest.raises(ValueError):
        make_token(session, SECRET)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_no_text_verifies_or_raises_anything_but_a_session_error(text: str) -> None:
    with pytest.raises(SessionError):
        verify_token(text, [SECRET], now=NOW)


@settings(max_examples=100, deadline=None)
@given(user=st.from_regex(sessions.USER_PATTERN, fullmatch=True),
       profiles=st.lists(st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True), min_size=1, max_size=64),
       ttl=st.integers(1, 86400), files=st.none() | st.integers(1, 10**5), size=st.none() | st.integers(1, 2**42))
def test_any_fit_session_round_trips(user: str, profiles: list[str], ttl: int, files: int | None,
                                     size: int | None) -> None:
    session = Session(id=SESSION.id, client="web-app", expires_at=NOW + ttl, user=user,
                      profiles=tuple(profiles), max_files=files, max_bytes=size)
    token = make_token(session, SECRET)
    assert len(token) <= sessions.MAX_TOKEN_CHARS
    assert verify_token(token, [SECRET], now=NOW) == session


# --------------------------------------------------------------------------- {user} in keys


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.text(max_size=60))
def test_user_slugs_are_one_safe_segment_per_user(a: str, b: str) -> None:
    import re

    from broker.core import keys

    pattern = keys.PLACEHOLDERS["user"].pattern or ""
    for user in (a, b):
        slug = keys.user_slug(user)
        assert re.fullmatch(pattern, slug) and slug not in (".", "..") and ".." not in slug, (user, slug)
        assert len(slug) <= keys.PLACEHOLDERS["user"].longest
    if a != b:
        assert keys.user_slug(a) != keys.user_slug(b)


@pytest.mark.parametrize("user, slug", [
    ("alice", "alice"), ("a@b.com", "a_40b.com"), ("a-b.com", "a-b.com"), ("a_b", "a_5fb"),
    (".", "_2e"), ("..", "_2e_2e"), ("../x", "_2e_2e_2fx"), ("", "_"),
])
def test_user_slug_examples(user: str, slug: str) -> None:
    from broker.core import keys

    assert keys.user_slug(user) == slug


def test_user_keys_are_recognised_as_a_variable_segment() -> None:
    from broker.core import grants, keys
    from broker.models import Rule

    rule = Rule(name="mine", client="web-app", key_template="users/{client}/{user}/{uuid}{ext}", bucket="b",
                region="us-east-1", min_bytes=1, max_bytes=10, content_types=("image/png",), expires_in=60)
    assert keys.rule_prefix(rule) == "users/web-app/"
    assert grants.key_matches(rule, "users/web-app/a_40b.com/" + "0" * 32 + ".png")
    assert not grants.key_matches(rule, "users/web-app/a/b/" + "0" * 32 + ".png")
    assert not grants.key_matches(rule, "users/web-app/../" + "0" * 32 + ".png")
