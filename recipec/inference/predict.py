"""``recipec predict``: the top classes of images, from any export alone.

The export (``model.safetensors``, ``model.pt``, an index, or ``model.onnx`` through
onnxruntime) gives the model, the class names and the preprocessing
(:func:`recipec.inference.predictor.load_predictor`). Directories are walked recursively for image files,
in sorted order; images are decoded and run in batches. An image that cannot be read is
reported by name and left out; the others are still predicted.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recipec import _json as clean_json
from recipec.errors import DatasetError, UnreadableImageError
from recipec.inference.predictor import open_image
from recipec.recipe.catalog import IMAGE_EXTENSIONS  # what ImageFolder takes for an image

__all__ = ["Prediction", "format_predictions", "image_paths", "predict_images"]


@dataclass
class Prediction:
    """One image's result: ``top`` (highest first) or, for an unreadable image, ``error``; a multilabel
    model's also ``labels``: the classes scoring at least its threshold, highest first (``{"class", "score"}``)."""

    path: str
    top: list[dict[str, Any]] | None = None
    error: str | None = None
    labels: list[dict[str, Any]] | None = None


def image_paths(inputs: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The image files named: files as given, directories walked recursively (image suffixes, sorted).

    Raises:
        DatasetError: a path that does not exist, or no image at all among the inputs.
    """
    found: list[str] = []
    problems: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
            found += sorted(str(p) for p in files)
        elif path.exists() or path.is_symlink():
            found.append(os.fspath(item))  # named explicitly: tried whatever its suffix (reading says what is wrong)
        else:
            problems.append(f"{os.fspath(item)}: no such file or directory")
    if problems:
        raise DatasetError(problems)
    if not found:
        raise DatasetError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {', '.join(os.fspath(i) for i in inputs)}")
    return found


def predict_images(predictor: Any, paths: Sequence[str], *, top_k: int = 5, batch_size: int = 32,
                   progress: Callable[[int, int], None] | None = None) -> Iterator[Prediction]:
    """Predict ``paths`` in batches, in order; each unreadable image yields a :class:`Prediction` with ``error``.

    Args:
        predictor: a :class:`recipec.inference.predictor.Predictor`.
        paths: image files.
        top_k: classes per image.
        batch_size: images per forward pass.
        progress: called with (done, total) after each batch.
    """

    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        tensors: list[Any] = []
        readable: list[str] = []
        failed: dict[str, str] = {}
        for path in chunk:
            try:
                tensors.append(predictor.transform(open_image(path)))
                readable.append(path)
            except UnreadableImageError as exc:
                failed[path] = exc.problems[0]
            except (OSError, ValueError, RuntimeError, TypeError) as exc:  # decoded, but no image the transform takes
                failed[path] = f"{path}: unreadable image ({exc})"
        labels: list[Any] = [None] * len(tensors)
        if tensors and getattr(predictor, "task", "multiclass") == "multilabel":  # sigmoid scores; labels >= threshold
            scores = predictor.scores(torch.stack(tensors))
            tops, labels = predictor.top(None, top_k=top_k, scores=scores), predictor.labels(scores)
        else:
            tops = predictor.top(torch.stack(tensors), top_k=top_k) if tensors else []
        results = dict(zip(readable, zip(tops, labels)))
        for path in chunk:
            yield Prediction(path, error=failed[path]) if path in failed else \
                Prediction(path, top=results[path][0], labels=results[path][1])
        if progress is not None:
            progress(min(start + batch_size, len(paths)), len(paths))


def format_predictions(predictions: Sequence[Prediction], fmt: str) -> str:
    """``jsonl`` (one object per image), ``csv`` (``path,class,score``, the top-1) or ``table`` (aligned text).

    Multilabel predictions (``labels`` set): jsonl adds ``labels``; csv is ``path,labels,scores`` (the classes
    above the threshold and their scores, each joined by ``;``); table adds a ``labels`` column."""
    done = [p for p in predictions if p.top is not None]
    if fmt == "jsonl":
        return "".join(clean_json.dumps({"path": p.path, "top": p.top} | (
            {"labels": [x["class"] for x in p.labels]} if p.labels is not None else {}), ensure_ascii=False) + "\n"
                       for p in done)
    if fmt in ("csv", "table") and any(p.labels is not None for p in done):
        return _multilabel_format(done, fmt)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "class", "score"])
        for p in done:
            assert p.top is not None
            writer.writerow([p.path, p.top[0]["class"], f"{p.top[0]['score']:.6g}"])
        return buffer.getvalue()
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}")
    k = max((len(p.top or []) for p in done), default=1)
    header = ["path", *(f"{'top-1' if i == 0 else f'#{i + 1}'}" for i in range(k))]
    rows = [header] + [[p.path, *(f"{t['class']} {t['score']:.3f}" for t in p.top or [])] for p in done]
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(header))]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n" for row in rows)


def _multilabel_format(done: Sequence[Prediction], fmt: str) -> str:
    rows = [[p.path, ";".join(x["class"] for x in p.labels or []), ";".join(f"{x['score']:.6g}" for x in p.labels or [])]
            for p in done]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "labels", "scores"])
        writer.writerows(rows)
        return buffer.getvalue()
    table = [["path", "labels", "top"]] + [[r[0], r[1].replace(";", ", ") or "(none)",
                                            ", ".join(f"{t['class']} {t['score']:.3f}" for t in p.top or [])]
                                           for r, p in zip(rows, done)]
    widths = [max(len(r[i]) for r in table) for i in range(3)]
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n" for row in table)
