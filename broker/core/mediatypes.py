"""Content types: parsing, matching, and which types each file extension may carry. Pure."""
from __future__ import annotations

import re

from broker.errors import InvalidRequest

_TOKEN = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
_MEDIA_TYPE = re.compile(rf"^({_TOKEN})/({_TOKEN})$")
_PARAM = re.compile(rf'^({_TOKEN})=("?)([A-Za-z0-9!#$&^_.+-]{{1,64}})\2$')

#: Extension -> the content types a file with it may be declared as.
EXTENSION_TYPES: dict[str, frozenset[str]] = {
    ext: frozenset(types)
    for ext, types in {
        ".jpg": ("image/jpeg", "image/pjpeg"),
        ".jpeg": ("image/jpeg", "image/pjpeg"),
        ".png": ("image/png",),
        ".gif": ("image/gif",),
        ".webp": ("image/webp",),
        ".avif": ("image/avif",),
        ".heic": ("image/heic", "image/heif"),
        ".heif": ("image/heif", "image/heic"),
        ".svg": ("image/svg+xml",),
        ".bmp": ("image/bmp",),
        ".tif": ("image/tiff",),
        ".tiff": ("image/tiff",),
        ".ico": ("image/x-icon", "image/vnd.microsoft.icon"),
        ".pdf": ("application/pdf",),
        ".txt": ("text/plain",),
        ".md": ("text/markdown", "text/plain"),
        ".csv": ("text/csv", "application/vnd.ms-excel", "text/plain"),
        ".tsv": ("text/tab-separated-values", "text/plain"),
        ".json": ("application/json",),
        ".xml": ("application/xml", "text/xml"),
        ".html": ("text/html",),
        ".rtf": ("application/rtf", "text/rtf"),
        ".doc": ("application/msword",),
        ".docx": ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",),
        ".xls": ("application/vnd.ms-excel",),
        ".xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",),
        ".ppt": ("application/vnd.ms-powerpoint",),
        ".pptx": ("application/vnd.openxmlformats-officedocument.presentationml.presentation",),
        ".odt": ("application/vnd.oasis.opendocument.text",),
        ".ods": ("application/vnd.oasis.opendocument.spreadsheet",),
        ".zip": ("application/zip", "application/x-zip-compressed"),
        ".gz": ("application/gzip", "application/x-gzip"),
        ".tar": ("application/x-tar",),
        ".mp3": ("audio/mpeg",),
        ".m4a": ("audio/mp4", "audio/x-m4a"),
        ".wav": ("audio/wav", "audio/x-wav", "audio/wave"),
        ".ogg": ("audio/ogg", "video/ogg", "application/ogg"),
        ".flac": ("audio/flac", "audio/x-flac"),
        ".mp4": ("video/mp4",),
        ".m4v": ("video/mp4", "video/x-m4v"),
        ".mov": ("video/quicktime",),
        ".webm": ("video/webm", "audio/webm"),
        ".mkv": ("video/x-matroska",),
        ".avi": ("video/x-msvideo",),
        ".bin": ("application/octet-stream",),
    }.items()
}


def parse_content_type(value: str) -> tuple[str, str]:
    """Return ``(essence, canonical)``: ``image/png`` and the value to sign.

    The essence is lower-cased; of the parameters only ``charset`` is kept (lower-cased),
    so ``Text/Plain; Charset="UTF-8"; x=y`` is signed as ``text/plain; charset=utf-8``.
    """
    essence_part, *params = value.split(";")
    essence = essence_part.strip().lower()
    if not _MEDIA_TYPE.match(essence):
        raise InvalidRequest(
            f"content_type {value[:100]!r} is not a media type such as 'image/png'",
            path="$.content_type",
        )
    charset = None
    for raw in params:
        param = raw.strip()
        if not param:
            continue
        match = _PARAM.match(param)
        if not match:
            raise InvalidRequest(
                f"content_type parameter {param[:60]!r} is malformed", path="$.content_type"
            )
        if match.group(1).lower() == "charset":
            charset = match.group(3).lower()
    canonical = f"{essence}; charset={charset}" if charset else essence
    return essence, canonical


def type_matches(essence: str, patterns: tuple[str, ...]) -> bool:
    """True if ``essence`` equals a pattern or falls under a wildcard like ``image/*``."""
    major = essence.split("/", 1)[0]
    for pattern in patterns:
        if pattern == essence or pattern == "*/*" or pattern == f"{major}/*":
            return True
    return False


def extension_agrees(ext: str, essence: str) -> bool:
    """True if a file named ``*.ext`` may be declared as ``essence``."""
    return essence in EXTENSION_TYPES.get(ext, frozenset())
