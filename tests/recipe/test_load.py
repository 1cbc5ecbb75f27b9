"""Loading recipes: files, extends, --set overrides, and errors located at the text to fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from recipec.errors import RecipeError
from recipec.recipe import Recipe, dump_recipe, load_recipe, recipe_location
from recipec.recipe.load import load_recipe_data

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = """\
name: tiny
model: {arch: resnet18}
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # messages name files as given: short, relative paths


def write(name: str, text: str) -> str:
    path = Path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return name


def problems(name: str, overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(name, overrides)
    return info.value.problems


# --------------------------------------------------------------------------- reading


def test_minimal_recipe_gets_defaults() -> None:
    recipe = load_recipe(write("tiny.yaml", MINIMAL))
    assert isinstance(recipe, Recipe)
    assert (recipe.name, recipe.model.arch, recipe.optimizer.lr, recipe.extends) == ("tiny", "resnet18", 1e-3, None)


def test_name_defaults_to_file_stem() -> None:
    recipe = load_recipe(write("flowers-small.yaml", "model: {arch: resnet18}\n"))
    assert recipe.name == "flowers-small"


def test_pathlike_and_int_keys_stay_int() -> None:
    write("r.yaml", MINIMAL + "freeze: {unfreeze: {3: [layer4]}, trainable: []}\ngroups: [{name: layer4, match: [x]}]\n")
    data, sources = load_recipe_data(Path("r.yaml"))
    assert data["freeze"]["unfreeze"] == {3: ["layer4"]}
    assert str(sources.locate(("freeze", "unfreeze", 3))) == "r.yaml:3:24"
    assert str(sources.locate(("freeze", "unfreeze", 3), key=True)) == "r.yaml:3:21"
    assert str(sources.locate(("freeze", "unfreeze", 3, 0))) == "r.yaml:3:25"
    assert load_recipe(Path("r.yaml")).freeze.unfreeze == {3: ["layer4"]}


def test_every_key_and_value_has_a_position() -> None:
    write("r.yaml", """\
        name: tiny
        model:
          arch: resnet18
          head:
            num_classes: 5
        export:
          formats: [torch, onnx]
        """)
    _, sources = load_recipe_data("r.yaml")
    assert {p: str(v) for p, v in sources.values.items()} == {
        (): "r.yaml:1:1", ("name",): "r.yaml:1:7", ("model",): "r.yaml:3:3", ("model", "arch"): "r.yaml:3:9",
        ("model", "head"): "r.yaml:5:5", ("model", "head", "num_classes"): "r.yaml:5:18",
        ("export",): "r.yaml:7:3", ("export", "formats"): "r.yaml:7:12",
        ("export", "formats", 0): "r.yaml:7:13", ("export", "formats", 1): "r.yaml:7:20",
    }
    assert str(sources.keys[("model", "head", "num_classes")]) == "r.yaml:5:5"
    assert str(sources.keys[("export",)]) == "r.yaml:6:1"


def test_missing_file() -> None:
    assert problems("nope.yaml") == ["nope.yaml: no such file"]


def test_directory_is_not_a_recipe() -> None:
    os.mkdir("d.yaml")
    assert problems("d.yaml") == ["d.yaml: is a directory, not a recipe file"]


def test_yaml_syntax_error_is_located() -> None:
    write("r.yaml", "name: x\nmodel: {arch: [}\n")
    assert problems("r.yaml") == [("r.yaml:2:16: expected the node content, but found '}' "
                                  "(while parsing a flow node at line 2)")]


def test_bad_indentation_is_located() -> None:
    write("r.yaml", "name: x\nmodel:\n  arch: a\n head: 3\n")
    [problem] = problems("r.yaml")
    assert problem.startswith("r.yaml:4:2: ")


@pytest.mark.parametrize("text, got", [
    ("- a\n- b\n", "a list"),
    ("just text\n", "a string ('just text')"),
    ("3\n", "a number (3)"),
    ("true\n", "a boolean (true)"),
    ("2020-01-01\n", "a string ('2020-01-01')"),
    ("null\n", "null"),
    ("", "an empty document"),
    ("# only a comment\n", "an empty document"),
])
def test_top_level_must_be_a_mapping(text: str, got: str) -> None:
    write("r.yaml", text)
    [problem] = problems("r.yaml")
    assert problem.endswith(f"a recipe must be a mapping at top level (name: ..., model: ...), got {got}")
    assert problem.startswith("r.yaml")


def test_not_utf8() -> None:
    Path("r.yaml").write_bytes(b"name: caf\xe9\n")
    assert problems("r.yaml") == ["r.yaml: not UTF-8 text (byte 0xe9 at offset 9); save the file as UTF-8"]


def test_utf8_bom_is_fine() -> None:
    Path("r.yaml").write_bytes(b"\xef\xbb\xbf" + MINIMAL.encode())
    assert load_recipe("r.yaml").name == "tiny"


def test_control_character_is_located() -> None:
    write("r.yaml", "name: x\nmodel: {arch: \x07}\n")
    assert problems("r.yaml") == ["r.yaml:2:15: character '\\x07' is not allowed in a YAML file"]


def test_several_documents() -> None:
    write("r.yaml", MINIMAL + "---\nname: y\n")
    [problem] = problems("r.yaml")
    assert problem == "r.yaml:3:1: expected a single document in the stream, but found another document"


def test_unknown_tag_is_located() -> None:
    write("r.yaml", "name: !!python/name:os.system x\nmodel: {arch: a}\n")
    assert problems("r.yaml") == ["r.yaml:1:7: unsupported tag 'tag:yaml.org,2002:python/name:os.system'; "
                                  "write a plain value"]


def test_unsupported_collection_tag() -> None:
    write("r.yaml", MINIMAL + "card: {tags: !!set {a, b}}\n")
    assert problems("r.yaml") == ["r.yaml:3:14: unsupported tag 'tag:yaml.org,2002:set'; write a plain mapping or list"]


def test_a_date_is_text() -> None:  # YAML 1.2: no implicit timestamps
    write("r.yaml", MINIMAL + "card: {license: 2020-13-45, intended_use: 2024-01-01}\n")
    assert load_recipe("r.yaml").card.intended_use == "2024-01-01"


def test_explicit_timestamp_is_refused() -> None:
    write("r.yaml", MINIMAL + "card: {license: !!timestamp 2020-01-01}\n")
    assert problems("r.yaml") == ["r.yaml:3:17: unsupported tag 'tag:yaml.org,2002:timestamp'; write a plain value"]


def test_recursive_alias() -> None:
    write("r.yaml", MINIMAL + "card: {tags: &t [a, *t]}\n")
    assert problems("r.yaml") == ["r.yaml:3:14: an alias refers to a node that contains it"]


def test_alias_explosion_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 7)]
    write("r.yaml", "\n".join(lines) + "\n")
    assert problems("r.yaml") == ["r.yaml: too large once aliases are expanded (over 50000 values)"]


