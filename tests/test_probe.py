"""``broker probe-store``: the tamper matrix against real SeaweedFS and Ceph RGW, its cleanup, and the command's exit status."""
from __future__ import annotations

import argparse
import json
import socket
from typing import Any, Callable

import pytest

from broker.probe import DEFAULT_PREFIX, TRIALS, ProbeUnavailable, Report, Verdict, form_body, register_cli, run_probe
from broker.s3.store import S3Store
from tests.store_suite import live, store, verifying  # noqa: F401 - the store suite: SeaweedFS and Ceph RGW


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="broker")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def leftovers(s3: Any, bucket: str, prefix: str = DEFAULT_PREFIX) -> tuple[list[str], list[str]]:
    """Objects and unfinished multipart uploads under ``prefix``."""
    objects = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
    uploads = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])]
    return objects, uploads


# --------------------------------------------------------------------------- against the real stores


@pytest.fixture(scope="module")
def store_report(store: Any) -> tuple[Report, str]:
    """One run of the whole matrix (about a second), shared by the assertions below."""
    bucket = store.ensure_bucket("probe-matrix")
    return run_probe(S3Store(store.s3_client()), bucket), bucket


#: What each store is known to do where they differ (docs/LOCAL.md has the whole matrix, docs/STORES.md more).
DIFFERENT = {
    # SeaweedFS 4.48 stores uncovered Content-* fields and follows an uncovered redirect; RGW 16.2 refuses them.
    "uncovered Content-Disposition": {"seaweedfs": Verdict.VERIFIER, "rgw": Verdict.STORE},
    "uncovered Cache-Control": {"seaweedfs": Verdict.VERIFIER, "rgw": Verdict.STORE},
    # SeaweedFS checks a declared x-amz-checksum-sha256 on POST; RGW 16.2 neither checks nor keeps it.
    "wrong x-amz-checksum-sha256": {"seaweedfs": Verdict.STORE, "rgw": Verdict.NOTHING},
}
#: What both stores do alike.
ALIKE = {
    "oversize": Verdict.STORE,
    "undersize": Verdict.STORE,
    "changed key": Verdict.STORE,
    "changed Content-Type": Verdict.STORE,
    "expired form": Verdict.STORE,
    "uncovered x-amz-meta-*": Verdict.STORE,
    "uncovered redirect location": Verdict.STORE,
    "wrong bytes": Verdict.VERIFIER,
    "multipart unsigned Content-Type": Verdict.VERIFIER,
    "multipart unsigned Content-Disposition": Verdict.VERIFIER,
}


@pytest.mark.parametrize("name", [pytest.param(n, id=n.replace(" ", "_")) for n in [*ALIKE, *DIFFERENT]])
def test_rows_as_measured(store_report: tuple[Report, str], store: Any, name: str) -> None:
    rows = {row.name: row for row in store_report[0].rows}
    expected = ALIKE.get(name) or DIFFERENT[name][store.kind]
    assert rows[name].verdict is expected, rows[name]


def test_where_the_stores_differ(store_report: tuple[Report, str], store: Any) -> None:
    """Unsigned x-amz-* headers on a signed multipart initiate: SeaweedFS refuses them, RGW 16.2 applies them;
    an uncovered success_action_redirect: SeaweedFS follows it, RGW 16.2 refuses the form."""
    rows = {row.name: row for row in store_report[0].rows}
    on_rgw = store.kind == "rgw"
    for name in ("multipart unsigned x-amz-meta-*", "multipart unsigned redirect location"):
        assert rows[name].verdict is (Verdict.VERIFIER if on_rgw else Verdict.STORE), rows[name]
    redirect = rows["uncovered success_action_redirect"]
    assert (redirect.verdict is Verdict.STORE) == on_rgw, redirect
    if on_rgw:
        assert "403 AccessDenied" in redirect.observed


def test_every_trial_gives_one_row_and_the_controls_pass(store_report: tuple[Report, str], store: Any) -> None:
    report = store_report[0]
    assert [row.name for row in report.rows] == [trial.name for trial in TRIALS]
    rows = {row.name: row for row in report.rows}
    assert rows["control"].observed.startswith("stored")
    assert rows["multipart control"].observed == "completed"
    checksum = rows["wrong x-amz-checksum-sha256"].observed
    assert ("BadDigest" in checksum) if store.kind == "seaweedfs" else ("wrong digest ALSO stored" in checksum)
    assert "EntityTooLarge" in rows["oversize"].observed
    # the multipart rows ran (not skipped because the control failed)
    assert all(not row.observed.startswith("not tried") for row in report.rows)


