"""``broker probe-store``: know the store. Which guarantees does it enforce itself, which rest on the verifier?

The broker signs forms whose policy binds the key, the size range, the type and every field;
the README's promise is that *the store* refuses anything else. Stores differ (SeaweedFS, for
one, stores a ``Content-Disposition`` nobody signed), so this probe tampers with real forms and
a real multipart initiate against the configured bucket, one row of :data:`ROWS` at a time,
and reports for each what was tried, what the store did, and a :class:`Verdict`.

Every object it writes is under ``<prefix><random>/`` (``broker-probe/`` unless told) and is
deleted at the end, and every multipart upload it starts is aborted, unless ``keep``. Forms are
posted with :mod:`http.client` (exact bytes and headers: no redirect followed, no header added
unasked), so the module also runs from the Lambda zip; every signature comes from
:class:`~broker.s3.store.S3Store`.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlsplit

from broker.errors import BrokerError, ServiceUnavailable, StoreUnavailable
from broker.models import Grant, SignedPost, StoredObject
from broker.s3.store import S3Store

DEFAULT_PREFIX = "broker-probe/"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: Where an uncovered success_action_redirect points: a closed loopback port, never contacted.
REDIRECT_TARGET = "http://127.0.0.1:9/broker-probe-landing"
_BODY = b"broker probe: plain text, 48 bytes long.........\n"
_HTML = b"<!doctype html><html><body><script>alert(document.domain)</script></body></html>\n"


class Verdict(str, Enum):
    """Who keeps a guarantee, as observed."""

    STORE = "enforced by the store"
    VERIFIER = "rests on the verifier"
    NOTHING = "enforced by nothing"  # the store lets it through and the verifier cannot see it
    UNKNOWN = "not applicable/unknown"


@dataclass(frozen=True)
class Row:
    """One line of the matrix: what was tried, what the store did, who keeps the guarantee."""

    name: str
    tried: str
    observed: str
    verdict: Verdict


@dataclass(frozen=True)
class Answer:
    """The store's HTTP answer to one request: status, headers (names lower-case), the body's start."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str = ""

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return 200 <= self.status < 300

    def xml(self, tag: str) -> str:
        """The text of the first ``<tag>`` in the body (S3 answers in XML), or ''."""
        found = re.search(rf"<{tag}>([^<]*)</{tag}>", self.body)
        return found.group(1).strip() if found else ""

    def words(self) -> str:
        """``403 AccessDenied (Invalid according to Policy: ...)``, short."""
        text, code, message = str(self.status), self.xml("Code"), self.xml("Message")
        if code:
            text += f" {code}"
        if message:
            text += f" ({message[:100]})"
        return text


class ProbeUnavailable(ServiceUnavailable):
    """The probe could not run: no store, no bucket, no credentials, or a correct form refused."""

    code = "probe_unavailable"


# --------------------------------------------------------------------------- HTTP, exactly as asked


def send(method: str, url: str, headers: Mapping[str, str], body: bytes, *, timeout: float = 10.0) -> Answer:
    """One HTTP request with exactly these headers (plus Host, Content-Length); never follows a redirect."""
    parts = urlsplit(url)
    conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(parts.netloc, timeout=timeout)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        sent = {name.lower() for name in headers}
        if "host" not in sent:
            conn.putheader("Host", parts.netloc)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        text = resp.read(65536).decode("utf-8", "replace")
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, text)
    except (OSError, http.client.HTTPException) as exc:
        raise ProbeUnavailable(f"no answer from {parts.scheme}://{parts.netloc}: {exc}") from None
    finally:
        conn.close()


def form_body(fields: Sequence[tuple[str, str]], content: bytes, file_type: str) -> tuple[bytes, str]:
    """multipart/form-data with ``fields`` in order and the file last; (body, Content-Type header)."""
    boundary = "broker-probe-" + secrets.token_hex(12)
    out = bytearray()
    for name, value in fields:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").encode()
    out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"probe\"\r\n"
            f"Content-Type: {file_type}\r\n\r\n").encode()
    out += content + f"\r\n--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


# --------------------------------------------------------------------------- the probe's context


