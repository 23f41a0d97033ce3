"""One object owns every S3 call the broker makes: :class:`S3Store`.

Presigned POST forms and part URLs (no network), multipart create/list/complete/abort, head,
ranged reads, delete, reading the rules object, making a bucket: each goes through one
private ``_call``, which turns botocore's errors into the broker's own once
(:class:`~broker.errors.StoreUnavailable`, :class:`~broker.errors.UploadNotFound`, or what a
call says it expects). Protocol code never touches a raw client; tests hand in a client of
their choosing (moto, SeaweedFS) or a fake with the same methods.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import quote

from broker.errors import BrokerError, InvalidRequest, StoreUnavailable, UploadNotFound
from broker.models import Grant, Part, SignedPost, StoredObject
from broker.s3.client import credentials_expiry as client_credentials_expiry
from broker.s3.post import Signer

#: CreateMultipartUpload's parameter for each object field a grant may carry.
_OBJECT_PARAMS = {
    "Content-Type": "ContentType", "acl": "ACL", "Cache-Control": "CacheControl",
    "Content-Disposition": "ContentDisposition", "x-amz-server-side-encryption": "ServerSideEncryption",
    "x-amz-server-side-encryption-aws-kms-key-id": "SSEKMSKeyId", "x-amz-storage-class": "StorageClass",
}
#: HeadObject's answer field -> the header name it stands for (what the verifier checks).
_STORED_HEADERS = {
    "CacheControl": "Cache-Control", "ContentDisposition": "Content-Disposition",
    "ContentEncoding": "Content-Encoding", "ContentLanguage": "Content-Language", "Expires": "Expires",
    "WebsiteRedirectLocation": "x-amz-website-redirect-location",
}
#: A copy whose source changed or went meanwhile: answered None, nothing copied.
_CHANGED = {"PreconditionFailed": None, "412": None, 412: None, "404": None, "NoSuchKey": None, "NotFound": None}
_MISSING_UPLOAD = ("NoSuchUpload", "NoSuchKey", "404")
_MISSING_OBJECT = ("404", "NoSuchKey", "NotFound")


@dataclass(frozen=True)
class Fetched:
    """An object read whole: its bytes (None when it is longer than asked), ETag and length."""

    body: bytes | None
    etag: str | None
    length: int | None


def create_params(grant: Grant) -> dict[str, Any]:
    """CreateMultipartUpload parameters applying every object field of the grant."""
    params: dict[str, Any] = {"Bucket": grant.bucket, "Key": grant.key}
    metadata: dict[str, str] = {}
    for name, value in grant.fields.items():
        if name in _OBJECT_PARAMS:
            params[_OBJECT_PARAMS[name]] = value
        elif name.startswith("x-amz-meta-"):
            metadata[name[len("x-amz-meta-"):]] = value
    if metadata:
        params["Metadata"] = metadata
    return params


class S3Store:
    """Every S3 call of the broker, through one long-lived botocore client."""

    def __init__(self, client: Any, *,
                 credentials_expiry: Callable[[], datetime | None] | None = None) -> None:
        self._client = client
        #: Objects larger than this are copied in parts (S3's CopyObject stops at 5 GB).
        self.copy_limit = 5 * 1000**3
        self.copy_part_bytes = 1024**3
        expiry = credentials_expiry or (client_credentials_expiry(client) if client is not None else None)
        self.post_signer = Signer(client, credentials_expiry=expiry)
        self._sigv4: Any = None

    # ------------------------------------------------------------------ signing (no network)

    def expires_in(self, grant: Grant, now: datetime) -> int:
        """The grant's lifetime, cut short so it never outlives the signing credentials."""
        return self.post_signer.expires_in(grant, now)

    def sign_post(self, grant: Grant, *, now: datetime) -> SignedPost:
        """A presigned POST binding the grant's exact key, bucket, size range and fields."""
        return self.post_signer.sign(grant, now=now)

    def part_url(self, bucket: str, key: str, upload_id: str, part_number: int, expires_in: int) -> str:
        """A presigned PUT URL for one part of a multipart upload."""
        return str(self._client.generate_presigned_url(
            "upload_part", Params={"Bucket": bucket, "Key": key, "UploadId": upload_id,
                                   "PartNumber": part_number}, ExpiresIn=expires_in))

    @property
    def sigv4(self) -> Any:
        """The SigV4 signer of checked Fine Uploader requests (:class:`broker.s3.sigv4.StoreSigner`)."""
        if self._sigv4 is None:
            from broker.s3.sigv4 import StoreSigner

            self._sigv4 = StoreSigner(self._client)
        return self._sigv4

    # ------------------------------------------------------------------ multipart

    def create_multipart(self, grant: Grant) -> str:
        """Start a multipart upload with the grant's object fields; returns the upload id."""
        out = self._call("create_multipart_upload", "start the multipart upload", create_params(grant))
        return str(out["UploadId"])

    def list_parts(self, bucket: str, key: str, upload_id: str) -> list[Part]:
        """Every part the store holds for the upload (all pages)."""
        from broker.core.multipart import MAX_PARTS  # here: a cold start serving POST /uploads needs none of it

        parts: list[Part] = []
        marker = 0
        while True:
            page = self._call("list_parts", "list the parts", {
                "Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumberMarker": marker})
            for p in page.get("Parts", []):
                parts.append(Part(int(p["PartNumber"]), int(p["Size"]), str(p["ETag"])))
            if not page.get("IsTruncated") or len(parts) > MAX_PARTS:
                return parts
            marker = int(page["NextPartNumberMarker"])

    def complete_multipart(self, bucket: str, key: str, upload_id: str, parts: list[Mapping[str, Any]]) -> str:
        """Complete the upload with the given parts; returns the object's ETag."""
        refused = {code: InvalidRequest(f"the store refused to complete the upload: {code}")
                   for code in ("EntityTooSmall", "InvalidPart", "InvalidPartOrder")}
        out = self._call("complete_multipart_upload", "complete the upload", {
            "Bucket": bucket, "Key": key, "UploadId": upload_id, "MultipartUpload": {"Parts": list(parts)}},
            expect=refused)
        return str(out.get("ETag", ""))

    def abort_multipart(self, bucket: str, key: str, upload_id: str) -> None:
        """Abort the upload so the store frees its parts; an already gone upload is fine."""
        self._call("abort_multipart_upload", "abort the upload",
                   {"Bucket": bucket, "Key": key, "UploadId": upload_id},
                   expect={"NoSuchUpload": None, "404": None})

    def unfinished_uploads(self, bucket: str, key: str) -> list[str]:
        """The ids of the multipart uploads the store holds for exactly ``key``, neither completed nor aborted."""
        ids: list[str] = []
        params: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
        while True:
            page = self._call("list_multipart_uploads", "list the unfinished uploads", params)
            ids.extend(str(u["UploadId"]) for u in page.get("Uploads", []) if u.get("Key") == key)
            if not page.get("IsTruncated") or len(ids) > 1000:
                return ids
            params = {**params, "KeyMarker": page.get("NextKeyMarker", ""),
                      "UploadIdMarker": page.get("NextUploadIdMarker", "")}

    # ------------------------------------------------------------------ objects

    def head(self, bucket: str, key: str) -> dict[str, Any] | None:
        """The object's size, type and ETag, or None if it does not exist."""
        out = self._call("head_object", "read the object's size and type", {"Bucket": bucket, "Key": key},
                         expect={code: None for code in _MISSING_OBJECT})
        if out is None:
            return None
        return {"size": int(out.get("ContentLength", 0)), "content_type": out.get("ContentType"),
                "etag": out.get("ETag")}

    def delete(self, bucket: str, key: str) -> None:
        """Delete an object."""
        self._call("delete_object", "delete the object", {"Bucket": bucket, "Key": key})

    def get_object(self, bucket: str, key: str, *, max_bytes: int,
                   if_none_match: str | None = None) -> Fetched | None:
        """The object read whole (at most ``max_bytes`` + 1 bytes), or None if it still has ETag ``if_none_match``."""
        params: dict[str, Any] = {"Bucket": bucket, "Key": key}
        if if_none_match:
            params["IfNoneMatch"] = if_none_match
        out = self._call("get_object", "read the object", params,
                         expect={"304": None, "NotModified": None, 304: None} if if_none_match else None,
                         words=lambda detail: f"the store refused to read the object: {detail}")
        if out is None:
            return None
        length = out.get("ContentLength")
        if isinstance(length, int) and length > max_bytes:
            out["Body"].close()
            return Fetched(None, out.get("ETag"), length)
        body = out["Body"].read(max_bytes + 1)
        return Fetched(body, out.get("ETag"), len(body))

    def inspect(self, bucket: str, key: str, *, head_bytes: int) -> StoredObject | None:
        """What the verifier judges: headers, metadata, tags and the first ``head_bytes``; None if it is gone.

        Usually one call: a ranged GET answers with the object's headers, its total size (in
        Content-Range) and its tag count as well as the bytes; the tags are read only when there
        are some, and an empty object (which no range fits) is read with HEAD. Never the whole body.
        """
        missing = {code: None for code in _MISSING_OBJECT}
        out = self._call("get_object", "read the object's first bytes", {
            "Bucket": bucket, "Key": key, "Range": f"bytes=0-{max(head_bytes, 1) - 1}"},
            expect={**missing, "InvalidRange": "empty", 416: "empty"})
        if out is None:
            return None
        if out == "empty":
            out = self._call("head_object", "read the object", {"Bucket": bucket, "Key": key}, expect=missing)
            if out is None:
                return None
            size, head = int(out.get("ContentLength", 0)), b""
        else:
            total = str(out.get("ContentRange", "")).rpartition("/")[2]
            size = int(total) if total.isdigit() else int(out.get("ContentLength", 0))
            head = out["Body"].read(head_bytes) if head_bytes > 0 else b""
            out["Body"].close()
        tags: dict[str, str] = {}
        if int(out.get("TagCount") or 0) > 0:
            found = self._call("get_object_tagging", "read the object's tags", {"Bucket": bucket, "Key": key},
                               expect=missing)
            if found is None:
                return None
            tags = {t["Key"]: t["Value"] for t in found.get("TagSet", [])}
        headers = {name: str(out[field]) for field, name in _STORED_HEADERS.items() if out.get(field)}
        metadata = {str(k).lower(): str(v) for k, v in (out.get("Metadata") or {}).items()}
        checksum = out.get("ChecksumSHA256")
        if checksum is None and any(k.endswith("sha256") for k in metadata):
            # A ranged read carries no whole-object checksum: ask for it where one was declared
            whole = self._call("head_object", "read the object's checksum",
                               {"Bucket": bucket, "Key": key, "ChecksumMode": "ENABLED"}, expect=missing)
            if whole is None:
                return None
            checksum = whole.get("ChecksumSHA256")
        return StoredObject(
            bucket=bucket, key=key, size=size, etag=str(out.get("ETag", "")), content_type=out.get("ContentType"),
            metadata=metadata, headers=headers, checksum_sha256=checksum, tags=tags, head=head)

    def tag(self, bucket: str, key: str, tags: Mapping[str, str]) -> None:
        """Replace the object's tags."""
        self._call("put_object_tagging", "tag the object", {
            "Bucket": bucket, "Key": key,
            "Tagging": {"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]}})

    def move(self, obj: StoredObject, to_key: str, *, tags: Mapping[str, str]) -> bool:
        """Copy ``obj`` (as :meth:`inspect` read it) to ``to_key`` as an attachment with ``tags``, then delete it.

        The copy is made only if the object still has the ETag it was read with; False when it
        changed or went meanwhile (nothing is moved then).
        """
        bucket, key = obj.bucket, obj.key
        params: dict[str, Any] = {
            "Bucket": bucket, "Key": to_key, "CopySource": {"Bucket": bucket, "Key": key},
            "CopySourceIfMatch": obj.etag, "MetadataDirective": "REPLACE", "Metadata": dict(obj.metadata),
            "ContentType": obj.content_type or "application/octet-stream", "ContentDisposition": "attachment",
            "TaggingDirective": "REPLACE", "Tagging": "&".join(f"{quote(k, safe='')}={quote(v, safe='')}"
                                                               for k, v in tags.items())}
        if obj.size > self.copy_limit:
            copied = self._copy_in_parts(params, obj.size)
        else:
            copied = self._call("copy_object", "copy the object to quarantine", params, expect=_CHANGED)
        if copied is None:
            return False
        if tags:  # Ceph RGW 16.2 ignores the tags of a copy and of CreateMultipartUpload: set them on the copy
            self.tag(bucket, to_key, tags)
        self.delete(bucket, key)
        return True

    def _copy_in_parts(self, params: dict[str, Any], size: int) -> Any:
        """CopyObject for an object over ``copy_limit`` (S3 copies at most 5 GB in one call): a multipart copy."""
        bucket, to_key, source, etag = params["Bucket"], params["Key"], params["CopySource"], params["CopySourceIfMatch"]
        started = self._call("create_multipart_upload", "start the quarantine copy", {
            "Bucket": bucket, "Key": to_key, "ContentType": params["ContentType"],
            "ContentDisposition": params["ContentDisposition"], "Metadata": params["Metadata"],
            "Tagging": params["Tagging"]})
        upload_id = str(started["UploadId"])
        try:
            parts = []
            for number, first in enumerate(range(0, size, self.copy_part_bytes), 1):
                last = min(first + self.copy_part_bytes, size) - 1
                part = self._call("upload_part_copy", "copy a part to quarantine", {
                    "Bucket": bucket, "Key": to_key, "UploadId": upload_id, "PartNumber": number,
                    "CopySource": source, "CopySourceIfMatch": etag, "CopySourceRange": f"bytes={first}-{last}"},
                    expect=_CHANGED)
                if part is None:
                    self.abort_multipart(bucket, to_key, upload_id)
                    return None
                parts.append({"PartNumber": number, "ETag": part["CopyPartResult"]["ETag"]})
            return self.complete_multipart(bucket, to_key, upload_id, parts)
        except BrokerError:
            self.abort_multipart(bucket, to_key, upload_id)
            raise

    def keys(self, bucket: str, prefix: str) -> Iterator[tuple[str, int]]:
        """Every (key, size) under ``prefix``, page by page."""
        for key, size, _etag, _modified in self.objects(bucket, prefix):
            yield key, size

    def objects(self, bucket: str, prefix: str) -> Iterator[tuple[str, int, str, datetime | None]]:
        """Every (key, size, ETag unquoted, LastModified or None) under ``prefix``, page by page."""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
            if token:
                params["ContinuationToken"] = token
            page = self._call("list_objects_v2", "list the objects", params)
            for item in page.get("Contents", []):
                modified = item.get("LastModified")
                yield (str(item["Key"]), int(item.get("Size", 0)), str(item.get("ETag", "")).strip('"'),
                       modified if isinstance(modified, datetime) else None)
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    # ------------------------------------------------------------------ buckets

    def list_buckets(self) -> list[str]:
        """The names of the buckets the credentials can see (a cheap "is the store up?")."""
        out = self._call("list_buckets", "", {}, words=lambda detail: detail)
        return [str(b["Name"]) for b in out.get("Buckets", [])]

    def ensure_bucket(self, bucket: str, cors_rules: list[dict[str, Any]] | None = None) -> None:
        """Create ``bucket`` if it does not exist, then set its CORS rules if ``cors_rules`` is given.

        Raises :class:`StoreUnavailable` whose message says what failed (and, for a bad name, the rule).
        """
        exists = self._call("head_bucket", "", {"Bucket": bucket}, expect={"404": False, "NoSuchBucket": False, 404: False},
                            words=lambda detail: f"cannot check bucket {bucket!r}: {detail}")
        if exists is False:
            def create_failed(detail: str) -> str:
                hint = " (bucket names are 3-63 characters: lowercase letters, digits, '-' and '.')" \
                    if detail.startswith("InvalidBucketName:") else ""
                return f"cannot create bucket {bucket!r}: {detail}{hint}"

            self._call("create_bucket", "", {"Bucket": bucket}, words=create_failed,
                       expect={"BucketAlreadyOwnedByYou": None, "BucketAlreadyExists": None})
        if cors_rules is not None:
            self._call("put_bucket_cors", "", {"Bucket": bucket, "CORSConfiguration": {"CORSRules": cors_rules}},
                       words=lambda detail: f"cannot set the CORS rules of bucket {bucket!r}: {detail}")

    def set_lifecycle(self, bucket: str, rules: list[dict[str, Any]]) -> None:
        """Replace ``bucket``'s lifecycle rules (incomplete multipart uploads, the quarantine's expiry)."""
        self._call("put_bucket_lifecycle_configuration", "",
                   {"Bucket": bucket, "LifecycleConfiguration": {"Rules": rules}},
                   words=lambda detail: f"cannot set the lifecycle rules of bucket {bucket!r}: {detail}")

    # ------------------------------------------------------------------ the one place errors are mapped

    def _call(self, operation: str, what: str, params: Mapping[str, Any], *,
              expect: Mapping[str | int, Any] | None = None,
              words: Callable[[str], str] | None = None) -> Any:
        """Run one client operation; botocore errors become the broker's own.

        A store error code (or HTTP status) listed in ``expect`` answers with its value
        instead (raised, if it is an exception). Otherwise: a missing upload is :class:`UploadNotFound`, anything else
        :class:`StoreUnavailable` saying what the broker was doing (``what``), or worded by
        ``words(detail)`` where the caller has better words.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, operation)(**params)
        except ClientError as exc:
            response = getattr(exc, "response", {}) or {}
            error = response.get("Error", {})
            code = str(error.get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if expect is not None and (code in expect or status in expect):
                outcome = expect[code] if code in expect else expect[status]
                if isinstance(outcome, BrokerError):
                    raise outcome from None
                return outcome
            if words is not None:
                detail = f"{error.get('Code', 'error')}: {error.get('Message', str(exc))}"
                raise StoreUnavailable(words(detail), code=code, status=status,
                                       store_message=error.get("Message")) from None
            if code in _MISSING_UPLOAD:
                raise UploadNotFound(f"the store has no multipart upload with that id for this key ({what})") from None
            raise StoreUnavailable(f"the store refused to {what}: {code or type(exc).__name__}", code=code,
                                   status=status, store_message=error.get("Message")) from None
        except BotoCoreError as exc:
            message = words(str(exc)) if words is not None else \
                f"the store refused to {what}: {type(exc).__name__}"
            raise StoreUnavailable(message, unreachable=True, store_message=str(exc)) from None
