"""Every exported artifact of a run, evaluated: ``RUN/eval/artifacts.json`` and the card's table.

After the exports (and by ``recipec eval RUN --artifacts``) each artifact in the run directory —
``model.safetensors`` (or its index), ``model.pt``, ``model.onnx``, ``model.int8.onnx``, ``model.pt2`` — is
loaded alone, as a user would (:func:`recipec.load_predictor`), and measured on the selection split
(``test`` when the run has one, else ``val``) with the metrics of ``recipec eval``. The reference is the
model (the first of ``model.safetensors``, its index, ``model.pt``; else the first artifact): each row has
``delta``, its metric minus the reference's (accuracy; mAP for ``task: multilabel``).

Latency: CPU, the same ``threads`` for torch and onnxruntime, after 2 warm-up calls; the median of
``repeats`` timed calls at batch 1 (the split's first image) and at batch N (``data.batch_size`` images,
fewer when the split is smaller), in milliseconds per call. Timings on a loaded machine are noisy: compare
rows of one file, never files of different machines.

``export.max_accuracy_drop`` (or ``max_drop``): an artifact whose metric is more than that below the
reference's is renamed ``<name>.rejected`` (so nothing loads it as if fine), marked ``rejected`` in the
JSON and the card, and the build (or the command) fails with exit 1 naming it and the numbers.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from recipec import _json as clean_json
from recipec._atomic import atomic_write_text
from recipec.convert.quantize import calibration_batches, quantize_onnx
from recipec.errors import ExportError, RunDirectoryError
from recipec.inference.predictor import Predictor, load_predictor
from recipec.pipeline.evaluate import classification_metrics, held_out_split
from recipec.provenance import file_digest
from recipec.recipe.spec import Recipe
from recipec.train.multilabel import eval_results
from recipec.weights.onnx import onnx_session

__all__ = ["ARTIFACTS", "check_artifacts", "evaluate_artifacts", "evaluates_artifacts", "format_artifacts",
           "quantize_run"]

# in the order of the table; the first present of the first three is the reference
ARTIFACTS = ("model.safetensors", "model.safetensors.index.json", "model.pt", "model.onnx", "model.int8.onnx",
             "model.pt2")
_REFERENCES = ARTIFACTS[:3]
_WARMUP = 2
_BUILD_REPEATS = 5  # a build's latency figures: indicative (recipec eval --artifacts repeats 20)


def quantize_run(recipe: Recipe, run: Path, classes: list[str]) -> Path | None:
    """``export.quantize``: ``RUN/model.int8.onnx`` from ``RUN/model.onnx``; static calibration on
    ``calibration_batches`` batches of the training split through the eval transform (a seeded sample of
    its examples, never augmented), dynamic on nothing. None without ``export.quantize``.

    Raises:
        ExportError: onnxruntime could not quantize the graph (exit 1).
    """
    spec = recipe.export.quantize
    if spec is None:
        return None
    batches = None
    if spec.method == "static":
        batches = list(calibration_batches(recipe, classes, spec.calibration_batches))
    return quantize_onnx(run / "model.onnx", run / "model.int8.onnx", method=spec.method,
                         per_channel=spec.per_channel, calibration=batches)


def evaluates_artifacts(recipe: Recipe, data: Any) -> bool:
    """Whether a build evaluates its artifacts: it exported a graph (onnx, pt2, int8) or set
    ``export.max_accuracy_drop``, and holds out a split to measure them on (val or test)."""
    derived = bool({"onnx", "pt2"} & set(recipe.export.formats)) or recipe.export.quantize is not None
    held_out = getattr(data, "val", None) is not None or getattr(data, "test", None) is not None
    return (derived or recipe.export.max_accuracy_drop is not None) and held_out


def check_artifacts(recipe: Recipe, run: Path, say: Callable[[str], None]) -> ExportError | None:
    """:func:`evaluate_artifacts` after a build (the recipe's factory trusted: it is the user's); the error of
    an artifact over ``export.max_accuracy_drop`` is returned, for the build to raise once the card is written."""
    trusted = (recipe.model.arch,) if ":" in recipe.model.arch else ()
    try:
        results = evaluate_artifacts(run, repeats=_BUILD_REPEATS, trust_factories=trusted)
    except ExportError as exc:
        say(f"wrote {run / 'eval' / 'artifacts.json'}")
        return exc
    metric = results["metric"]
    say(f"wrote {run / 'eval' / 'artifacts.json'}: " + ", ".join(
        f"{a['artifact']} {metric} {a['value']:.4f}" for a in results["artifacts"]))
    return None


def evaluate_artifacts(run: str | os.PathLike[str], *, repeats: int = 20,
                       threads: int | None = None, trust_factories: tuple[str, ...] = ()) -> dict[str, Any]:
    """Evaluate every artifact of a run and write ``RUN/eval/artifacts.json`` (see the module docstring).

    Args:
        run: a run directory with its exports.
        repeats: timed calls per latency figure (the median is reported).
        threads: CPU threads for every artifact (default: torch's current count).
        trust_factories: custom factories the exports' recipe may import (see ``recipec.load``).

    Returns:
        ``split``, ``n``, ``metric``, ``reference``, ``threads``, ``batch``, ``repeats``, ``max_accuracy_drop``,
        ``artifacts`` (each ``artifact``, ``bytes``, ``sha256``, ``value``, ``delta``, ``loss``,
        ``latency_ms`` {``batch_1``, ``batch_N``}, ``rejected``) and ``rejected`` (names).

    Raises:
        RunDirectoryError: no artifact in ``run``.
        ExportError: an artifact lost more than the export recipe's ``export.max_accuracy_drop`` (after
            the JSON is written and the artifact renamed).
    """
    folder = Path(run)
    present = [folder / name for name in ARTIFACTS if (folder / name).is_file()]
    if not present:
        raise RunDirectoryError(f"{folder}: holds no exported artifact ({', '.join(ARTIFACTS)})")
    reference = next((p for p in present if p.name in _REFERENCES), present[0])
    threads = threads or torch.get_num_threads()
    first = load_predictor(reference, trust_factories=trust_factories)
    if first.recipe is None:
        raise RunDirectoryError(f"{reference}: carries no recipec recipe; evaluate the artifacts of a recipec run")
    max_drop = first.recipe.export.max_accuracy_drop  # the recipe travels in the export
    split, held_out = held_out_split(first)
    images, labels = _collect(held_out.loader)
    batch = min(first.recipe.data.batch_size, len(images))
    multilabel = first.task == "multilabel"
    rows = []
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for path in [reference, *(p for p in present if p != reference)]:
            predictor = first if path == reference else load_predictor(path, trust_factories=trust_factories)
            if predictor.session is not None:  # the same thread count as torch
                predictor.session = onnx_session(path, threads=threads)
            logits = torch.cat([predictor.logits(images[i:i + batch]) for i in range(0, len(images), batch)])
            metrics = (eval_results(logits, labels, predictor.classes, predictor.thresholds or predictor.threshold)
                       if multilabel else classification_metrics(logits, labels, predictor.classes))
            rows.append({"artifact": path.name, "bytes": _size(path), "sha256": file_digest(path),
                         "value": metrics["map" if multilabel else "accuracy"], "loss": metrics["loss"],
                         "latency_ms": {"batch_1": _latency(predictor, images[:1], repeats),
                                        f"batch_{batch}": _latency(predictor, images[:batch], repeats)}})
    finally:
        torch.set_num_threads(previous)
    base = rows[0]["value"]
    rejected = []
    for row in rows:
        row["delta"] = row["value"] - base
        row["rejected"] = max_drop is not None and base - row["value"] > max_drop + 1e-12
        if row["rejected"]:
            rejected.append(row["artifact"])
    results = {"split": split, "n": len(labels), "metric": "map" if multilabel else "accuracy",
               "reference": reference.name, "threads": threads, "batch": batch, "repeats": repeats,
               "max_accuracy_drop": max_drop, "artifacts": rows, "rejected": rejected}
    for name in rejected:  # nothing may load it as if it were fine
        os.replace(folder / name, folder / f"{name}.rejected")
    (folder / "eval").mkdir(exist_ok=True)
    atomic_write_text(folder / "eval" / "artifacts.json", clean_json.dumps(results, indent=2) + "\n")
    if rejected:
        metric = results["metric"]
        raise ExportError([f"{row['artifact']}: {metric} {row['value']:.4f} on {split}, {base - row['value']:.4f} "
                           f"below the model's {base:.4f} ({reference.name}), more than export.max_accuracy_drop "
                           f"{max_drop}; renamed {row['artifact']}.rejected" for row in rows if row["rejected"]])
    return results


def format_artifacts(results: dict[str, Any]) -> str:
    """The results as a table for a terminal."""
    batch, metric = results["batch"], results["metric"]
    lines = [f"{results['split']}: {results['n']:,} images; {metric} against {results['reference']}; latency: median "
             f"of {results['repeats']}, {results['threads']} thread(s)",
             f"{'artifact':<28} {'bytes':>12} {metric:>9} {'delta':>8} {'b1 ms':>9} {f'b{batch} ms':>9}"]
    for a in results["artifacts"]:
        lines.append(f"{a['artifact'] + (' REJECTED' if a['rejected'] else ''):<28} {a['bytes']:>12,} "
                     f"{a['value']:>9.4f} {a['delta']:>+8.4f} {a['latency_ms']['batch_1']:>9.3f} "
                     f"{a['latency_ms'][f'batch_{batch}']:>9.3f}")
    return "\n".join(lines)


def _collect(loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for x, y in loader:
        images.append(x)
        labels.append(torch.as_tensor(y))
    if not images:
        raise RunDirectoryError("the selection split holds no images to evaluate the artifacts on")
    return torch.cat(images), torch.cat(labels)


def _latency(predictor: Predictor, batch: torch.Tensor, repeats: int) -> float:
    """Median milliseconds of ``predictor.logits(batch)`` over ``repeats`` calls, after warm-up."""
    call: Callable[[], Any] = lambda: predictor.logits(batch)  # noqa: E731 (a name for the timed call)
    for _ in range(_WARMUP):
        call()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _size(path: Path) -> int:
    if path.name.endswith(".index.json"):  # the shards it names, and itself
        shards = set(json.loads(path.read_text()).get("weight_map", {}).values())
        return path.stat().st_size + sum((path.parent / s).stat().st_size for s in shards)
    return path.stat().st_size
