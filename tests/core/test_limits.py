"""What GET /limits publishes, computed from the rules (and a session) alone."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from broker.core.limits import caller_limits, profile_limits, uppy_restrictions
from broker.models import Session

MiB = 1024 * 1024
SESSION = Session(id="a" * 32, client="web-app", expires_at=2_000_000_000, user="alice",
                  profiles=("avatars", "videos"), max_files=3, max_bytes=2 * MiB)


def test_every_profile_of_the_client_with_uppys_restrictions(ruleset: Any) -> None:
    out = caller_limits(ruleset, ruleset.clients["web-app"])
    assert list(out["profiles"]) == ["avatars", "documents", "videos"]
    assert out["client"] == "web-app" and out["default_profile"] == "avatars" and out["user"] is None
    avatars = out["profiles"]["avatars"]
    assert avatars["restrictions"] == {
        "maxFileSize": 5 * MiB, "minFileSize": 1,
        "allowedFileTypes": ["image/png", "image/jpeg", "image/gif", "image/webp",
                             ".png", ".jpg", ".jpeg", ".gif", ".webp"]}
    assert (avatars["max_bytes"], avatars["max_size"], avatars["multipart"]) == (5 * MiB, "5 MiB", False)
    assert avatars["form_expires_in"] == 300 and avatars["needs_user"] is False
    videos = out["profiles"]["videos"]
    assert videos["restrictions"]["allowedFileTypes"] == ["video/*"]
    assert (videos["min_bytes"], videos["multipart"], videos["form_expires_in"]) == (1000, True, 1800)


def test_a_session_narrows_profiles_size_and_count(ruleset: Any) -> None:
    out = caller_limits(ruleset, ruleset.clients["web-app"], SESSION, user="alice",
                        session_expires_at="2033-05-18T03:33:20Z")
    assert list(out["profiles"]) == ["avatars", "videos"] and out["user"] == "alice"
    assert out["session_expires_at"] == "2033-05-18T03:33:20Z"
    for limits in out["profiles"].values():
        assert limits["max_bytes"] == 2 * MiB and limits["restrictions"]["maxFileSize"] == 2 * MiB
        assert limits["restrictions"]["maxNumberOfFiles"] == 3


def test_default_profile_outside_the_session_is_not_offered(ruleset: Any) -> None:
    session = replace(SESSION, profiles=("documents",))
    out = caller_limits(ruleset, ruleset.clients["web-app"], session)
    assert out["default_profile"] is None and list(out["profiles"]) == ["documents"]


def test_a_session_never_widens_a_rule(ruleset: Any) -> None:
    rule = ruleset.clients["web-app"].rules["avatars"]
    assert profile_limits(rule, ruleset, replace(SESSION, max_bytes=50 * MiB))["max_bytes"] == 5 * MiB


def test_any_type_without_extensions_is_no_type_restriction(ruleset: Any) -> None:
    rule = replace(ruleset.clients["web-app"].rules["videos"], content_types=("*/*",))
    assert uppy_restrictions(rule, 10)["allowedFileTypes"] is None
    assert uppy_restrictions(replace(rule, extensions=(".bin",)), 10)["allowedFileTypes"] == [".bin"]
