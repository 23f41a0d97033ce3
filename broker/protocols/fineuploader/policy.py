"""Check a Fine Uploader S3 POST policy against what the broker granted, and tighten it. Pure.

Fine Uploader builds the policy document in the browser and asks a server to sign it, then
posts its own form fields. A server that signs what arrives is a signing oracle, so
:func:`check_policy` accepts a document only if **every** condition is one the grant allows:

- each condition is ``{"field": "value"}`` (one field, a string) or one
  ``["content-length-range", min, max]``; ``eq``/``starts-with`` arrays, duplicates (in any
  letter case), unknown fields and non-string values are refused;
- ``bucket``, ``key``, ``acl``, ``Content-Type`` and every object field of the grant
  (``Cache-Control``, ``Content-Disposition``, encryption, storage class, ``x-amz-meta-*``) are
  present with exactly the granted value; ``x-amz-meta-qqfilename`` is the granted filename;
- ``x-amz-algorithm``, ``x-amz-credential`` (this broker's access key, the rule's region, a date
  agreeing with ``x-amz-date``) and ``x-amz-date`` (within 15 minutes of now) are sane;
- ``success_action_status`` is ``200`` (Fine Uploader's) or the rule's; it changes only the
  response to the browser, never the object.

The browser posts its own fields, so the only things a signer may change are the ones that
are not form fields: ``content-length-range`` is narrowed to the rule's range and
``expiration`` to the grant's. Every problem is reported with its JSON path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping
from urllib.parse import quote

from broker.timefmt import iso_z

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_CONDITIONS = 64
#: Fine Uploader asks S3 for a 200 response to every XHR form post.
FINE_UPLOADER_STATUS = "200"
_AMZ_DATE = re.compile(r"^([0-9]{8})T[0-9]{6}Z$")
_ISO = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]{1,6})?Z$")
_DIGITS = re.compile(r"^[0-9]{1,16}$")
# Object properties a grant may set, by lower-case field name (x-amz-meta-* handled apart).
OBJECT_FIELDS = frozenset({
    "content-type", "acl", "cache-control", "content-disposition", "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id", "x-amz-storage-class",
})
FILENAME_META = "x-amz-meta-qqfilename"


@dataclass(frozen=True)
class Violation:
    """One reason a signing request is refused: where in the request, and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.message} (at {self.path})"


@dataclass(frozen=True)
class SigningLimits:
    """What the broker will sign for one granted upload: a fresh decision plus signer facts."""

    bucket: str
    key: str
    filename: str
    fields: Mapping[str, str]  # the grant's object fields (Content-Type, acl, x-amz-meta-*, ...)
    min_bytes: int
    max_bytes: int
    region: str
    access_key_id: str
    session_token: str | None
    now: datetime
    not_after: datetime  # the latest expiration the broker signs
    multipart: bool = False
    max_parts: int = 10000
    hosts: tuple[str, ...] = ()  # Host header values a canonical request may name
    max_skew: timedelta = timedelta(minutes=15)

    def expected(self) -> dict[str, str]:
        """The grant's object fields by lower-case name (``success_action_status`` apart)."""
        return {k.lower(): v for k, v in self.fields.items() if k.lower() != "success_action_status"}


def encode_uri_component(value: str) -> str:
    """JavaScript's ``encodeURIComponent``: how Fine Uploader writes ``x-amz-meta-*`` values."""
    return quote(value, safe="-_.!~*'()")