@dataclass
class Probe:
    """The store under test, the probe's own prefix, and what it made (to clean up)."""

    store: S3Store
    bucket: str
    region: str = "us-east-1"
    prefix: str = DEFAULT_PREFIX
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    run_id: str = field(default_factory=lambda: secrets.token_hex(8))
    uploads: list[tuple[str, str]] = field(default_factory=list)  # (key, upload id), to abort
    multipart_works: bool = False  # set by the multipart control row
    _n: int = 0

    @property
    def run_prefix(self) -> str:
        """Where every object of this run lives: ``<prefix><run id>/``."""
        return f"{self.prefix}{self.run_id}/"

    def new_key(self, name: str) -> str:
        """A fresh key under the run prefix."""
        self._n += 1
        return f"{self.run_prefix}{self._n:02d}-{name}.txt"

    def grant(self, name: str, *, content_type: str = "text/plain", min_bytes: int = 1, max_bytes: int = 1024,
              expires_in: int = 300, **extra: str) -> Grant:
        """A grant as the rules would make it, for a fresh probe key."""
        fields = {"Content-Type": content_type, "acl": "private", **extra}
        return Grant(client="broker-probe", profile=name, bucket=self.bucket, key=self.new_key(name),
                     content_type=content_type, min_bytes=min_bytes, max_bytes=max_bytes,
                     expires_in=expires_in, fields=fields)

    def sign(self, grant: Grant, now: datetime | None = None) -> SignedPost:
        """The broker's own presigned POST for ``grant``."""
        return self.store.sign_post(grant, now=now or self.clock())

    def post(self, signed: SignedPost, content: bytes, *, set_fields: Mapping[str, str] | None = None) -> Answer:
        """Post the form, with ``set_fields`` replacing or added to the signed fields, and the file last."""
        fields = {**signed.fields, **(set_fields or {})}
        body, content_type = form_body(list(fields.items()), content,
                                       fields.get("Content-Type", "application/octet-stream"))
        return send("POST", signed.url, {"Content-Type": content_type}, body)

    def stored(self, key: str) -> StoredObject | None:
        """What the store keeps at ``key`` (headers, metadata; no bytes), or None."""
        return self.store.inspect(self.bucket, key, head_bytes=0)

    def initiate(self, key: str, unsigned: Mapping[str, str]) -> tuple[Answer, str]:
        """CreateMultipartUpload signed by the broker (x-amz-acl, date, payload hash), sent with ``unsigned`` too.

        Signed as Fine Uploader's initiate is (:mod:`broker.s3.sigv4`); returns the answer and the upload id.
        """
        amz_date = self.clock().strftime("%Y%m%dT%H%M%SZ")
        facts = self.store.sigv4.facts()
        signed = [("x-amz-acl", "private"), ("x-amz-content-sha256", EMPTY_SHA256), ("x-amz-date", amz_date)]
        if facts.session_token:
            signed.append(("x-amz-security-token", facts.session_token))
        signature, names = self.store.sigv4.sign_rest(method="POST", key=key, query="uploads=", headers=tuple(signed),
                                                      amz_date=amz_date, bucket=self.bucket, region=self.region)
        scope = f"{amz_date[:8]}/{self.region}/s3/aws4_request"
        headers = {"Host": self.store.sigv4.host(self.bucket), **dict(signed), **unsigned,
                   "Authorization": f"AWS4-HMAC-SHA256 Credential={facts.access_key_id}/{scope}, "
                                    f"SignedHeaders={names}, Signature={signature}"}
        answer = send("POST", f"{self.store.sigv4.object_url(self.bucket, key)}?uploads=", headers, b"")
        upload_id = answer.xml("UploadId") if answer.ok else ""
        if upload_id:
            self.uploads.append((key, upload_id))
        return answer, upload_id

    def finish(self, key: str, upload_id: str, content: bytes) -> str | None:
        """Upload ``content`` as the only part (through a broker part URL) and complete; None, or what failed."""
        part = send("PUT", self.store.part_url(self.bucket, key, upload_id, 1, 300), {}, content)
        if not part.ok:
            return f"the part was refused: {part.words()}"
        try:
            self.store.complete_multipart(self.bucket, key, upload_id,
                                          [{"PartNumber": 1, "ETag": part.headers.get("etag", "")}])
        except BrokerError as exc:
            return f"completing was refused: {exc.message}"
        return None