def test_deep_nesting_is_a_recipe_error() -> None:
    write("r.yaml", "model: " + "[" * 500 + "]" * 500 + "\n")
    assert problems("r.yaml") == ["r.yaml: nested too deeply to be a recipe"]


def test_anchors_and_merge_keys() -> None:
    write("r.yaml", """\
        name: tiny
        model: {arch: resnet18}
        data: &d {dataset: digits, batch_size: 8}
        optimizer: {lr: 0.1}
        export:
          onnx:
            <<: {opset: 17, atol: 0.01}
            opset: 18
        """)
    recipe = load_recipe("r.yaml")
    assert (recipe.export.onnx.opset, recipe.export.onnx.atol) == (18, 0.01)
    assert recipe_location(recipe, ("export", "onnx", "opset")) == "r.yaml:8:12"
    assert recipe_location(recipe, ("export", "onnx", "atol")) == "r.yaml:7:27"


# --------------------------------------------------------------------------- duplicate and odd keys


def test_duplicate_keys_are_errors_at_the_second() -> None:
    write("r.yaml", """\
        name: tiny
        model:
          arch: resnet18
          arch: resnet50
        optimizer: {lr: 1, lr: 2}
        name: other
        """)
    assert problems("r.yaml") == [
        "r.yaml:4:3: model.arch: duplicate key 'arch' (first at line 3); keep only one",
        "r.yaml:5:20: optimizer.lr: duplicate key 'lr' (first at line 5); keep only one",
        "r.yaml:6:1: name: duplicate key 'name' (first at line 1); keep only one",
    ]


def test_int_and_text_keys_are_different_keys() -> None:
    write("r.yaml", MINIMAL + "freeze: {unfreeze: {1: [head], '1': [head]}}\ngroups: [{name: head, match: [x]}]\n")
    load_recipe_data("r.yaml")  # YAML tells 1 and '1' apart; not a duplicate


@pytest.mark.parametrize("key", ["1.5", "null", "true", "~"])
def test_keys_must_be_text_or_whole_numbers(key: str) -> None:
    write("r.yaml", MINIMAL + f"card:\n  {key}: 1\n")
    assert problems("r.yaml") == [f"r.yaml:4:3: card: key {key!r} is not text or a whole number; quote it if it is a name"]


# --------------------------------------------------------------------------- validation errors


