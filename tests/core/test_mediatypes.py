from __future__ import annotations

import pytest

from broker.errors import InvalidRequest
from broker.core.mediatypes import extension_agrees, parse_content_type, type_matches


@pytest.mark.parametrize("value, essence, canonical", [
    ("image/png", "image/png", "image/png"),
    ("Image/PNG", "image/png", "image/png"),
    ("text/plain; charset=UTF-8", "text/plain", "text/plain; charset=utf-8"),
    ('text/plain;Charset="utf-8"; format=flowed', "text/plain", "text/plain; charset=utf-8"),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",
     "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
     "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
])
def test_parse_content_type(value: str, essence: str, canonical: str) -> None:
    assert parse_content_type(value) == (essence, canonical)


@pytest.mark.parametrize("value", ["png", "image/", "/png", "image/png/x", "image/p ng",
                                   "image/png; charset", "image/png\r\nX-Evil: 1", "*/*", ""])
def test_malformed_content_types(value: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_content_type(value)


def test_wildcards() -> None:
    assert type_matches("image/png", ("image/*",))
    assert type_matches("video/mp4", ("*/*",))
    assert not type_matches("image/png", ("image/jpeg", "video/*"))
    assert not type_matches("imagex/png", ("image/*",))


def test_extension_agrees() -> None:
    assert extension_agrees(".jpg", "image/jpeg")
    assert not extension_agrees(".png", "image/jpeg")
    assert not extension_agrees(".exe", "application/octet-stream")