def short(value: Any, limit: int = 120) -> str:
    """A value for an error message, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_amz_date(value: str, limits: SigningLimits, path: str) -> Violation | None:
    """A ``YYYYMMDDTHHMMSSZ`` time within ``max_skew`` of now, or why not."""
    if not isinstance(value, str) or not _AMZ_DATE.match(value):
        return Violation(path, f"x-amz-date must look like 20261128T144931Z, not {short(value)}")
    try:
        moment = datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return Violation(path, f"x-amz-date {value} is not a real time")
    if abs(moment - limits.now) > limits.max_skew:
        return Violation(path, f"x-amz-date {value} is more than {int(limits.max_skew.total_seconds() // 60)}"
                               " minutes from the broker's clock; check the computer's clock")
    return None


def parse_iso(value: Any) -> datetime | None:
    """An ISO 8601 UTC time such as ``2026-11-28T14:54:31.123Z``, or None."""
    match = _ISO.match(value) if isinstance(value, str) else None
    if not match:
        return None
    try:
        return datetime(*map(int, match.groups()), tzinfo=timezone.utc)  # type: ignore[misc]
    except ValueError:
        return None


def format_iso(moment: datetime) -> str:
    """``2026-11-28T14:54:31.000Z``, the layout S3 and Fine Uploader use."""
    return iso_z(moment.astimezone(timezone.utc).replace(microsecond=0), millis=True)


def meta_problem(name: str, value: str, limits: SigningLimits, expected: Mapping[str, str],
                 path: str) -> Violation | None:
    """Check one ``x-amz-meta-*`` value (URI-encoded by Fine Uploader) against the grant."""
    if name == FILENAME_META:
        want = encode_uri_component(limits.filename)
        if value != want:
            return Violation(path, f"{name} must be the granted file name {short(want)}, not {short(value)}")
        return None
    if name not in expected:
        allowed = sorted(k for k in expected if k.startswith("x-amz-meta-")) + [FILENAME_META]
        return Violation(path, f"metadata {name} was not granted (allowed: {', '.join(allowed)})")
    want = encode_uri_component(expected[name])
    if value != want:
        return Violation(path, f"{name} must be {short(want)}, not {short(value)}")
    return None


# --------------------------------------------------------------------------- the policy check

_FieldCheck = Callable[[str, SigningLimits, str], "Violation | None"]


def _exact(name: str, want: Callable[[SigningLimits], str], what: str) -> _FieldCheck:
    def check(value: str, limits: SigningLimits, path: str) -> Violation | None:
        expected = want(limits)
        if value != expected:
            return Violation(path, f"{name} must be {what} {short(expected)}, not {short(value)}")
        return None
    return check


def _credential(value: str, limits: SigningLimits, path: str) -> Violation | None:
    parts = value.split("/")
    if len(parts) != 5 or parts[3:] != ["s3", "aws4_request"]:
        return Violation(path, "x-amz-credential must be <access key>/<yyyymmdd>/<region>/s3/aws4_request")
    if parts[0] != limits.access_key_id:
        return Violation(path, "x-amz-credential names another access key than the broker's "
                               "(set request.accessKey from the broker's config)")
    if parts[2] != limits.region:
        return Violation(path, f"x-amz-credential names region {short(parts[2])}; the bucket is in "
                               f"{limits.region} (set objectProperties.region)")
    return None


def _status(value: str, limits: SigningLimits, path: str) -> Violation | None:
    allowed = {FINE_UPLOADER_STATUS, limits.fields.get("success_action_status", "204")}
    if value not in allowed:
        return Violation(path, f"success_action_status must be one of {', '.join(sorted(allowed))}, "
                               f"not {short(value)}")
    return None


def _token(value: str, limits: SigningLimits, path: str) -> Violation | None:
    if limits.session_token is None:
        return Violation(path, "x-amz-security-token is not allowed: the broker signs with long-lived credentials")
    if value != limits.session_token:
        return Violation(path, "x-amz-security-token is not the broker's session token")
    return None


#: Fields every Fine Uploader v4 policy has, each with its check.
_REQUIRED: dict[str, _FieldCheck] = {
    "bucket": _exact("bucket", lambda lim: lim.bucket, "the granted bucket"),
    "key": _exact("key", lambda lim: lim.key, "the granted key"),
    "x-amz-algorithm": _exact("x-amz-algorithm", lambda lim: ALGORITHM, "exactly"),
    "x-amz-credential": _credential,
    "x-amz-date": lambda value, lim, path: check_amz_date(value, lim, path),
}
_OPTIONAL: dict[str, _FieldCheck] = {
    "success_action_status": _status,
    "x-amz-security-token": _token,
}
_NEVER = {
    "success_action_redirect": "redirects are not signed (they are for iframe uploads in old browsers)",
    "redirect": "redirects are not signed",
    "content-encoding": "Content-Encoding is not part of any rule",
    "content-md5": "Content-MD5 cannot be checked for a form post",
    "expires": "Expires is not part of any rule",
    "policy": "a policy cannot constrain its own policy field",
    "x-amz-signature": "a policy cannot constrain its own signature",
    "file": "the file field is never a condition",
}


@dataclass
class _Scan:
    seen: dict[str, tuple[str, str]] = field(default_factory=dict)  # lower name -> (value, path)
    range_index: int | None = None
    range_value: tuple[int, int] | None = None
    problems: list[Violation] = field(default_factory=list)


def _scan_conditions(conditions: list[Any]) -> _Scan:
    scan = _Scan()
    for i, cond in enumerate(conditions):
        path = f"$.conditions[{i}]"
        if isinstance(cond, dict):
            if len(cond) != 1:
                scan.problems.append(Violation(path, "each condition must name exactly one field"))
                continue
            (name, value), = cond.items()
            if not isinstance(value, str):
                scan.problems.append(Violation(path, f"the value of {short(name)} must be a string, "
                                                     f"not {type(value).__name__}"))
                continue
            if not name.isascii():  # str.lower() folds the Kelvin sign into "k": "\u212aey" would pass as key
                scan.problems.append(Violation(path, f"condition names are ASCII; {short(name)} is not"))
                continue
            lname = name.lower()
            if lname in scan.seen:
                scan.problems.append(Violation(path, f"{short(name)} appears twice "
                                                     f"(first at {scan.seen[lname][1]})"))
                continue
            scan.seen[lname] = (value, path)
        elif isinstance(cond, list):
            _scan_array(cond, i, scan)
        else:
            scan.problems.append(Violation(path, "a condition must be an object or an array"))
    return scan


def _scan_array(cond: list[Any], i: int, scan: _Scan) -> None:
    path = f"$.conditions[{i}]"
    op = cond[0] if cond else None
    if op != "content-length-range":
        what = short(op) if isinstance(op, str) else "this array"
        scan.problems.append(Violation(path, f"{what} conditions are not signed: only exact values "
                                             "and one content-length-range (starts-with or eq would "
                                             "let the browser choose the value)"))
        return
    if scan.range_index is not None:
        scan.problems.append(Violation(path, f"content-length-range appears twice "
                                             f"(first at $.conditions[{scan.range_index}])"))
        return
    bounds = cond[1:]
    parsed = [_bound(b) for b in bounds]
    if len(bounds) != 2 or None in parsed:
        scan.problems.append(Violation(path, "content-length-range needs two whole numbers of bytes "
                                             f"(min, max), not {short(bounds)}"))
        return
    low, high = parsed  # type: ignore[misc]
    if low > high:
        scan.problems.append(Violation(path, f"content-length-range minimum {low} is above its maximum {high}"))
        return
    scan.range_index, scan.range_value = i, (low, high)


def _bound(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and _DIGITS.match(value):
        return int(value)
    return None


def _field_problems(scan: _Scan, limits: SigningLimits) -> list[Violation]:
    problems: list[Violation] = []
    expected = limits.expected()
    for lname, (value, path) in scan.seen.items():
        check = _REQUIRED.get(lname) or _OPTIONAL.get(lname)
        if check is not None:
            problem = check(value, limits, path)
        elif lname in _NEVER:
            problem = Violation(path, f"{lname}: {_NEVER[lname]}")
        elif lname.startswith("x-amz-meta-"):
            problem = meta_problem(lname, value, limits, expected, path)
        elif lname in OBJECT_FIELDS:
            if lname not in expected:
                problem = Violation(path, f"{lname} is not set by the rule, so it may not be sent")
            elif value != expected[lname]:
                problem = Violation(path, f"{lname} must be the granted {short(expected[lname])}, "
                                          f"not {short(value)}")
            else:
                problem = None
        else:
            problem = Violation(path, f"{short(lname)} is not a field the broker signs")
        if problem is not None:
            problems.append(problem)
    for lname in sorted(set(_REQUIRED) | set(expected)):
        if lname not in scan.seen:
            hint = _HOW_TO_SEND.get(lname, " (add it to the file's params, as the key response says)")
            problems.append(Violation("$.conditions", f"{lname} is required by the grant but missing{hint}"))
    if "x-amz-credential" in scan.seen and "x-amz-date" in scan.seen:
        (credential, path), (amz_date, _) = scan.seen["x-amz-credential"], scan.seen["x-amz-date"]
        parts = credential.split("/")
        if len(parts) == 5 and parts[1] != amz_date[:8]:
            problems.append(Violation(path, f"the credential's date {short(parts[1])} is not the date "
                                            f"of x-amz-date {short(amz_date)}"))
    if limits.session_token is not None and "x-amz-security-token" not in scan.seen:
        problems.append(Violation("$.conditions", "the broker signs with temporary credentials, so the "
                                                  "policy must carry x-amz-security-token; Fine Uploader "
                                                  "cannot send one to a signature server: give the broker "
                                                  "long-lived credentials for Fine Uploader"))
    return problems


_HOW_TO_SEND = {
    "content-type": " (Fine Uploader sends the file's type; the browser gave none)",
    "acl": " (set objectProperties.acl)",
    "x-amz-storage-class": " (Fine Uploader can only send REDUCED_REDUNDANCY)",
}


def check_policy(doc: Any, limits: SigningLimits) -> tuple[dict[str, Any] | None, list[Violation]]:
    """The tightened policy to sign, or None and every reason it may not be signed."""
    if not isinstance(doc, dict):
        return None, [Violation("$", "the policy must be a JSON object")]
    problems = [Violation(f"$.{short(k, 40)}", "unknown top-level field")
                for k in doc if k not in ("expiration", "conditions")]
    expiration = parse_iso(doc.get("expiration"))
    if expiration is None:
        problems.append(Violation("$.expiration", "expiration must be an ISO 8601 UTC time "
                                                  "such as 2026-11-28T14:54:31.000Z"))
    elif expiration <= limits.now:
        problems.append(Violation("$.expiration", "the policy has already expired"))
    conditions = doc.get("conditions")
    if not isinstance(conditions, list) or not conditions:
        problems.append(Violation("$.conditions", "conditions must be a non-empty array"))
        return None, problems
    if len(conditions) > MAX_CONDITIONS:
        problems.append(Violation("$.conditions", f"more than {MAX_CONDITIONS} conditions"))
        return None, problems
    scan = _scan_conditions(conditions)
    problems.extend(scan.problems)
    problems.extend(_field_problems(scan, limits))
    low, high = limits.min_bytes, limits.max_bytes
    if scan.range_value is not None:
        low, high = max(low, scan.range_value[0]), min(high, scan.range_value[1])
        if low > high:
            problems.append(Violation(f"$.conditions[{scan.range_index}]",
                                      f"content-length-range {list(scan.range_value)} does not overlap "
                                      f"the rule's {limits.min_bytes}..{limits.max_bytes} bytes"))
    if problems:
        return None, problems
    assert expiration is not None
    out: list[Any] = []
    for i, cond in enumerate(conditions):
        out.append(["content-length-range", low, high] if i == scan.range_index else cond)
    if scan.range_index is None:
        out.append(["content-length-range", low, high])
    return {"expiration": format_iso(min(expiration, limits.not_after)), "conditions": out}, []
