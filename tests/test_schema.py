"""The committed JSON Schema is the generated one, and every shipped recipe passes both validators."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from recipec.recipe.schema import SCHEMA_FILE, recipe_json_schema, schema_text

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas" / "recipe.schema.json"
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
SCHEMA_LINE = "# yaml-language-server: $schema=../schemas/recipe.schema.json"


def test_committed_schema_is_current():
    assert SCHEMA.read_text() == schema_text(), "schemas/recipe.schema.json is stale: run `recipec schema --out schemas/recipe.schema.json`"


def test_the_package_ships_the_same_schema():
    assert SCHEMA_FILE == ROOT / "recipec" / "schemas" / "recipe.schema.json"
    assert SCHEMA_FILE.read_text() == SCHEMA.read_text(), (
        "recipec/schemas/recipe.schema.json differs from schemas/: run `recipec schema --out "
        "recipec/schemas/recipe.schema.json`")
    package_data = re.search(r"^\[tool\.setuptools\.package-data\]\nrecipec = (\[.*?\])", (ROOT / "pyproject.toml").read_text(),
                             flags=re.M)
    assert package_data and '"schemas/*.json"' in package_data.group(1)


def test_schema_path_prints_the_installed_copy():
    result = subprocess.run([sys.executable, "-m", "recipec", "schema", "--path"], capture_output=True, text=True)
    assert result.returncode == 0 and Path(result.stdout.strip()) == SCHEMA_FILE


def test_schema_path_says_when_the_installed_copy_is_missing(monkeypatch, tmp_path, capsys):
    import recipec.recipe.schema as schema_module
    from recipec.cli import main

    monkeypatch.setattr(schema_module, "SCHEMA_FILE", tmp_path / "recipe.schema.json")
    with pytest.raises(SystemExit) as info:
        main(["schema", "--path"])
    err = capsys.readouterr().err
    assert info.value.code == 1 and "the installed schema is missing" in err and "recipec schema --out FILE" in err


STANDARD = {  # draft 2020-12 keywords the schema may use, and the one annotation VS Code's servers read
    "$schema", "$id", "$ref", "$defs", "title", "description", "default", "examples", "type", "enum", "const",
    "properties", "patternProperties", "additionalProperties", "required", "items", "prefixItems", "minItems",
    "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "anyOf", "oneOf", "allOf", "if", "then", "else", "patternErrorMessage",
}


def _schemas(node, path="$"):
    """(path, schema) for every schema object inside ``node``."""
    if isinstance(node, bool):
        return
    yield path, node
    for key, value in node.items():
        if key in ("properties", "patternProperties", "$defs"):
            for name, sub in value.items():
                yield from _schemas(sub, f"{path}.{key}.{name}")
        elif key in ("items", "additionalProperties", "if", "then", "else") and isinstance(value, (dict, bool)):
            yield from _schemas(value, f"{path}.{key}")
        elif key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            for i, sub in enumerate(value):
                yield from _schemas(sub, f"{path}.{key}[{i}]")


def test_only_standard_keywords():
    used = {key for _, node in _schemas(recipe_json_schema()) for key in node}
    assert used <= STANDARD, f"not draft 2020-12 (editors and ajv's strict mode refuse them): {used - STANDARD}"


def test_titles_are_dotted_paths_and_patterns_are_explained():
    schema = recipe_json_schema()
    defs = schema["$defs"]
    assert schema["properties"]["device"]["title"] == "device"
    assert defs["OptimizerSpec"]["properties"]["lr_decay"]["title"] == "optimizer.lr_decay"
    assert defs["HeadSpec"]["title"] == "model.head"
    assert defs["CosineSchedulerSpec"]["title"] == "optimizer.scheduler (cosine)"
    for path, node in _schemas(schema):
        if "pattern" in node:
            assert node.get("patternErrorMessage", "").startswith("Must "), f"{path}: a raw regex in the editor"


def test_every_optional_key_has_its_default():
    # a key only a recipe without `extends` needs (model.arch, model.head.num_classes), the name (the file's
    # stem) and $schema have none to show
    no_default = {"$schema", "name", "model", "arch", "num_classes"}
    for path, node in _schemas(recipe_json_schema()):
        required = set(node.get("required", []))
        for key, prop in node.get("properties", {}).items():
            if key not in required and key not in no_default and ".if." not in path and not path.startswith("$.else"):
                assert "default" in prop, f"{path}.{key} has no default"


def test_unfreeze_keys_are_checked_by_pattern():
    unfreeze = recipe_json_schema()["$defs"]["FreezeSpec"]["properties"]["unfreeze"]
    assert unfreeze["additionalProperties"] is False and "propertyNames" not in unfreeze
    [(pattern, _)] = unfreeze["patternProperties"].items()
    assert [k for k in ("0", "9999", "0005", "10000", "-1", "2.5", "x") if re.fullmatch(pattern, k)] == ["0", "9999", "0005"]


@pytest.mark.parametrize("recipe, valid", [
    ({"extends": "base.yaml"}, True),
    ({"extends": None}, False),  # extends nothing: the recipe must be complete
    ({"model": {"arch": "resnet18"}}, True),
    ({"model": {"arch": "resnet18", "head": {"type": "mlp"}}}, False),
    ({"extends": "base.yaml", "model": {"head": {"type": "mlp"}}}, True),
    ({"$schema": "https://recipec.dev/schemas/recipe.schema.json", "model": {"arch": "resnet18"}}, True),
    ({"model": {"arch": "resnet18"}, "train": {"feature_cache": False}}, False),
    ({"model": {"arch": "resnet18"}, "optimizer": {"lr": "3e-4"}}, False),
    ({"model": {"arch": "resnet18"}, "export": {"weights": "best"}, "log": {"mlflow": True}}, True),
])
def test_the_schema_decides_as_recipec(recipe, valid):
    from jsonschema import Draft202012Validator

    assert Draft202012Validator(recipe_json_schema()).is_valid(recipe) is valid


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
                # an `if` is a condition; the root's `else` only requires what a recipe without extends needs
                if key != "if" and not (path == "$" and key == "else"):
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
