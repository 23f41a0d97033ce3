"""``BROKER_LEDGER`` -> a ledger engine (each engine imported only when named)."""
from __future__ import annotations

from broker.ledger import Ledger

#: What ``BROKER_LEDGER`` means when it is not set (the broker keeps no ledger).
OFF = "off"


def open_ledger(url: str | None, **options: object) -> Ledger | None:
    """The ledger ``BROKER_LEDGER`` names, or None for ``off``/empty; ValueError says how to fix.

    ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``dynamodb://table-name``
    (options: ``client`` for a ready DynamoDB client, ``endpoint_url``, ``region``).
    """
    if not url or url == OFF:
        return None
    if url.startswith("sqlite://"):
        path = url[len("sqlite://"):]
        if not path.startswith("/") or path == "/":
            raise ValueError(f"BROKER_LEDGER={url!r}: write sqlite:///relative/file.db or "
                             "sqlite:////absolute/file.db")
        from broker.ledger.sqlite import SqliteLedger

        return SqliteLedger(path[1:])
    if url.startswith("dynamodb://"):
        table = url[len("dynamodb://"):]
        if not table or "/" in table:
            raise ValueError(f"BROKER_LEDGER={url!r}: write dynamodb://table-name")
        from broker.ledger.dynamodb import DynamoLedger

        return DynamoLedger(table, **options)  # type: ignore[arg-type]
    raise ValueError(f"BROKER_LEDGER={url!r} is not a ledger: use sqlite:///var/ledger.db, "
                     "dynamodb://table-name or off")
