"""Process settings, read once from the environment and checked then (see README, "Settings")."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from broker.errors import ConfigError

#: The example rules beside the package (what every command uses without BROKER_RULES).
DEFAULT_RULES = str(Path(__file__).resolve().parent.parent.parent / "rules.yaml")

@dataclass(frozen=True)
class Settings:
    """Process settings, read once from the environment (see README, "Settings")."""

    rules: str = DEFAULT_RULES
    rules_reload_seconds: float = 2.0
    audit_file: str | None = None
    region: str | None = None
    s3_endpoint_url: str | None = None
    s3_addressing_style: str = "auto"
    max_body_bytes: int = 64 * 1024
    host: str = "127.0.0.1"
    port: int = 8000
    grant_secret: str | None = field(default=None, repr=False)  # BROKER_GRANT_SECRET
    session_secret: str | None = field(default=None, repr=False)  # BROKER_SESSION_SECRET: signs session tokens
    session_secret_previous: str | None = field(default=None, repr=False)  # ..._PREVIOUS: still verifies them
    events_token: str | None = field(default=None, repr=False)  # BROKER_EVENTS_TOKEN
    ledger: str = "off"  # BROKER_LEDGER: sqlite:///var/ledger.db, dynamodb://table-name, or off
    dynamodb_endpoint_url: str | None = None  # AWS_ENDPOINT_URL_DYNAMODB: a local DynamoDB-API server

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Build settings from ``env`` (default ``os.environ``); bad values raise ``ConfigError``."""
        env = os.environ if env is None else env
        endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
        style = env.get("BROKER_S3_ADDRESSING_STYLE", "path" if endpoint else "auto")
        if style not in ("auto", "path", "virtual"):
            raise ConfigError(
                f"BROKER_S3_ADDRESSING_STYLE={style!r} is not one of: auto, path, virtual"
            )
        if env.get("BROKER_SESSION_SECRET_PREVIOUS") and not env.get("BROKER_SESSION_SECRET"):
            raise ConfigError("BROKER_SESSION_SECRET_PREVIOUS is set without BROKER_SESSION_SECRET: when rotating, "
                              "set the new secret in BROKER_SESSION_SECRET and keep the old one in _PREVIOUS")
        rules = env.get("BROKER_RULES") or DEFAULT_RULES
        default_reload = 60.0 if rules.startswith("s3://") else 2.0
        return cls(
            rules=rules,
            rules_reload_seconds=_number(env, "BROKER_RULES_RELOAD_SECONDS", default_reload, float),
            audit_file=env.get("BROKER_AUDIT_FILE") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            s3_endpoint_url=endpoint,
            s3_addressing_style=style,
            max_body_bytes=_number(env, "BROKER_MAX_BODY_BYTES", 64 * 1024, int),
            host=env.get("BROKER_HOST", "127.0.0.1"),
            port=_number(env, "BROKER_PORT", 8000, int),
            grant_secret=_secret(env, "BROKER_GRANT_SECRET"),
            session_secret=_secret(env, "BROKER_SESSION_SECRET"),
            session_secret_previous=_secret(env, "BROKER_SESSION_SECRET_PREVIOUS"),
            events_token=_secret(env, "BROKER_EVENTS_TOKEN"),
            ledger=_ledger(env.get("BROKER_LEDGER") or "off"),
            dynamodb_endpoint_url=env.get("AWS_ENDPOINT_URL_DYNAMODB") or None,
        )


def _ledger(url: str) -> str:
    """BROKER_LEDGER, checked for its form (the ledger itself is opened by broker.service)."""
    if url == "off" or (url.startswith("sqlite:///") and len(url) > len("sqlite:///")) or \
            (url.startswith("dynamodb://") and len(url) > len("dynamodb://") and "/" not in url[11:]):
        return url
    raise ConfigError(f"BROKER_LEDGER={url!r} is not a ledger: use sqlite:///var/ledger.db (a file, relative "
                      "to the working directory; sqlite:////abs/path.db for an absolute one), "
                      "dynamodb://table-name, or off")


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """A secret setting: BROKER_GRANT_SECRET or BROKER_SESSION_SECRET[_PREVIOUS] (shared by every
    instance, so each verifies the others' grant and session tokens) or BROKER_EVENTS_TOKEN (the
    bearer token the store's event webhook sends)."""
    value = env.get(name) or None
    if value is not None and len(value.encode()) < 32:
        raise ConfigError(f"{name} must be at least 32 bytes; make one with: "
                          "python -c \"import secrets; print(secrets.token_urlsafe(48))\"")
    return value


def _number(env: Mapping[str, str], name: str, default: Any, kind: Callable[[str], Any]) -> Any:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must not be negative")
    return value
