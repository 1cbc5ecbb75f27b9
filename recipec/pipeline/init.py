"""``recipec init``: a commented recipe for a data folder or manifest, that validates and plans.

The data is read by :func:`recipec.pipeline.init_data.read_layout` (folder names and manifest
columns, torch-free). The recipe fine-tunes a pretrained model the way the
shipped recipes do: the new head alone first (on cached features), then one more layer group
from the top every two epochs, each group at a smaller learning rate. The text is validated
(schema, architecture, paths) before it is written, atomically, so init never leaves a recipe
that ``recipec validate`` refuses.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from recipec._atomic import atomic_write_text
from recipec._files import check_output
from recipec.errors import OutputError, RecipeError
from recipec.pipeline.init_data import DataLayout, read_layout
from recipec.recipe._yaml import parse_value, read_embedded
from recipec.recipe.archs import arch_problem, family_name, hf_name, timm_name
from recipec.recipe.checks import recipe_problems
from recipec.recipe.load import relative_paths, resolve_paths
from recipec.recipe.schema import SCHEMA_FILE
from recipec.recipe.spec import Recipe

__all__ = ["init_recipe", "recipe_text"]

_SHOWN = 10  # classes named in the recipe's comment


def recipe_text(layout: DataLayout, *, arch: str, out: str | os.PathLike[str], command: str) -> str:
    """The commented recipe for ``layout``, with ``data.root`` relative to ``out``'s folder where they share one."""
    folder = os.path.dirname(os.path.abspath(out))
    root = None if layout.root is None else relative_paths({"data": {"root": layout.root}}, folder)["data"]["root"]
    schema = SCHEMA_FILE  # the installed copy (recipec schema --path)
    common = os.path.commonpath([str(schema), folder])
    uri = os.path.relpath(schema, folder) if os.path.dirname(common) != common else schema.as_uri()
    digits = layout.dataset == "digits"
    named = ", ".join(_shown(c) for c in layout.classes[:_SHOWN]) + (", ..." if len(layout.classes) > _SHOWN else "")
    family = family_name(arch)
    what = {"timm": f"timm's {timm_name(arch)}", "hf": f"the transformers model {hf_name(arch)}"}.get(
        family, f"torchvision's {arch}")
    groups = "layer4, then layer3, ..." if arch == "resnet18" else "`recipec plan` names them"
    data_name = "digits" if layout.root is None else Path(layout.root).stem if layout.dataset == "manifest" \
        else Path(layout.root).name
    short = {"timm": timm_name(arch), "hf": hf_name(arch).rstrip("/").rpartition("/")[2]}.get(family, arch)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{data_name}-{short}")
    name = name.lstrip("._-")[:100] or "recipe"
    lines = [
        f"# yaml-language-server: $schema={uri}",
        f"# run: recipec build {_shown(os.fspath(out))}",
        "#",
        f"# Written by `{_shown(command)}`: {what} with its pretrained weights and a new",
        f"# {len(layout.classes)}-class head ({named}) for {_shown(layout.layout)}.",
        "# The head trains alone for two epochs (on cached features), then one more layer group joins",
        "# from the top every two epochs, each at a smaller learning rate (discriminative: lr / 2.6 per",
        "# group down). `recipec plan` shows the groups, their learning rates at every epoch and the",
        "# data's splits before anything trains; every key is described in the schema named above.",
        f"name: {name}",
        "seed: 0",
        _c("device: auto", "auto | cpu | cuda | cuda:N | mps"),
        *([_c("task: multilabel", "labels separated by ';' in the manifest")] if layout.multilabel else []),
        "",
        "model:",
        f"  arch: {arch}",
        _c("  weights: DEFAULT", "its default pretrained weights, read from the local cache; fetched once"),
        _c("", "with RECIPEC_ALLOW_DOWNLOAD=1, or null: start from random weights"),
        f"  head: {{num_classes: {len(layout.classes)}, type: linear, dropout: 0.1}}",
        "",
        "freeze:",
        _c("  trainable: [head]", "epochs 0-1: the new head alone"),
        _c("  gradual: {every: 2, start: 2}", f"then one more group from the top every 2 epochs ({groups})"),
        _c("  batchnorm: frozen", "BatchNorm of frozen groups stays in eval mode"),
        "",
        "optimizer:",
        "  name: adamw",
        _c("  lr: 1.0e-3", "the head's lr; the group below gets lr / 2.6, the next lr / 2.6**2, ..."),
        "  lr_decay: 2.6",
        "  weight_decay: 0.01",
        "  scheduler: {name: cosine, warmup_epochs: 0}",
        "",
        "data:",
        f"  dataset: {layout.dataset}",
        *([] if root is None else [f"  root: {_scalar(root)}"]),
        *([_c("  val_fraction: 0.2", "held out for validation, as the data has no val split")]
          if layout.dataset != "digits" and not layout.has_val else []),
        _c(f"  image_size: {32 if digits else 224}", "the 8x8 digits, upsampled" if digits else
           "the input size of ImageNet weights; smaller is faster"),
        _c("  normalize: from_weights", "the mean and std the weights were trained with"),
        *([] if digits else [_c("  augment: [hflip]", "drop it for images whose left and right differ (text)")]),
        f"  batch_size: {64 if digits else 32}",
        "",
        "train:",
        "  epochs: 10",
        "",
        "export:",
        _c("  formats: [safetensors]", "+ torch, onnx"),
    ]
    return "\n".join(lines) + "\n"


