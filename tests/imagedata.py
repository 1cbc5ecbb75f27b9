"""Small learnable image datasets on disk, drawn with PIL, for tests (no downloads).

Class ``k`` of ``n`` is a colour (hue ``k / n``) and a bright square at a class-dependent
place, plus noise: a tiny CNN separates the classes in one or two epochs. A multi-label
image holds the squares of each of its labels, on a grey ground.

    make_imagefolder(tmp_path / "data", ["cat", "dog"], {"train": 8, "val": 2, "test": 3})
    # tmp_path/data/train/cat/000.png ...; {"": 8} writes tmp_path/data/cat/000.png (no split folders)

    make_manifest(tmp_path / "m", ["a", "b"], {"train": 6, "test": 2})            # m/manifest.csv
    make_manifest(tmp_path / "m", ["a", "b", "c"], {"train": 20}, multilabel=True, fmt="jsonl")
"""

from __future__ import annotations

import colorsys
import csv
import json
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

__all__ = ["draw", "make_imagefolder", "make_manifest"]


def draw(labels: Sequence[int], num_classes: int, rng: random.Random, size: int = 16) -> Image.Image:
    """An RGB image of ``labels`` (indices into the classes): one label is its colour and square,
    several (or none) are their squares on grey."""
    if len(labels) == 1:
        r, g, b = colorsys.hsv_to_rgb(labels[0] / max(num_classes, 1), 0.8, 0.7)
        ground = (int(r * 255), int(g * 255), int(b * 255))
    else:
        ground = (96, 96, 96)
    image = Image.new("RGB", (size, size), ground)
    pixels = image.load()
    assert pixels is not None
    side = max(2, size // 4)
    cells = max(1, (size - side) + 1)
    for k in labels:
        # a class-dependent place on a diagonal-ish grid, so squares of different classes differ
        x0 = (k * 5 * side // 2) % cells
        y0 = (k * 3 * side // 2 + k // 3) % cells
        r, g, b = colorsys.hsv_to_rgb((k + 0.5) / max(num_classes, 1), 0.3, 1.0)
        for y in range(y0, min(size, y0 + side)):
            for x in range(x0, min(size, x0 + side)):
                pixels[x, y] = (int(r * 255), int(g * 255), int(b * 255))
    for y in range(size):  # noise, so no two images are the same
        for x in range(size):
            p = pixels[x, y]
            pixels[x, y] = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in p)  # type: ignore[assignment]
    return image


def make_imagefolder(root: str | Path, classes: Sequence[str], per_split: dict[str, int], size: int = 16,
                     seed: int = 0, ext: str = ".png") -> dict[str, list[tuple[Path, str]]]:
    """Write ``root/<split>/<class>/<nnn><ext>``: ``per_split[split]`` images of every class.

    The split ``""`` writes ``root/<class>/...`` (a plain imagefolder). ``per_split`` values may
    also be a dict class -> count, for uneven classes (a class with 0 gets no folder).

    Returns:
        split -> [(file, class)], in the order written.
    """
    rng = random.Random(seed)
    root = Path(root)
    written: dict[str, list[tuple[Path, str]]] = {}
    for split, count in per_split.items():
        written[split] = []
        for k, name in enumerate(classes):
            n = count.get(name, 0) if isinstance(count, dict) else count
            if n <= 0:
                continue
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                path = folder / f"{i:03d}{ext}"
                draw([k], len(classes), rng, size).save(path)
                written[split].append((path, name))
    return written


def make_manifest(root: str | Path, classes: Sequence[str], per_split: dict[str | None, int], size: int = 16,
                  seed: int = 0, fmt: str = "csv", multilabel: bool = False, name: str | None = None,
                  absolute: bool = False) -> Path:
    """Write images under ``root/images/`` and a manifest ``root/manifest.<fmt>`` listing them.

    Args:
        root: the directory of the manifest; paths in it are relative to it (``images/000.png``)
            unless ``absolute``.
        classes: class names.
        per_split: split name -> image count (per class for multiclass, in total for multilabel).
            The key ``None`` writes rows without a split: then the manifest has no split column
            when every key is ``None``.
        fmt: ``csv`` (header ``path,label[,split]``) or ``jsonl`` (``{"path", "label"[, "split"]}``).
        multilabel: each image gets every class with probability 0.4 (maybe none), labels joined by ``;``.
        name: the manifest's file name (default ``manifest.csv`` / ``manifest.jsonl``).

    Returns:
        The manifest's path.
    """
    rng = random.Random(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with_split = any(k is not None for k in per_split)
    rows: list[dict[str, str]] = []
    for split, count in per_split.items():
        if multilabel:
            draws = [sorted(k for k in range(len(classes)) if rng.random() < 0.4) for _ in range(count)]
        else:
            draws = [[k] for k in range(len(classes)) for _ in range(count)]
        for labels in draws:
            path = root / "images" / f"{len(rows):04d}.png"
            draw(labels, len(classes), rng, size).save(path)
            row = {"path": str(path) if absolute else path.relative_to(root).as_posix(),
                   "label": ";".join(classes[k] for k in labels)}
            if with_split:
                row["split"] = split or ""
            rows.append(row)
    manifest = root / (name or f"manifest.{fmt}")
    if fmt == "csv":
        with open(manifest, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "label", "split"] if with_split else ["path", "label"])
            writer.writeheader()
            writer.writerows(rows)
    elif fmt == "jsonl":
        manifest.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "split" or v}) + "\n"
                                    for r in rows))
    else:
        raise ValueError(f"fmt {fmt!r}: csv or jsonl")
    return manifest