def test_three_independent_mistakes_are_reported_together() -> None:
    write("r.yaml", """\
        name: tiny
        model:
          arch: resnet18
          head: {num_classes: 5, dropout: 1.5}
        optimizer:
          lrr: 0.1
          weight_decay: lots
        """)
    assert problems("r.yaml") == [
        "r.yaml:4:35: model.head.dropout: must be < 1, got 1.5",
        "r.yaml:6:3: optimizer.lrr: unknown key 'lrr'; did you mean 'lr'?",
        "r.yaml:7:17: optimizer.weight_decay: must be a number, got 'lots'",
    ]


def test_errors_sorted_by_position_and_unique() -> None:
    write("r.yaml", "model: {arch: a, head: {num_classes: 0}}\nname: 'no spaces'\nseed: -1\n")
    assert problems("r.yaml") == [
        "r.yaml:1:38: model.head.num_classes: must be >= 1, got 0",
        ("r.yaml:2:7: name: must start with a letter or digit and hold only letters, digits, '.', '_' and '-', "
        "got 'no spaces'"),
        "r.yaml:3:7: seed: must be >= 0, got -1",
    ]


def test_missing_required_field_is_located_at_its_parent() -> None:
    write("r.yaml", "name: tiny\nmodel:\n  head: {num_classes: 3}\n")
    assert problems("r.yaml") == ["r.yaml:2:1: model.arch: missing (required), e.g. arch: resnet18"]


def test_missing_model_is_located_at_the_top() -> None:
    write("r.yaml", "name: tiny\n")
    assert problems("r.yaml") == ["r.yaml:1:1: model: missing (required), e.g. model: {arch: resnet18}"]


def test_did_you_mean_at_every_depth() -> None:
    write("r.yaml", """\
        name: tiny
        modl: {arch: resnet18}
        model: {arch: resnet18, head: {num_clases: 3}}
        optimizer: {scheduler: {name: cosine, warmup: 1}}
        train: {early_stopping: {patiense: 2}}
        groups: [{name: a, match: [x], mtch: [y]}]
        card: {colour: blue}
        """)
    assert problems("r.yaml") == [
        "r.yaml:2:1: modl: unknown key 'modl'; did you mean 'model'?",
        "r.yaml:3:25: model.head.num_classes: missing (required), e.g. num_classes: 5",
        "r.yaml:3:32: model.head.num_clases: unknown key 'num_clases'; did you mean 'num_classes'?",
        "r.yaml:4:39: optimizer.scheduler.warmup: unknown key 'warmup'; did you mean 'warmup_epochs'?",
        "r.yaml:5:26: train.early_stopping.patiense: unknown key 'patiense'; did you mean 'patience'?",
        "r.yaml:6:32: groups.0.mtch: unknown key 'mtch'; did you mean 'match'?",
        "r.yaml:7:8: card.colour: unknown key 'colour'",
    ]


def test_scheduler_errors_drop_the_union_tag() -> None:
    write("r.yaml", """\
        name: tiny
        model: {arch: resnet18}
        optimizer:
          scheduler:
            name: cosine
            warmup_epochs: -1
            min_factor: 2
        """)
    assert problems("r.yaml") == [
        "r.yaml:6:20: optimizer.scheduler.warmup_epochs: must be >= 0, got -1",
        "r.yaml:7:17: optimizer.scheduler.min_factor: must be <= 1, got 2",
    ]


def test_scheduler_option_of_another_kind() -> None:
    write("r.yaml", MINIMAL + "optimizer: {scheduler: {name: none, warmup_epochs: 1}}\n")
    assert problems("r.yaml") == ["r.yaml:3:37: optimizer.scheduler.warmup_epochs: unknown key 'warmup_epochs'"]


def test_unknown_scheduler_names_the_choices() -> None:
    write("r.yaml", MINIMAL + "optimizer: {scheduler: {name: cosin}}\n")
    assert problems("r.yaml") == [("r.yaml:3:31: optimizer.scheduler.name: must be one of none, cosine, step, onecycle, "
                                  "got 'cosin'; did you mean 'cosine'?")]


def test_scheduler_without_name() -> None:
    write("r.yaml", MINIMAL + "optimizer: {scheduler: {warmup_epochs: 1}}\n")
    assert problems("r.yaml") == ["r.yaml:3:13: optimizer.scheduler: needs name: one of none, cosine, step, onecycle"]


def test_step_scheduler_missing_step_epochs() -> None:
    write("r.yaml", MINIMAL + "optimizer: {scheduler: {name: step}}\n")
    assert problems("r.yaml") == ["r.yaml:3:13: optimizer.scheduler.step_epochs: missing (required), e.g. step_epochs: 10"]


