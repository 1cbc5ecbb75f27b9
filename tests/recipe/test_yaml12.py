"""Recipes are YAML 1.2 (issue 23): recipec reads a text as editors do, and writes text every reader reads alike."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from recipec.errors import RecipeError
from recipec.recipe import load_recipe
from recipec.recipe._yaml import dump_yaml, parse_value

MINIMAL = "name: tiny\nmodel: {arch: resnet18}\n"


@pytest.mark.parametrize("text, value", [
    # booleans: only true and false, in three spellings
    ("true", True), ("True", True), ("FALSE", False),
    ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"), ("y", "y"), ("tRUE", "tRUE"),
    # null
    ("null", None), ("~", None), ("", None), ("NULL", None), ("nil", "nil"),
    # whole numbers: decimal (leading zeros too), 0o octal, 0x hexadecimal
    ("010", 10), ("-010", -10), ("+7", 7), ("0o10", 8), ("0x1F", 31), ("0b101", "0b101"), ("0O10", "0O10"),
    ("1_000", "1_000"), ("1:30", "1:30"), ("-1:30", "-1:30"),
    # numbers with a fraction or an exponent (no dot needed, unlike YAML 1.1)
    ("3e-4", 3e-4), ("1e3", 1000.0), ("1.", 1.0), (".5", 0.5), ("-.5e1", -5.0), ("1.0e+3", 1000.0),
    (".inf", math.inf), ("-.Inf", -math.inf), ("1_000.5", "1_000.5"), ("1e", "1e"),
    # no timestamps
    ("2024-01-01", "2024-01-01"), ("2001-12-14t21:59:43.10-05:00", "2001-12-14t21:59:43.10-05:00"),
])
def test_plain_scalars_follow_the_core_schema(text: str, value: object) -> None:
    assert parse_value(text, "v") == value
    assert type(parse_value(text, "v")) is type(value)


def test_nan_is_a_number() -> None:
    assert math.isnan(parse_value(".NaN", "v"))


@pytest.mark.parametrize("text, value", [("!!int 010", 10), ("!!str 010", "010"), ("!!float 1", 1.0),
                                         ("!!bool true", True), ("!!null null", None)])
def test_explicit_core_tags(text: str, value: object) -> None:
    assert parse_value(text, "v") == value


@pytest.mark.parametrize("text, problem", [
    ("!!bool yes", "v: value:1:1: 'yes' is not true or false in YAML 1.2"),
    ("!!int 1_000", "v: value:1:1: '1_000' is not a whole number in YAML 1.2"),
    ("!!timestamp 2024-01-01", "v: value:1:1: unsupported tag 'tag:yaml.org,2002:timestamp'; write a plain value"),
    ("!!binary aGk=", "v: value:1:1: unsupported tag 'tag:yaml.org,2002:binary'; write a plain value"),
    ("!mine x", "v: value:1:1: unsupported tag '!mine'; write a plain value"),
])
def test_other_tags_are_located_errors(text: str, problem: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_value(text, "v")
    assert info.value.problems == [problem]


def test_a_whole_number_of_5000_digits_is_a_located_error() -> None:
    with pytest.raises(RecipeError, match=r"^v: value:1:4: cannot read '1111"):
        parse_value("a: " + "1" * 5000, "v")


def test_keys_are_read_alike() -> None:
    # an editor names a key by its value's text: 0o10 is "8", 2.0 is "2"
    assert parse_value("{0o10: a, 2.0: b, 010: c, yes: d}", "v") == {8: "a", 2: "b", 10: "c", "yes": "d"}


# --------------------------------------------------------------------------- writing


MISREAD = ["yes", "No", "on", "OFF", "y", "~", "null", "Null", "true", "010", "0o10", "0x1F", "0b11", "1_000",
           "1:30", "1e3", "3e-4", ".5", "1.", ".inf", ".NaN", "2024-01-01", "2001-12-14 21:59:43.10 -5", "<<", "=",
           "12", "-1", "+1"]


@pytest.mark.parametrize("text", MISREAD)
def test_dumped_text_reads_back_as_text_in_both_versions(text: str) -> None:
    dumped = dump_yaml({"tags": [text]})
    assert parse_value(dumped, "v") == {"tags": [text]}  # YAML 1.2
    assert yaml.safe_load(dumped) == {"tags": [text]}  # YAML 1.1


# PyYAML folds control characters such as NEL (U+0085) in plain keys, whichever version reads them
_TEXT = st.characters(exclude_categories=("Cc", "Cs"))


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(_TEXT, max_size=12) | st.sampled_from(MISREAD),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(_TEXT, max_size=6), inner, max_size=3),
                    max_leaves=8))
def test_any_plain_data_round_trips(data: object) -> None:
    dumped = dump_yaml({"value": data})
    assert parse_value(dumped, "v") == {"value": data}
    assert yaml.safe_load(dumped) == {"value": data}


# --------------------------------------------------------------------------- $schema


def test_a_json_recipe_names_its_schema(tmp_path: Path) -> None:
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"$schema": "../schemas/recipe.schema.json", "model": {"arch": "resnet18"}}))
    assert load_recipe(recipe).model.arch == "resnet18"


def test_a_yaml_recipe_and_its_base_may_name_their_schema(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("$schema: https://recipec.dev/schemas/recipe.schema.json\n" + MINIMAL)
    (tmp_path / "r.yaml").write_text("$schema: ./recipe.schema.json\nextends: base.yaml\ntrain: {epochs: 3}\n")
    assert load_recipe(tmp_path / "r.yaml").train.epochs == 3


@pytest.mark.parametrize("value, shown", [("5", "5"), ("''", "''"), ("[a]", '["a"]')])
def test_schema_key_must_name_a_schema(tmp_path: Path, value: str, shown: str) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(MINIMAL + f"$schema: {value}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    assert info.value.problems == [f"{recipe}:3:10: $schema: must be the URL or path of the recipe schema, e.g. "
                                   f"https://recipec.dev/schemas/recipe.schema.json, got {shown}"]
