"""The JSON Schema of recipes, generated from the Pydantic models (draft 2020-12).

``schemas/recipe.schema.json`` is this text, committed; a test fails when it is stale.
"""

from __future__ import annotations

import json
from typing import Any

from recipec.recipe.spec import SCHEMA_ID, Recipe

__all__ = ["recipe_json_schema", "schema_text"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def recipe_json_schema() -> dict[str, Any]:
    """The recipe JSON Schema as a dict, ``$schema``, ``$id`` and ``title`` first."""
    body = Recipe.model_json_schema(mode="validation")
    body.pop("$schema", None)
    body.pop("$id", None)
    # The loader fills `name` from the file's stem, so a file need not spell it out.
    body["required"] = [k for k in body.get("required", []) if k not in ("name", "model")]
    # A recipe that `extends` another may leave out what its base gives (deep merge), so
    # the keys a complete recipe needs are required only of recipes without `extends`.
    defs = body["$defs"]
    defs["ModelSpec"]["required"] = [k for k in defs["ModelSpec"].get("required", []) if k != "arch"]
    defs["HeadSpec"]["required"] = [k for k in defs["HeadSpec"].get("required", []) if k != "num_classes"]
    body["if"] = {"not": {"required": ["extends"]}}
    body["then"] = {
        "required": ["model"],
        "properties": {"model": {
            "required": ["arch"],
            "properties": {"head": {"anyOf": [{"type": "null"}, {"required": ["num_classes"]}]}},
        }},
    }
    head = {"$schema": DRAFT, "$id": SCHEMA_ID, "title": body.pop("title", "recipec recipe")}
    return {**head, **body}


def schema_text() -> str:
    """The schema as committed: 2-space indented JSON with a trailing newline."""
    return json.dumps(recipe_json_schema(), indent=2, ensure_ascii=False) + "\n"