def test_wrong_shapes() -> None:
    write("r.yaml", """\
        name: tiny
        model: resnet18
        groups: {name: a}
        card: {tags: x}
        optimizer: {betas: [0.9], nesterov: maybe}
        train: {epochs: 2.5}
        """)
    assert problems("r.yaml") == [
        "r.yaml:2:8: model: must be a mapping (key: value), got 'resnet18'",
        "r.yaml:3:9: groups: must be a list, got {\"name\": \"a\"}",
        "r.yaml:4:14: card.tags: must be a list, got 'x'",
        "r.yaml:5:20: optimizer.betas: must have 2 items, got [0.9]",
        "r.yaml:5:37: optimizer.nesterov: must be true or false, got 'maybe'",
        "r.yaml:6:17: train.epochs: must be a whole number, got 2.5",
    ]


def test_bad_dict_key_is_located_at_the_key() -> None:
    write("r.yaml", MINIMAL + "freeze:\n  unfreeze:\n    -1: [a]\n    x: [b]\n")
    assert problems("r.yaml") == [
        "r.yaml:5:5: freeze.unfreeze.-1: key must be >= 0, got -1",
        "r.yaml:6:5: freeze.unfreeze.x: key must be a whole number, got 'x'",
    ]


def test_invalid_regex_names_the_item() -> None:
    write("r.yaml", MINIMAL + "source:\n  checkpoint: w.pt\n  exclude: ['^fc\\.', '(']\n")
    assert problems("r.yaml") == [("r.yaml:5:22: source.exclude.1: '(' is not a valid regular expression: "
                                  "missing ), unterminated subpattern at position 0")]


def test_field_problems_expand_to_their_own_lines() -> None:
    write("r.yaml", """\
        name: tiny
        model: {arch: resnet18}
        groups:
          - {name: body, match: ['^(?!fc)']}
          - {name: head, match: ['^fc\\.']}
        freeze:
          trainable: [head, neck]
          unfreeze:
            1: [body, torso]
        optimizer:
          group_lr: {stem: 1.0e-5}
        train: {epochs: 3}
        """)
    assert problems("r.yaml") == [
        "r.yaml:7:21: freeze.trainable.1: unknown group 'neck' (groups are body, head)",
        "r.yaml:9:15: freeze.unfreeze.1.1: unknown group 'torso' (groups are body, head)",
        "r.yaml:11:20: optimizer.group_lr.stem: unknown group 'stem' (groups are body, head)",
    ]


def test_hidden_on_a_linear_head_is_located_at_hidden() -> None:
    write("r.yaml", """\
        name: tiny
        model:
          arch: resnet18
          head:
            num_classes: 3
            hidden: [64]
        """)
    assert problems("r.yaml") == [("r.yaml:6:13: model.head.hidden: only applies to type: mlp (this head is type: linear); "
                                  "remove it or set type: mlp")]


def test_field_problem_at_a_default_is_located_at_its_parent() -> None:
    write("r.yaml", MINIMAL + "freeze:\n  gradual: {every: 1}\n  trainable: []\ntrain: {epochs: 1}\n")
    assert problems("r.yaml") == [("r.yaml:4:12: freeze.gradual.start: epoch 1 never starts (train.epochs is 1; "
                                  "epochs count from 0)")]


def test_plain_value_error_of_a_section() -> None:
    write("r.yaml", MINIMAL + "source: {sha256: null}\n")
    assert problems("r.yaml") == ["r.yaml:3:9: source: needs checkpoint (a file) or recipe (an upstream recipe)"]


# --------------------------------------------------------------------------- extends


def test_extends_deep_merges_and_lists_replace(tmp_path: Path) -> None:
    write("base/base.yaml", """\
        name: base
        model: {arch: resnet18, head: {num_classes: 10, dropout: 0.1}}
        data: {dataset: imagefolder, root: data/flowers, augment: [hflip, vflip]}
        source: {checkpoint: weights/w.pt, exclude: ['^fc\\.']}
        optimizer: {lr: 0.1, weight_decay: 0.01}
        """)
    write("child.yaml", """\
        extends: base/base.yaml
        model: {head: {num_classes: 5}}
        data: {augment: [rotate]}
        optimizer: {lr: 0.2}
        card: {template: card.md.j2}
        """)
    recipe = load_recipe("child.yaml")
    assert recipe.name == "base"  # inherited: name defaults to the stem only when nobody sets it
    assert recipe.extends is None
    assert (recipe.model.arch, recipe.model.head.num_classes, recipe.model.head.dropout) == ("resnet18", 5, 0.1)
    assert recipe.data.augment == ["rotate"]
    assert (recipe.optimizer.lr, recipe.optimizer.weight_decay) == (0.2, 0.01)
    # relative paths are resolved against the file that wrote them
    assert recipe.data.root == str(tmp_path / "base" / "data" / "flowers")
    assert recipe.source.checkpoint == str(tmp_path / "base" / "weights" / "w.pt")
    assert recipe.card.template == str(tmp_path / "card.md.j2")
    # positions come from the file that defines each value
    assert recipe_location(recipe, ("model", "arch")) == "base/base.yaml:2:15"
    assert recipe_location(recipe, ("model", "head", "dropout")) == "base/base.yaml:2:58"
    assert recipe_location(recipe, ("model", "head", "num_classes")) == "child.yaml:2:29"
    assert recipe_location(recipe, ("data", "augment", 0)) == "child.yaml:3:18"
    assert recipe_location(recipe, ("optimizer", "weight_decay")) == "base/base.yaml:5:36"
    data, _ = load_recipe_data("child.yaml")
    assert "extends" not in data


