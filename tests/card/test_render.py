"""The model card: rendered from a real (tiny) run directory, front matter that parses, nothing made up."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from recipec.pipeline.build import build
from recipec.card.render import DEFAULT_TEMPLATE, _num, card_context, render_card, write_card
from recipec.errors import RecipeError, RunDirectoryError
from recipec.recipe.load import load_recipe

ROOT = Path(__file__).parents[2]

TINY = """\
    name: tiny-card
    seed: 0
    device: cpu
    model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 10}}
    data: {dataset: digits, image_size: 8, per_class: 10}
    train: {epochs: 2}
"""

# Starts from the tiny run's export, without its head; min_delta makes early stopping fire after epoch 1.
DOWNSTREAM = """\
    name: tiny-transfer
    seed: 0
    device: cpu
    model: {arch: "tests.tinynets:tiny_cnn", kwargs: {width: 4}, head: {num_classes: 3}}
    source: {checkpoint: CHECKPOINT, exclude: ['^8\\.']}
    groups:
      - {name: body, match: ['^[0-4]\\.']}
      - {name: head, match: ['^8\\.']}
    freeze: {trainable: [head]}
    data: {dataset: digits, image_size: 8, per_class: 10, classes: ['1', '7', '9']}
    train: {epochs: 3, early_stopping: {metric: val_loss, patience: 1, min_delta: 100}}
"""


def _build(root: Path, name: str, body: str) -> Path:
    recipe = root / f"{name}.yaml"
    recipe.write_text(textwrap.dedent(body))
    return build(load_recipe(recipe), out=root / name)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("card"), "run", TINY)


@pytest.fixture(scope="module")
def transfer_run(run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    body = DOWNSTREAM.replace("CHECKPOINT", json.dumps(str(run / "model.safetensors")))
    return _build(tmp_path_factory.mktemp("card"), "transfer", body)


@pytest.fixture
def copy(run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run to edit."""
    target = tmp_path / "copy"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("checkpoints", "README.md"))
    return target


def _split(card: str) -> tuple[dict[str, Any], str]:
    match = re.match(r"---\n(.*?)\n---\n(.*)", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1)), match.group(2)


