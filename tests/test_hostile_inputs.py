"""Hostile values and clean output (issue 7, items 10-15): every one is a clean exit-2 error or a documented result.

Numbers beyond reason, booleans where numbers belong, a recipe that only extends, names no file
system holds, templates that would run forever, checkpoints with cyclic metadata or tensors no
model can take, NaN in JSON, control characters on the terminal.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import jinja2.sandbox
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from recipec import _json as clean_json
from recipec._terminal import escape
from recipec.card import _sandbox
from recipec.card.render import render_card
from recipec.cli import main
from recipec.compiler.compile import compile_recipe
from recipec.errors import CheckpointError, ModelError, RecipecError, RecipeError, TransferError
from recipec.model.heads import build_head
from recipec.recipe import load_recipe
from recipec.recipe.schema import recipe_json_schema
from recipec.weights import formats
from recipec.weights.inspect import format_inspect, inspect_checkpoint
from recipec.weights.transfer import apply_transfer

BASE = """\
    name: base
    model: {arch: resnet18, head: {num_classes: 3}}
    data: {dataset: fake, image_size: 32}
    train: {epochs: 2}
"""


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(info.value.code or 0), out, err


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def with_line(line: str) -> tuple[str, int]:
    """BASE with its section of the same top-level key replaced by ``line``, written last; and that line's number."""
    key = line.split(":")[0]
    lines = [item for item in textwrap.dedent(BASE).splitlines() if not item.startswith(key + ":")]
    return "\n".join([*lines, line]) + "\n", len(lines) + 1


def strict_json(text: str) -> Any:
    """Parse JSON as every other reader would: NaN and Infinity are errors."""
    def refuse(name: str) -> None:
        raise ValueError(f"{name} in JSON output")
    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------- 7.10 numbers beyond reason


@pytest.mark.parametrize("line, key, problem", [
    ("model: {arch: resnet18, head: {num_classes: 1e9}}", "model.head.num_classes", "must be <= 1000000"),
    ("model: {arch: resnet18, in_channels: 1e20}", "model.in_channels", "must be <= 1024"),
    ("seed: 18446744073709551616", "seed", "must be <= 4294967295"),
    ("optimizer: {lr_decay: 1e100}", "optimizer.lr_decay", "must be <= 100"),
    ("data: {dataset: fake, batch_size: 1e20}", "data.batch_size", "must be <= 65536"),
    ("train: {epochs: 2, accumulate: 1e20}", "train.accumulate", "must be <= 65536"),
    ("data: {dataset: fake, image_size: 1e5}", "data.image_size", "must be <= 4096"),
    ("train: {epochs: 1e12}", "train.epochs", "must be <= 10000"),
    ("data: {dataset: fake, num_workers: 1e5}", "data.num_workers", "must be <= 256"),
    ("export: {shard_size: 1e20}", "export.shard_size", "must be <= 1000000000000"),
    ("export: {onnx: {opset: 1e9}}", "export.onnx.opset", "must be <= 23"),
])
def test_numbers_beyond_reason_are_located_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], line: str,
                                                  key: str, problem: str) -> None:
    text, number = with_line(line)
    recipe = write(tmp_path / "r.yaml", text)
    code, _, err = run(capsys, "validate", str(recipe))
    assert code == 2, err
    assert f"{recipe}:{number}:" in err and f"{key}: {problem}" in err
    assert "Traceback" not in err and "internal error" not in err


