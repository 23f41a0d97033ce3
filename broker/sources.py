"""Where rules come from, and keeping the last good set when a reload fails.

A source's ``fetch(token)`` returns ``(ruleset, token)``, or ``(None, token)`` when the
rules have not changed since ``token``. :class:`RulesProvider` polls its source at most
every ``reload_seconds`` and swaps rules only when the new file validates.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any, Callable, Protocol

from .config import load_rules, load_rules_file
from .errors import BrokerError, RulesError, RulesUnavailable
from .models import RuleSet


class RulesSource(Protocol):
    """Anything that can fetch a rules file and say whether it changed."""

    name: str

    def fetch(self, token: Any) -> tuple[RuleSet | None, Any]:
        """New rules and a token, or ``(None, token)`` if unchanged; raises on failure."""


class FileSource:
    """Rules from a file on disk; changed when its mtime, size or inode changes."""

    def __init__(self, path: str) -> None:
        self.name = path
        self._path = path

    def fetch(self, token: Any) -> tuple[RuleSet | None, Any]:
        try:
            st = os.stat(self._path)
        except OSError as exc:
            raise _unreadable(self._path, exc) from None
        new_token = (st.st_mtime_ns, st.st_size, st.st_ino)
        if new_token == token:
            return None, token
        return load_rules_file(self._path), new_token


def _unreadable(path: str, exc: OSError) -> RulesError:
    from .errors import Problem

    return RulesError(path, [Problem("$", f"cannot read the rules file: {exc.strerror}")])


class StaticSource:
    """Rules given as text (tests, ``broker explain`` with inline rules)."""

    def __init__(self, text: str, name: str = "<inline>") -> None:
        self.name = name
        self._text = text

    def fetch(self, token: Any) -> tuple[RuleSet | None, Any]:
        if token == "loaded":
            return None, token
        return load_rules(self._text, source=self.name), "loaded"


def open_source(location: str, *, s3_client_factory: Callable[[], Any] | None = None) -> RulesSource:
    """A source for a path or an ``s3://bucket/key`` URL."""
    if location.startswith("s3://"):
        from .s3source import S3Source

        if s3_client_factory is None:
            raise ValueError("an s3:// rules location needs an S3 client")
        return S3Source(location, s3_client_factory())
    return FileSource(location)


def log_event(event: str, **fields: Any) -> None:
    """An operational (non-audit) JSON log line on stderr."""
    line = {"level": "error" if "error" in fields else "info", "event": event, **fields}
    try:
        sys.stderr.write(json.dumps(line, default=str) + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class RulesProvider:
    """The current rules, re-checked at most every ``reload_seconds``; last good rules win."""

    def __init__(self, source: RulesSource, *, reload_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 log: Callable[..., None] = log_event) -> None:
        self._source = source
        self._reload = reload_seconds
        self._clock = clock
        self._log = log
        self._lock = threading.Lock()
        self._rules: RuleSet | None = None
        self._token: Any = None
        self._checked_at = float("-inf")
        self.last_error: BrokerError | Exception | None = None

    @property
    def source(self) -> str:
        """The rules location (a path or s3:// URL)."""
        return self._source.name

    def refresh(self) -> RuleSet | None:
        """Check the source now; return the rules in force (None if never loaded)."""
        with self._lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> RuleSet | None:
        self._checked_at = self._clock()
        try:
            rules, self._token = self._source.fetch(self._token)
        except Exception as exc:  # any failure keeps the last good rules
            if str(exc) != str(self.last_error):  # say it once, not at every poll
                self._log("rules_reload_failed", source=self.source,
                          error=str(exc), kept=self._rules.digest if self._rules else None)
            self.last_error = exc
            return self._rules
        if rules is not None:
            previous = self._rules
            self._rules = rules
            self.last_error = None
            self._log("rules_loaded", source=self.source, digest=rules.digest,
                      clients=len(rules.clients),
                      replaced=previous.digest if previous else None)
        return self._rules

    def current(self) -> RuleSet:
        """The rules in force; raises ``RulesUnavailable`` if none ever loaded (fail closed)."""
        if self._clock() - self._checked_at >= self._reload and self._lock.acquire(blocking=False):
            try:  # only one thread re-checks; the others go on with the rules in force
                self._refresh_locked()
            finally:
                self._lock.release()
        rules = self._rules
        if rules is None:
            raise RulesUnavailable("no valid upload rules are loaded, so nothing can be issued; "
                                   "the operator has been told why in the broker's log")
        return rules
