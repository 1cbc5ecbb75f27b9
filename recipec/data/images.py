"""Image files: which files are images (as ImageFolder takes them), and which of them decode.

:func:`decodes` is the one test of an image file; :func:`bad_images` runs it over a dataset
before any compute (``recipec plan``), :func:`without_bad_images` leaves the failures out of a
dataset as read (``data.on_bad_image: skip``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from PIL import Image

from recipec.data.examples import Examples, FileSamples
from recipec.data.manifest import read_manifest
from recipec.recipe.catalog import IMAGE_EXTENSIONS, VAL_FOLDERS

__all__ = ["bad_images", "decodes", "has_image", "image_files", "without_bad_images"]


def decodes(path: str) -> str | None:
    """None when the image file decodes, else why not.

    JPEGs are decoded at reduced scale (``draft``), which still reads every byte, so a
    truncated file is found at a fraction of the cost of a full decode.
    """
    try:
        with Image.open(path) as image:
            image.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; every byte is still read
            image.load()
    except Exception as exc:  # PIL raises many types (OSError, SyntaxError, ValueError, DecompressionBombError...)
        return str(exc) or type(exc).__name__
    return None


def image_files(folder: str) -> list[str]:
    """Image files under ``folder``, recursively and sorted, as ImageFolder finds them."""
    out = []
    for directory, _, files in sorted(os.walk(folder, followlinks=True)):
        out += [os.path.join(directory, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
    return out


def has_image(folder: str) -> bool:
    """Whether any image file is under ``folder`` (recursively)."""
    for _, _, files in os.walk(folder, followlinks=True):
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            return True
    return False


def bad_images(root: str, classes: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """``(file, reason)`` for every image under the class folders of ``root`` (of ``root/train``,
    ``root/val`` and ``root/test`` when there are split folders), or listed by the manifest file
    ``root``, that cannot be decoded (:func:`decodes`)."""
    if os.path.isfile(root):  # a manifest: every file it lists
        return [(row.path, why) for row in read_manifest(root) if (why := decodes(row.path)) is not None]
    found = []
    folders = [os.path.join(root, s) for s in sorted(os.listdir(root)) if s in ("train", *VAL_FOLDERS, "test")
               ] if os.path.isdir(os.path.join(root, "train")) else [root]
    for folder in folders:
        for name in sorted(e.name for e in os.scandir(folder) if e.is_dir()):
            if classes is not None and name not in classes:
                continue
            for path in image_files(os.path.join(folder, name)):
                why = decodes(path)
                if why is not None:
                    found.append((path, why))
    return found


def without_bad_images(examples: Examples) -> tuple[Examples, list[str]]:
    """``examples`` without the files that cannot be decoded, and those files (in dataset order)."""
    source = examples.source
    keep = [decodes(path) is None for path, _ in source.samples]
    bad = [path for (path, _), ok in zip(source.samples, keep) if not ok]
    if not bad:
        return examples, []
    samples = [s for s, ok in zip(source.samples, keep) if ok]
    splits = None if examples.splits is None else [s for s, ok in zip(examples.splits, keep) if ok]
    return Examples(None, [t for _, t in samples], examples.names, FileSamples(samples, examples.names), splits,
                    examples.origins, examples.base), bad
