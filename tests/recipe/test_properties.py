"""Whatever a recipe file or a --set says, loading gives a Recipe or a RecipeError, never another exception."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recipec.errors import RecipeError
from recipec.recipe import Recipe, dump_recipe, load_recipe
from recipec.recipe._yaml import iter_paths

PROPERTY = settings(max_examples=120, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

VALID: dict[str, Any] = {
    "name": "prop", "seed": 1, "device": "cpu",
    "model": {"arch": "resnet18", "kwargs": {"dropout": 0.1}, "weights": None, "in_channels": 3,
              "head": {"num_classes": 5, "type": "mlp", "hidden": [16], "dropout": 0.1, "activation": "relu"}},
    "source": {"checkpoint": "w.pt", "rename": [[r"^module\.", ""]], "exclude": [r"^fc\."],
               "adapt": [{"match": "^conv1", "rule": "class_subset", "indices": [0, 2]}],
               "allow_globals": ["argparse.Namespace"]},
    "groups": [{"name": "body", "match": ["^(?!fc)"]}, {"name": "head", "match": [r"^fc\."]}],
    "freeze": {"trainable": ["head"], "unfreeze": {2: ["body"]}, "gradual": {"every": 1, "start": 1},
               "batchnorm": "frozen"},
    "optimizer": {"name": "sgd", "lr": 0.01, "lr_decay": 2.0, "group_lr": {"body": 0.001}, "betas": [0.9, 0.99],
                  "scheduler": {"name": "step", "step_epochs": 2, "gamma": 0.5, "warmup_epochs": 1}},
    "data": {"dataset": "imagefolder", "root": "data", "classes": ["a", "b"], "augment": ["hflip"], "image_size": 32},
    "train": {"epochs": 4, "early_stopping": {"metric": "val_loss", "patience": 2}},
    "export": {"formats": ["safetensors", "onnx"], "shard_size": "1GB", "onnx": {"opset": 19}},
    "card": {"tags": ["x"], "license": "mit"},
}
KNOWN = sorted({str(p[-1]) for p, _ in iter_paths(VALID) if p and isinstance(p[-1], str)} | {"extends", "step", "cosine"})

texts = st.text(max_size=16) | st.sampled_from(KNOWN + ["", "null", "~", "1e3", "yes", "cuda:0", "(", "2GB"])
scalars = (st.none() | st.booleans() | st.integers(-10, 10**20) | st.floats(allow_nan=False) | texts)
keys = st.sampled_from(KNOWN) | st.text(max_size=8) | st.integers(-3, 10)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                      max_leaves=12)
yamlish = st.lists(st.sampled_from(list("{}[]:,-&*!|>'\"#%@ \n\t.=<~?") + KNOWN + ["name: ", "model:\n  ", "0", "1.5"]),
                   max_size=30).map("".join)


def outcome(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe | RecipeError:
    """The loader's answer; any exception other than RecipeError fails the test."""
    try:
        return load_recipe(path, overrides)
    except RecipeError as exc:
        assert exc.problems and all(p.startswith((str(path), "--set ")) for p in exc.problems), exc.problems
        return exc


def write_yaml(path: Path, document: Any) -> Path:
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def test_the_valid_recipe_is_valid(tmp_path: Path) -> None:
    assert isinstance(outcome(write_yaml(tmp_path / "r.yaml", VALID)), Recipe)


@PROPERTY
@given(document=values)
def test_any_yaml_document(tmp_path: Path, document: Any) -> None:
    outcome(write_yaml(tmp_path / "r.yaml", document))


@PROPERTY
@given(document=st.dictionaries(keys, values, max_size=6))
def test_any_yaml_mapping(tmp_path: Path, document: dict[Any, Any]) -> None:
    outcome(write_yaml(tmp_path / "r.yaml", {"model": {"arch": "resnet18"}, **document}))


@PROPERTY
@given(text=st.text(max_size=80) | yamlish)
def test_any_text(tmp_path: Path, text: str) -> None:
    (tmp_path / "r.yaml").write_text(text, encoding="utf-8")
    outcome(tmp_path / "r.yaml")
    (tmp_path / "r.json").write_text(text, encoding="utf-8")
    outcome(tmp_path / "r.json")


@PROPERTY
@given(raw=st.binary(max_size=40))
def test_any_bytes(tmp_path: Path, raw: bytes) -> None:
    (tmp_path / "r.yaml").write_bytes(raw)
    outcome(tmp_path / "r.yaml")


@PROPERTY
@given(document=values | st.floats())
def test_any_json_document(tmp_path: Path, document: Any) -> None:
    (tmp_path / "r.json").write_text(json.dumps(document, indent=1), encoding="utf-8")
    outcome(tmp_path / "r.json")


def _mutate(data: st.DataObject, doc: dict[str, Any]) -> None:
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = [p for p, _ in iter_paths(doc) if p]
        if not paths:
            return
        path = data.draw(st.sampled_from(paths), label="path")
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        here = parent[path[-1]]
        op = data.draw(st.sampled_from(["delete", "replace", "add"]), label="op")
        if op == "delete":
            del parent[path[-1]]
        elif op == "replace":
            parent[path[-1]] = data.draw(values, label="value")
        else:
            target = here if isinstance(here, dict) else parent if isinstance(parent, dict) else None
            if target is not None:
                target[data.draw(keys, label="key")] = data.draw(values, label="value")


@PROPERTY
@given(data=st.data())
def test_mutated_valid_recipe(tmp_path: Path, data: st.DataObject) -> None:
    doc = copy.deepcopy(VALID)
    _mutate(data, doc)
    result = outcome(write_yaml(tmp_path / "r.yaml", doc))
    if isinstance(result, Recipe):  # what loads, dumps and loads back the same
        (tmp_path / "dumped.yaml").write_text(dump_recipe(result), encoding="utf-8")
        assert load_recipe(tmp_path / "dumped.yaml") == result


@PROPERTY
@given(overrides=st.lists(st.text(max_size=30) | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
    ["optimizer.lr", "freeze.unfreeze.3", "groups.0.name", "groups.9", "model.head", "name.x", "data", "card.tags.0",
     "a..b", "optimizer.scheduler.name", "export.onnx"]), texts | yamlish), max_size=3))
def test_any_overrides(tmp_path: Path, overrides: list[str]) -> None:
    outcome(write_yaml(tmp_path / "r.yaml", VALID), overrides)