def _c(text: str, comment: str) -> str:
    """``text`` with a trailing comment at column 34, as in the shipped recipes."""
    return f"{text:<32} # {comment}"


def init_recipe(data: str | None, *, arch: str = "resnet18", out: str | os.PathLike[str] = "recipe.yaml",
                force: bool = False, command: str = "recipec init") -> DataLayout:
    """Write a recipe for ``data`` (see :func:`read_layout`) to ``out``; nothing is written on any error.

    Args:
        data: a folder of class folders or split folders, a manifest file, or None (the digits).
        arch: ``model.arch``: a torchvision classification model or ``timm/<name>``.
        out: the recipe file to write (YAML).
        force: replace ``out`` when it exists.
        command: the command line, for the recipe's first comment.

    Returns:
        What was read of the data.

    Raises:
        RecipeError: an unknown or unsupported ``arch``.
        OutputError: ``out`` exists (without ``force``), is a folder or special file, or is not ``.yaml``/``.yml``.
        DatasetError: as :func:`read_layout`.

    Example:
        >>> init_recipe("data/pets", out="pets.yaml").classes
        ('cat', 'dog')
    """
    problem = arch_problem(arch) if family_name(arch) != "factory" else (
        "recipec init writes recipes for torchvision and timm/<name> architectures; for your own factory, "
        "write model.arch and groups into a recipe yourself")
    if problem is not None:
        raise RecipeError(f"--arch {arch}: {problem}")
    target = check_output(out, what="the recipe")
    if not target.name.lower().endswith((".yaml", ".yml")):
        raise OutputError(f"{target}: recipec init writes a commented YAML recipe; name it .yaml or .yml")
    if target.exists() and not force:
        raise OutputError(f"{target}: exists; recipec init does not overwrite it: choose another --out, or add --force")
    layout = read_layout(data)
    text = recipe_text(layout, arch=arch, out=target, command=command)
    _check(text, target)
    atomic_write_text(target, text)
    return layout


def _check(text: str, out: Path) -> None:
    """The written text must load and pass validate's checks; anything else is a bug of init."""
    raw = resolve_paths(read_embedded(text, "recipec init's recipe"), os.path.dirname(os.path.abspath(out)))
    problems = recipe_problems(Recipe.model_validate(raw))
    if problems:
        raise AssertionError(f"recipec init wrote a recipe that validate refuses: {problems}")


def _shown(text: str) -> str:
    """A name for a comment line: as it is, or quoted when it holds a line break or another control character."""
    return text if text.isprintable() else json.dumps(text)


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar that a recipe file reads back as the same string (quoted unless plain is safe)."""
    return text if re.fullmatch(r"[A-Za-z0-9_./][A-Za-z0-9_./-]*", text) and parse_value(text, "") == text \
        else json.dumps(text)
