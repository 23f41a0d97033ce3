"""What Fine Uploader 5.16.2 sends, rebuilt in Python from its source (s3.fine-uploader.js).

``policy_document`` is ``qq.s3.util.getPolicy`` for signature version 4; ``string_to_sign``
is ``qq.s3.RequestSigner``'s v4 ``getStringToSign`` with the canonical request left raw (the
body of a chunked signing request). Tests start from these and tamper with them.
"""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping
from urllib.parse import quote

import requests

from tests.protocols.conftest import call

UNPREFIXED = ("Cache-Control", "Content-Disposition", "Content-Encoding", "Content-MD5",
              "x-amz-server-side-encryption", "x-amz-server-side-encryption-aws-kms-key-id")
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def encode(value: str) -> str:
    """JavaScript's encodeURIComponent."""
    return quote(value, safe="-_.!~*'()")


def amz_date(now: datetime) -> str:
    """``20261128T144931Z``."""
    return now.strftime("%Y%m%dT%H%M%SZ")


def policy_document(*, key: str, bucket: str, content_type: str, access_key: str, now: datetime,
                    filename: str, params: Mapping[str, str] | None = None, acl: str = "private",
                    region: str = "us-east-1", size_range: tuple[int, int] | None = None) -> dict[str, Any]:
    """The policy Fine Uploader asks the signature endpoint to sign for a simple upload."""
    date = amz_date(now)
    conditions: list[Any] = [
        {"acl": acl}, {"bucket": bucket}, {"Content-Type": content_type}, {"success_action_status": "200"},
        {"x-amz-algorithm": "AWS4-HMAC-SHA256"}, {"key": key},
        {"x-amz-credential": f"{access_key}/{date[:8]}/{region}/s3/aws4_request"}, {"x-amz-date": date},
    ]
    for name, value in {**(params or {}), "qqfilename": filename}.items():
        conditions.append({name: value} if name in UNPREFIXED else {f"x-amz-meta-{name}": encode(value)})
    if size_range is not None:
        conditions.append(["content-length-range", str(size_range[0]), str(size_range[1])])
    expiration = (now + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.123Z")
    return {"expiration": expiration, "conditions": conditions}


def form_fields(policy: Mapping[str, Any]) -> dict[str, str]:
    """The form fields Fine Uploader posts: one per exact-match condition of its policy."""
    fields: dict[str, str] = {}
    for cond in policy["conditions"]:
        if isinstance(cond, dict):
            ((name, value),) = cond.items()
            if name != "bucket":
                fields[name] = value
    return fields


def string_to_sign(*, method: str, key: str, query: str, headers: Mapping[str, str], payload_hash: str,
                   now: datetime, region: str = "us-east-1", uri: str | None = None) -> str:
    """``AWS4-HMAC-SHA256\\n<date>\\n<scope>\\n<canonical request>`` as Fine Uploader sends it."""
    date = amz_date(now)
    names = sorted(headers, key=str.lower)
    lines = [method, uri if uri is not None else "/" + key, query]
    lines += [f"{name.lower()}:{headers[name].strip()}" for name in names]
    lines += ["", ";".join(n.lower() for n in names), payload_hash]
    return "\n".join(["AWS4-HMAC-SHA256", date, f"{date[:8]}/{region}/s3/aws4_request", "\n".join(lines)])


def rest_headers(*, host: str, now: datetime, payload_hash: str = EMPTY_SHA256,
                 extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The headers Fine Uploader signs for a multipart call (``Host`` plus ``x-amz-*``)."""
    return {"Host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date(now), **(extra or {})}


def initiate_headers(*, acl: str, filename: str, params: Mapping[str, str] | None = None) -> dict[str, str]:
    """The extra headers of Fine Uploader's initiate request (its params become x-amz-meta-*)."""
    headers = {"x-amz-acl": acl, "x-amz-meta-qqfilename": encode(filename)}
    for name, value in (params or {}).items():
        if name in UNPREFIXED:
            if name not in ("Cache-Control", "Content-Disposition", "Content-Encoding", "Content-MD5"):
                headers[name] = value  # the unsignable four are sent unsigned
        else:
            headers[f"x-amz-meta-{name}"] = encode(value)
    return headers


class FineUploaderClient:
    """Does what Fine Uploader's chunked upload does: ask the broker to sign, then call the store."""

    def __init__(self, broker: Any, endpoint: str, request: Mapping[str, Any] | None = None,
                 bucket: str = "broker-uploads") -> None:
        self.broker = broker
        self.request = request or {"filename": "clip.mp4", "content_type": "video/mp4", "size": 6 * 1024 * 1024,
                                   "profile": "videos"}
        self.bucket = bucket
        self.endpoint = endpoint
        self.host = endpoint.split("://", 1)[1]
        self.grant: dict[str, Any] = {}

    def key(self) -> dict[str, Any]:
        answer = call(self.broker, "POST", "/fineuploader/key", dict(self.request))
        assert answer.status == 200, answer
        self.grant = answer.body
        return self.grant

    def prepare(self, method: str, query: str, body: bytes = b"", extra: dict[str, str] | None = None,
                unsigned: dict[str, str] | None = None) -> Any:
        """Have the broker sign one store request: ``{method, url, data, headers}`` to send (now or later),
        or the broker's refusal. ``unsigned`` headers are added after signing, as a client could."""
        now = datetime.now(timezone.utc)
        payload_hash = hashlib.sha256(body).hexdigest()
        headers = rest_headers(host=self.host, now=now, payload_hash=payload_hash, extra=extra)
        text = string_to_sign(method=method, key=self.grant["key"], query=query, headers=headers,
                              payload_hash=payload_hash, now=now)
        answer = call(self.broker, "POST", "/fineuploader/signature", {"headers": text},
                      headers={"x-upload-grant": self.grant["grant"]}, query={"v4": "true"})
        if answer.status != 200:
            return answer
        config = call(self.broker, "GET", "/fineuploader/config").body
        signed = ";".join(sorted(h.lower() for h in headers))
        headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={config['accessKey']}/{amz_date(now)[:8]}/"
                                    f"us-east-1/s3/aws4_request,SignedHeaders={signed},"
                                    f"Signature={answer.body['signature']}")
        del headers["Host"]
        headers.update(unsigned or {})
        url = f"{self.endpoint}/{self.bucket}/{self.grant['key']}?{query.replace('uploads=', 'uploads')}"
        return {"method": method, "url": url, "data": body, "headers": headers}

    def send(self, method: str, query: str, body: bytes = b"", extra: dict[str, str] | None = None,
             unsigned: dict[str, str] | None = None) -> Any:
        """Sign through the broker, then call the store at once (or return the broker's refusal)."""
        prepared = self.prepare(method, query, body, extra, unsigned)
        if not isinstance(prepared, dict):
            return prepared
        return requests.request(**prepared, timeout=30)