def test_extends_errors_are_located_in_the_base() -> None:
    write("base.yaml", "model: {arch: resnet18, head: {num_classes: 0}}\n")
    write("child.yaml", "extends: base.yaml\nname: child\noptimizer: {lr: 0}\n")
    assert problems("child.yaml") == [
        "base.yaml:1:45: model.head.num_classes: must be >= 1, got 0",
        "child.yaml:3:17: optimizer.lr: must be > 0, got 0",
    ]


def test_extends_chain_of_three() -> None:
    write("a.yaml", "model: {arch: resnet18}\ntrain: {epochs: 3}\n")
    write("b.yaml", "extends: a.yaml\ntrain: {amp: bf16}\n")
    write("c.yaml", "extends: b.yaml\ntrain: {epochs: 5}\n")
    recipe = load_recipe("c.yaml")
    assert (recipe.name, recipe.train.epochs, recipe.train.amp) == ("c", 5, "bf16")


def test_empty_mapping_clears_and_new_scheduler_replaces() -> None:
    write("base.yaml", MINIMAL + "freeze: {unfreeze: {2: [layer3]}}\n"
                                 "optimizer: {scheduler: {name: cosine, warmup_epochs: 1}}\n")
    write("child.yaml", "extends: base.yaml\nfreeze: {unfreeze: {}}\noptimizer: {scheduler: {name: onecycle}}\n")
    recipe = load_recipe("child.yaml")
    assert recipe.freeze.unfreeze == {}
    assert recipe.optimizer.scheduler.name == "onecycle"


def test_same_scheduler_merges() -> None:
    write("base.yaml", MINIMAL + "optimizer: {scheduler: {name: cosine, warmup_epochs: 1}}\n")
    write("child.yaml", "extends: base.yaml\noptimizer: {scheduler: {min_factor: 0.1}}\n")
    scheduler = load_recipe("child.yaml").optimizer.scheduler
    assert (scheduler.name, scheduler.warmup_epochs, scheduler.min_factor) == ("cosine", 1, 0.1)


def test_child_null_replaces_a_section() -> None:
    write("base.yaml", "model: {arch: resnet18, head: {num_classes: 3}}\n")
    write("child.yaml", "extends: base.yaml\nmodel: {head: null}\n")
    assert load_recipe("child.yaml").model.head is None


def test_extends_cycle_names_the_chain() -> None:
    write("a.yaml", "extends: b.yaml\n")
    write("b.yaml", "extends: ./a.yaml\n")
    assert problems("a.yaml") == ["b.yaml:1:10: extends: cycle a.yaml -> b.yaml -> a.yaml"]


def test_extends_itself() -> None:
    write("a.yaml", "name: x\nextends: a.yaml\n")
    assert problems("a.yaml") == ["a.yaml:2:10: extends: cycle a.yaml -> a.yaml"]


def test_missing_extended_file_is_located_at_extends() -> None:
    write("sub/child.yaml", "name: x\nextends: ../nope.yaml\n")
    assert problems("sub/child.yaml") == ["sub/child.yaml:2:10: extends: no such file nope.yaml"]


def test_extends_must_be_a_path() -> None:
    write("a.yaml", "extends: [b.yaml]\n")
    assert problems("a.yaml") == ['a.yaml:1:10: extends: must be the path of a recipe file, got ["b.yaml"]']


def test_broken_base_is_reported_in_the_base() -> None:
    write("base.yaml", "model: {arch: [}\n")
    write("child.yaml", "extends: base.yaml\n")
    [problem] = problems("child.yaml")
    assert problem.startswith("base.yaml:1:16: ")


def test_extends_null_is_no_extends() -> None:
    write("a.yaml", MINIMAL + "extends: null\n")
    assert load_recipe("a.yaml").extends is None