# --------------------------------------------------------------------------- the trials

Outcome = tuple[str, Verdict]


@dataclass(frozen=True)
class Trial:
    """One row to run: its name, what it tries (in words), and the function that tries it."""

    name: str
    tried: str
    run: Callable[[Probe], Outcome]


def _refused(p: Probe, answer: Answer, key: str, *, otherwise: Verdict, check: str = "") -> Outcome:
    """The common judgement: refused with nothing stored -> the store; stored -> ``otherwise``."""
    obj = p.stored(key)
    if obj is None:
        if answer.ok:
            return f"answered {answer.words()} but stored nothing", Verdict.STORE
        return f"refused: {answer.words()}", Verdict.STORE
    return (f"accepted ({answer.status}), stored {obj.size} bytes; only the verifier's {check} check catches it"
            if otherwise is Verdict.VERIFIER else f"accepted ({answer.status}), stored {obj.size} bytes"), otherwise


def stored_value(obj: StoredObject, header: str) -> str | None:
    """The value the store kept for a header or form field (Content-Type, x-amz-meta-*, others)."""
    name = header.lower()
    if name == "content-type":
        return obj.content_type
    if name.startswith("x-amz-meta-"):
        return obj.metadata.get(name[len("x-amz-meta-"):])
    return next((v for k, v in obj.headers.items() if k.lower() == name), None)


def control(p: Probe) -> Outcome:
    """The form exactly as signed must be stored, or nothing else this probe sees means anything."""
    grant = p.grant("control")
    answer = p.post(p.sign(grant), _BODY)
    if not answer.ok or p.stored(grant.key) is None:
        raise ProbeUnavailable(f"the store refused a correctly signed form ({answer.words()}): check the "
                               "endpoint (AWS_ENDPOINT_URL_S3), the region (AWS_REGION) and the credentials")
    return f"stored ({answer.status})", Verdict.UNKNOWN


def uncovered_field(header: str, value: str, check: str) -> Callable[[Probe], Outcome]:
    """A form field the policy does not cover, added to a correctly signed form."""

    def run(p: Probe) -> Outcome:
        grant = p.grant("uncovered")
        answer = p.post(p.sign(grant), _BODY, set_fields={header: value})
        obj = p.stored(grant.key)
        if not answer.ok or obj is None:
            return f"refused: {answer.words()}", Verdict.STORE
        kept = stored_value(obj, header)
        if kept == value:
            return (f"accepted ({answer.status}) and stored {header}: {kept}; only the verifier's {check} "
                    "check catches it"), Verdict.VERIFIER
        return f"accepted ({answer.status}) but did not apply it (stored: {kept!r})", Verdict.STORE

    return run


def oversize(p: Probe) -> Outcome:
    """A file larger than content-length-range allows."""
    grant = p.grant("oversize", max_bytes=16)
    return _refused(p, p.post(p.sign(grant), _BODY), grant.key, otherwise=Verdict.VERIFIER, check="size")


def undersize(p: Probe) -> Outcome:
    """A file smaller than content-length-range allows."""
    grant = p.grant("undersize", min_bytes=32)
    return _refused(p, p.post(p.sign(grant), b"x"), grant.key, otherwise=Verdict.VERIFIER, check="size")


def changed_key(p: Probe) -> Outcome:
    """The form's key replaced by another key (under the probe prefix too)."""
    grant = p.grant("signed-key")
    other = p.new_key("changed-key")
    answer = p.post(p.sign(grant), _BODY, set_fields={"key": other})
    if p.stored(grant.key) is not None:
        return f"stored the file under the signed key instead ({answer.status})", Verdict.STORE
    return _refused(p, answer, other, otherwise=Verdict.VERIFIER, check="key")


def changed_type(p: Probe) -> Outcome:
    """A Content-Type other than the one signed."""
    grant = p.grant("changed-type")
    answer = p.post(p.sign(grant), _BODY, set_fields={"Content-Type": "text/html"})
    obj = p.stored(grant.key)
    if obj is not None and obj.content_type != "text/html":
        return f"accepted ({answer.status}) but stored the signed type {obj.content_type}", Verdict.STORE
    return _refused(p, answer, grant.key, otherwise=Verdict.VERIFIER, check="content type")


