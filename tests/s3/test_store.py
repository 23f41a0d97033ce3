"""S3Store: every botocore error becomes one of the broker's own, in one place, as each call says.

The client here is a stub that raises botocore's real exception classes (no network): what
the store makes of them is the contract protocols rely on.
"""
from __future__ import annotations

import io
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from broker.errors import InvalidRequest, ServiceUnavailable, StoreUnavailable, UploadNotFound
from broker.models import Grant
from broker.s3.store import Fetched, S3Store, create_params


def client_error(code: str, status: int = 400, message: str = "the store says no") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "Operation")


class Stub:
    """A client whose every operation raises ``error`` (or returns ``answer``), recording the calls."""

    def __init__(self, error: Exception | None = None, answer: Any = None) -> None:
        self.error, self.answer, self.calls = error, answer, []

    def __getattr__(self, operation: str) -> Any:
        def call(**params: Any) -> Any:
            self.calls.append((operation, params))
            if self.error is not None:
                raise self.error
            return self.answer
        return call


GRANT = Grant("web-app", "videos", "b", "uploads/k.mp4", "video/mp4", 1, 10, 300,
              {"Content-Type": "video/mp4", "acl": "private", "x-amz-meta-title": "t",
               "x-amz-server-side-encryption": "AES256", "success_action_status": "201"})
UNREACHABLE = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")


@pytest.mark.parametrize("call, error, raised, message", [
    pytest.param(lambda s: s.list_parts("b", "k", "u"), client_error("NoSuchUpload", 404), UploadNotFound,
                 "the store has no multipart upload with that id for this key (list the parts)", id="list_missing"),
    pytest.param(lambda s: s.create_multipart(GRANT), client_error("AccessDenied", 403), StoreUnavailable,
                 "the store refused to start the multipart upload: AccessDenied", id="create_denied"),
    pytest.param(lambda s: s.complete_multipart("b", "k", "u", []), client_error("EntityTooSmall"), InvalidRequest,
                 "the store refused to complete the upload: EntityTooSmall", id="complete_too_small"),
    pytest.param(lambda s: s.complete_multipart("b", "k", "u", []), client_error("InternalError", 500),
                 StoreUnavailable, "the store refused to complete the upload: InternalError", id="complete_500"),
    pytest.param(lambda s: s.abort_multipart("b", "k", "u"), client_error("SlowDown", 503), StoreUnavailable,
                 "the store refused to abort the upload: SlowDown", id="abort_throttled"),
    pytest.param(lambda s: s.delete("b", "k"), UNREACHABLE, StoreUnavailable,
                 "the store refused to delete the object: EndpointConnectionError", id="delete_unreachable"),
    pytest.param(lambda s: s.head("b", "k"), client_error("403", 403), StoreUnavailable,
                 "the store refused to read the object's size and type: 403", id="head_forbidden"),
    pytest.param(lambda s: s.ensure_bucket("ab"), client_error("InvalidBucketName", 400, "bad name"),
                 StoreUnavailable, "cannot check bucket 'ab': InvalidBucketName: bad name", id="bucket_name"),
])
def test_errors_become_the_brokers_own(call: Any, error: Exception, raised: type, message: str) -> None:
    with pytest.raises(raised) as caught:
        call(S3Store(Stub(error)))
    assert caught.value.message == message
    assert not isinstance(caught.value, ClientError)


@pytest.mark.parametrize("call, error, expected", [
    pytest.param(lambda s: s.abort_multipart("b", "k", "u"), client_error("NoSuchUpload", 404), None,
                 id="abort_already_gone"),
    pytest.param(lambda s: s.head("b", "k"), client_error("404", 404), None, id="head_missing"),
    pytest.param(lambda s: s.get_object("b", "k", max_bytes=10, if_none_match='"e"'),
                 client_error("304", 304), None, id="not_modified"),
])
def test_expected_answers_are_values_not_errors(call: Any, error: Exception, expected: Any) -> None:
    assert call(S3Store(Stub(error))) is expected


def test_a_store_outage_keeps_what_rules_reading_needs_to_word_it() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        S3Store(Stub(client_error("NoSuchKey", 404, "gone"))).get_object("b", "k", max_bytes=10)
    assert (caught.value.store_code, caught.value.store_status, caught.value.store_message) == ("NoSuchKey", 404, "gone")
    with pytest.raises(StoreUnavailable) as caught:
        S3Store(Stub(UNREACHABLE)).get_object("b", "k", max_bytes=10)
    assert caught.value.unreachable and "127.0.0.1:9" in str(caught.value.store_message)
    assert isinstance(caught.value, ServiceUnavailable) and caught.value.code == "service_unavailable"


