"""Fine Uploader S3 (5.x, signature version 4): its endpoints and the checkers behind them.

- ``endpoints``: the routes (``/fineuploader/*``) and what each answers.
- ``policy``: a POST policy document checked against the grant, and tightened. Pure.
- ``canonical``: a chunked upload's SigV4 canonical request parsed and checked. Pure.

Loaded on the first request to one of its routes (``broker.protocols.ROUTES``).
"""
from __future__ import annotations

from broker.protocols.fineuploader.endpoints import PROTOCOL, handlers

__all__ = ["PROTOCOL", "handlers"]