def expired(p: Probe) -> Outcome:
    """A form posted after its policy expired (signed with ``now`` ten minutes ago, or wait a second)."""
    grant = p.grant("expired", expires_in=60)
    signed = p.sign(grant, now=p.clock() - timedelta(minutes=10))
    wait = (signed.expires_at - p.clock()).total_seconds()
    if wait >= 0:  # a signer that keeps its own clock: make a form that expires in a second, and wait
        signed = p.sign(p.grant("expired", expires_in=1))
        wait = (signed.expires_at - p.clock()).total_seconds()
        if wait > 5:
            return f"could not make an expired form (it expires at {signed.expires_at})", Verdict.UNKNOWN
        time.sleep(max(wait, 0) + 1.5)
    return _refused(p, p.post(signed, _BODY), signed.fields["key"], otherwise=Verdict.NOTHING)


def uncovered_redirect(p: Probe) -> Outcome:
    """success_action_redirect added to the form, which the policy does not cover: followed?"""
    grant = p.grant("redirect")
    answer = p.post(p.sign(grant), _BODY, set_fields={"success_action_redirect": REDIRECT_TARGET})
    location = answer.headers.get("location", "")
    if 300 <= answer.status < 400 and location.startswith(REDIRECT_TARGET):
        return (f"followed it: {answer.status} to {location.split('?')[0]} (only the poster's own browser is sent "
                "there; no stored object shows it)"), Verdict.NOTHING
    if answer.ok:
        return f"accepted ({answer.status}) and ignored it", Verdict.STORE
    return f"refused: {answer.words()}", Verdict.STORE


def wrong_bytes(p: Probe) -> Outcome:
    """HTML posted under a signed image/png: no store reads the bytes."""
    grant = p.grant("wrong-bytes", content_type="image/png")
    answer = p.post(p.sign(grant), _HTML)
    obj = p.stored(grant.key)
    if answer.ok and obj is not None:
        return (f"stored HTML as {obj.content_type} ({answer.status}): the store never reads the bytes; only the "
                "verifier's bytes check (sniffing) catches it"), Verdict.VERIFIER
    return f"refused: {answer.words()} (unexpected: stores do not read the bytes)", Verdict.UNKNOWN


def wrong_checksum(p: Probe) -> Outcome:
    """x-amz-checksum-sha256 signed in the policy, of other bytes (after the right digest, as a control)."""
    right = base64.b64encode(hashlib.sha256(_BODY).digest()).decode()
    wrong = base64.b64encode(hashlib.sha256(b"other bytes").digest()).decode()
    good = p.grant("checksum-right", **{"x-amz-checksum-sha256": right})
    first = p.post(p.sign(good), _BODY)
    if not first.ok:
        return f"refused even the right digest: {first.words()}", Verdict.UNKNOWN
    bad = p.grant("checksum-wrong", **{"x-amz-checksum-sha256": wrong})
    answer = p.post(p.sign(bad), _BODY)
    obj = p.stored(bad.key)
    if obj is None:
        return f"right digest stored ({first.status}); wrong digest refused: {answer.words()}", Verdict.STORE
    return (f"right digest stored ({first.status}); wrong digest ALSO stored ({answer.status}, checksum "
            f"kept: {obj.checksum_sha256 or 'none'}): the verifier does not read checksums"), Verdict.NOTHING


def multipart_control(p: Probe) -> Outcome:
    """A multipart upload initiated exactly as signed must complete, or the rows after it mean nothing."""
    key = p.new_key("multipart-control")
    answer, upload_id = p.initiate(key, {})
    problem = None if upload_id else f"initiate refused: {answer.words()}"
    problem = problem or p.finish(key, upload_id, _BODY)
    p.multipart_works = problem is None
    return (problem or "completed"), Verdict.UNKNOWN


