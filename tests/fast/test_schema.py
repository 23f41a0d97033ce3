"""The compiled check says "valid" exactly when jsonschema does, for the broker's schemas.

Differential tests: hand-picked edge cases (bool is not an integer, 5.0 is, ``$`` matches
before a trailing newline, unevaluated properties through ``allOf``/``$ref``, ``oneOf``
matching twice), every rules file under ``tests/rules/``, and Hypothesis mutations of
valid documents. Errors and their messages always come from jsonschema itself.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from broker.fast import schema as fastschema
from broker.config import schemas
from tests.fast.twins import assert_twins_agree

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = sorted(p.name.removesuffix(".schema.json") for p in (ROOT / "schemas").glob("*.schema.json"))


def judge(name: str, instance: Any) -> tuple[bool | None, bool]:
    """(compiled answer or None if undecided, jsonschema's answer)."""
    check = fastschema.compile_schema(schemas.load(name))
    assert check is not None, f"{name} no longer compiles: the fast path is off for it"
    try:
        fast: bool | None = check(instance)
    except fastschema.Undecided:
        fast = None
    return fast, Draft202012Validator(schemas.load(name)).is_valid(instance)


def assert_agree(name: str, instance: Any) -> None:
    """The compiled check and jsonschema agree, or the compiled one declines to answer (None)."""
    assert_twins_agree(lambda i: judge(name, i)[0], lambda i: judge(name, i)[1], [instance],
                       same=lambda fast, truth: fast is None or fast == truth)


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_schema_is_valid_against_its_metaschema(name: str) -> None:
    # The fast path skips check_schema at run time, so the shipped schemas are checked here.
    Draft202012Validator.check_schema(schemas.load(name))


def test_the_request_path_schemas_compile() -> None:
    for name in ("rules", "upload-request", "upload-response", "error"):
        assert fastschema.compile_schema(schemas.load(name)) is not None, name


AVATAR = {"filename": "me.png", "content_type": "image/png", "size": 1000}
REQUESTS = [
    pytest.param(AVATAR, True, id="plain"),
    pytest.param({**AVATAR, "size": 5.0}, True, id="float_integer"),
    pytest.param({**AVATAR, "size": 5.5}, False, id="float_fraction"),
    pytest.param({**AVATAR, "size": True}, False, id="bool_size"),
    pytest.param({**AVATAR, "size": None}, False, id="null_size"),
    pytest.param({**AVATAR, "size": -1}, False, id="negative"),
    pytest.param({**AVATAR, "size": 5497558138881}, False, id="above_max"),
    pytest.param({**AVATAR, "profile": "avatars\n"}, True, id="dollar_before_newline"),
    pytest.param({**AVATAR, "profile": "Avatars"}, False, id="pattern_case"),
    pytest.param({**AVATAR, "metadata": {"title": "x" * 256}}, True, id="metadata_at_limit"),
    pytest.param({**AVATAR, "metadata": {"title": "x" * 257}}, False, id="metadata_too_long"),
    pytest.param({**AVATAR, "metadata": {"Title": "x"}}, False, id="metadata_name"),
    pytest.param({**AVATAR, "metadata": {"title": "caf\u00e9"}}, False, id="metadata_non_ascii"),
    pytest.param({**AVATAR, "metadata": {f"m{i}": "v" for i in range(17)}}, False, id="metadata_17"),
    pytest.param({**AVATAR, "extra": 1}, False, id="unknown_field"),
    pytest.param({"filename": "me.png"}, False, id="missing_type"),
    pytest.param({**AVATAR, "filename": ""}, False, id="empty_filename"),
    pytest.param({**AVATAR, "filename": "\U0001f600" * 1024}, True, id="astral_length_counts_code_points"),
    pytest.param([AVATAR], False, id="array"),
    pytest.param("x", False, id="string"),
]


@pytest.mark.parametrize(("body", "valid"), REQUESTS)
def test_upload_request_edge_cases(body: Any, valid: bool) -> None:
    fast, truth = judge("upload-request", body)
    assert truth is valid  # the table itself is right
    assert fast is valid


def rules_doc() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "rules.yaml").read_text())