def test_the_probe_cleans_up_everything_it_made(store_report: tuple[Report, str], store: Any) -> None:
    report, bucket = store_report
    assert report.prefix.startswith(DEFAULT_PREFIX) and report.prefix.endswith("/")
    assert report.deleted > 0 and report.aborted > 0
    assert report.left == () and report.cleanup_problems == ()
    assert leftovers(store.s3_client(), bucket) == ([], [])


def test_keep_leaves_the_objects_and_only_under_the_prefix(store: Any, make_bucket: Callable[..., str]) -> None:
    bucket = make_bucket()
    s3 = store.s3_client()
    s3.put_object(Bucket=bucket, Key="unrelated/object.txt", Body=b"not the probe's")
    report = run_probe(S3Store(s3), bucket, prefix="kept-probe/", keep=True)
    objects, _ = leftovers(s3, bucket, "kept-probe/")
    assert objects and sorted(objects) == sorted(report.left)
    assert all(key.startswith(report.prefix) for key in objects)
    assert report.deleted == 0
    assert leftovers(s3, bucket, "unrelated/")[0] == ["unrelated/object.txt"]
    for key in objects:
        s3.delete_object(Bucket=bucket, Key=key)
    for upload in s3.list_multipart_uploads(Bucket=bucket, Prefix="kept-probe/").get("Uploads", []):
        s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])


def test_a_missing_bucket_means_the_probe_cannot_run(store: Any) -> None:
    with pytest.raises(ProbeUnavailable, match="no-such-probe-bucket.*NoSuchBucket"):
        run_probe(S3Store(store.s3_client()), "no-such-probe-bucket")


def test_the_command_prints_json_and_exits_0(store: Any, make_bucket: Callable[..., str],
                                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bucket = make_bucket()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", store.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", store.config.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", store.config.secret_key)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    assert run_cli(["probe-store", "--bucket", bucket, "--json", "--prefix", "cli-probe"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bucket"] == bucket and out["prefix"].startswith("cli-probe/")
    assert {row["name"]: row["verdict"] for row in out["rows"]}["oversize"] == "enforced by the store"
    assert out["cleanup"]["left"] == []
    assert leftovers(store.s3_client(), bucket, "cli-probe/") == ([], [])


def test_the_table_names_every_row(store: Any, make_bucket: Callable[..., str], monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    bucket = make_bucket()
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", store.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", store.config.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", store.config.secret_key)
    assert run_cli(["probe-store", "--bucket", bucket]) == 0
    out = capsys.readouterr().out
    for trial in TRIALS:
        assert trial.name in out
    assert "rests on the verifier" in out and "cleaned up:" in out


# --------------------------------------------------------------------------- no store: exit status 2


def test_no_store_reachable_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDPROBETEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "probe-test-secret")
    assert run_cli(["probe-store", "--bucket", "anything"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("broker probe-store: cannot use bucket 'anything': Could not connect")
    assert "list-type" not in err  # the URL without its query
    assert "Traceback" not in err


def test_no_bucket_anywhere_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                    tmp_path: Any) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("BROKER_RULES", str(tmp_path / "missing.yaml"))
    assert run_cli(["probe-store"]) == 2
    assert "no bucket: give --bucket" in capsys.readouterr().err


def test_help_says_what_it_does_to_the_bucket(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_cli(["probe-store", "--help"])
    text = capsys.readouterr().out
    for needle in ("WRITES", "DELETES", "broker-probe/<random>/", "--bucket", "--prefix", "--json", "--keep",
                   "exit status"):
        assert needle in text


def test_the_form_puts_the_file_last() -> None:
    body, content_type = form_body([("key", "k"), ("policy", "p")], b"DATA", "text/plain")
    boundary = content_type.split("boundary=")[1]
    parts = body.split(f"--{boundary}".encode())
    assert b'name="key"' in parts[1] and b'name="policy"' in parts[2] and b'name="file"' in parts[3]
    assert parts[3].endswith(b"DATA\r\n") and parts[4] == b"--\r\n"
