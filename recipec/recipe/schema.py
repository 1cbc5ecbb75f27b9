"""The JSON Schema of recipes, generated from the Pydantic models (draft 2020-12), for editors.

``schemas/recipe.schema.json`` is this text, committed, and ``recipec/schemas/recipe.schema.json``
the same file in the package (``recipec schema --path``); a test fails when either is stale.

Editors are the audience (yaml-language-server under VS Code's YAML extension, VS Code's JSON
language server, JetBrains), so the generated schema is reshaped for them:

- standard keywords only, plus ``patternErrorMessage``, which both VS Code language servers show
  instead of a raw regex (validators that do not know it ignore it; ajv's strict mode is told of
  it with ``ajv.addKeyword("patternErrorMessage")``). Pydantic's ``discriminator`` is gone: a
  tagged union (``optimizer.scheduler``, ``data.augment`` items) is a mapping whose ``name`` is one
  of the tags, with one ``if``/``then`` per tag, so a wrong option is reported against its tag's
  options, never against whichever member an editor happened to try last;
- every key's title is its dotted path (``optimizer.lr_decay``), every optional key has its
  default, and ``X | None`` of a plain value is one schema with ``type: [..., "null"]``;
- a JSON recipe may name its schema (``"$schema"``; the loader ignores it), and a recipe without
  ``extends`` must name what a complete recipe needs (``model.arch``, ``model.head.num_classes``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from recipec.recipe._fields import PATTERN_RULES, SCHEMA_KEY_RULE
from recipec.recipe.spec import SCHEMA_ID, Recipe

__all__ = ["SCHEMA_FILE", "recipe_json_schema", "schema_text"]

DRAFT = "https://json-schema.org/draft/2020-12/schema"
# the copy inside the installed package: what an editor maps recipes outside this repository to
SCHEMA_FILE = Path(__file__).resolve().parent.parent / "schemas" / "recipe.schema.json"


class _WithFactoryDefaults(GenerateJsonSchema):
    """Pydantic leaves out defaults made by a factory (``[]``, ``{}``, a section's own defaults); editors want them."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()  # type: ignore[call-arg]
        return super().get_default_value(schema)



def recipe_json_schema() -> dict[str, Any]:
    """The recipe JSON Schema as a dict, ``$schema``, ``$id`` and ``title`` first."""
    body = Recipe.model_json_schema(mode="validation", schema_generator=_WithFactoryDefaults)
    for key in ("$schema", "$id", "title"):
        body.pop(key, None)
    defs = body.pop("$defs")
    for node in _nodes(body, defs):
        node.pop("title", None)  # pydantic's ("Lr Decay"); _title writes the dotted paths
        _untag(node, defs)
    for node in _nodes(body, defs):
        _flatten(node)
        _collapse_nullable(node)
        _explain_pattern(node)
    # The loader fills `name` from the file's stem, and a recipe that `extends` another may leave out
    # what its base gives (deep merge): what a complete recipe needs is required of recipes without it.
    body["required"] = [k for k in body.get("required", []) if k not in ("name", "model")]
    defs["ModelSpec"]["required"] = [k for k in defs["ModelSpec"].get("required", []) if k != "arch"]
    defs["HeadSpec"]["required"] = [k for k in defs["HeadSpec"].get("required", []) if k != "num_classes"]
    for spec in ("ModelSpec", "HeadSpec"):
        if not defs[spec]["required"]:
            del defs[spec]["required"]
    body["properties"] = {"$schema": {
        "type": "string", "pattern": r"\S", "patternErrorMessage": _sentence(SCHEMA_KEY_RULE),
        "description": "The JSON Schema this file follows, for editors (a JSON recipe names it here; a YAML recipe "
                       "in its first line: # yaml-language-server: $schema=...). recipec ignores it.",
        "examples": [SCHEMA_ID]}, **body["properties"]}
    _title(body, defs)
    body["if"] = {"required": ["extends"], "properties": {"extends": {"type": "string"}}}
    body["else"] = {
        "required": ["model"],
        "properties": {"model": {
            "type": "object",
            "required": ["arch"],
            "properties": {"arch": True, "head": {"if": {"type": "object"}, "then": {
                "type": "object", "required": ["num_classes"], "properties": {"num_classes": True}}}},
        }},
    }
    head = {"$schema": DRAFT, "$id": SCHEMA_ID, "title": "recipec recipe"}
    return {**head, **body, "$defs": dict(sorted(defs.items()))}


def schema_text() -> str:
    """The schema as committed: 2-space indented JSON with a trailing newline."""
    return json.dumps(recipe_json_schema(), indent=2, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------- reshaping


def _nodes(*roots: Any) -> list[dict[str, Any]]:
    """Every schema object under ``roots`` (values of default/examples/enum/const are data, not schemas)."""
    found: list[dict[str, Any]] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            found.append(node)
            for key, value in node.items():
                if key in ("properties", "patternProperties", "$defs"):
                    stack.extend(value.values())
                elif key not in ("default", "examples", "enum", "const"):
                    stack.append(value)
    return found


def _ref(node: dict[str, Any]) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) and ref.startswith("#/$defs/") else None


def _tag(defs: dict[str, Any], name: str) -> str | None:
    """The ``name`` constant of a def (a member of a tagged union), if it has one."""
    prop = defs[name].get("properties", {}).get("name", {})
    return prop.get("const") if isinstance(prop.get("const"), str) else None


def _untag(node: dict[str, Any], defs: dict[str, Any]) -> None:
    """A union of mappings told apart by ``name`` (and maybe bare names) -> ``name`` enum plus if/then per tag."""
    union = node.get("oneOf") or node.get("anyOf")
    if not isinstance(union, list):
        return
    refs = [ref for m in union if (ref := _ref(m)) is not None]
    bare = [m for m in union if _ref(m) is None]
    tags = [_tag(defs, ref) for ref in refs]
    if len(refs) < 2 or None in tags or any(set(m) - {"enum", "type"} or m.get("type") != "string" for m in bare):
        return
    node.pop("oneOf", None)
    node.pop("anyOf", None)
    node.pop("discriminator", None)
    mapping: dict[str, Any] = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"enum": tags, "description": defs[refs[0]]["properties"]["name"].get("description", ""),
                                "examples": tags[:1]}},
        "allOf": [{"if": {"type": "object", "properties": {"name": {"const": tag}}, "required": ["name"]},
                   "then": {"$ref": f"#/$defs/{ref}"}} for ref, tag in zip(refs, tags)],
    }
    if not bare:
        node.update(mapping)
        return
    names = [name for member in bare for name in member["enum"]]  # data.augment: a bare name or a mapping
    node.update({"type": ["string", "object"], "if": {"type": "string"}, "then": {"enum": names}, "else": mapping})


