"""Checks of a recipe's inputs before any compute: every path it names, and its data.

``recipec plan`` and ``recipec build`` call :func:`check_inputs` first, so a wrong data
root, a missing source checkpoint and a missing card template are reported together, each
located in the recipe, instead of one per try. The paths are
:func:`recipec.recipe.paths.path_problems`'s (the loader reports them too); the image files are
:mod:`recipec.data.images`'s.
"""

from __future__ import annotations

import os
from typing import Any

from recipec.recipe.checks import hub_problem
from recipec.errors import DatasetError, Problem
from recipec.compiler.data_config import DATA_FIELDS
from recipec.data.folders import split_folder_examples
from recipec.data.images import bad_images, has_image
from recipec.data.manifest import manifest_examples
from recipec.data.multilabel import manifest_classes
from recipec.recipe.catalog import IMAGE_EXTENSIONS, TORCHVISION
from recipec.recipe.paths import path_problems

__all__ = ["check_inputs", "data_problems"]


def data_problems(recipe: Any) -> list[Problem]:
    """The data's classes against the recipe: class folders with images, data.classes, the head's class count."""
    d = recipe.data
    if d.dataset == "fake":
        return []
    problems: list[Problem] = []
    if d.dataset == "digits":
        names = [str(i) for i in range(10)]
    elif d.dataset in TORCHVISION:
        known = TORCHVISION[d.dataset]
        if not d.root or not os.path.isdir(d.root):
            return []  # path_problems says so
        if not os.path.exists(os.path.join(d.root, known.folder)):
            return [(("data", "root"), f"no {d.dataset} files under {d.root} (expected {os.path.join(d.root, known.folder)})")]
        names = [str(i) for i in range(known.num_classes)]
    else:
        if not d.root or not (os.path.isfile(d.root) if d.dataset == "manifest" else os.path.isdir(d.root)):
            return []
        split = d.dataset == "manifest" or os.path.isdir(os.path.join(d.root, "train"))
        if split:  # a manifest, or root/train, root/val, root/test: the training part fixes the classes
            try:
                if getattr(recipe, "task", "multiclass") == "multilabel":  # labels separated by ';'
                    names = manifest_classes(d.root)
                else:
                    names = (manifest_examples if d.dataset == "manifest" else split_folder_examples)(d.root).names
            except DatasetError as exc:
                located = exc.relabeled(DATA_FIELDS)
                return [(p, message) if p else message for p, message in zip(located.paths, located.messages)]
        else:
            names = sorted(e.name for e in os.scandir(d.root) if e.is_dir())
        if not names:
            return [(("data", "root"), f"{d.root} has no class folders (dataset imagefolder needs root/<class>/<image>)")]
        folder = os.path.join(d.root, "train") if split else d.root
        for name in [] if d.dataset == "manifest" else names if d.classes is None else [n for n in d.classes if n in names]:
            if not has_image(os.path.join(folder, name)):
                problems.append((("data", "root"), f"class folder {os.path.join(folder, name)} holds no images "
                                                   f"({', '.join(IMAGE_EXTENSIONS)}); add some or remove the folder"))
    chosen = names
    if d.classes is not None:
        for i, name in enumerate(d.classes):
            if name not in names:
                problems.append((("data", "classes", i), f"unknown class {name!r}; available: {', '.join(names)}"))
        chosen = [n for n in d.classes if n in names]
    head = recipe.model.head
    if head is not None and chosen and head.num_classes != len(chosen) and len(chosen) == len(d.classes or names):
        shown = ", ".join(chosen[:10]) + (", ..." if len(chosen) > 10 else "")
        problems.append((("model", "head", "num_classes"),
                         f"is {head.num_classes} but the data has {len(chosen)} classes ({shown}); "
                         f"set it to {len(chosen)} or pick classes with data.classes"))
    return problems


def check_inputs(recipe: Any, *, scan_images: bool = False) -> None:
    """Raise every problem of :func:`recipec.recipe.paths.path_problems` and :func:`data_problems` at once.

    Args:
        recipe: a validated recipe (paths absolute, as :func:`recipec.load_recipe` makes them).
        scan_images: also decode every image of an imagefolder dataset (``recipec plan`` does):
            with ``data.on_bad_image: error`` each unreadable file is a problem.

    Raises:
        DatasetError: one located problem per missing path, empty class folder, unknown class,
            class-count mismatch (and unreadable image), and a hub export the model cannot have.
    """
    problems: list[Problem] = [*path_problems(recipe.model_dump(mode="python")), *data_problems(recipe)]
    if "hub" in recipe.export.formats:  # a folder timm or torchvision must load: known before any training
        head = recipe.model.head
        why = hub_problem(recipe.model.arch, head_type=head.type if head else None, in_channels=recipe.model.in_channels)
        problems += [(("export", "formats"), why)] if why else []
    d = recipe.data
    if (scan_images and not problems and d.dataset in ("imagefolder", "manifest") and d.root
            and getattr(d, "on_bad_image", "error") == "error"):
        problems += [(("data", "root"), f"unreadable image {path}: {why} (fix or remove it, or set "
                                        "data.on_bad_image: skip)") for path, why in bad_images(d.root, d.classes)]
    if problems:
        raise DatasetError(problems)
