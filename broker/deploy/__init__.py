"""Deployment helpers generated from the rules (IAM policy, bucket CORS)."""
from __future__ import annotations

from typing import Any


def register_cli(sub: Any) -> None:
    """Add the deployment sub-commands to the ``broker`` command."""