def _edit_recipe(run_dir: Path, **card: Any) -> None:
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe["card"].update(card)
    (run_dir / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_front_matter_is_yaml_with_the_hugging_face_fields(run: Path) -> None:
    meta, _ = _split(render_card(run))
    last = _metrics(run)[-1]
    assert meta["library_name"] == "pytorch"
    assert meta["tags"] == ["recipec", "image-classification"]
    assert meta["datasets"] == ["digits"] and meta["metrics"] == ["accuracy"]
    assert "license" not in meta  # not set in the recipe: left out, not guessed
    assert "base_model" not in meta and "base_model_relation" not in meta  # random initialisation
    (result,) = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == "tiny-card"
    assert result["task"]["type"] == "image-classification"
    assert result["metrics"][0]["type"] == "accuracy"
    assert result["metrics"][0]["value"] == pytest.approx(last["val_acc"], rel=1e-3)


def test_license_tags_and_use_come_from_the_card_section(copy: Path) -> None:
    _edit_recipe(copy, license="mit", tags=["digits", "needs: quoting # really"],
                 intended_use="Reading **handwritten** digits.", limitations="Trained on 100 images.")
    meta, body = _split(render_card(copy))
    assert meta["license"] == "mit"
    assert meta["tags"] == ["recipec", "image-classification", "digits", "needs: quoting # really"]
    assert "## Intended use\n\nReading **handwritten** digits.\n" in body
    assert "## Limitations\n\nTrained on 100 images.\n" in body


def test_unknown_sections_are_left_out_without_placeholders(run: Path) -> None:
    _, body = _split(render_card(run))
    prose = body.split("## Provenance")[0]  # the recipe block below quotes null values verbatim
    for heading in ("## Intended use", "## Limitations", "## Transfer"):
        assert heading not in body
    for word in ("None", "null", "TODO", "{{", "{%", "—"):
        assert word not in prose, word
    lines = body.splitlines()
    headings = [i for i, line in enumerate(lines) if line.startswith("#")]
    for i in headings:  # every heading has content before the next one
        following = next((line for line in lines[i + 1:] if line.strip()), "")
        assert following and not following.startswith("#"), lines[i]
    assert "\n\n\n" not in body


def test_card_describes_the_run(run: Path) -> None:
    _, body = _split(render_card(run))
    plan = json.loads((run / "plan.json").read_text())
    assert f"{plan['parameters']['total']:,} total" in body
    assert "- **Initialisation:** random (no pretrained weights)" in body
    assert "**Classes (10):** `0`, `1`, `2`" in body
    assert "**Few-shot cap:** at most 10 training images per class" in body
    assert f"**Split:** {plan['data']['sizes']['train']} training and {plan['data']['sizes']['val']} validation" in body
    group = plan["groups"][0]
    assert f"| {group['name']} | {group['params']:,} | epoch 0 | {group['lr'][0]:.3e} |" in body
    assert 'recipec.load("model.safetensors")' in body and "| `model.safetensors` | " in body
    assert "<details>" in body and (run / "recipe.yaml").read_text().strip() in body


def test_the_card_names_the_versions_of_the_installed_extras(run: Path) -> None:
    import importlib.metadata

    _, body = _split(render_card(run))
    software = next(line for line in body.splitlines() if line.startswith("- **Software:** "))
    assert f"torch {importlib.metadata.version('torch')}" in software
    for extra in ("timm", "tensorboard", "mlflow", "huggingface_hub"):  # the test extra installs them
        assert f"{extra} {importlib.metadata.version(extra)}" in software


def test_metrics_in_the_card_are_those_of_metrics_jsonl(run: Path) -> None:
    _, body = _split(render_card(run))
    metrics = _metrics(run)
    last = metrics[-1]
    assert (f"validation accuracy **{last['val_acc']:.4g}** ({100 * last['val_acc']:.2f} %), "
            f"validation loss {last['val_loss']:.4g}, training loss {last['train_loss']:.4g}") in body
    for m in metrics:
        assert f"| {m['epoch']} | {m['train_loss']:.4g} | {m['val_loss']:.4g} | {m['val_acc']:.4g} |" in body


def test_curves_are_shown_when_the_run_has_them(run: Path, copy: Path) -> None:
    assert "![training curves](curves.png)" in render_card(run)
    (copy / "curves.png").unlink()
    assert "curves.png" not in render_card(copy)


def test_a_run_without_validation_has_no_model_index(copy: Path) -> None:
    lines = [{**m, "val_loss": None, "val_acc": None} for m in _metrics(copy)]
    (copy / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    meta, body = _split(render_card(copy))
    assert "model-index" not in meta and meta["metrics"] == ["accuracy"]
    assert "No validation split" in body and "val accuracy" not in body
    assert f"| 1 | {lines[-1]['train_loss']:.4g} | layer" not in body  # columns dropped, not left empty
    assert f"| 1 | {lines[-1]['train_loss']:.4g} | " in body


def test_transfer_run_names_its_base_model_and_the_load_report(run: Path, transfer_run: Path) -> None:
    meta, body = _split(render_card(transfer_run))
    assert meta["base_model"] == "model.safetensors"  # an absolute path is reduced to the file's name
    assert meta["base_model_relation"] == "finetune"
    digest = hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    assert f"sha256 `{digest}`" in body
    transfer = body.split("## Transfer")[1].split("\n## ")[0]
    report = json.loads((transfer_run / "plan.json").read_text())["load_report"]
    assert f"{len(report['loaded'])} loaded" in transfer and "2 excluded" in transfer
    for key in ("8.bias", "8.weight"):  # the new head's names, in the model and, excluded, in the source
        assert f"| `{key}` | model | new head, initialised fresh |" in transfer
        assert f"| `{key}` | source | excluded by `^8\\.` |" in transfer
    assert "/" not in transfer  # the source file by name, not by its absolute path
    assert "| head | 27 | epoch 0 |" in body and "| body | " in body and "never (frozen)" in body
    assert "**Epochs:** 2 of 3 planned" in body
    assert "**Early stopping:** stopped after epoch 1: val_loss did not improve for 1 epoch\n" in body


def test_pretrained_weights_are_the_base_model(copy: Path) -> None:
    plan = json.loads((copy / "plan.json").read_text())
    plan["weights"] = {"name": "ResNet18_Weights.IMAGENET1K_V1", "url": "https://download.pytorch.org/x.pth"}
    (copy / "plan.json").write_text(json.dumps(plan))
    meta, body = _split(render_card(copy))
    assert meta["base_model"] == "ResNet18_Weights.IMAGENET1K_V1" and meta["base_model_relation"] == "finetune"
    assert "- **Pretrained weights:** torchvision `ResNet18_Weights.IMAGENET1K_V1`" in body
    assert "Initialisation" not in body


def test_a_bare_run_directory_still_renders_what_it_knows(copy: Path) -> None:
    for name in ("plan.json", "model.safetensors", "curves.png"):
        (copy / name).unlink()
    meta, body = _split(render_card(copy))
    prose = body.split("## Provenance")[0]
    assert meta["library_name"] == "pytorch" and "model-index" in meta
    for absent in ("## How to load", "## Transfer", "**Parameters:**", "**Software:**", "**Trained:**", "| group |",
                   "None", "—", "Classes ("):
        assert absent not in prose, absent
    assert not re.search(r"\b0 classes", body)
    assert "for 10 classes of digits" in body and "logits over 10 classes" in body
    assert "## Evaluation" in body and "**Dataset:** digits" in body


def test_a_custom_template(run: Path, tmp_path: Path) -> None:
    template = tmp_path / "mine.md.j2"
    template.write_text("{{ name }} {{ evaluation.final.val_acc | num }} {{ model.params_total | count }}\n")
    last, total = _metrics(run)[-1], json.loads((run / "plan.json").read_text())["parameters"]["total"]
    assert render_card(run, template=template) == f"tiny-card {last['val_acc']:.4g} {total:,}\n"


def test_the_recipe_card_template_is_the_default(copy: Path, tmp_path: Path) -> None:
    template = tmp_path / "from-recipe.j2"
    template.write_text("from the recipe: {{ name }}\n")
    _edit_recipe(copy, template=str(template))
    assert render_card(copy) == "from the recipe: tiny-card\n"
    assert render_card(copy, template=DEFAULT_TEMPLATE).startswith("---\n")


@pytest.mark.parametrize(("text", "where", "what"), [
    ("# {{ name }}\n\n{% if name %}\nunclosed\n", "bad.j2:4", "endif"),
    ("# {{ name }}\n{{ no_such_value }}\n", "bad.j2:2", "no_such_value"),
    ("# {{ name }}\n\n{{ name | no_such_filter }}\n", "bad.j2:3", "no_such_filter"),
    ('# ok\n\n\n{% include "missing.j2" %}\n', "bad.j2:4", "missing.j2"),
])
def test_a_broken_template_names_its_file_and_line(run: Path, tmp_path: Path, text: str, where: str,
                                                   what: str) -> None:
    template = tmp_path / "bad.j2"
    template.write_text(text)
    with pytest.raises(RecipeError, match=re.escape(where)) as info:
        render_card(run, template=template)
    assert what in str(info.value) and info.value.exit_code == 2


def test_a_missing_template(run: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not found"):
        render_card(run, template=tmp_path / "nope.j2")


def test_missing_run_directory_or_files(tmp_path: Path) -> None:
    with pytest.raises(RunDirectoryError, match="no such run directory") as info:
        card_context(tmp_path / "nowhere")
    assert info.value.exit_code == 2
    (tmp_path / "plan.json").write_text("{}")
    with pytest.raises(RunDirectoryError) as info:
        render_card(tmp_path)
    assert len(info.value.problems) == 2
    assert "recipe.yaml is missing" in info.value.problems[0] and "metrics.jsonl is missing" in info.value.problems[1]
    (tmp_path / "recipe.yaml").write_text("name: x\n")
    (tmp_path / "metrics.jsonl").write_text("{not json\n")
    with pytest.raises(RunDirectoryError, match="metrics.jsonl: not valid"):
        render_card(tmp_path)


def test_write_card_is_atomic_and_idempotent(copy: Path, tmp_path: Path) -> None:
    path = write_card(copy)
    assert path == copy / "README.md"
    first = path.read_bytes()
    assert write_card(copy) == path and path.read_bytes() == first
    assert not [p.name for p in copy.iterdir() if p.name.endswith(".tmp")]
    broken = tmp_path / "broken.j2"
    broken.write_text("{{ nothing_here }}")
    with pytest.raises(RecipeError):
        write_card(copy, template=broken)
    assert path.read_bytes() == first  # a failing render leaves the old card
    other = write_card(copy, out=tmp_path / "cards" / "CARD.md")
    assert other.read_bytes() == first


def test_the_shipped_template_travels_inside_the_package() -> None:
    shipped = importlib.resources.files("recipec").joinpath("templates/card.md.j2")
    assert shipped.is_file() and DEFAULT_TEMPLATE.is_file()
    assert shipped.read_text() == (ROOT / "templates" / "card.md.j2").read_text()


@pytest.mark.parametrize(("value", "text"), [
    (0.2590529, "0.2591"), (2.1962374, "2.196"), (1234567, "1,234,567"), (12345.67, "12,346"),
    (8.41653e-06, "8.417e-06"), (0.0, "0"), (None, "—"),
])
def test_numbers_read_with_four_significant_digits(value: Any, text: str) -> None:
    assert _num(value) == text


def test_importing_the_renderer_does_not_import_torch() -> None:
    code = "import sys, recipec.card.render; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


def test_templates_run_sandboxed(tmp_path):
    from recipec.card import render

    evil = tmp_path / "evil.j2"
    evil.write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}\n")
    run_dir = tmp_path / "fake-run"
    run_dir.mkdir()
    (run_dir / "recipe.yaml").write_text("name: x\nmodel: {arch: resnet18}\n")
    (run_dir / "metrics.jsonl").write_text('{"epoch": 0, "train_loss": 1.0, "val_loss": null, "val_acc": null}\n')
    from recipec.errors import RecipecError

    with pytest.raises(RecipecError) as info:
        render.render_card(run_dir, template=evil)
    assert "evil.j2" in str(info.value) and info.value.exit_code == 2