def unsigned_initiate_header(header: str, value: str, check: str) -> Callable[[Probe], Outcome]:
    """A header the broker did not sign, sent with a CreateMultipartUpload it signed for others."""

    def run(p: Probe) -> Outcome:
        if not p.multipart_works:
            return "not tried: a correctly signed multipart upload did not complete", Verdict.UNKNOWN
        key = p.new_key("unsigned-header")
        answer, upload_id = p.initiate(key, {header: value})
        if not upload_id:
            return f"initiate refused: {answer.words()}", Verdict.STORE
        problem = p.finish(key, upload_id, _BODY)
        obj = p.stored(key)
        if problem or obj is None:
            return f"initiate accepted; then {problem or 'nothing was stored'}", Verdict.UNKNOWN
        kept = stored_value(obj, header)
        if kept == value:
            return (f"initiate accepted; the object has {header}: {kept}; only the verifier's {check} check "
                    "catches it"), Verdict.VERIFIER
        return f"initiate accepted; not applied (stored: {kept!r})", Verdict.STORE

    return run


#: The matrix, in the order it runs (each control first: when it fails, the rows after it are moot).
TRIALS: tuple[Trial, ...] = (
    Trial("control", "the form exactly as signed", control),
    Trial("uncovered Content-Disposition", "Content-Disposition: inline; filename=probe.html added to the form",
          uncovered_field("Content-Disposition", "inline; filename=probe.html", "headers")),
    Trial("uncovered Cache-Control", "Cache-Control: public, max-age=31536000 added to the form",
          uncovered_field("Cache-Control", "public, max-age=31536000", "headers")),
    Trial("uncovered x-amz-meta-*", "x-amz-meta-probe: uncovered added to the form",
          uncovered_field("x-amz-meta-probe", "uncovered", "metadata")),
    Trial("uncovered redirect location", "x-amz-website-redirect-location: /elsewhere added to the form",
          uncovered_field("x-amz-website-redirect-location", "/elsewhere", "headers")),
    Trial("oversize", "48 bytes against content-length-range 1-16", oversize),
    Trial("undersize", "1 byte against content-length-range 32-1024", undersize),
    Trial("changed key", "the form's key field changed to another key", changed_key),
    Trial("changed Content-Type", "Content-Type text/html posted; text/plain signed", changed_type),
    Trial("expired form", "a form posted after its policy's expiration", expired),
    Trial("uncovered success_action_redirect", f"success_action_redirect={REDIRECT_TARGET} added to the form",
          uncovered_redirect),
    Trial("wrong bytes", "HTML bytes posted under a signed image/png", wrong_bytes),
    Trial("wrong x-amz-checksum-sha256", "x-amz-checksum-sha256 bound in the policy, of other bytes "
                                         "(first the right digest, as a control)", wrong_checksum),
    Trial("multipart control", "CreateMultipartUpload as signed, one part, complete", multipart_control),
    Trial("multipart unsigned Content-Type", "initiate signed for x-amz-acl, sent with Content-Type: text/html",
          unsigned_initiate_header("Content-Type", "text/html", "content type")),
    Trial("multipart unsigned Content-Disposition", "initiate signed for x-amz-acl, sent with "
                                                    "Content-Disposition: inline",
          unsigned_initiate_header("Content-Disposition", "inline", "headers")),
    Trial("multipart unsigned x-amz-meta-*", "initiate signed for x-amz-acl, sent with x-amz-meta-probe: unsigned",
          unsigned_initiate_header("x-amz-meta-probe", "unsigned", "metadata")),
    Trial("multipart unsigned redirect location", "initiate signed for x-amz-acl, sent with "
                                                  "x-amz-website-redirect-location: /elsewhere",
          unsigned_initiate_header("x-amz-website-redirect-location", "/elsewhere", "headers")),
)


# --------------------------------------------------------------------------- running it, and cleaning up


