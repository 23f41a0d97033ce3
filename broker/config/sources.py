"""Where rules come from, and keeping the last good set when a reload fails.

Sources: a file (:class:`FileSource`), text (:class:`StaticSource`), an S3 object
(:class:`S3Source`, reading through the store it is handed). A source's ``fetch(token)`` returns ``(ruleset, token)``, or ``(None, token)`` when the
rules have not changed since ``token``. :class:`RulesProvider` polls its source at most
every ``reload_seconds`` and swaps rules only when the new file validates; each swap is logged
(``rules_loaded``) with what changed, counted as ``broker diff`` counts it (:func:`change_summary`).
"""
from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

from broker.config.loader import load_rules, load_rules_file
from broker.core import rulesdiff
from broker.errors import BrokerError, ConfigError, Problem, RulesError, RulesUnavailable, StoreUnavailable
from broker.logs import log_event
from broker.timefmt import iso_z
from broker.models import RuleSet


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


def parse_s3_url(location: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; raises ``ConfigError`` naming the fix."""
    rest = location[len("s3://"):] if location.startswith("s3://") else ""
    bucket, _, key = rest.partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ConfigError(f"BROKER_RULES={location!r} is not an S3 object URL; "
                          "write it as s3://bucket/path/to/rules.yaml")
    return bucket, key


#: A rules file larger than this is refused unread (a real one is a few kB).
MAX_RULES_BYTES = 5 * 1024 * 1024


class S3Source:
    """Rules from one S3 object (``BROKER_RULES=s3://bucket/key``), re-read only when it changed.

    Each poll is one conditional ``GetObject`` with ``IfNoneMatch=<last ETag>`` through the
    broker's store (:class:`broker.s3.store.S3Store`, passed in): S3 answers ``304 Not
    Modified`` (no body, no parsing) until an operator uploads a new file. Every failure
    raises, so :class:`RulesProvider` keeps the last good rules and logs why; a file that does
    not validate is never swapped in.
    """

    def __init__(self, location: str, store: Any) -> None:
        self.name = location
        self.bucket, self.key = parse_s3_url(location)
        self._store = store

    def fetch(self, token: Any) -> tuple[RuleSet | None, Any]:
        """New rules and their ETag, or ``(None, token)`` when S3 says 304 Not Modified."""
        try:
            got = self._store.get_object(self.bucket, self.key, max_bytes=MAX_RULES_BYTES,
                                         if_none_match=token or None)
        except StoreUnavailable as exc:
            if exc.unreachable:
                raise self._error(f"cannot reach S3 to read the rules: {exc.store_message}") from None
            raise self._error(f"cannot read the rules object: {exc.store_code or exc.store_status} "
                              f"({exc.store_message or 'no message'}); check that it exists and "
                              "that the broker's role has s3:GetObject on it") from None
        if got is None:
            return None, token
        if got.body is None:
            raise self._error(f"the rules object is {got.length} bytes, more than the "
                              f"{MAX_RULES_BYTES} a rules file may have")
        if len(got.body) > MAX_RULES_BYTES:
            raise self._error(f"the rules object is more than {MAX_RULES_BYTES} bytes")
        return load_rules(got.body, source=self.name), got.etag

    def _error(self, message: str) -> RulesError:
        return RulesError(self.name, [Problem("$", message)])


def change_summary(previous: RuleSet | None, rules: RuleSet) -> dict[str, Any] | None:
    """What a reload changed, counted as ``broker diff`` counts it (None for the first load).

    Computed only when new rules are swapped in, never per request. A failure to compare is
    reported in the summary and never stops the reload: the new rules already validated.
    """
    if previous is None:
        return None
    try:
        return rulesdiff.summary(rulesdiff.diff(previous, rules))
    except Exception as exc:  # the comparison only informs; the rules in force are what matter
        return {"error": f"could not compare the rules: {type(exc).__name__}: {exc}"}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RulesProvider:
    """The current rules, re-checked at most every ``reload_seconds``; last good rules win."""

    def __init__(self, source: RulesSource, *, reload_seconds: float = 2.0,
                 clock: Callable[[], float] = time.monotonic,
                 log: Callable[..., None] = log_event,
                 wall: Callable[[], datetime] = _utcnow) -> None:
        self._source = source
        self._reload = reload_seconds
        self._clock = clock
        self._log = log
        self._lock = threading.Lock()
        self._rules: RuleSet | None = None
        self._token: Any = None
        self._checked_at = float("-inf")
        self._wall = wall
        self.last_error: BrokerError | Exception | None = None
        # What GET /health reports: whether the rules in force are the latest the source has.
        self.loaded_at: datetime | None = None  # when the rules in force were loaded
        self.failing_since: datetime | None = None  # the first failed reload since the last good one
        self.failures = 0  # failed reloads since the last good one (or the start)
        #: Called with the exception of every failed reload (``broker.metrics.install`` counts them).
        self.on_reload_failed: Callable[[BaseException], None] | None = None

    @property
    def source(self) -> str:
        """The rules location (a path or s3:// URL)."""
        return self._source.name

    def refresh(self) -> RuleSet | None:
        """Check the source now; return the rules in force (None if never loaded)."""
        with self._lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> RuleSet | None:
        try:
            rules, self._token = self._source.fetch(self._token)
        except Exception as exc:  # any failure keeps the last good rules
            if str(exc) != str(self.last_error):  # say it once, not at every poll
                self._log("rules_reload_failed", source=self.source,
                          error=str(exc), kept=self._rules.digest if self._rules else None)
            self.last_error = exc
            self.failures += 1
            if self.failing_since is None:
                self.failing_since = self._wall()
            if self.on_reload_failed is not None:
                try:
                    self.on_reload_failed(exc)
                except Exception:  # noqa: BLE001 - counting never stops the rules in force
                    pass
            self._checked_at = self._clock()  # stamped once the outcome is in force, not before
            return self._rules
        if rules is not None:
            previous = self._rules
            self._rules = rules
            self.last_error = None
            self.loaded_at = self._wall()
            self._log("rules_loaded", source=self.source, digest=rules.digest,
                      clients=len(rules.clients),
                      replaced=previous.digest if previous else None,
                      changes=change_summary(previous, rules))
        else:
            self.last_error = None  # the source answers again, and it still holds the rules in force
        self.failures, self.failing_since = 0, None
        self._checked_at = self._clock()
        return self._rules

    def status(self) -> dict[str, Any]:
        """Whether the rules in force are the latest (``GET /health``): cheap, reads no source.

        ``reload_error`` is the error code of the last reload when it failed (the operator's log
        has its words; a health check is public); ``failing_since`` when reloads began to fail.
        """
        rules, error, since = self._rules, self.last_error, self.failing_since
        return {
            "source": self.source,
            "rules": rules.digest if rules is not None else None,
            "loaded_at": iso_z(self.loaded_at) if self.loaded_at is not None else None,
            "reload_error": None if error is None else
            error.code if isinstance(error, BrokerError) else "reload_failed",
            "failing_since": iso_z(since) if since is not None and error is not None else None,
            "failed_reloads": self.failures,
        }

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
