"""Ceph RGW for tests and ``make run STORE=rgw`` (broker.dev.rgw): its configuration and what it says when it
cannot start. The cluster itself runs in the store suite (tests/stack.py, every ``[rgw]`` test)."""
from __future__ import annotations

from pathlib import Path

import pytest

from broker.dev import run as devrun
from broker.dev.rgw import Rgw, RgwConfig, find_programs
from broker.dev.run import RunError, plan, rule_prefixes
from broker.dev.store import StoreError


def test_the_config_is_one_node_on_loopback_without_cephx(tmp_path: Path) -> None:
    config = RgwConfig.generate(tmp_path, s3_port=28001, mon_port=28002)
    conf = config.ceph_conf("0000-fsid")
    for line in ("mon host = v2:127.0.0.1:28002", "auth client required = none", "ms bind msgr1 = false",
                 "osd objectstore = memstore", "osd pool default size = 1", "mon allow pool size one = true",
                 "rgw frontends = beast endpoint=127.0.0.1:28001", "ms mon client mode = crc"):
        assert line in conf
    assert "notifications" in conf.split("rgw enable apis = ")[1].splitlines()[0]
    assert config.endpoint_url == "http://127.0.0.1:28001"
    assert RgwConfig.generate(tmp_path).access_key == config.access_key  # the keys are kept in data_dir


def test_missing_programs_are_named_with_how_to_install_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StoreError, match=r"ceph-mon, ceph-osd, radosgw.*scripts/install-ceph.sh"):
        find_programs()
    with pytest.raises(StoreError, match="install-ceph.sh"):
        Rgw(RgwConfig.generate(tmp_path)).start()


def test_make_run_starts_rgw_with_broker_store_rgw(tmp_path: Path) -> None:
    p = plan({"BROKER_DATA_DIR": str(tmp_path), "BROKER_STORE": "rgw"})
    assert p.store_kind == "rgw"
    assert plan({"BROKER_DATA_DIR": str(tmp_path)}).store_kind == "seaweedfs"
    assert "Ceph RGW" in devrun.banner(p, "http://127.0.0.1:8334", ["broker-uploads"])
    assert "/events/s3" in devrun.banner(p, "http://127.0.0.1:8334", ["broker-uploads"])
    # one notification per rule prefix, none inside another (an object would be announced twice)
    prefixes = rule_prefixes(p, "broker-uploads")
    assert prefixes and not any(a != b and a.startswith(b) for a in prefixes for b in prefixes)


def test_an_unknown_store_is_refused_with_the_choices(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="BROKER_STORE='minio' is not a store make run can start; use one of "
                                       "seaweedfs, rgw"):
        plan({"BROKER_DATA_DIR": str(tmp_path), "BROKER_STORE": "minio"})


def test_env_points_at_rgw_when_it_is_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = {"BROKER_DATA_DIR": str(tmp_path), "BROKER_STORE": "rgw"}
    assert devrun.main(["--env"], env=env) == 0
    assert "export AWS_ENDPOINT_URL_S3=http://127.0.0.1:8334\n" in capsys.readouterr().out
    assert (tmp_path / "rgw" / "credentials.json").exists()


def test_a_failed_command_is_named_without_the_s3_users_secret(tmp_path: Path) -> None:
    config = RgwConfig.generate(tmp_path)
    rgw = Rgw(config)
    rgw._programs = {"radosgw-admin": "/bin/false"}
    with pytest.raises(StoreError, match="user create .*--secret=\\.\\.\\.` failed with exit code 1") as raised:
        rgw._run("radosgw-admin", "user", "create", f"--access-key={config.access_key}",
                 f"--secret={config.secret_key}")
    assert config.secret_key not in str(raised.value)
    assert config.secret_key not in repr(config)
