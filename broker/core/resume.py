"""May a re-added file continue an interrupted multipart upload under its original key? Pure.

Fine Uploader's ``resume`` keeps, in the browser, the key and upload id of a chunked upload that
stopped; when the person adds the same file again it continues that upload. The broker lets it
continue only if everything it can see says the upload is this caller's, under this rule:

- the rule allows multipart uploads, and the key has exactly the shape the rule's template makes
  for this client (and, with ``{user}``, for this user);
- the store still holds an unfinished upload for that key (not completed, not aborted, not
  removed by the bucket's lifecycle rule);
- where the grant ledger knows the key, its grant was for this client, profile and user.

Otherwise the answer says why and what the developer can do. The facts are passed in.
"""
from __future__ import annotations

from typing import Sequence

from broker.core.grants import key_is_users
from broker.models import Rule

START_AGAIN = ("the page must forget the file's resume record (Fine Uploader keeps it in localStorage under "
               "'qq…resume…'; cancelling the file removes it) and add the file again to start a new upload")


def resume_problem(rule: Rule, key: str, *, user: str | None, unfinished: Sequence[str],
                   recorded: tuple[str, str | None, str | None] | None) -> str | None:
    """Why ``key`` cannot be continued under ``rule`` (None: it can). ``unfinished``: the store's upload ids
    for the key; ``recorded``: (client, profile, user) of the ledger's grant for it, if the ledger has one."""
    if not rule.multipart:
        return f"{rule.name} does not allow chunked uploads, so there is nothing to resume; {START_AGAIN}"
    per_user = "{user}" in rule.key_template
    if per_user and not user:
        return f"{rule.name} keeps each user's files apart, and this call names no user; {START_AGAIN}"
    if not key_is_users(rule, key, user):
        return (f"the interrupted upload's key {key[:200]} is not one {rule.name} grants to {rule.client}"
                f"{' for this user' if per_user else ''} (another profile, client or user, or the "
                f"rule's key changed); {START_AGAIN}")
    if recorded is not None and tuple(recorded) != (rule.client, rule.name, user):
        return (f"the interrupted upload of {key[:200]} was granted to another client, profile or user; "
                f"{START_AGAIN}")
    if not unfinished:
        return (f"the store holds no unfinished upload for {key[:200]} (it was completed, aborted, or removed by "
                f"the bucket's lifecycle rule); {START_AGAIN}")
    return None
