"""``recipec eval``: held-out metrics of a run's exported model, into the run directory and its card.

The model evaluated is an export (a run directory's ``model.safetensors``, else its sharded
index, ``model.pt`` or ``model.onnx``), so evaluating a run and its export give the same numbers. The data
is the run's own split (``test`` when the run has one, else ``val``), built by
:func:`recipec.data.heldout.build_split` with the run's eval transforms, or another directory or
manifest (``--data``) read the same way.

Metric definitions (those of scikit-learn's ``classification_report`` with ``zero_division=0``):

- ``loss``: mean cross-entropy of the logits; ``accuracy``: top-1; ``top5``: the true class among
  the five highest scores (only with more than 5 classes).
- ``confusion[i][j]``: examples of true class ``i`` predicted as ``j`` (rows true, columns predicted).
- per class: ``precision = tp / predicted``, ``recall = tp / support``, ``f1 = 2PR / (P + R)``;
  a class never predicted has precision 0, one without examples recall 0, and F1 is 0 when P + R is 0.
- ``macro``: the unweighted mean over every class of the model (classes absent from the data
  included); ``weighted``: the mean weighted by support.

A ``task: multilabel`` model is measured by :func:`recipec.train.multilabel.eval_results` instead:
``loss`` (binary cross-entropy), ``map``, ``f1_micro``, ``f1_macro``, ``accuracy`` (exact match)
at its threshold and ``per_class`` ``ap``, ``precision``, ``recall``, ``f1``, ``support``; no confusion matrix.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recipec import _json as clean_json
from recipec._atomic import atomic_path, atomic_write_text
from recipec._files import check_output
from recipec.card.render import write_card
from recipec.compiler.data_config import build_split, data_config
from recipec.errors import DatasetError, RunDirectoryError
from recipec.inference.predictor import load_predictor
from recipec.pipeline.rundir import MARKER
from recipec.train.multilabel import eval_results, format_eval

__all__ = ["RUN_EXPORTS", "classification_metrics", "evaluate", "format_results", "held_out_split", "plot_confusion",
           "resolve_target"]

RUN_EXPORTS = ("model.safetensors", "model.safetensors.index.json", "model.pt", "model.onnx", "model.pt2")
_ANNOTATE_UP_TO = 20  # classes: counts are written in the cells up to this many


def resolve_target(target: str | os.PathLike[str]) -> tuple[Path | None, Path]:
    """(the run directory or None, the export to evaluate) for ``RUN_OR_EXPORT``.

    Raises:
        RunDirectoryError: a directory without an export, or a path that does not exist.
    """
    path = Path(target)
    if path.is_dir() and (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        # a hub folder (RUN/hub, read by load_predictor); the results go to the run it belongs to, if any
        return (path.parent if _is_run(path.parent) else None), path
    if path.is_dir():
        export = next((path / n for n in RUN_EXPORTS if (path / n).is_file()), None)
        if export is None:
            raise RunDirectoryError(f"{path}: holds no export ({', '.join(RUN_EXPORTS)}); give a run directory "
                                    "`recipec build` finished, or an export file")
        return path, export
    if not path.exists():
        raise RunDirectoryError(f"{path}: no such run directory or export")
    return (path.parent if _is_run(path.parent) else None), path


def _is_run(directory: Path) -> bool:
    return (directory / MARKER).is_file() or all((directory / n).is_file() for n in ("recipe.yaml", "metrics.jsonl"))


def classification_metrics(logits: Any, labels: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Loss, accuracy, top-5, confusion matrix and per-class/macro/weighted precision, recall and F1.

    Args:
        logits: (n, classes) float tensor.
        labels: (n,) int tensor of class indices.
        classes: the class names, in the order of the logits' columns.

    Returns:
        ``n``, ``loss``, ``accuracy``, ``top5`` (more than 5 classes only), ``per_class``, ``macro``,
        ``weighted``, ``classes``, ``confusion`` (see the module docstring).
    """
    logits = logits.double()
    n, k = logits.shape[0], len(classes)
    if n == 0:
        raise DatasetError("the split holds no examples to evaluate")
    predicted = logits.argmax(1)
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones(n, dtype=torch.long), accumulate=True)
    tp = confusion.diag().double()
    support = confusion.sum(1).double()
    predictions = confusion.sum(0).double()
    precision = torch.where(predictions > 0, tp / predictions.clamp(min=1), 0.0)
    recall = torch.where(support > 0, tp / support.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-300), 0.0)
    weights = support / support.sum()
    result: dict[str, Any] = {
        "n": n,
        "loss": float(torch.nn.functional.cross_entropy(logits, labels, reduction="mean")),
        "accuracy": float(tp.sum() / n),
    }
    if k > 5:
        result["top5"] = float((logits.topk(5, dim=1).indices == labels[:, None]).any(1).double().mean())
    result |= {
        "per_class": {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(classes)},
        "macro": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "weighted": {"precision": float((precision * weights).sum()), "recall": float((recall * weights).sum()),
                     "f1": float((f1 * weights).sum())},
        "classes": list(classes),
        "confusion": confusion.tolist(),
    }
    return result