def test_absolute_paths_are_left_alone(tmp_path: Path) -> None:
    absolute = str(tmp_path / "elsewhere" / "w.safetensors")
    write("a.yaml", MINIMAL + f"source: {{checkpoint: '{absolute}'}}\n")
    assert load_recipe("a.yaml").source.checkpoint == absolute


# --------------------------------------------------------------------------- overrides


@pytest.mark.parametrize("override, path, value", [
    ("optimizer.lr=3e-4", ("optimizer", "lr"), 3e-4),
    ("optimizer.lr=0.5", ("optimizer", "lr"), 0.5),
    ("data.augment=[hflip, rotate]", ("data", "augment"), ["hflip", "rotate"]),
    ("model.head=null", ("model", "head"), None),
    ("model.weights=", ("model", "weights"), None),
    ("train.amp=bf16", ("train", "amp"), "bf16"),
    ("card.license='1.0'", ("card", "license"), "1.0"),
    ("card.tags=[a=b]", ("card", "tags"), ["a=b"]),
    (" seed = 7", ("seed",), 7),
    ("device=cuda:1", ("device",), "cuda:1"),
    ("train.early_stopping={metric: val_loss}", ("train", "early_stopping", "metric"), "val_loss"),
    ("name=renamed", ("name",), "renamed"),
])
def test_override_values_are_yaml_typed(override: str, path: tuple[str, ...], value: object) -> None:
    write("r.yaml", "name: tiny\nmodel: {arch: resnet18, head: {num_classes: 3}}\n")
    recipe = load_recipe("r.yaml", [override])
    got: object = recipe
    for part in path:
        got = getattr(got, part)
    assert got == value


def test_override_int_keys_under_freeze_unfreeze() -> None:
    write("r.yaml", MINIMAL + "freeze: {unfreeze: {3: [layer4]}, trainable: []}\ntrain: {epochs: 9}\n"
                              "groups: [{name: layer3, match: [a]}, {name: layer4, match: [b]}]\n")
    recipe = load_recipe("r.yaml", ["freeze.unfreeze.4=[layer3]", "freeze.unfreeze.3=[layer3, layer4]"])
    assert recipe.freeze.unfreeze == {3: ["layer3", "layer4"], 4: ["layer3"]}
    assert recipe_location(recipe, ("freeze", "unfreeze", 4)) == "--set freeze.unfreeze.4=[layer3]"
    assert recipe_location(recipe, ("freeze", "unfreeze", 3, 1)) == "--set freeze.unfreeze.3=[layer3, layer4]"


def test_override_string_key_that_looks_like_an_int_is_kept() -> None:
    write("r.json", json.dumps({"name": "tiny", "model": {"arch": "resnet18"}, "train": {"epochs": 9},
                                "freeze": {"unfreeze": {"3": ["head"]}},
                                "groups": [{"name": "head", "match": ["x"]}]}))
    data, _ = load_recipe_data("r.json", ["freeze.unfreeze.3=[]"])
    assert data["freeze"]["unfreeze"] == {"3": []}


def test_override_list_index_and_new_section() -> None:
    write("r.yaml", MINIMAL + "groups: [{name: a, match: [x]}, {name: b, match: [y]}]\n")
    recipe = load_recipe("r.yaml", ["groups.0.name=stem", "groups.1.match.0=z", "train.early_stopping.patience=5",
                                    "card.license=mit"])
    assert [g.name for g in recipe.groups] == ["stem", "b"]
    assert recipe.groups[1].match == ["z"]
    assert recipe.train.early_stopping.patience == 5
    assert recipe.card.license == "mit"


def test_override_fills_a_null_section() -> None:
    write("r.yaml", "name: tiny\nmodel: {arch: resnet18, head: null}\n")
    assert load_recipe("r.yaml", ["model.head.num_classes=4"]).model.head.num_classes == 4


def test_override_paths_are_relative_to_cwd(tmp_path: Path) -> None:
    write("sub/r.yaml", MINIMAL + "data: {dataset: imagefolder, root: here}\n")
    recipe = load_recipe("sub/r.yaml", ["source={checkpoint: w.pt}"])
    assert recipe.source.checkpoint == str(tmp_path / "w.pt")
    assert recipe.data.root == str(tmp_path / "sub" / "here")
    recipe = load_recipe("sub/r.yaml", ["data.root=there"])
    assert recipe.data.root == str(tmp_path / "there")


def test_override_errors_are_located_at_the_override() -> None:
    write("r.yaml", MINIMAL)
    assert problems("r.yaml", ["optimizer.lr=-1", "optimizer.lrr=2"]) == [
        "--set optimizer.lr=-1: optimizer.lr: must be > 0, got -1",
        "--set optimizer.lrr=2: optimizer.lrr: unknown key 'lrr'; did you mean 'lr'?",
    ]


