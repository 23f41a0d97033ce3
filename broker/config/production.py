"""``broker check --production``: what a rules file must not take to a real deployment. Pure.

:func:`refusals` lists, for a built :class:`~broker.models.RuleSet` and the stack's
authentication mode, everything that is fine for ``make run`` but wrong in production:

- the **demo API keys** of the repository's ``rules.yaml`` (their keys are written in its
  comments, so anyone who has read the repository can use them);
- **origins** in ``cors.allowed_origins`` that are ``*`` (any page) or ``http://`` (a page
  anyone on the network path can change); there is no exception, not even ``localhost``;
- **identities the stack can never produce**, so the client they name can never be recognised,
  or was meant for another stack: see :data:`AUTH_MODES`.

Each :class:`Refusal` names the client or field, its JSON path, the line once :func:`placed`
has found it in the file's text (read only when something is refused), and how to fix it.
``make package`` runs the same checks before it builds anything.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping

from broker.core.rules import api_key_hash
from broker.core.rulesdiff import key_fingerprint
from broker.models import Client, RuleSet

#: The API keys of the repository's rules.yaml (written in its comments, used by ``make run``).
DEMO_API_KEYS = ("demo-web-app-key", "demo-partner-acme-key")
DEMO_KEY_HASHES: dict[str, str] = {api_key_hash(key): key for key in DEMO_API_KEYS}


@dataclass(frozen=True)
class AuthMode:
    """How a stack recognises callers: by API key, and/or by the principal prefixes it produces."""

    name: str
    api_keys: bool
    principals: tuple[str, ...]
    stack: str  # how template.yaml is set for it


#: ``--auth`` modes. One stack serves one of them (template.yaml allows at most one authorizer).
AUTH_MODES: dict[str, AuthMode] = {
    "api-key": AuthMode("api-key", True, (), "JwtIssuer and LambdaAuthorizerArn empty, the template's default"),
    "jwt": AuthMode("jwt", False, ("sub:", "group:"), "JwtIssuer set: Cognito or any OIDC provider"),
    "lambda": AuthMode("lambda", False, ("principal:",), "LambdaAuthorizerArn set"),
}
#: Which mode produces each principal prefix (for the fix a refusal suggests).
_MODE_OF_PREFIX = {"sub:": "jwt", "group:": "jwt", "principal:": "lambda"}
_AUTHORIZER = {"jwt": "JWT (Cognito or OIDC)", "lambda": "Lambda"}


def auth_mode_for(parameters: Mapping[str, str]) -> str:
    """The ``--auth`` mode of a stack deployed with these template parameters (``Name=value``)."""
    if parameters.get("LambdaAuthorizerArn"):
        return "lambda"
    return "jwt" if parameters.get("JwtIssuer") else "api-key"


def parse_parameter_overrides(text: str) -> dict[str, str]:
    """``Name=value`` pairs as ``sam deploy --parameter-overrides`` takes them (shell-quoted, space-separated).

    Raises ``ValueError`` naming a token that is not ``Name=value``.
    """
    import shlex

    out = {}
    for token in shlex.split(text):
        name, sep, value = token.partition("=")
        if not sep or not name:
            raise ValueError(f"{token!r} is not Name=value (write them as for sam deploy --parameter-overrides, "
                             "e.g. 'JwtIssuer=https://cognito-idp.REGION.amazonaws.com/POOL JwtAudience=abc')")
        out[name] = value
    return out


@dataclass(frozen=True)
class Refusal:
    """One reason the rules are not fit for production: where, what, and the fix."""

    path: str
    message: str
    fix: str
    client: str | None = None
    line: int | None = None

    def words(self, source: str) -> str:
        """``rules.yaml:37: $.clients.web-app...: message`` and the fix on the next line."""
        where = f"{source}:{self.line}" if self.line is not None else source
        return f"{where}: {self.message} (at {self.path})\n    fix: {self.fix}"


def _demo_keys(ruleset: RuleSet, mode: AuthMode) -> Iterator[Refusal]:
    for client in ruleset.clients.values():
        for j, digest in enumerate(client.api_key_sha256):
            demo = DEMO_KEY_HASHES.get(digest)
            if demo is not None:
                yield Refusal(
                    f"{client.path}.api_key_sha256[{j}]",
                    f"client '{client.id}': API key {key_fingerprint(digest)} is the demo key '{demo}' of the "
                    "repository's rules.yaml; anyone who has read the repository can use it",
                    f"make a key with `broker hash-key --client {client.id}`, give it to the client, and put the "
                    "list it prints in place of this one", client.id)


def _origins(ruleset: RuleSet, mode: AuthMode) -> Iterator[Refusal]:
    for i, origin in enumerate(ruleset.cors_origins):
        path = f"$.cors.allowed_origins[{i}]"
        if origin == "*":
            yield Refusal(path, "cors.allowed_origins has '*': any web page may call the broker and post to "
                                "the bucket", "list the exact https:// origins of your upload pages instead")
        elif origin.lower().startswith("http://"):
            yield Refusal(path, f"cors.allowed_origins has {origin}, which is not HTTPS: a page anyone on the "
                                "network path can change may upload",
                          f"use {'https://' + origin[len('http://'):]} if that page is served over HTTPS, or "
                          "remove it (local origins belong in the rules for `make run`, not in production)")


def _identities(ruleset: RuleSet, mode: AuthMode) -> Iterator[Refusal]:
    for client in ruleset.clients.values():
        if client.api_key_sha256 and not mode.api_keys:
            yield Refusal(f"{client.path}.api_key_sha256",
                          f"client '{client.id}' has API keys, but with --auth {mode.name} ({mode.stack}) every "
                          "call must pass the authorizer first, so an API key alone never reaches the broker",
                          "serve this client from a stack without an authorizer (--auth api-key), or identify "
                          f"it by {' or '.join(p + '...' for p in mode.principals)} principals instead", client.id)
        yield from _principals(client, mode)


def _principals(client: Client, mode: AuthMode) -> Iterator[Refusal]:
    for j, principal in enumerate(client.principals):
        prefix = principal.split(":", 1)[0] + ":"
        if prefix in mode.principals:
            continue
        home = _MODE_OF_PREFIX.get(prefix, "?")
        if mode.principals:
            fix = (f"use {' or '.join(p + '...' for p in mode.principals)} principals, or serve this client "
                   f"from a stack with --auth {home} ({AUTH_MODES[home].stack})")
        else:
            fix = (f"remove it, or serve this client from a stack with --auth {home} "
                   f"({AUTH_MODES[home].stack})")
        yield Refusal(f"{client.path}.principals[{j}]",
                      f"client '{client.id}': principal '{principal}' comes only from a "
                      f"{_AUTHORIZER.get(home, home)} authorizer, which a stack with --auth {mode.name} "
                      f"({mode.stack}) does not have, so no caller can ever be recognised by it", fix, client.id)


#: The production checks, in the order their refusals are listed.
CHECKS: tuple[Callable[[RuleSet, AuthMode], Iterator[Refusal]], ...] = (_demo_keys, _origins, _identities)


def refusals(ruleset: RuleSet, *, auth: str = "api-key") -> list[Refusal]:
    """Everything in ``ruleset`` unfit for a stack with ``auth`` (lines: :func:`placed`)."""
    mode = AUTH_MODES.get(auth)
    if mode is None:
        raise ValueError(f"unknown auth mode {auth!r}; one of: {', '.join(AUTH_MODES)}")
    return [r for check in CHECKS for r in check(ruleset, mode)]


def placed(found: list[Refusal], text: str | bytes) -> list[Refusal]:
    """``found`` with the line of each in the rules ``text`` (composed only when ``found`` is not empty)."""
    if not found:
        return found
    lines = lines_of(text, [r.path for r in found])
    return [dataclasses.replace(r, line=lines.get(r.path)) for r in found]


def lines_of(text: str | bytes, paths: Iterable[str]) -> dict[str, int]:
    """JSON path (as the loader writes it: ``$.clients.web-app.rules[0]``) -> 1-based line, for
    those of ``paths`` written in ``text`` (:func:`broker.config.where.locate`; JSON is read as YAML).

    Empty when the text does not parse, since the lines only decorate refusals of rules that
    already loaded.
    """
    import yaml

    from broker.config.where import YamlTree, locate

    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.YAMLError, ValueError):
        return {}
    if root is None:
        return {}
    tree = YamlTree(root)
    found = {path: locate(tree, path, exact=True) for path in paths}
    return {path: at[0] for path, at in found.items() if at is not None}