def with_(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split("/")
    target: Any = doc
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return doc


RULE = "clients/web-app/rules/0"
RULES = [
    pytest.param("version", 1, True, id="example"),
    pytest.param("version", True, False, id="version_true_is_not_1"),
    pytest.param("version", 1.0, True, id="version_1_0_is_1"),
    pytest.param(f"{RULE}/unknown", 1, False, id="unevaluated_in_rule"),
    pytest.param(f"{RULE}/cache_control", "no-store", True, id="field_from_allOf_ref"),
    pytest.param("defaults/name", "x", False, id="name_not_allowed_in_defaults"),
    pytest.param("defaults/storage_class", "STANDARD_IA", True, id="defaults_field"),
    pytest.param(f"{RULE}/max_bytes", "5 MiB", True, id="size_string"),
    pytest.param(f"{RULE}/max_bytes", "5 mb", True, id="size_unit_any_case"),
    pytest.param(f"{RULE}/max_bytes", "5 Mbit", False, id="size_bad_unit"),
    pytest.param(f"{RULE}/max_bytes", 5.0, True, id="size_float_integer"),
    pytest.param(f"{RULE}/max_bytes", False, False, id="size_bool"),
    pytest.param(f"{RULE}/encryption", "AES256", True, id="sse_s3"),
    pytest.param(f"{RULE}/encryption", {"kms_key_id": "k"}, True, id="sse_kms"),
    pytest.param(f"{RULE}/encryption", {"kms_key_id": ""}, False, id="sse_kms_empty"),
    pytest.param(f"{RULE}/success_action_status", True, False, id="status_bool"),
    pytest.param(f"{RULE}/success_action_status", 201.0, True, id="status_float"),
    pytest.param(f"{RULE}/content_types", ["image/png", "image/png"], False, id="not_unique"),
    pytest.param(f"{RULE}/content_types", [], False, id="empty_types"),
    pytest.param(f"{RULE}/extensions", [".png", ".PNG"], False, id="extension_case"),
    pytest.param("clients/Web", {"rules": [{"name": "a"}], "api_key_sha256": []}, False, id="client_id_case"),
    pytest.param("cors/allowed_origins", ["*", "https://a.example"], True, id="origins"),
    pytest.param("cors/allowed_origins", ["https://a.example/path"], False, id="origin_path"),
    pytest.param("region", "eu-west-1\n", True, id="region_trailing_newline"),
]


@pytest.mark.parametrize(("path", "value", "valid"), RULES)
def test_rules_edge_cases(path: str, value: Any, valid: bool) -> None:
    fast, truth = judge("rules", with_(rules_doc(), path, value))
    assert truth is valid
    assert fast is valid


@pytest.mark.parametrize("path", sorted((ROOT / "tests" / "rules").glob("*/*.yaml")), ids=lambda p: p.stem)
def test_rules_files_agree(path: Path) -> None:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return  # not YAML at all: the schema never sees it
    assert_agree("rules", doc)


def test_the_validator_reports_jsonschema_errors_unchanged() -> None:
    doc = with_(rules_doc(), f"{RULE}/unknown", 1)
    fast_first = [(list(e.absolute_path), e.message) for e in schemas.validator("rules").iter_errors(doc)]
    plain = [(list(e.absolute_path), e.message)
             for e in Draft202012Validator(schemas.load("rules")).iter_errors(doc)]
    assert fast_first == plain and plain
    assert list(schemas.validator("rules").iter_errors(rules_doc())) == []


@pytest.mark.parametrize(("schema", "compiles"), [
    pytest.param({"type": "string", "not": {"const": "x"}}, False, id="not"),
    pytest.param({"patternProperties": {"^a": {}}, "additionalProperties": False}, False, id="pattern_properties"),
    pytest.param({"properties": {"a": {"$id": "x", "type": "string"}}}, False, id="nested_id"),
    pytest.param({"$ref": "https://example.com/other.json"}, False, id="remote_ref"),
    pytest.param({"type": "string", "format": "email", "title": "t"}, True, id="format_is_annotation"),
])
def test_unknown_keywords_turn_the_fast_path_off(schema: dict[str, Any], compiles: bool) -> None:
    assert (fastschema.compile_schema(schema) is not None) is compiles


TREE = {"$defs": {"node": {"type": "object", "required": ["v"], "additionalProperties": False,
                            "properties": {"v": {"type": "integer"},
                                           "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
        "$ref": "#/$defs/node"}
SYNTHETIC = [
    pytest.param({"oneOf": [{"type": "integer"}, {"minimum": 0}]}, [5, -5, 2.5, "x"], id="oneOf_twice"),
    pytest.param({"anyOf": [{"type": "integer"}, {"type": "string"}]}, [5, "x", None, True], id="anyOf"),
    pytest.param({"const": True}, [True, 1, 1.0, "True"], id="const_true_is_not_1"),
    pytest.param({"const": [1, {"a": False}]}, [[1, {"a": False}], [True, {"a": 0}], [1.0, {"a": False}]],
                 id="const_nested"),
    pytest.param({"enum": [1, "a", None]}, [1, 1.0, True, "a", None, 0], id="enum"),
    pytest.param({"uniqueItems": True}, [[1, True], [1, 1.0], [0, False], [{"a": 1}, {"a": 1}],
                                         [{"a": 1}, {"a": True}], [[1], [1]], ["a", "b"]], id="uniqueItems"),
    pytest.param({"exclusiveMinimum": 0, "exclusiveMaximum": 10}, [0, 0.5, 10, 9.99, True, "5"], id="exclusive"),
    pytest.param({"type": ["string", "null"], "maxLength": 2}, ["ab", "abc", None, 1], id="type_list"),
    pytest.param({"items": False}, [[], [1], "x"], id="items_false"),
    pytest.param({"minProperties": 1, "maxProperties": 2}, [{}, {"a": 1}, {"a": 1, "b": 2, "c": 3}, []],
                 id="property_counts"),
    pytest.param({"properties": {"a": {}}, "additionalProperties": {"type": "integer"},
                  "unevaluatedProperties": False}, [{"a": "x", "b": 1}, {"b": "x"}], id="additional_evaluates"),
    pytest.param({"allOf": [{"properties": {"a": {"type": "string"}}}], "unevaluatedProperties": False},
                 [{"a": "x"}, {"a": 1}, {"a": "x", "b": 1}], id="unevaluated_through_allOf"),
    pytest.param({"anyOf": [{"properties": {"a": {"const": 1}}, "required": ["a"]},
                            {"properties": {"b": {"const": 1}}, "required": ["b"]}],
                  "unevaluatedProperties": False},
                 [{"a": 1}, {"a": 1, "b": 1}, {"a": 1, "b": 2}, {"c": 1}], id="unevaluated_only_valid_branches"),
    pytest.param(TREE, [{"v": 1}, {"v": 1, "kids": [{"v": 2, "kids": [{"v": 3}]}]}, {"v": 1, "kids": [{"v": "x"}]},
                        {"v": 1, "kids": [{"w": 1}]}], id="recursive_ref"),
    pytest.param({"pattern": "^a$"}, ["a", "a\n", "ba", 5], id="pattern_dollar"),
    pytest.param({"pattern": "a+"}, ["a", "ba", "b", 5], id="pattern_search_not_match"),
]


@pytest.mark.parametrize(("schema", "instances"), SYNTHETIC)
def test_synthetic_schemas_agree(schema: dict[str, Any], instances: list[Any]) -> None:
    check = fastschema.compile_schema(schema)
    assert check is not None
    assert_twins_agree(check, Draft202012Validator(schema).is_valid, instances)


def test_uncompiled_schema_still_validates_through_jsonschema() -> None:
    v = schemas.FastFirstValidator({"type": "string", "not": {"const": "x"}})
    assert [e.message for e in v.iter_errors("x")] and list(v.iter_errors("y")) == []


# -------------------------------------------------------------------- properties

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 6_000_000_000_000), st.floats(allow_nan=False),
    st.sampled_from([0, 1, 1.0, 5.0, 200, 201.0, 604800, 604801, 3600]),
    st.text(max_size=12),
    st.sampled_from(["image/png", "5 MiB", "5 mb", "AES256", "private", "avatars", "avatars\n", "*",
                     "https://a.example", "eu-west-1", ".png", "x" * 257, "uploads/{client}/{uuid}{ext}",
                     "a" * 64, "0" * 64]),
)
NAMES = st.sampled_from(["filename", "content_type", "size", "profile", "metadata", "title", "name",
                         "key", "max_bytes", "min_bytes", "content_types", "extensions", "encryption",
                         "kms_key_id", "rules", "api_key_sha256", "principals", "version", "bucket",
                         "clients", "defaults", "cors", "allowed_origins", "acl", "expires_in", "x"])
JSON = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.one_of(NAMES, st.text(max_size=6)), inner, max_size=5)),
    max_leaves=20)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, prefix + (i,))
    return out


def mutate(doc: Any, data: st.DataObject) -> Any:
    """Replace one node of a valid document by something arbitrary, or drop/add a key."""
    doc = copy.deepcopy(doc)
    where = data.draw(st.sampled_from(paths(doc)))
    if not where:
        return data.draw(JSON)
    parent = doc
    for part in where[:-1]:
        parent = parent[part]
    action = data.draw(st.sampled_from(["replace", "drop", "add"]))
    if action == "drop" and isinstance(parent, dict):
        del parent[where[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent[data.draw(NAMES)] = data.draw(JSON)
    else:
        parent[where[-1]] = data.draw(JSON)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_upload_requests_agree(data: st.DataObject) -> None:
    body = {**AVATAR, "profile": "avatars", "metadata": {"title": "t"}}
    assert_agree("upload-request", mutate(body, data))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_rules_agree(data: st.DataObject) -> None:
    assert_agree("rules", mutate(rules_doc(), data))


@settings(max_examples=200, deadline=None)
@given(JSON)
def test_arbitrary_json_agrees(value: Any) -> None:
    for name in ("upload-request", "error", "upload-response"):
        assert_agree(name, json.loads(json.dumps(value)) if not isinstance(value, float) else value)
