"""What the bytes of an upload are, from its first few KiB: libmagic's database plus a markup scan.

The file type comes from ``pure-magic-rs``, a Rust re-implementation of libmagic with its
database built in (a wheel with no system libraries: it runs on Lambda as it runs here). It
knows images, documents, archives, media, executables, scripts, HTML and SVG from their
bytes. What it can miss, a browser would still act on: markup that does not open the file
(an ``<svg`` after a comment, whitespace or a byte-order mark, an upper-case ``<SVG``), so
the same window is also scanned for active markup anywhere in it, as browsers sniff.
"""
from __future__ import annotations

import codecs
import re
import threading
from typing import Any

from broker.core.verify import Sniff

#: How much of an object is read to judge its type (enough for every type libmagic needs here).
SNIFF_BYTES = 4096
#: Markup a browser would render or run, wherever it stands in the first bytes.
_ACTIVE = re.compile(rb"<\s*(?:svg|html|script|iframe|object|embed|body|!doctype\s+html|\?xml-stylesheet)\b"
                     rb"|javascript\s*:", re.IGNORECASE)
#: Types that are active content in a browser, or programs.
ACTIVE_TYPES = frozenset({
    "text/html", "application/xhtml+xml", "image/svg+xml", "text/javascript", "application/javascript",
    "application/x-javascript", "text/ecmascript", "application/ecmascript", "text/xml", "application/xml",
    "text/x-shellscript", "text/x-script.python", "text/x-python", "text/x-perl", "text/x-php",
    "application/x-executable", "application/x-sharedlib", "application/x-pie-executable",
    "application/x-dosexec", "application/vnd.microsoft.portable-executable", "application/x-mach-binary",
    "application/x-msdownload", "application/java-archive", "application/x-java-applet",
})


class Sniffer:
    """Judges bytes; the database is built once per process, on first use (~30 ms)."""

    def __init__(self) -> None:
        self._db: Any = None
        self._lock = threading.Lock()

    def _database(self) -> Any:
        if self._db is None:
            with self._lock:
                if self._db is None:
                    import pure_magic_rs

                    self._db = pure_magic_rs.MagicDb()
        return self._db

    def sniff(self, head: bytes) -> Sniff:
        """What an object whose first bytes are ``head`` is (at most ``SNIFF_BYTES`` are read).

        Active: markup a browser would render or run anywhere in ``head``, or a type that is one
        (:data:`ACTIVE_TYPES`); ``application/octet-stream`` when the type is unknown.
        """
        head = head[:SNIFF_BYTES]
        if not head:
            return Sniff("application/x-empty")
        magic = self._database().best_magic_buffer(head)
        mime = str(magic.mime_type or "application/octet-stream").split(";")[0].strip().lower()
        markup = active_markup(head)
        return Sniff(mime, markup is not None or mime in ACTIVE_TYPES, markup)


def active_markup(head: bytes) -> str | None:
    """The first active markup in ``head`` (in UTF-8 or UTF-16, after any byte-order mark), or None."""
    texts = [head]
    for bom, encoding in ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if head.startswith(bom) or (len(head) > 3 and head[1 if encoding.endswith("le") else 0] == 0):
            texts.append(head.decode(encoding, "ignore").encode("utf-8", "ignore"))
    for text in texts:
        found = _ACTIVE.search(text)
        if found:
            return found.group(0).decode("ascii", "replace").lower()
    return None