def test_override_replaces_positions_below_it() -> None:
    write("r.yaml", MINIMAL + "optimizer: {scheduler: {name: cosine, warmup_epochs: 1}}\n")
    assert problems("r.yaml", ["optimizer.scheduler={name: step, gamma: 2}"]) == [
        ("--set optimizer.scheduler={name: step, gamma: 2}: optimizer.scheduler.step_epochs: missing (required), "
        "e.g. step_epochs: 10"),
        "--set optimizer.scheduler={name: step, gamma: 2}: optimizer.scheduler.gamma: must be <= 1, got 2",
    ]


@pytest.mark.parametrize("override, message", [
    ("model", "--set model: expected KEY=VALUE with a dotted KEY, e.g. --set optimizer.lr=3e-4"),
    ("=3", "--set =3: expected KEY=VALUE with a dotted KEY, e.g. --set optimizer.lr=3e-4"),
    ("a..b=1", "--set a..b=1: 'a..b' has an empty part; write dotted keys such as freeze.unfreeze.3"),
    ("optimizer.lr.=1", ("--set optimizer.lr.=1: 'optimizer.lr.' has an empty part; write dotted keys such as "
                        "freeze.unfreeze.3")),
    ("groups.5.name=x", "--set groups.5.name=x: groups is a list of 2 item(s); '5' is not one of its indices (0 to 1)"),
    ("groups.first.name=x", ("--set groups.first.name=x: groups is a list of 2 item(s); 'first' is not one of its "
                            "indices (0 to 1)")),
    ("name.x=1", "--set name.x=1: name is 'tiny', not a mapping or a list"),
    ("card.tags.0=x", "--set card.tags.0=x: card.tags is an empty list; set all of it, e.g. --set card.tags=[...]"),
    ("extends=other.yaml", ("--set extends=other.yaml: extends cannot be overridden; write a recipe that extends "
                           "the other one")),
    ("optimizer.lr=[1", ("--set optimizer.lr=[1: value:1:3: expected ',' or ']', but got '<stream end>' "
                        "(while parsing a flow sequence at line 1)")),
    ("card={a: 1, a: 2}", "--set card={a: 1, a: 2}: value:1:8: a: duplicate key 'a' (first at line 1); keep only one"),
])
def test_malformed_overrides(override: str, message: str) -> None:
    write("r.yaml", MINIMAL + "groups: [{name: a, match: [x]}, {name: b, match: [y]}]\ncard: {tags: []}\n")
    assert problems("r.yaml", [override]) == [message]


def test_overrides_apply_in_order() -> None:
    write("r.yaml", MINIMAL)
    assert load_recipe("r.yaml", ["train.epochs=2", "train.epochs=3"]).train.epochs == 3


def test_a_single_string_override_is_one_override() -> None:
    write("r.yaml", MINIMAL)
    assert load_recipe("r.yaml", "train.epochs=2").train.epochs == 2  # type: ignore[arg-type]


# --------------------------------------------------------------------------- JSON


def test_json_recipe_with_positions() -> None:
    write("r.json", '{\n\t"name": "tiny",\n\t"model": {"arch": "resnet18"},\n'
                    '\t"optimizer": {"lr": 1e-3, "lrr": 2, "weight_decay": -1}\n}\n')
    assert problems("r.json") == [
        "r.json:4:28: optimizer.lrr: unknown key 'lrr'; did you mean 'lr'?",
        "r.json:4:54: optimizer.weight_decay: must be >= 0, got -1",
    ]
    write("ok.json", '{"name": "tiny", "model": {"arch": "resnet18"}, "optimizer": {"lr": 1e-3}}')
    recipe = load_recipe("ok.json")
    assert recipe.optimizer.lr == 1e-3
    assert recipe_location(recipe, ("optimizer", "lr")) == "ok.json:1:69"


def test_json_syntax_error_is_located() -> None:
    write("r.json", '{"name": "tiny",\n "model": {"arch": "resnet18",}}\n')
    assert problems("r.json") == ["r.json:2:31: Expecting property name enclosed in double quotes"]


def test_json_rejects_what_json_rejects() -> None:
    write("r.json", "name: tiny\nmodel: {arch: resnet18}\n")  # YAML, not JSON
    [problem] = problems("r.json")
    assert problem.startswith("r.json:1:1: Expecting value")
    write("nan.json", '{"name": "tiny", "model": {"arch": "resnet18"}, "optimizer": {"lr": NaN}}')
    assert problems("nan.json") == ["nan.json: NaN is not valid JSON; write a number or null"]


