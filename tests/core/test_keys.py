from __future__ import annotations

import re
from datetime import datetime

import pytest
from hypothesis import given, strategies as st

from broker.core import keys
from broker.errors import InvalidRequest
from tests.conftest import NOW


@pytest.mark.parametrize("template, problem", [
    pytest.param("uploads/{client}/{date}/{ext}", "must contain '{uuid}'", id="no_uuid"),
    pytest.param("uploads/{client}/{nope}/{uuid}", "unknown placeholder '{nope}'", id="unknown_placeholder"),
    pytest.param("/uploads/{uuid}", "must not start with '/'", id="leading_slash"),
    pytest.param("uploads/../{uuid}", "'..'", id="dotdot"),
    pytest.param("uploads//{uuid}", "'//'", id="double_slash"),
    pytest.param("uploads/${filename}/{uuid}", "literal text", id="dollar_brace"),
    pytest.param("uploads/{uuid:>40}", "format spec", id="format_spec"),
    pytest.param("uploads/{uuid", "malformed", id="unbalanced"),
    pytest.param("a" * 1000 + "/{uuid}/{filename}", "S3 allows 1024", id="too_long"),
    pytest.param("up loads/{uuid}", "literal text", id="space"),
])
def test_template_problems(template: str, problem: str) -> None:
    assert any(problem in p for p in keys.template_problems(template)), keys.template_problems(template)


def test_good_template_has_no_problems() -> None:
    assert keys.template_problems("uploads/{client}/{profile}/{date}/{uuid}{ext}") == []


def test_static_prefix_stops_at_first_per_request_placeholder() -> None:
    assert keys.static_prefix("u/{client}/{profile}/{date}/{uuid}", client="c", profile="p") == "u/c/p/"
    assert keys.static_prefix("u/{uuid}/{client}", client="c", profile="p") == "u/"


@pytest.mark.parametrize("filename, slug", [
    ("photo.png", "photo.png"),
    ("résumé.pdf", "resume.pdf"),
    ("my holiday (1).JPG", "my-holiday-1-.JPG"),
    ("...hidden", "hidden"),
    ("a..b..c", "a.b.c"),
    ("日本語.txt", "txt"),
    ("x" * 300 + ".png", "x" * 124 + ".png"),
])
def test_slugify(filename: str, slug: str) -> None:
    assert keys.slugify(filename) == slug


@pytest.mark.parametrize("filename", [
    pytest.param("../../etc/passwd", id="traversal"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("a\\b.png", id="backslash"),
    pytest.param("a\x00.png", id="nul"),
    pytest.param("a\nb.png", id="newline"),
    pytest.param("evil\u202egnp.exe", id="rtl_override"),
    pytest.param("a\u2215b.png", id="division_slash"),
    pytest.param("a\uff0fb.png", id="fullwidth_solidus"),
    pytest.param("..", id="dotdot"),
    pytest.param(" . ", id="dot_spaces"),
])
def test_hostile_filenames_are_refused(filename: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        keys.check_filename(filename)
    assert exc.value.details["path"] == "$.filename"


def test_render_key() -> None:
    key = keys.render_key("uploads/{client}/{profile}/{date}/{uuid}/{filename}", client="c",
                          profile="p", random_id="a" * 32, now=NOW, filename="Ré sumé.PDF")
    assert key == f"uploads/c/p/2026-11-28/{'a' * 32}/Re-sume.PDF"


def test_render_key_refuses_a_weak_random_id() -> None:
    with pytest.raises(ValueError):
        keys.render_key("{uuid}", client="c", profile="p", random_id="1234", now=NOW, filename="x")


def test_content_disposition_rfc6266() -> None:
    assert keys.content_disposition("attachment", "report.pdf") == 'attachment; filename="report.pdf"'
    assert keys.content_disposition("attachment", "résumé.pdf") == (
        "attachment; filename=\"resume.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf")


@given(st.text(min_size=1, max_size=300))
def test_no_filename_can_escape_its_key_segment(filename: str) -> None:
    try:
        checked = keys.check_filename(filename)
    except InvalidRequest:
        return
    key = keys.render_key("uploads/c/{uuid}/{filename}{ext}", client="c", profile="p",
                          random_id="f" * 32, now=NOW, filename=checked)
    assert key.startswith(f"uploads/c/{'f' * 32}/")
    tail = key[len(f"uploads/c/{'f' * 32}/"):]
    assert "/" not in tail and ".." not in tail and not tail.startswith(".")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", tail)
    assert len(key.encode()) <= keys.MAX_KEY_BYTES


def test_slugify_shortcut_agrees_with_the_steps() -> None:
    """Names slugify returns untouched are exactly those its steps would leave unchanged."""
    import itertools

    alphabet = "aZ9._- é/"
    names = ["".join(p) for n in range(1, 5) for p in itertools.product(alphabet, repeat=n)]
    names += ["a" * 128, "a" * 129, "photo.final.png", "my-file_v2.tar.gz", "-x", "x.", "a--b", "a..b"]
    for name in names:
        assert keys.slugify(name) == keys._slug_steps(name), name


@given(st.text(max_size=80), st.datetimes())
def test_every_placeholder_renders_what_its_pattern_matches(filename: str, now: datetime) -> None:
    """The one table drives both rendering keys and recognising them (``grants.rules_for_key``)."""
    try:
        checked = keys.check_filename(filename)
    except InvalidRequest:
        return
    for name, placeholder in keys.PLACEHOLDERS.items():
        if placeholder.render is None:
            assert placeholder.pattern is None and name not in keys.PER_REQUEST
            continue
        value = placeholder.render("0123456789abcdef0123456789abcdef", now, checked)
        assert re.fullmatch(placeholder.pattern or "", value), (name, value)
        assert len(value) <= placeholder.longest, (name, value)
