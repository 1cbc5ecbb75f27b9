"""Checks of a recipe's inputs before any compute: every path it names, and its data.

``recipec plan`` and ``recipec build`` call :func:`check_inputs` first, so a wrong data
root, a missing source checkpoint and a missing card template are reported together, each
located in the recipe, instead of one per try. :func:`path_problems` reads raw recipe data,
so the loader can report them beside a missing ``extends`` file too.

This module never imports torch at module level.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from recipec.errors import DatasetError, Problem, RecipePath, format_path

__all__ = ["IMAGE_EXTENSIONS", "bad_images", "check_inputs", "data_problems", "decodes", "path_problems"]

# torchvision.datasets.folder.IMG_EXTENSIONS: the files ImageFolder reads
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# dataset -> (class count, the folder under root that torchvision reads)
_TORCHVISION = {"cifar10": (10, "cifar-10-batches-py"), "cifar100": (100, "cifar-100-python"),
                "mnist": (10, "MNIST/raw"), "fashionmnist": (10, "FashionMNIST/raw")}
_FILE_DATASETS = ("imagefolder", *_TORCHVISION)


def path_problems(data: Mapping[Any, Any]) -> list[tuple[RecipePath, str]]:
    """Every path of raw recipe data (paths already absolute) that does not exist or has the wrong kind."""
    def at(*path: str) -> Any:
        node: Any = data
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        return node if isinstance(node, str) and node.strip() else None

    problems: list[tuple[RecipePath, str]] = []
    checkpoint = at("source", "checkpoint")
    if checkpoint is not None and not os.path.isfile(checkpoint):
        problems.append((("source", "checkpoint"),
                         f"{checkpoint} is a directory; name the checkpoint file in it" if os.path.isdir(checkpoint)
                         else _not_regular(checkpoint) if os.path.exists(checkpoint)
                         else f"no such file {checkpoint} (a .pt/.pth/.bin/.ckpt, .safetensors or *.index.json file)"))
    upstream = at("source", "recipe")
    if upstream is not None and not os.path.isfile(upstream):
        problems.append((("source", "recipe"), f"no such recipe file {upstream}"))
    dataset = at("data", "dataset") or "digits"
    root = at("data", "root")
    if root is not None and dataset == "manifest" and not os.path.isfile(root):
        problems.append((("data", "root"), f"{root} is a directory; name the manifest file in it (.csv or .jsonl)"
                         if os.path.isdir(root) else _not_regular(root) if os.path.exists(root)
                         else f"no such manifest file {root} (dataset manifest needs a .csv or .jsonl file)"))
    if root is not None and dataset in _FILE_DATASETS and not os.path.isdir(root):
        layout = "root/<class>/<image>" if dataset == "imagefolder" else f"root/{_TORCHVISION[dataset][1]}"
        what = "is not a directory" if os.path.exists(root) else "does not exist"
        problems.append((("data", "root"), f"{root} {what} (dataset {dataset} needs {layout})"))
    template = at("card", "template")
    if template is not None and not os.path.isfile(template):
        problems.append((("card", "template"), _not_regular(template) if os.path.exists(template) else
                         f"no such template file {template}; give an existing Jinja2 file "
                         "or remove card.template for the shipped card"))
    return problems


def _not_regular(path: str) -> str:
    """A path that exists but is a FIFO, a device, a socket (or a link to one): never opened."""
    from recipec._files import kind_of

    return f"{path} is {kind_of(os.stat(path).st_mode)}, not a regular file; name a regular file"


def data_problems(recipe: Any) -> list[Problem]:
    """The data's classes against the recipe: class folders with images, data.classes, the head's class count."""
    d = recipe.data
    if d.dataset == "fake":
        return []
    problems: list[Problem] = []
    if d.dataset == "digits":
        names = [str(i) for i in range(10)]
    elif d.dataset in _TORCHVISION:
        count, folder = _TORCHVISION[d.dataset]
        if not d.root or not os.path.isdir(d.root):
            return []  # path_problems says so
        if not os.path.exists(os.path.join(d.root, folder)):
            return [(("data", "root"), f"no {d.dataset} files under {d.root} (expected {os.path.join(d.root, folder)})")]
        names = [str(i) for i in range(count)]
    else:
        if not d.root or not (os.path.isfile(d.root) if d.dataset == "manifest" else os.path.isdir(d.root)):
            return []
        split = d.dataset == "manifest" or os.path.isdir(os.path.join(d.root, "train"))
        if split:  # a manifest, or root/train, root/val, root/test: the training part fixes the classes
            from recipec.data.datasets import manifest_examples, split_folder_examples

            try:
                if getattr(recipe, "task", "multiclass") == "multilabel":  # labels separated by ';'
                    from recipec.data.multilabel import manifest_classes

                    names = manifest_classes(d.root)
                else:
                    names = (manifest_examples if d.dataset == "manifest" else split_folder_examples)(d.root).names
            except DatasetError as exc:
                return [(p, text[len(format_path(p)) + 2:]) if p else text for p, text in zip(exc.paths, exc.problems)]
        else:
            names = sorted(e.name for e in os.scandir(d.root) if e.is_dir())
        if not names:
            return [(("data", "root"), f"{d.root} has no class folders (dataset imagefolder needs root/<class>/<image>)")]
        folder = os.path.join(d.root, "train") if split else d.root
        for name in [] if d.dataset == "manifest" else names if d.classes is None else [n for n in d.classes if n in names]:
            if not _has_image(os.path.join(folder, name)):
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


def bad_images(root: str, classes: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(file, reason)`` for every image under the class folders of ``root`` (of ``root/train``,
    ``root/val`` and ``root/test`` when there are split folders), or listed by the manifest file
    ``root``, that cannot be decoded.

    JPEGs are decoded at reduced scale (``draft``), which still reads every byte, so a
    truncated file is found at a fraction of the cost of a full decode.
    """
    if os.path.isfile(root):  # a manifest: every file it lists
        from recipec.data.datasets import read_manifest

        return [(row.path, why) for row in read_manifest(root) if (why := decodes(row.path)) is not None]
    found = []
    folders = [os.path.join(root, s) for s in sorted(os.listdir(root)) if s in ("train", "val", "valid", "validation", "test")
               ] if os.path.isdir(os.path.join(root, "train")) else [root]
    for folder in folders:
        for name in sorted(e.name for e in os.scandir(folder) if e.is_dir()):
            if classes is not None and name not in classes:
                continue
            for path in _images(os.path.join(folder, name)):
                why = decodes(path)
                if why is not None:
                    found.append((path, why))
    return found


