"""Settings and rules loading: read once at start, validated loudly, the last good rules kept.

- ``settings``: :class:`Settings` from the environment.
- ``loader``: ``load_rules`` / ``load_rules_file``: parse (YAML, or strict JSON for ``.json``),
  schema, build, then the checks of ``checks``; every problem reported at once.
- ``checks``: the semantic checks, one small function each, run from tables.
- ``schemas``: the JSON Schemas under ``schemas/``, each compiled once.
- ``sources``: where rules come from (a file, text, an S3 object read through the store it
  is handed) and :class:`RulesProvider`, which re-reads them and keeps the last good set.
- ``production``: what ``broker check --production`` and ``make package`` refuse to deploy.
"""
from __future__ import annotations

from broker.config.loader import RULE_DEFAULTS, load_rules, load_rules_file
from broker.config.settings import DEFAULT_RULES, Settings

__all__ = ["DEFAULT_RULES", "RULE_DEFAULTS", "Settings", "load_rules", "load_rules_file"]
