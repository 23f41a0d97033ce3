"""``make run`` (broker.dev.run) decides what to start from the environment and says clearly why it cannot."""
from __future__ import annotations

import socket
from pathlib import Path

import pytest

from broker.dev import run as devrun
from broker.dev.run import RunError, plan, single_instance, summarize

ROOT = Path(__file__).resolve().parents[2]


def test_plan_defaults_keep_data_and_audit_under_the_data_dir(tmp_path: Path) -> None:
    env = {"BROKER_DATA_DIR": str(tmp_path), "AWS_ENDPOINT_URL_S3": "https://s3.example.com"}

    p = plan(env)

    assert (p.settings.port, p.settings.host) == (8000, "127.0.0.1")
    assert p.settings.audit_file == str(tmp_path / "audit.jsonl")
    assert p.settings.rules == str(ROOT / "rules.yaml")
    assert p.settings.s3_endpoint_url is None  # the shell's endpoint is not the local store
    assert p.page_url == "http://127.0.0.1:8000/"
    assert p.demo_key_works()
    assert p.settings.ledger == f"sqlite:///{tmp_path / 'ledger.db'}"  # a SQLite grant ledger by default


def test_the_default_data_dir_is_var_in_the_checkout() -> None:
    assert devrun.DEFAULT_DATA_DIR == ROOT / "var"


def test_env_points_the_broker_command_at_the_running_stack(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    env = {"BROKER_DATA_DIR": str(tmp_path), "BROKER_STORE_PORT": "18333"}
    assert devrun.main(["--env"], env=env) == 0
    lines = dict(line.removeprefix("export ").split("=", 1) for line in capsys.readouterr().out.splitlines())
    assert lines["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:18333"
    assert lines["BROKER_LEDGER"] == f"sqlite:///{tmp_path / 'ledger.db'}"
    assert lines["AWS_ACCESS_KEY_ID"].startswith("AKID") and len(lines["AWS_SECRET_ACCESS_KEY"]) > 20


def test_bucket_cors_allows_the_rules_origins_and_the_pages_own(tmp_path: Path) -> None:
    p = plan({"BROKER_DATA_DIR": str(tmp_path), "BROKER_PORT": "8123"})

    assert p.cors_origins() == ["http://localhost:8000", "http://127.0.0.1:8000",
                                "http://127.0.0.1:8123", "http://localhost:8123"]


@pytest.mark.parametrize("env, expected", [
    pytest.param({"BROKER_PORT": "eighty"}, "BROKER_PORT='eighty' is not a valid int", id="bad_port"),
    pytest.param({"BROKER_RULES": "s3://bucket/rules.yaml"}, "Use `broker serve` to read rules from S3",
                 id="s3_rules"),
    pytest.param({"BROKER_RULES": "/nonexistent/rules.yaml"}, "cannot read the rules file", id="no_rules"),
])
def test_plan_refuses_bad_settings_with_what_to_fix(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    with pytest.raises(RunError) as info:
        plan({"BROKER_DATA_DIR": str(tmp_path), **env})

    assert expected in str(info.value)


def test_plan_lists_every_rules_problem(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text((ROOT / "rules.yaml").read_text().replace("max_bytes: 5 MiB", "max_bytes: 5 parsecs")
                     .replace("max_expires_in: 3600", "max_expires_in: -1"))

    with pytest.raises(RunError) as info:
        plan({"BROKER_DATA_DIR": str(tmp_path), "BROKER_RULES": str(rules)})

    message = str(info.value)
    assert "2 problem(s)" in message and "max_bytes" in message and "max_expires_in" in message
    assert f"broker check {rules}" in message


def test_a_second_run_on_the_same_data_dir_is_refused_naming_the_first(tmp_path: Path) -> None:
    with single_instance(tmp_path):
        with pytest.raises(RunError) as info:
            with single_instance(tmp_path):
                pass  # pragma: no cover - never entered

    assert "already running (pid " in str(info.value)
    assert "kill -INT" in str(info.value) and "BROKER_DATA_DIR" in str(info.value)
    with single_instance(tmp_path):  # released when the first run ends
        pass


def test_a_taken_broker_port_names_the_port_and_the_variable(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = plan({"BROKER_DATA_DIR": str(tmp_path), "BROKER_PORT": str(port)})

        with pytest.raises(RunError) as info:
            devrun.check_broker_port(p.settings)

    assert f"port {port} (the broker)" in str(info.value)
    assert f"BROKER_PORT={port + 1} make run" in str(info.value)


def test_help_explains_the_environment(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        devrun.main(["--help"])

    out = capsys.readouterr().out
    assert info.value.code == 0
    for name in ("BROKER_PORT", "BROKER_STORE_PORT", "BROKER_STORE_BASE_PORT", "BROKER_DATA_DIR",
                 "broker serve", "AWS_ENDPOINT_URL_S3"):
        assert name in out


def test_curl_example_uses_the_demo_key_and_the_pages_port(tmp_path: Path) -> None:
    p = plan({"BROKER_DATA_DIR": str(tmp_path), "BROKER_PORT": "8123"})

    example = devrun.curl_example(p)

    assert "http://127.0.0.1:8123/uploads" in example
    assert "x-api-key: demo-web-app-key" in example


@pytest.mark.parametrize("record, line", [
    pytest.param({"time": "2026-11-28T14:49:31.000Z", "decision": "allowed", "client": "web-app",
                  "profile": "avatars", "content_type": "image/png", "bucket": "b", "key": "k.png"},
                 "14:49:31 allowed web-app/avatars image/png -> b/k.png", id="allowed"),
    pytest.param({"time": "2026-11-28T14:49:31.000Z", "decision": "denied", "client": "web-app",
                  "profile": "avatars", "status": 413, "check": "too_large",
                  "reason": "too large: 12 MB, the limit for avatars is 5 MiB"},
                 "14:49:31 denied  web-app/avatars 413 too_large: too large: 12 MB, the limit for avatars is 5 MiB",
                 id="denied"),
    pytest.param({"time": "2026-11-28T14:49:31.000Z", "decision": "error", "status": 401,
                  "error": "unauthenticated", "reason": "the API key is not recognised"},
                 "14:49:31 error   401 unauthenticated: the API key is not recognised", id="error"),
])
def test_console_summary_of_an_audit_record(record: dict[str, object], line: str) -> None:
    assert summarize(record) == line


def test_a_ledger_of_an_earlier_layout_stops_make_run_with_what_to_do(tmp_path: Path) -> None:
    import sqlite3

    old = sqlite3.connect(tmp_path / "ledger.db")
    old.execute("CREATE TABLE grants (grant_id TEXT PRIMARY KEY)")  # a file of layout 0
    old.commit()
    old.close()
    p = plan({"BROKER_DATA_DIR": str(tmp_path), "BROKER_PORT": "18765"})
    with pytest.raises(RunError) as caught:
        devrun.run(p)  # refused before anything starts: no store, no server
    message = str(caught.value)
    assert "earlier version" in message and f"mv {tmp_path / 'ledger.db'}" in message and "BROKER_LEDGER=off" in message