def decodes(path: str) -> str | None:
    """None when the image file decodes, else why not."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; every byte is still read
            image.load()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        return str(exc) or type(exc).__name__
    return None


def check_inputs(recipe: Any, *, scan_images: bool = False) -> None:
    """Raise every problem of :func:`path_problems` and :func:`data_problems` at once.

    Args:
        recipe: a validated recipe (paths absolute, as :func:`recipec.load_recipe` makes them).
        scan_images: also decode every image of an imagefolder dataset (``recipec plan`` does):
            with ``data.on_bad_image: error`` each unreadable file is a problem.

    Raises:
        DatasetError: one located problem per missing path, empty class folder, unknown class,
            class-count mismatch (and unreadable image).
    """
    problems: list[Problem] = [*path_problems(recipe.model_dump(mode="python")), *data_problems(recipe)]
    d = recipe.data
    if (scan_images and not problems and d.dataset in ("imagefolder", "manifest") and d.root
            and getattr(d, "on_bad_image", "error") == "error"):
        problems += [(("data", "root"), f"unreadable image {path}: {why} (fix or remove it, or set "
                                        "data.on_bad_image: skip)") for path, why in bad_images(d.root, d.classes)]
    if problems:
        raise DatasetError(problems)


def _images(folder: str) -> list[str]:
    """Image files under ``folder``, recursively and sorted, as ImageFolder finds them."""
    out = []
    for directory, _, files in sorted(os.walk(folder, followlinks=True)):
        out += [os.path.join(directory, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return out


def _has_image(folder: str) -> bool:
    for _, _, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            return True
    return False
