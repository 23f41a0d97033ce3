"""Parse and check the SigV4 canonical requests Fine Uploader asks a server to sign. Pure.

For chunked uploads Fine Uploader sends one signing request per S3 call, its body's
``headers`` being ``AWS4-HMAC-SHA256\\n<amz-date>\\n<scope>\\n<canonical request>`` with the
canonical request un-hashed. Signing such a string blindly would sign *any* S3 request (a
GetObject, a DeleteObject, a CopyObject of someone else's key): a signing oracle. Here the
string is parsed into its parts and accepted only if it is one of the four calls of a
multipart upload, for the granted key, with nothing else in it:

=============  ======  ==============================  =====================================
operation      method  query (canonical form)          headers besides host/date/sha256
=============  ======  ==============================  =====================================
initiate       POST    ``uploads=``                    the grant's ``x-amz-acl``, encryption,
                                                       storage class and ``x-amz-meta-*``
upload part    PUT     ``partNumber=N&uploadId=X``     none
complete       POST    ``uploadId=X``                  none
abort          DELETE  ``uploadId=X``                  none
=============  ======  ==============================  =====================================

The broker then signs a canonical request it rebuilds itself from the checked parts
(:mod:`broker.s3.sigv4`), never the client's text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import quote, unquote

from broker.protocols.fineuploader.policy import (ALGORITHM, OBJECT_FIELDS, SigningLimits, Violation, check_amz_date, meta_problem,
                     short)

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
MAX_CHARS = 16384
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEADER_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")
_UPLOAD_ID = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9._~%-]{1,1024}$")  # never "." or "..": path segments
_PART_NUMBER = re.compile(r"^[1-9][0-9]{0,4}$")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_COMMON = ("host", "x-amz-content-sha256", "x-amz-date")


class Operation(str, Enum):
    """The S3 calls of a multipart upload, the only ones the broker signs."""

    INITIATE = "initiate"
    UPLOAD_PART = "upload_part"
    COMPLETE = "complete"
    ABORT = "abort"


@dataclass(frozen=True)
class CanonicalRequest:
    """The six parts of a SigV4 canonical request, as the client wrote them."""

    method: str
    uri: str
    query: str
    headers: tuple[tuple[str, str], ...]
    signed_headers: tuple[str, ...]
    payload_hash: str


@dataclass(frozen=True)
class StringToSign:
    """Fine Uploader's string to sign with the canonical request left un-hashed."""

    algorithm: str
    amz_date: str
    scope: str
    request: CanonicalRequest


@dataclass(frozen=True)
class RestRequest:
    """A checked multipart call: what the broker rebuilds and signs (the host comes from the store)."""

    operation: Operation
    method: str
    key: str
    query: str
    headers: tuple[tuple[str, str], ...]  # every signed header except host, in canonical order
    amz_date: str
    payload_hash: str
    upload_id: str | None = None  # as it appears in the query (URI-encoded)
    part_number: int | None = None

    @property
    def upload_id_decoded(self) -> str | None:
        """The upload id as S3 issued it."""
        return None if self.upload_id is None else unquote(self.upload_id)


def parse_string_to_sign(text: Any) -> tuple[StringToSign | None, list[Violation]]:
    """Split Fine Uploader's ``headers`` string into its parts, or say why it is malformed."""
    if not isinstance(text, str) or not text:
        return None, [Violation("$.headers", "headers must be the string to sign (a non-empty string)")]
    if len(text) > MAX_CHARS:
        return None, [Violation("$.headers", f"the string to sign is longer than {MAX_CHARS} characters")]
    bad = _CONTROL.search(text)
    if bad:
        return None, [Violation("$.headers", f"the string to sign contains the control character "
                                             f"U+{ord(bad.group()):04X} (headers cannot be smuggled in)")]
    lines = text.split("\n")
    if len(lines) < 9:
        return None, [Violation("$.headers", "the string to sign needs the algorithm, date, scope and "
                                             "a canonical request (method, path, query, headers, signed "
                                             "headers, payload hash)")]
    algorithm, amz_date, scope = lines[0], lines[1], lines[2]
    try:
        blank = lines.index("", 6)
    except ValueError:
        return None, [Violation("$.headers", "the canonical request has no blank line after its headers")]
    if len(lines) != blank + 3:
        return None, [Violation("$.headers", "the canonical request must end with the signed headers "
                                             "and the payload hash, and nothing after them")]
    problems: list[Violation] = []
    headers: list[tuple[str, str]] = []
    for n, line in enumerate(lines[6:blank]):
        name, colon, value = line.partition(":")
        where = f"$.headers.canonical_headers[{n}]"
        if not colon or not _HEADER_NAME.match(name):
            problems.append(Violation(where, f"{short(line, 60)} is not a lower-case 'name:value' header line"))
            continue
        if value != value.strip():
            problems.append(Violation(where, f"the value of {name} has surrounding white space"))
            continue
        headers.append((name, value))
    request = CanonicalRequest(
        method=lines[3], uri=lines[4], query=lines[5], headers=tuple(headers),
        signed_headers=tuple(lines[blank + 1].split(";")), payload_hash=lines[blank + 2],
    )
    if problems:
        return None, problems
    return StringToSign(algorithm, amz_date, scope, request), []