def test_get_object_reads_at_most_what_was_asked() -> None:
    body = io.BytesIO(b"x" * 100)
    got = S3Store(Stub(answer={"Body": body, "ContentLength": 100, "ETag": '"e"'})).get_object("b", "k", max_bytes=10)
    assert got == Fetched(None, '"e"', 100) and body.closed  # refused unread, its stream closed
    got = S3Store(Stub(answer={"Body": io.BytesIO(b"abc"), "ETag": '"e"'})).get_object("b", "k", max_bytes=10)
    assert got == Fetched(b"abc", '"e"', 3)


def test_multipart_is_started_with_every_object_field_of_the_grant() -> None:
    stub = Stub(answer={"UploadId": "u-1"})
    assert S3Store(stub).create_multipart(GRANT) == "u-1"
    assert stub.calls == [("create_multipart_upload", create_params(GRANT))]
    assert create_params(GRANT) == {"Bucket": "b", "Key": "uploads/k.mp4", "ContentType": "video/mp4", "ACL": "private",
                                    "ServerSideEncryption": "AES256", "Metadata": {"title": "t"}}


def test_every_page_of_parts_is_listed() -> None:
    pages = iter([{"Parts": [{"PartNumber": 1, "Size": 5, "ETag": '"a"'}], "IsTruncated": True,
                   "NextPartNumberMarker": 1},
                  {"Parts": [{"PartNumber": 2, "Size": 3, "ETag": '"b"'}], "IsTruncated": False}])

    class Pages(Stub):
        def list_parts(self, **params: Any) -> Any:
            self.calls.append(params["PartNumberMarker"])
            return next(pages)

    stub = Pages()
    parts = S3Store(stub).list_parts("b", "k", "u")
    assert [(p.number, p.size, p.etag) for p in parts] == [(1, 5, '"a"'), (2, 3, '"b"')]
    assert stub.calls == [0, 1]



class Reads(Stub):
    """A client answering reads of one object; records which operations were called."""

    def __init__(self, body: bytes, tags: int = 0) -> None:
        super().__init__()
        self.body, self.tags = body, tags

    def get_object(self, **params: Any) -> Any:
        self.calls.append(("get_object", params))
        if not self.body:
            raise client_error("InvalidRange", 416)
        first, last = map(int, params["Range"][len("bytes="):].split("-"))
        chunk = self.body[first:last + 1]
        return {"Body": io.BytesIO(chunk), "ContentLength": len(chunk), "ETag": '"e"', "ContentType": "image/png",
                "ContentRange": f"bytes {first}-{first + len(chunk) - 1}/{len(self.body)}", "TagCount": self.tags,
                "CacheControl": "public", "Metadata": {"Title": "t"}}

    def head_object(self, **params: Any) -> Any:
        self.calls.append(("head_object", params))
        return {"ContentLength": 0, "ETag": '"0"', "ContentType": "image/png"}

    def get_object_tagging(self, **params: Any) -> Any:
        self.calls.append(("get_object_tagging", params))
        return {"TagSet": [{"Key": "broker-verdict", "Value": "verified"}]}


def test_inspect_reads_the_first_bytes_and_the_headers_in_one_call() -> None:
    reads = Reads(b"x" * 10_000)
    obj = S3Store(reads).inspect("b", "k", head_bytes=4096)
    assert obj is not None and [c[0] for c in reads.calls] == ["get_object"]
    assert reads.calls[0][1]["Range"] == "bytes=0-4095"
    assert (obj.size, len(obj.head), obj.headers, obj.metadata, obj.tags) == (
        10_000, 4096, {"Cache-Control": "public"}, {"title": "t"}, {})


def test_inspect_reads_tags_only_when_there_are_some_and_heads_an_empty_object() -> None:
    tagged = Reads(b"x" * 10, tags=1)
    assert S3Store(tagged).inspect("b", "k", head_bytes=4096).tags == {"broker-verdict": "verified"}  # type: ignore[union-attr]
    assert [c[0] for c in tagged.calls] == ["get_object", "get_object_tagging"]
    empty = Reads(b"")
    obj = S3Store(empty).inspect("b", "k", head_bytes=4096)
    assert obj is not None and (obj.size, obj.head) == (0, b"")
    assert [c[0] for c in empty.calls] == ["get_object", "head_object"]
