"""Rules in S3: cold-start load, ETag conditional GETs, swap only on valid files, fail closed."""
from __future__ import annotations

import io
from typing import Any, Iterator

import boto3
import pytest
from moto import mock_aws

from broker.errors import ConfigError, RulesError, RulesUnavailable
from broker.config.sources import RulesProvider, S3Source, parse_s3_url
from broker.s3.store import S3Store
from tests.conftest import NOW, Ids, post_json

LOCATION = "s3://ops-config/broker/rules.yaml"


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="ops-config")
        client.create_bucket(Bucket="broker-uploads")
        yield client


class Statuses:
    """Records the HTTP status of every GetObject the client makes."""

    def __init__(self, client: Any) -> None:
        self.seen: list[int] = []
        self.if_none_match: list[str | None] = []
        client.meta.events.register("after-call.s3.GetObject", self._after)
        client.meta.events.register("before-parameter-build.s3.GetObject", self._before)

    def _before(self, params: dict[str, Any], **_: Any) -> None:
        self.if_none_match.append(params.get("IfNoneMatch"))

    def _after(self, http_response: Any, **_: Any) -> None:
        self.seen.append(http_response.status_code)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def put(s3: Any, text: str) -> str:
    return s3.put_object(Bucket="ops-config", Key="broker/rules.yaml", Body=text.encode())["ETag"]


@pytest.mark.parametrize("location, expected", [
    pytest.param("s3://b/k.yaml", ("b", "k.yaml"), id="simple"),
    pytest.param("s3://b/dir/sub/rules.yaml", ("b", "dir/sub/rules.yaml"), id="nested-key"),
])
def test_parse_s3_url(location: str, expected: tuple[str, str]) -> None:
    assert parse_s3_url(location) == expected


@pytest.mark.parametrize("location", [
    pytest.param("s3://", id="empty"),
    pytest.param("s3://bucket", id="no-key"),
    pytest.param("s3://bucket/", id="empty-key"),
    pytest.param("s3://bucket/dir/", id="folder"),
    pytest.param("https://bucket/key", id="not-s3"),
])
def test_bad_s3_url_is_a_config_error_with_the_fix(location: str) -> None:
    with pytest.raises(ConfigError, match="s3://bucket/path/to/rules.yaml"):
        parse_s3_url(location)




def test_load_then_304_then_swap_on_change(s3: Any, rules_text: str) -> None:
    etag = put(s3, rules_text)
    calls = Statuses(s3)
    logs: list[tuple[str, dict[str, Any]]] = []
    clock = Clock()
    provider = RulesProvider(S3Source(LOCATION, S3Store(s3)), reload_seconds=60, clock=clock,
                             log=lambda event, **kw: logs.append((event, kw)))
    first = provider.refresh()
    assert first is not None and first.source == LOCATION
    assert calls.seen == [200] and calls.if_none_match == [None]

    clock.t = 30  # inside the reload interval: no S3 call at all
    assert provider.current() is first
    assert calls.seen == [200]

    clock.t = 61  # due: one conditional GET, answered 304, rules object unchanged
    assert provider.current() is first
    assert calls.seen == [200, 304] and calls.if_none_match[-1] == etag

    put(s3, rules_text.replace("max_bytes: 5 MiB", "max_bytes: 1 MiB"))
    clock.t = 122
    second = provider.current()
    assert second is not first and calls.seen[-1] == 200
    assert second.clients["web-app"].rules["avatars"].max_bytes == 1024 * 1024
    assert [e for e, _ in logs] == ["rules_loaded", "rules_loaded"]
    assert logs[-1][1]["replaced"] == first.digest


def test_invalid_new_file_keeps_the_last_good_rules_and_logs(s3: Any, rules_text: str) -> None:
    put(s3, rules_text)
    logs: list[tuple[str, dict[str, Any]]] = []
    clock = Clock()
    provider = RulesProvider(S3Source(LOCATION, S3Store(s3)), reload_seconds=5, clock=clock,
                             log=lambda event, **kw: logs.append((event, kw)))
    good = provider.refresh()
    put(s3, rules_text.replace("max_bytes: 5 MiB", "max_bytes: lots"))
    clock.t = 10
    assert provider.current() is good
    assert isinstance(provider.last_error, RulesError)
    event, fields = logs[-1]
    assert event == "rules_reload_failed" and fields["kept"] == good.digest
    assert "max_bytes" in fields["error"] and "'avatars'" in fields["error"]
    put(s3, rules_text.replace("max_bytes: 5 MiB", "max_bytes: 2 MiB"))  # fixed: swapped in
    clock.t = 20
    assert provider.current().clients["web-app"].rules["avatars"].max_bytes == 2 * 1024 * 1024
    assert provider.last_error is None


@pytest.mark.parametrize("setup, message", [
    pytest.param("missing", "NoSuchKey", id="no-such-key"),
    pytest.param("no-bucket", "NoSuchBucket", id="no-such-bucket"),
    pytest.param("invalid", "problem", id="invalid-yaml"),
])
def test_never_good_rules_fail_closed_with_503(s3: Any, rules_text: str, setup: str,
                                               message: str) -> None:
    from broker.audit import AuditLog
    from broker.service import assemble

    location = LOCATION
    if setup == "invalid":
        put(s3, "version: 1\nclients: [not, a, mapping]\n")
    elif setup == "no-bucket":
        location = "s3://no-such-config-bucket/rules.yaml"
    provider = RulesProvider(S3Source(location, S3Store(s3)), reload_seconds=3600, log=lambda *a, **k: None)
    assert provider.refresh() is None
    assert message in str(provider.last_error)
    with pytest.raises(RulesUnavailable):
        provider.current()
    audit = io.StringIO()
    broker = assemble(provider, S3Store(s3), AuditLog(stream=audit), clock=lambda: NOW, new_id=Ids())
    status, body, _ = post_json(broker, "/uploads", {"filename": "a.png", "content_type": "image/png"})
    assert status == 503 and body["error"] == "rules_unavailable"
    assert '"decision":"error"' in audit.getvalue()


def test_oversized_rules_object_is_refused_unread(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import broker.config.sources as mod

    monkeypatch.setattr(mod, "MAX_RULES_BYTES", 100)
    put(s3, "#" * 101)
    with pytest.raises(RulesError, match="more than the 100"):
        S3Source(LOCATION, S3Store(s3)).fetch(None)


def test_build_loads_rules_from_s3_at_cold_start(s3: Any, rules_text: str) -> None:
    from broker import service
    from broker.config import Settings

    put(s3, rules_text)
    broker = service.build(Settings.from_env({"BROKER_RULES": LOCATION}), s3_client=s3,
                       audit_stream=io.StringIO(), clock=lambda: NOW)
    assert broker.rules.source == LOCATION and isinstance(broker.rules._source, S3Source)
    assert broker.rules.current().source == LOCATION
    status, body, _ = post_json(broker, "/uploads", {"filename": "me.png", "content_type": "image/png",
                                                     "size": 1000})
    assert status == 200 and body["key"].startswith("uploads/web-app/avatars/")