def _operation(req: CanonicalRequest, limits: SigningLimits) -> tuple[Operation | None, str | None,
                                                                      int | None, list[Violation]]:
    pairs = [p.partition("=") for p in req.query.split("&")] if req.query else []
    names = [name for name, _, _ in pairs]
    values = {name: value for name, _, value in pairs}
    shape = (req.method, tuple(names))
    operation = {
        ("POST", ("uploads",)): Operation.INITIATE,
        ("PUT", ("partNumber", "uploadId")): Operation.UPLOAD_PART,
        ("POST", ("uploadId",)): Operation.COMPLETE,
        ("DELETE", ("uploadId",)): Operation.ABORT,
    }.get(shape)  # type: ignore[call-overload]
    if operation is None:
        return None, None, None, [Violation("$.headers.method", _what_it_is(req))]
    problems = []
    upload_id = values.get("uploadId")
    part = None
    if operation is Operation.INITIATE and values["uploads"] != "":
        problems.append(Violation("$.headers.query", "the initiate query must be exactly 'uploads='"))
    if upload_id is not None and not _UPLOAD_ID.match(upload_id):
        problems.append(Violation("$.headers.query", f"uploadId {short(upload_id, 60)} is malformed"))
    if operation is Operation.UPLOAD_PART:
        number = values["partNumber"]
        if not _PART_NUMBER.match(number):
            problems.append(Violation("$.headers.query", f"partNumber {short(number, 20)} is not 1..10000"))
        elif int(number) > limits.max_parts:
            problems.append(Violation("$.headers.query", f"part {number} is more than the rule's size "
                                                         f"allows ({limits.max_parts} parts of 5 MiB)"))
        else:
            part = int(number)
    return operation, upload_id, part, problems


def _what_it_is(req: CanonicalRequest) -> str:
    names = {name for name, _ in req.headers}
    query = req.query.split("=")[0] if req.query else ""
    guess = {
        ("GET", ""): "GetObject", ("HEAD", ""): "HeadObject", ("DELETE", ""): "DeleteObject",
        ("PUT", ""): "CopyObject" if "x-amz-copy-source" in names else "PutObject",
        ("PUT", "acl"): "PutObjectAcl", ("GET", "acl"): "GetObjectAcl", ("PUT", "tagging"): "PutObjectTagging",
        ("GET", "uploadId"): "ListParts", ("GET", "uploads"): "ListMultipartUploads",
    }.get((req.method, query))
    what = f" (that is {guess})" if guess else ""
    return (f"{short(req.method, 10)} ?{short(req.query, 60)}{what} is not signed: only initiate "
            "(POST ?uploads), upload part (PUT ?partNumber&uploadId), complete (POST ?uploadId) "
            "and abort (DELETE ?uploadId) of the granted key are")


def _uri_problem(uri: str, limits: SigningLimits) -> Violation | None:
    encoded = quote(limits.key, safe="/")
    allowed = {f"/{limits.key}", f"/{encoded}", f"/{limits.bucket}/{limits.key}", f"/{limits.bucket}/{encoded}"}
    if uri not in allowed:
        return Violation("$.headers.uri", f"the path {short(uri)} is not the granted key /{short(limits.key)}")
    return None


