"""May a re-added file continue an interrupted multipart upload under its key? (pure)"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from broker.core.resume import resume_problem

KEY = "uploads/web-app/videos/2026-11-28/" + "a" * 32 + ".mp4"


@pytest.fixture
def videos(ruleset: Any) -> Any:
    return ruleset.clients["web-app"].rules["videos"]


def test_an_unfinished_upload_of_this_rule_may_go_on(videos: Any) -> None:
    assert resume_problem(videos, KEY, user=None, unfinished=["u1"], recorded=None) is None
    assert resume_problem(videos, KEY, user=None, unfinished=["u1"], recorded=("web-app", "videos", None)) is None


@pytest.mark.parametrize("key, unfinished, recorded, words", [
    pytest.param(KEY, [], None, "the store holds no unfinished upload", id="gone_from_the_store"),
    pytest.param(KEY.replace("videos", "avatars"), ["u1"], None, "is not one videos grants", id="other_profile"),
    pytest.param(KEY.replace("web-app", "mobile"), ["u1"], None, "is not one videos grants", id="other_client"),
    pytest.param(KEY[:-8] + "../x.mp4", ["u1"], None, "is not one videos grants", id="dot_dot"),
    pytest.param(KEY, ["u1"], ("partner-acme", "videos", None), "granted to another client", id="ledger_other"),
])
def test_anything_else_is_refused_with_what_to_do(videos: Any, key: str, unfinished: list[str],
                                                   recorded: Any, words: str) -> None:
    problem = resume_problem(videos, key, user=None, unfinished=unfinished, recorded=recorded)
    assert problem is not None and words in problem
    assert "add the file again" in problem  # what the developer can do


def test_a_rule_without_multipart_has_nothing_to_resume(videos: Any) -> None:
    problem = resume_problem(replace(videos, multipart=False), KEY, user=None, unfinished=["u1"], recorded=None)
    assert problem is not None and "does not allow chunked uploads" in problem


def test_per_user_keys_resume_only_for_that_user(videos: Any) -> None:
    mine = replace(videos, key_template="users/{client}/{user}/{uuid}{ext}")
    key = "users/web-app/alice/" + "b" * 32 + ".mp4"
    assert resume_problem(mine, key, user="alice", unfinished=["u1"], recorded=None) is None
    bob = resume_problem(mine, key, user="bob", unfinished=["u1"], recorded=None)
    assert bob is not None and "for this user" in bob
    nobody = resume_problem(mine, key, user=None, unfinished=["u1"], recorded=None)
    assert nobody is not None and "names no user" in nobody
    other = resume_problem(mine, key, user="alice", unfinished=["u1"], recorded=("web-app", "videos", "bob"))
    assert other is not None and "another client, profile or user" in other
