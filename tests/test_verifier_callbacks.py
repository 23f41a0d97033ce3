"""The verifier calls a client back with its verdict: signed, after the object was marked or moved.

A real HTTP receiver on 127.0.0.1 (tests/test_callbacks.py's); the store is the in-memory one of
tests/test_verifier.py. The delivery mechanism itself (retries, redirects, timeouts) is tried in
tests/test_callbacks.py.
"""
from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
import yaml

from broker.audit import AuditLog
from broker.callbacks import Notifier
from broker.config.sources import RulesProvider, StaticSource
from broker.core.callbacks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, delivery_id, verify
from broker.ledger import grant_id_for
from broker.verifier import Verifier
from tests.conftest import NOW, ROOT
from tests.test_callbacks import Receiver, receiver  # noqa: F401 - the fixture
from tests.test_sniff import png
from tests.test_verifier import KEY, Objects

SECRET = "s" * 40


def verifier_calling(url: str, bucket: Objects, monkeypatch: pytest.MonkeyPatch) -> Verifier:
    doc = yaml.safe_load((ROOT / "rules.yaml").read_text())
    doc["clients"]["web-app"]["callback"] = {"url": f"{url}/hooks/uploads?token=t0ps3cret", "secret_env": "WEB_HOOK_SECRET"}
    monkeypatch.setenv("WEB_HOOK_SECRET", SECRET)
    provider = RulesProvider(StaticSource(yaml.safe_dump(doc)), reload_seconds=3600)
    provider.refresh()
    return Verifier(provider, bucket, AuditLog(stream=io.StringIO()), clock=lambda: NOW,  # type: ignore[arg-type]
                    notifier=Notifier(background=False, attempts=2, backoff=(0.01,)))


@pytest.mark.parametrize("body, event, checks", [
    pytest.param(png(), "upload.verified", [], id="verified"),
    pytest.param(b"<html><script>x</script></html>", "upload.rejected", ["active_content"], id="rejected"),
])
def test_a_client_with_a_callback_hears_each_verdict_signed(receiver: Receiver, monkeypatch: pytest.MonkeyPatch,
                                                             body: bytes, event: str, checks: list[str]) -> None:
    bucket = Objects()
    verifier = verifier_calling(receiver.url, bucket, monkeypatch)
    bucket.put(KEY, body)
    outcome = verifier.verify_object("broker-uploads", KEY)
    receiver.wait_for(1)
    (got,) = receiver.requests
    assert got.path == "/hooks/uploads?token=t0ps3cret"
    assert verify(SECRET.encode(), got.headers[SIGNATURE_HEADER], got.body, now=int(time.time()))
    payload = json.loads(got.body)
    etag = outcome.verdict.obj.etag  # type: ignore[union-attr]
    assert got.headers[DELIVERY_HEADER] == payload["delivery_id"] == delivery_id(grant_id_for("broker-uploads", KEY),
                                                                                 etag)
    assert got.headers[EVENT_HEADER] == payload["event"] == event
    assert (payload["client"], payload["profile"], payload["key"], payload["size"]) == \
        ("web-app", "avatars", KEY, len(body))
    assert payload["etag"] == etag.strip('"') and [c["check"] for c in payload["checks"]] == checks


def test_a_duplicate_event_does_not_call_back_twice(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket = Objects()
    verifier = verifier_calling(receiver.url, bucket, monkeypatch)
    bucket.put(KEY, png())
    verifier.verify_object("broker-uploads", KEY)
    assert verifier.verify_object("broker-uploads", KEY).status == "skipped"
    receiver.wait_for(1)
    time.sleep(0.1)
    assert len(receiver.requests) == 1


def test_clients_without_a_callback_are_not_called(receiver: Receiver) -> None:
    bucket = Objects()
    provider = RulesProvider(StaticSource((ROOT / "rules.yaml").read_text()), reload_seconds=3600)
    provider.refresh()
    verifier = Verifier(provider, bucket, AuditLog(stream=io.StringIO()), clock=lambda: NOW,  # type: ignore[arg-type]
                        notifier=Notifier(background=False))
    bucket.put(KEY, png())
    verifier.verify_object("broker-uploads", KEY)
    time.sleep(0.1)
    assert receiver.requests == []


def test_a_verdict_is_not_held_up_by_a_receiver_that_is_down(monkeypatch: pytest.MonkeyPatch, capfd: Any) -> None:
    bucket = Objects()
    verifier = verifier_calling("http://127.0.0.1:9", bucket, monkeypatch)  # nothing listens on port 9
    bucket.put(KEY, png())
    assert verifier.verify_object("broker-uploads", KEY).status == "verified"  # marked: the callback failing changes nothing
    err = capfd.readouterr().err
    assert '"event": "callback_failed"' in err and SECRET not in err and "t0ps3cret" not in err