def evaluate(target: str | os.PathLike[str], *, split: str | None = None, data: str | None = None,
             batch_size: int | None = None, device: str | None = None, trust_factories: Collection[str] = (),
             out: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Evaluate a run's (or an export's) model on a held-out split; write the results and re-render the card.

    Args:
        target: a run directory or an export file.
        split: ``test`` or ``val``; default ``test`` when the run has a test split, else ``val``.
        data: another image directory or manifest to evaluate on (its classes must be the model's).
        batch_size: override ``data.batch_size``.
        device: where the model runs (default cpu).
        trust_factories: custom factories the export's recipe may import (see ``recipec.load``).
        out: also write the JSON here (and the confusion matrix beside it, ``<stem>-confusion.png``).

    Returns:
        The results (see :func:`classification_metrics`, plus ``split``, ``export``, ``data``) and
        the files written: into ``RUN/eval/`` (``<split>.json``, ``<split>-confusion.png``) and the
        re-rendered card ``RUN/README.md`` when the target is (in) a run directory; results on other
        data (``data``) go to ``RUN/eval/<split>-<its name>.json``.

    Raises:
        RunDirectoryError, CheckpointError, DatasetError: the target or the data is not usable.

    Example:
        >>> results, written = evaluate("runs/quickstart", split="val")
        >>> results["accuracy"], results["macro"]["f1"]
    """
    run, export = resolve_target(target)
    target_out = None
    if out is not None:
        target_out = check_output(out, what="the evaluation", inputs=[export])
    predictor = load_predictor(export, trust_factories=trust_factories, device=device)
    recipe = predictor.recipe
    if recipe is None:  # a foreign timm hub folder: nothing says what data it was trained on
        raise RunDirectoryError(f"{export}: carries no recipec recipe, so there is no split to evaluate on; "
                                "evaluate a recipec export (recipec predict reads this one)")
    chosen, held_out = held_out_split(predictor, split=split, data=data, batch_size=batch_size)
    logits, labels = [], []
    for images, targets in held_out.loader:
        logits.append(predictor.logits(images))
        labels.append(torch.as_tensor(targets))
    if not logits:
        raise DatasetError(f"the {chosen} split holds no images to evaluate" + (f" ({data})" if data else ""))
    if predictor.task == "multilabel":  # mAP, F1 at the threshold, exact match (recipec.train.multilabel)
        metrics = eval_results(torch.cat(logits), torch.cat(labels), predictor.classes,
                               predictor.thresholds or predictor.threshold)  # tuned per class, or the recipe's
    else:
        metrics = classification_metrics(torch.cat(logits), torch.cat(labels), predictor.classes)
    results = {"split": chosen, **metrics, "export": export.name, "data": _described(data, held_out, recipe)}
    written: list[Path] = []
    if run is not None:
        # other data (--data) is kept beside the run's own split, never in its place
        stem = chosen if data is None else f"{chosen}-{re.sub(r'[^A-Za-z0-9._-]', '_', Path(data).stem or 'data')}"
        written += _write(results, run / "eval" / f"{stem}.json", run / "eval" / f"{stem}-confusion.png")
        if (run / "recipe.yaml").is_file() and (run / "metrics.jsonl").is_file():
            written.append(write_card(run))
    if target_out is not None:
        written += _write(results, target_out, target_out.with_name(f"{target_out.stem}-confusion.png"))
    return results, written


def held_out_split(predictor: Any, *, split: str | None = None, data: str | None = None,
                   batch_size: int | None = None) -> tuple[str, Any]:
    """(the split's name, its data) for a predictor of a recipec export: ``split``, or by default ``test`` when
    the run has one, else ``val`` (the selection split), read with the export's recorded preprocessing."""
    recipe = predictor.recipe
    config = data_config(recipe, **_recorded_preprocessing(predictor.preprocessing))
    batch_size = batch_size or recipe.data.batch_size
    chosen = split or "test"
    try:
        return chosen, build_split(config, split=chosen, override=data, classes=predictor.classes, batch_size=batch_size)
    except DatasetError as exc:
        if split is not None or data is not None or not _no_such_split(exc):
            raise
    # the default: test when the run has one, else val
    return "val", build_split(config, split="val", override=data, classes=predictor.classes, batch_size=batch_size)


def format_results(results: dict[str, Any], *, rows: int = 50) -> str:
    """The results as text: the summary, then one row per class (the first ``rows``)."""
    if results.get("task") == "multilabel":
        return format_eval(results, rows=rows)
    top5 = f", top-5 {results['top5']:.4f}" if "top5" in results else ""
    lines = [f"{results['split']}: {results['n']:,} images, loss {results['loss']:.4f}, accuracy "
             f"{results['accuracy']:.4f}{top5} ({results['export']})",
             f"macro     precision {results['macro']['precision']:.4f}  recall {results['macro']['recall']:.4f}  "
             f"f1 {results['macro']['f1']:.4f}",
             f"weighted  precision {results['weighted']['precision']:.4f}  recall {results['weighted']['recall']:.4f}  "
             f"f1 {results['weighted']['f1']:.4f}"]
    per_class = list(results["per_class"].items())
    width = max([5, *(len(name) for name, _ in per_class[:rows])])
    lines.append(f"{'class':<{width}}  precision  recall      f1  support")
    lines += [f"{name:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:6.4f}  {m['support']:7,}"
              for name, m in per_class[:rows]]
    if len(per_class) > rows:
        lines.append(f"... and {len(per_class) - rows} more classes (--json, or eval/{results['split']}.json)")
    return "\n".join(lines)


def _no_such_split(exc: DatasetError) -> bool:
    return any("has no test split" in str(p) for p in exc.problems)


def _recorded_preprocessing(prep: Mapping[str, Any]) -> dict[str, Any]:
    """The export's recorded resize and normalisation, over what the recipe would resolve to today
    (a source checkpoint's recorded normalisation may not be on this machine)."""
    norm = prep["normalization"]
    return {"image_size": prep["image_size"], "resize_size": prep["resize_size"] if prep["rule"] == "shorter_side"
            else None, "interpolation": prep["interpolation"], "crop_mode": prep["crop_mode"], "crop_fill": prep.get("fill"),
            "in_channels": prep["in_channels"], "normalize": "from_weights",
            "weights_normalization": None if norm is None else (tuple(norm["mean"]), tuple(norm["std"]))}


def _described(data: str | None, held_out: Any, recipe: Any) -> dict[str, Any]:
    """Where the examples came from (the split's origin), and what was left out of them."""
    info = dict(getattr(held_out, "info", None) or {})
    described: dict[str, Any] = {"dataset": recipe.data.dataset if data is None else "override"}
    if data is not None:
        described["override"] = Path(data).name
    described |= {k: info[k] for k in ("source", "left_out", "skipped_images") if info.get(k)}
    return described


def _write(results: dict[str, Any], json_path: Path, png_path: Path) -> list[Path]:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json_path, clean_json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if "confusion" not in results:  # multilabel: no confusion matrix
        return [json_path]
    plot_confusion(results["confusion"], results["classes"], png_path,
                   title=f"{results['split']} ({results['n']:,} images): accuracy {results['accuracy']:.4g}")
    return [json_path, png_path]


def plot_confusion(confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path, *, title: str = "") -> None:
    """The confusion matrix as a PNG (atomic): colours row-normalised (recall per true class), counts in the cells
    up to 20 classes, class names on both axes (readable up to ~50 classes)."""
    import matplotlib  # noqa: PLC0415 (matplotlib: only when a picture is drawn)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (matplotlib: only when a picture is drawn)

    counts = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    rows = counts.sum(1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    side = min(24.0, max(4.5, 0.32 * k + 2.5))
    font = 9 if k <= 20 else max(4, int(9 - (k - 20) / 8))
    labels = [c if len(c) <= 18 else c[:17] + "…" for c in classes]
    fig, axis = plt.subplots(figsize=(side + 1.2, side))
    image = axis.imshow(share, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    axis.set_xticks(range(k), labels, rotation=90, fontsize=font)
    axis.set_yticks(range(k), labels, fontsize=font)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if title:
        axis.set_title(title, fontsize=10)
    if k <= _ANNOTATE_UP_TO:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    axis.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=font,
                              color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class (row)")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