def _flatten(node: dict[str, Any]) -> None:
    """``anyOf: [{oneOf: [a, b]}, c]`` -> ``anyOf: [a, b, c]`` (members of a tagged union of values are disjoint)."""
    union = node.get("anyOf")
    if isinstance(union, list) and any(set(m) == {"oneOf"} for m in union):
        node["anyOf"] = [sub for m in union for sub in (m["oneOf"] if set(m) == {"oneOf"} else [m])]


def _collapse_nullable(node: dict[str, Any]) -> None:
    """``anyOf: [{type: string, ...}, {type: null}]`` -> ``{type: [string, null], ...}``: one schema, one message."""
    union = node.get("anyOf")
    if not isinstance(union, list) or len(union) != 2 or {"type": "null"} not in union:
        return
    other = next(m for m in union if m != {"type": "null"})
    if not isinstance(other.get("type"), str) or other["type"] == "null" or set(other) & set(node) - {"anyOf"}:
        return
    if any(k in other for k in ("$ref", "anyOf", "oneOf", "allOf", "if")):
        return
    del node["anyOf"]
    node.update(other)
    node["type"] = [other["type"], "null"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "enum" in node:
        node["enum"] = [*node["enum"], None]


def _sentence(rule: str) -> str:
    return rule[:1].upper() + rule[1:] + "."


def _explain_pattern(node: dict[str, Any]) -> None:
    rule = PATTERN_RULES.get(node.get("pattern", ""))
    if rule is not None:
        node["patternErrorMessage"] = _sentence(rule)


_KINDS = {"integer": "a whole number", "number": "a number", "boolean": "true or false", "string": "text",
          "object": "a mapping", "array": "a list", "null": "null"}


def _kind(schema: dict[str, Any]) -> str:
    """What an alternative of an ``anyOf`` accepts, in words: ``a whole number``, ``from_weights``."""
    if "const" in schema:
        return str(schema["const"])
    if "enum" in schema:
        return " | ".join(map(str, schema["enum"]))
    types = schema.get("type")
    return " or ".join(_KINDS.get(t, t) for t in ([types] if isinstance(types, str) else types or ["a value"]))


def _title(body: dict[str, Any], defs: dict[str, Any]) -> None:
    """Title every key with its dotted path, and every def with the path(s) that use it."""
    uses: dict[str, list[str]] = {}

    def visit(node: Any, path: str) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item, path)
            return
        if not isinstance(node, dict):
            return
        if (ref := _ref(node)) is not None and path not in uses.setdefault(ref, []):
            uses[ref].append(path)
            if len(uses[ref]) == 1:
                visit(defs[ref], path)
        for member in node.get("anyOf", []):  # an editor shows the title of the alternative a value matched
            if path and "$ref" not in member and "title" not in member:
                member["title"] = f"{path}: {_kind(member)}"
        for key, value in node.items():
            if key == "properties":
                for name, sub in value.items():
                    child = f"{path}.{name}" if path else name
                    value[name] = sub = {"title": sub.pop("title", child), **sub}  # the title first, for a reader
                    visit(sub, child)
            elif key == "patternProperties":
                visit(list(value.values()), f"{path}.<epoch>")
            elif key == "additionalProperties":
                visit(value, f"{path}.<key>")
            elif key in ("items", "prefixItems"):
                visit(value, f"{path}[]")
            elif key not in ("if", "default", "examples", "enum", "const"):  # an `if` is a condition, not a key
                visit(value, path)

    visit(body, "")
    for name, paths in uses.items():
        tag = _tag(defs, name)
        defs[name]["title"] = " / ".join(f"{p} ({tag})" if tag else p for p in paths)
        if len(paths) > 1:  # data.mixup and data.cutmix share their options
            for key, sub in defs[name].get("properties", {}).items():
                sub["title"] = " / ".join(f"{p}.{key}" for p in paths)