@dataclass(frozen=True)
class Report:
    """The matrix for one bucket, and what was left behind."""

    bucket: str
    prefix: str
    rows: tuple[Row, ...]
    deleted: int = 0
    aborted: int = 0
    left: tuple[str, ...] = ()  # keys still under the prefix (all of them with keep)
    cleanup_problems: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON values."""
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.verdict.value] = counts.get(row.verdict.value, 0) + 1
        return {"bucket": self.bucket, "prefix": self.prefix,
                "rows": [{"name": r.name, "tried": r.tried, "observed": r.observed, "verdict": r.verdict.value}
                         for r in self.rows],
                "summary": counts, "cleanup": {"deleted": self.deleted, "aborted": self.aborted,
                                               "left": list(self.left), "problems": list(self.cleanup_problems)}}


def run_probe(store: S3Store, bucket: str, *, region: str = "us-east-1", prefix: str = DEFAULT_PREFIX,
              keep: bool = False, clock: Callable[[], datetime] | None = None,
              trials: Sequence[Trial] = TRIALS) -> Report:
    """Run every trial against ``bucket`` under ``<prefix><random>/``, then delete what they made (unless ``keep``).

    Raises :class:`ProbeUnavailable` when the probe cannot run: the store does not answer, the
    bucket is not there or cannot be listed, or a correctly signed form is refused.
    """
    p = Probe(store, bucket, region=region, prefix=prefix, **({"clock": clock} if clock else {}))
    try:
        list(store.keys(bucket, p.run_prefix))
    except StoreUnavailable as exc:
        why = exc.message
        if exc.unreachable and exc.store_message:  # botocore's own words, without the URL's query
            why = re.sub(r"\?[^\"\s]*", "", exc.store_message)
        raise ProbeUnavailable(f"cannot use bucket {bucket!r}: {why}") from None
    rows: list[Row] = []
    try:
        for trial in trials:
            try:
                observed, verdict = trial.run(p)
            except ProbeUnavailable:
                raise
            except BrokerError as exc:
                observed, verdict = f"error: {exc.message}", Verdict.UNKNOWN
            rows.append(Row(trial.name, trial.tried, observed, verdict))
    finally:
        deleted, aborted, problems = (0, 0, []) if keep else clean_up(p)
    try:
        left = tuple(key for key, _ in store.keys(bucket, p.run_prefix))
    except StoreUnavailable as exc:
        left, problems = (), [*problems, f"could not list what is left: {exc.message}"]
    return Report(bucket, p.run_prefix, tuple(rows), deleted, aborted, left, tuple(problems))


def clean_up(p: Probe) -> tuple[int, int, list[str]]:
    """Abort every upload the probe started, delete every object under its run prefix; (deleted, aborted, problems).

    A failed call is noted and the rest go on: the matrix is reported whatever happens here.
    """
    problems: list[str] = []
    aborted = deleted = 0
    for key, upload_id in p.uploads:
        try:
            p.store.abort_multipart(p.bucket, key, upload_id)
            aborted += 1
        except StoreUnavailable as exc:
            problems.append(f"{key}: {exc.message}")
    try:
        keys = [key for key, _ in p.store.keys(p.bucket, p.run_prefix)]
    except StoreUnavailable as exc:
        return deleted, aborted, [*problems, f"could not list {p.run_prefix}: {exc.message}"]
    for key in keys:
        try:
            p.store.delete(p.bucket, key)
            deleted += 1
        except StoreUnavailable as exc:
            problems.append(f"{key}: {exc.message}")
    return deleted, aborted, problems


# --------------------------------------------------------------------------- the command


def render(report: Report, *, store_name: str = "") -> str:
    """The report as a table for people."""
    width = max(len(r.name) for r in report.rows) if report.rows else 10
    vwidth = max(len(v.value) for v in Verdict)
    lines = [f"store {store_name or '(given)'}, bucket {report.bucket}, probe prefix {report.prefix}", "",
             f"{'guarantee':{width}}  {'verdict':{vwidth}}  what was tried / what the store did",
             f"{'-' * width}  {'-' * vwidth}  {'-' * 36}"]
    for row in report.rows:
        lines.append(f"{row.name:{width}}  {row.verdict.value:{vwidth}}  tried: {row.tried}")
        lines.append(f"{'':{width}}  {'':{vwidth}}  store: {row.observed}")
    counts = report.to_json()["summary"]
    lines += ["", "; ".join(f"{n} {v}" for v, n in counts.items())]
    if report.left and not report.deleted:
        lines.append(f"kept {len(report.left)} object(s) under s3://{report.bucket}/{report.prefix} (--keep)")
    elif report.left:
        lines.append(f"cleanup left {len(report.left)} object(s) under s3://{report.bucket}/{report.prefix}")
    else:
        lines.append(f"cleaned up: {report.deleted} object(s) deleted, {report.aborted} multipart upload(s) aborted")
    lines.extend(f"cleanup problem: {problem}" for problem in report.cleanup_problems)
    return "\n".join(lines)


HELP = """\
Know the store: run a tamper matrix against the bucket and print, for each guarantee the
broker's forms promise, whether the store enforces it itself or only the verifier
(broker verify, and the verifier behind the store's events) catches a break of it.

What it does to the bucket: it WRITES small objects (under 100 bytes each) and starts
multipart uploads, all under <prefix><random>/ (default broker-probe/<random>/), then
aborts those uploads and DELETES every object under that prefix (unless --keep). Nothing
else in the bucket is read or touched. The credentials need s3:PutObject, s3:GetObject,
s3:GetObjectTagging, s3:DeleteObject and s3:AbortMultipartUpload on that prefix and
s3:ListBucket (more than the broker's least-privilege signer role has: run it as an
operator). Rows: a field the policy does not cover, files over and under the
size range, a changed key, a changed Content-Type, an expired form, an uncovered
success_action_redirect, HTML posted as image/png, a wrong x-amz-checksum-sha256, and
headers nobody signed on a signed CreateMultipartUpload (as Fine Uploader sends it)."""

EPILOG = """\
verdicts:
  enforced by the store    the store refused the tampered request (or ignored the change)
  rests on the verifier    the store took it; only the verifier's checks catch it
  enforced by nothing      the store took it and no stored object shows it
  not applicable/unknown   a control row, or the store answered in a way that proves nothing

exit status: 0 the probe ran (whatever it found), 2 it could not run (no store, no bucket,
no credentials, or a correctly signed form refused).

settings come from the environment as for the other commands: AWS_ENDPOINT_URL_S3,
AWS_REGION, BROKER_RULES (its bucket and region are the defaults), credentials as boto3 finds them.

examples:
  broker probe-store
  AWS_ENDPOINT_URL_S3=http://127.0.0.1:8333 broker probe-store --bucket broker-uploads --json
  broker probe-store --keep        # leave the probe objects for inspection"""


def cmd_probe_store(args: argparse.Namespace) -> int:
    """Build the store from the settings, run the probe, print the matrix."""
    from broker.config import Settings, load_rules_file
    from broker.s3.client import make_s3_client

    def cannot(message: str) -> int:
        print(f"broker probe-store: {message}", file=sys.stderr)
        return 2

    try:
        settings = Settings.from_env(os.environ)
    except BrokerError as exc:
        return cannot(exc.message)
    bucket, region = args.bucket, settings.region
    if not bucket or not region:
        try:
            ruleset = load_rules_file(settings.rules)
        except BrokerError as exc:
            if not bucket:
                return cannot(f"no bucket: give --bucket, or BROKER_RULES whose rules load ({exc.message})")
        else:
            bucket, region = bucket or ruleset.bucket, region or ruleset.region
    region = region or "us-east-1"
    prefix = args.prefix if args.prefix.endswith("/") else args.prefix + "/"
    try:
        store = S3Store(make_s3_client(settings, region))
        report = run_probe(store, bucket, region=region, prefix=prefix, keep=args.keep)
    except BrokerError as exc:
        return cannot(exc.message)
    except ValueError as exc:  # e.g. an endpoint URL botocore cannot use
        return cannot(str(exc))
    if args.json:
        print(json.dumps({"store": settings.s3_endpoint_url or "AWS S3", "region": region, **report.to_json()},
                         indent=2))
    else:
        print(render(report, store_name=settings.s3_endpoint_url or "AWS S3"))
    return 0


def register_cli(sub: Any) -> None:
    """Add ``probe-store`` to the ``broker`` command's sub-commands."""
    p = sub.add_parser("probe-store", help="tamper with forms against the bucket: what does the store enforce?",
                       description=HELP, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bucket", help="the bucket to probe (default: the rules' bucket, from BROKER_RULES)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX,
                   help=f"where the probe writes, a random folder under it (default: {DEFAULT_PREFIX})")
    p.add_argument("--json", action="store_true", help="print the matrix as JSON")
    p.add_argument("--keep", action="store_true", help="leave the probe's objects (and any unfinished multipart "
                                                       "upload) for inspection")
    p.set_defaults(func=cmd_probe_store)
