"""S3Store's reads and moves against SeaweedFS and Ceph RGW: what the verifier relies on, on a real store."""
from __future__ import annotations

import os
from typing import Any, Callable

from broker.s3.store import S3Store
from tests.store_suite import live, store, verifying  # noqa: F401 - the store suite: SeaweedFS and Ceph RGW

MiB = 1024 * 1024


def test_a_large_object_is_moved_by_a_multipart_copy(store: Any, make_bucket: Callable[..., str]) -> None:
    """S3 copies at most 5 GB in one call; past the limit (here lowered) the move copies in parts."""
    bucket = make_bucket()
    s3 = store.s3_client()
    data = os.urandom(6 * MiB + 123)
    s3.put_object(Bucket=bucket, Key="up/big.bin", Body=data, ContentType="video/mp4", Metadata={"t": "1"})
    moved = S3Store(s3)
    moved.copy_limit, moved.copy_part_bytes = MiB, 5 * MiB
    obj = moved.inspect(bucket, "up/big.bin", head_bytes=0)
    assert obj is not None and moved.move(obj, "quarantine/up/big.bin", tags={"broker-verdict": "rejected"})
    assert s3.list_objects_v2(Bucket=bucket, Prefix="up/").get("KeyCount", 0) == 0
    held = s3.get_object(Bucket=bucket, Key="quarantine/up/big.bin")
    assert held["Body"].read() == data and held["ContentDisposition"] == "attachment" and held["Metadata"] == {"t": "1"}
    tags = s3.get_object_tagging(Bucket=bucket, Key="quarantine/up/big.bin")["TagSet"]
    assert tags == [{"Key": "broker-verdict", "Value": "rejected"}]
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_an_object_replaced_meanwhile_is_not_moved(store: Any, make_bucket: Callable[..., str]) -> None:
    """The move copies only if the object still has the ETag it was judged by (x-amz-copy-source-if-match).
    Ceph RGW 16.2 ignores that header (it reads its own x-amz-copy-if-match): there the replacement is moved."""
    bucket = make_bucket()
    s3 = store.s3_client()
    s3.put_object(Bucket=bucket, Key="up/a.png", Body=b"first")
    old = S3Store(s3).inspect(bucket, "up/a.png", head_bytes=0)
    s3.put_object(Bucket=bucket, Key="up/a.png", Body=b"second")
    assert old is not None
    moved = S3Store(s3).move(old, "quarantine/up/a.png", tags={})
    if store.kind == "rgw":
        assert moved and s3.get_object(Bucket=bucket, Key="quarantine/up/a.png")["Body"].read() == b"second"
        assert s3.list_objects_v2(Bucket=bucket, Prefix="up/").get("KeyCount", 0) == 0
    else:
        assert not moved
        assert s3.get_object(Bucket=bucket, Key="up/a.png")["Body"].read() == b"second"


def test_inspect_reads_only_the_first_bytes_of_a_large_object(store: Any, make_bucket: Callable[..., str]) -> None:
    bucket = make_bucket()
    s3 = store.s3_client()
    s3.put_object(Bucket=bucket, Key="up/big.bin", Body=b"\0" * (3 * MiB), ContentType="application/octet-stream",
                  CacheControl="no-store", Tagging="a=1")
    seen: list[int] = []
    s3.meta.events.register("after-call.s3.GetObject", lambda parsed, **_: seen.append(parsed.get("ContentLength")))
    obj = S3Store(s3).inspect(bucket, "up/big.bin", head_bytes=4096)
    assert obj is not None and obj.size == 3 * MiB and len(obj.head) == 4096 and seen == [4096]
    assert obj.headers == {"Cache-Control": "no-store"} and obj.tags == {"a": "1"}
    s3.put_object(Bucket=bucket, Key="up/empty.bin", Body=b"")
    empty = S3Store(s3).inspect(bucket, "up/empty.bin", head_bytes=4096)
    assert empty is not None and (empty.size, empty.head) == (0, b"")
    assert S3Store(s3).inspect(bucket, "up/none.bin", head_bytes=4096) is None
