"""Rules from an S3 object (``BROKER_RULES=s3://bucket/key``), re-read only when it changed.

Each poll is one conditional ``GetObject`` with ``IfNoneMatch=<last ETag>``: S3 answers
``304 Not Modified`` (no body, no parsing) until an operator uploads a new file. Every
failure raises, so :class:`broker.sources.RulesProvider` keeps the last good rules and logs
why; a file that does not validate is never swapped in.
"""
from __future__ import annotations

from typing import Any

from .config import load_rules
from .errors import ConfigError, Problem, RulesError
from .models import RuleSet

#: A rules file larger than this is refused unread (a real one is a few kB).
MAX_RULES_BYTES = 5 * 1024 * 1024
_NOT_MODIFIED = frozenset({"304", "NotModified"})


def parse_s3_url(location: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; raises ``ConfigError`` naming the fix."""
    rest = location[len("s3://"):] if location.startswith("s3://") else ""
    bucket, _, key = rest.partition("/")
    if not bucket or not key or key.endswith("/"):
        raise ConfigError(f"BROKER_RULES={location!r} is not an S3 object URL; "
                          "write it as s3://bucket/path/to/rules.yaml")
    return bucket, key


class S3Source:
    """A rules source backed by one S3 object; the change token is its ETag."""

    def __init__(self, location: str, s3_client: Any) -> None:
        self.name = location
        self.bucket, self.key = parse_s3_url(location)
        self._client = s3_client

    def fetch(self, token: Any) -> tuple[RuleSet | None, Any]:
        """New rules and their ETag, or ``(None, token)`` when S3 says 304 Not Modified."""
        from botocore.exceptions import BotoCoreError, ClientError

        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if token:
            params["IfNoneMatch"] = token
        try:
            response = self._client.get_object(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _NOT_MODIFIED or status == 304:
                return None, token
            raise self._error(f"cannot read the rules object: {code or status} "
                              f"({error.get('Message', 'no message')}); check that it exists and "
                              "that the broker's role has s3:GetObject on it") from None
        except BotoCoreError as exc:
            raise self._error(f"cannot reach S3 to read the rules: {exc}") from None
        length = response.get("ContentLength")
        if isinstance(length, int) and length > MAX_RULES_BYTES:
            response["Body"].close()
            raise self._error(f"the rules object is {length} bytes, more than the "
                              f"{MAX_RULES_BYTES} a rules file may have")
        body = response["Body"].read(MAX_RULES_BYTES + 1)
        if len(body) > MAX_RULES_BYTES:
            raise self._error(f"the rules object is more than {MAX_RULES_BYTES} bytes")
        return load_rules(body, source=self.name), response.get("ETag")

    def _error(self, message: str) -> RulesError:
        return RulesError(self.name, [Problem("$", message)])