def _numeric_fields(schema: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every integer or number in the recipe schema, by dotted path (``*`` for items and values)."""
    defs = schema.get("$defs", {})
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(node: Any, path: str, seen: frozenset[str]) -> None:
        if not isinstance(node, dict):
            return
        ref = node.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            if name not in seen:
                walk(defs[name], path, seen | {name})
            return
        if node.get("type") in ("integer", "number"):
            found.append((path, node))
        for key, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{key}" if path else key, seen)
        for key in ("items", "additionalProperties"):
            walk(node.get(key), f"{path}.*", seen)
        for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            for sub in node.get(key) or []:
                walk(sub, path, seen)

    walk(schema, "", frozenset())
    return found


def test_every_number_in_the_schema_has_an_upper_bound() -> None:
    fields = _numeric_fields(recipe_json_schema())
    assert len(fields) > 30
    unbounded = [path for path, node in fields if "maximum" not in node and "exclusiveMaximum" not in node]
    assert unbounded == []


def test_features_batch_size_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "features", str(tmp_path / "r.yaml"), "--layers", "layer1", "--out",
                       str(tmp_path / "f.safetensors"), "--batch-size", "100000000000000000000")
    assert code == 2 and "--batch-size" in err and "65536" in err


def test_convert_shard_size_is_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(2)}, src)
    code, _, err = run(capsys, "convert", str(src), str(tmp_path / "w.safetensors"), "--shard-size", "2000TB")
    assert code == 2 and "--shard-size: must be a positive size up to 1TB" in err


@pytest.mark.parametrize("num_classes, hidden", [(1_000_000, [65_536]), (1_000_000, [8192, 8192]), (600_000, [4096])])
def test_a_head_no_memory_holds_is_refused_before_allocation(num_classes: int, hidden: list[int]) -> None:
    with pytest.raises(ModelError) as info:
        build_head(2048, num_classes=num_classes, type="mlp", hidden=hidden)
    assert info.value.paths == [("model", "head")]
    assert "GiB in float32" in str(info.value) and "lower num_classes or the hidden sizes" in str(info.value)


def test_the_largest_allowed_linear_head_on_resnet50_features_is_built_lazily() -> None:
    head = build_head(2048, num_classes=1_000_000, device="meta")  # the bound itself: no memory spent here
    assert head.weight.shape == (1_000_000, 2048)


def test_plan_refuses_a_huge_head_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write(tmp_path / "r.yaml", """\
        name: huge-head
        device: cpu
        model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4},
                head: {num_classes: 1000000, type: mlp, hidden: [65536, 65536]}}
        data: {dataset: fake, image_size: 8}
        train: {epochs: 1}
    """)
    code, _, err = run(capsys, "plan", str(recipe))  # the data is built first: fake holds its images in memory
    assert code == 2 and "model.head.num_classes: the fake dataset makes 32 images" in err, err
    assert "internal error" not in err
    with pytest.raises(RecipecError, match=r"model\.head: the head would hold"):  # and the head on its own
        compile_recipe(load_recipe(recipe))


# --------------------------------------------------------------------------- 7.11 booleans, extends


@pytest.mark.parametrize("line, key, kind", [
    ("train: {epochs: true}", "train.epochs", "a whole number, got true"),
    ("train: {epochs: on}", "train.epochs", "a whole number, got 'on'"),  # YAML 1.2 (issue 23): text
    ("train: {epochs: 'off'}", "train.epochs", None),  # quoted: text, not a boolean, and not a number
    ("model: {arch: resnet18, head: {num_classes: true}}", "model.head.num_classes", "a whole number, got true"),
    ("optimizer: {lr: yes}", "optimizer.lr", "a number, got 'yes'"),
    ("optimizer: {betas: [0.9, false]}", "optimizer.betas.1", "a number, got false"),
])
def test_booleans_are_not_numbers(tmp_path: Path, line: str, key: str, kind: str | None) -> None:
    text, number = with_line(line)
    recipe = write(tmp_path / "r.yaml", text)
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    [problem] = info.value.problems
    assert problem.startswith(f"{recipe}:{number}:") and f"{key}: must be" in problem
    if kind:
        assert kind in problem


def test_set_epochs_on_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write(tmp_path / "r.yaml", BASE)
    code, _, err = run(capsys, "validate", str(recipe), "--set", "train.epochs=on")
    assert code == 2 and "error: --set train.epochs=on: train.epochs: must be a whole number, got 'on'" in err


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["seed", "model.in_channels", "data.batch_size", "data.image_size", "train.epochs",
                        "optimizer.lr", "optimizer.weight_decay", "optimizer.momentum", "data.val_fraction",
                        "train.keep_last", "export.onnx.atol", "model.head.dropout"]),
       st.sampled_from(["true", "false", "on", "off", "yes", "no"]))
def test_no_number_field_takes_a_boolean(key: str, word: str) -> None:
    base = Path(__file__).parent.parent / "recipes" / "quickstart.yaml"
    with pytest.raises(RecipeError) as info:
        load_recipe(base, [f"{key}={word}"])
    assert f"{key}: must be" in info.value.problems[0]


@pytest.mark.parametrize("child", ["extends: base.yaml\n", "# only a comment besides\nextends: base.yaml\n",
                                   "extends: ./base.yaml  # the same\n"])
def test_a_recipe_that_only_extends_is_its_base(tmp_path: Path, child: str) -> None:
    base = write(tmp_path / "base.yaml", BASE)
    write(tmp_path / "child.yaml", child)
    got, want = load_recipe(tmp_path / "child.yaml"), load_recipe(base)
    assert got.model_dump() == want.model_dump()


def test_an_empty_section_in_a_child_still_clears_it(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", textwrap.dedent(BASE) + "freeze: {trainable: [head], unfreeze: {1: [layer4]}}\n")
    write(tmp_path / "child.yaml", "extends: base.yaml\nfreeze: {trainable: [head], unfreeze: {}}\n")
    assert load_recipe(tmp_path / "child.yaml").freeze.unfreeze == {}


# --------------------------------------------------------------------------- 7.14 names


@pytest.mark.parametrize("name, problem", [
    ("n" * 201, "string should have at most 200 characters"),
    ("é" * 150, "must start with a letter or digit"),  # 300 bytes in UTF-8: refused as non-ASCII already
    ("a/b", "must start with a letter or digit"),
    ("..", "must start with a letter or digit"),
    ("a\\0b", "must start with a letter or digit"),
    ("-rf", "must start with a letter or digit"),
])
def test_names_no_file_system_holds_are_validate_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        name: str, problem: str) -> None:
    recipe = write(tmp_path / "r.yaml", BASE.replace("name: base", f'name: "{name}"'))
    code, _, err = run(capsys, "validate", str(recipe))
    assert code == 2 and f"{recipe}:1:7: name: {problem}" in err


def test_the_longest_name_makes_a_run_directory(tmp_path: Path) -> None:
    name = "n" * 200
    assert load_recipe(write(tmp_path / "r.yaml", BASE.replace("name: base", f"name: {name}"))).name == name
    (tmp_path / f"upstream-{name}").mkdir()  # the longest directory recipec derives from a name


# --------------------------------------------------------------------------- 7.12 templates


@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    run_dir = tmp_path / "fake-run"
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text("name: x\nmodel: {arch: resnet18}\n")
    (run_dir / "metrics.jsonl").write_text('{"epoch": 0, "train_loss": 1.0, "val_loss": null, "val_acc": null}\n')
    return run_dir


@pytest.fixture
def quick_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sandbox, "MAX_SECONDS", 1.0)


HOSTILE_TEMPLATES = [
    ("{% for i in range(10**12) %}x{% endfor %}", "larger than a card may use"),
    ("{{ 'x' * 10**10 }}", "str * 10000000000 would hold 10,000,000,000 characters"),
    ("{{ [0] * 10**9 }}", "list * 1000000000"),
    ("{{ 10 ** (10 ** 8) }}", "too large a number"),
    ("{{ 9 ** (9 ** 9) }}", "too large a number"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "more than 10,000,000 steps"),
    ("{% for i in range(99999) %}{% for j in range(99) %}xxxxxxxxxxxxxxx{% endfor %}{% endfor %}",
     "the card would hold"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion too deep"),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     "a '~' concatenation"),
    ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
     "a '+' of two sequences"),
    ("{% set ns = namespace(n=3) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
     "too large a number"),
    ("{{ 'x'|center(10**10) }}", "center(): argument"),
    ("{{ 'x'.ljust(10**10) }}", "ljust(): argument"),
    ("{{ ('x' * 100000)|replace('x', 'y' * 100000) }}", "replace() would hold"),
    ("{{ '{:>99999999999}'.format(1) }}", "format(): a width"),
    ("{{ '%99999999999s' % 1 }}", "a %-format with a width"),
    ("{{ lipsum(10**5) }}", "'lipsum' is undefined"),
    ("{% for c in 'x' * 5000000 %}{% for d in 'x' * 5000000 %}{% endfor %}{% endfor %}", "longer than 1 s"),
    ("{% if 1 %}" * 3000 + "x" + "{% endif %}" * 3000, "nested too deeply"),
]


@pytest.mark.parametrize("text, problem", HOSTILE_TEMPLATES, ids=[t[:40] for t, _ in HOSTILE_TEMPLATES])
@pytest.mark.usefixtures("quick_limits")
def test_templates_cannot_exhaust_memory_or_time(fake_run: Path, tmp_path: Path, text: str, problem: str) -> None:
    template = tmp_path / "evil.md.j2"
    template.write_text(text)
    with pytest.raises(RecipeError) as info:
        render_card(fake_run, template=template)
    assert str(template) in str(info.value) and "card template:" in str(info.value)
    assert problem in str(info.value)


# Every method that changes a list, dict or set in place: the issue's ``l.extend(l)`` forty times was
# killed for memory in 1.7 s. A card never needs to mutate a value; each of these is refused by name.
MUTATING = [("list", "[1, 2]", method, args) for method, args in (
    ("append", "(1)"), ("extend", "(l)"), ("insert", "(0, 1)"), ("pop", "()"), ("remove", "(1)"),
    ("clear", "()"), ("sort", "()"), ("reverse", "()"))] + [("dict", "{'a': 1}", method, args) for method, args in (
    ("update", "(l)"), ("setdefault", "('b', 2)"), ("pop", "('a')"), ("popitem", "()"), ("clear", "()"))] + [
    ("set", "s", method, args) for method, args in (
    ("add", "(3)"), ("update", "([3])"), ("discard", "(1)"), ("remove", "(1)"), ("pop", "()"), ("clear", "()"),
    ("difference_update", "([1])"), ("intersection_update", "([1])"), ("symmetric_difference_update", "([1])"))]


@pytest.mark.parametrize("kind, literal, method, args", MUTATING, ids=[f"{k}.{m}" for k, _, m, _ in MUTATING])
def test_templates_cannot_change_a_value_in_place(kind: str, literal: str, method: str, args: str) -> None:
    env = _sandbox.LimitedSandbox()
    template = env.from_string(f"{{% set l = {literal} %}}{{% set _ = l.{method}{args} %}}{{{{ l }}}}")
    with pytest.raises(jinja2.sandbox.SecurityError, match=rf"{kind}\.{method}\(\) changes a value in place"):
        _sandbox.render_limited(template, {"s": {1, 2}})


def test_doubling_a_list_in_place_is_refused_at_once(fake_run: Path, tmp_path: Path) -> None:
    template = tmp_path / "double.md.j2"
    template.write_text("{% set l = [1] %}{% for i in range(40) %}{% set _ = l.extend(l) %}{% endfor %}{{ l|length }}")
    start = time.monotonic()
    with pytest.raises(RecipeError, match=r"double\.md\.j2:1: card template: list\.extend\(\) changes a value"):
        render_card(fake_run, template=template)
    assert time.monotonic() - start < 1.0


def test_joining_many_references_to_a_long_string_is_bounded() -> None:
    env = _sandbox.LimitedSandbox()
    for text in ("{{ ([s] * 1000)|join }}", "{{ ''.join([s] * 1000) }}"):
        with pytest.raises(_sandbox.TemplateLimit, match=r"join\(\) of 1,000 items would hold 1,000,000,000"):
            _sandbox.render_limited(env.from_string(text), {"s": "x" * 1_000_000})
    assert _sandbox.render_limited(env.from_string("{{ ['a', 'b']|join('-') }}"), {}) == "a-b"


def test_a_hostile_template_is_exit_2_naming_it(fake_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                quick_limits: None) -> None:
    template = tmp_path / "deep.md.j2"
    template.write_text("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")
    code, _, err = run(capsys, "card", str(fake_run), "--template", str(template))
    assert code == 2 and f"error: {template}" in err and "recursion too deep" in err and "Traceback" not in err


def test_ordinary_templates_still_render(fake_run: Path, tmp_path: Path) -> None:
    template = tmp_path / "ok.md.j2"
    template.write_text("{{ 'ab' * 3 }} {{ 2 ** 10 }} {% for i in range(3) %}{{ i }}{% endfor %} {{ 'a' ~ 'b' }} "
                        "{{ 'a-b'|replace('-', '+') }} {{ '%5s'|format('x') }} {{ '{:>4}'.format(7) }} "
                        "{{ recipe.name|center(5) }}\n")
    assert render_card(fake_run, template=template) == "ababab 1024 012 ab a+b     x    7   x\n"


# --------------------------------------------------------------------------- 7.13 checkpoint oddities


def _cyclic() -> list[Any]:
    a: list[Any] = []
    a.append(a)
    return a


def _deep(depth: int) -> dict[str, Any]:
    d: dict[str, Any] = {}
    node = d
    for _ in range(depth):
        node["x"] = {}
        node = node["x"]
    return d


def _shared(levels: int) -> list[Any]:
    node: list[Any] = [0]
    for _ in range(levels):
        node = [node, node]  # 2**levels leaves in a few hundred bytes of pickle
    return node


@pytest.mark.parametrize("value, problem", [
    (_cyclic(), "metadata 'extra' is cyclic"),
    ({"a": [1, {"b": None}], "c": _cyclic()}, "metadata 'extra' is cyclic"),
    (_deep(5000), "metadata 'extra' is nested deeper than 100 levels"),
    (_shared(60), "metadata 'extra' holds more than 1,000,000 values"),
])
@pytest.mark.parametrize("command", ["inspect", "convert"])
def test_cyclic_deep_or_exploding_metadata_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            value: Any, problem: str, command: str) -> None:
    path = tmp_path / "odd.pt"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # for torch.save to write the deep one
    try:
        torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": value}, path)
    finally:
        sys.setrecursionlimit(limit)
    args = [str(path)] if command == "inspect" else [str(path), str(tmp_path / "out.safetensors")]
    code, _, err = run(capsys, command, *args)
    assert code == 2 and problem in err and "internal error" not in err
    with pytest.raises(CheckpointError, match=problem):
        formats.load(path)


SPARSE = {"coo": lambda: torch.eye(3).to_sparse(), "csr": lambda: torch.eye(3).to_sparse_csr()}


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch warns that sparse CSR support is beta
@pytest.mark.parametrize("kind, make, problem", [
    ("meta", lambda: torch.empty(2, 3, device="meta"), "is on the meta device: it has a shape but no data"),
    ("sparse_coo", SPARSE["coo"], "is a sparse_coo tensor; recipec reads dense tensors only"),
    ("sparse_csr", SPARSE["csr"], "is a sparse_csr tensor; recipec reads dense tensors only"),
])
def test_meta_and_sparse_tensors_are_refused_by_load_and_described_by_inspect(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, make: Any, problem: str) -> None:
    path = tmp_path / f"{kind}.pt"
    torch.save({"state_dict": {"fine": torch.ones(2), "odd": make()}}, path)
    with pytest.raises(CheckpointError, match=problem):
        formats.load(path)
    code, _, err = run(capsys, "convert", str(path), str(tmp_path / "out.safetensors"))
    assert code == 2 and f"tensor 'odd' {problem}" in err
    report = inspect_checkpoint(path)
    assert report["unusable"] == ["odd"]
    assert "unusable:   1 meta or sparse tensors, which load refuses: 'odd'" in format_inspect(report)
    if kind == "meta":
        assert next(e for e in report["keys"] if e["key"] == "odd")["device"] == "meta" and report["total_bytes"] == 8


def test_complex_tensors_round_trip_and_are_never_cast_silently(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                                ) -> None:
    value = torch.randn(3, 2, dtype=torch.complex64)
    src = tmp_path / "c.pt"
    torch.save({"state_dict": {"weight": value}}, src)
    # convert: complex64 is a safetensors dtype, and --dtype casts floating tensors only
    code, _, err = run(capsys, "convert", str(src), str(tmp_path / "c.safetensors"), "--dtype", "float16")
    assert code == 0, err
    assert torch.equal(formats.load(tmp_path / "c.safetensors").state_dict["weight"], value)
    assert inspect_checkpoint(tmp_path / "c.safetensors")["dtypes"] == {"complex64": 1}
    # complex128 has no safetensors name: a clear error, not a KeyError
    torch.save({"state_dict": {"weight": value.to(torch.complex128)}}, src)
    code, _, err = run(capsys, "convert", str(src), str(tmp_path / "d.safetensors"))
    assert code == 2 and "tensor 'weight' is complex128, which safetensors cannot store" in err
    # transfer into a real model: refused, the model untouched
    model = torch.nn.Linear(2, 3, bias=False)
    before = model.weight.detach().clone()
    with pytest.raises(TransferError, match="source dtype complex64 cannot be copied into the model's float32"):
        apply_transfer(model, {"weight": value})
    assert torch.equal(model.weight, before)


def test_floats_are_not_truncated_into_integer_buffers() -> None:
    model = torch.nn.BatchNorm1d(2)
    source = {k: v.float() if k == "num_batches_tracked" else v for k, v in model.state_dict().items()}
    source["num_batches_tracked"] = torch.tensor(2.7)
    with pytest.raises(TransferError, match="'num_batches_tracked': source dtype float32 cannot be copied"):
        apply_transfer(model, source)


# --------------------------------------------------------------------------- 7.15 clean output


def test_finite_replaces_nan_and_says_where() -> None:
    data = {"loss": math.nan, "lr": [1e-3, math.inf], "deep": {"x": (-math.inf,)}, "ok": 1.5}
    assert clean_json.finite(data) == {"loss": None, "lr": [1e-3, None], "deep": {"x": [None]}, "ok": 1.5,
                                       "nonfinite": {"loss": "nan", "lr.1": "inf", "deep.x.0": "-inf"}}
    assert clean_json.finite({"a": 1}) == {"a": 1}
    assert clean_json.finite([math.nan]) == [None]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_dumps_is_always_strict_json(value: Any) -> None:
    parsed = strict_json(clean_json.dumps(value))
    if isinstance(value, dict):
        assert set(value) <= set(parsed)


def test_inspect_json_has_no_nan_and_the_text_no_control_characters(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"state_dict": {"w\x1b[2J\x07": torch.ones(2), "b\u202eevil": torch.ones(1)},
                "loss": math.nan, "best": [1.0, -math.inf], "note": "done\r\x1b]0;pwned\x07"}, path)
    code, out, _ = run(capsys, "inspect", "--json", str(path))
    report = strict_json(out)
    assert code == 0 and report["metadata"]["loss"] is None and report["metadata"]["best"] == [1.0, None]
    assert report["nonfinite"] == {"metadata.loss": "nan", "metadata.best.1": "-inf"}
    code, out, _ = run(capsys, "inspect", str(path))
    assert code == 0
    assert not any(c in out for c in "\x1b\x07\r\u202e")
    assert "w\\x1b[2J\\x07" in out and "b\\u202eevil" in out and "\\x1b]0;pwned\\x07" in out


def test_safetensors_names_and_metadata_are_escaped_too(tmp_path: Path) -> None:
    path = tmp_path / "odd.safetensors"
    save_file({"w\x1b[31m": torch.ones(2)}, path, metadata={"k\x1b]0;t\x07": "v\x1b[2J", "format": "pt"})
    text = format_inspect(inspect_checkpoint(path))
    assert "\x1b" not in text and "\x07" not in text
    assert "w\\x1b[31m" in text and "k\\x1b]0;t\\x07: v\\x1b[2J" in text


def test_error_lines_escape_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "inspect", str(tmp_path / "gone\x1b[2J\r.pt"))
    assert code == 2 and "\x1b" not in err and "\r" not in err and "gone\\x1b[2J\\r.pt" in err


@pytest.mark.parametrize("text, shown", [
    ("plain", "plain"), ("tab\tand\nnewline", "tab\tand\nnewline"), ("\x00\x1f\x7f\x85\x9b", "\\x00\\x1f\\x7f\\x85\\x9b"),
    ("rtl\u202e\u2066x", "rtl\\u202e\\u2066x"), ("é中", "é中"),
])
def test_escape(text: str, shown: str) -> None:
    assert escape(text) == shown
    assert "\n" not in escape(text, newlines=False)


def test_plan_json_is_strict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write(tmp_path / "r.yaml", """\
        name: tiny
        device: cpu
        model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 3}}
        data: {dataset: fake, image_size: 8}
        optimizer: {scheduler: {name: cosine}}
        train: {epochs: 3}
    """)
    code, out, err = run(capsys, "plan", str(recipe), "--json")
    assert code == 0, err
    assert strict_json(out)["epochs"] == 3


@pytest.mark.parametrize("args", [["--nproc", "100000"], ["--smoke", "--smoke-batches", "100000000000"]])
def test_build_process_and_batch_counts_are_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    args: list[str]) -> None:
    recipe = write(tmp_path / "r.yaml", BASE)
    code, _, err = run(capsys, "build", str(recipe), "--out", str(tmp_path / "run"), *args)
    assert code == 2 and args[-2] in err and not (tmp_path / "run").exists()


def test_kwargs_num_classes_is_bounded_like_the_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = write(tmp_path / "r.yaml", BASE)
    code, _, err = run(capsys, "validate", str(recipe), "--set", "model.kwargs={num_classes: 100000000000}")
    assert code == 2 and "model.kwargs.num_classes: must be from 1 to 1,000,000, got 100000000000" in err


def test_a_factory_that_cannot_allocate_is_a_model_error() -> None:
    from recipec.model.families import build_architecture

    with pytest.raises(ModelError, match="does not fit in memory") as info:
        build_architecture("resnet18", {"num_classes": 10**12})  # 2e15 bytes, beyond any address space: fails at once
    assert info.value.paths == [("model", "kwargs")]


def test_metadata_json_inside_files_is_strict_too(tmp_path: Path) -> None:
    from recipec.provenance import PROVENANCE_KEY, export_metadata

    meta = export_metadata(recipe_yaml="name: x\n", provenance={"final_metrics": {"val_loss": math.inf, "val_acc": 0.5}})
    assert strict_json(meta[PROVENANCE_KEY]) == {"final_metrics": {"val_loss": None, "val_acc": 0.5},
                                                 "nonfinite": {"final_metrics.val_loss": "inf"}}
    path = tmp_path / "m.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "best": {"loss": math.nan}}, path)
    assert strict_json(formats.read_metadata(path)["best"]) == {"loss": None, "nonfinite": {"loss": "nan"}}


def test_file_system_errors_escape_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file\x1b[2J").write_text("")  # a file where a directory should be: the OS refuses
    code, _, err = run(capsys, "schema", "--out", str(tmp_path / "file\x1b[2J" / "x.json"))
    assert code == 2 and "\x1b" not in err and "file\\x1b[2J" in err


def test_a_sharded_index_nested_thousands_deep_is_a_clear_error(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    save_file({"w": torch.ones(2)}, tmp_path / "m-00001-of-00001.safetensors")
    index = tmp_path / "m.safetensors.index.json"
    deep = "[" * 100_000 + "]" * 100_000
    index.write_text(f'{{"weight_map": {{"w": "m-00001-of-00001.safetensors"}}, "metadata": {{"a": {deep}}}}}')
    for command in ("inspect", "convert"):
        args = [str(index)] if command == "inspect" else [str(index), str(tmp_path / "out.pt")]
        code, _, err = run(capsys, command, *args)
        assert code == 2 and "not a readable JSON index" in err and "internal error" not in err


def test_provenance_nested_thousands_deep_is_a_clear_error() -> None:
    from recipec.provenance import PROVENANCE_KEY, read_export_metadata

    with pytest.raises(CheckpointError, match="nested too deeply to be provenance"):
        read_export_metadata({PROVENANCE_KEY: "[" * 100_000 + "]" * 100_000})


def test_a_card_renders_metrics_with_nonfinite_values(fake_run: Path, tmp_path: Path) -> None:
    line = clean_json.dumps({"epoch": 0, "train_loss": math.nan, "val_loss": math.inf, "val_acc": 0.5})
    (fake_run / "metrics.jsonl").write_text(line + "\n")
    assert strict_json(line)["nonfinite"] == {"train_loss": "nan", "val_loss": "inf"}
    template = tmp_path / "t.md.j2"
    template.write_text("{{ metrics[-1].train_loss|num }} {{ metrics[-1].val_acc|pct }} {{ {'loss': 'nan'|float}|json }}\n")
    assert render_card(fake_run, template=template) == '— 50.00 % {"loss": null, "nonfinite": {"loss": "nan"}}\n'
