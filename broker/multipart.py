"""Multipart uploads: the rule's size limit at completion (pure) and the store calls (edge).

A presigned part URL cannot bound the part's size, so the size rule is enforced when the
upload is completed: the broker lists the parts the store holds and refuses to complete (and
aborts the upload, so nothing stays stored) if their sum is outside the rule's range. Part
numbers are bounded up front: every part but the last is at least 5 MiB, so a rule of
``max_bytes`` never needs more than ``ceil(max_bytes / 5 MiB)`` parts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

from .errors import BrokerError, InvalidRequest, NotFound, ServiceUnavailable
from .models import Check, Decision, Grant
from .rules import human_size

MIN_PART_BYTES = 5 * 1024 * 1024
MAX_PARTS = 10000


class UploadNotFound(NotFound):
    """The store has no such multipart upload for this key (completed, aborted, or never made)."""


@dataclass(frozen=True)
class Part:
    """One uploaded part as the store lists it."""

    number: int
    size: int
    etag: str


def max_parts(max_bytes: int) -> int:
    """The most parts an upload within ``max_bytes`` can need (every part but the last >= 5 MiB)."""
    return max(1, min(MAX_PARTS, math.ceil(max_bytes / MIN_PART_BYTES)))


def size_decision(client: str, profile: str, uploaded: int, completing: int, *,
                  min_bytes: int, max_bytes: int) -> Decision:
    """Allowed if everything uploaded fits the rule's maximum and what completes meets its minimum."""
    if uploaded > max_bytes:
        return Decision(False, client, profile, check=Check.TOO_LARGE,
                        reason=f"too large: {human_size(uploaded)} uploaded, the limit for {profile} is "
                               f"{human_size(max_bytes)}",
                        expected=max_bytes, actual=uploaded)
    if completing < min_bytes:
        return Decision(False, client, profile, check=Check.TOO_SMALL,
                        reason=f"too small: {human_size(completing)}, {profile} needs at least "
                               f"{human_size(min_bytes)}",
                        expected=min_bytes, actual=completing)
    return Decision(True, client, profile)


def with_outcome(decision: Decision, outcome: str) -> Decision:
    """The denial with what the broker did about it appended to its reason."""
    return replace(decision, reason=f"{decision.reason}; {outcome}")


def create_params(grant: Grant) -> dict[str, Any]:
    """CreateMultipartUpload parameters applying every object field of the grant."""
    names = {
        "Content-Type": "ContentType", "acl": "ACL", "Cache-Control": "CacheControl",
        "Content-Disposition": "ContentDisposition", "x-amz-server-side-encryption": "ServerSideEncryption",
        "x-amz-server-side-encryption-aws-kms-key-id": "SSEKMSKeyId", "x-amz-storage-class": "StorageClass",
    }
    params: dict[str, Any] = {"Bucket": grant.bucket, "Key": grant.key}
    metadata: dict[str, str] = {}
    for name, value in grant.fields.items():
        if name in names:
            params[names[name]] = value
        elif name.startswith("x-amz-meta-"):
            metadata[name[len("x-amz-meta-"):]] = value
    if metadata:
        params["Metadata"] = metadata
    return params


# --------------------------------------------------------------------------- store calls


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


def _store_error(exc: Exception, what: str) -> BrokerError:
    code = _code(exc)
    if code in ("NoSuchUpload", "NoSuchKey", "404"):
        return UploadNotFound(f"the store has no multipart upload with that id for this key ({what})")
    return ServiceUnavailable(f"the store refused to {what}: {code or type(exc).__name__}")


def create(s3: Any, grant: Grant) -> str:
    """Start a multipart upload with the grant's object fields; returns the upload id."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return str(s3.create_multipart_upload(**create_params(grant))["UploadId"])
    except (ClientError, BotoCoreError) as exc:
        raise _store_error(exc, "start the multipart upload") from None


def list_parts(s3: Any, bucket: str, key: str, upload_id: str) -> list[Part]:
    """Every part the store holds for the upload (all pages)."""
    from botocore.exceptions import BotoCoreError, ClientError

    parts: list[Part] = []
    marker = 0
    try:
        while True:
            page = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker)
            for p in page.get("Parts", []):
                parts.append(Part(int(p["PartNumber"]), int(p["Size"]), str(p["ETag"])))
            if not page.get("IsTruncated") or len(parts) > MAX_PARTS:
                return parts
            marker = int(page["NextPartNumberMarker"])
    except (ClientError, BotoCoreError) as exc:
        raise _store_error(exc, "list the parts") from None


def complete(s3: Any, bucket: str, key: str, upload_id: str, parts: list[Mapping[str, Any]]) -> str:
    """Complete the upload with the given parts; returns the object's ETag."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        out = s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                           MultipartUpload={"Parts": list(parts)})
    except (ClientError, BotoCoreError) as exc:
        code = _code(exc)
        if code in ("EntityTooSmall", "InvalidPart", "InvalidPartOrder"):
            raise InvalidRequest(f"the store refused to complete the upload: {code}") from None
        raise _store_error(exc, "complete the upload") from None
    return str(out.get("ETag", ""))


def abort(s3: Any, bucket: str, key: str, upload_id: str) -> None:
    """Abort the upload so the store frees its parts; an already gone upload is fine."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except (ClientError, BotoCoreError) as exc:
        if _code(exc) not in ("NoSuchUpload", "404"):
            raise _store_error(exc, "abort the upload") from None


def head(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's size and type, or None if it does not exist."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        out = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise _store_error(exc, "read the object's size and type") from None
    except BotoCoreError as exc:
        raise _store_error(exc, "read the object's size and type") from None
    return {"size": int(out.get("ContentLength", 0)), "content_type": out.get("ContentType"),
            "etag": out.get("ETag")}


def delete(s3: Any, bucket: str, key: str) -> None:
    """Delete an object that breaks its rule."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        s3.delete_object(Bucket=bucket, Key=key)
    except (ClientError, BotoCoreError) as exc:
        raise _store_error(exc, "delete the object") from None
