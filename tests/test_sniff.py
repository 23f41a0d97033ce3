"""What bytes are: real files of each type, and active markup hidden where the library alone misses it."""
from __future__ import annotations

import struct
import zlib

import pytest

from broker.sniff import SNIFF_BYTES, Sniffer, active_markup


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00")) + chunk(b"IEND", b""))


SNIFFER = Sniffer()


@pytest.mark.parametrize("data, mime, active", [
    pytest.param(png(), "image/png", False, id="png"),
    pytest.param(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif", False, id="gif"),
    pytest.param(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\0" * 64, "image/jpeg",
                 False, id="jpeg"),
    pytest.param(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "application/pdf", False,
                 id="pdf"),
    pytest.param(b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + b"\0" * 64, "video/mp4", False, id="mp4"),
    pytest.param(b"name,amount\nacme,12\nbeta,7\n", "text/csv", False, id="csv"),
    pytest.param(b"just some words\n", "text/plain", False, id="text"),
    pytest.param(b"<!DOCTYPE html><html><body>hi</body></html>", "text/html", True, id="html"),
    pytest.param(b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "image/svg+xml",
                 True, id="svg"),
    pytest.param(b"\x7fELF\x02\x01\x01\x00" + b"\0" * 8 + b"\x03\x00>\x00" + b"\0" * 100, None, True, id="elf"),
    pytest.param(b"#!/bin/sh\nrm -rf /\n", "text/x-shellscript", True, id="shell"),
    pytest.param(b"", "application/x-empty", False, id="empty"),
])
def test_real_files_are_what_they_are(data: bytes, mime: str | None, active: bool) -> None:
    found = SNIFFER.sniff(data)
    if mime is not None:
        assert found.mime == mime, found
    assert found.active is active, found


@pytest.mark.parametrize("data", [
    pytest.param(b"<!-- a comment first --><svg onload=alert(1)>", id="svg_after_a_comment"),
    pytest.param(b"   \n\n  <SVG>", id="upper_case_svg_after_whitespace"),
    pytest.param(b"\xef\xbb\xbf<svg>", id="utf8_bom"),
    pytest.param("<script>alert(1)</script>".encode("utf-16"), id="utf16"),
    pytest.param(b"GIF89a\x01\x00\x01\x00<script>alert(1)</script>", id="gif_polyglot"),
    pytest.param(b"x" * 3000 + b"<iframe src=//evil>", id="deep_in_the_window"),
    pytest.param(b"<a href=\"JavaScript:alert(1)\">", id="javascript_url"),
])
def test_markup_anywhere_in_the_window_is_active(data: bytes) -> None:
    assert active_markup(data) is not None
    assert SNIFFER.sniff(data).active


def test_only_the_window_is_read() -> None:
    assert SNIFFER.sniff(png() + b"\0" * SNIFF_BYTES + b"<script>").active is False
    assert active_markup(b"plain text about scripts and html") is None