def _header_problems(op: Operation, sts: StringToSign, limits: SigningLimits) -> list[Violation]:
    req = sts.request
    problems: list[Violation] = []
    names = [name for name, _ in req.headers]
    if len(set(names)) != len(names):
        problems.append(Violation("$.headers.canonical_headers", "a header appears twice"))
    if names != sorted(names) or tuple(names) != req.signed_headers:
        problems.append(Violation("$.headers.signed_headers", "the signed headers must list exactly the "
                                                              "canonical headers, sorted"))
    headers = dict(req.headers)
    for name in _COMMON:
        if name not in headers:
            problems.append(Violation("$.headers.canonical_headers", f"{name} must be signed"))
    if "host" in headers and headers["host"] not in limits.hosts:
        problems.append(Violation("$.headers.canonical_headers",
                                  f"host {short(headers['host'])} is not the store's "
                                  f"({', '.join(limits.hosts)}); set objectProperties.host"))
    if "x-amz-date" in headers and headers["x-amz-date"] != sts.amz_date:
        problems.append(Violation("$.headers.canonical_headers", "x-amz-date differs from the signing date"))
    sha = headers.get("x-amz-content-sha256")
    if sha is not None:
        if not _HEX64.match(sha):
            problems.append(Violation("$.headers.canonical_headers",
                                      "x-amz-content-sha256 must be the payload's SHA-256 in hex"))
        elif op in (Operation.INITIATE, Operation.ABORT) and sha != EMPTY_SHA256:
            problems.append(Violation("$.headers.canonical_headers", f"a {op.value} request has no body"))
        if sha != req.payload_hash:
            problems.append(Violation("$.headers.payload_hash", "the payload hash differs from x-amz-content-sha256"))
    expected = limits.expected()
    for name, value in req.headers:
        path = f"$.headers.canonical_headers.{name}"
        if name in _COMMON:
            continue
        if name == "x-amz-security-token":
            if value != limits.session_token:
                problems.append(Violation(path, "x-amz-security-token is not the broker's session token"))
        elif op is not Operation.INITIATE:
            problems.append(Violation(path, f"{short(name, 60)} may not be sent with {op.value} "
                                            "(only host, x-amz-date and x-amz-content-sha256)"))
        elif name.startswith("x-amz-meta-"):
            problem = meta_problem(name, value, limits, expected, path)
            if problem:
                problems.append(problem)
        elif name == "x-amz-acl":
            if value != expected.get("acl"):
                problems.append(Violation(path, f"x-amz-acl must be {short(expected.get('acl'))}, not {short(value)}"))
        elif name in OBJECT_FIELDS and name != "acl":
            if name not in expected:
                problems.append(Violation(path, f"{name} is not set by the rule, so it may not be sent"))
            elif value != expected[name]:
                problems.append(Violation(path, f"{name} must be {short(expected[name])}, not {short(value)}"))
        else:
            problems.append(Violation(path, f"{short(name, 60)} is not a header the broker signs"))
    if op is Operation.INITIATE:
        for name in sorted(expected):
            wanted = "x-amz-acl" if name == "acl" else name
            # Content-Type, Cache-Control, Content-Disposition: Fine Uploader never signs them.
            if (wanted.startswith("x-amz-")) and wanted not in headers:
                problems.append(Violation("$.headers.canonical_headers",
                                          f"{wanted} is required by the grant but not signed"))
    if limits.session_token is not None and "x-amz-security-token" not in headers:
        problems.append(Violation("$.headers.canonical_headers", "the broker signs with temporary "
                                                                 "credentials: x-amz-security-token must be signed"))
    return problems


def check_rest(sts: StringToSign, limits: SigningLimits) -> tuple[RestRequest | None, list[Violation]]:
    """The multipart call to sign, or every reason the string to sign is refused."""
    problems: list[Violation] = []
    if sts.algorithm != ALGORITHM:
        problems.append(Violation("$.headers.algorithm", f"the algorithm must be {ALGORITHM}"))
    date_problem = check_amz_date(sts.amz_date, limits, "$.headers.date")
    if date_problem:
        problems.append(date_problem)
    want_scope = f"{sts.amz_date[:8]}/{limits.region}/s3/aws4_request"
    if sts.scope != want_scope:
        problems.append(Violation("$.headers.scope", f"the scope must be {want_scope} "
                                                     f"(set objectProperties.region), not {short(sts.scope)}"))
    req = sts.request
    operation, upload_id, part, op_problems = _operation(req, limits)
    problems.extend(op_problems)
    uri_problem = _uri_problem(req.uri, limits)
    if uri_problem:
        problems.append(uri_problem)
    if operation is None:
        return None, problems
    problems.extend(_header_problems(operation, sts, limits))
    if problems:
        return None, problems
    return RestRequest(
        operation=operation, method=req.method, key=limits.key, query=req.query,
        headers=tuple((n, v) for n, v in req.headers if n != "host"), amz_date=sts.amz_date,
        payload_hash=req.payload_hash, upload_id=upload_id, part_number=part,
    ), []