def test_json_duplicate_keys() -> None:
    write("r.json", '{"name": "a",\n "model": {"arch": "resnet18"},\n "name": "b"}')
    assert problems("r.json") == ["r.json:3:2: name: duplicate key 'name' (first at line 1); keep only one"]


def test_json_top_level_must_be_an_object() -> None:
    write("r.json", "[1, 2]")
    assert problems("r.json") == [("r.json:1:1: a recipe must be a mapping at top level (name: ..., model: ...), "
                                  "got a list")]


def test_json_unfreeze_keys_are_text_and_still_located() -> None:
    write("r.json", json.dumps({"name": "tiny", "model": {"arch": "resnet18"}, "train": {"epochs": 2},
                                "groups": [{"name": "head", "match": ["x"]}], "freeze": {"unfreeze": {"5": ["neck"]}, "trainable": []}}))
    assert problems("r.json") == [
        "r.json:1:148: freeze.unfreeze.5: epoch 5 never starts (train.epochs is 2; epochs count from 0)",
        "r.json:1:149: freeze.unfreeze.5.0: unknown group 'neck' (groups are head)",
    ]


def test_json_that_yaml_cannot_read_still_loads_without_lines() -> None:
    write("r.json", '{"name": "tiny", "model": {"arch": "resnet18"}, "card": {"license": "a\x7fb"}, "seed": -1}')
    assert problems("r.json") == ["r.json: seed: must be >= 0, got -1"]


def test_json_extends_yaml() -> None:
    write("base.yaml", MINIMAL + "train: {epochs: 7}\n")
    write("r.json", '{"extends": "base.yaml", "name": "j"}')
    recipe = load_recipe("r.json")
    assert (recipe.name, recipe.train.epochs) == ("j", 7)


# --------------------------------------------------------------------------- dump and locate


def test_dump_round_trip(tmp_path: Path) -> None:
    write("base.yaml", (ROOT / "recipes" / "quickstart.yaml").read_text())
    write("r.yaml", """\
        extends: base.yaml
        name: round-trip
        model: {kwargs: {dropout: 0.1, when: 2020-01-01}, head: {num_classes: 3, type: mlp, hidden: [8, 4]}}
        source: {checkpoint: w.pt, rename: [['^module\\.', '']], adapt: [{match: x, rule: class_subset, indices: [1]}]}
        optimizer: {betas: [0.8, 0.9], group_lr: {head: 0.5}}
        export: {shard_size: 2GB, formats: [torch, onnx]}
        card: {tags: ['yes', '1.0', '2020-01-01']}
        """)
    recipe = load_recipe("r.yaml")
    text = dump_recipe(recipe)
    assert "extends" not in text
    Path("dumped.yaml").write_text(text)
    again = load_recipe("dumped.yaml")
    assert again == recipe
    assert again.source.checkpoint == str(tmp_path / "w.pt")
    assert again.freeze.unfreeze == {2: ["layer3"]}


def test_dump_shipped_recipes_round_trip() -> None:
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        recipe = load_recipe(path)
        Path("dumped.yaml").write_text(dump_recipe(recipe))
        assert load_recipe("dumped.yaml") == recipe, path.name


def test_recipe_location_walks_up_to_a_written_parent() -> None:
    recipe = load_recipe(write("r.yaml", MINIMAL + "train:\n  epochs: 3\n"))
    assert recipe_location(recipe, ("train", "epochs")) == "r.yaml:4:11"
    assert recipe_location(recipe, ("train", "amp")) == "r.yaml:4:3"
    assert recipe_location(recipe, ("export", "onnx", "opset")) == "r.yaml:1:1"
    assert recipe_location(recipe, ()) == "r.yaml:1:1"


def test_recipe_location_of_a_recipe_not_loaded_from_a_file() -> None:
    recipe = Recipe.model_validate({"name": "x", "model": {"arch": "resnet18"}})
    assert recipe_location(recipe, ("model", "arch")) is None


def test_sources_do_not_change_equality_or_dumps() -> None:
    write("a.yaml", MINIMAL)
    write("b.yaml", "\n\n" + MINIMAL)
    a, b = load_recipe("a.yaml"), load_recipe("b.yaml")
    assert recipe_location(a, ("name",)) != recipe_location(b, ("name",))
    assert a == b
    assert a.model_dump() == b.model_dump()
    assert "_recipec" not in a.model_dump_json()
    assert recipe_location(a.model_copy(), ("name",)) == "a.yaml:1:7"


def test_loading_imports_no_torch() -> None:
    code = ("import recipec.recipe.load, recipec.recipe, sys; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
