"""The committed JSON Schema is the generated one, and every shipped recipe passes both validators."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from recipec.recipe.schema import recipe_json_schema, schema_text

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "recipe.schema.json"
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
SCHEMA_LINE = "# yaml-language-server: $schema=../schemas/recipe.schema.json"


def test_committed_schema_is_current():
    assert SCHEMA.read_text() == schema_text(), "schemas/recipe.schema.json is stale: run `recipec schema --out schemas/recipe.schema.json`"


def test_schema_is_draft_2020_12_with_id_and_descriptions():
    schema = recipe_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("recipe.schema.json")
    assert schema["title"]

    def walk(node, path):
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                assert prop.get("description"), f"{path}.{name} has no description"
                assert "examples" in prop, f"{path}.{name} has no example"
            for key, value in node.items():
                if key != "then":  # the conditional part only repeats required keys
                    walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")

    walk(schema, "$")


def test_schema_checks_itself_against_the_metaschema():
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(json.loads(SCHEMA.read_text()))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_starts_with_schema_line(recipe):
    assert recipe.read_text().splitlines()[0] == SCHEMA_LINE


def test_recipes_pass_recipec_validate():
    result = subprocess.run([sys.executable, "-m", "recipec", "validate", *map(str, RECIPES)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


def test_recipes_pass_check_jsonschema():
    exe = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run([str(exe), "--schemafile", str(SCHEMA), *map(str, RECIPES)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_jsonschema_rejects_a_bad_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: {arch: resnet18}\noptimizer: {lr: -1, lrr: 2}\n")
    exe = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run([str(exe), "--schemafile", str(SCHEMA), str(bad)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "lr" in result.stdout
